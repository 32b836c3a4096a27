//! The transfer log in Kafka: an idempotent producer that reports success only for messages
//! the broker acknowledged on all in-sync replicas.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Services;

/// Topics a guest may publish to, by their logical (unprefixed) names.
pub const GUEST_TOPICS: &[&str] = &[TRANSFER_TOPIC];

/// Accepted transfers (written through the guest, read by settlement).
pub const TRANSFER_TOPIC: &str = "transfer_topic";

/// Settlement outcomes, one event per transfer.
pub const EVENTS_TOPIC: &str = "transfer_events";

/// Every topic transferd writes, created at start-up when missing.
pub const HOST_TOPICS: &[&str] = &[TRANSFER_TOPIC, EVENTS_TOPIC];

/// A consumer in `group` (prefixed like topics) that commits offsets only when told to.
pub fn settlement_consumer(services: &Services, group: &str) -> Result<StreamConsumer, LogError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &services.kafka_brokers)
        .set("group.id", format!("{}{group}", services.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A killed worker's partitions move to the others within seconds, not the default 45.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // Holds stay until settlement; a fetch that waits librdkafka's default 500 ms for data
        // (Tansu waits the whole time) keeps money held half a second longer than needed.
        .set("fetch.wait.max.ms", "20")
        .set("reconnect.backoff.max.ms", "1000")
        .create()?)
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

fn new_producer(brokers: &str, kafka_timeout_ms: u64) -> Result<FutureProducer, LogError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The delivery report is final within this time: acknowledged or failed, never
        // delivered after the request was told it failed.
        .set("message.timeout.ms", kafka_timeout_ms.to_string())
        .set("linger.ms", "1")
        .set("reconnect.backoff.max.ms", "1000")
        .create()?)
}

/// Where a message landed.
#[derive(Debug, Clone, Copy)]
pub struct Acknowledged {
    pub partition: i32,
    pub offset: i64,
}

pub struct TransferLog {
    /// Replaced when it hits a fatal error (an idempotent producer fenced by the broker after
    /// an outage cannot produce again); the generation says which one failed.
    producer: RwLock<(u64, FutureProducer)>,
    kafka_timeout_ms: u64,
    brokers: String,
    topic_prefix: String,
    timeout: Duration,
}

impl TransferLog {
    /// Creates the producer; it connects in the background and reconnects by itself.
    pub fn new(services: &Services) -> Result<TransferLog, LogError> {
        let producer = new_producer(&services.kafka_brokers, services.kafka_timeout_ms)?;
        Ok(TransferLog {
            producer: RwLock::new((0, producer)),
            kafka_timeout_ms: services.kafka_timeout_ms,
            brokers: services.kafka_brokers.clone(),
            topic_prefix: services.topic_prefix.clone(),
            timeout: services.kafka_timeout(),
        })
    }

    /// The broker's name for a logical topic.
    pub fn physical_topic(&self, logical: &str) -> String {
        physical_topic(&self.topic_prefix, logical)
    }

    /// Produces one message and waits for the broker's acknowledgement. A failure says
    /// whether the message may still be in the log ([`LogError::in_doubt`]).
    pub async fn produce(
        &self,
        logical_topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Acknowledged, LogError> {
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
        match producer.send(record, self.timeout).await {
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
                if certainly_not_sent(&error) {
                    Err(LogError::NotSent(error.to_string()))
                } else {
                    Err(LogError::InDoubt(error.to_string()))
                }
            }
        }
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
        match new_producer(&self.brokers, self.kafka_timeout_ms) {
            Ok(producer) => {
                tracing::warn!(
                    reason,
                    generation = failed_generation + 1,
                    "kafka producer failed fatally; replaced it"
                );
                *guard = (failed_generation + 1, producer);
            }
            Err(error) => tracing::error!(%error, "could not replace the failed kafka producer"),
        }
    }

    /// Creates the topics transferd writes to when they are missing. Production clusters
    /// usually create them beforehand; an existing topic is left as it is. Needs only an
    /// admin client, not a producer.
    pub async fn ensure_topics(
        services: &Services,
        logical_topics: &[&str],
    ) -> Result<(), LogError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &services.kafka_brokers)
            .create()?;
        let timeout = services.kafka_timeout();
        let names: Vec<String> = logical_topics
            .iter()
            .map(|topic| physical_topic(&services.topic_prefix, topic))
            .collect();
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| NewTopic::new(name, services.topic_partitions, TopicReplication::Fixed(1)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
