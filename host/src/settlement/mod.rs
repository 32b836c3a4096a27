//! The settlement worker: reads accepted transfers from `transfer_topic` in a consumer group,
//! applies each polled batch in one PostgreSQL transaction, then runs the after-commit effects
//! (cache, holds, events) and only then commits the Kafka offsets.
//!
//! A crash anywhere means the batch is delivered again; the ledger skips transaction ids it
//! already applied and the effects are idempotent, so redelivery changes nothing twice (it
//! re-emits the events, which consumers dedupe by transaction id).

pub mod decide;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::capabilities::Capabilities;
use crate::config::{Services, Worker};
use crate::stores::kafka::{EVENTS_TOPIC, TRANSFER_TOPIC, settlement_consumer};
use crate::stores::postgres::SettledBatch;
use crate::stores::redis::{SettledBalance, SettledHold};
use decide::TransferMessage;

/// Longest pause between attempts at a batch that keeps failing (a dependency is down).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error(transparent)]
    Ledger(#[from] crate::stores::postgres::LedgerError),
    #[error(transparent)]
    Cache(#[from] crate::stores::redis::CacheError),
    #[error(transparent)]
    Log(#[from] crate::stores::kafka::LogError),
    #[error("kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
}

/// Runs until `shutdown` resolves; a batch in progress is finished first.
pub async fn run(
    services: &Services,
    settings: &Worker,
    capabilities: Arc<Capabilities>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SettlementError> {
    let consumer = Arc::new(settlement_consumer(services, &settings.group)?);
    let topic = capabilities.log.physical_topic(TRANSFER_TOPIC);
    consumer.subscribe(&[&topic])?;
    tracing::info!(topic, group = settings.group, "settlement worker started");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = next_batch(&consumer, settings.batch_max, settings.linger()) => batch,
            () = &mut shutdown => break,
        };
        let messages = parse_batch(&batch);
        let mut delay = Duration::from_millis(100);
        loop {
            match settle(&capabilities, &messages).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "settling a batch failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        commit_offsets(&consumer, &batch).await;
    }
    tracing::info!("settlement worker stopped");
    Ok(())
}

/// Waits for one message, then takes whatever else arrives within `linger`, up to `max`.
async fn next_batch(consumer: &StreamConsumer, max: usize, linger: Duration) -> Vec<OwnedMessage> {
    let mut batch = Vec::with_capacity(max);
    while batch.is_empty() {
        match consumer.recv().await {
            Ok(message) => batch.push(message.detach()),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "consumer error");
                break;
            }
            Err(_elapsed) => break,
        }
    }
    batch
}

/// Messages that are not transfer messages are logged and skipped: they cannot be applied,
/// and holding the partition back for them would stop every transfer behind them.
fn parse_batch(batch: &[OwnedMessage]) -> Vec<TransferMessage> {
    batch
        .iter()
        .filter_map(
            |message| match TransferMessage::parse(message.payload().unwrap_or_default()) {
                Ok(parsed) => Some(parsed),
                Err(error) => {
                    tracing::error!(
                        %error,
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping a message that is not a transfer"
                    );
                    None
                }
            },
        )
        .collect()
}

/// Applies a batch and runs its after-commit effects. Safe to call again with the same batch.
pub async fn settle(
    capabilities: &Capabilities,
    messages: &[TransferMessage],
) -> Result<(), SettlementError> {
    if messages.is_empty() {
        return Ok(());
    }
    let settled = capabilities.ledger.settle_batch(messages).await?;
    crate::crash::point("after-ledger-commit");
    update_cache(capabilities, messages, &settled).await?;
    crate::crash::point("after-cache-update");
    emit_events(capabilities, messages, &settled).await?;
    crate::crash::point("after-events");
    Ok(())
}

/// New balances first, holds released in the same atomic step: available never counts a
/// settled transfer twice (balance lowered and still held is only conservative) or not at all.
async fn update_cache(
    capabilities: &Capabilities,
    messages: &[TransferMessage],
    settled: &SettledBatch,
) -> Result<(), SettlementError> {
    let balances: Vec<SettledBalance> = settled
        .accounts
        .iter()
        .map(|((user_id, currency), balance)| SettledBalance {
            user_id: *user_id,
            currency: currency.clone(),
            balance_minor: balance.balance_minor,
            version: balance.version,
        })
        .collect();
    let holds: Vec<SettledHold> = messages
        .iter()
        .map(|message| SettledHold {
            transaction_id: message.transaction_id.to_string(),
            user_id: message.sender_id,
            currency: message.currency.clone(),
        })
        .collect();
    capabilities.cache.settle(&balances, &holds).await?;
    Ok(())
}

/// One event per transfer (re-emitted on redelivery), all awaited before offsets move.
async fn emit_events(
    capabilities: &Capabilities,
    messages: &[TransferMessage],
    settled: &SettledBatch,
) -> Result<(), SettlementError> {
    let events: Vec<(String, Vec<u8>)> = messages
        .iter()
        .zip(&settled.transfers)
        .map(|(message, outcome)| {
            assert_eq!(
                message.transaction_id, outcome.transaction_id,
                "outcomes follow message order"
            );
            let event = json!({
                "transaction_id": message.transaction_id,
                "status": outcome.status,
                "reason": outcome.reason,
                "sender_id": message.sender_id,
                "receiver_id": message.receiver_id,
                "amount_minor": message.amount_minor,
                "currency": message.currency,
            });
            (
                message.transaction_id.to_string(),
                event.to_string().into_bytes(),
            )
        })
        .collect();
    let headers: Vec<[(&str, &str); 1]> = events
        .iter()
        .map(|(transaction_id, _)| [("transaction_id", transaction_id.as_str())])
        .collect();
    let deliveries = events
        .iter()
        .zip(&headers)
        .map(|((key, payload), headers)| {
            capabilities
                .log
                .produce(EVENTS_TOPIC, key, payload, headers)
        });
    for delivery in futures::future::join_all(deliveries).await {
        delivery?;
    }
    Ok(())
}

/// Commits the next offset of every partition in the batch. A failed commit only means the
/// batch is delivered again, which changes nothing.
async fn commit_offsets(consumer: &Arc<StreamConsumer>, batch: &[OwnedMessage]) {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = next
            .entry((message.topic().to_string(), message.partition()))
            .or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
            tracing::warn!(%error, "cannot build the offset list");
            return;
        }
    }
    let consumer = Arc::clone(consumer);
    let committed =
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync)).await;
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "committing offsets failed; the batch will be redelivered")
        }
        Err(error) => tracing::warn!(%error, "committing offsets panicked"),
    }
}
