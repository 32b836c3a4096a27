//! Is the log at settlement's position still the log the position was taken in?
//!
//! A position is an offset, and offsets are only meaningful within one life of a topic: a
//! topic deleted and created again, or a broker that lost its log, numbers a new log from 0.
//! A worker that started such a log at the old position would skip every message below it:
//! transfers answered 200 that never settle. So with each position the ledger keeps the
//! SHA-256 of the message just before it (`last_payload_sha256`), and a worker that assigns
//! itself a partition first reads that message back. Another message there (or a log that
//! ends before it) means a new log, which is read from its start; the ledger skips the ids it
//! already has, so reading too much is safe and reading too little is what this prevents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::stores::log_position::Offsets;

/// Longest wait for the messages before the positions to come back.
const MAX_READ_BACK_WAIT: Duration = Duration::from_secs(2);

/// The SHA-256 of the message before each position, by partition.
pub type Fingerprints = BTreeMap<i32, Vec<u8>>;

/// The fingerprint of one message.
pub fn fingerprint(payload: &[u8]) -> Vec<u8> {
    Sha256::digest(payload).to_vec()
}

/// What the watermarks say about one partition's position.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing to check (offset 0, no fingerprint, or the message before the position was
    /// removed by retention): read from the position.
    Trust,
    /// The log ends before the position: it is a new log, read from its start.
    NewLog,
    /// Read the message at this offset and compare it with the fingerprint.
    Check(i64),
}

/// `low`/`high`: the partition's first offset and the offset its next message will get.
pub fn judge(position: i64, fingerprint: Option<&[u8]>, low: i64, high: i64) -> Judgement {
    if position == 0 || fingerprint.is_none() {
        return Judgement::Trust;
    }
    if high < position {
        return Judgement::NewLog;
    }
    let before = position - 1;
    if before < low {
        return Judgement::Trust;
    }
    Judgement::Check(before)
}

/// The partitions of `topic` whose log is not the one their position was taken in. `probe` is
/// a consumer of its own (it is assigned to the messages it reads back). A message that does
/// not come back within `timeout` (at most [`MAX_READ_BACK_WAIT`]) leaves its position
/// standing; an error only when the broker's watermarks cannot be read.
pub async fn new_logs(
    probe: Arc<StreamConsumer>,
    topic: &str,
    positions: &Offsets,
    fingerprints: &Fingerprints,
    timeout: Duration,
) -> Result<BTreeSet<i32>, String> {
    let (mut new, checks) = watermark_judgements(&probe, topic, positions, fingerprints, timeout)
        .await
        .map_err(|error| format!("reading the log's watermarks: {error}"))?;
    if checks.is_empty() {
        return Ok(new);
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in &checks {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|error| error.to_string())?;
    }
    probe.assign(&list).map_err(|error| error.to_string())?;
    let mut pending: BTreeMap<i32, i64> = checks;
    let wait = timeout.min(MAX_READ_BACK_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    while !pending.is_empty() {
        let Ok(received) = tokio::time::timeout_at(deadline, probe.recv()).await else {
            // Seen under load on Tansu's SQLite storage: the fetch at that offset brings
            // nothing. Settling must not wait on the check, so those positions stand, as they
            // did before fingerprints.
            tracing::warn!(
                topic,
                ?pending,
                wait_ms = wait.as_millis() as u64,
                "the messages before settlement's positions could not be read back; the positions stand"
            );
            break;
        };
        let message = received.map_err(|error| error.to_string())?;
        let partition = message.partition();
        let Some(expected) = pending.remove(&partition) else {
            continue;
        };
        if message.offset() > expected {
            // The broker served the log from a later batch (Tansu's memory storage answers a
            // fetch only from a batch that starts at or after the offset): the message
            // cannot be read back, so the position stands, as it did before fingerprints.
            tracing::debug!(
                topic,
                partition,
                expected,
                got = message.offset(),
                "the message before settlement's position cannot be read back"
            );
            continue;
        }
        let same = message.offset() == expected
            && fingerprints.get(&partition).map(Vec::as_slice)
                == Some(fingerprint(message.payload().unwrap_or_default()).as_slice());
        if !same {
            new.insert(partition);
        }
    }
    Ok(new)
}

/// Partitions the watermarks already show are new logs, and the offsets still to read back.
async fn watermark_judgements(
    probe: &Arc<StreamConsumer>,
    topic: &str,
    positions: &Offsets,
    fingerprints: &Fingerprints,
    timeout: Duration,
) -> Result<(BTreeSet<i32>, BTreeMap<i32, i64>), String> {
    let (probe, topic, positions, fingerprints) = (
        Arc::clone(probe),
        topic.to_string(),
        positions.clone(),
        fingerprints.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let mut new = BTreeSet::new();
        let mut checks = BTreeMap::new();
        for (&partition, &position) in &positions {
            let fingerprint = fingerprints.get(&partition).map(Vec::as_slice);
            if judge(position, fingerprint, 0, i64::MAX) == Judgement::Trust {
                continue;
            }
            let (low, high) = probe
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|error| error.to_string())?;
            match judge(position, fingerprint, low, high) {
                Judgement::Trust => {}
                Judgement::NewLog => {
                    new.insert(partition);
                }
                Judgement::Check(offset) => {
                    checks.insert(partition, offset);
                }
            }
        }
        Ok((new, checks))
    })
    .await
    .map_err(|error| format!("panicked: {error}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINT: &[u8] = &[7; 32];

    #[test]
    fn only_a_position_with_a_fingerprint_is_checked() {
        assert_eq!(judge(0, Some(PRINT), 0, 10), Judgement::Trust);
        assert_eq!(judge(5, None, 0, 10), Judgement::Trust);
        assert_eq!(judge(5, Some(PRINT), 0, 10), Judgement::Check(4));
        assert_eq!(judge(10, Some(PRINT), 0, 10), Judgement::Check(9));
    }

    #[test]
    fn a_log_ending_before_the_position_is_new() {
        assert_eq!(judge(5, Some(PRINT), 0, 3), Judgement::NewLog);
        assert_eq!(judge(5, Some(PRINT), 0, 0), Judgement::NewLog);
    }

    #[test]
    fn a_message_removed_by_retention_cannot_be_checked() {
        assert_eq!(judge(5, Some(PRINT), 5, 9), Judgement::Trust);
        assert_eq!(judge(5, Some(PRINT), 4, 9), Judgement::Check(4));
    }

    #[test]
    fn fingerprints_tell_messages_apart() {
        assert_eq!(fingerprint(b"a").len(), 32);
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b"a"), fingerprint(b"a"));
    }
}
