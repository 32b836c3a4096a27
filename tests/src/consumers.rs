//! Reading back what the host wrote to the log: every message of a topic from its start, until
//! enough have arrived or time runs out.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// One message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: String,
    pub payload: String,
    pub json: Value,
    pub headers: Vec<(String, String)>,
}

/// Reads messages from `topic` from the beginning until `count` arrived or `limit` passed.
pub async fn consume(
    brokers: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Consumed>> {
    consume_until(brokers, topic, limit, |consumed| consumed.len() >= count).await
}

/// The settled transfers that `transfer_events` reports (each message is a settled batch,
/// `{"transfers":[…]}`), in log order, read until `count` of them are there or `limit` passes.
pub async fn consume_transfer_events(
    brokers: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Value>> {
    let consumed = consume_until(brokers, topic, limit, |consumed| {
        event_entries(consumed).count() >= count
    })
    .await?;
    for message in &consumed {
        anyhow::ensure!(
            message.json["transfers"].is_array(),
            "an event message without a transfers array: {}",
            message.payload
        );
        anyhow::ensure!(
            message.headers.is_empty(),
            "event messages carry no headers: {:?}",
            message.headers
        );
    }
    Ok(event_entries(&consumed).cloned().collect())
}

/// The entries of `topic`'s event messages from its start until every transfer of `ids` has
/// one or `limit` passes. Unlike a count, redelivered batches (events are at least once)
/// cannot end the reading early.
pub async fn consume_events_covering(
    brokers: &str,
    topic: &str,
    ids: &std::collections::HashSet<uuid::Uuid>,
    limit: Duration,
) -> anyhow::Result<Vec<Value>> {
    let covers = |consumed: &[Consumed]| {
        let seen: std::collections::HashSet<uuid::Uuid> = event_entries(consumed)
            .filter_map(|entry| entry["transaction_id"].as_str()?.parse().ok())
            .collect();
        ids.is_subset(&seen)
    };
    let consumed = consume_until(brokers, topic, limit, covers).await?;
    Ok(event_entries(&consumed).cloned().collect())
}

fn event_entries(consumed: &[Consumed]) -> impl Iterator<Item = &Value> {
    consumed
        .iter()
        .filter_map(|message| message.json["transfers"].as_array())
        .flatten()
}

/// Messages of `topic` from its start until `done` says so or `limit` passes.
async fn consume_until(
    brokers: &str,
    topic: &str,
    limit: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut consumed = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&consumed) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(_error)) => {
                // The topic may not exist yet the first time the consumer asks; keep waiting.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(message)) => consumed.push(Consumed::read(&message)),
        }
    }
    Ok(consumed)
}

impl Consumed {
    /// A message as text: key, payload (and its JSON, `null` if it is none) and headers.
    fn read(message: &impl Message) -> Consumed {
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string();
        let json = serde_json::from_str(&payload).unwrap_or(Value::Null);
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value =
                            String::from_utf8_lossy(header.value.unwrap_or_default()).to_string();
                        (header.key.to_string(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Consumed {
            key,
            payload,
            json,
            headers,
        }
    }
}
