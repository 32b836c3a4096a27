//! The upload check: a version must compile against the host's world and pass every
//! invariant vector built into this binary before it can be stored.

use std::sync::Arc;

use transferd_guest::vectors::{Vector, check_invariant};

use super::RegistryError;
use crate::guest::runtime::{Guest, GuestEngine, GuestFailure, Measured};

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

/// How far past the configured fuel budget the upload check measures a case, so a refusal
/// can say by how much a guest is over.
const MEASURE_PAST_BUDGET: u64 = 10;

/// What the upload check found of a guest that passed it.
pub struct Checked {
    pub guest: Guest,
    pub invariant_cases: usize,
    /// The most fuel one invariant case used.
    pub max_vector_fuel: u64,
}

/// Compiles `bytes`, checks them against the world and runs every invariant vector, each
/// within the configured fuel budget.
pub async fn check(engine: &Arc<GuestEngine>, bytes: &[u8]) -> Result<Checked, RegistryError> {
    let guest = engine.load(bytes)?;
    let vectors = invariant_vectors();
    assert!(!vectors.is_empty(), "the binary carries invariant vectors");
    let budget = engine.limits().fuel_budget;
    let mut max_vector_fuel = 0;
    for vector in &vectors {
        let measured = run_case(&guest, vector, budget).await?;
        check_invariant(vector, &measured.outcome).map_err(|reason| RegistryError::Invariant {
            case: vector.name.clone(),
            reason,
        })?;
        max_vector_fuel = max_vector_fuel.max(measured.fuel_used);
    }
    Ok(Checked {
        guest,
        invariant_cases: vectors.len(),
        max_vector_fuel,
    })
}

/// One invariant case, measured past `budget`: a case that needs more than `budget` is
/// refused with what it used.
async fn run_case(guest: &Guest, vector: &Vector, budget: u64) -> Result<Measured, RegistryError> {
    let over = |fuel_used, ran_out| RegistryError::FuelBudget {
        case: vector.name.clone(),
        fuel_used,
        ran_out,
        budget,
    };
    let measure_budget = budget.saturating_mul(MEASURE_PAST_BUDGET);
    match guest.measure_vector(vector, measure_budget).await {
        Ok(measured) if measured.fuel_used > budget => Err(over(measured.fuel_used, false)),
        Ok(measured) => Ok(measured),
        Err(GuestFailure::OutOfFuel(spent)) => Err(over(spent, true)),
        Err(failure) => Err(RegistryError::Invariant {
            case: vector.name.clone(),
            reason: failure.to_string(),
        }),
    }
}
