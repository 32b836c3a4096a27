//! The worker's loop: takes the topic's lock, runs what a previous owner left, then settles
//! batch after batch until stopping, or starts over from the ledger's positions when the lock,
//! the position or the topic changed under it. The other files are the steps it calls.

use std::sync::Arc;
use std::time::{Duration, Instant};
use transferd_message::BATCH_MAX_TRANSFERS;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;

use super::SettlementError;
use super::apply::{Ended, settle_batch};
use super::assignment::{TopicWorker, advance_of};
use super::effects::finish_outstanding;
use super::ledger::Settlements;
use super::ownership::{self, Ownership};
use super::read::Read;
use crate::config::{Services, Worker};
use crate::shutdown::Stop;
use crate::stores::Stores;
use crate::stores::kafka::{TRANSFER_TOPIC, TransferLog, is_unknown_topic};

/// How long the worker waits for a first message before it looks around.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How often the worker checks that it still holds the settlement lock.
const OWNERSHIP_CHECK: Duration = Duration::from_secs(2);

/// Runs until `stop` is requested: takes the topic's lock (or waits for it), runs the effects
/// a previous owner left, then settles the log from the ledger's positions. Stopping is
/// checked between batches and between attempts at a failing step; an attempt in progress
/// ends (each store bounds its own wait).
pub async fn run(
    services: &Services,
    settings: &Worker,
    stores: Arc<Stores>,
    mut stop: Stop,
) -> Result<(), SettlementError> {
    let topic = stores.log.physical_topic(TRANSFER_TOPIC);
    let settlements = Settlements::new(stores.ledger.pool().clone());
    tracing::info!(topic, "settlement worker started");
    loop {
        let mut owner = tokio::select! {
            owner = Ownership::acquire(&services.database_url, &topic) => owner,
            () = stop.requested() => break,
        };
        if !finish_outstanding(&stores, &settlements, &mut stop).await {
            break;
        }
        let worker = TopicWorker {
            services,
            settings,
            stores: &stores,
            settlements: &settlements,
            topic: &topic,
        };
        match worker.settle(&mut owner, &mut stop).await {
            Ended::Stop => break,
            Ended::Restart(why) => {
                tracing::warn!(
                    topic,
                    why,
                    "settlement starts again from the ledger's positions"
                );
                tokio::time::sleep(ownership::RETRY).await;
            }
        }
    }
    tracing::info!("settlement worker stopped");
    Ok(())
}

/// The worker task, as spawned.
pub type WorkerTask = tokio::task::JoinHandle<Result<(), SettlementError>>;

pub fn spawn(services: Services, settings: Worker, stores: Arc<Stores>, stop: Stop) -> WorkerTask {
    tokio::spawn(async move { run(&services, &settings, stores, stop).await })
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

impl TopicWorker<'_> {
    /// Reads the log from the ledger's positions and settles batch after batch, until
    /// stopping, or until something means starting over.
    async fn settle(&self, owner: &mut Ownership, stop: &mut Stop) -> Ended {
        let log = &self.stores.log;
        let repairs_seen = log.topic_repairs();
        let (consumer, generation, mut positions) = match self.assign().await {
            Ok(assigned) => assigned,
            Err(why) => return Ended::Restart(why),
        };
        tracing::info!(
            topic = self.topic,
            ?positions,
            "settling from the ledger's positions"
        );
        let mut last_check = Instant::now();
        loop {
            let next = tokio::select! {
                next = next_batch(&consumer, self.settings.batch_max, self.settings.linger(), log) => next,
                () = stop.requested() => return Ended::Stop,
            };
            // Topics created again: what was just read may come from the deleted topic.
            if log.topic_repairs() != repairs_seen {
                return Ended::Restart("the topics were created again".into());
            }
            if last_check.elapsed() >= OWNERSHIP_CHECK {
                if !owner.still_held().await {
                    return Ended::Restart("the settlement lock was lost".into());
                }
                last_check = Instant::now();
            }
            let Some(batch) = next else {
                // Idle: nothing accepted is waiting.
                metrics::gauge!(crate::metrics::SETTLEMENT_LAG_SECONDS).set(0.0);
                continue;
            };
            let advance = advance_of(self.topic, generation, &positions, &batch);
            let read = Read::of(&batch);
            if let Some(ended) =
                settle_batch(self.stores, self.settlements, read, &advance, stop).await
            {
                return ended;
            }
            positions.extend(advance.to);
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
    // One settlement transaction records at most MAX_EFFECT_TRANSFERS transfers' effects: stop
    // while the next message, a batch record of up to BATCH_MAX_TRANSFERS, still fits.
    let mut transfers: usize = batch.iter().map(transfers_at_most).sum();
    while batch.len() < max && transfers + BATCH_MAX_TRANSFERS <= MAX_EFFECT_TRANSFERS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => {
                let message = message.detach();
                transfers += transfers_at_most(&message);
                batch.push(message);
            }
            Ok(Err(error)) => {
                consumer_error(&error, log).await;
                break;
            }
            Err(_elapsed) => break,
        }
    }
    Some(batch)
}

/// Transfers in one settlement transaction at most (`settlement_effect_batches`' check).
const MAX_EFFECT_TRANSFERS: usize = 10_000;

/// How many transfers a message may carry: a batch record (it starts with its `batch_id`)
/// up to [`BATCH_MAX_TRANSFERS`], anything else one.
fn transfers_at_most(message: &OwnedMessage) -> usize {
    use rdkafka::Message;
    match message.payload() {
        Some(payload) if payload.starts_with(b"{\"batch_id\"") => BATCH_MAX_TRANSFERS,
        _ => 1,
    }
}

async fn consumer_error(error: &rdkafka::error::KafkaError, log: &TransferLog) {
    tracing::warn!(%error, "consumer error");
    if is_unknown_topic(error)
        && let Err(error) = log.repair_topics().await
    {
        tracing::warn!(%error, "cannot recreate the missing topics yet");
    }
}
