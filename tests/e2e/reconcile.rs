//! The hold reconciler: stale holds whose transfer settled, or that the log proves was never
//! written, are released; young holds, and old ones settlement has not yet caught up with, stay.
//! A hold is as old as the time it was taken, not its transaction id: a retry's fresh hold
//! under its first attempt's old id stays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redis::AsyncCommands;
use serde_json::{Value, json};
use transferd_e2e::proxy::Proxy;
use transferd_e2e::{
    Host, HostOptions, Namespace, crash_binary, killed_by_sigkill, log_tail, run_to_end,
};
use uuid::{NoContext, Timestamp, Uuid};

const PASS_LIMIT: Duration = Duration::from_secs(60);

/// Holds younger than this are not judged: long enough that a hold minted just before a pass
/// is still young when the pass (a process start away) begins.
const MIN_AGE: Duration = Duration::from_secs(10);

/// A UUIDv7 minted `seconds_ago` seconds ago: what a transfer accepted then would carry.
fn minted_ago(seconds_ago: u64) -> Uuid {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        now.as_secs() - seconds_ago,
        0,
    ))
}

/// Puts a hold taken `taken_ago` (with its time and its pending record) in the cache the way
/// the host does.
async fn hold(
    namespace: &Namespace,
    user_id: i64,
    id: &Uuid,
    amount_minor: i64,
    taken_ago: Duration,
) -> anyhow::Result<()> {
    let mut redis = namespace.redis().await?;
    let holds = namespace.redis_key(&format!("holds:{user_id}:USD"));
    let _: () = redis.hset(&holds, id.to_string(), amount_minor).await?;
    let _: () = redis.hincr(&holds, "total", amount_minor).await?;
    let taken_at = SystemTime::now().duration_since(UNIX_EPOCH)? - taken_ago;
    let times = namespace.redis_key(&format!("hold_times:{user_id}:USD"));
    let _: () = redis
        .hset(&times, id.to_string(), taken_at.as_millis() as u64)
        .await?;
    let _: () = redis
        .set(namespace.redis_key(&format!("pending:{id}")), "{}")
        .await?;
    Ok(())
}

async fn held(namespace: &Namespace, user_id: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let mut redis = namespace.redis().await?;
    let holds = namespace.redis_key(&format!("holds:{user_id}:USD"));
    let mut fields: Vec<(String, i64)> = redis.hgetall(&holds).await?;
    fields.sort();
    Ok(fields)
}

fn reconcile_options(namespace: &Namespace, wait_ms: u64) -> HostOptions {
    let mut options = HostOptions::new(namespace);
    options.kafka_timeout_ms = 500;
    options.extra_env = vec![
        (
            "TRANSFERD_RECONCILE_MIN_AGE_MS".into(),
            MIN_AGE.as_millis().to_string(),
        ),
        ("TRANSFERD_RECONCILE_WAIT_MS".into(), wait_ms.to_string()),
    ];
    options
}

async fn reconcile(namespace: &Namespace, wait_ms: u64) -> anyhow::Result<Value> {
    let out = run_to_end(
        namespace,
        &reconcile_options(namespace, wait_ms),
        "reconcile",
        PASS_LIMIT,
    )
    .await?;
    Ok(serde_json::from_str(out.trim())?)
}

#[tokio::test]
async fn stale_holds_of_settled_and_absent_transfers_are_released() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"}))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let settled_id: Uuid = reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(60)).await?, 1);
    // Its effects done for good: a retried batch would release the hold put back below.
    assert!(namespace.wait_effects_done(Duration::from_secs(60)).await?);

    // Settlement released the real hold; put back what a lost release would have left,
    // beside a hold whose transfer never reached the log and a hold accepted just now.
    let never_written = minted_ago(600);
    hold(&namespace, 1, &settled_id, 100, Duration::ZERO).await?;
    hold(&namespace, 1, &never_written, 700, Duration::from_secs(600)).await?;
    tokio::time::sleep(MIN_AGE).await;
    let young = Uuid::now_v7();
    hold(&namespace, 1, &young, 300, Duration::ZERO).await?;
    let balances = host.get_json("/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["available_minor"], 9_900 - 1_100);

    // A transfer accepted while Redis was down keeps a pending row in PostgreSQL instead.
    let ledger = namespace.ledger().await?;
    let row_never_written = minted_ago(600);
    let young_row = Uuid::now_v7();
    for (id, age_seconds) in [(row_never_written, 600.0), (young_row, 0.0)] {
        sqlx::query(
            "INSERT INTO pending_transfers (transaction_id, sender_id, currency, amount_minor, message, accepted_at)
             VALUES ($1, 1, 'USD', 500, '{}', now() - make_interval(secs => $2))",
        )
        .bind(id)
        .bind(age_seconds)
        .execute(&ledger)
        .await?;
    }

    let report = reconcile(&namespace, 30_000).await?;
    assert_eq!(report["pending_rows"], 1, "{report}");
    assert_eq!(report["pending_rows_released"], 1, "{report}");
    let rows: Vec<Uuid> = sqlx::query_scalar("SELECT transaction_id FROM pending_transfers")
        .fetch_all(&ledger)
        .await?;
    assert_eq!(rows, vec![young_row], "only the young pending row stays");
    assert_eq!(report["holds"], 3, "{report}");
    assert_eq!(report["young"], 1, "{report}");
    assert_eq!(report["released_settled"], 1, "{report}");
    assert_eq!(report["released_absent"], 1, "{report}");
    assert_eq!(report["log_consumed"], true, "{report}");

    assert_eq!(
        held(&namespace, 1).await?,
        vec![(young.to_string(), 300), ("total".to_string(), 300)]
    );
    let mut redis = namespace.redis().await?;
    let pending: Option<String> = redis
        .get(namespace.redis_key(&format!("pending:{never_written}")))
        .await?;
    assert_eq!(pending, None, "the pending record goes with the hold");
    let balances = host.get_json("/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["available_minor"], 9_900 - 300);

    // A second pass finds nothing more to do.
    let again = reconcile(&namespace, 30_000).await?;
    assert_eq!(again["released_settled"], 0, "{again}");
    assert_eq!(again["released_absent"], 0, "{again}");
    Ok(())
}

#[tokio::test]
async fn an_unsettled_log_keeps_old_holds() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    // Accepted and in the log, but no worker runs: settlement has not consumed it.
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "2.00", "currency": "USD"}))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let in_log: Uuid = reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let never_written = minted_ago(600);
    hold(&namespace, 1, &never_written, 700, Duration::from_secs(600)).await?;
    tokio::time::sleep(MIN_AGE).await;

    let report = reconcile(&namespace, 1_000).await?;
    assert_eq!(report["log_consumed"], false, "{report}");
    assert_eq!(report["released_absent"], 0, "{report}");
    assert_eq!(report["kept"], 2, "{report}");
    let fields = held(&namespace, 1).await?;
    assert!(
        fields.iter().any(|(id, _)| *id == in_log.to_string()),
        "the hold of a transfer still in the log stays: {fields:?}"
    );
    Ok(())
}

/// The race a retry runs with a reconciler pass: an `Idempotency-Key`'s retry runs under its
/// first attempt's transaction id, whose UUIDv7 is already past the minimum age, and takes a
/// fresh hold. The crash point `after-hold` stops it between that hold and its produce, the
/// window in which a pass used to find the hold "old", the log consumed and the ledger without
/// the transfer, and release it while its message could still be written. Judged by when it
/// was taken, the hold is young and stays.
#[tokio::test]
async fn a_retry_s_fresh_hold_under_an_old_transaction_id_survives_a_pass() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis_proxy = Proxy::start(6379).await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = format!("redis://127.0.0.1:{}", redis_proxy.port);
    let mut first = Host::start_with(&namespace, options).await?;
    first.deposit(1, "USD", "100.00").await?;
    first.deposit(2, "USD", "1.00").await?;
    let body = json!({"sender_id": 1, "receiver_id": 2, "amount": "3.00", "currency": "USD"});
    let key = "retry-after-a-pause";

    // The first attempt cannot hold (Redis cut): 503, the key left to a retry with its id.
    redis_proxy.cut().await;
    let refused = first.post_with_key("/transfers", &body, key).await?;
    assert_eq!(refused.status, 503, "{}", refused.body);
    first.terminate(Duration::from_secs(10)).await?;
    let ledger = namespace.ledger().await?;
    let id: Uuid = sqlx::query_scalar(
        "SELECT transaction_id FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(&ledger)
    .await?;
    // The id is now older than the reconciler's minimum age.
    tokio::time::sleep(MIN_AGE + Duration::from_secs(1)).await;

    // The retry holds under that id, and dies before it produces.
    let mut armed = HostOptions::new(&namespace);
    armed.binary = crash_binary();
    armed.run_worker = false;
    armed
        .extra_env
        .push(("TRANSFERD_CRASH_AT".into(), "after-hold".into()));
    let mut retry = Host::start_with(&namespace, armed).await?;
    let unanswered = retry.post_with_key("/transfers", &body, key).await;
    assert!(unanswered.is_err(), "the retry died: {unanswered:?}");
    let status = retry
        .wait_exit(Duration::from_secs(10))
        .await
        .context("the retry's host did not die")?;
    let log = std::fs::read_to_string(&retry.log_path).unwrap_or_default();
    anyhow::ensure!(
        killed_by_sigkill(&status) && log.contains("crash point after-hold"),
        "not the crash point: {status}; log:\n{}",
        log_tail(&retry.log_path, 30)
    );
    assert_eq!(
        held(&namespace, 1).await?,
        vec![(id.to_string(), 300), ("total".to_string(), 300)],
        "the retry holds under its first attempt's id"
    );

    let report = reconcile(&namespace, 30_000).await?;
    assert_eq!(report["log_consumed"], true, "{report}");
    assert_eq!(report["young"], 1, "{report}");
    assert_eq!(report["released_absent"], 0, "{report}");
    assert_eq!(
        held(&namespace, 1).await?,
        vec![(id.to_string(), 300), ("total".to_string(), 300)],
        "a hold taken moments ago stays, whatever its id's age"
    );
    Ok(())
}
