//! The settlement worker: reads accepted transfers from `transfer_topic`, applies each polled
//! batch to the ledger in one PostgreSQL transaction that also moves settlement's position in
//! the log (so each message is applied exactly once), then runs the batch's after-commit
//! effects: new balances into the cache with the holds released, and the batch's event.
//!
//! Positions live in the ledger, not in a Kafka consumer group: the worker holding the topic's
//! advisory lock (`ownership.rs`) assigns itself every partition at the positions the ledger
//! holds. A crash anywhere loses nothing: before the commit the batch is read again; after it,
//! the effects recorded in the same commit are run by the next worker before it reads on
//! (effects are idempotent; events may come twice and consumers dedupe by transaction id).

pub mod decide;
pub mod ledger;
pub mod ownership;
pub mod process;
pub mod quarantine;
pub mod reconcile;
pub mod same_log;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use transferd_message::TransferMessage;

use crate::config::{Services, Worker};
use crate::shutdown::Stop;
use crate::stores::Stores;
use crate::stores::kafka::{
    DEAD_LETTER_TOPIC, EVENTS_TOPIC, TRANSFER_TOPIC, TransferLog, is_unknown_topic,
    settlement_consumer,
};
use crate::stores::log_position::partitions;
use crate::stores::redis::{SettledBalance, SettledHold};
use crate::stores::transfer_state::Reason;
use crate::trace::{REQUEST_ID_KAFKA_HEADER, TRACEPARENT_HEADER, TraceContext};
use decide::Transfer;
use ledger::{Advance, Offsets, SettleError, SettledBatch, Settlements};
use ownership::Ownership;
use quarantine::Quarantined;

/// Longest pause between attempts at a step that keeps failing (a dependency is down).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How long the worker waits for a first message before it looks around.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How often the worker checks that it still holds the settlement lock.
const OWNERSHIP_CHECK: Duration = Duration::from_secs(2);

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

/// How a stretch of settling ended.
enum Ended {
    /// Stopping was requested.
    Stop,
    /// Start over from the ledger's positions (the lock or the position was lost, the topics
    /// were created again, or the log could not be read).
    Restart(String),
}

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

/// Settling one topic while this worker owns it.
struct TopicWorker<'a> {
    services: &'a Services,
    settings: &'a Worker,
    stores: &'a Stores,
    settlements: &'a Settlements,
    topic: &'a str,
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

    /// The partitions whose log is not the one the ledger's position was taken in.
    async fn new_logs(
        &self,
        positions: &Offsets,
    ) -> Result<std::collections::BTreeSet<i32>, String> {
        let fingerprints = self
            .settlements
            .fingerprints(self.topic)
            .await
            .map_err(|error| error.to_string())?;
        let probe = settlement_consumer(self.services, self.settings.fetch_wait_ms)
            .map_err(|error| error.to_string())?;
        same_log::new_logs(
            Arc::new(probe),
            self.topic,
            positions,
            &fingerprints,
            self.services.kafka_timeout(),
        )
        .await
    }

    /// A consumer assigned every partition of the topic at the ledger's positions, or from its
    /// start where the log is a new one (`same_log`), with the log generation the positions
    /// belong to. A topic the broker does not know is created again.
    async fn assign(&self) -> Result<(Arc<StreamConsumer>, i64, Offsets), String> {
        let consumer = settlement_consumer(self.services, self.settings.fetch_wait_ms)
            .map_err(|error| error.to_string())?;
        let consumer = Arc::new(consumer);
        let timeout = self.services.kafka_timeout();
        let (reader, topic) = (Arc::clone(&consumer), self.topic.to_string());
        let found =
            tokio::task::spawn_blocking(move || partitions(&*reader, &topic, timeout)).await;
        let partitions = match found {
            Ok(Ok(partitions)) => partitions,
            Ok(Err(error)) => {
                if let Err(repair) = self.stores.log.repair_topics().await {
                    tracing::warn!(error = %repair, "cannot create the topics yet");
                }
                return Err(format!("cannot read the topic's partitions: {error}"));
            }
            Err(error) => return Err(format!("reading the partitions panicked: {error}")),
        };
        // The generation first: see `Settlements::generation`.
        let generation = self
            .settlements
            .generation(self.topic)
            .await
            .map_err(|error| error.to_string())?;
        let positions = self
            .settlements
            .positions(self.topic, &partitions)
            .await
            .map_err(|error| error.to_string())?;
        let new_logs = self.new_logs(&positions).await?;
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let next = positions.get(&partition).copied().unwrap_or(0);
            let start = if new_logs.contains(&partition) {
                tracing::warn!(
                    topic = self.topic,
                    partition,
                    position = next,
                    "the log is not the one settlement's position was taken in (the topic was created again, or the broker lost its log); settling it from its start"
                );
                Offset::Beginning
            } else {
                Offset::Offset(next)
            };
            list.add_partition_offset(self.topic, partition, start)
                .map_err(|error| error.to_string())?;
        }
        consumer.assign(&list).map_err(|error| error.to_string())?;
        Ok((consumer, generation, positions))
    }
}

/// Where the batch moves settlement's position: per partition it touches, from where the
/// worker stood to past its last message. A message below the position means the broker lost
/// its log and numbers a new one from the start (librdkafka resets to the earliest offset):
/// the new log is settled from there, and the ledger skips anything it already has.
fn advance_of(
    topic: &str,
    generation: i64,
    positions: &Offsets,
    batch: &[OwnedMessage],
) -> Advance {
    let mut advance = Advance {
        topic: topic.to_string(),
        generation,
        ..Advance::default()
    };
    for message in batch {
        let partition = message.partition();
        let from = positions.get(&partition).copied().unwrap_or(0);
        if message.offset() < from && !advance.to.contains_key(&partition) {
            tracing::warn!(
                topic,
                partition,
                offset = message.offset(),
                position = from,
                "the log restarted below settlement's position (the broker lost it); settling the new log from its start"
            );
        }
        advance.from.insert(partition, from);
        let to = advance.to.entry(partition).or_insert(0);
        if message.offset() + 1 > *to {
            *to = message.offset() + 1;
            let print = same_log::fingerprint(message.payload().unwrap_or_default());
            advance.last_payload.insert(partition, print);
        }
    }
    advance
}

/// How one attempt at applying a batch ended, when it did not fail for a while.
enum Applied {
    Settled(SettledBatch),
    /// Another worker moved the position in this topic.
    Moved(String),
    /// The ledger refuses the batch's data: retrying the same batch changes nothing.
    Refused(crate::stores::postgres::LedgerError),
}

/// Applies one batch, then runs its effects. `None` when done; otherwise how the worker ends.
async fn settle_batch(
    stores: &Stores,
    settlements: &Settlements,
    mut read: Read<'_>,
    advance: &Advance,
    stop: &mut Stop,
) -> Option<Ended> {
    let settled = match apply_batch(settlements, &mut read, advance, stop).await {
        Ok(settled) => settled,
        Err(ended) => return Some(ended),
    };
    crate::crash::point("after-ledger-commit");
    count_settled(&read.transfers, &settled);
    count_quarantined(&read);
    let released = read.quarantined_holds(stores).await;
    if !run_effects(
        stores,
        settlements,
        &read.transfers,
        &settled,
        &released,
        stop,
    )
    .await
    {
        return Some(Ended::Stop);
    }
    if !read.quarantined.is_empty() && !dead_letter(stores, settlements, stop).await {
        return Some(Ended::Stop);
    }
    None
}

/// Commits the batch, retrying while the ledger is unavailable. A batch whose data the ledger
/// refuses is searched for the transfers it refuses, which move to the quarantine, and the rest
/// is applied; `read` says what was applied and what was set aside.
async fn apply_batch(
    settlements: &Settlements,
    read: &mut Read<'_>,
    advance: &Advance,
    stop: &mut Stop,
) -> Result<SettledBatch, Ended> {
    loop {
        let applied = retrying(stop, "settling a batch", || async {
            match settlements
                .apply(&read.transfers, &read.quarantined, advance)
                .await
            {
                Ok(settled) => Ok(Applied::Settled(settled)),
                Err(SettleError::PositionMoved { topic }) => Ok(Applied::Moved(topic)),
                Err(SettleError::Ledger(error)) if error.refuses_data() => {
                    Ok(Applied::Refused(error))
                }
                Err(SettleError::Ledger(error)) => Err(error),
            }
        })
        .await;
        let error = match applied {
            None => {
                tracing::info!(
                    messages = read.transfers.len(),
                    "stopping with a batch not settled; it will be read again"
                );
                return Err(Ended::Stop);
            }
            Some(Applied::Moved(topic)) => {
                return Err(Ended::Restart(format!(
                    "another worker moved the position in {topic}"
                )));
            }
            Some(Applied::Settled(settled)) => return Ok(settled),
            Some(Applied::Refused(error)) => error,
        };
        tracing::error!(%error, "the ledger refuses a batch; finding the messages it refuses");
        let refused = retrying(stop, "finding the messages the ledger refuses", || {
            settlements.refused(&read.transfers)
        })
        .await
        .ok_or(Ended::Stop)?;
        if refused.is_empty() {
            // Only the batch as a whole is refused: try it again, as after an outage.
            tracing::error!(%error, "the ledger refuses the batch but none of its transfers alone; retrying");
            tokio::select! {
                () = tokio::time::sleep(MAX_RETRY_DELAY) => {}
                () = stop.requested() => return Err(Ended::Stop),
            }
        }
        read.quarantine(refused);
    }
}

/// A polled batch as settlement reads it: the transfers to apply, each with the index of the
/// log message it came from, and the messages set aside.
struct Read<'a> {
    log: &'a [OwnedMessage],
    transfers: Vec<Transfer>,
    sources: Vec<usize>,
    quarantined: Vec<Quarantined>,
    /// How many of `quarantined` the ledger refused (the others are not transfers at all).
    refused: usize,
}

impl<'a> Read<'a> {
    /// Reads every message with the contract's parser; what it refuses is quarantined, not
    /// skipped: holding the partition back for it would stop every transfer behind it.
    fn of(log: &'a [OwnedMessage]) -> Read<'a> {
        let mut read = Read {
            log,
            transfers: Vec::with_capacity(log.len()),
            sources: Vec::with_capacity(log.len()),
            quarantined: Vec::new(),
            refused: 0,
        };
        for (index, message) in log.iter().enumerate() {
            let payload = message.payload().unwrap_or_default();
            match TransferMessage::parse(payload) {
                Ok(parsed) => {
                    read.transfers.push(Transfer::of(parsed, trace_of(message)));
                    read.sources.push(index);
                }
                Err(error) => read.set_aside(index, &error.to_string()),
            }
        }
        read
    }

    fn set_aside(&mut self, index: usize, error: &str) {
        let message = &self.log[index];
        tracing::error!(
            error,
            partition = message.partition(),
            offset = message.offset(),
            "quarantining a message settlement cannot apply"
        );
        self.quarantined.push(Quarantined::new(
            message.partition(),
            message.offset(),
            message.payload().unwrap_or_default(),
            error,
        ));
    }

    /// Moves the transfers at `refused` (indices into `transfers`, ascending, with the
    /// ledger's words) to the quarantine.
    fn quarantine(&mut self, refused: Vec<(usize, String)>) {
        for (index, error) in refused.into_iter().rev() {
            self.transfers.remove(index);
            let source = self.sources.remove(index);
            self.set_aside(source, &format!("the ledger refuses it: {error}"));
            self.refused += 1;
        }
    }

    /// The holds of quarantined messages that will never settle, to give back now: those whose
    /// pending record (written with the hold) is this very message. A message that only names
    /// another transfer's id (another producer's) releases nothing; the reconciler releases a
    /// hold whose transfer never reaches the ledger. A cache that cannot say releases nothing.
    async fn quarantined_holds(&self, stores: &Stores) -> Vec<SettledHold> {
        let mut holds = Vec::new();
        for message in &self.quarantined {
            let found = &message.found;
            let (Some(id), Some(sender_id), Some(currency)) =
                (found.transaction_id, found.sender_id, &found.currency)
            else {
                continue;
            };
            let id = id.to_string();
            match stores.cache.pending(&id).await {
                Ok(Some(record)) if record == message.payload => holds.push(SettledHold {
                    transaction_id: id,
                    user_id: sender_id,
                    currency: currency.clone(),
                }),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, transaction_id = id, "cannot read a quarantined transfer's pending record; the reconciler will release its hold");
                }
            }
        }
        holds
    }
}

fn count_quarantined(read: &Read<'_>) {
    use crate::metrics::SETTLEMENT_QUARANTINED;
    let unreadable = read.quarantined.len() - read.refused;
    for (cause, count) in [("unreadable", unreadable), ("refused", read.refused)] {
        if count > 0 {
            metrics::counter!(SETTLEMENT_QUARANTINED, "cause" => cause).increment(count as u64);
        }
    }
}

/// Copies every quarantined message not yet on the dead-letter topic there, marking each once
/// acknowledged. False when stopping was requested first (the rest goes at the next start).
async fn dead_letter(stores: &Stores, settlements: &Settlements, stop: &mut Stop) -> bool {
    retrying(
        stop,
        "writing quarantined messages to the dead-letter topic",
        || dead_letter_once(stores, settlements),
    )
    .await
    .is_some()
}

async fn dead_letter_once(
    stores: &Stores,
    settlements: &Settlements,
) -> Result<(), SettlementError> {
    loop {
        let unsent = quarantine::not_dead_lettered(settlements.pool(), 100).await?;
        if unsent.is_empty() {
            return Ok(());
        }
        for entry in unsent {
            let key = format!("{}:{}", entry.partition, entry.log_offset);
            let source = format!(
                "{}/{}/{}/{}",
                entry.topic, entry.log_generation, entry.partition, entry.log_offset
            );
            let headers = [
                ("transferd-error", entry.error.as_str()),
                ("transferd-source", source.as_str()),
            ];
            stores
                .log
                .produce(DEAD_LETTER_TOPIC, &key, &entry.payload, &headers)
                .await?;
            quarantine::dead_lettered(settlements.pool(), entry.quarantine_id).await?;
        }
    }
}

/// Why a quarantined message was not re-driven.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("no quarantined message at {partition}:{offset}")]
    NotFound { partition: i32, offset: i64 },
    #[error("the message at {partition}:{offset} was not re-driven: {error}")]
    Refused {
        partition: i32,
        offset: i64,
        error: ledger::RetryError,
    },
}

/// Re-drives the quarantined message at `partition:offset` of the transfer topic once its
/// cause is fixed: applies it (exactly once: its row is marked in the same transaction, and
/// the ledger skips an id it has) and runs its effects once. Effects that fail stay recorded,
/// for the next worker to take the settlement lock; the reconciler releases the hold meanwhile.
pub async fn redrive(
    stores: &Stores,
    partition: i32,
    offset: i64,
) -> Result<(Transfer, decide::Outcome), RedriveError> {
    let settlements = Settlements::new(stores.ledger.pool().clone());
    let topic = stores.log.physical_topic(TRANSFER_TOPIC);
    let refused = |error: ledger::RetryError| RedriveError::Refused {
        partition,
        offset,
        error,
    };
    let entry = quarantine::find(settlements.pool(), &topic, partition, offset)
        .await
        .map_err(|error| refused(error.into()))?
        .ok_or(RedriveError::NotFound { partition, offset })?;
    let (transfer, settled) = settlements.retry(&entry).await.map_err(refused)?;
    tracing::info!(transaction_id = %transfer.transaction_id, partition, offset, "re-drove a quarantined message");
    let transfers = std::slice::from_ref(&transfer);
    let effects = async {
        update_cache(stores, transfers, &settled, &[]).await?;
        emit_events(stores, transfers, &settled).await?;
        if let Some(batch_id) = settled.effects {
            settlements.effects_done(batch_id).await?;
        }
        Ok::<(), SettlementError>(())
    };
    if let Err(error) = effects.await {
        tracing::warn!(%error, "a re-driven transfer's effects did not run; they stay recorded");
    }
    let outcome = settled.transfers[0].outcome;
    Ok((transfer, outcome))
}

/// The settlement metrics of a committed batch: its size, what it newly applied, and how old
/// its oldest transfer was (time from acceptance to commit).
fn count_settled(messages: &[Transfer], settled: &SettledBatch) {
    use crate::metrics::{SETTLED, SETTLEMENT_BATCH, SETTLEMENT_LAG_SECONDS};
    metrics::histogram!(SETTLEMENT_BATCH).record(messages.len() as f64);
    // One update per status and batch: the worker process relays every update to serve as a
    // line of its own (`metrics_relay`), which per transfer was 8% of the worker's CPU.
    let mut newly_by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (message, transfer) in messages.iter().zip(&settled.transfers) {
        if !transfer.newly_applied {
            continue;
        }
        *newly_by_status
            .entry(transfer.outcome.status().as_str())
            .or_default() += 1;
        let trace = message.trace.as_ref();
        // A span of its own only when exported: it joins the accepting request's trace.
        let span = match trace {
            Some(trace) if crate::otel::enabled() => {
                let span = tracing::info_span!("settle", transaction_id = %message.transaction_id);
                crate::otel::follow(&span, trace);
                span
            }
            _ => tracing::Span::none(),
        };
        span.in_scope(|| {
            tracing::info!(
                transaction_id = %message.transaction_id,
                status = transfer.outcome.status().as_str(),
                reason = transfer.outcome.reason().map(Reason::as_str),
                request_id = trace.map(|t| t.request_id.as_str()),
                trace_id = trace.map(TraceContext::trace_id_hex),
                "settled"
            );
        });
    }
    for (status, count) in newly_by_status {
        metrics::counter!(SETTLED, "status" => status).increment(count);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Some(oldest_ms) = messages.iter().map(|m| m.created_at_ms).min() {
        let age_s = (now_ms.saturating_sub(oldest_ms)).max(0) as f64 / 1000.0;
        metrics::gauge!(SETTLEMENT_LAG_SECONDS).set(age_s);
    }
}

/// Runs the effects a previous owner of the topic recorded and did not finish, and sends the
/// quarantined messages it did not get onto the dead-letter topic. False when
/// stopping was requested first.
async fn finish_outstanding(stores: &Stores, settlements: &Settlements, stop: &mut Stop) -> bool {
    loop {
        let Some((messages, settled)) = retrying(stop, "reading outstanding effects", || {
            settlements.outstanding_effects()
        })
        .await
        else {
            return false;
        };
        if messages.is_empty() {
            break;
        }
        tracing::info!(
            transfers = messages.len(),
            "running the effects a previous worker left"
        );
        if !run_effects(stores, settlements, &messages, &settled, &[], stop).await {
            return false;
        }
    }
    // Quarantined messages a previous worker did not get onto the dead-letter topic.
    dead_letter(stores, settlements, stop).await
}

/// The after-commit effects of settled transfers, retried until they run, then forgotten;
/// `released` are the holds of quarantined messages, given back with the others. False when
/// stopping was requested first (they stay recorded for the next worker).
async fn run_effects(
    stores: &Stores,
    settlements: &Settlements,
    messages: &[Transfer],
    settled: &SettledBatch,
    released: &[SettledHold],
    stop: &mut Stop,
) -> bool {
    if messages.is_empty() && released.is_empty() {
        return true;
    }
    let done = retrying(stop, "running a batch's effects", || async {
        update_cache(stores, messages, settled, released).await?;
        crate::crash::point("after-cache-update");
        emit_events(stores, messages, settled).await?;
        Ok::<(), SettlementError>(())
    })
    .await;
    if done.is_none() {
        return false;
    }
    crate::crash::point("after-events");
    let Some(batch_id) = settled.effects else {
        return true;
    };
    retrying(stop, "forgetting a batch's effects", || {
        settlements.effects_done(batch_id)
    })
    .await
    .is_some()
}

/// Runs `attempt` until it succeeds, backing off while it fails; `None` when stopping was
/// requested first.
async fn retrying<T, E, F, Fut>(stop: &mut Stop, what: &str, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                if stop.is_requested() {
                    return None;
                }
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.requested() => return None,
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

/// The request id and trace context a message's headers carry, if any.
fn trace_of(message: &OwnedMessage) -> Option<TraceContext> {
    let headers = message.headers()?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    TraceContext::of_message(text(REQUEST_ID_KAFKA_HEADER), text(TRACEPARENT_HEADER))
}

/// New balances first, holds released in the same atomic step: available never counts a
/// settled transfer twice (balance lowered and still held is only conservative) or not at all.
async fn update_cache(
    stores: &Stores,
    messages: &[Transfer],
    settled: &SettledBatch,
    released: &[SettledHold],
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
        .chain(released.iter().cloned())
        .collect();
    stores.cache.settle(&balances, &holds).await?;
    Ok(())
}

/// Most transfers one event message reports. A settled batch (up to 10,000 transfers,
/// `TRANSFERD_SETTLEMENT_BATCH`) goes out in messages of at most this many; an entry is at
/// most about 500 bytes, so a message stays far under the broker's default 1 MB limit.
pub const MAX_TRANSFERS_PER_EVENT: usize = 256;

/// One settled transfer's outcome, as an entry of an event message.
#[derive(Debug, serde::Serialize)]
struct TransferEvent<'a> {
    transaction_id: uuid::Uuid,
    status: &'static str,
    reason: Option<&'static str>,
    sender_id: i64,
    receiver_id: i64,
    amount_minor: i64,
    currency: &'a str,
    /// The accepting request's trace context (`traceparent`, and `request_id` when the caller
    /// chose its own), as the transfer's message carried it; absent for effects re-run from
    /// the ledger after a crash (the ledger keeps no trace).
    #[serde(flatten)]
    trace: BTreeMap<&'static str, String>,
}

/// One event message: `{"transfers":[…]}`.
#[derive(Debug, serde::Serialize)]
struct SettledEvent<'a> {
    transfers: &'a [TransferEvent<'a>],
}

/// A settled batch's outcomes as event messages, `(key, payload)` in message order: at most
/// `MAX_TRANSFERS_PER_EVENT` transfers each, `{"transfers":[…]}`, keyed by the first one's
/// transaction id. One message per batch rather than per transfer: the local broker's cost
/// is per record and per header it stores, not per byte.
fn event_messages(messages: &[Transfer], settled: &SettledBatch) -> Vec<(String, Vec<u8>)> {
    assert_eq!(
        messages.len(),
        settled.transfers.len(),
        "one outcome per message"
    );
    let entries: Vec<TransferEvent<'_>> = messages
        .iter()
        .zip(&settled.transfers)
        .map(|(message, outcome)| {
            assert_eq!(
                message.transaction_id, outcome.transaction_id,
                "outcomes follow message order"
            );
            TransferEvent {
                transaction_id: message.transaction_id,
                status: outcome.outcome.status().as_str(),
                reason: outcome.outcome.reason().map(Reason::as_str),
                sender_id: message.sender_id,
                receiver_id: message.receiver_id,
                amount_minor: message.amount_minor,
                currency: &message.currency,
                trace: message
                    .trace
                    .as_ref()
                    .map(|trace| trace.kafka_headers().into_iter().collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    entries
        .chunks(MAX_TRANSFERS_PER_EVENT)
        .map(|chunk| {
            let key = chunk[0].transaction_id.to_string();
            let payload = serde_json::to_vec(&SettledEvent { transfers: chunk })
                .expect("an event of strings and integers serialises");
            (key, payload)
        })
        .collect()
}

/// The batch's event messages (re-emitted on redelivery), all awaited before its effects are
/// forgotten.
async fn emit_events(
    stores: &Stores,
    messages: &[Transfer],
    settled: &SettledBatch,
) -> Result<(), SettlementError> {
    let events = event_messages(messages, settled);
    let deliveries = events
        .iter()
        .map(|(key, payload)| stores.log.produce(EVENTS_TOPIC, key, payload, &[]));
    for delivery in futures::future::join_all(deliveries).await {
        delivery?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use decide::Outcome;
    use ledger::SettledTransfer;

    fn settled(count: usize, trace: Option<TraceContext>) -> (Vec<Transfer>, SettledBatch) {
        let messages: Vec<Transfer> = (0..count)
            .map(|index| Transfer {
                transaction_id: uuid::Uuid::now_v7(),
                sender_id: 1,
                receiver_id: 2 + index as i64,
                amount_minor: 100 + index as i64,
                currency: "USD".into(),
                description: None,
                created_at_ms: 0,
                trace: trace.clone(),
            })
            .collect();
        let transfers = messages
            .iter()
            .enumerate()
            .map(|(index, message)| SettledTransfer {
                transaction_id: message.transaction_id,
                outcome: if index % 2 == 0 {
                    Outcome::Completed
                } else {
                    Outcome::Rejected(Reason::InsufficientFunds)
                },
                newly_applied: true,
            })
            .collect();
        let batch = SettledBatch {
            transfers,
            accounts: BTreeMap::new(),
            effects: None,
        };
        (messages, batch)
    }

    fn entries(payload: &[u8]) -> Vec<serde_json::Value> {
        let event: serde_json::Value = serde_json::from_slice(payload).expect("event JSON");
        event["transfers"]
            .as_array()
            .expect("a transfers array")
            .clone()
    }

    #[test]
    fn a_batch_is_one_event_with_every_outcome_in_order() {
        let (messages, batch) = settled(3, None);
        let events = event_messages(&messages, &batch);
        assert_eq!(events.len(), 1);
        let (key, payload) = &events[0];
        assert_eq!(key, &messages[0].transaction_id.to_string());
        let entries = entries(payload);
        assert_eq!(entries.len(), 3);
        for (entry, message) in entries.iter().zip(&messages) {
            assert_eq!(entry["transaction_id"], message.transaction_id.to_string());
            assert_eq!(entry["amount_minor"], message.amount_minor);
            assert_eq!(entry["receiver_id"], message.receiver_id);
            assert_eq!(entry["currency"], "USD");
            assert!(entry.get("traceparent").is_none(), "no trace, no field");
        }
        assert_eq!(entries[0]["status"], "completed");
        assert_eq!(entries[0]["reason"], serde_json::Value::Null);
        assert_eq!(entries[1]["status"], "rejected");
        assert_eq!(entries[1]["reason"], "insufficient_funds");
    }

    #[test]
    fn a_large_batch_is_split_into_bounded_messages() {
        let count = 2 * MAX_TRANSFERS_PER_EVENT + 1;
        let (messages, batch) = settled(count, None);
        let events = event_messages(&messages, &batch);
        let sizes: Vec<usize> = events
            .iter()
            .map(|(_, payload)| entries(payload).len())
            .collect();
        assert_eq!(
            sizes,
            vec![MAX_TRANSFERS_PER_EVENT, MAX_TRANSFERS_PER_EVENT, 1]
        );
        let reported: Vec<String> = events
            .iter()
            .flat_map(|(_, payload)| entries(payload))
            .map(|entry| {
                entry["transaction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let sent: Vec<String> = messages
            .iter()
            .map(|m| m.transaction_id.to_string())
            .collect();
        assert_eq!(reported, sent, "every transfer once, in message order");
        for (index, (key, _)) in events.iter().enumerate() {
            assert_eq!(key, &sent[index * MAX_TRANSFERS_PER_EVENT]);
        }
    }

    #[test]
    fn entries_carry_the_accepting_requests_trace_and_stay_under_the_message_limit() {
        // The longest request id a caller may choose (128 characters).
        let mut headers = http::HeaderMap::new();
        let request_id = "r".repeat(128);
        headers.insert(
            "x-request-id",
            http::HeaderValue::from_str(&request_id).expect("header value"),
        );
        let trace = TraceContext::of_request(&headers);
        let (messages, batch) = settled(MAX_TRANSFERS_PER_EVENT, Some(trace.clone()));
        let events = event_messages(&messages, &batch);
        assert_eq!(events.len(), 1);
        let entry = &entries(&events[0].1)[0];
        assert_eq!(entry[REQUEST_ID_KAFKA_HEADER], request_id.as_str());
        assert_eq!(entry[TRACEPARENT_HEADER], trace.traceparent());
        assert!(
            events[0].1.len() < 1_000_000 / 4,
            "a full event message is {} bytes",
            events[0].1.len()
        );
    }
}
