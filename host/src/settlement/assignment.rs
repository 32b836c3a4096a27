//! Where a worker reads from and where each batch moves it: every partition assigned at the
//! ledger's positions (or from its start where the log is a new one), and the advance a batch
//! commits with. Apart from the loop because it is the one place that turns positions into
//! offsets, and the one that must notice a log that is not the one they were taken in.

use std::collections::BTreeSet;
use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::ledger::{Advance, Offsets, Settlements};
use super::same_log;
use crate::config::{Services, Worker};
use crate::stores::Stores;
use crate::stores::kafka::settlement_consumer;
use crate::stores::log_position::partitions;

/// Settling one topic while this worker owns it: what assigning its partitions needs, and
/// what the loop (`worker`) settles them with.
pub(super) struct TopicWorker<'a> {
    pub(super) services: &'a Services,
    pub(super) settings: &'a Worker,
    pub(super) stores: &'a Stores,
    pub(super) settlements: &'a Settlements,
    pub(super) topic: &'a str,
}

impl TopicWorker<'_> {
    /// The partitions whose log is not the one the ledger's position was taken in.
    async fn new_logs(&self, positions: &Offsets) -> Result<BTreeSet<i32>, String> {
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
    pub(super) async fn assign(&self) -> Result<(Arc<StreamConsumer>, i64, Offsets), String> {
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
pub(super) fn advance_of(
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
