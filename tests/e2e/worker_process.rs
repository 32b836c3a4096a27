//! `serve` runs its settlement worker as a child process: when the worker dies (as librdkafka
//! can kill it, README "Known crash"), serve goes on answering, starts it again and the new
//! worker settles on; when serve dies, its worker stops too instead of running on orphaned.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use transferd_e2e::{Host, Namespace};

fn transfer() -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"})
}

const SETTLED_COMPLETED: (&str, &[&str]) = (
    "transferd_settled_transfers_total",
    &[r#"status="completed""#],
);

/// Waits (15 s at most) until serve's `/metrics` shows `name` with `labels` at `wanted`.
async fn until_metric(
    host: &Host,
    (name, labels): (&str, &[&str]),
    wanted: f64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = host.metric(name, labels).await?;
        if value == wanted {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} {labels:?} stayed at {value}, not {wanted}, for 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// Whether a process is gone (exited; a zombie no one reaped yet counts as gone).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test]
async fn a_dead_worker_process_is_started_again_while_serve_answers() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "100.00").await?;
    ensure!(host.transfer(transfer()).await?.status == 200);
    // The worker's own count reaches serve's /metrics.
    until_metric(&host, SETTLED_COMPLETED, 1.0).await?;

    let first = host.worker_pid(Duration::from_secs(10)).await?;
    kill(first, "-KILL")?;
    for _ in 0..5 {
        let reply = host.transfer(transfer()).await?;
        ensure!(
            reply.status == 200,
            "serve answers while its worker is dead: {} {}",
            reply.status,
            reply.body
        );
    }
    let settled = namespace.wait_settled(6, Duration::from_secs(60)).await?;
    ensure!(settled == 6, "the restarted worker settled {settled} of 6");
    ensure!(host.is_running(), "serve outlived its worker");
    let second = host.worker_pid(Duration::from_secs(10)).await?;
    ensure!(second != first, "a new worker process runs");
    until_metric(&host, ("transferd_worker_restarts_total", &[]), 1.0).await?;
    // Counts from both workers' lives add up in serve.
    until_metric(&host, SETTLED_COMPLETED, 6.0).await?;
    let check = namespace.check_ledger().await?;
    ensure!(check.nonzero_currency_sums.is_empty(), "{check:?}");
    ensure!(check.transfer_entries == 12, "{check:?}");
    Ok(())
}

#[tokio::test]
async fn a_killed_serve_takes_its_worker_process_with_it() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut host = Host::start(&namespace).await?;
    let worker = host.worker_pid(Duration::from_secs(10)).await?;
    host.kill().context("serve did not die")?;
    // The worker sees its socket to serve close and stops within its drain time (10 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gone(worker) {
        ensure!(
            Instant::now() < deadline,
            "the worker process {worker} still runs 20 s after serve was SIGKILLed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
