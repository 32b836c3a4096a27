//! The cost of one `initiate-transfer` decision, imports answered from memory (a conformance
//! vector's recorded answers), three ways in one run: through wasmtime with a fresh instance
//! from the `InstancePre` per call (the default), through wasmtime with one instance reused for
//! every call (`TRANSFERD_GUEST_REUSE_COUNT` above 1), and the same logic compiled natively.
//! Prints the median and p99 per call and the ratio to native; run with
//! `./scripts/bench.sh guest`.
//!
//! Both sides do the same work besides the guest: replay the vector's imports and write the
//! outcome in the vectors' format, so the difference is what wasmtime and the host's call
//! boundary cost. The calls run on a runtime worker, as a request's do in the service (a
//! store dropped from `block_on`'s thread would wake a worker and the I/O driver each time,
//! which no request pays).
//!
//! The guest is `TRANSFERD_GUEST` (the scripts set it); the vector is `clf-accepted.json`,
//! an accepted transfer that looks up a balance and publishes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transferd::guest::runtime::{GuestEngine, GuestLimits};
use transferd_guest::logic::initiate_transfer;
use transferd_guest::vectors::{self, Vector};

/// The service's allocator (`src/main.rs`), so the calls cost here what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WASM_CALLS: usize = 20_000;
const NATIVE_CALLS: usize = 200_000;
const WARM_UP: usize = 1_000;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// CPU time of this process so far, every thread (a store dropped on another thread counts
/// too), in seconds; from /proc, in clock ticks of 10 ms.
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|index| fields.get(*index)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// Timed calls and the CPU they cost the whole process.
struct Timed {
    times: Vec<Duration>,
    cpu_s: f64,
}

fn summary(name: &str, timed: Timed) -> Duration {
    let mut times = timed.times;
    times.sort();
    let median = percentile(&times, 0.5);
    println!(
        "{name:<32} {:>8} calls  median {:>7.2} µs  p99 {:>7.2} µs  CPU {:>7.2} µs/call",
        times.len(),
        median.as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        timed.cpu_s * 1e6 / times.len().max(1) as f64
    );
    median
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest_file = std::env::var_os("TRANSFERD_GUEST")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("set TRANSFERD_GUEST to the built guest component"))?;
    let path = root.join("tests/vectors/clf-accepted.json");
    let vector = Vector::parse("clf-accepted.json", &std::fs::read_to_string(&path)?)?;

    let vector = Arc::new(vector);
    let on_worker = {
        let (guest_file, vector) = (guest_file.clone(), Arc::clone(&vector));
        tokio::spawn(async move {
            let fresh = time_wasm(&guest_file, &vector, 1).await?;
            let reused = time_wasm(&guest_file, &vector, u32::MAX).await?;
            Ok::<_, anyhow::Error>((fresh, reused, time_native(&vector)))
        })
    };
    let (fresh, reused, native) = on_worker.await??;

    // The file's name, not its path: the report is committed and names no machine's paths.
    let name = guest_file.file_name().unwrap_or_default().to_string_lossy();
    println!("guest call benchmark: {name}");
    let fresh_median = summary("wasmtime, fresh instance", fresh);
    let reused_median = summary("wasmtime, reused instance", reused);
    let native_median = summary("native", native);
    for (name, median) in [("fresh", fresh_median), ("reused", reused_median)] {
        println!(
            "guest overhead, {name} instance (median, wasmtime - native): {:.2} µs; wasmtime / native = {:.1}x",
            (median.saturating_sub(native_median)).as_secs_f64() * 1e6,
            median.as_secs_f64() / native_median.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// `NATIVE_CALLS` timed calls of the same logic linked into this binary, with the same
/// replayed imports and the same outcome written as the wasm calls.
fn time_native(vector: &Vector) -> Timed {
    let expected = vectors::outcome(
        &initiate_transfer(&mut vector.replay(), &vector.context, &vector.request),
        &[],
    );
    assert!(
        expected["result"]["ok"].is_object(),
        "the native logic accepts it too"
    );
    let mut native = Vec::with_capacity(NATIVE_CALLS);
    let cpu_before = process_cpu_s();
    for _ in 0..NATIVE_CALLS {
        let started = Instant::now();
        let mut replay = vector.replay();
        let decision = initiate_transfer(&mut replay, &vector.context, &vector.request);
        let outcome = vectors::outcome(&decision, &replay.calls);
        native.push(started.elapsed());
        assert_eq!(
            outcome["result"], expected["result"],
            "every call decides the same"
        );
    }
    Timed {
        times: native,
        cpu_s: process_cpu_s() - cpu_before,
    }
}

/// `WASM_CALLS` timed calls (after `WARM_UP` untimed ones) on an engine whose instances serve
/// up to `reuse_count` calls each.
async fn time_wasm(
    guest_file: &std::path::Path,
    vector: &Vector,
    reuse_count: u32,
) -> anyhow::Result<Timed> {
    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: Duration::from_secs(5),
        memory_bytes: 64 * 1024 * 1024,
        fuel_budget: transferd::config::DEFAULT_GUEST_FUEL_BUDGET,
        concurrency: 16,
        reuse_count,
        compiled_cache: None,
    })?);
    let guest = engine.load_file(guest_file)?;
    let expected = guest.run_vector(vector).await?;
    assert!(
        expected["result"]["ok"].is_object(),
        "the benchmark's vector is an accepted transfer: {expected}"
    );

    for _ in 0..WARM_UP {
        guest.run_vector(vector).await?;
    }
    let mut wasm = Vec::with_capacity(WASM_CALLS);
    let cpu_before = process_cpu_s();
    for _ in 0..WASM_CALLS {
        let started = Instant::now();
        let outcome = guest.run_vector(vector).await?;
        wasm.push(started.elapsed());
        assert_eq!(outcome, expected, "every call decides the same");
    }
    // The last stores' teardown (on other threads) belongs to these calls too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cpu_s = process_cpu_s() - cpu_before;
    if reuse_count > 1 {
        assert_eq!(
            guest.instances_created(),
            1,
            "every call reused one instance"
        );
    }
    Ok(Timed { times: wasm, cpu_s })
}
