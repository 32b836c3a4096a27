//! Durability benchmark: what the broker's SQLite storage costs on the request path compared
//! with memory storage. For each engine: a private Tansu, an API-only transferd on it, the same
//! closed-loop load of transfers, and the latency of POST /transfers (which includes waiting
//! for the broker's acknowledgement). Run with `./scripts/bench.sh broker`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use transferd_e2e::{Broker, BrokerStorage, Host, HostOptions, Namespace};

const CLIENTS: u64 = 16;
const REQUESTS_PER_CLIENT: usize = 250;
const WARM_UP: usize = 200;
const USERS: i64 = 40;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

async fn post(host: &Host, sender: i64) -> anyhow::Result<(Duration, u16)> {
    let receiver = sender % USERS + 1;
    let started = Instant::now();
    let reply = host
        .transfer(json!({"sender_id": sender, "receiver_id": receiver, "amount": "0.01", "currency": "USD"}))
        .await?;
    Ok((started.elapsed(), reply.status))
}

/// Latencies of accepted transfers under `CLIENTS` closed-loop clients, and the wall time.
async fn run(storage: BrokerStorage) -> anyhow::Result<(Vec<Duration>, Duration, usize)> {
    let namespace = Namespace::new().await?;
    let broker = Broker::start_with(storage).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.run_worker = false;
    options.topic_partitions = None;
    let host = Arc::new(Host::start_with(&namespace, options).await?);
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000000").await?;
    }
    for round in 0..WARM_UP {
        post(&host, (round as i64) % USERS + 1).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let host = Arc::clone(&host);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(REQUESTS_PER_CLIENT);
            let mut failed = 0;
            for round in 0..REQUESTS_PER_CLIENT {
                let sender = ((client as i64) * 7 + round as i64) % USERS + 1;
                let (latency, status) = post(&host, sender).await?;
                if status == 200 {
                    samples.push(latency);
                } else {
                    failed += 1;
                }
            }
            Ok::<_, anyhow::Error>((samples, failed))
        }));
    }
    let mut samples = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (mine, my_failures) = task.await??;
        samples.extend(mine);
        failed += my_failures;
    }
    let wall = started.elapsed();
    samples.sort();
    Ok((samples, wall, failed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "POST /transfers, {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests, API-only transferd on a private Tansu"
    );
    for (name, storage) in [
        ("memory", BrokerStorage::Memory),
        ("sqlite", BrokerStorage::Sqlite),
    ] {
        let (samples, wall, failed) = run(storage).await?;
        println!(
            "{name:<7} {:>6} accepted {failed:>3} failed  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            samples.len(),
            samples.len() as f64 / wall.as_secs_f64(),
            percentile(&samples, 0.5).as_secs_f64() * 1e3,
            percentile(&samples, 0.99).as_secs_f64() * 1e3,
            samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
