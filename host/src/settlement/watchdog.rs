//! Notices partitions of the transfer topic that nobody consumes, and tells the worker to
//! rejoin the consumer group so they are handed out again.
//!
//! Why: Tansu 0.6's group coordinator can leave a dead member's partitions assigned to no
//! live member. It drops a member that missed its session only lazily, when another member
//! talks to it; a survivor that then rejoins is handed back its *old* assignment (a formed
//! group keeps the stored assignments and ignores the leader's new ones), so the dead
//! member's partitions stay orphaned, with no error anywhere, until some member joins or
//! leaves. A new member (a rejoin) makes the coordinator form the group again.
//!
//! The signal is the one an operator would look at: a partition whose committed offset is
//! behind its log end and has not moved for [`STALL_LIMIT`]. A worker that is itself stuck
//! retrying a batch never gets here (it checks between batches), so an outage of a dependency
//! does not make healthy workers churn the group more than once per [`REJOIN_INTERVAL`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How often the committed offsets are compared with the log.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a lagging partition's committed offset may stand still before the worker rejoins.
/// Longer than a session (6 s), so a member that died is gone from the group by then.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Least time between two rejoins of one worker.
pub const REJOIN_INTERVAL: Duration = Duration::from_secs(30);

/// Longest wait for one answer from the broker.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Watchdog {
    topic: String,
    last_check: Instant,
    /// Lagging partitions: committed offset, and since when it has stood there.
    stalled: BTreeMap<i32, (i64, Instant)>,
    last_rejoin: Option<Instant>,
}

impl Watchdog {
    pub fn new(topic: String) -> Watchdog {
        Watchdog {
            topic,
            // A fresh member needs a few seconds to get its first assignment; the first check
            // waits one interval and the stall limit counts from there.
            last_check: Instant::now(),
            stalled: BTreeMap::new(),
            last_rejoin: None,
        }
    }

    /// True when some partition has been lagging without progress for [`STALL_LIMIT`] and the
    /// worker may rejoin now. Cheap when called often: it queries the broker at most every
    /// [`CHECK_INTERVAL`]; a broker that does not answer means "no".
    pub async fn should_rejoin(&mut self, consumer: &Arc<StreamConsumer>) -> bool {
        if self.last_check.elapsed() < CHECK_INTERVAL {
            return false;
        }
        self.last_check = Instant::now();
        let consumer = Arc::clone(consumer);
        let topic = self.topic.clone();
        let lag = match tokio::task::spawn_blocking(move || lagging(&consumer, &topic)).await {
            Ok(Ok(lag)) => lag,
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot compare committed offsets with the log");
                return false;
            }
            Err(error) => {
                tracing::warn!(%error, "the offset check panicked");
                return false;
            }
        };
        let now = Instant::now();
        self.stalled = lag
            .into_iter()
            .map(|(partition, committed)| {
                let since = match self.stalled.get(&partition) {
                    Some((previous, since)) if *previous == committed => *since,
                    _ => now,
                };
                (partition, (committed, since))
            })
            .collect();
        let stuck: Vec<i32> = self
            .stalled
            .iter()
            .filter(|(_, (_, since))| since.elapsed() >= STALL_LIMIT)
            .map(|(partition, _)| *partition)
            .collect();
        let may_rejoin = self
            .last_rejoin
            .is_none_or(|at| at.elapsed() >= REJOIN_INTERVAL);
        if stuck.is_empty() || !may_rejoin {
            return false;
        }
        tracing::warn!(
            topic = self.topic,
            partitions = ?stuck,
            stalled_for_s = STALL_LIMIT.as_secs(),
            "partitions lag and nobody consumes them; rejoining the consumer group"
        );
        self.last_rejoin = Some(Instant::now());
        self.stalled.clear();
        true
    }
}

/// The partitions of `topic` whose committed offset (the log start when none) is behind the
/// log end, with that committed offset. Blocking: several round trips to the broker.
fn lagging(consumer: &StreamConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for partition in &partitions {
        wanted.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(wanted, QUERY_TIMEOUT)?;
    let mut lag = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, QUERY_TIMEOUT)?;
        let position = match committed
            .find_partition(topic, partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        if position < high {
            lag.insert(partition, position);
        }
    }
    Ok(lag)
}
