//! What this replica serves new requests with: the active guest and maybe a candidate,
//! swapped whole so a request sees one consistent pair.

use std::sync::{Arc, PoisonError, RwLock};

use super::CandidateMode;
use crate::guest::runtime::Guest;

/// What this replica serves: the active version and, maybe, a candidate. Swapped whole,
/// read once per request, so a request sees one consistent pair.
pub struct Serving {
    pub active: Arc<Guest>,
    pub candidate: Option<(Arc<Guest>, CandidateMode)>,
}

impl Serving {
    /// The guest that decides this request, and the one to shadow it with, if any. A canary
    /// takes the requests whose transaction id falls in its share (ids are random in their
    /// low bits, so the share is even and a retried id lands on the same side).
    pub fn pick(&self, transaction_id: &uuid::Uuid) -> (Arc<Guest>, Option<Arc<Guest>>) {
        match &self.candidate {
            Some((candidate, CandidateMode::Canary { percent })) => {
                let bucket = (transaction_id.as_u128() % 100) as u8;
                if bucket < *percent {
                    (Arc::clone(candidate), None)
                } else {
                    (Arc::clone(&self.active), None)
                }
            }
            Some((candidate, CandidateMode::Shadow)) => {
                (Arc::clone(&self.active), Some(Arc::clone(candidate)))
            }
            None => (Arc::clone(&self.active), None),
        }
    }
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
    if let Some((candidate, _)) = &before.candidate {
        metrics::gauge!(CANARY_SHARE, "version" => candidate.version().to_owned()).set(0.0);
    }
    if let Some((candidate, CandidateMode::Canary { percent })) = &after.candidate {
        metrics::gauge!(CANARY_SHARE, "version" => candidate.version().to_owned())
            .set(f64::from(*percent) / 100.0);
    }
}
