//! A guardrail crossed on this replica ends the candidate on every replica: an
//! `end-candidate` row with the reason, written only if the candidate is still current, and
//! announced like any activation.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Registry, ServedCandidate};
use crate::guest::guardrails::Trip;

/// Attempts at recording the end before this replica gives up (it serves the active version
/// alone meanwhile, whatever the registry says).
const ATTEMPTS: u32 = 5;

/// Ends `candidate` through the registry, in the background, because of `trip`.
pub fn end_on_trip(registry: Registry, candidate: Arc<ServedCandidate>, trip: Trip) {
    let replica = replica_name();
    let reason = json!({
        "guardrail": trip.guardrail,
        "observed": trip.observed,
        "limit": trip.limit,
        "replica": replica,
        "figures": candidate.figures(),
    });
    let version = candidate.guest.version().to_string();
    let activation_id = candidate.started.activation_id;
    tracing::warn!(
        version,
        guardrail = trip.guardrail.as_str(),
        observed = trip.observed,
        limit = trip.limit,
        "a candidate crossed a guardrail; ending it on every replica"
    );
    tokio::spawn(async move {
        let by = format!("guardrail on {replica}");
        for attempt in 1..=ATTEMPTS {
            match registry
                .end_tripped(activation_id, &version, &reason, &by)
                .await
            {
                Ok(ended) => {
                    if ended {
                        metrics::counter!(crate::metrics::GUARDRAIL_TRIPS, "guardrail" => trip.guardrail.as_str())
                            .increment(1);
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, attempt, version, "cannot record the end of a candidate");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// This replica as the history names it: its host name and process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().chars().take(100).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_string());
    format!("{host} pid {}", std::process::id())
}
