//! Prometheus metrics: every name in one place, the recorder installed once per process, and
//! the text rendered at `GET /metrics` on the API's own server (no second listener).
//!
//! Labels are bounded: route names, status codes, outcome kinds and guest versions (a handful
//! at a time), never ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `route` (the route's name, not the raw path) and `status`.
pub const HTTP_REQUESTS: &str = "transferd_http_requests_total";
/// Time from the request's head to its answer, by `route`.
pub const HTTP_DURATION: &str = "transferd_http_request_duration_seconds";
/// Transfer decisions, by guest `version` and `outcome`: accepted, each rejection (invalid,
/// insufficient_funds, receiver_not_found, forbidden, unavailable), in_doubt, trap, timeout,
/// violation (the guest broke a host check).
pub const GUEST_CALLS: &str = "transferd_guest_calls_total";
/// Time of one decision (the guest's call with its imports), by `version`.
pub const GUEST_DURATION: &str = "transferd_guest_call_duration_seconds";
/// Answers replayed for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYS: &str = "transferd_idempotent_replays_total";
/// Refused credentials, by `reason`: the RFC 6750 error code, or `foreign_origin` for an admin
/// change sent from another origin.
pub const AUTH_FAILURES: &str = "transferd_auth_failures_total";
/// Guest instances created, by `version`: one per call with the default reuse count of 1,
/// fewer with `TRANSFERD_GUEST_REUSE_COUNT` above 1.
pub const GUEST_INSTANCES: &str = "transferd_guest_instances_created_total";
/// Times this replica started serving another active guest version.
pub const GUEST_SWAPS: &str = "transferd_guest_swaps_total";

/// Shadow runs of a candidate, by candidate `version`.
pub const SHADOW_RUNS: &str = "transferd_shadow_runs_total";
/// Shadow runs whose decision differed from the active version's (or that failed), by
/// candidate `version`.
pub const SHADOW_DIFFERENCES: &str = "transferd_shadow_differences_total";
/// Decisions whose provenance was not recorded, by `reason`: `queue_full` (the writer fell
/// behind) or `write_failed` (PostgreSQL refused the batch).
pub const PROVENANCE_DROPPED: &str = "transferd_provenance_dropped_total";
/// 1 for the guest version this replica serves as active, 0 for one it served before.
pub const GUEST_ACTIVE: &str = "transferd_guest_active_info";
/// The share of new transfers (0 to 1) a canary candidate decides, by candidate `version`;
/// 0 once it is no longer a canary.
pub const CANARY_SHARE: &str = "transferd_guest_canary_share";
/// Time from handing a message to the producer to the broker's acknowledgement (or failure),
/// by logical `topic` (`transfer_topic`, `transfer_events`).
pub const KAFKA_PRODUCE_DURATION: &str = "transferd_kafka_produce_duration_seconds";
/// Failed produces by logical `topic` and `kind`: `unknown_topic` (created and sent again),
/// `not_sent` (certainly not in the log), `in_doubt` (may be in the log).
pub const KAFKA_PRODUCE_ERRORS: &str = "transferd_kafka_produce_errors_total";
/// Transfer publishes whose outcome is unknown (answered 503 `"status":"unknown"`; the hold
/// stays until the log or the ledger says).
pub const PUBLISHES_IN_DOUBT: &str = "transferd_publishes_in_doubt_total";
/// `POST /transfers/batch` requests answered 200, by `atomic` (`true`, `false`).
pub const BATCHES: &str = "transferd_batches_total";
/// The transfers of those batches, by `outcome` (`accepted`, `rejected`).
pub const BATCH_TRANSFERS: &str = "transferd_batch_transfers_total";
/// Holds in Redis (accepted transfers not settled yet), as of the last count.
pub const HOLDS_OUTSTANDING: &str = "transferd_holds_outstanding";
/// Minor units held, by `currency`, as of the last count.
pub const HOLDS_OUTSTANDING_MINOR: &str = "transferd_holds_outstanding_minor";
/// Transfers refused (503, nothing published) because no hold could be taken, by `reason`:
/// `redis_unavailable`, `untrusted` (Redis came back without its data and settlement has not
/// yet caught up with the log; see `stores::redis`, `holds_trusted`).
pub const HOLDS_REFUSED: &str = "transferd_holds_refused_total";
/// 1 while this replica last found Redis's holds trusted, 0 while it did not (Redis
/// unreachable, or rebuilding trust after losing its data).
pub const HOLDS_TRUSTED: &str = "transferd_holds_trusted";
/// Holds the first balance lookup took ahead of the publish (`capabilities::hold_ahead`), by
/// `outcome`: `used` (the publish needed no Redis call of its own), `replaced` (the guest
/// published another message: the hold stayed and its pending record was replaced),
/// `given_back` (the call's transfer cannot be in the log: nothing published, or refused).
pub const HOLDS_AHEAD: &str = "transferd_holds_ahead_total";
/// Balance lookups by `source`: `cache` (Redis answered), `ledger_miss` (not cached: read from
/// PostgreSQL and cached), `ledger_fallback` (Redis down: PostgreSQL answered alone).
pub const BALANCE_LOOKUPS: &str = "transferd_balance_lookups_total";
/// Transfers newly settled into the ledger, by `status` (`completed`, `rejected`).
pub const SETTLED: &str = "transferd_settled_transfers_total";
/// Transfer-log messages settlement set aside in the quarantine, by `cause`: `unreadable` (not
/// a transfer message) or `refused` (the ledger refuses its data).
pub const SETTLEMENT_QUARANTINED: &str = "transferd_settlement_quarantined_total";
/// Quarantined messages waiting for an operator (not re-driven), as the ledger counts them.
pub const QUARANTINE_OPEN: &str = "transferd_settlement_quarantine_open";
/// Transfers per settled batch.
pub const SETTLEMENT_BATCH: &str = "transferd_settlement_batch_transfers";
/// Messages in the transfer log not yet settled (the log's end minus settlement's position,
/// over every partition), as of the last check.
pub const SETTLEMENT_LAG_MESSAGES: &str = "transferd_settlement_lag_messages";
/// Age of the oldest message in the last settled batch when it committed; 0 while idle.
pub const SETTLEMENT_LAG_SECONDS: &str = "transferd_settlement_lag_seconds";
/// Times `serve` started its settlement worker process again after it died.
pub const WORKER_RESTARTS: &str = "transferd_worker_restarts_total";
/// 1 when a `dependency` (postgres, redis, broker) answered its last probe, else 0.
pub const DEPENDENCY_UP: &str = "transferd_dependency_up";
/// Runs of the dependency probes (each asks PostgreSQL, Redis and the broker once). One run
/// answers every `/readyz` request and the gauges for `health::PROBE_REUSE`.
pub const PROBE_RUNS: &str = "transferd_dependency_probe_runs_total";

/// Histogram buckets in seconds, from 100 µs to 10 s.
const BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram buckets for transfers per batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder; later calls do nothing.
pub fn install() -> Result<(), BuildError> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Full(SETTLEMENT_BATCH.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    let _ = HANDLE.set(handle);
    Ok(())
}

/// Every metric in Prometheus's text format; empty before [`install`].
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}
