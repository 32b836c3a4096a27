//! What a guest call sees of time and chance, and the work it may do, through wasmtime: the
//! clock test guest (tests/guests/clock) refuses whenever its wall clock is not the request's,
//! so it passes the upload check and decides replays like the standard guest only because the
//! host gives every call the request's time and random seeded from its transaction id.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use transferd::config::DEFAULT_GUEST_FUEL_BUDGET;
use transferd::guest::registry::{self, RegistryError};
use transferd::guest::runtime::{Guest, GuestEngine, GuestFailure, GuestLimits};
use transferd_guest::vectors::{Vector, canonical};

/// A built component: the file `variable` names, else `relative` in the target directory.
fn built(variable: &str, relative: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join(relative)
}

fn standard_bytes() -> anyhow::Result<Vec<u8>> {
    let path = built(
        "TRANSFERD_GUEST",
        "wasm32-wasip2/release/transferd_guest.wasm",
    );
    Ok(std::fs::read(path)?)
}

fn clock_bytes() -> anyhow::Result<Vec<u8>> {
    let path = built(
        "TRANSFERD_TEST_CLOCK_GUEST",
        "clock-guest/wasm32-wasip2/release/transferd_test_guest_clock.wasm",
    );
    Ok(std::fs::read(path)?)
}

fn engine(fuel_budget: u64) -> anyhow::Result<Arc<GuestEngine>> {
    Ok(Arc::new(GuestEngine::new(GuestLimits {
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        fuel_budget,
        concurrency: 2,
        reuse_count: 1,
        compiled_cache: None,
    })?))
}

/// An invariant case the standard guest accepts (it publishes).
fn accepted_case() -> anyhow::Result<Vector> {
    registry::invariant_vectors()
        .into_iter()
        .find(|vector| {
            vector
                .expected
                .as_ref()
                .is_some_and(|expected| expected["result"].get("ok").is_some())
        })
        .ok_or_else(|| anyhow::anyhow!("an invariant case accepts"))
}

/// `vector` received at another moment: a live request is never received when its vector was.
fn received_at(mut vector: Vector, received_at_ms: u64) -> Vector {
    vector.context.received_at_ms = received_at_ms;
    vector
}

async fn outcome(guest: &Guest, vector: &Vector) -> anyhow::Result<String> {
    Ok(canonical(&guest.run_vector(vector).await?))
}

#[tokio::test]
async fn a_guest_that_reads_the_clock_passes_the_upload_check() -> anyhow::Result<()> {
    let checked = registry::check(&engine(DEFAULT_GUEST_FUEL_BUDGET)?, &clock_bytes()?).await?;
    assert!(checked.invariant_cases > 0);
    assert!(checked.max_vector_fuel > 0, "the cases' fuel is measured");
    Ok(())
}

#[tokio::test]
async fn a_guest_that_reads_the_clock_decides_like_the_standard_guest_at_any_time()
-> anyhow::Result<()> {
    let engine = engine(DEFAULT_GUEST_FUEL_BUDGET)?;
    let clock = engine.load(&clock_bytes()?)?;
    let standard = engine.load(&standard_bytes()?)?;
    let case = accepted_case()?;
    for received_at_ms in [
        case.context.received_at_ms,
        1_765_000_000_123,
        4_102_444_800_000,
    ] {
        let live = received_at(case.clone(), received_at_ms);
        let decided = outcome(&clock, &live).await?;
        assert_eq!(
            decided,
            outcome(&standard, &live).await?,
            "{received_at_ms}"
        );
        assert!(decided.contains("\"ok\""), "{decided}");
    }
    Ok(())
}

#[tokio::test]
async fn the_same_transaction_draws_the_same_random_and_another_does_not() -> anyhow::Result<()> {
    let engine = engine(DEFAULT_GUEST_FUEL_BUDGET)?;
    let clock = engine.load(&clock_bytes()?)?;
    let mut case = accepted_case()?;
    case.request.description = Some("clock:random".into());
    let first = outcome(&clock, &case).await?;
    assert!(first.contains("random "), "{first}");
    // Another instance, another time of day on this machine: the same bytes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = outcome(&engine.load(&clock_bytes()?)?, &case).await?;
    assert_eq!(first, again);

    let mut other = case.clone();
    other.context.transaction_id = "01a20c00-0000-7000-8000-00000000abcd".into();
    let differs = outcome(&clock, &other).await?;
    assert!(differs.contains("random "), "{differs}");
    assert_ne!(random_drawn(&first), random_drawn(&differs));
    Ok(())
}

/// The number after `random ` in an outcome.
fn random_drawn(outcome: &str) -> Option<String> {
    let start = outcome.find("random ")? + "random ".len();
    Some(
        outcome[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect(),
    )
}

#[tokio::test]
async fn a_call_that_spends_its_budget_fails_out_of_fuel() -> anyhow::Result<()> {
    let budget = 5_000_000;
    let clock = engine(budget)?.load(&clock_bytes()?)?;
    let mut case = accepted_case()?;
    case.request.description = Some("clock:burn".into());
    let measured = clock
        .run_replayed_measured(&case.context, &case.request, case.replay())
        .await;
    assert_eq!(measured, Err(GuestFailure::OutOfFuel(budget)));

    case.request.description = None;
    let measured = clock
        .run_replayed_measured(&case.context, &case.request, case.replay())
        .await?;
    assert!(measured.fuel_used > 0 && measured.fuel_used <= budget);
    Ok(())
}

#[tokio::test]
async fn an_upload_whose_cases_need_more_than_the_budget_is_refused_with_the_figures()
-> anyhow::Result<()> {
    let budget = 1_000;
    let error = match registry::check(&engine(budget)?, &standard_bytes()?).await {
        Err(error) => error,
        Ok(_) => anyhow::bail!("the upload passed under a budget of {budget}"),
    };
    let RegistryError::FuelBudget {
        case,
        fuel_used,
        budget: named,
        ..
    } = &error
    else {
        anyhow::bail!("refused for its fuel, not: {error}");
    };
    assert_eq!(*named, budget);
    assert!(*fuel_used > budget);
    let message = error.to_string();
    assert!(
        message.contains(case.as_str()) && message.contains(&fuel_used.to_string()),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn the_default_budget_leaves_the_standard_guest_room() -> anyhow::Result<()> {
    let checked = registry::check(&engine(DEFAULT_GUEST_FUEL_BUDGET)?, &standard_bytes()?).await?;
    eprintln!(
        "the standard guest's invariant cases use at most {} fuel",
        checked.max_vector_fuel
    );
    assert!(
        checked.max_vector_fuel.saturating_mul(5) <= DEFAULT_GUEST_FUEL_BUDGET,
        "{} of {DEFAULT_GUEST_FUEL_BUDGET}",
        checked.max_vector_fuel
    );
    Ok(())
}
