//! The settlement worker: reads accepted transfers from `transfer_topic` in a consumer group,
//! applies each polled batch in one PostgreSQL transaction, then runs the after-commit effects
//! (cache, holds, events) and only then commits the Kafka offsets.
//!
//! A crash anywhere means the batch is delivered again; the ledger skips transaction ids it
//! already applied and the effects are idempotent, so redelivery changes nothing twice (it
//! re-emits the events, which consumers dedupe by transaction id).

pub mod decide;
pub mod reconcile;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::capabilities::Capabilities;
use crate::config::{Services, Worker};
use crate::shutdown::Stop;
use crate::stores::kafka::{
    EVENTS_TOPIC, TRANSFER_TOPIC, TransferLog, is_unknown_topic, settlement_consumer,
};
use crate::stores::postgres::SettledBatch;
use crate::stores::redis::{SettledBalance, SettledHold};
use decide::TransferMessage;
use watchdog::Watchdog;

/// Longest pause between attempts at a batch that keeps failing (a dependency is down).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How long the worker waits for a first message before it looks around (the watchdog).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Longest wait for the old consumer to leave the group when the worker rejoins.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Runs until `stop` is requested. It is checked between batches and between attempts at a
/// failing batch: an attempt in progress ends (each store bounds its own wait), a batch that
/// did not settle is not committed and will be delivered again.
pub async fn run(
    services: &Services,
    settings: &Worker,
    capabilities: Arc<Capabilities>,
    mut stop: Stop,
) -> Result<(), SettlementError> {
    let log = &capabilities.log;
    let topic = log.physical_topic(TRANSFER_TOPIC);
    let mut consumer = subscribe(services, settings, &topic)?;
    let mut repairs_seen = log.topic_repairs();
    let mut watchdog = Watchdog::new(topic.clone());
    tracing::info!(topic, group = settings.group, "settlement worker started");
    loop {
        let next = tokio::select! {
            next = next_batch(&consumer, settings.batch_max, settings.linger(), log) => next,
            () = stop.requested() => break,
        };
        // Topics created again: positions held from the deleted topic would skip messages of
        // the new one, so whatever was just read is dropped and read again by a new member.
        if log.topic_repairs() != repairs_seen {
            repairs_seen = log.topic_repairs();
            consumer = rejoin(services, settings, &topic, consumer).await?;
            continue;
        }
        if watchdog.should_rejoin(&consumer).await {
            consumer = rejoin(services, settings, &topic, consumer).await?;
            continue;
        }
        let Some(batch) = next else { continue };
        let messages = parse_batch(&batch);
        if !settle_until_done(&capabilities, &messages, &mut stop).await {
            tracing::info!(
                messages = batch.len(),
                "stopping with a batch not settled; it will be delivered again"
            );
            break;
        }
        if log.topic_repairs() != repairs_seen {
            tracing::warn!("topics were created again while settling; not committing this batch");
            continue;
        }
        commit_offsets(&consumer, &batch).await;
    }
    tracing::info!("settlement worker stopped");
    Ok(())
}

/// The worker running as its own task.
pub type WorkerTask = tokio::task::JoinHandle<Result<(), SettlementError>>;

pub fn spawn(
    services: Services,
    settings: Worker,
    capabilities: Arc<Capabilities>,
    stop: Stop,
) -> WorkerTask {
    tokio::spawn(async move { run(&services, &settings, capabilities, stop).await })
}

/// Resolves when the worker task ends, saying how; never when there is no worker. Before a
/// stop was requested any end is unexpected: the caller treats it as fatal.
pub async fn ended(worker: &mut Option<WorkerTask>) -> String {
    let Some(task) = worker.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = task.await;
    *worker = None;
    match outcome {
        Ok(Ok(())) => "it returned without being asked to stop".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => format!("it panicked or was cancelled: {error}"),
    }
}

/// Logs how a worker that was asked to stop ended.
pub fn log_end(outcome: Result<Result<(), SettlementError>, tokio::task::JoinError>) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "the settlement worker failed while stopping"),
        Err(error) => tracing::error!(%error, "the settlement worker panicked while stopping"),
    }
}

fn subscribe(
    services: &Services,
    settings: &Worker,
    topic: &str,
) -> Result<Arc<StreamConsumer>, SettlementError> {
    let consumer = settlement_consumer(services, &settings.group)?;
    consumer.subscribe(&[topic])?;
    Ok(Arc::new(consumer))
}

/// Leaves the group and joins it again as a new member, which makes the broker hand out every
/// partition afresh. The old consumer is closed first (its close blocks, so off the runtime).
async fn rejoin(
    services: &Services,
    settings: &Worker,
    topic: &str,
    old: Arc<StreamConsumer>,
) -> Result<Arc<StreamConsumer>, SettlementError> {
    let closing = tokio::task::spawn_blocking(move || drop(old));
    if tokio::time::timeout(LEAVE_TIMEOUT, closing).await.is_err() {
        tracing::warn!("the old consumer did not close in time; joining anyway");
    }
    let consumer = subscribe(services, settings, topic)?;
    tracing::warn!(topic, group = settings.group, "rejoined the consumer group");
    Ok(consumer)
}

/// Settles `messages`, retrying with back-off while a dependency is down. Returns false when
/// stopping was requested before the batch settled.
async fn settle_until_done(
    capabilities: &Capabilities,
    messages: &[TransferMessage],
    stop: &mut Stop,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match settle(capabilities, messages).await {
            Ok(()) => return true,
            Err(error) => {
                if stop.is_requested() {
                    return false;
                }
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "settling a batch failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.requested() => return false,
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Waits up to [`IDLE_POLL`] for one message, then takes whatever else arrives within
/// `linger`, up to `max`. `None` when nothing came. A topic the broker does not know is
/// recreated (it is the one this worker reads).
async fn next_batch(
    consumer: &StreamConsumer,
    max: usize,
    linger: Duration,
    log: &TransferLog,
) -> Option<Vec<OwnedMessage>> {
    let mut batch = Vec::with_capacity(max);
    match tokio::time::timeout(IDLE_POLL, consumer.recv()).await {
        Ok(Ok(message)) => batch.push(message.detach()),
        Ok(Err(error)) => {
            consumer_error(&error, log).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            return None;
        }
        Err(_idle) => return None,
    }
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                consumer_error(&error, log).await;
                break;
            }
            Err(_elapsed) => break,
        }
    }
    Some(batch)
}

async fn consumer_error(error: &rdkafka::error::KafkaError, log: &TransferLog) {
    tracing::warn!(%error, "consumer error");
    if is_unknown_topic(error)
        && let Err(error) = log.repair_topics().await
    {
        tracing::warn!(%error, "cannot recreate the missing topics yet");
    }
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
