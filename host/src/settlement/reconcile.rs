//! The hold reconciler: releases holds that no longer hold anything back.
//!
//! A hold is normally released by settlement (after the ledger commit) or by a publish that
//! definitely failed. Both releases can miss: Redis down at the wrong moment, a crash between
//! the hold and the produce, a publish whose outcome was in doubt. Such a hold understates the
//! sender's available balance until someone releases it; this is that someone.
//!
//! A hold is released when its transfer is old enough that any message for it was written
//! long ago (its UUIDv7 carries the acceptance time; `min_age` far exceeds the produce
//! timeout), and either
//! - the ledger has the transfer (settled or rejected: settlement's own release was lost), or
//! - settlement's position (kept in the ledger) has passed every message the transfer log held
//!   when this pass began, and the ledger still does not have it: the message was never written (or was
//!   unreadable), so it will never settle.
//!
//! Every pass is idempotent; replicas may run it at the same time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::capabilities::Capabilities;
use crate::config::{Services, Worker};
use crate::settlement::ledger::Settlements;
use crate::stores::idempotency;
use crate::stores::kafka::{LogError, TRANSFER_TOPIC};
use crate::stores::log_position::{LogPosition, Offsets, consumed_through};
use crate::stores::redis::HeldTransfer;

/// Most holds looked at in one pass; the next pass takes the rest.
const MAX_HOLDS_PER_PASS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Ledger(#[from] crate::stores::postgres::LedgerError),
    #[error(transparent)]
    Cache(#[from] crate::stores::redis::CacheError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Holds found in the cache.
    pub holds: usize,
    /// Too young to judge.
    pub young: usize,
    /// Released: the ledger has the transfer.
    pub released_settled: usize,
    /// Released: the log was consumed past it and the ledger does not have it.
    pub released_absent: usize,
    /// Old, unsettled, and not provably absent (settlement is behind, or the id carries no time).
    pub kept: usize,
    /// Whether settlement had consumed the log as far as it reached when the pass began.
    pub log_consumed: bool,
    /// Old PostgreSQL pending rows (transfers accepted while Redis was down) found.
    pub pending_rows: usize,
    /// Of those, deleted: settled, or provably never written.
    pub pending_rows_released: usize,
    /// Idempotency keys older than their retention, deleted.
    pub idempotency_keys_purged: u64,
}

/// What to do with one hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Young,
    ReleaseSettled,
    ReleaseAbsent,
    Keep,
}

/// The rule, without any I/O. `age_ms` is `None` when the transaction id carries no time.
pub fn verdict(age_ms: Option<u64>, min_age_ms: u64, settled: bool, log_consumed: bool) -> Verdict {
    match age_ms {
        Some(age_ms) if age_ms < min_age_ms => Verdict::Young,
        _ if settled => Verdict::ReleaseSettled,
        Some(_) if log_consumed => Verdict::ReleaseAbsent,
        _ => Verdict::Keep,
    }
}

/// Milliseconds since the Unix epoch at which a UUIDv7 was minted.
pub fn minted_at_ms(transaction_id: &Uuid) -> Option<u64> {
    if transaction_id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = transaction_id.get_timestamp()?.to_unix();
    Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
}

/// Runs a pass every `interval` until `shutdown` resolves; logs what each pass released.
pub async fn run(
    services: &Services,
    settings: &Worker,
    capabilities: Arc<Capabilities>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReconcileError> {
    let Some(interval) = settings.reconcile_interval() else {
        tracing::info!("hold reconciler off");
        return Ok(());
    };
    let position = position(services, &capabilities)?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut shutdown => return Ok(()),
        }
        let started = Instant::now();
        let passed = tokio::select! {
            passed = pass(&capabilities, &position, settings) => passed,
            () = &mut shutdown => return Ok(()),
        };
        match passed {
            Ok(report) if report.released_settled + report.released_absent > 0 => {
                tracing::warn!(
                    ?report,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciler released stale holds"
                );
            }
            Ok(report) => tracing::debug!(?report, "reconciler pass"),
            Err(error) => {
                tracing::warn!(%error, "reconciler pass failed; trying again next interval")
            }
        }
    }
}

/// Starts [`run`] in the background for the life of the process; it logs its own failures.
pub fn spawn(services: &Services, settings: &Worker, capabilities: &Arc<Capabilities>) {
    let (services, settings, capabilities) =
        (services.clone(), settings.clone(), Arc::clone(capabilities));
    tokio::spawn(async move {
        if let Err(error) = run(&services, &settings, capabilities, std::future::pending()).await {
            tracing::error!(%error, "the hold reconciler could not start");
        }
    });
}

/// How far the transfer log was written, and how far settlement has consumed it.
pub struct Position {
    log: LogPosition,
    settlements: Settlements,
    topic: String,
}

impl Position {
    /// Waits (at most `wait`) until settlement's positions reach `ends`.
    async fn wait_consumed(&self, ends: &Offsets, wait: Duration) -> Result<bool, ReconcileError> {
        let deadline = Instant::now() + wait;
        loop {
            let positions = self.settlements.read_positions(&self.topic).await?;
            let ends_now = self.log.end_offsets().await?;
            if consumed_through(&positions, ends, &ends_now) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Position {
    /// Messages in the log past settlement's position, over every partition. A position past
    /// the log's end (the broker lost its log) counts that partition's whole new log.
    pub async fn lag_messages(&self) -> Result<u64, ReconcileError> {
        let ends = self.log.end_offsets().await?;
        let positions = self.settlements.read_positions(&self.topic).await?;
        Ok(ends
            .iter()
            .map(|(partition, end)| {
                let position = positions.get(partition).copied().unwrap_or(0);
                let unread = if position > *end {
                    *end
                } else {
                    end - position
                };
                u64::try_from(unread).unwrap_or(0)
            })
            .sum())
    }
}

/// The transfer log's position and settlement's.
pub fn position(
    services: &Services,
    capabilities: &Capabilities,
) -> Result<Position, ReconcileError> {
    let topic = capabilities.log.physical_topic(TRANSFER_TOPIC);
    Ok(Position {
        log: LogPosition::new(services, topic.clone())?,
        settlements: Settlements::new(capabilities.ledger.pool().clone()),
        topic,
    })
}

/// One pass over every hold (up to [`MAX_HOLDS_PER_PASS`]).
pub async fn pass(
    capabilities: &Capabilities,
    position: &Position,
    settings: &Worker,
) -> Result<Report, ReconcileError> {
    let min_age_ms = settings.reconcile_min_age_ms;
    let began_ms = now_ms();
    let ends = position.log.end_offsets().await?;
    let log_consumed = position
        .wait_consumed(&ends, settings.reconcile_wait())
        .await?;
    let holds = capabilities
        .cache
        .held_transfers(MAX_HOLDS_PER_PASS)
        .await?;
    let ids: Vec<Option<Uuid>> = holds
        .iter()
        .map(|hold| Uuid::parse_str(&hold.transaction_id).ok())
        .collect();
    let known: Vec<Uuid> = ids.iter().flatten().copied().collect();
    let settled = capabilities.ledger.settled_among(&known).await?;

    let mut report = Report {
        holds: holds.len(),
        log_consumed,
        idempotency_keys_purged: idempotency::purge_older_than(
            capabilities.ledger.pool(),
            settings.idempotency_retention(),
        )
        .await?,
        ..Report::default()
    };
    release_pending_rows(
        capabilities,
        began_ms,
        min_age_ms,
        log_consumed,
        &mut report,
    )
    .await?;
    for (hold, id) in holds.iter().zip(&ids) {
        let age_ms = id
            .as_ref()
            .and_then(minted_at_ms)
            .map(|minted| began_ms.saturating_sub(minted));
        let is_settled = id.is_some_and(|id| settled.contains(&id));
        match verdict(age_ms, min_age_ms, is_settled, log_consumed) {
            Verdict::Young => report.young += 1,
            Verdict::Keep => report.kept += 1,
            Verdict::ReleaseSettled => {
                release(capabilities, hold, "settled").await?;
                report.released_settled += 1;
            }
            Verdict::ReleaseAbsent => {
                release(capabilities, hold, "never written").await?;
                report.released_absent += 1;
            }
        }
    }
    Ok(report)
}

/// The same rule for PostgreSQL pending rows, which stand in for the Redis pending record of a
/// transfer accepted while Redis was down (settlement deletes them in its own transaction).
async fn release_pending_rows(
    capabilities: &Capabilities,
    began_ms: u64,
    min_age_ms: u64,
    log_consumed: bool,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let cutoff_ms = i64::try_from(began_ms.saturating_sub(min_age_ms)).unwrap_or(i64::MAX);
    let cutoff = chrono::DateTime::from_timestamp_millis(cutoff_ms).unwrap_or_default();
    let rows = capabilities
        .ledger
        .pending_older_than(cutoff, MAX_HOLDS_PER_PASS as i64)
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.transaction_id).collect();
    let settled = capabilities.ledger.settled_among(&ids).await?;
    let released: Vec<Uuid> = ids
        .iter()
        .filter(|id| {
            let verdict = verdict(
                Some(min_age_ms),
                min_age_ms,
                settled.contains(id),
                log_consumed,
            );
            matches!(verdict, Verdict::ReleaseSettled | Verdict::ReleaseAbsent)
        })
        .copied()
        .collect();
    capabilities.ledger.delete_pending(&released).await?;
    for id in &released {
        tracing::info!(transaction_id = %id, settled = settled.contains(id), "deleted a stale pending row");
    }
    report.pending_rows = rows.len();
    report.pending_rows_released = released.len();
    Ok(())
}

async fn release(
    capabilities: &Capabilities,
    hold: &HeldTransfer,
    why: &'static str,
) -> Result<(), ReconcileError> {
    capabilities
        .cache
        .release_hold(&hold.transaction_id, hold.user_id, &hold.currency)
        .await?;
    tracing::info!(
        transaction_id = hold.transaction_id,
        user_id = hold.user_id,
        currency = hold.currency,
        amount_minor = hold.amount_minor,
        why,
        "released a stale hold"
    );
    Ok(())
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn young_holds_are_never_touched() {
        assert_eq!(verdict(Some(10), 1_000, true, true), Verdict::Young);
        assert_eq!(verdict(Some(999), 1_000, false, true), Verdict::Young);
    }

    #[test]
    fn old_holds_go_when_settled_or_provably_absent() {
        assert_eq!(
            verdict(Some(1_000), 1_000, true, false),
            Verdict::ReleaseSettled
        );
        assert_eq!(
            verdict(Some(5_000), 1_000, false, true),
            Verdict::ReleaseAbsent
        );
        assert_eq!(verdict(Some(5_000), 1_000, false, false), Verdict::Keep);
    }

    #[test]
    fn ids_without_a_time_are_released_only_when_settled() {
        assert_eq!(verdict(None, 1_000, true, true), Verdict::ReleaseSettled);
        assert_eq!(verdict(None, 1_000, false, true), Verdict::Keep);
    }

    #[test]
    fn uuid_v7_carries_its_minting_time() {
        let before = now_ms();
        let id = Uuid::now_v7();
        let minted = minted_at_ms(&id).expect("a v7 id has a time");
        assert!(minted >= before && minted <= now_ms());
        let v4 = Uuid::parse_str("8d7c3f0e-4a51-4f7e-9a0b-1c2d3e4f5a6b").expect("a uuid");
        assert_eq!(minted_at_ms(&v4), None);
    }

    proptest! {
        /// Nothing unsettled is released while settlement has not consumed the log.
        #[test]
        fn unconsumed_log_releases_only_settled(age in proptest::option::of(0u64..10_000_000), min_age in 1u64..1_000_000) {
            let unsettled = verdict(age, min_age, false, false);
            prop_assert!(matches!(unsettled, Verdict::Young | Verdict::Keep));
        }
    }
}
