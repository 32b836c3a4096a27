//! `serve` runs its settlement worker as a child process: when the worker dies (as librdkafka
//! can kill it, README "Known crash"), serve goes on answering, starts it again and the new
//! worker settles on; when serve dies, its worker stops too instead of running on orphaned.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use transferd_e2e::{Host, HostOptions, Namespace, WorkerProcess, free_port};

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

/// `GET path` on `base`: status and body text.
async fn get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("{base}{path}")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Polls `GET base/readyz` (15 s at most) until its worker check's detail starts with `role`.
async fn worker_role_becomes(base: &str, role: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(base, "/readyz").await.unwrap_or((0, String::new()));
        let readiness: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let detail = readiness["checks"]["worker"]["detail"]
            .as_str()
            .unwrap_or("");
        if status == 200 && detail.starts_with(role) {
            return Ok(readiness);
        }
        ensure!(
            Instant::now() < deadline,
            "the worker at {base} is not {role}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A worker started by hand with `TRANSFERD_WORKER_LISTEN` serves its probes and metrics: the
/// one holding the settlement lock is active, a second one is ready on standby, and takes over
/// when the first goes.
#[tokio::test]
async fn a_worker_serves_its_probes_and_metrics_active_or_standby() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let _host = Host::start_with(&namespace, options.clone()).await?;
    let listening = |port: u16| {
        let mut options = options.clone();
        options.extra_env.push((
            "TRANSFERD_WORKER_LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ));
        options
    };
    let (first_port, second_port) = (free_port(), free_port());
    let mut first = WorkerProcess::start(&namespace, &listening(first_port), "worker-a")?;
    let first_url = format!("http://127.0.0.1:{first_port}");
    let active = worker_role_becomes(&first_url, "active").await?;
    assert_eq!(active["ready"], true, "{active}");
    assert_eq!(active["checks"]["postgres"]["ready"], true, "{active}");
    assert_eq!(active["checks"]["broker"]["ready"], true, "{active}");
    let _second = WorkerProcess::start(&namespace, &listening(second_port), "worker-b")?;
    let second_url = format!("http://127.0.0.1:{second_port}");
    let standby = worker_role_becomes(&second_url, "standby").await?;
    assert_eq!(
        standby["ready"], true,
        "a standby worker is ready: {standby}"
    );

    assert_eq!(get(&first_url, "/healthz").await?.0, 200);
    assert_eq!(get(&first_url, "/transfers").await?.0, 404, "no API here");
    assert_eq!(
        get(&first_url, "/admin/status").await?.0,
        404,
        "no admin here"
    );
    let (status, metrics) = get(&first_url, "/metrics").await?;
    assert_eq!(status, 200);
    for series in [
        "transferd_worker_active 1",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "guest_version=\"none\"",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(metrics.contains("transferd_build_info{"), "{metrics}");
    let (_, standby_metrics) = get(&second_url, "/metrics").await?;
    assert!(
        standby_metrics.contains("transferd_worker_active 0"),
        "{standby_metrics}"
    );

    first.kill();
    worker_role_becomes(&second_url, "active").await?;
    Ok(())
}
