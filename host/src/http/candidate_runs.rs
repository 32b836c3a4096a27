//! The candidate's side of a live transfer: a shadow's run beside the active version, a
//! canary's comparison with the active version, and what both tell the candidate's
//! guardrails (whose crossing ends it on every replica).

use std::sync::Arc;
use std::time::{Duration, Instant};

use transferd_guest::logic::{Accepted, Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;

use crate::capabilities::guard::Violation;
use crate::guest::guardrails::CallOutcome;
use crate::guest::registry::{self, Observation, Part, Registry, ServedCandidate};
use crate::guest::runtime::{Decided, Guest, GuestFailure};
use crate::guest::shadow::{self, ShadowBook};
use crate::http::App;

/// One decided transfer, as the candidate's part in it needs it.
pub struct Decision<'a> {
    pub context: &'a RequestContext,
    pub request: &'a TransferRequest,
    pub decided: &'a Decided,
    /// The host check the decision broke, if any.
    pub violation: Option<&'a Violation>,
    pub guest_time: Duration,
}

/// Does the candidate's part in a request the guest decided: a shadow runs; a canary's call
/// is judged, and compared with the active version when its guardrails judge differences.
pub fn follow_up(app: &App, part: Option<Part>, active: &Arc<Guest>, decision: &Decision<'_>) {
    match part {
        None => {}
        Some(Part::Shadows(candidate)) => {
            if let Ok(result) = &decision.decided.decision {
                shadow_run(app, candidate, decision, result);
            }
        }
        Some(Part::Decides(candidate)) => {
            if let Some(outcome) = call_outcome(decision) {
                let guest_time = decision.guest_time;
                let call = Observation::Call {
                    outcome,
                    guest_time,
                };
                observe(&app.registry, &candidate, call);
            }
            let compared = candidate
                .guardrails()
                .is_some_and(|limits| limits.max_difference_rate.is_some());
            if let (true, Ok(result)) = (compared, &decision.decided.decision) {
                compare_with_active(app, candidate, Arc::clone(active), decision, result);
            }
        }
    }
}

/// How the call went, as guardrails count it; `None` when the guest never ran (no slot).
fn call_outcome(decision: &Decision<'_>) -> Option<CallOutcome> {
    match (&decision.decided.decision, decision.violation) {
        (Err(GuestFailure::Busy), _) => None,
        (Err(GuestFailure::Violation(_)), _) | (Ok(_), Some(_)) => Some(CallOutcome::Violated),
        // Traps, timeouts and any other way the call failed (fuel included).
        (Err(_), _) => Some(CallOutcome::Trapped),
        (Ok(_), None) => Some(CallOutcome::Decided),
    }
}

/// Hands an observation to the candidate's guardrails; ends the candidate if one is crossed.
fn observe(registry: &Registry, candidate: &Arc<ServedCandidate>, observation: Observation) {
    if let Some(trip) = candidate.observe(observation) {
        registry::end_on_trip(registry.clone(), Arc::clone(candidate), trip);
    }
}

/// Runs the shadow candidate on this request in the background, with the answers the active
/// version got, and records whether it decided the same.
fn shadow_run(
    app: &App,
    candidate: Arc<ServedCandidate>,
    decision: &Decision<'_>,
    result: &Result<Accepted, Rejection>,
) {
    let active = shadow::result_of(result);
    let book = Arc::clone(&app.shadow_book);
    let registry = app.registry.clone();
    let replay = shadow::replay_of(&decision.decided.answers);
    let mut context = decision.context.clone();
    context.guest_version = candidate.guest.version().to_string();
    let request = decision.request.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = candidate
            .guest
            .run_replayed(&context, &request, replay)
            .await;
        let guest_time = started.elapsed();
        let result = outcome.as_ref().ok().map(|outcome| &outcome["result"]);
        let version = candidate.guest.version();
        book.record(version, &context.transaction_id, &active, result);
        let outcome = match &outcome {
            Err(GuestFailure::Busy) => return,
            Err(_) => CallOutcome::Trapped,
            Ok(_) => CallOutcome::Decided,
        };
        let call = Observation::Call {
            outcome,
            guest_time,
        };
        observe(&registry, &candidate, call);
        if let Some(result) = result {
            let differed = *result != active;
            observe(&registry, &candidate, Observation::Compared { differed });
        }
    });
}

/// Runs the active version in the background on a request the canary decided, with the
/// answers the canary got, and records whether the canary decided the same: the shadow's
/// comparison with the roles reversed. Differences go to the same book as a shadow's.
fn compare_with_active(
    app: &App,
    candidate: Arc<ServedCandidate>,
    active: Arc<Guest>,
    decision: &Decision<'_>,
    result: &Result<Accepted, Rejection>,
) {
    let by_candidate = shadow::result_of(result);
    let book: Arc<ShadowBook> = Arc::clone(&app.shadow_book);
    let registry = app.registry.clone();
    let replay = shadow::replay_of(&decision.decided.answers);
    let mut context = decision.context.clone();
    context.guest_version = active.version().to_string();
    let request = decision.request.clone();
    tokio::spawn(async move {
        let Ok(outcome) = active.run_replayed(&context, &request, replay).await else {
            return;
        };
        let by_active = &outcome["result"];
        let version = candidate.guest.version();
        let id = &context.transaction_id;
        book.record(version, id, by_active, Some(&by_candidate));
        let differed = *by_active != by_candidate;
        observe(&registry, &candidate, Observation::Compared { differed });
    });
}
