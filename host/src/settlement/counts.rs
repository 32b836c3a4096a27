//! The metrics and the log line of a committed batch. Apart from applying it, so the commit's
//! code reads without the counting, and the counting is written once for every path that
//! commits.

use std::collections::BTreeMap;

use super::decide::Transfer;
use super::ledger::SettledBatch;
use super::read::Read;
use crate::stores::transfer_state::Reason;
use crate::trace::TraceContext;

/// The settlement metrics of a committed batch: its size, what it newly applied, and how old
/// its oldest transfer was (time from acceptance to commit).
pub(super) fn count_settled(messages: &[Transfer], settled: &SettledBatch) {
    use crate::metrics::{SETTLED, SETTLEMENT_BATCH, SETTLEMENT_LAG_SECONDS};
    metrics::histogram!(SETTLEMENT_BATCH).record(messages.len() as f64);
    // One update per status and batch: the worker process relays every update to serve as a
    // line of its own (`metrics_relay`), so one per transfer would cost a line per transfer.
    let mut newly_by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (message, transfer) in messages.iter().zip(&settled.transfers) {
        if !transfer.newly_applied {
            continue;
        }
        *newly_by_status.entry(transfer.outcome.name()).or_default() += 1;
        let trace = message.trace.as_ref();
        // A span of its own only when exported: it joins the accepting request's trace.
        let span = match trace {
            Some(trace) if crate::otel::enabled() => {
                let span = tracing::info_span!("settle", transaction_id = %message.transaction_id);
                crate::otel::follow(&span, trace);
                span
            }
            _ => tracing::Span::none(),
        };
        span.in_scope(|| {
            tracing::info!(
                transaction_id = %message.transaction_id,
                status = transfer.outcome.name(),
                reason = transfer.outcome.reason().map(Reason::as_str),
                request_id = trace.map(|t| t.request_id.as_str()),
                trace_id = trace.map(TraceContext::trace_id_hex),
                "settled"
            );
        });
    }
    for (status, count) in newly_by_status {
        metrics::counter!(SETTLED, "status" => status).increment(count);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Some(oldest_ms) = messages.iter().map(|m| m.created_at_ms).min() {
        let age_s = (now_ms.saturating_sub(oldest_ms)).max(0) as f64 / 1000.0;
        metrics::gauge!(SETTLEMENT_LAG_SECONDS).set(age_s);
    }
}

pub(super) fn count_quarantined(read: &Read<'_>) {
    use crate::metrics::SETTLEMENT_QUARANTINED;
    let unreadable = read.quarantined.len() - read.refused;
    for (cause, count) in [("unreadable", unreadable), ("refused", read.refused)] {
        if count > 0 {
            metrics::counter!(SETTLEMENT_QUARANTINED, "cause" => cause).increment(count as u64);
        }
    }
}
