//! The hold reconciler: stale holds whose transfer settled, or that the log proves was never
//! written, are released; young holds, and old ones settlement has not yet caught up with, stay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde_json::{Value, json};
use transferd_e2e::{Host, HostOptions, Namespace, run_to_end};
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

/// Puts a hold (and its pending record) in the cache the way the host does.
async fn hold(
    namespace: &Namespace,
    user_id: i64,
    id: &Uuid,
    amount_minor: i64,
) -> anyhow::Result<()> {
    let mut redis = namespace.redis().await?;
    let holds = namespace.redis_key(&format!("holds:{user_id}:USD"));
    let _: () = redis.hset(&holds, id.to_string(), amount_minor).await?;
    let _: () = redis.hincr(&holds, "total", amount_minor).await?;
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
    hold(&namespace, 1, &settled_id, 100).await?;
    hold(&namespace, 1, &never_written, 700).await?;
    tokio::time::sleep(MIN_AGE).await;
    let young = Uuid::now_v7();
    hold(&namespace, 1, &young, 300).await?;
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
    hold(&namespace, 1, &never_written, 700).await?;
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
