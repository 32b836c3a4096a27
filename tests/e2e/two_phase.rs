//! Two-phase transfers end to end: a pending transfer reserves money in the ledger, is posted
//! (in part), voided or left to expire, each through the log and settled once; conflicts are
//! 409s that change nothing; only the sender or an admin may act; events report each change;
//! metadata is stored, returned and filters the list.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::auth::{admin_token, user_token};
use transferd_e2e::consume_transfer_events;
use transferd_e2e::{Host, HostOptions, KAFKA_BROKERS, Namespace};

const LIMIT: Duration = Duration::from_secs(30);

async fn start() -> anyhow::Result<(Namespace, Host)> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    // The expiry pass runs with the reconciler: often, so an expiry shows within a second.
    options
        .extra_env
        .push(("TRANSFERD_RECONCILE_INTERVAL_MS".into(), "200".into()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    Ok((namespace, host))
}

/// A pending transfer from 1 to 2, accepted; its id.
async fn reserve(host: &Host, amount: &str, extra: Value) -> anyhow::Result<String> {
    let mut body = json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD", "phase": "pending"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let reply = host.transfer(body).await?;
    anyhow::ensure!(reply.status == 200, "{}", reply.body);
    Ok(reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `GET /transfers/{id}` as the sender, once `status` is `wanted` and it is in the ledger.
async fn wait_status(host: &Host, id: &str, wanted: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let reply = host
            .get_as(&format!("/transfers/{id}"), &user_token(1))
            .await?;
        if reply.body["status"] == wanted && !reply.body["settled_at"].is_null() {
            return Ok(reply.body);
        }
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "{id} never {wanted}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// User `user`'s USD account: (balance, available, pending debits, pending credits) in minor units.
async fn usd(host: &Host, user: i64) -> anyhow::Result<(i64, i64, i64, i64)> {
    let reply = host
        .get_as(&format!("/accounts/{user}/balances"), &user_token(user))
        .await?;
    let account = &reply.body["balances"][0];
    let minor = |name: &str| account[name].as_i64().unwrap_or(i64::MIN);
    Ok((
        minor("balance_minor"),
        minor("available_minor"),
        minor("pending_debits_minor"),
        minor("pending_credits_minor"),
    ))
}

async fn act(
    host: &Host,
    id: &str,
    verb: &str,
    body: Value,
    token: &str,
) -> anyhow::Result<(u16, Value)> {
    let reply = host
        .post_as(&format!("/transfers/{id}/{verb}"), &body, token)
        .await?;
    Ok((reply.status, reply.body))
}

#[tokio::test]
async fn a_pending_transfer_reserves_then_posts_in_part_once() -> anyhow::Result<()> {
    let (namespace, host) = start().await?;
    let id = reserve(&host, "30.00", json!({"metadata": {"order_id": "A-1"}})).await?;
    let shown = wait_status(&host, &id, "pending").await?;
    assert_eq!(shown["phase"], "pending");
    assert_eq!(shown["metadata"], json!({"order_id": "A-1"}));
    assert!(shown["expires_at"].is_string(), "{shown}");
    // Reserved, not moved: the sender's available balance counts it, neither balance moves.
    assert_eq!(usd(&host, 1).await?, (10_000, 7_000, 3_000, 0));
    assert_eq!(usd(&host, 2).await?, (100, 100, 0, 3_000));
    // A deposit meanwhile adds to the balance; the reservation still counts against it.
    host.deposit(1, "USD", "5.00").await?;
    assert_eq!(usd(&host, 1).await?, (10_500, 7_500, 3_000, 0));
    let over = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "75.01", "currency": "USD"}))
        .await?;
    assert_eq!(
        over.status, 400,
        "the reservation is not spendable: {}",
        over.body
    );
    // Only the sender or an admin acts; a stranger hears it does not exist.
    assert_eq!(
        act(&host, &id, "post", json!({}), &user_token(2)).await?.0,
        403
    );
    assert_eq!(
        act(&host, &id, "void", json!({}), &user_token(3)).await?.0,
        404
    );
    let (status, body) = act(
        &host,
        &id,
        "post",
        json!({"amount": "30.01"}),
        &user_token(1),
    )
    .await?;
    assert_eq!(
        (status, &body["detail"][0]["type"]),
        (422, &json!("less_than_equal")),
        "{body}"
    );
    let (status, body) = act(
        &host,
        &id,
        "post",
        json!({"amount": "20.00", "x": 1}),
        &user_token(1),
    )
    .await?;
    assert_eq!(status, 422, "unknown fields are refused: {body}");
    let (status, body) = act(
        &host,
        &id,
        "post",
        json!({"amount": "20.00"}),
        &user_token(1),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["transaction_id"], id.as_str());
    // Once posted, nothing else may be done to it, and trying changes nothing.
    for verb in ["post", "void"] {
        let (status, body) = act(&host, &id, verb, json!({}), &admin_token()).await?;
        assert_eq!(status, 409, "{verb}: {body}");
    }
    let posted = wait_status(&host, &id, "posted").await?;
    assert_eq!(posted["posted_amount"], "20.00");
    assert_eq!(posted["amount"], "30.00");
    assert_eq!(usd(&host, 1).await?, (8_500, 8_500, 0, 0));
    assert_eq!(usd(&host, 2).await?, (2_100, 2_100, 0, 0));
    let listed = host
        .get_as("/transfers?metadata[order_id]=A-1", &user_token(1))
        .await?;
    let ids: Vec<&str> = listed.body["transfers"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["transaction_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, [id.as_str()], "{}", listed.body);
    let check = namespace.check_ledger().await?;
    assert_eq!(
        (
            check.pending_off,
            check.unbalanced_transfers,
            check.balances_off_journal
        ),
        (0, 0, 0),
        "{check:?}"
    );
    Ok(())
}

#[tokio::test]
async fn voided_and_expired_transfers_release_everything_and_say_so() -> anyhow::Result<()> {
    let (namespace, host) = start().await?;
    let voided = reserve(&host, "40.00", json!({})).await?;
    let expiring = reserve(&host, "25.00", json!({"expires_in_s": 1})).await?;
    wait_status(&host, &voided, "pending").await?;
    let (status, body) = act(&host, &voided, "void", json!({}), &admin_token()).await?;
    assert_eq!(status, 200, "{body}");
    wait_status(&host, &voided, "voided").await?;
    let expired = wait_status(&host, &expiring, "expired").await?;
    assert!(expired["resolved_at"].is_string(), "{expired}");
    let (status, body) = act(&host, &expiring, "post", json!({}), &user_token(1)).await?;
    assert_eq!(status, 409, "an expired transfer cannot be posted: {body}");
    assert_eq!(usd(&host, 1).await?, (10_000, 10_000, 0, 0));
    assert_eq!(usd(&host, 2).await?, (100, 100, 0, 0));
    let topic = format!("{}transfer_events", namespace.topic_prefix());
    let events = consume_transfer_events(KAFKA_BROKERS, &topic, 4 + 2, LIMIT).await?;
    let changes: Vec<(String, String)> = events
        .iter()
        .filter(|event| {
            event["transaction_id"] == voided.as_str()
                || event["transaction_id"] == expiring.as_str()
        })
        .map(|event| {
            let id = event["transaction_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (id, event["status"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    for wanted in [
        (voided.clone(), "pending".to_string()),
        (voided.clone(), "voided".to_string()),
        (expiring.clone(), "pending".to_string()),
        (expiring.clone(), "expired".to_string()),
    ] {
        assert!(
            changes.contains(&wanted),
            "{wanted:?} not among {changes:?}"
        );
    }
    let check = namespace.check_ledger().await?;
    assert_eq!(
        (check.pending_off, check.balances_off_journal),
        (0, 0),
        "{check:?}"
    );
    Ok(())
}
