//! The upload check: a version must compile against the host's world and pass every
//! invariant vector built into this binary before it can be stored.

use std::sync::Arc;

use transferd_guest::vectors::{Vector, check_invariant};

use super::RegistryError;
use crate::guest::runtime::{Guest, GuestEngine};

/// Largest component accepted, in bytes.
pub const MAX_GUEST_BYTES: usize = 32 * 1024 * 1024;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/invariant_vectors.rs"));
}

/// The invariant vectors built into this binary.
pub fn invariant_vectors() -> Vec<Vector> {
    embedded::INVARIANT_VECTORS
        .iter()
        .map(|(name, text)| {
            Vector::parse(name, text).expect("embedded vectors are valid JSON vectors")
        })
        .collect()
}

/// Compiles `bytes`, checks them against the world and runs every invariant vector.
pub async fn check(
    engine: &Arc<GuestEngine>,
    bytes: &[u8],
) -> Result<(Guest, usize), RegistryError> {
    let guest = engine.load(bytes)?;
    let vectors = invariant_vectors();
    assert!(!vectors.is_empty(), "the binary carries invariant vectors");
    for vector in &vectors {
        let outcome =
            guest
                .run_vector(vector)
                .await
                .map_err(|failure| RegistryError::Invariant {
                    case: vector.name.clone(),
                    reason: failure.to_string(),
                })?;
        check_invariant(vector, &outcome).map_err(|reason| RegistryError::Invariant {
            case: vector.name.clone(),
            reason,
        })?;
    }
    Ok((guest, vectors.len()))
}
