//! A consumer of `transfer_events`: prints each transfer's change of state as it happens, one
//! line each, from the start of the topic. A starting point for a service that reacts to
//! settled transfers (a notification, a webhook, a read model).
//!
//!   cargo run --release -p transferd --example events
//!
//! Reads TRANSFERD_KAFKA_BROKERS and TRANSFERD_TOPIC_PREFIX as the service does. Messages
//! carry a `schema_version`; one this consumer does not know is skipped with a warning rather
//! than misread. A message may arrive twice after a crash: deduplicate by transaction id and
//! status.

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::Value;

/// The schema version this consumer reads.
const SCHEMA_VERSION: u64 = 1;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers =
        std::env::var("TRANSFERD_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = std::env::var("TRANSFERD_TOPIC_PREFIX").unwrap_or_default();
    let topic = format!("{prefix}transfer_events");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "transferd-events-example")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    eprintln!("reading {topic} on {brokers}");
    loop {
        let message = consumer.recv().await?;
        let Ok(event) = serde_json::from_slice::<Value>(message.payload().unwrap_or_default())
        else {
            eprintln!(
                "skipping a message that is not JSON at offset {}",
                message.offset()
            );
            continue;
        };
        if event["schema_version"].as_u64() != Some(SCHEMA_VERSION) {
            eprintln!("skipping schema version {}", event["schema_version"]);
            continue;
        }
        for transfer in event["transfers"].as_array().into_iter().flatten() {
            println!("{}", line(transfer));
        }
    }
}

/// `019ab3c2-… completed 1 → 2 1050 USD`, and the reason when rejected.
fn line(transfer: &Value) -> String {
    let mut line = format!(
        "{} {} {} → {} {} {}",
        text(&transfer["transaction_id"]),
        text(&transfer["status"]),
        transfer["sender_id"],
        transfer["receiver_id"],
        transfer["amount_minor"],
        text(&transfer["currency"]),
    );
    if let Some(reason) = transfer["reason"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}
