//! What this replica serves new requests with: the active guest and maybe a candidate,
//! swapped whole so a request sees one consistent pair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use super::{Assign, Candidate, CandidateMode};
use crate::guest::guardrails::{CallOutcome, Figures, Guardrails, Trip, Window};
use crate::guest::runtime::Guest;

/// What this replica serves: the active version and, maybe, a candidate. Swapped whole,
/// read once per request, so a request sees one consistent pair.
pub struct Serving {
    pub active: Arc<Guest>,
    pub candidate: Option<Arc<ServedCandidate>>,
}

/// A canary or shadow as this replica serves it, with what it saw the candidate do.
pub struct ServedCandidate {
    pub guest: Arc<Guest>,
    /// The registry row that started it.
    pub started: Candidate,
    /// `None` without guardrails.
    window: Option<Mutex<Window>>,
    /// Set when a guardrail was crossed here: the candidate takes no more requests on this
    /// replica, whether or not the registry has recorded the end yet.
    tripped: AtomicBool,
}

/// What a replica saw a candidate do on one request.
#[derive(Debug, Clone, Copy)]
pub enum Observation {
    Call {
        outcome: CallOutcome,
        guest_time: Duration,
    },
    /// It was compared with the active version on the same request.
    Compared { differed: bool },
}

impl ServedCandidate {
    pub fn new(guest: Arc<Guest>, started: Candidate) -> ServedCandidate {
        let window = started
            .guardrails
            .map(|limits| Mutex::new(Window::new(limits)));
        ServedCandidate {
            guest,
            started,
            window,
            tripped: AtomicBool::new(false),
        }
    }

    pub fn guardrails(&self) -> Option<&Guardrails> {
        self.started.guardrails.as_ref()
    }

    /// Records what the candidate did; the guardrail crossed, the first time one is (later
    /// observations are dropped: the candidate is being ended).
    pub fn observe(&self, observation: Observation) -> Option<Trip> {
        if self.is_tripped() {
            return None;
        }
        let mut window = self
            .window
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let trip = match observation {
            Observation::Call {
                outcome,
                guest_time,
            } => window.call(outcome, guest_time),
            Observation::Compared { differed } => window.comparison(differed),
        }?;
        (!self.tripped.swap(true, Ordering::AcqRel)).then_some(trip)
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// The guardrails' figures on this replica; `None` without guardrails.
    pub fn figures(&self) -> Option<Figures> {
        let window = self.window.as_ref()?;
        Some(
            window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .figures(),
        )
    }
}

/// The candidate's part in one request.
pub enum Part {
    /// It decides the request (a canary).
    Decides(Arc<ServedCandidate>),
    /// It runs beside the active version, which decides (a shadow).
    Shadows(Arc<ServedCandidate>),
}

impl Serving {
    /// The guest that decides this request, and the candidate's part in it, if it has one. A
    /// canary by transaction takes the requests whose id falls in its share (ids are random in
    /// their low bits, so the share is even and a retried id lands on the same side); by
    /// sender, those whose sender account does ([`sender_bucket`]).
    pub fn pick(&self, transaction_id: &uuid::Uuid, sender_id: i64) -> (Arc<Guest>, Option<Part>) {
        let active = || Arc::clone(&self.active);
        let Some(candidate) = self.candidate.as_ref().filter(|c| !c.is_tripped()) else {
            return (active(), None);
        };
        match candidate.started.mode {
            CandidateMode::Canary { percent, assign } => {
                let bucket = match assign {
                    Assign::Transaction => (transaction_id.as_u128() % 100) as u8,
                    Assign::Sender => sender_bucket(candidate.started.activation_id, sender_id),
                };
                if bucket < percent {
                    let part = Part::Decides(Arc::clone(candidate));
                    (Arc::clone(&candidate.guest), Some(part))
                } else {
                    (active(), None)
                }
            }
            CandidateMode::Shadow => (active(), Some(Part::Shadows(Arc::clone(candidate)))),
        }
    }
}

/// An account's bucket (0 to 99) for the canary started by row `activation_id`: the same on
/// every replica and for every request while that canary runs, and drawn afresh for the next
/// canary (the row id salts it), so no account is always the first to try new versions.
pub fn sender_bucket(activation_id: i64, sender_id: i64) -> u8 {
    // splitmix64's finaliser: every input bit moves every output bit.
    let mut mixed = (sender_id as u64) ^ (activation_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^= mixed >> 31;
    (mixed % 100) as u8
}

/// The guests this replica serves new requests with.
pub struct ServingGuest {
    current: RwLock<Arc<Serving>>,
}

impl ServingGuest {
    pub fn new(guest: Guest) -> ServingGuest {
        metrics::gauge!(crate::metrics::GUEST_ACTIVE, "version" => guest.version().to_owned())
            .set(1.0);
        crate::metrics::build_info(guest.version(), None);
        ServingGuest {
            current: RwLock::new(Arc::new(Serving {
                active: Arc::new(guest),
                candidate: None,
            })),
        }
    }

    pub fn get(&self) -> Arc<Serving> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `guest` alone (no candidate): the `--watch` mode of local development.
    pub fn serve_only(&self, guest: Guest) {
        self.replace(Serving {
            active: Arc::new(guest),
            candidate: None,
        });
    }

    pub(super) fn replace(&self, serving: Serving) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.active.version() != serving.active.version() {
            metrics::counter!(crate::metrics::GUEST_SWAPS).increment(1);
        }
        gauge_versions(&current, &serving);
        *current = Arc::new(serving);
    }
}

/// The active-version and canary-share gauges, moved from what was served to what will be.
fn gauge_versions(before: &Serving, after: &Serving) {
    use crate::metrics::{CANARY_SHARE, GUEST_ACTIVE};
    metrics::gauge!(GUEST_ACTIVE, "version" => before.active.version().to_owned()).set(0.0);
    metrics::gauge!(GUEST_ACTIVE, "version" => after.active.version().to_owned()).set(1.0);
    crate::metrics::build_info(after.active.version(), Some(before.active.version()));
    if let Some(candidate) = &before.candidate {
        metrics::gauge!(CANARY_SHARE, "version" => candidate.guest.version().to_owned()).set(0.0);
    }
    if let Some(candidate) = &after.candidate
        && let CandidateMode::Canary { percent, .. } = candidate.started.mode
    {
        metrics::gauge!(CANARY_SHARE, "version" => candidate.guest.version().to_owned())
            .set(f64::from(percent) / 100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_keeps_its_side_and_the_share_holds_over_many_accounts() {
        let canary = 41;
        for sender in [1, 2, 99, i64::MAX, -7] {
            let bucket = sender_bucket(canary, sender);
            assert!(bucket < 100);
            assert!(
                (0..10).all(|_| sender_bucket(canary, sender) == bucket),
                "sticky"
            );
        }
        for percent in [5u8, 30, 50, 90] {
            let inside = (1..=20_000)
                .filter(|sender| sender_bucket(canary, *sender) < percent)
                .count();
            let expected = 200 * usize::from(percent);
            assert!(
                inside.abs_diff(expected) < 500,
                "{inside} of 20000 accounts for {percent}%"
            );
        }
        // Another canary draws other accounts.
        let moved = (1..=1_000)
            .filter(|sender| (sender_bucket(41, *sender) < 30) != (sender_bucket(42, *sender) < 30))
            .count();
        assert!(moved > 200, "{moved} accounts changed sides");
    }
}
