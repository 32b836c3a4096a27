//! The hold reconciler: releases holds that no longer hold anything back.
//!
//! A hold is normally released by settlement (after the ledger commit) or by a publish that
//! definitely failed. Both releases can miss: Redis down at the wrong moment, a crash between
//! the hold and the produce, a publish whose outcome was in doubt. Such a hold understates the
//! sender's available balance until someone releases it; this is that someone.
//!
//! A hold is released when it is old enough that any message for it was written long ago
//! (`min_age` far exceeds the produce timeout), and either
//! - the ledger has the transfer (settled or rejected: settlement's own release was lost), or
//! - settlement's position (kept in the ledger) has passed every message the transfer log held
//!   when this pass began, and the ledger still does not have it: the message was never written (or was
//!   unreadable), so it will never settle.
//!
//! A hold's age is the time since it was taken, by Redis's clock: the script that takes a hold
//! records Redis's `TIME` with it, and a pass measures from Redis's `TIME` when it begins, so
//! replicas' clocks do not matter. Not the transaction id's UUIDv7: an idempotent retry takes a
//! fresh hold under its first attempt's id, which may be long past the minimum age while the
//! retry's message is being written. A hold recorded without its time (none is, since hold
//! times are recorded) is judged by its id's time.
//!
//! Every pass is idempotent; replicas may run it at the same time.
//!
//! The same position ("settlement has consumed the log up to here") restores trust in the
//! holds after Redis lost them ([`spawn`], `stores::redis`, `holds_trusted`): once settlement
//! has consumed the log up to its end read after the marker was found missing, every transfer
//! accepted before is in the ledger, so no hold of an unsettled transfer can be missing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{Services, Worker};
use crate::settlement::ledger::Settlements;
use crate::stores::Stores;
use crate::stores::idempotency;
use crate::stores::kafka::{LogError, TRANSFER_TOPIC};
use crate::stores::log_position::{LogPosition, Offsets, consumed_through};
use crate::stores::redis::{BalanceCache, HeldTransfer, TrustClaim};

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
    /// Old, unsettled, and not provably absent (settlement is behind, or the hold carries no
    /// time).
    pub kept: usize,
    /// Whether settlement had consumed the log as far as it reached when the pass began.
    pub log_consumed: bool,
    /// Old PostgreSQL pending rows found (written when transfers were accepted without Redis;
    /// no longer written, still cleared).
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

/// The rule, without any I/O. `age_ms` is the time since the hold was taken, `None` when it is
/// unknown.
pub fn verdict(age_ms: Option<u64>, min_age_ms: u64, settled: bool, log_consumed: bool) -> Verdict {
    match age_ms {
        Some(age_ms) if age_ms < min_age_ms => Verdict::Young,
        _ if settled => Verdict::ReleaseSettled,
        Some(_) if log_consumed => Verdict::ReleaseAbsent,
        _ => Verdict::Keep,
    }
}

/// How long before `began_ms` (Redis's clock) the hold was taken: by the time recorded with it,
/// or, for a hold without one, by its id's UUIDv7. `None` when neither says.
pub fn hold_age_ms(hold: &HeldTransfer, id: Option<&Uuid>, began_ms: u64) -> Option<u64> {
    hold.taken_at_ms
        .or_else(|| id.and_then(minted_at_ms))
        .map(|taken| began_ms.saturating_sub(taken))
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
    stores: Arc<Stores>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReconcileError> {
    let Some(interval) = settings.reconcile_interval() else {
        tracing::info!("hold reconciler off");
        return Ok(());
    };
    let position = position(services, &stores)?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut shutdown => return Ok(()),
        }
        let started = Instant::now();
        let passed = tokio::select! {
            passed = pass(&stores, &position, settings) => passed,
            () = &mut shutdown => return Ok(()),
        };
        expire(&stores, settings).await;
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

/// Expires overdue two-phase transfers and re-publishes actions older than a hold the
/// reconciler would judge stale, by this host's clock.
async fn expire(stores: &Stores, settings: &Worker) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let republish_after = Duration::from_millis(settings.reconcile_min_age_ms);
    match super::actions::expiry_pass(stores, now_ms, republish_after).await {
        Ok(report) if report != super::actions::ExpiryReport::default() => {
            tracing::info!(?report, "expiry pass")
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "expiry pass failed; trying again next interval"),
    }
}

/// Starts [`run`] and [`keep_holds_trusted`] in the background for the life of the process;
/// they log their own failures. Returns whether the holds are trusted, as the keeper last
/// found (`None` until it knows).
pub fn spawn(services: &Services, settings: &Worker, stores: &Arc<Stores>) -> HoldsTrust {
    let (trust, trusted) = watch::channel(None);
    match position(services, stores) {
        Ok(position) => {
            let cache = Arc::clone(&stores.cache);
            let wait = settings.reconcile_wait();
            tokio::spawn(keep_holds_trusted(cache, position, wait, trust));
        }
        Err(error) => {
            tracing::error!(%error, "cannot watch the transfer log; holds stay untrusted")
        }
    }
    let (services, settings, stores) = (services.clone(), settings.clone(), Arc::clone(stores));
    tokio::spawn(async move {
        if let Err(error) = run(&services, &settings, stores, std::future::pending()).await {
            tracing::error!(%error, "the hold reconciler could not start");
        }
    });
    trusted
}

/// Whether the holds are trusted, as a replica's keeper last found: `None` until it knows.
pub type HoldsTrust = watch::Receiver<Option<bool>>;

/// How often a trusted Redis is asked again (a restart without its data is found within this).
const TRUST_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Between attempts to restore trust.
const TRUST_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long a claim to restore trust lives unconfirmed: far beyond one attempt.
const TRUST_CLAIM_TTL: Duration = Duration::from_secs(3600);

/// Waits until the keeper knows whether the holds are trusted, at most `limit`: a replica
/// starting on a fresh Redis with a consumed log then accepts transfers from its first request.
pub async fn first_trust(trust: &mut HoldsTrust, limit: Duration) -> Option<bool> {
    let known = tokio::time::timeout(limit, trust.wait_for(Option::is_some)).await;
    known
        .ok()
        .and_then(|found| found.ok().and_then(|found| *found))
}

/// Keeps `holds_trusted` in Redis: checks it every [`TRUST_CHECK_INTERVAL`], and when it is
/// missing writes it again once settlement has consumed the log (see [`restore_trust`]). Any
/// number of replicas may run it.
pub async fn keep_holds_trusted(
    cache: Arc<BalanceCache>,
    position: Position,
    wait: Duration,
    trust: watch::Sender<Option<bool>>,
) {
    // One claim per replica, made again by each attempt.
    let token = Uuid::new_v4().simple().to_string();
    loop {
        let found = restore_trust(&cache, &position, wait, &token).await;
        let was = *trust.borrow();
        let now = match &found {
            Ok(trusted) => Some(*trusted),
            // Redis's answer is what counts; the log cannot be read yet at a first start
            // (its topic is being created), which says nothing either way.
            Err(ReconcileError::Cache(_)) => Some(false),
            Err(_) => was.map(|_| false),
        };
        if now != was {
            match (&found, now) {
                (_, Some(true)) => tracing::info!("Redis's holds are trusted: accepting transfers"),
                (Err(error), _) => tracing::warn!(
                    %error,
                    "cannot tell whether Redis's holds cover every accepted transfer; refusing transfers (503) until it can"
                ),
                (Ok(_), _) => tracing::warn!(
                    "Redis has no record that its holds are complete (new, or restarted without its data): refusing transfers (503) until settlement has consumed the transfer log"
                ),
            }
        }
        if let Some(trusted) = now {
            metrics::gauge!(crate::metrics::HOLDS_TRUSTED).set(if trusted { 1.0 } else { 0.0 });
        }
        trust.send_replace(now);
        let pause = if now == Some(true) {
            TRUST_CHECK_INTERVAL
        } else {
            TRUST_RETRY_INTERVAL
        };
        tokio::time::sleep(pause).await;
    }
}

/// One attempt: true when the holds are trusted (found so, or made so now). When the marker is
/// missing, the claim `token` is recorded in the same step; the log's end offsets are read
/// after that, and once settlement's positions reach them, the marker is written if the claim
/// is still there (Redis lost nothing meanwhile). Any transfer whose hold Redis lost was
/// accepted before the claim, so its message is below those ends and now in the ledger; and
/// since the marker was missing, no hold has been taken in this Redis since it lost its data.
pub async fn restore_trust(
    cache: &BalanceCache,
    position: &Position,
    wait: Duration,
    token: &str,
) -> Result<bool, ReconcileError> {
    if cache.claim_trust(token, TRUST_CLAIM_TTL).await? == TrustClaim::Trusted {
        return Ok(true);
    }
    let ends = position.log.end_offsets().await?;
    if !position.wait_consumed(&ends, wait).await? {
        return Ok(false);
    }
    Ok(cache.confirm_trust(token).await?)
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
pub fn position(services: &Services, stores: &Stores) -> Result<Position, ReconcileError> {
    let topic = stores.log.physical_topic(TRANSFER_TOPIC);
    Ok(Position {
        log: LogPosition::new(services, topic.clone())?,
        settlements: Settlements::new(stores.ledger.pool().clone()),
        topic,
    })
}

/// One pass over every hold (up to [`MAX_HOLDS_PER_PASS`]).
pub async fn pass(
    stores: &Stores,
    position: &Position,
    settings: &Worker,
) -> Result<Report, ReconcileError> {
    let min_age_ms = settings.reconcile_min_age_ms;
    let began_ms = now_ms();
    // Hold times are Redis's clock; so is a hold's age.
    let redis_began_ms = stores.cache.now_ms().await?;
    let ends = position.log.end_offsets().await?;
    let log_consumed = position
        .wait_consumed(&ends, settings.reconcile_wait())
        .await?;
    let holds = stores.cache.held_transfers(MAX_HOLDS_PER_PASS).await?;
    let ids: Vec<Option<Uuid>> = holds
        .iter()
        .map(|hold| Uuid::parse_str(&hold.transaction_id).ok())
        .collect();
    let known: Vec<Uuid> = ids.iter().flatten().copied().collect();
    let settled = stores.ledger.settled_among(&known).await?;

    let mut report = Report {
        holds: holds.len(),
        log_consumed,
        idempotency_keys_purged: idempotency::purge_older_than(
            stores.ledger.pool(),
            settings.idempotency_retention(),
        )
        .await?,
        ..Report::default()
    };
    release_pending_rows(stores, began_ms, min_age_ms, log_consumed, &mut report).await?;
    for (hold, id) in holds.iter().zip(&ids) {
        let age_ms = hold_age_ms(hold, id.as_ref(), redis_began_ms);
        let is_settled = id.is_some_and(|id| settled.contains(&id));
        match verdict(age_ms, min_age_ms, is_settled, log_consumed) {
            Verdict::Young => report.young += 1,
            Verdict::Keep => report.kept += 1,
            Verdict::ReleaseSettled => {
                release(stores, hold, "settled").await?;
                report.released_settled += 1;
            }
            Verdict::ReleaseAbsent => {
                release(stores, hold, "never written").await?;
                report.released_absent += 1;
            }
        }
    }
    Ok(report)
}

/// The same rule for PostgreSQL pending rows, which stood in for the Redis pending record of a
/// transfer an older version accepted while Redis was down (settlement deletes them in its own
/// transaction).
async fn release_pending_rows(
    stores: &Stores,
    began_ms: u64,
    min_age_ms: u64,
    log_consumed: bool,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let cutoff_ms = i64::try_from(began_ms.saturating_sub(min_age_ms)).unwrap_or(i64::MAX);
    let cutoff = chrono::DateTime::from_timestamp_millis(cutoff_ms).unwrap_or_default();
    let rows = stores
        .ledger
        .pending_older_than(cutoff, MAX_HOLDS_PER_PASS as i64)
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.transaction_id).collect();
    let settled = stores.ledger.settled_among(&ids).await?;
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
    stores.ledger.delete_pending(&released).await?;
    for id in &released {
        tracing::info!(transaction_id = %id, settled = settled.contains(id), "deleted a stale pending row");
    }
    report.pending_rows = rows.len();
    report.pending_rows_released = released.len();
    Ok(())
}

async fn release(
    stores: &Stores,
    hold: &HeldTransfer,
    why: &'static str,
) -> Result<(), ReconcileError> {
    stores
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
    fn a_hold_is_as_old_as_its_recorded_time_not_its_id() {
        let began = now_ms();
        let old_id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            began / 1000 - 600,
            0,
        ));
        let hold = |taken_at_ms| HeldTransfer {
            transaction_id: old_id.to_string(),
            user_id: 1,
            currency: "USD".into(),
            amount_minor: 100,
            taken_at_ms,
        };
        // A retry's fresh hold under its first attempt's old id is young.
        assert_eq!(
            hold_age_ms(&hold(Some(began - 20)), Some(&old_id), began),
            Some(20)
        );
        assert_eq!(
            hold_age_ms(&hold(Some(began + 5)), Some(&old_id), began),
            Some(0),
            "taken after the pass began"
        );
        // Without a recorded time, the id's.
        let by_id = hold_age_ms(&hold(None), Some(&old_id), began).expect("a v7 id has a time");
        assert!((600_000..601_000).contains(&by_id), "{by_id}");
        assert_eq!(hold_age_ms(&hold(None), None, began), None);
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
