//! How far the transfer log has been written.
//!
//! The reconciler needs one fact: "every message written before this moment has been
//! settled". It gets it by comparing the log's end offsets (high watermarks), read at that
//! moment, with settlement's positions, which the ledger keeps (`settlement::ledger`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{KafkaRole, Services};
use crate::stores::kafka::{LogError, client_config};

/// Offsets per partition of one topic.
pub type Offsets = BTreeMap<i32, i64>;

pub struct LogPosition {
    consumer: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl LogPosition {
    /// For `topic` (physical name).
    pub fn new(services: &Services, topic: String) -> Result<LogPosition, LogError> {
        let properties = services.kafka_properties()?;
        let consumer: BaseConsumer = client_config(
            services,
            &properties,
            KafkaRole::Consumer,
            ClientConfig::new(),
        )
        .create()?;
        Ok(LogPosition {
            consumer: Arc::new(consumer),
            topic,
            timeout: services.kafka_timeout(),
        })
    }

    /// The offset the next message of each partition will get.
    pub async fn end_offsets(&self) -> Result<Offsets, LogError> {
        let (consumer, topic, timeout) = self.parts();
        blocking(move || {
            let mut ends = Offsets::new();
            for partition in partitions(&*consumer, &topic, timeout)? {
                let (_low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
                ends.insert(partition, high);
            }
            Ok(ends)
        })
        .await
    }

    fn parts(&self) -> (Arc<BaseConsumer>, String, Duration) {
        (Arc::clone(&self.consumer), self.topic.clone(), self.timeout)
    }
}

/// True when settlement's position in every partition has reached `ends` (the log's end when a
/// wait began): every message written before then has been settled (or skipped as
/// unreadable). `ends_now` is the log's end read after the positions: a position past it means
/// the broker lost its log and numbers a new one from 0, whose messages may not be settled
/// yet, so that partition does not count as consumed.
pub fn consumed_through(positions: &Offsets, ends: &Offsets, ends_now: &Offsets) -> bool {
    ends.iter().all(|(partition, end)| {
        let now = ends_now.get(partition).copied().unwrap_or(0);
        *end <= 0
            || positions
                .get(partition)
                .is_some_and(|position| position >= end && *position <= now)
    })
}

/// The partitions of `topic`; an error when the broker does not know it. Blocking.
pub fn partitions(
    consumer: &impl Consumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, LogError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic && found.error().is_none())
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(LogError::NotSent(format!(
            "topic {topic} has no partitions"
        )));
    }
    Ok(partitions)
}

/// librdkafka's metadata and offset calls block; keep them off the runtime's threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| LogError::NotSent(format!("offset query panicked: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_when_every_partition_reached_its_end() {
        let ends = Offsets::from([(0, 5), (1, 0), (2, 7)]);
        let now = Offsets::from([(0, 9), (1, 0), (2, 9)]);
        assert!(consumed_through(
            &Offsets::from([(0, 5), (2, 9)]),
            &ends,
            &now
        ));
        assert!(!consumed_through(
            &Offsets::from([(0, 5), (2, 6)]),
            &ends,
            &now
        ));
        assert!(!consumed_through(&Offsets::from([(0, 5)]), &ends, &now));
        assert!(consumed_through(
            &Offsets::new(),
            &Offsets::from([(0, 0)]),
            &now
        ));
    }

    #[test]
    fn a_position_past_the_log_end_is_a_lost_log_not_a_consumed_one() {
        let ends = Offsets::from([(0, 5)]);
        assert!(!consumed_through(
            &Offsets::from([(0, 5_000)]),
            &ends,
            &Offsets::from([(0, 30)])
        ));
    }
}
