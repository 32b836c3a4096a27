//! Batch benchmark: `POST /transfers/batch` with batches of 1,000 transfers, authentication and
//! a fresh `Idempotency-Key` on every batch, against a transferd that settles as it goes, on a
//! private Tansu with SQLite storage (durable, as in production).
//!
//! Prints accepted transfers a second (the POSTs' wall time, and until the last one settled),
//! CPU µs per accepted transfer for each process (serve, its settlement worker, the broker,
//! Redis, PostgreSQL; from /proc before and after), and batch POST → every transfer of it
//! settled at p50 and p99. Bounded in batches (`TRANSFERD_BENCH_BATCHES`, 60) and time
//! (`TRANSFERD_BENCH_SECONDS`, 30, for the POSTs). Run with `./scripts/bench.sh batch`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use transferd_e2e::{
    BrokerStorage, Host, HostOptions, Namespace, auth, child_pids, free_port, process_figures,
    spawn_tansu,
};
use uuid::Uuid;

/// Funded users; each batch's sender is one of them in turn, its receivers any other.
const USERS: i64 = 200;
const BATCH_SIZE: usize = 1_000;
/// Batches in flight at once.
const CLIENTS: usize = 4;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// Every process whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// CPU ticks by process role, now.
fn ticks(serve: u32, broker: u32) -> BTreeMap<&'static str, u64> {
    let sum = |pids: Vec<u32>| -> u64 {
        pids.into_iter()
            .filter_map(process_figures)
            .map(|(ticks, _)| ticks)
            .sum()
    };
    BTreeMap::from([
        ("serve", sum(vec![serve])),
        ("worker", sum(child_pids(serve))),
        ("broker", sum(vec![broker])),
        ("redis", sum(pids_named("redis-server"))),
        ("postgres", sum(pids_named("postgres"))),
    ])
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Batch `n`: 1,000 transfers of 0.01 to 0.99 from one user to the others.
fn nth_batch(n: u64) -> (i64, Value) {
    let sender = (n as i64) % USERS + 1;
    let transfers: Vec<Value> = (0..BATCH_SIZE as i64)
        .map(|i| {
            let receiver = (sender + i % (USERS - 1)) % USERS + 1;
            let minor = 1 + (i * 7 + n as i64) % 99;
            json!({"sender_id": sender, "receiver_id": receiver,
                   "amount": format!("0.{minor:02}"), "currency": "USD"})
        })
        .collect();
    (sender, json!({"transfers": transfers}))
}

/// One client: sends batches while there are some left and time remains; returns each
/// accepted batch's transfer ids.
async fn client(
    url: String,
    next: Arc<std::sync::atomic::AtomicU64>,
    batches: u64,
    until: Instant,
) -> anyhow::Result<Vec<Vec<Uuid>>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut accepted = Vec::new();
    loop {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= batches || Instant::now() >= until {
            return Ok(accepted);
        }
        let (sender, body) = nth_batch(n);
        let response = http
            .post(format!("{url}/transfers/batch"))
            .bearer_auth(auth::user_token(sender))
            .header("idempotency-key", Uuid::now_v7().to_string())
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if status != 200 {
            bail!("a batch answered {status}: {answer}");
        }
        let results = answer["results"].as_array().context("results")?;
        let ids: Vec<Uuid> = results
            .iter()
            .filter(|result| result["status"] == "accepted")
            .filter_map(|result| result["transaction_id"].as_str()?.parse().ok())
            .collect();
        accepted.push(ids);
    }
}

/// Waits until every id is in the ledger; when the last settled.
async fn wait_settled(ledger: &sqlx::PgPool, ids: &[Uuid]) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let settled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transfers WHERE transaction_id = ANY($1)")
                .bind(ids)
                .fetch_one(ledger)
                .await?;
        if settled as usize == ids.len() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{settled} of {} transfers settled after 300 s", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per batch, its first transfer's `created_at` (when transferd received the batch) to its
/// last one's `settled_at`, in ms: p50 and p99.
async fn batch_latency(ledger: &sqlx::PgPool, batches: &[Vec<Uuid>]) -> anyhow::Result<(f64, f64)> {
    let mut latencies = Vec::new();
    for ids in batches.iter().filter(|ids| !ids.is_empty()) {
        let ms: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(settled_at) - min(created_at))::float8 * 1000
             FROM transfers WHERE transaction_id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(ledger)
        .await?;
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or(f64::NAN)
    };
    Ok((at(0.5), at(0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let broker_dir = std::env::temp_dir().join(format!("transferd-bench-broker-{}", namespace.id));
    std::fs::create_dir_all(&broker_dir)?;
    let broker_port = free_port();
    let broker = spawn_tansu(broker_port, broker_port, BrokerStorage::Sqlite, &broker_dir)?;
    // Tansu creates its schema on first start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = format!("127.0.0.1:{broker_port}");
    options.topic_partitions = None;
    let host = Host::start_with(&namespace, options).await?;
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000000").await?;
    }
    let ledger = namespace.ledger().await?;
    let batches = setting("TRANSFERD_BENCH_BATCHES", 60);
    let seconds = setting("TRANSFERD_BENCH_SECONDS", 30);
    let (serve, broker_pid) = (host.pid(), broker.id());
    let tick = ticks_per_second();
    let before = ticks(serve, broker_pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                host.base_url.clone(),
                Arc::clone(&next),
                batches,
                until,
            ))
        })
        .collect();
    let mut accepted_batches = Vec::new();
    for client in clients {
        accepted_batches.extend(client.await??);
    }
    let posted = started.elapsed();
    let ids: Vec<Uuid> = accepted_batches.iter().flatten().copied().collect();
    let settled = wait_settled(&ledger, &ids).await?.duration_since(started);
    let after = ticks(serve, broker_pid);
    let (p50, p99) = batch_latency(&ledger, &accepted_batches).await?;
    let accepted = ids.len() as f64;
    println!(
        "\n{} batches of {BATCH_SIZE} ({} transfers accepted), {CLIENTS} in flight; {USERS} funded users; auth and idempotency keys on; SQLite broker.\n",
        accepted_batches.len(),
        ids.len()
    );
    println!(
        "| accepted/s (POSTs) | accepted/s (to settled) | batch → all settled p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {p50:.0} | {p99:.0} |\n",
        accepted / posted.as_secs_f64(),
        accepted / settled.as_secs_f64()
    );
    let per: BTreeMap<&str, f64> = after
        .iter()
        .map(|(role, ticks)| {
            let spent = ticks.saturating_sub(before.get(role).copied().unwrap_or(0));
            (*role, spent as f64 / tick * 1e6 / accepted)
        })
        .collect();
    println!("| CPU µs per transfer: all | serve | worker | broker | redis | postgres |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        per.values().sum::<f64>(),
        per["serve"],
        per["worker"],
        per["broker"],
        per["redis"],
        per["postgres"]
    );
    Ok(())
}
