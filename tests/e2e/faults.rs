//! Fault injection under load: while clients post transfers, Redis, PostgreSQL and the broker
//! are each really stopped (not cut off by a proxy) and started again, and transferd is
//! SIGKILLed and started again. Afterwards every transfer answered 200 must have settled
//! exactly once and the ledger must add up; inside an outage only 503 (or, while transferd is
//! dead, no answer) may replace 200/400, and outside one nothing may; transferd must come back
//! from each dependency's outage by itself, as the same process.
//!
//! It stops PostgreSQL and Redis, which every test uses, so it is its own test binary: `cargo
//! test` runs test binaries one after another, and this one alone. The broker is a private
//! Tansu with SQLite storage (what `scripts/run.sh` runs), SIGKILLed and started again.
//! `scripts/test.sh --faults` runs only this test.

use std::time::{Duration, Instant};

use anyhow::Context;
use transferd_e2e::load::{Answer, Fault, Kind, Load, LoadSettings, Outcome, verify};
use transferd_e2e::services::{Service, Services};
use transferd_e2e::{
    Broker, BrokerStorage, Host, HostOptions, Namespace, log_tail, produce_raw, run_command,
};

const USERS: i64 = 40;
/// The account that spends more than it has while Redis is down, and how.
const SPENDER: i64 = USERS + 1;
const SPENDER_BALANCE: &str = "10.00";
const SPEND_AMOUNT: &str = "2.00";
const SPENDS: usize = 12;
/// How many spends the balance covers.
const SPENDS_COVERED: usize = 5;
/// The transfer topic's partitions (the harness's default).
const PARTITIONS: i32 = 3;
const CLIENTS: u64 = 12;
/// Up to 5.00 against balances of 1,000.00: nearly every transfer is accepted.
const MAX_MINOR: i64 = 500;
/// Quiet load between faults.
const STEADY: Duration = Duration::from_secs(5);
/// How long Redis and PostgreSQL stay down.
const OUTAGE: Duration = Duration::from_secs(5);
/// The longest a fault may keep transferd from accepting transfers once the service is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// The whole test, faults, settlement and checks included.
const TEST_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load_lose_nothing_and_double_nothing() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_LIMIT, run())
        .await
        .context("the fault test exceeded its time limit")?
}

/// The host under test and what it did that nobody asked for.
struct Subject {
    namespace: Namespace,
    options: HostOptions,
    host: Host,
    /// Exits nobody caused, with their status and log: each is a failure.
    unasked_exits: Vec<String>,
}

impl Subject {
    /// Fails loudly (later) if transferd ended by itself, and starts it again so the rest of
    /// the run still measures something.
    async fn check_alive(&mut self, during: &str) -> anyhow::Result<()> {
        if let Some(status) = self.host.exit_status() {
            let report = format!(
                "transferd exited by itself during {during}: {status}; its last log lines:\n{}",
                log_tail(&self.host.log_path, 40)
            );
            eprintln!("{report}");
            self.unasked_exits.push(report);
            self.restart().await?;
        }
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.host.kill();
        self.host = Host::start_on(&self.namespace, self.options.clone(), self.host.port).await?;
        Ok(())
    }
}

async fn run() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut broker = Broker::start_with(BrokerStorage::Sqlite).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    // Expiry runs with the reconciler: often enough that the load's short-lived pending
    // transfers expire within the run.
    options
        .extra_env
        .push(("TRANSFERD_RECONCILE_INTERVAL_MS".into(), "1000".into()));
    let host = Host::start_with(&namespace, options.clone()).await?;
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000.00").await?;
    }
    host.deposit(SPENDER, "USD", SPENDER_BALANCE).await?;
    let base_url = host.base_url.clone();
    let mut subject = Subject {
        namespace,
        options,
        host,
        unasked_exits: Vec::new(),
    };
    let mut services = Services::new();
    let load = Load::start(LoadSettings {
        base_url: base_url.clone(),
        users: USERS,
        clients: CLIENTS,
        max_minor: MAX_MINOR,
        requests: None,
        seed: 8,
        two_phase: true,
        batches: true,
    })?;
    let started = Instant::now();
    let mut faults = Vec::new();
    tokio::time::sleep(STEADY).await;
    let poisoned = poison(&subject.namespace, &broker.brokers()).await?;
    let (fault, spends) = redis_outage_with_spends(&mut services, &load, &subject.host).await?;
    faults.push(fault);
    for (service, name) in [(Service::Postgres, "PostgreSQL stop/start")] {
        subject.check_alive("Redis stop/start").await?;
        tokio::time::sleep(STEADY).await;
        subject.check_alive("Redis stop/start").await?;
        let fault = outage(&mut services, &load, service, name).await?;
        subject.check_alive(name).await?;
        faults.push(fault);
        tokio::time::sleep(STEADY).await;
        subject.check_alive(name).await?;
    }
    faults.push(kill_broker(&mut broker, &load).await?);
    subject.check_alive("the broker's restart").await?;
    tokio::time::sleep(STEADY).await;
    subject.check_alive("the broker's restart").await?;
    faults.push(kill_transferd(&mut subject, &load).await?);
    tokio::time::sleep(STEADY).await;
    subject.check_alive("the load after the faults").await?;
    let mut outcomes = load.stop().await?;
    outcomes.extend(spends.iter().cloned());
    let load_time = started.elapsed();

    let checks_started = Instant::now();
    let mut verdict = verify(
        &subject.namespace,
        &outcomes,
        &faults,
        SETTLE_LIMIT,
        &base_url,
    )
    .await?;
    subject.check_alive("settlement after the load").await?;
    verdict.violations.append(&mut subject.unasked_exits);
    verdict
        .violations
        .extend(check_spends(&subject.host, &spends).await?);
    verdict
        .violations
        .extend(journal_break(&subject.namespace, &subject.options).await?);
    let quarantined = quarantined(&subject.namespace).await?;
    if quarantined != poisoned {
        verdict.violations.push(format!(
            "the bad messages written at {poisoned:?} were quarantined at {quarantined:?}"
        ));
    }
    eprintln!(
        "fault test: {:.0}s of load, {:.0}s to settle and check\n{verdict}",
        load_time.as_secs_f64(),
        checks_started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        verdict.violations.is_empty(),
        "{} invariants broken (figures above)",
        verdict.violations.len()
    );
    Ok(())
}

/// While the load runs, another producer writes to every partition of the transfer topic what
/// settlement cannot apply: not JSON, JSON of another shape, and a well-formed transfer the
/// ledger refuses (an operator's constraint, added here). Returns where each went.
async fn poison(namespace: &Namespace, brokers: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    eprintln!("fault: bad messages on every partition");
    let ledger = namespace.ledger().await?;
    sqlx::query(
        "ALTER TABLE transfers ADD CONSTRAINT no_poison CHECK (description IS DISTINCT FROM 'poison')",
    )
    .execute(&ledger)
    .await?;
    let refused = serde_json::json!({
        "transaction_id": uuid::Uuid::now_v7(), "sender_id": 1, "receiver_id": 2,
        "amount": 1.00, "amount_minor": 100, "currency": "USD", "description": "poison",
        "created_at_ms": 1_795_960_800_123_i64,
    });
    let bad = [
        b"not json".to_vec(),
        br#"{"transfer":"no"}"#.to_vec(),
        refused.to_string().into_bytes(),
    ];
    let mut written = Vec::new();
    for partition in 0..PARTITIONS {
        for payload in &bad {
            let topic = namespace.transfer_topic();
            written.push(produce_raw(brokers, &topic, partition, payload).await?);
        }
    }
    written.sort();
    Ok(written)
}

/// What `transferd ledger verify` finds wrong with the journal's hash chain and balances, if
/// anything: every batch written through the faults must chain and add up.
async fn journal_break(
    namespace: &Namespace,
    options: &HostOptions,
) -> anyhow::Result<Option<String>> {
    let output = run_command(namespace, options, &["ledger", "verify"], SETTLE_LIMIT).await?;
    Ok((!output.status.success()).then(|| {
        format!(
            "ledger verify exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim()
        )
    }))
}

/// Where the quarantine's messages were in the log, each as often as it is recorded.
async fn quarantined(namespace: &Namespace) -> anyhow::Result<Vec<(i32, i64)>> {
    let ledger = namespace.ledger().await?;
    Ok(sqlx::query_as(
        "SELECT partition, log_offset FROM settlement_quarantine ORDER BY partition, log_offset",
    )
    .fetch_all(&ledger)
    .await?)
}

/// Runs `restart` (which takes something away and brings it back) under load, then waits for
/// transferd to accept a transfer again.
async fn fault(
    load: &Load,
    name: &str,
    kills_transferd: bool,
    restart: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Fault> {
    eprintln!("fault: {name}");
    let started = Instant::now();
    restart.await?;
    let restarted = Instant::now();
    let recovered = load.wait_accepted_after(restarted, RECOVERY_LIMIT).await;
    Ok(Fault {
        name: name.to_string(),
        kills_transferd,
        started,
        restarted,
        recovered,
    })
}

/// Stops `service`, keeps it down for [`OUTAGE`], starts it.
async fn outage(
    services: &mut Services,
    load: &Load,
    service: Service,
    name: &str,
) -> anyhow::Result<Fault> {
    fault(load, name, false, async {
        services.stop(service).await?;
        tokio::time::sleep(OUTAGE).await;
        services.start(service).await
    })
    .await
}

/// Stops Redis and, while it is down, sends [`SPENDS`] concurrent transfers of
/// [`SPEND_AMOUNT`] from one account holding [`SPENDER_BALANCE`]: more than it has. Starts
/// Redis again after [`OUTAGE`]. Returns the fault and the spends' outcomes, which the load's
/// checks then cover like its own (answers, settlement, reads).
async fn redis_outage_with_spends(
    services: &mut Services,
    load: &Load,
    host: &Host,
) -> anyhow::Result<(Fault, Vec<Outcome>)> {
    let mut spends = Vec::new();
    let fault = fault(load, "Redis stop/start", false, async {
        services.stop(Service::Redis).await?;
        let started = Instant::now();
        let transfer = serde_json::json!({
            "sender_id": SPENDER, "receiver_id": 1, "amount": SPEND_AMOUNT, "currency": "USD",
        });
        let answers =
            futures::future::join_all((0..SPENDS).map(|_| host.transfer(transfer.clone()))).await;
        for answer in answers {
            let reply = answer?;
            spends.push(Outcome {
                sent: started,
                answered: Instant::now(),
                answer: Answer::Status(reply.status),
                transaction_id: reply.body["transaction_id"]
                    .as_str()
                    .and_then(|id| id.parse().ok()),
                in_doubt: reply.body["status"] == "unknown",
                kind: Kind::Transfer,
                items: Vec::new(),
            });
        }
        tokio::time::sleep(OUTAGE.saturating_sub(started.elapsed())).await;
        services.start(Service::Redis).await
    })
    .await?;
    Ok((fault, spends))
}

/// What a 200 promises, for the spends made while Redis was down: no more accepted than the
/// account held, and every accepted one completed (not only settled).
async fn check_spends(host: &Host, spends: &[Outcome]) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let accepted: Vec<uuid::Uuid> = spends
        .iter()
        .filter(|spend| spend.answer == Answer::Status(200))
        .filter_map(|spend| spend.transaction_id)
        .collect();
    if accepted.len() > SPENDS_COVERED {
        violations.push(format!(
            "{} spends of {SPEND_AMOUNT} accepted from {SPENDER_BALANCE} while Redis was down",
            accepted.len()
        ));
    }
    for id in accepted {
        let shown = host.get_json(&format!("/transfers/{id}")).await?;
        if shown["status"] != "completed" {
            violations.push(format!("spend {id} answered 200 and is {shown}"));
        }
    }
    Ok(violations)
}

/// SIGKILL the broker and start it again at once on its storage: the outage is its restart.
async fn kill_broker(broker: &mut Broker, load: &Load) -> anyhow::Result<Fault> {
    fault(
        load,
        "broker SIGKILL/restart",
        false,
        broker.kill_and_restart(),
    )
    .await
}

/// SIGKILL transferd and start it again on the same address.
async fn kill_transferd(subject: &mut Subject, load: &Load) -> anyhow::Result<Fault> {
    fault(load, "transferd SIGKILL/restart", true, subject.restart()).await
}
