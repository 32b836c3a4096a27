//! Hot-swap benchmark: two replicas on one database under a steady load of transfers; each
//! activation alternates between two guest versions. Prints the time from activation to the
//! first request served by the new version on every replica, and request latency before and
//! during swaps. Run with `./scripts/bench.sh swap`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use transferd_e2e::{ADMIN_TOKEN, Host, Namespace, guest_file, strict_guest_file};

const SWAPS: usize = 10;

/// Request latencies outside swaps, during swaps, and the count of failed requests.
#[derive(Default)]
struct Samples {
    steady: Vec<Duration>,
    swapping: Vec<Duration>,
    failed: usize,
}
const CLIENTS: usize = 8;

async fn admin(
    host: &Host,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Value> {
    let mut request = host
        .client
        .request(method, format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    Ok(response.json().await?)
}

async fn version_served(host: &Host) -> anyhow::Result<String> {
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "0.01", "currency": "USD"}))
        .await?;
    Ok(reply
        .headers
        .get("x-guest-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn summary(name: &str, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "{name:<22} {:>6} requests  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        latencies.len(),
        percentile(latencies, 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let replicas = [
        Arc::new(Host::start(&namespace).await?),
        Arc::new(Host::start(&namespace).await?),
    ];
    replicas[0].deposit(1, "USD", "1000000000").await?;
    replicas[0].deposit(2, "USD", "1").await?;
    let mut versions = Vec::new();
    for file in [guest_file(), strict_guest_file()] {
        let uploaded = admin(
            &replicas[0],
            reqwest::Method::PUT,
            "/admin/guest",
            Some(std::fs::read(file)?),
        )
        .await?;
        versions.push(uploaded["version"].as_str().unwrap_or_default().to_string());
    }

    // Steady load; each latency is tagged with whether a swap was in progress.
    let running = Arc::new(AtomicBool::new(true));
    let swapping = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let host = Arc::clone(&replicas[client % 2]);
        let (running, swapping, samples) = (
            Arc::clone(&running),
            Arc::clone(&swapping),
            Arc::clone(&samples),
        );
        clients.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = matches!(version_served(&host).await, Ok(version) if !version.is_empty());
                let elapsed = started.elapsed();
                let mut samples = samples.lock().await;
                if !ok {
                    samples.failed += 1;
                } else if swapping.load(Ordering::Relaxed) {
                    samples.swapping.push(elapsed);
                } else {
                    samples.steady.push(elapsed);
                }
            }
        }));
    }

    let mut swap_times = Vec::new();
    for swap in 0..SWAPS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let version = &versions[swap % 2];
        swapping.store(true, Ordering::Relaxed);
        let started = Instant::now();
        admin(
            &replicas[swap % 2],
            reqwest::Method::POST,
            &format!("/admin/guest/{version}/activate"),
            None,
        )
        .await?;
        let mut per_replica = Vec::new();
        for replica in &replicas {
            while version_served(replica).await? != *version {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "no swap within 30 s"
                );
            }
            per_replica.push(started.elapsed());
        }
        swapping.store(false, Ordering::Relaxed);
        swap_times.push(per_replica.into_iter().max().unwrap_or_default());
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }

    println!(
        "hot swap: 2 replicas, {CLIENTS} clients of POST /transfers, {SWAPS} activations (first of each version compiles, later ones hit the compiled cache)"
    );
    for (index, time) in swap_times.iter().enumerate() {
        println!(
            "activation {:>2}: every replica served the new version after {:>7.1} ms",
            index + 1,
            time.as_secs_f64() * 1e3
        );
    }
    let mut sorted = swap_times.clone();
    sorted.sort();
    println!(
        "activation to new version on every replica: median {:.1} ms, max {:.1} ms",
        percentile(&sorted, 0.5).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    let mut samples = samples.lock().await;
    let failed = samples.failed;
    summary("latency, steady", &mut samples.steady);
    summary("latency, during swaps", &mut samples.swapping);
    println!("failed requests: {failed}");
    Ok(())
}
