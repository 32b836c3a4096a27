//! The guest registry: versions in PostgreSQL (`storage`), the upload check (`checks`), what
//! this replica serves (`serving`), the follower that keeps it on the active version
//! (`follower`), and the end of a candidate whose guardrail a replica saw crossed (`trips`).
//!
//! Activation is a row plus `NOTIFY transferd_guest`; every replica listens, and also checks
//! every few seconds in case a notification was missed (a dropped connection). A replica
//! compiles the new version off the request path, then swaps it in with one pointer store:
//! requests already running keep the version they started with.

mod checks;
mod follower;
mod serving;
mod storage;
mod trips;

use std::time::Duration;

use crate::guest::runtime::LoadError;

pub use checks::{Checked, MAX_GUEST_BYTES, check, invariant_vectors};
pub use follower::{follow, reconcile};
pub use serving::{Observation, Part, ServedCandidate, Serving, ServingGuest, sender_bucket};
pub use storage::{
    Activation, Assign, Candidate, CandidateMode, Registry, RegistryAction, VersionInfo,
};
pub use trips::end_on_trip;

/// The channel activations are announced on.
pub const CHANNEL: &str = "transferd_guest";

/// How often a replica re-reads the active version without a notification.
pub const SAFETY_NET_INTERVAL: Duration = Duration::from_secs(5);

/// Who recorded a version a replica started with (`uploaded_by`, `activated_by`).
pub const STARTUP: &str = "replica start-up";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the guest fails invariant case {case}: {reason}")]
    Invariant { case: String, reason: String },
    /// An invariant case needs more fuel than the configured budget; `ran_out`: it used all
    /// `fuel_used` the upload check gave it without deciding.
    #[error(
        "the guest needs too much fuel: invariant case {case} used {}{fuel_used} fuel units, over the budget of {budget}",
        .ran_out.then_some("more than ").unwrap_or_default()
    )]
    FuelBudget {
        case: String,
        fuel_used: u64,
        ran_out: bool,
        budget: u64,
    },
    #[error("no guest version {0}")]
    UnknownVersion(String),
    #[error("there is no earlier active version to roll back to")]
    NothingToRollBack,
    #[error("the registry holds what this binary cannot read: {0}")]
    Corrupt(String),
    #[error("the registry database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
}
