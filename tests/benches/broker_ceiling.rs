//! The broker's own ceiling: rdkafka alone producing transfer-sized messages to a private Tansu
//! with transferd's producer settings (acks all, not idempotent, linger 1 ms, 5 s message
//! timeout), 64 sends in flight, each awaited as transferd awaits its acknowledgement. For each
//! storage engine, with the one header every transfer carries (`transaction_id`) and with the
//! trace header beside it. Prints acknowledged messages per second and the broker's CPU per
//! message: what transferd's figures are measured against. A transfer costs the broker at
//! least one message (the transfer; its event shares one message with its settled batch) plus
//! a share of the settlement consumer's fetches.
//! On SQLite it also varies the topic's partitions and the producer's linger: Tansu writes each
//! produce request (one partition's batch) in a storage transaction of its own, so what a
//! message costs depends on how many share a request.
//! Run with `./scripts/bench.sh broker`; `TRANSFERD_BENCH_SECONDS` sets each run (default 10).

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use transferd_e2e::{BrokerStorage, free_port, process_figures, spawn_tansu};

const IN_FLIGHT: usize = 64;
/// Clock ticks per second in /proc/<pid>/stat (Linux's USER_HZ).
const TICKS_PER_SECOND: u64 = 100;

fn seconds() -> u64 {
    std::env::var("TRANSFERD_BENCH_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10)
}

/// A message the size and shape of transferd's transfer message.
fn payload(index: u64) -> String {
    format!(
        r#"{{"transaction_id":"019ab3c2-7d1e-7c4a-9f0e-{index:012}","sender_id":{},"receiver_id":{},"amount":"0.01","amount_minor":1,"currency":"USD","description":null,"created_at":"2026-11-25T00:00:00.000Z","created_at_ms":1795996800000,"guest_version":"94928f15a63295c5134ae590cfccac5965251b252d8fd28915525b56d06e2ce8"}}"#,
        index % 200 + 1,
        (index + 1) % 200 + 1
    )
}

/// One measured run: the topic's partitions, the producer's linger, the headers.
#[derive(Clone, Copy)]
struct Run {
    partitions: i32,
    linger_ms: u32,
    traced: bool,
}

impl Run {
    fn topic(&self) -> String {
        format!(
            "ceiling-{}-{}-{}",
            self.partitions, self.linger_ms, self.traced
        )
    }
}

fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("message.timeout.ms", "5000")
        .set("linger.ms", linger_ms.to_string())
        .create()?)
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for outcome in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        outcome.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

/// Sends for `duration` with `IN_FLIGHT` sends outstanding; acknowledged and failed counts.
async fn send_for(
    producer: &FutureProducer,
    topic: &str,
    duration: Duration,
    traced: bool,
) -> (u64, u64) {
    let deadline = Instant::now() + duration;
    let sends = futures::stream::iter(0u64..)
        .take_while(|_| futures::future::ready(Instant::now() < deadline))
        .map(|index| async move {
            let body = payload(index);
            let id = format!("019ab3c2-7d1e-7c4a-9f0e-{index:012}");
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "transaction_id",
                value: Some(&id),
            });
            if traced {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                });
            }
            let key = (index % 200).to_string();
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&body)
                .headers(headers);
            producer.send(record, Duration::from_secs(5)).await.is_ok()
        })
        .buffer_unordered(IN_FLIGHT);
    let outcomes: Vec<bool> = sends.collect().await;
    let acknowledged = outcomes.iter().filter(|ok| **ok).count() as u64;
    (acknowledged, outcomes.len() as u64 - acknowledged)
}

async fn measure(storage: BrokerStorage, name: &str, runs: &[Run]) -> anyhow::Result<()> {
    let port = free_port();
    let directory = std::env::temp_dir().join(format!(
        "transferd-ceiling-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::create_dir_all(&directory)?;
    let broker = spawn_tansu(port, port, storage, &directory)?;
    let brokers = format!("127.0.0.1:{port}");
    let outcome = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for run in runs {
            let topic = run.topic();
            create_topic(&brokers, &topic, run.partitions).await?;
            let producer = producer(&brokers, run.linger_ms)?;
            // Warm-up: metadata, connections, the first storage pages.
            send_for(&producer, &topic, Duration::from_secs(2), run.traced).await;
            let before = process_figures(broker.id()).map_or(0, |f| f.0);
            let started = Instant::now();
            let (acknowledged, failed) = send_for(
                &producer,
                &topic,
                Duration::from_secs(seconds()),
                run.traced,
            )
            .await;
            let elapsed = started.elapsed().as_secs_f64();
            let ticks = process_figures(broker.id()).map_or(0, |f| f.0) - before;
            let cpu_us = ticks as f64 * 1e6 / TICKS_PER_SECOND as f64;
            println!(
                "| {name} | {} | {} | {} | {:.0} | {failed} | {:.0} |",
                run.partitions,
                run.linger_ms,
                if run.traced {
                    "transaction_id, traceparent"
                } else {
                    "transaction_id"
                },
                acknowledged as f64 / elapsed,
                cpu_us / acknowledged.max(1) as f64,
            );
        }
        anyhow::Ok(())
    }
    .await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&directory);
    outcome
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "rdkafka alone against a private Tansu, transferd's producer settings, {IN_FLIGHT} sends in flight, {} s per run",
        seconds()
    );
    println!();
    println!(
        "| storage | partitions | linger ms | headers | acknowledged msgs/s | failed | broker CPU µs per message |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let run = |partitions, linger_ms, traced| Run {
        partitions,
        linger_ms,
        traced,
    };
    measure(
        BrokerStorage::Sqlite,
        "sqlite",
        &[
            run(6, 1, false),
            run(6, 1, true),
            run(1, 1, true),
            run(6, 5, true),
            run(1, 5, true),
        ],
    )
    .await?;
    measure(
        BrokerStorage::Memory,
        "memory",
        &[run(6, 1, false), run(6, 1, true)],
    )
    .await?;
    Ok(())
}
