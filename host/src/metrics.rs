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
/// Refused bearer tokens, by `reason` (the RFC 6750 error code).
pub const AUTH_FAILURES: &str = "transferd_auth_failures_total";
/// Times this replica started serving another active guest version.
pub const GUEST_SWAPS: &str = "transferd_guest_swaps_total";

/// Histogram buckets in seconds, from 100 µs to 10 s.
const BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder; later calls do nothing.
pub fn install() -> Result<(), BuildError> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_S)?
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
