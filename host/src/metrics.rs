//! Prometheus metrics: every name in one place, the recorder installed once per process, and
//! the text rendered at `GET /metrics` (serve's API or admin address, a worker's own listener),
//! with the process's own figures read from `/proc` at each rendering.
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
/// violation (the guest broke a host check), out_of_fuel (it spent its fuel budget).
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
/// Canaries and shadows this replica ended because it saw a guardrail crossed, by
/// `guardrail` (`trap_rate`, `violations`, `difference_rate`, `p99_guest_ms`). A replica that
/// crossed one just after another replica ended the candidate does not count it again.
pub const GUARDRAIL_TRIPS: &str = "transferd_guest_guardrail_trips_total";

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
/// 1 while the last probe run found a dependency down that this replica serves around
/// (Redis, the broker: transfers refused with 503, reads from PostgreSQL) and so stays ready,
/// else 0; which one, `transferd_dependency_up` says.
pub const READY_DEGRADED: &str = "transferd_ready_degraded";
/// 1 while this process's settlement worker holds the settlement lock (it settles), 0 while it
/// stands by for it; absent in a process that runs no worker.
pub const WORKER_ACTIVE: &str = "transferd_worker_active";
/// Always 1, labelled with the binary's `version`, the `commit` it was built from (`unknown`
/// outside a git checkout) and the `guest_version` served (`none` in a worker); a swapped-out
/// guest's series drops to 0.
pub const BUILD_INFO: &str = "transferd_build_info";
/// CPU time the process has used (user and system), in seconds.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// The process's resident memory, in bytes.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// File descriptors the process has open.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// When the process started, in seconds since the epoch.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
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

/// Every metric in Prometheus's text format, the process's figures refreshed first; empty
/// before [`install`].
pub fn render() -> String {
    let Some(handle) = HANDLE.get() else {
        return String::new();
    };
    process::record();
    handle.render()
}

/// The commit this binary was built from, as `build.rs` found it.
pub const BUILD_COMMIT: &str = env!("TRANSFERD_BUILD_COMMIT");

/// Sets [`BUILD_INFO`] for `guest_version`, and drops `replaced`'s series to 0.
pub fn build_info(guest_version: &str, replaced: Option<&str>) {
    let series = |guest: &str| {
        metrics::gauge!(
            BUILD_INFO,
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => BUILD_COMMIT,
            "guest_version" => guest.to_owned()
        )
    };
    if let Some(replaced) = replaced.filter(|replaced| *replaced != guest_version) {
        series(replaced).set(0.0);
    }
    series(guest_version).set(1.0);
}

/// The process's CPU time, memory, descriptors and start, from Linux's `/proc/self`; a figure
/// that cannot be read (another OS) is left unset.
mod process {
    use super::{PROCESS_CPU, PROCESS_OPEN_FDS, PROCESS_RSS, PROCESS_START_TIME};

    /// Clock ticks per second of `/proc`'s times: `USER_HZ`, 100 on every Linux architecture
    /// Rust targets.
    const TICKS_PER_S: f64 = 100.0;
    /// The page size `statm` counts in, for the architectures transferd ships on.
    const PAGE_BYTES: f64 = 4096.0;

    pub fn record() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        if let Some((cpu_ticks, start_ticks)) = cpu_and_start_ticks(&stat) {
            // A gauge: the facade's counters count whole units, and this is seconds.
            metrics::gauge!(PROCESS_CPU).set(cpu_ticks / TICKS_PER_S);
            if let Some(boot_s) = boot_time_s() {
                metrics::gauge!(PROCESS_START_TIME).set(boot_s + start_ticks / TICKS_PER_S);
            }
        }
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok())
        {
            metrics::gauge!(PROCESS_RSS).set(pages * PAGE_BYTES);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!(PROCESS_OPEN_FDS).set(entries.count() as f64);
        }
    }

    /// (user + system CPU ticks, start ticks after boot) from `/proc/self/stat`, whose fields
    /// after the command name (in parentheses, perhaps with spaces) start at field 3.
    pub(super) fn cpu_and_start_ticks(stat: &str) -> Option<(f64, f64)> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<f64>().ok();
        Some((field(14)? + field(15)?, field(22)?))
    }

    fn boot_time_s() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_and_start_are_read_past_a_command_name_with_spaces() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 10";
        assert_eq!(
            super::process::cpu_and_start_ticks(stat),
            Some((300.0, 12345.0))
        );
        assert_eq!(super::process::cpu_and_start_ticks("garbage"), None);
    }
}
