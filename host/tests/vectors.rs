//! The conformance vectors (tests/vectors) through wasmtime: the real guest component, with
//! imports that replay each vector's recorded answers. The Node.js harness (tests/jco) runs
//! the same vectors under jco; both must print byte-identical outcomes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use transferd::bindings::wit_package;
use transferd::guest::runtime::{Guest, GuestEngine, GuestLimits};
use transferd_guest::vectors::{Vector, canonical, check_invariant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf()
}

/// A built component: the file `variable` names, else `relative` in the target directory.
fn built(variable: &str, relative: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join(relative)
}

fn guest_file() -> PathBuf {
    built(
        "TRANSFERD_GUEST",
        "wasm32-wasip2/release/transferd_guest.wasm",
    )
}

/// The standard logic built against the released 0.1.0 package (tests/guests/v0_1).
fn v0_1_guest_file() -> PathBuf {
    built(
        "TRANSFERD_TEST_V0_1_GUEST",
        "v0-1-guest/wasm32-wasip2/release/transferd_test_guest_v0_1.wasm",
    )
}

/// The standard logic built against the released 0.2.0 package (tests/guests/v0_2).
fn v0_2_guest_file() -> PathBuf {
    built(
        "TRANSFERD_TEST_V0_2_GUEST",
        "v0-2-guest/wasm32-wasip2/release/transferd_test_guest_v0_2.wasm",
    )
}

/// The standard logic plus a velocity rule (tests/guests/velocity).
fn velocity_guest_file() -> PathBuf {
    built(
        "TRANSFERD_TEST_VELOCITY_GUEST",
        "velocity-guest/wasm32-wasip2/release/transferd_test_guest_velocity.wasm",
    )
}

fn load_guest() -> anyhow::Result<Guest> {
    load_guest_with(4, 1)
}

/// The guest on an engine running `concurrency` calls at once, each instance serving up to
/// `reuse_count` calls.
fn load_guest_with(concurrency: u32, reuse_count: u32) -> anyhow::Result<Guest> {
    Ok(engine(concurrency, reuse_count)?.load_file(&guest_file())?)
}

fn engine(concurrency: u32, reuse_count: u32) -> anyhow::Result<Arc<GuestEngine>> {
    Ok(Arc::new(GuestEngine::new(GuestLimits {
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        fuel_budget: transferd::config::DEFAULT_GUEST_FUEL_BUDGET,
        concurrency,
        reuse_count,
        compiled_cache: None,
    })?))
}

fn vectors() -> anyhow::Result<Vec<Vector>> {
    let vectors = Vector::load_dir(&workspace_root().join("tests/vectors"))?;
    anyhow::ensure!(
        vectors.len() >= 40,
        "the vectors are there ({})",
        vectors.len()
    );
    Ok(vectors)
}

/// `name canonical-outcome` for every vector, the line format every harness prints.
async fn wasmtime_lines(guest: &Guest, vectors: &[Vector]) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for vector in vectors {
        let outcome = guest.run_vector(vector).await?;
        lines.push(format!("{} {}", vector.name, canonical(&outcome)));
    }
    Ok(lines)
}

#[tokio::test]
async fn every_vector_passes_under_wasmtime() -> anyhow::Result<()> {
    let guest = load_guest()?;
    let vectors = vectors()?;
    let mut failures = Vec::new();
    for vector in &vectors {
        let actual = guest.run_vector(vector).await?;
        let expected = vector.expected.as_ref().map(canonical);
        if expected.as_deref() != Some(canonical(&actual).as_str()) {
            failures.push(format!("{}: got {}", vector.name, canonical(&actual)));
        }
        if vector.invariant {
            check_invariant(vector, &actual).map_err(anyhow::Error::msg)?;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A vector's expected outcome as a guest without `account-info` (before 0.3.0) gives it:
/// the same, less the `account` calls it cannot make. `None` for a vector whose decision
/// depends on an account's limits or counters, which such a guest does not check.
fn without_account_info(vector: &Vector) -> Option<String> {
    if vector.imports.get("accounts").is_some() || vector.imports.get("account_error").is_some() {
        return None;
    }
    let mut expected = vector.expected.clone()?;
    if let Some(calls) = expected["calls"].as_array_mut() {
        calls.retain(|call| call.get("account").is_none());
    }
    Some(canonical(&expected))
}

/// A 0.2.0 guest (no `account-info`) decides every vector that needs no account's limits as
/// the current guest does, less the `account` calls, and passes the invariant cases.
#[tokio::test]
async fn a_0_2_guest_decides_every_vector_but_the_limits_ones() -> anyhow::Result<()> {
    let older = engine(2, 1)?.load_file(&v0_2_guest_file())?;
    assert_eq!(older.package().version(), "0.2.0");
    let package_of = |file: PathBuf| std::fs::read(file).map(|bytes| wit_package(&bytes));
    assert_eq!(package_of(v0_2_guest_file())?.as_deref(), Some("0.2.0"));
    let mut decided = 0;
    for vector in &vectors()? {
        let actual = older.run_vector(vector).await?;
        if vector.invariant {
            check_invariant(vector, &actual).map_err(anyhow::Error::msg)?;
        }
        if let Some(expected) = without_account_info(vector) {
            decided += 1;
            assert_eq!(canonical(&actual), expected, "{}", vector.name);
        }
    }
    assert!(decided >= 50, "{decided} vectors without limits");
    Ok(())
}

/// A 0.1.0 guest decides every vector of the original five fields exactly as the current
/// guest does (less the `account` calls), and is never given one with more: the host refuses
/// it first, naming each field, having called nothing. It passes the invariant cases, as the
/// upload check demands.
#[tokio::test]
async fn a_0_1_guest_decides_what_it_can_carry_and_is_spared_the_rest() -> anyhow::Result<()> {
    let legacy = engine(2, 1)?.load_file(&v0_1_guest_file())?;
    assert_eq!(legacy.package().version(), "0.1.0");
    assert_eq!(load_guest()?.package().version(), "0.3.0");
    // What the registry reads from the bytes alone says the same.
    let package_of = |file: PathBuf| std::fs::read(file).map(|bytes| wit_package(&bytes));
    assert_eq!(package_of(v0_1_guest_file())?.as_deref(), Some("0.1.0"));
    assert_eq!(package_of(guest_file())?.as_deref(), Some("0.3.0"));
    let mut carried = 0;
    for vector in &vectors()? {
        let actual = legacy.run_vector(vector).await?;
        if vector.invariant {
            check_invariant(vector, &actual).map_err(anyhow::Error::msg)?;
        }
        if !vector.request.has_extensions() {
            let Some(expected) = without_account_info(vector) else {
                continue;
            };
            carried += 1;
            assert_eq!(canonical(&actual), expected, "{}", vector.name);
            continue;
        }
        assert_eq!(actual["calls"], serde_json::json!([]), "{}", vector.name);
        let errors = actual["result"]["err"]["invalid"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!errors.is_empty(), "{}: {actual}", vector.name);
        for error in errors {
            assert_eq!(error["code"], "not_supported", "{}", vector.name);
        }
    }
    assert!(carried >= 40, "{carried} vectors of the original fields");
    Ok(())
}

#[tokio::test]
async fn a_changed_expectation_fails() -> anyhow::Result<()> {
    let guest = load_guest()?;
    let mut vector = vectors()?
        .into_iter()
        .find(|v| v.name == "usd-accepted")
        .expect("usd-accepted exists");
    let expected = vector.expected.as_mut().expect("expected outcome");
    expected["result"]["ok"]["amount_minor"] = serde_json::json!(1051);
    let actual = guest.run_vector(&vector).await?;
    assert_ne!(
        canonical(&actual),
        canonical(vector.expected.as_ref().expect("expected")),
        "a wrong expectation is caught"
    );
    Ok(())
}

/// The Node.js harness's command: `node tests/jco/run.mjs ARGS` (scripts/test.sh installs it).
fn jco(arguments: &[&str]) -> anyhow::Result<std::process::Output> {
    jco_with(&guest_file(), arguments)
}

fn jco_with(guest: &Path, arguments: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = std::process::Command::new("node")
        .arg(workspace_root().join("tests/jco/run.mjs"))
        .args(arguments)
        .env("TRANSFERD_GUEST", guest)
        .output()?;
    Ok(output)
}

/// The velocity guest (tests/guests/velocity, a rule written with `account-info`) passes its
/// own vectors under wasmtime, and jco prints byte for byte what wasmtime does.
#[tokio::test]
async fn the_velocity_guest_passes_its_vectors_under_wasmtime_and_jco() -> anyhow::Result<()> {
    let guest = engine(2, 1)?.load_file(&velocity_guest_file())?;
    assert_eq!(guest.package().version(), "0.3.0");
    let directory = workspace_root().join("tests/guests/velocity/vectors");
    let vectors = Vector::load_dir(&directory)?;
    anyhow::ensure!(vectors.len() >= 3, "the velocity vectors are there");
    let lines = wasmtime_lines(&guest, &vectors).await?;
    for (vector, line) in vectors.iter().zip(&lines) {
        let expected = vector.expected.as_ref().map(canonical).unwrap_or_default();
        assert_eq!(line, &format!("{} {expected}", vector.name));
    }
    let output = jco_with(
        &velocity_guest_file(),
        &["--print", directory.to_str().unwrap_or_default()],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "jco: {stderr}");
    let jco_lines: Vec<String> = String::from_utf8(output.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(jco_lines, lines, "wasmtime and jco differ");
    Ok(())
}

#[tokio::test]
async fn wasmtime_and_jco_produce_byte_identical_outcomes() -> anyhow::Result<()> {
    let guest = load_guest()?;
    let vectors = vectors()?;
    let wasmtime = wasmtime_lines(&guest, &vectors).await?;
    let output = jco(&["--print"])?;
    assert!(
        output.status.success(),
        "jco harness failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jco_lines: Vec<String> = String::from_utf8(output.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(jco_lines.len(), wasmtime.len(), "both ran every vector");
    for (from_wasmtime, from_jco) in wasmtime.iter().zip(&jco_lines) {
        assert_eq!(from_wasmtime, from_jco, "wasmtime and jco differ");
    }
    Ok(())
}

#[tokio::test]
async fn jco_fails_on_a_changed_expectation_too() -> anyhow::Result<()> {
    let copy = std::env::temp_dir().join(format!(
        "transferd-vectors-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&copy)?;
    for vector in vectors()? {
        let mut document = vector.document.clone();
        if vector.name == "usd-accepted" {
            document["expected"]["result"]["ok"]["amount_minor"] = serde_json::json!(1051);
        }
        std::fs::write(
            copy.join(format!("{}.json", vector.name)),
            serde_json::to_string_pretty(&document)?,
        )?;
    }
    let output = jco(&[copy.to_str().unwrap_or_default()])?;
    std::fs::remove_dir_all(&copy)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a wrong expectation must fail jco: {stderr}"
    );
    assert!(stderr.contains("FAIL usd-accepted"), "{stderr}");
    Ok(())
}

/// A reused instance must decide every vector exactly as a fresh one does, whatever the calls
/// before it left behind: every vector, twice over, on one instance.
#[tokio::test]
async fn one_reused_instance_decides_every_vector_as_a_fresh_one() -> anyhow::Result<()> {
    let vectors = vectors()?;
    let fresh = wasmtime_lines(&load_guest()?, &vectors).await?;
    let reused_guest = load_guest_with(1, u32::MAX)?;
    let first = wasmtime_lines(&reused_guest, &vectors).await?;
    let second = wasmtime_lines(&reused_guest, &vectors).await?;
    assert_eq!(first, fresh, "the first pass on one instance");
    assert_eq!(second, fresh, "the second pass on the same instance");
    assert_eq!(
        reused_guest.instances_created(),
        1,
        "{} calls on one instance",
        vectors.len() * 2
    );
    Ok(())
}

/// Polls a future until it is ready; returns its output and how many polls returned pending.
async fn count_pending<F: std::future::Future>(future: F) -> (F::Output, usize) {
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    let output = std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() {
            pending += 1;
        }
        poll
    })
    .await;
    (output, pending)
}

/// A guest call whose imports answer at once runs to its end in one poll: it yields to the
/// scheduler only when an epoch tick (10 ms) passes while it runs. A store's epoch deadline
/// starts at 0, already passed; a call that set only what happens at a deadline went back to
/// the scheduler at its first instruction on every fresh instance (a kept instance's deadline
/// had moved on at its last yield).
#[tokio::test]
async fn a_guest_call_does_not_yield_before_its_first_tick() -> anyhow::Result<()> {
    const CALLS: usize = 200;
    let vectors = vectors()?;
    let vector = vectors
        .iter()
        .find(|vector| vector.name == "clf-accepted")
        .ok_or_else(|| anyhow::anyhow!("the vector clf-accepted is there"))?;
    for (kind, guest) in [
        ("fresh", load_guest()?),
        ("reused", load_guest_with(1, u32::MAX)?),
    ] {
        let mut yielded = 0;
        for _ in 0..CALLS {
            let (outcome, pending) = count_pending(guest.run_vector(vector)).await;
            outcome?;
            yielded += usize::from(pending > 0);
            // A fresh call's store is dropped on a task of its own, which holds the call's
            // pool slot until it runs: let it run, so that no call waits for a slot.
            tokio::task::yield_now().await;
        }
        // A call takes well under a millisecond; half of them seeing a tick would mean
        // calls of 5 ms or more, on a machine too loaded to measure anything.
        assert!(
            yielded < CALLS / 2,
            "{yielded} of {CALLS} {kind} calls went back to the scheduler"
        );
    }
    Ok(())
}
