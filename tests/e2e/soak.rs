//! The soak: a long run of transfers while the settlement worker and the broker are each
//! killed several times, then the same checks as the fault test. Not in the test command
//! (ignored); `scripts/test.sh --soak` runs it. Settings from the environment:
//!
//! - `SOAK_REQUESTS` (default 52,000): transfers posted in all;
//! - `SOAK_KILLS` (default 3): times the worker, and separately the broker, are killed;
//! - `SOAK_LIMIT_SECS` (default 1,800): the whole run, settlement and checks included.
//!
//! The broker is a private Tansu with SQLite storage, SIGKILLed and started again on its
//! database; the shared services are left alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use transferd_e2e::load::{Fault, Load, LoadSettings, verify};
use transferd_e2e::{Broker, BrokerStorage, Host, HostOptions, Namespace, WorkerProcess};

const USERS: i64 = 40;
const CLIENTS: u64 = 12;
const MAX_MINOR: i64 = 500;
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a long soak: scripts/test.sh --soak runs it"]
async fn soak_with_worker_and_broker_kills() -> anyhow::Result<()> {
    let requests = setting("SOAK_REQUESTS", 52_000)?;
    let kills = setting("SOAK_KILLS", 3)?;
    let limit = Duration::from_secs(setting("SOAK_LIMIT_SECS", 1_800)?);
    tokio::time::timeout(limit, run(requests, kills))
        .await
        .context("the soak exceeded SOAK_LIMIT_SECS")?
}

async fn run(requests: u64, kills: u64) -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut broker = Broker::start_with(BrokerStorage::Sqlite).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.run_worker = false;
    let mut host = Host::start_with(&namespace, options.clone()).await?;
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000.00").await?;
    }
    let mut worker = WorkerProcess::start(&namespace, &options, "worker-0")?;
    let load = Load::start(LoadSettings {
        base_url: host.base_url.clone(),
        users: USERS,
        clients: CLIENTS,
        max_minor: MAX_MINOR,
        requests: Some(requests),
        seed: 50,
        two_phase: false,
        batches: false,
    })?;
    let started = Instant::now();

    // 2 × kills faults, alternating worker and broker, spread evenly over the requests; any
    // not reached while the load runs (a fast run) fall on the settlement backlog.
    let events = 2 * kills;
    let mut faults = Vec::new();
    let mut worker_kills = 0;
    for event in 0..events {
        let threshold = (requests * (event + 1) / (events + 1)) as usize;
        while load.answered() < threshold && !load.finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if event % 2 == 0 {
            worker.kill();
            worker_kills += 1;
            eprintln!(
                "soak: worker SIGKILL {worker_kills} at {} answers, {:.0} s",
                load.answered(),
                started.elapsed().as_secs_f64()
            );
            worker = WorkerProcess::start(&namespace, &options, &format!("worker-{worker_kills}"))?;
        } else {
            faults.push(kill_broker(&mut broker, &load, faults.len() + 1, started).await?);
        }
        if let Some(status) = host.exit_status() {
            anyhow::bail!(
                "transferd serve exited by itself: {status}\n{}",
                transferd_e2e::log_tail(&host.log_path, 40)
            );
        }
    }
    // Every request is posted: the faults fall inside the load, not at its end.
    while !load.finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes = load.stop().await?;
    anyhow::ensure!(
        outcomes.len() as u64 >= requests,
        "the load posted {} of {requests} requests",
        outcomes.len()
    );
    let load_time = started.elapsed();
    eprintln!(
        "soak: the load by send time\n{}",
        transferd_e2e::load::timeline(&outcomes, started, Duration::from_secs(20))
    );
    let checks_started = Instant::now();
    let verdict = verify(&namespace, &outcomes, &faults, SETTLE_LIMIT, &host.base_url).await?;
    eprintln!(
        "soak: {requests} requests in {:.0}s ({:.0}/s), worker killed {worker_kills} times, broker {} times; {:.0}s to settle and check\n{verdict}",
        load_time.as_secs_f64(),
        outcomes.len() as f64 / load_time.as_secs_f64(),
        faults.len(),
        checks_started.elapsed().as_secs_f64()
    );
    drop(worker);
    host.kill();
    anyhow::ensure!(
        verdict.violations.is_empty(),
        "{} invariants broken (figures above)",
        verdict.violations.len()
    );
    Ok(())
}

async fn kill_broker(
    broker: &mut Broker,
    load: &Load,
    number: usize,
    run_started: Instant,
) -> anyhow::Result<Fault> {
    let name = format!("broker SIGKILL {number}");
    eprintln!(
        "soak: {name} at {} answers, {:.0} s",
        load.answered(),
        run_started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    broker.kill_and_restart().await?;
    let restarted = Instant::now();
    let mut recovered = load.wait_accepted_after(restarted, RECOVERY_LIMIT).await;
    if recovered.is_none() && load.finished() {
        // The load ended before it could show recovery; settlement still covers the broker.
        recovered = Some(restarted);
    }
    Ok(Fault {
        name,
        kills_transferd: false,
        started,
        restarted,
        recovered,
    })
}
