//! How far the transfer log has been written and how far settlement has consumed it.
//!
//! The reconciler needs one fact from Kafka: "every message written before this moment has
//! been settled". It gets it by comparing the log's end offsets (high watermarks), read at that
//! moment, with the settlement group's committed offsets. The client used here never joins the
//! group: it only reads the group's committed offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Services;
use crate::stores::kafka::LogError;

/// Offsets per partition of one topic.
pub type Offsets = BTreeMap<i32, i64>;

pub struct LogPosition {
    consumer: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl LogPosition {
    /// For `topic` (physical name) and the consumer group `group` (physical name).
    pub fn new(services: &Services, topic: String, group: String) -> Result<LogPosition, LogError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &services.kafka_brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
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
            for partition in partitions(&consumer, &topic, timeout)? {
                let (_low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
                ends.insert(partition, high);
            }
            Ok(ends)
        })
        .await
    }

    /// The group's committed offset of each partition; a partition the group never committed
    /// counts from the start of what the log still holds.
    pub async fn committed_offsets(&self) -> Result<Offsets, LogError> {
        let (consumer, topic, timeout) = self.parts();
        blocking(move || {
            let mut list = TopicPartitionList::new();
            for partition in partitions(&consumer, &topic, timeout)? {
                list.add_partition(&topic, partition);
            }
            let committed = consumer.committed_offsets(list, timeout)?;
            let mut offsets = Offsets::new();
            for element in committed.elements() {
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => {
                        consumer
                            .fetch_watermarks(&topic, element.partition(), timeout)?
                            .0
                    }
                };
                offsets.insert(element.partition(), offset);
            }
            Ok(offsets)
        })
        .await
    }

    fn parts(&self) -> (Arc<BaseConsumer>, String, Duration) {
        (Arc::clone(&self.consumer), self.topic.clone(), self.timeout)
    }
}

/// True when every partition's committed offset has reached `ends`: every message written
/// before `ends` was read has been settled (or skipped as unreadable).
pub fn consumed_through(committed: &Offsets, ends: &Offsets) -> bool {
    ends.iter().all(|(partition, end)| {
        *end <= 0
            || committed
                .get(partition)
                .is_some_and(|committed| committed >= end)
    })
}

fn partitions(
    consumer: &BaseConsumer,
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
        assert!(consumed_through(&Offsets::from([(0, 5), (2, 9)]), &ends));
        assert!(!consumed_through(&Offsets::from([(0, 5), (2, 6)]), &ends));
        assert!(!consumed_through(&Offsets::from([(0, 5)]), &ends));
        assert!(consumed_through(&Offsets::new(), &Offsets::from([(0, 0)])));
    }
}
