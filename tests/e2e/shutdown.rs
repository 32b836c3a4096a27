//! Shutdown is bounded: after SIGTERM the process exits within its drain time, even while the
//! settlement worker retries against a dependency that is down or a request waits for a
//! broker that is not there, and it says why it exits.

use std::time::{Duration, Instant};

use serde_json::json;
use transferd_e2e::{Host, HostOptions, Namespace, WorkerProcess, free_port};

const DRAIN_MS: u64 = 3_000;

/// Drain time plus what a process needs to start exiting and the test to notice.
const EXIT_BOUND: Duration = Duration::from_millis(DRAIN_MS + 2_000);

fn with_drain(mut options: HostOptions) -> HostOptions {
    options
        .extra_env
        .push(("TRANSFERD_DRAIN_TIMEOUT_MS".into(), DRAIN_MS.to_string()));
    options
        .extra_env
        .push(("TRANSFERD_LOG".into(), "info".into()));
    options
}

/// Marks the namespace's Redis holds trusted, as a replica that could read the transfer log
/// does on a fresh Redis: a host that cannot reach the broker cannot establish that itself,
/// and without it refuses transfers before they reach the publish these tests wait in.
async fn trust_holds(namespace: &Namespace) -> anyhow::Result<()> {
    let mut redis = namespace.redis().await?;
    redis::cmd("SET")
        .arg(namespace.redis_key("holds_trusted"))
        .arg(1)
        .query_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// Waits until `log()` contains `needle`.
async fn until_logged(
    log: impl Fn() -> String,
    needle: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !log().contains(needle) {
        anyhow::ensure!(Instant::now() < deadline, "never logged {needle:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_within_the_drain_time_while_the_worker_retries() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    // A transfer accepted (with its hold) and not settled: no worker runs yet.
    let mut api = HostOptions::new(&namespace);
    api.run_worker = false;
    let mut accepting = Host::start_with(&namespace, api).await?;
    accepting.deposit(1, "USD", "10.00").await?;
    accepting.deposit(2, "USD", "10.00").await?;
    let reply = accepting
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"}))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    accepting.terminate(EXIT_BOUND).await?;

    // Redis is unreachable for the serve that settles it: settling fails at the cache update,
    // so its worker retries the batch's effects until it is stopped.
    let mut options = with_drain(HostOptions::new(&namespace));
    options.redis_url = format!("redis://127.0.0.1:{}", free_port());
    let mut host = Host::start_with(&namespace, options).await?;
    until_logged(
        || host.log(),
        "running a batch's effects failed; retrying",
        Duration::from_secs(30),
    )
    .await?;

    let asked = Instant::now();
    let status = host.terminate(EXIT_BOUND).await?;
    let took = asked.elapsed();
    eprintln!("exited {took:?} after SIGTERM: {status:?}");
    let status =
        status.ok_or_else(|| anyhow::anyhow!("still running {EXIT_BOUND:?} after SIGTERM"))?;
    assert!(
        status.success(),
        "a requested stop is a clean exit: {status}"
    );
    let log = host.log();
    assert!(log.contains("SIGTERM"), "the log says why it stopped");
    assert!(log.contains("transferd exits"), "the log says it exits");
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_within_the_drain_time_while_a_request_waits_for_the_broker()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = with_drain(HostOptions::new(&namespace));
    options.kafka_brokers = format!("127.0.0.1:{}", free_port());
    trust_holds(&namespace).await?;
    options.kafka_timeout_ms = 5_000;
    let mut host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "10.00").await?;
    let url = format!("{}/transfers", host.base_url);
    let client = host.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/json")
            .bearer_auth(transferd_e2e::auth::user_token(1))
            .body(r#"{"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"}"#)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    let status = host.terminate(EXIT_BOUND).await?;
    eprintln!("exited {:?} after SIGTERM: {status:?}", asked.elapsed());
    assert!(
        status.is_some(),
        "still running {EXIT_BOUND:?} after SIGTERM with a request waiting for the broker"
    );
    let _ = in_flight.await;
    Ok(())
}

#[tokio::test]
async fn a_worker_process_stops_within_the_drain_time_while_retrying() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut api = HostOptions::new(&namespace);
    api.run_worker = false;
    let host = Host::start_with(&namespace, api).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "10.00").await?;
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"}))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let mut options = with_drain(HostOptions::new(&namespace));
    options.redis_url = format!("redis://127.0.0.1:{}", free_port());
    let mut worker = WorkerProcess::start(&namespace, &options, "worker")?;
    let log_path = worker.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    until_logged(
        &log,
        "running a batch's effects failed; retrying",
        Duration::from_secs(30),
    )
    .await?;
    let status = worker.terminate(EXIT_BOUND).await?;
    let status =
        status.ok_or_else(|| anyhow::anyhow!("still running {EXIT_BOUND:?} after SIGTERM"))?;
    assert!(status.success(), "{status}");
    assert!(log().contains("stopping the settlement worker"));
    assert_eq!(
        namespace.wait_settled(1, Duration::from_millis(1)).await?,
        1,
        "the ledger step had committed; the batch is simply not acknowledged"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_waits_for_a_decision_whose_client_left() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = with_drain(HostOptions::new(&namespace));
    // No broker: the publish waits out the Kafka timeout and ends in doubt.
    options.kafka_brokers = format!("127.0.0.1:{}", free_port());
    trust_holds(&namespace).await?;
    options.kafka_timeout_ms = 1_500;
    let mut host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "10.00").await?;
    let url = format!("{}/transfers", host.base_url);
    let client = host.client.clone();
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        client
            .post(url)
            .header("content-type", "application/json")
            .bearer_auth(transferd_e2e::auth::user_token(1))
            .body(r#"{"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"}"#)
            .send(),
    )
    .await;
    assert!(gone.is_err(), "the client leaves before the answer");

    let status = host.terminate(EXIT_BOUND).await?;
    assert!(
        status.is_some(),
        "still running {EXIT_BOUND:?} after SIGTERM"
    );
    let log = host.log();
    let decided = log
        .find("publish in doubt")
        .ok_or_else(|| anyhow::anyhow!("the abandoned decision never finished:\n{log}"))?;
    let exited = log.find("transferd exits").unwrap_or(usize::MAX);
    assert!(
        decided < exited,
        "the decision ended before the process did"
    );
    Ok(())
}
