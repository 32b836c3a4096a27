//! How transfers behave as each dependency answers, goes away and comes back: Redis serves
//! balances when it has them, PostgreSQL when it does not, Kafka must acknowledge, and a
//! failing guest fails only its own request.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use transferd_e2e::proxy::Proxy;
use transferd_e2e::{
    Broker, Host, HostOptions, KAFKA_BROKERS, Namespace, consume, panicking_guest_file,
};
use uuid::Uuid;

fn transfer(sender_id: i64, receiver_id: i64, amount: &str) -> serde_json::Value {
    json!({"sender_id": sender_id, "receiver_id": receiver_id, "amount": amount, "currency": "USD"})
}

#[tokio::test]
async fn balances_are_served_from_redis_when_cached() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false; // holds stay until settlement; this test reads them
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "1.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let mut redis = namespace.redis().await?;
    assert_eq!(
        redis
            .get::<_, Option<i64>>(namespace.redis_key("balance:1:USD"))
            .await?,
        Some(100),
        "deposits fill the cache"
    );

    // The cache says 1000.00 while the ledger says 1.00: an accepted 500.00 proves Redis decided.
    let () = redis
        .set(namespace.redis_key("balance:1:USD"), 100_000)
        .await?;
    let () = redis
        .set(namespace.redis_key("balance_version:1:USD"), 1_000)
        .await?;
    let reply = host.transfer(transfer(1, 2, "500.00")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let held: i64 = redis
        .hget(namespace.redis_key("holds:1:USD"), "total")
        .await?;
    assert_eq!(held, 50_000, "the transfer holds its amount");
    Ok(())
}

#[tokio::test]
async fn a_missing_cache_key_falls_back_to_postgres_and_is_refilled() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "20.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let mut redis = namespace.redis().await?;
    let () = redis.del(namespace.redis_key("balance:1:USD")).await?;

    let too_much = host.transfer(transfer(1, 2, "20.01")).await?;
    assert_eq!(
        too_much.status, 400,
        "the ledger's 20.00 decides: {}",
        too_much.body
    );
    let reply = host.transfer(transfer(1, 2, "10.00")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        redis
            .get::<_, Option<i64>>(namespace.redis_key("balance:1:USD"))
            .await?,
        Some(2_000),
        "refilled from the ledger"
    );
    Ok(())
}

/// Without Redis no hold can be taken, and a 200 without a hold could promise money another
/// transfer spends as well: transfers are refused (503, nothing published) while balances are
/// still read from the ledger; once Redis is back, transfers hold and are accepted again.
#[tokio::test]
async fn redis_down_refuses_transfers_and_recovers() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis_proxy = Proxy::start(6379).await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = format!("redis://127.0.0.1:{}", redis_proxy.port);
    options.run_worker = false; // holds stay until settlement; this test reads them
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "30.00").await?;
    host.deposit(2, "USD", "1.00").await?;

    redis_proxy.cut().await;
    let refused = host.transfer(transfer(1, 2, "30.01")).await?;
    assert_eq!(
        refused.status, 400,
        "the ledger still answers the balance: {}",
        refused.body
    );
    let unheld = host.transfer(transfer(1, 2, "5.00")).await?;
    assert_eq!(unheld.status, 503, "no hold, not accepted: {}", unheld.body);
    let balances = host.get_json("/accounts/1/balances").await?;
    assert_eq!(
        balances["balances"][0]["balance_minor"], 3_000,
        "reads are served: {balances}"
    );

    redis_proxy.restore().await?;
    let mut accepted = None;
    for _ in 0..50 {
        let reply = host.transfer(transfer(1, 2, "1.00")).await?;
        if reply.status == 200 {
            accepted = Some(reply.body);
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = accepted.expect("transfers are accepted again once Redis is back");
    let mut redis = namespace.redis().await?;
    let held: i64 = redis
        .hget(namespace.redis_key("holds:1:USD"), "total")
        .await?;
    assert_eq!(held, 100, "the accepted transfer holds its amount");
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(
        messages.len(),
        1,
        "only the accepted transfer was published ({accepted})"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_down_is_503_when_the_ledger_is_needed_and_recovers() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut postgres_proxy = Proxy::start(5432).await?;
    let mut options = HostOptions::new(&namespace);
    options.database_url = namespace.database_url_via(postgres_proxy.port);
    options
        .extra_env
        .push(("TRANSFERD_DATABASE_TIMEOUT_MS".into(), "1000".into()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "30.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let mut redis = namespace.redis().await?;
    let () = redis.del(namespace.redis_key("balance:1:USD")).await?;

    postgres_proxy.cut().await;
    let reply = host.transfer(transfer(1, 2, "5.00")).await?;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("not accepted")),
        "{}",
        reply.body
    );
    let deposit = host
        .client
        .post(format!("{}/admin/deposits", host.base_url))
        .bearer_auth(transferd_e2e::ADMIN_TOKEN)
        .json(&json!({"user_id": 1, "currency": "USD", "amount": "1"}))
        .send()
        .await?;
    assert_eq!(deposit.status(), 503);

    postgres_proxy.restore().await?;
    let mut status = 0;
    for _ in 0..50 {
        status = host.transfer(transfer(1, 2, "5.00")).await?.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "transfers resume once PostgreSQL is back");
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(3_000),
        "the refused deposit changed nothing"
    );
    Ok(())
}

#[tokio::test]
async fn kafka_down_is_an_unknown_outcome_keeps_the_hold_and_recovers() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut broker = Broker::start().await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.kafka_timeout_ms = 2_000;
    options.run_worker = false; // holds stay until settlement; this test reads them
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "50.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    broker.create_topic(&namespace.transfer_topic(), 3).await?;
    let first = host.transfer(transfer(1, 2, "10.00")).await?;
    assert_eq!(first.status, 200, "{}", first.body);

    broker.cut().await;
    let started = std::time::Instant::now();
    let reply = host.transfer(transfer(1, 2, "10.00")).await?;
    // A timeout cannot tell whether the broker wrote the message: the outcome is unknown,
    // the answer names the transfer to ask about, and its hold stays.
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["status"], "unknown", "{}", reply.body);
    let in_doubt = reply.body["transaction_id"].as_str().unwrap_or_default();
    assert!(
        reply.body["detail"].as_str().is_some_and(|detail| detail
            .starts_with("the transfer's outcome is unknown")
            && detail.ends_with(&format!("GET /transfers/{in_doubt} tells"))),
        "{}",
        reply.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the configured timeout bounds the wait"
    );
    let mut redis = namespace.redis().await?;
    let held: i64 = redis
        .hget(namespace.redis_key("holds:1:USD"), "total")
        .await?;
    assert_eq!(held, 2_000, "the transfer in doubt keeps its hold");
    let shown = host
        .client
        .get(format!("{}/transfers/{in_doubt}", host.base_url))
        .bearer_auth(transferd_e2e::auth::user_token(1))
        .send()
        .await?;
    assert_eq!(shown.status(), 200);
    let shown: serde_json::Value = shown.json().await?;
    assert_eq!(shown["status"], "pending", "{shown}");

    broker.restore().await?;
    let mut status = 0;
    // Retries while the producer reconnects may themselves end in doubt, each keeping its hold.
    let mut unknown_retries = 0;
    for _ in 0..30 {
        let reply = host.transfer(transfer(1, 2, "1.00")).await?;
        status = reply.status;
        if status == 200 {
            break;
        }
        if reply.body["status"] == "unknown" {
            unknown_retries += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status, 200, "transfers resume once the broker is back");
    let messages = consume(
        &broker.brokers(),
        &namespace.transfer_topic(),
        3,
        Duration::from_secs(10),
    )
    .await?;
    let amounts: Vec<i64> = messages
        .iter()
        .filter_map(|m| m.json["amount_minor"].as_i64())
        .collect();
    assert_eq!(
        amounts,
        vec![1_000, 100],
        "the broker was cut before the message left: it is not in the log"
    );
    let held: i64 = redis
        .hget(namespace.redis_key("holds:1:USD"), "total")
        .await?;
    assert_eq!(
        held,
        2_100 + 100 * unknown_retries,
        "the holds in doubt stay until the log or the ledger settles them"
    );
    Ok(())
}

#[tokio::test]
async fn a_trapping_guest_fails_only_its_own_request() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.guest_file = panicking_guest_file();
    let mut host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "50.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    for _ in 0..3 {
        let reply = host.transfer(transfer(1, 2, "1.00")).await?;
        assert_eq!(reply.status, 500, "{}", reply.body);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("transfer logic failed")),
            "{}",
            reply.body
        );
    }
    assert!(host.is_running(), "the host survives its guest's traps");
    host.deposit(1, "USD", "1.00").await?;
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        1,
        Duration::from_secs(3),
    )
    .await?;
    assert!(messages.is_empty(), "a trapped request publishes nothing");
    Ok(())
}

/// `GET /readyz`, polled until its readiness is `ready` (up to 15 s); the last answer.
async fn readiness_becomes(host: &Host, ready: bool) -> anyhow::Result<serde_json::Value> {
    readiness_until(host, |body| body["ready"] == ready).await
}

/// `GET /readyz`, polled until `wanted` holds of its body (up to 15 s); the last answer. Every
/// answer is 200 exactly when it says ready.
async fn readiness_until(
    host: &Host,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let response = host
            .client
            .get(format!("{}/readyz", host.base_url))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        assert_eq!(status == 200, body["ready"] == true, "{status} {body}");
        if wanted(&body) || std::time::Instant::now() > deadline {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `/readyz` answers with one dependency down: PostgreSQL takes the replica out
/// (nothing is read, deposited or settled without the ledger); Redis or the broker leave it
/// ready but `degraded` (reads served, transfers refused with 503), as every replica sharing
/// them would be, so one outage does not empty the load balancer.
fn expected_readiness(dependency: &str) -> (bool, &'static str) {
    match dependency {
        "postgres" => (false, "unready"),
        _ => (true, "degraded"),
    }
}

#[tokio::test]
async fn readyz_names_the_dependency_that_is_down_and_recovers() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis_proxy = Proxy::start(6379).await?;
    let mut postgres_proxy = Proxy::start(5432).await?;
    let mut broker = Broker::start().await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = format!("redis://127.0.0.1:{}", redis_proxy.port);
    options.database_url = namespace.database_url_via(postgres_proxy.port);
    options.kafka_brokers = broker.brokers();
    let host = Host::start_with(&namespace, options).await?;

    let ready = readiness_until(&host, |body| body["status"] == "ok").await?;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["status"], "ok", "{ready}");
    assert!(
        ready["checks"]["guest"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("serving "))
    );

    for dependency in ["redis", "postgres", "broker"] {
        match dependency {
            "redis" => redis_proxy.cut().await,
            "postgres" => postgres_proxy.cut().await,
            _ => broker.cut().await,
        }
        let down =
            readiness_until(&host, |body| body["checks"][dependency]["ready"] == false).await?;
        let (ready, status) = expected_readiness(dependency);
        assert_eq!(down["ready"], ready, "{dependency} cut: {down}");
        assert_eq!(down["status"], status, "{dependency} cut: {down}");
        assert_eq!(down["checks"][dependency]["ready"], false, "{down}");
        if ready {
            let degraded = host.metric("transferd_ready_degraded", &[]).await?;
            assert_eq!(degraded, 1.0, "{dependency} cut: the gauge says degraded");
        }
        for other in ["redis", "postgres", "broker", "guest"] {
            if other != dependency {
                assert_eq!(
                    down["checks"][other]["ready"], true,
                    "{dependency} cut: {down}"
                );
            }
        }
        // /healthz is liveness only: still 200.
        let health = host
            .client
            .get(format!("{}/healthz", host.base_url))
            .send()
            .await?;
        assert_eq!(health.status(), 200);
        match dependency {
            "redis" => redis_proxy.restore().await?,
            "postgres" => postgres_proxy.restore().await?,
            _ => broker.restore().await?,
        }
        let back = readiness_until(&host, |body| body["status"] == "ok").await?;
        assert_eq!(back["status"], "ok", "{dependency} restored: {back}");
    }
    Ok(())
}

/// How long one probe run answers every caller (`health::PROBE_REUSE` in the host).
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// `/readyz` is no load generator: callers at once share one probe run, whose answers serve
/// every caller for a second; readiness still turns within about that when a dependency goes.
#[tokio::test]
async fn readiness_callers_share_one_probe_run_and_still_see_an_outage_at_once()
-> anyhow::Result<()> {
    const CALLERS: usize = 100;
    let namespace = Namespace::new().await?;
    let mut redis_proxy = Proxy::start(6379).await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = format!("redis://127.0.0.1:{}", redis_proxy.port);
    let host = Host::start_with(&namespace, options).await?;
    readiness_becomes(&host, true).await?;
    let runs = "transferd_dependency_probe_runs_total";

    // Past the last run's reuse, so the callers need a run of their own.
    tokio::time::sleep(PROBE_REUSE + Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let before = host.metric(runs, &[]).await?;
    let url = format!("{}/readyz", host.base_url);
    let answers =
        futures::future::join_all((0..CALLERS).map(|_| host.client.get(&url).send())).await;
    for answer in answers {
        assert_eq!(answer?.status(), 200);
    }
    let after = host.metric(runs, &[]).await?;
    let elapsed = started.elapsed();
    assert!(after >= 1.0, "probe runs are counted: {after}");
    // One run at a time, none started within PROBE_REUSE of the last one's end: the run in
    // progress when the window began, and one per PROBE_REUSE after it.
    let most = 2.0 + (elapsed.as_secs_f64() / PROBE_REUSE.as_secs_f64()).floor();
    assert!(
        after - before <= most,
        "{CALLERS} callers in {elapsed:?} caused {} probe runs (at most {most})",
        after - before
    );

    // Down: seen within a reuse and a probe's timeout, not a reuse later; Redis down leaves
    // the replica ready, degraded.
    redis_proxy.cut().await;
    let cut = std::time::Instant::now();
    let down = readiness_until(&host, |body| body["checks"]["redis"]["ready"] == false).await?;
    let noticed = cut.elapsed();
    assert_eq!(down["checks"]["redis"]["ready"], false, "{down}");
    assert_eq!(down["status"], "degraded", "{down}");
    assert!(
        noticed < PROBE_REUSE + Duration::from_secs(2),
        "the outage showed after {noticed:?}"
    );
    redis_proxy.restore().await?;
    let back = readiness_until(&host, |body| body["status"] == "ok").await?;
    assert_eq!(back["status"], "ok", "{back}");
    Ok(())
}

/// Reads answer for the database, not for one pooled connection: connections the database
/// dropped moments after their last use (too recently to be pinged before the next) are
/// discarded and the read asks again, so a database that is up answers `GET /transfers/{id}`
/// and reads as ready.
#[tokio::test]
async fn reads_are_not_fooled_by_connections_the_database_just_dropped() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Host::start_with(&namespace, options).await?;
    let admin = sqlx::PgPool::connect(transferd_e2e::POSTGRES_ADMIN_URL).await?;
    for round in 0..5 {
        // Several probes at once leave several recently used connections in the pool.
        let probes = futures::future::join_all(
            (0..4).map(|_| host.client.get(format!("{}/readyz", host.base_url)).send()),
        )
        .await;
        for probe in probes {
            assert_eq!(probe?.status(), 200, "round {round}: before the drop");
        }
        // Two statements: in one, PostgreSQL may call pg_terminate_backend before it filters.
        let dropped: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&namespace.database)
                .fetch_all(&admin)
                .await?;
        assert!(
            !dropped.is_empty(),
            "round {round}: transferd held connections"
        );
        sqlx::query("SELECT pg_terminate_backend(pid) FROM UNNEST($1::int[]) AS pid")
            .bind(&dropped)
            .execute(&admin)
            .await?;
        wait_until_gone(&admin, &dropped).await?;

        // Three ledger reads, each on a connection that may be one of the dropped ones: an
        // id nobody accepted is 404, never 503.
        let unknown = host
            .client
            .get(format!("{}/transfers/{}", host.base_url, Uuid::new_v4()))
            .bearer_auth(transferd_e2e::auth::user_token(1))
            .send()
            .await?;
        assert_eq!(
            unknown.status(),
            404,
            "round {round}: {}",
            unknown.text().await?
        );
        let ready = host
            .client
            .get(format!("{}/readyz", host.base_url))
            .send()
            .await?;
        let status = ready.status();
        let body: serde_json::Value = ready.json().await?;
        assert_eq!(status, 200, "round {round}: {body}");
        assert_eq!(body["checks"]["postgres"]["ready"], true, "{body}");
    }
    Ok(())
}

/// Waits (up to 5 s) until the server processes `pids` have exited.
async fn wait_until_gone(admin: &sqlx::PgPool, pids: &[i32]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let backends: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(pids)
                .fetch_one(admin)
                .await?;
        if backends == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{backends} connections outlived pg_terminate_backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connections the pool kept while the database dropped them (a restart, a failover, an
/// administrator's `pg_terminate_backend`) are found dead before they are used: a connection
/// idle for more than a second is pinged first and replaced, so the next request is served.
#[tokio::test]
async fn pooled_connections_the_database_dropped_are_replaced_before_use() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    // With a key, a transfer's first statement is PostgreSQL's (the key's claim).
    let first = host
        .post_with_key("/transfers", &transfer(1, 2, "1.00"), "before-drop")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);

    // Dropped at a moment when every connection of the pool has been idle for over a second
    // (transferd's own gauges use one every 5 s): checked and done in one statement.
    let admin = sqlx::PgPool::connect(transferd_e2e::POSTGRES_ADMIN_URL).await?;
    let mut dropped = 0;
    for _ in 0..100 {
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1
               AND (SELECT bool_and(state = 'idle' AND now() - state_change > interval '1200 ms')
                    FROM pg_stat_activity WHERE datname = $1)",
        )
        .bind(&namespace.database)
        .fetch_all(&admin)
        .await?;
        dropped = terminated.iter().filter(|done| **done).count();
        if dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0, "transferd's pooled connections were dropped");

    let after = host
        .post_with_key("/transfers", &transfer(1, 2, "1.00"), "after-drop")
        .await?;
    assert_eq!(after.status, 200, "{}", after.body);
    Ok(())
}
