//! The transfer log in Kafka: a producer that reports success only for messages the broker
//! acknowledged on all in-sync replicas.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use sqlx::PgPool;

use crate::config::{KafkaProperties, KafkaRole, PropertiesError, Services};

/// Topics a guest may publish to, by their logical (unprefixed) names.
pub const GUEST_TOPICS: &[&str] = &[TRANSFER_TOPIC];

/// Accepted transfers (written through the guest, read by settlement): the message contract's.
pub use transferd_message::TRANSFER_TOPIC;

/// Settlement outcomes, one event per transfer.
pub const EVENTS_TOPIC: &str = "transfer_events";

/// Transfer-log messages settlement could not apply (the quarantine's dead letters), each as
/// the log held it, keyed `partition:offset`, with the reason in a header.
pub const DEAD_LETTER_TOPIC: &str = "transfer_quarantine";

/// Every topic transferd writes, created at start-up and whenever one is found missing.
pub const HOST_TOPICS: &[&str] = &[TRANSFER_TOPIC, EVENTS_TOPIC, DEAD_LETTER_TOPIC];

/// Least time between two attempts at recreating missing topics: every request that meets a
/// missing topic asks, one attempt answers them all.
pub const TOPIC_REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// What runs before a missing topic is created again, given the ledger and the topic's
/// physical name: whoever keeps positions in the topic forgets them, since they count offsets
/// in a log that is gone, and says in how many partitions it had some. The layer that owns the
/// positions supplies it (`settlement::topic_recreated::forget_positions`), so this store runs
/// no other layer's SQL and imports nothing above it; it only says when.
pub type ForgetPositions =
    for<'a> fn(&'a PgPool, &'a str) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

/// The positions kept in the topics (settlement's, in the ledger) and how they are forgotten.
#[derive(Clone)]
pub struct KeptPositions {
    pub ledger: PgPool,
    pub forget: ForgetPositions,
}

/// The settlement worker's consumer: reads partitions it assigns itself, commits nothing.
pub fn settlement_consumer(
    services: &Services,
    fetch_wait_ms: u64,
) -> Result<StreamConsumer, LogError> {
    let properties = services.kafka_properties()?;
    Ok(settlement_consumer_config(services, &properties, fetch_wait_ms).create()?)
}

/// A client of `role`: the brokers, transferd's `own` properties, then the operator's
/// (`TRANSFERD_KAFKA_*`), which may tune anything but what [`KafkaProperties`] refuses.
pub fn client_config(
    services: &Services,
    properties: &KafkaProperties,
    role: KafkaRole,
    mut own: ClientConfig,
) -> ClientConfig {
    own.set("bootstrap.servers", &services.kafka_brokers);
    for (name, value) in properties.for_role(role) {
        own.set(name, value);
    }
    own
}

/// The settlement consumer's configuration (see [`settlement_consumer`]).
pub fn settlement_consumer_config(
    services: &Services,
    properties: &KafkaProperties,
    fetch_wait_ms: u64,
) -> ClientConfig {
    let mut own = ClientConfig::new();
    own
        // Never joined: the worker assigns itself partitions at the ledger's positions and
        // commits nothing to the broker. librdkafka still wants a group name for a consumer.
        .set(
            "group.id",
            format!("{}transferd-settlement", services.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only when a position is past the log's end: the broker lost its log and numbers a
        // new one from 0, which is read from its start.
        .set("auto.offset.reset", "earliest")
        // Holds stay until settlement; a fetch that waits librdkafka's default 500 ms for data
        // (Tansu waits the whole time) keeps money held half a second longer than needed, and
        // a short one makes the broker serve many empty fetches (TRANSFERD_SETTLEMENT_FETCH_WAIT_MS).
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        // Small fetches: Tansu serves every storage request of a broker one at a time, and a
        // fetch of librdkafka's default 1 MiB per partition from a backlog (after an outage)
        // holds the producers' requests up past their timeout. Yet one fetch must hold the
        // largest record, a batch of 1,000 transfers (`POST /transfers/batch`): Tansu's SQLite
        // storage serves nothing of a record larger than the fetch, which would stop
        // settlement at it.
        .set("max.partition.fetch.bytes", "2097152")
        .set("fetch.max.bytes", "4194304")
        .set("message.max.bytes", "4194304")
        .set("reconnect.backoff.max.ms", "1000")
        // A topic deleted and created again (a broker restarted without its log) is seen
        // within seconds instead of librdkafka's default five minutes.
        .set("topic.metadata.refresh.interval.ms", "5000");
    client_config(services, properties, KafkaRole::Consumer, own)
}

/// The broker does not know the topic (or partition): nothing was written, and creating the
/// topic is the fix. `UnknownTopic` and `UnknownPartition` are librdkafka's own codes, after
/// metadata said so (a topic deleted under a running producer gives the second).
pub fn is_unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Refused before it left this process (or by the broker without writing it): the
    /// message is certainly not in the log.
    #[error("kafka did not take the message: {0}")]
    NotSent(String),
    /// The message may or may not be in the log (a timeout, a connection lost after sending):
    /// only the log or the ledger can tell later.
    #[error("kafka did not acknowledge the message in time, it may still be written: {0}")]
    InDoubt(String),
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error(transparent)]
    Settings(#[from] PropertiesError),
}

impl LogError {
    /// True when the message may have reached the broker.
    pub fn in_doubt(&self) -> bool {
        matches!(self, LogError::InDoubt(_))
    }
}

/// Whether a failed produce certainly left nothing in the log. Only errors known to happen
/// before the message is sent (or a broker refusal that writes nothing) count; every other
/// error, timeouts and lost connections first, leaves the outcome in doubt.
fn certainly_not_sent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidArgument
                | RDKafkaErrorCode::InvalidConfig
        )
    )
}

/// librdkafka failed the message while freeing the partition it was queued on. It uses the
/// same code while the whole producer is being destroyed, but a send holds its producer, so
/// here it means the partition ([`ProduceFailure::Dropped`]).
fn dropped_with_its_partition(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerDestroy)
}

/// The broker's name for a logical topic under `prefix`.
fn physical_topic(prefix: &str, logical: &str) -> String {
    format!("{prefix}{logical}")
}

/// Errors after which an idempotent producer never succeeds again. librdkafka recovers from
/// them itself only where the broker supports bumping the producer epoch (KIP-360); Tansu 0.6
/// answers that with ProducerFenced, and the producer would stay fenced forever.
fn producer_is_stuck(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::Fatal
        )
    )
}

fn new_producer(services: &Services) -> Result<FutureProducer, LogError> {
    let properties = services.kafka_properties()?;
    Ok(producer_config(services, &properties).create()?)
}

/// The producer's configuration (see [`new_producer`]).
pub fn producer_config(services: &Services, properties: &KafkaProperties) -> ClientConfig {
    let mut own = ClientConfig::new();
    own
        // Idempotent unless the broker cannot take it (TRANSFERD_KAFKA_IDEMPOTENCE): Tansu
        // 0.6's SQLite engine panics in its idempotent-producer check ("more or less than one
        // row") after a timed-out request, taking the whole broker down. Without it a retried
        // send may write a message twice; settlement applies a transaction id once, and the
        // order of two transfers does not change what each holds.
        .set("enable.idempotence", services.kafka_idempotence.to_string())
        .set("acks", "all")
        // The delivery report is final within this time: acknowledged or failed, never
        // delivered after the request was told it failed.
        .set("message.timeout.ms", services.kafka_timeout_ms.to_string())
        .set("linger.ms", services.kafka_linger_ms.to_string())
        .set("reconnect.backoff.max.ms", "1000")
        // A topic missing from the broker fails the message at once (UnknownTopic, which
        // `produce` repairs) instead of waiting out librdkafka's 30 s propagation allowance
        // and timing out as if the broker were down.
        .set("topic.metadata.propagation.max.ms", "1000");
    client_config(services, properties, KafkaRole::Producer, own)
}

/// Why one send failed; an unknown topic is worth creating and sending again, and a message
/// librdkafka dropped with its partition is worth sending again.
enum ProduceFailure {
    UnknownTopic(String),
    /// The message was queued on a partition that metadata then said was gone (its topic was
    /// deleted, or created again): librdkafka fails what is still queued there with
    /// `BrokerDestroy` when it frees the partition, although the producer lives on. The
    /// message may have been sent before (an earlier try that timed out), so it is in doubt.
    Dropped(String),
    Failed(LogError),
}

impl ProduceFailure {
    fn into_log_error(self) -> LogError {
        match self {
            ProduceFailure::UnknownTopic(reason) => LogError::NotSent(reason),
            ProduceFailure::Dropped(reason) => LogError::InDoubt(reason),
            ProduceFailure::Failed(error) => error,
        }
    }
}

/// `error` of a later send, when an earlier send of the same message may be in the log: a
/// failure that is certain for this send is not for the message.
fn after_doubtful_send(earlier: Option<&str>, error: LogError) -> LogError {
    match earlier {
        Some(earlier) if !error.in_doubt() => LogError::InDoubt(format!(
            "{error}; an earlier send may be in the log: {earlier}"
        )),
        _ => error,
    }
}

/// Where a message landed.
#[derive(Debug, Clone, Copy)]
pub struct Acknowledged {
    pub partition: i32,
    pub offset: i64,
}

pub struct TransferLog {
    /// Replaced when it hits a fatal error (an idempotent producer fenced by the broker after
    /// an outage cannot produce again) and after missing topics were created (its metadata
    /// still says they do not exist); the generation says which one is replaced.
    producer: RwLock<(u64, FutureProducer)>,
    services: Services,
    /// The positions in a topic that are forgotten before it is created again (see
    /// [`TransferLog::ensure_topics`]).
    positions: KeptPositions,
    timeout: Duration,
    /// When topics were last recreated; one attempt at a time (see [`TransferLog::repair_topics`]).
    last_repair: tokio::sync::Mutex<Option<Instant>>,
    /// Grows with every repair: a consumer that read the topic before must start over.
    repairs: AtomicU64,
    /// Set while a metadata request of [`TransferLog::reachable`] runs on a blocking thread.
    metadata_in_flight: Arc<AtomicBool>,
}

/// A blocking call that runs at most once at a time: the flag stays set until this is dropped,
/// which the blocking closure does when it ends (or when it never runs).
struct InFlight(Arc<AtomicBool>);

impl InFlight {
    /// Sets the flag; `None` when it was set already.
    fn begin(flag: &Arc<AtomicBool>) -> Option<InFlight> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(InFlight(Arc::clone(flag)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl TransferLog {
    /// Creates the producer; it connects in the background and reconnects by itself.
    pub fn new(services: &Services, positions: KeptPositions) -> Result<TransferLog, LogError> {
        let producer = new_producer(services)?;
        Ok(TransferLog {
            producer: RwLock::new((0, producer)),
            services: services.clone(),
            positions,
            timeout: services.kafka_timeout(),
            last_repair: tokio::sync::Mutex::new(None),
            repairs: AtomicU64::new(0),
            metadata_in_flight: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether the broker answers a metadata request for the transfer topic within `timeout`,
    /// and has it; with `TRANSFERD_CREATE_TOPICS=false`, every one of [`HOST_TOPICS`], since
    /// none is created when missing (the error names those the broker lacks). librdkafka's
    /// blocking call runs off the async threads and ends by itself after `timeout`, whether or
    /// not anyone still waits for it; while one runs no other starts (the answer is then that
    /// it has not ended), so callers that stopped waiting cannot pile up blocking threads.
    pub async fn reachable(&self, timeout: Duration) -> Result<(), LogError> {
        let Some(in_flight) = InFlight::begin(&self.metadata_in_flight) else {
            return Err(LogError::NotSent(
                "the previous metadata request has not ended yet".to_string(),
            ));
        };
        let producer = self
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone();
        let needed = if self.services.create_topics {
            &[TRANSFER_TOPIC][..]
        } else {
            HOST_TOPICS
        };
        let topics: Vec<String> = needed
            .iter()
            .map(|topic| self.physical_topic(topic))
            .collect();
        let asked = tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
            let mut missing = Vec::new();
            for topic in topics {
                let metadata = producer.client().fetch_metadata(Some(&topic), timeout)?;
                let known = metadata
                    .topics()
                    .iter()
                    .any(|found| found.name() == topic && found.error().is_none());
                if !known {
                    missing.push(topic);
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(LogError::NotSent(format!(
                    "the broker has no topic {}",
                    missing.join(", ")
                )))
            }
        });
        asked
            .await
            .map_err(|error| LogError::NotSent(format!("the metadata request failed: {error}")))?
    }

    /// The broker's name for a logical topic.
    pub fn physical_topic(&self, logical: &str) -> String {
        physical_topic(&self.services.topic_prefix, logical)
    }

    /// Produces one message and waits for the broker's acknowledgement. A message that met a
    /// topic the broker does not know, or that librdkafka dropped with its partition (the
    /// topic vanished under it, [`ProduceFailure::Dropped`]), is sent once more after the
    /// missing topics are created (see [`TransferLog::repair_topics`]). An unknown topic means
    /// nothing was written; a dropped message may be in the log already, and a second copy is
    /// applied once by settlement (by transaction id). At most two sends and one repair, so
    /// the whole wait stays within twice the Kafka timeout plus a database round trip (what
    /// `TRANSFERD_GUEST_TIMEOUT_MS` must exceed). A failure says whether the message may still
    /// be in the log ([`LogError::in_doubt`]).
    pub async fn produce(
        &self,
        logical_topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Acknowledged, LogError> {
        let failure = match self
            .produce_once(logical_topic, key, payload, headers)
            .await
        {
            Ok(acknowledged) => return Ok(acknowledged),
            Err(failure) => failure,
        };
        let (reason, earlier) = match failure {
            ProduceFailure::UnknownTopic(reason) => (reason, None),
            ProduceFailure::Dropped(reason) => (reason.clone(), Some(reason)),
            ProduceFailure::Failed(error) => return Err(error),
        };
        tracing::warn!(
            topic = self.physical_topic(logical_topic),
            reason,
            "the topic is unknown or changed under the message; creating missing topics and sending again"
        );
        let resent = match self.repair_topics().await {
            Ok(()) => self
                .produce_once(logical_topic, key, payload, headers)
                .await
                .map_err(ProduceFailure::into_log_error),
            Err(error) => Err(error),
        };
        resent.map_err(|error| after_doubtful_send(earlier.as_deref(), error))
    }

    async fn produce_once(
        &self,
        logical_topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Acknowledged, ProduceFailure> {
        let topic = self.physical_topic(logical_topic);
        let mut owned_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned_headers = owned_headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(owned_headers);
        // queue_timeout bounds the wait for room in the local queue; message.timeout.ms bounds
        // the wait for the acknowledgement.
        let (generation, producer) = self.current_producer();
        let started = std::time::Instant::now();
        let sent = producer.send(record, self.timeout).await;
        metrics::histogram!(crate::metrics::KAFKA_PRODUCE_DURATION, "topic" => logical_topic.to_owned())
            .record(started.elapsed().as_secs_f64());
        let failure = |kind: &'static str| {
            metrics::counter!(crate::metrics::KAFKA_PRODUCE_ERRORS, "topic" => logical_topic.to_owned(), "kind" => kind)
                .increment(1);
        };
        match sent {
            Ok(delivery) => Ok(Acknowledged {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => {
                if let Some((_, reason)) = producer.client().fatal_error() {
                    self.replace_producer(generation, &reason);
                } else if producer_is_stuck(&error) {
                    self.replace_producer(generation, &error.to_string());
                }
                if is_unknown_topic(&error) {
                    failure("unknown_topic");
                    Err(ProduceFailure::UnknownTopic(error.to_string()))
                } else if dropped_with_its_partition(&error) {
                    failure("dropped");
                    Err(ProduceFailure::Dropped(error.to_string()))
                } else if certainly_not_sent(&error) {
                    failure("not_sent");
                    Err(ProduceFailure::Failed(LogError::NotSent(error.to_string())))
                } else {
                    failure("in_doubt");
                    Err(ProduceFailure::Failed(LogError::InDoubt(error.to_string())))
                }
            }
        }
    }

    /// Creates whichever of [`HOST_TOPICS`] is missing, then replaces the producer so its
    /// metadata knows them. Rate-limited: callers that arrive while an attempt runs, or within
    /// [`TOPIC_REPAIR_INTERVAL`] of the last one, share its result instead of asking again.
    pub async fn repair_topics(&self) -> Result<(), LogError> {
        let mut last = self.last_repair.lock().await;
        if last.is_some_and(|at| at.elapsed() < TOPIC_REPAIR_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let (generation, _) = self.current_producer();
        TransferLog::ensure_topics(&self.services, &self.positions, HOST_TOPICS).await?;
        self.replace_producer(generation, "missing topics were created");
        self.repairs.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(
            topics = ?HOST_TOPICS,
            prefix = self.services.topic_prefix,
            "recreated missing topics"
        );
        Ok(())
    }

    /// How many times missing topics were created. A consumer subscribed before the last
    /// repair may hold positions in the topic that was deleted; librdkafka does not notice a
    /// topic created again under the same name, so such a consumer must be replaced.
    pub fn topic_repairs(&self) -> u64 {
        self.repairs.load(Ordering::SeqCst)
    }

    /// Waits until every message handed to the producer was acknowledged or failed, at most
    /// `timeout` (the producer's wait blocks, so it runs off the runtime).
    pub async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let (_, producer) = self.current_producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|error| LogError::NotSent(format!("flushing panicked: {error}")))??;
        Ok(())
    }

    fn current_producer(&self) -> (u64, FutureProducer) {
        let guard = self.producer.read().unwrap_or_else(PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Swaps in a new producer unless another request already replaced this generation.
    fn replace_producer(&self, failed_generation: u64, reason: &str) {
        let mut guard = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if guard.0 != failed_generation {
            return;
        }
        match new_producer(&self.services) {
            Ok(producer) => {
                tracing::warn!(
                    reason,
                    generation = failed_generation + 1,
                    "replaced the kafka producer"
                );
                *guard = (failed_generation + 1, producer);
            }
            Err(error) => tracing::error!(%error, "could not replace the failed kafka producer"),
        }
    }

    /// Creates the topics transferd writes to when they are missing. Production clusters
    /// usually create them beforehand; an existing topic is left as it is. Needs only an
    /// admin client, not a producer.
    ///
    /// A missing topic that settlement has positions in was deleted, or lived on a broker that
    /// lost its log: the topic created now numbers its messages from 0 again, and a worker
    /// that kept the old positions would skip every message below them. So settlement's
    /// positions in it are forgotten first (`positions.forget`), before it exists again; a
    /// crash in between leaves
    /// the topic missing, and the next attempt forgets again (nothing to lose: reading a log
    /// from its start is safe, the ledger skips what it has).
    pub async fn ensure_topics(
        services: &Services,
        positions: &KeptPositions,
        logical_topics: &[&str],
    ) -> Result<(), LogError> {
        let properties = services.kafka_properties()?;
        let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
            client_config(services, &properties, KafkaRole::Admin, ClientConfig::new()).create()?,
        );
        let timeout = services.kafka_timeout();
        let names: Vec<String> = logical_topics
            .iter()
            .map(|topic| physical_topic(&services.topic_prefix, topic))
            .collect();
        let missing = missing_topics(&admin, &names, timeout).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if !services.create_topics {
            return Err(LogError::NotSent(format!(
                "the broker has no topic {}; create it ({} is false)",
                missing.join(", "),
                crate::config::setting!(Services, create_topics)
            )));
        }
        for name in &missing {
            let forgotten = (positions.forget)(&positions.ledger, name)
                .await
                .map_err(|error| {
                    LogError::NotSent(format!(
                        "forgetting settlement's positions in {name} before creating it failed: {error}"
                    ))
                })?;
            if forgotten > 0 {
                tracing::warn!(
                    topic = name,
                    partitions = forgotten,
                    "the topic is gone but settlement had positions in it; they are forgotten, so the topic created again is settled from its start"
                );
            }
        }
        let min_insync = services.topic_min_insync_replicas.map(|n| n.to_string());
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| new_topic(services, name, min_insync.as_deref()))
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::NotSent(format!(
                        "creating topic {name} failed: {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A topic as transferd creates it: its partitions and replicas, and `min.insync.replicas`
/// when set (else the broker's default).
fn new_topic<'a>(services: &Services, name: &'a str, min_insync: Option<&'a str>) -> NewTopic<'a> {
    let replication = TopicReplication::Fixed(services.topic_replication_factor);
    let topic = NewTopic::new(name, services.topic_partitions, replication);
    match min_insync {
        Some(replicas) => topic.set("min.insync.replicas", replicas),
        None => topic,
    }
}

/// Which of `names` the broker does not know. Only the broker's own "unknown topic" counts:
/// any other failure is an error, so a broker that cannot answer never makes settlement
/// forget its positions. librdkafka's metadata call blocks, so it runs off the runtime.
async fn missing_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>, LogError> {
    let (admin, names) = (Arc::clone(admin), names.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for name in names {
            let metadata = admin.inner().fetch_metadata(Some(&name), timeout)?;
            let error = match metadata.topics().iter().find(|found| found.name() == name) {
                None => Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART),
                Some(found) => found.error(),
            };
            match error {
                None => {}
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => missing.push(name),
                Some(error) => {
                    return Err(LogError::NotSent(format!(
                        "reading topic {name}'s metadata: {error:?}"
                    )));
                }
            }
        }
        Ok(missing)
    })
    .await
    .map_err(|error| LogError::NotSent(format!("the metadata request panicked: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn services(args: &[&str]) -> Services {
        use clap::Parser;

        #[derive(Parser)]
        struct Line {
            #[command(flatten)]
            services: Services,
        }
        let args = std::iter::once("transferd").chain(args.iter().copied());
        Line::try_parse_from(args)
            .expect("the flags parse")
            .services
    }

    fn properties(pairs: &[(&str, &str)]) -> KafkaProperties {
        let environment = pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect::<Vec<_>>();
        KafkaProperties::read(environment, None).expect("valid properties")
    }

    /// What librdkafka itself holds once it took a configuration.
    fn native(config: &ClientConfig, name: &str) -> String {
        config
            .create_native_config()
            .expect("librdkafka takes every property")
            .get(name)
            .expect("a known property")
    }

    /// A cluster's security settings, given as variables, are what librdkafka holds for the
    /// producer and the consumer, beside the properties transferd sets itself.
    #[test]
    fn a_cluster_s_security_settings_reach_librdkafka() {
        let properties = properties(&[
            ("TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
            ("TRANSFERD_KAFKA_CLIENT_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("TRANSFERD_KAFKA_CLIENT_SASL_USERNAME", "transferd"),
            ("TRANSFERD_KAFKA_CLIENT_SASL_PASSWORD", "not-printed"),
            (
                "TRANSFERD_KAFKA_CLIENT_SSL_CA_LOCATION",
                "/etc/kafka/ca.pem",
            ),
            ("TRANSFERD_KAFKA_PRODUCER_COMPRESSION_TYPE", "gzip"),
            ("TRANSFERD_KAFKA_CONSUMER_FETCH_MIN_BYTES", "10"),
        ]);
        // Idempotence named: the scripts turn it off for the development broker in the
        // environment this test runs in.
        let services = services(&["--kafka-brokers=broker-1:9093", "--kafka-idempotence=true"]);
        let producer = producer_config(&services, &properties);
        let consumer = settlement_consumer_config(&services, &properties, 30);
        for config in [&producer, &consumer] {
            assert_eq!(native(config, "security.protocol"), "sasl_ssl");
            assert_eq!(native(config, "sasl.mechanisms"), "SCRAM-SHA-512");
            assert_eq!(native(config, "sasl.username"), "transferd");
            assert_eq!(native(config, "ssl.ca.location"), "/etc/kafka/ca.pem");
            assert_eq!(native(config, "bootstrap.servers"), "broker-1:9093");
        }
        assert_eq!(native(&producer, "enable.idempotence"), "true");
        assert_eq!(native(&producer, "compression.codec"), "gzip");
        assert_eq!(native(&consumer, "fetch.min.bytes"), "10");
        assert_eq!(
            native(&producer, "fetch.min.bytes"),
            "1",
            "a consumer's only"
        );
        assert_eq!(native(&consumer, "enable.auto.commit"), "false");
        let development = services_for_tansu();
        assert_eq!(
            native(
                &producer_config(&development, &properties),
                "enable.idempotence"
            ),
            "false"
        );
    }

    fn services_for_tansu() -> Services {
        services(&["--kafka-idempotence=false"])
    }

    /// This build's librdkafka has TLS and SCRAM (OpenSSL): a SASL_SSL producer is made (it
    /// connects only when used). GSSAPI needs libsasl2, which the build leaves out.
    #[test]
    fn this_librdkafka_speaks_tls_and_scram_but_not_gssapi() {
        let services = services(&["--kafka-brokers=127.0.0.1:1"]);
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let properties = properties(&[
                ("TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
                ("TRANSFERD_KAFKA_CLIENT_SASL_MECHANISM", mechanism),
                ("TRANSFERD_KAFKA_CLIENT_SASL_USERNAME", "transferd"),
                ("TRANSFERD_KAFKA_CLIENT_SASL_PASSWORD", "secret"),
            ]);
            let made: Result<FutureProducer, KafkaError> =
                producer_config(&services, &properties).create();
            assert!(made.is_ok(), "{mechanism}: {:?}", made.err());
        }
        let kerberos = properties(&[
            ("TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
            ("TRANSFERD_KAFKA_CLIENT_SASL_MECHANISM", "GSSAPI"),
        ]);
        let made: Result<FutureProducer, KafkaError> =
            producer_config(&services, &kerberos).create();
        assert!(made.is_err(), "GSSAPI is not in this build");
    }

    #[test]
    fn a_blocking_call_in_flight_keeps_the_next_one_from_starting_until_it_ends() {
        let flag = Arc::new(AtomicBool::new(false));
        let running = InFlight::begin(&flag).expect("the first starts");
        assert!(InFlight::begin(&flag).is_none(), "a second waits for it");
        let blocking = std::thread::spawn(move || drop(running));
        blocking.join().expect("the blocking thread ends");
        assert!(
            InFlight::begin(&flag).is_some(),
            "the next starts once it ended"
        );
    }

    #[test]
    fn only_errors_before_sending_are_certain() {
        let produce = KafkaError::MessageProduction;
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::MessageSizeTooLarge,
        ] {
            assert!(certainly_not_sent(&produce(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(!certainly_not_sent(&produce(code)), "{code:?}");
        }
    }

    #[test]
    fn a_message_dropped_with_its_partition_is_in_doubt_and_sent_again() {
        let dropped = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerDestroy);
        assert!(dropped_with_its_partition(&dropped));
        assert!(!certainly_not_sent(&dropped));
        assert!(!dropped_with_its_partition(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        let failure = ProduceFailure::Dropped(dropped.to_string());
        assert!(failure.into_log_error().in_doubt());
    }

    #[test]
    fn a_certain_failure_after_a_doubtful_send_stays_in_doubt() {
        let refused = || LogError::NotSent("queue full".into());
        assert!(!after_doubtful_send(None, refused()).in_doubt());
        let later = after_doubtful_send(Some("dropped with its partition"), refused());
        assert!(later.in_doubt());
        assert!(later.to_string().contains("dropped with its partition"));
        let doubtful = LogError::InDoubt("timed out".into());
        assert_eq!(
            after_doubtful_send(Some("dropped"), doubtful).to_string(),
            LogError::InDoubt("timed out".into()).to_string()
        );
    }
}
