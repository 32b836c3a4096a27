//! The broker under transferd: what it acknowledged survives its crash, topics that vanish are
//! created again while transferd runs, and a settling worker killed mid-load is replaced within
//! seconds.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{
    Broker, BrokerStorage, Host, HostOptions, Namespace, Random, WorkerProcess,
    consume_transfer_events, delete_topics,
};
use uuid::Uuid;

fn transfer(sender_id: i64, receiver_id: i64, amount: &str) -> Value {
    json!({"sender_id": sender_id, "receiver_id": receiver_id, "amount": amount, "currency": "USD"})
}

fn accepted_id(reply: &transferd_e2e::Reply) -> anyhow::Result<Uuid> {
    anyhow::ensure!(
        reply.status == 200,
        "transfer answered {}: {}",
        reply.status,
        reply.body
    );
    Ok(Uuid::parse_str(
        reply.body["transaction_id"].as_str().unwrap_or_default(),
    )?)
}

/// The sum over partitions of settlement's positions on `topic`, as the ledger keeps them.
async fn positions_total(namespace: &Namespace, topic: &str) -> anyhow::Result<i64> {
    let ledger = namespace.ledger().await?;
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT SUM(next_offset)::bigint FROM settlement_positions WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(&ledger)
    .await?;
    Ok(total.unwrap_or(0))
}

#[tokio::test]
async fn a_crashed_sqlite_broker_keeps_messages_and_topics() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut broker = Broker::start_with(BrokerStorage::Sqlite).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.run_worker = false;
    let worker_options = {
        let mut worker = HostOptions::new(&namespace);
        worker.kafka_brokers = broker.brokers();
        worker
    };
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "100.00").await?;
    let mut accepted = Vec::new();
    for _ in 0..20 {
        accepted.push(accepted_id(&host.transfer(transfer(1, 2, "1.00")).await?)?);
    }

    // Acknowledged, unsettled, then the broker crashes: the messages must still be there.
    broker.kill_and_restart().await?;
    let mut worker = WorkerProcess::start(&namespace, &worker_options, "worker")?;
    let settled = namespace
        .wait_settled(accepted.len() as i64, Duration::from_secs(60))
        .await?;
    assert_eq!(
        settled,
        accepted.len() as i64,
        "every transfer acknowledged before the crash settles after it"
    );
    let topic = namespace.transfer_topic();
    assert_eq!(
        positions_total(&namespace, &topic).await?,
        accepted.len() as i64,
        "settlement's positions moved with the ledger"
    );

    // A second crash: the log still matches the positions, and the service works on after it.
    worker.kill();
    broker.kill_and_restart().await?;
    let _worker = WorkerProcess::start(&namespace, &worker_options, "worker-2")?;
    let mut after = None;
    for _ in 0..50 {
        let reply = host.transfer(transfer(1, 2, "1.00")).await?;
        if reply.status == 200 {
            after = Some(accepted_id(&reply)?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(after.is_some(), "a transfer is accepted after the restart");
    let settled = namespace
        .wait_settled(accepted.len() as i64 + 1, Duration::from_secs(60))
        .await?;
    assert_eq!(
        settled,
        accepted.len() as i64 + 1,
        "nothing settled twice, the new one settled"
    );
    let check = namespace.check_ledger().await?;
    assert!(check.nonzero_currency_sums.is_empty(), "{check:?}");
    assert_eq!(check.transfer_entries, 2 * settled, "{check:?}");
    // Tansu kept the index its header reads need (scripts/tansu-sqlite-index.py) through
    // both crashes and its own schema creation at every start.
    assert_eq!(broker.header_indexes()?, vec!["transferd_header_record"]);
    // And it came back with as many tokio workers as the scripts give it (one by default:
    // scripts/env.sh), not one per core.
    let (started_with, configured) = broker.tokio_workers()?;
    assert_eq!(
        started_with,
        Some(configured),
        "the restarted broker's tokio workers"
    );
    Ok(())
}

#[tokio::test]
async fn topics_deleted_under_a_running_service_are_created_again() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    // A private broker with the default durable storage: Tansu 0.6's memory storage keeps a
    // deleted partition's old end offset for fetches, so a topic created again there is never
    // read past it (an upstream bug of that test-only mode).
    let mut broker = Broker::start_with(BrokerStorage::Sqlite).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "100.00").await?;
    let before = accepted_id(&host.transfer(transfer(1, 2, "1.00")).await?)?;
    assert_eq!(
        namespace.wait_settled(1, Duration::from_secs(30)).await?,
        1,
        "settled before the topics vanish"
    );

    let events_topic = format!("{}transfer_events", namespace.topic_prefix());
    delete_topics(&broker.brokers(), &[&namespace.transfer_topic()]).await?;
    // Tansu 0.6's SQLite storage deletes every topic of the cluster with any one (its
    // `topic_delete_by.sql`), so the events topic may be gone already.
    if let Err(error) = delete_topics(&broker.brokers(), &[&events_topic]).await {
        anyhow::ensure!(
            error.to_string().contains("UnknownTopicOrPartition") || broker.storage_died(),
            "deleting the events topic: {error:#}"
        );
    }
    if broker.storage_died() {
        eprintln!("Tansu's storage died under a fetch of a deleted partition; restarting it");
        broker.kill_and_restart().await?;
    }
    let mut accepted = vec![before];
    let mut refused = 0;
    for _ in 0..10 {
        let reply = host.transfer(transfer(1, 2, "1.00")).await?;
        match reply.status {
            200 => accepted.push(accepted_id(&reply)?),
            503 => refused += 1,
            other => anyhow::bail!("unexpected {other}: {}", reply.body),
        }
    }
    eprintln!(
        "after deleting the topics: {} accepted, {refused} refused",
        accepted.len() - 1
    );
    assert!(
        refused <= 1,
        "a publish to a missing topic creates it and is sent again ({refused} refused)"
    );
    settle_exactly(
        &namespace,
        &accepted,
        "the worker reads the recreated topic",
    )
    .await?;
    let events = consume_transfer_events(
        &broker.brokers(),
        &events_topic,
        accepted.len() - 1,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(
        events.len(),
        accepted.len() - 1,
        "events are written to the recreated events topic"
    );
    assert!(
        log_generation(&namespace, &namespace.transfer_topic()).await? >= 1,
        "whoever created the topic again first forgot settlement's positions in it"
    );
    Ok(())
}

/// Waits (at most a minute) until exactly the `accepted` transfers are settled.
async fn settle_exactly(
    namespace: &Namespace,
    accepted: &[Uuid],
    what: &str,
) -> anyhow::Result<()> {
    let settled = namespace
        .wait_settled(accepted.len() as i64, Duration::from_secs(60))
        .await?;
    assert_eq!(settled, accepted.len() as i64, "{what}");
    let settled_ids: HashSet<Uuid> = namespace.settled_ids().await?.into_iter().collect();
    assert_eq!(settled_ids, accepted.iter().copied().collect(), "{what}");
    Ok(())
}

/// How many times settlement's positions in `topic` were forgotten because the topic was
/// created again.
async fn log_generation(namespace: &Namespace, topic: &str) -> anyhow::Result<i64> {
    let ledger = namespace.ledger().await?;
    let generation: Option<i64> =
        sqlx::query_scalar("SELECT max(log_generation) FROM settlement_positions WHERE topic = $1")
            .bind(topic)
            .fetch_one(&ledger)
            .await?;
    Ok(generation.unwrap_or(0))
}

/// The topic is deleted and created again while no worker runs: the worker that comes next
/// must settle the new log from its start, not from the old log's position. The new log is
/// made longer than the old position, so its end alone does not give it away.
#[tokio::test]
async fn a_topic_created_again_while_no_worker_runs_is_settled_from_its_start() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let broker = Broker::start_with(BrokerStorage::Sqlite).await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.run_worker = false;
    let host = Host::start_with(&namespace, options.clone()).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "100.00").await?;
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(accepted_id(&host.transfer(transfer(1, 2, "1.00")).await?)?);
    }
    let mut worker = WorkerProcess::start(&namespace, &options, "worker-old-log")?;
    assert_eq!(
        namespace.wait_settled(3, Duration::from_secs(30)).await?,
        3,
        "settled in the first log"
    );
    let topic = namespace.transfer_topic();
    assert_eq!(positions_total(&namespace, &topic).await?, 3);
    worker.kill();

    delete_topics(&broker.brokers(), &[&topic]).await?;
    // Every partition of the new log gets more messages than the old position: serve's
    // first publishes find the topic missing and create it again. They go at once, so some
    // are queued on partitions of the old topic when librdkafka drops them: each is sent
    // again, and none may answer 503.
    let concurrent = (0..8).map(|_| host.transfer(transfer(1, 2, "1.00")));
    for reply in futures::future::join_all(concurrent).await {
        accepted.push(accepted_id(&reply?)?);
    }
    assert_eq!(log_generation(&namespace, &topic).await?, 1);
    let _worker = WorkerProcess::start(&namespace, &options, "worker-new-log")?;
    settle_exactly(&namespace, &accepted, "every accepted transfer settles").await?;
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(10_000 - 100 * accepted.len() as i64),
        "each settled once"
    );
    Ok(())
}

/// Random transfers among `users` from `clients` clients until `running` turns false; the
/// accepted ids.
async fn load(
    host: Arc<Host>,
    users: i64,
    clients: u64,
    running: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Uuid>> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (host, running) = (Arc::clone(&host), Arc::clone(&running));
        tasks.push(tokio::spawn(async move {
            let mut random = Random::new(client + 101);
            let mut accepted = Vec::new();
            while running.load(Ordering::Relaxed) {
                let sender = random.between(1, users);
                let receiver = (sender + random.between(1, users - 1) - 1) % users + 1;
                let minor = random.between(1, 500);
                let amount = format!("{}.{:02}", minor / 100, minor % 100);
                let reply = host.transfer(transfer(sender, receiver, &amount)).await?;
                match reply.status {
                    200 => accepted.push(accepted_id(&reply)?),
                    400 => {}
                    other => anyhow::bail!("unexpected {other}: {}", reply.body),
                }
            }
            Ok::<_, anyhow::Error>(accepted)
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await??);
    }
    Ok(accepted)
}

#[tokio::test]
async fn the_settling_worker_killed_mid_load_is_replaced_within_seconds() -> anyhow::Result<()> {
    const BOUND: Duration = Duration::from_secs(30);
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Arc::new(Host::start_with(&namespace, options).await?);
    let users = 30;
    for user in 1..=users {
        host.deposit(user, "USD", "100.00").await?;
    }
    let worker_options = HostOptions::new(&namespace);
    let mut first = WorkerProcess::start(&namespace, &worker_options, "worker-a")?;
    // The first takes the settlement lock; the second stands by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _second = WorkerProcess::start(&namespace, &worker_options, "worker-b")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn(load(Arc::clone(&host), users, 16, Arc::clone(&running)));
    // The settling worker dies mid-load and a third starts at once: the standby takes over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.kill();
    let _third = WorkerProcess::start(&namespace, &worker_options, "worker-c")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    running.store(false, Ordering::Relaxed);
    let accepted = load.await??;
    let load_ended = Instant::now();
    assert!(accepted.len() > 300, "the load ran ({})", accepted.len());
    let settled = namespace.wait_settled(accepted.len() as i64, BOUND).await?;
    eprintln!(
        "{} accepted, {settled} settled {:?} after the load ended",
        accepted.len(),
        load_ended.elapsed()
    );
    assert_eq!(
        settled,
        accepted.len() as i64,
        "every accepted transfer settles within {BOUND:?} of the load's end"
    );
    let check = namespace.check_ledger().await?;
    assert!(check.nonzero_currency_sums.is_empty(), "{check:?}");
    assert_eq!(check.negative_accounts, 0, "{check:?}");
    Ok(())
}
