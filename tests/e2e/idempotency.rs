//! `Idempotency-Key`: a repeat replays the first answer and moves money once, whatever
//! happens between the two (many connections at once, a restart of transferd, a broker that
//! timed the first attempt out).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{Broker, Host, HostOptions, Namespace, Reply};

fn transfer(amount: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
}

async fn funded(namespace: &Namespace, options: HostOptions) -> anyhow::Result<Host> {
    let host = Host::start_with(namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    Ok(host)
}

fn transaction_id(reply: &Reply) -> Option<String> {
    reply.body["transaction_id"].as_str().map(str::to_string)
}

fn replayed(reply: &Reply) -> bool {
    reply
        .headers
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

/// Transfers the ledger settled, once they have all settled (at most `expected`).
async fn settled(namespace: &Namespace, expected: i64) -> anyhow::Result<i64> {
    namespace
        .wait_settled(expected, Duration::from_secs(30))
        .await
}

#[tokio::test]
async fn a_repeat_replays_the_first_answer_and_moves_money_once() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded(&namespace, HostOptions::new(&namespace)).await?;
    let first = host
        .post_with_key("/transfers", &transfer("10.00"), "order-1")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!replayed(&first));
    let again = host
        .post_with_key("/transfers", &transfer("10.00"), "order-1")
        .await?;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert!(replayed(&again), "a replay says so");
    // Another key is another transfer.
    let other = host
        .post_with_key("/transfers", &transfer("10.00"), "order-2")
        .await?;
    assert_ne!(transaction_id(&other), transaction_id(&first));
    assert_eq!(settled(&namespace, 2).await?, 2);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(8_000));
    Ok(())
}

#[tokio::test]
async fn a_key_used_with_another_body_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded(&namespace, HostOptions::new(&namespace)).await?;
    let first = host
        .post_with_key("/transfers", &transfer("1.00"), "k")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let changed = host
        .post_with_key("/transfers", &transfer("2.00"), "k")
        .await?;
    assert_eq!(changed.status, 422, "{}", changed.body);
    let too_long = host
        .post_with_key("/transfers", &transfer("2.00"), &"k".repeat(256))
        .await?;
    assert_eq!(too_long.status, 422, "{}", too_long.body);
    assert_eq!(settled(&namespace, 1).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_900));
    Ok(())
}

#[tokio::test]
async fn concurrent_duplicates_from_many_connections_make_one_transfer() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded(&namespace, HostOptions::new(&namespace)).await?;
    let body = transfer("5.00");
    let replies = futures::future::join_all((0..16).map(|_| {
        // A client per request: separate connections.
        let host = &host;
        let body = body.clone();
        async move {
            let client = reqwest::Client::new();
            let text = body.to_string();
            let response = client
                .post(format!("{}/transfers", host.base_url))
                .header("content-type", "application/json")
                .header("idempotency-key", "same")
                .bearer_auth(transferd_e2e::auth::token_for_body(&text))
                .body(text)
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            Ok::<_, anyhow::Error>((status, body))
        }
    }))
    .await;
    let mut ids = HashSet::new();
    for reply in replies {
        let (status, body) = reply?;
        assert!(status == 200 || status == 409, "{status} {body}");
        if status == 200 {
            ids.insert(
                body["transaction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(ids.len(), 1, "every 200 names the one transfer: {ids:?}");
    assert_eq!(settled(&namespace, 1).await?, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        namespace.settled_ids().await?.len(),
        1,
        "nothing else settles"
    );
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_500));
    Ok(())
}

#[tokio::test]
async fn a_retry_across_a_restart_of_transferd_replays() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let options = HostOptions::new(&namespace);
    let mut host = funded(&namespace, options.clone()).await?;
    let first = host
        .post_with_key("/transfers", &transfer("3.00"), "restart")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let port = host.port;
    host.kill();
    let host = Host::start_on(&namespace, options, port).await?;
    let again = host
        .post_with_key("/transfers", &transfer("3.00"), "restart")
        .await?;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert!(replayed(&again));
    assert_eq!(settled(&namespace, 1).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_700));
    Ok(())
}

/// A first attempt that was accepted but whose answer was not recorded (the database lost
/// the commit that stored it, or storing it failed): its retry must not decide again, since
/// the money has moved and the balance may no longer cover it. It answers what the first
/// attempt answered, and the transfer stays applied once.
#[tokio::test]
async fn a_retry_whose_first_answer_was_lost_answers_from_the_ledger() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded(&namespace, HostOptions::new(&namespace)).await?;
    let first = host
        .post_with_key("/transfers", &transfer("60.00"), "lost-answer")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(settled(&namespace, 1).await?, 1);
    // The answer is gone; the key keeps its claim (its transaction id), as after a crash.
    let forgotten = sqlx::query(
        "UPDATE idempotency_keys SET response_status = NULL, response_body = NULL, locked_until = now()
         WHERE idempotency_key = 'lost-answer'",
    )
    .execute(&namespace.ledger().await?)
    .await?;
    assert_eq!(forgotten.rows_affected(), 1);

    // 40.00 left: deciding again would refuse 60.00.
    let retried = host
        .post_with_key("/transfers", &transfer("60.00"), "lost-answer")
        .await?;
    assert_eq!((retried.status, &retried.body), (200, &first.body));
    let again = host
        .post_with_key("/transfers", &transfer("60.00"), "lost-answer")
        .await?;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert!(replayed(&again), "the retry's answer was recorded");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(namespace.settled_ids().await?.len(), 1, "applied once");
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(4_000));
    Ok(())
}

#[tokio::test]
async fn a_retry_after_a_broker_timeout_settles_once() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut broker = Broker::start().await?;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = broker.brokers();
    options.kafka_timeout_ms = 1_500;
    let host = funded(&namespace, options).await?;
    // Warm the producer, then take the broker away: the keyed transfer cannot be confirmed.
    let warm = host.transfer(transfer("0.01")).await?;
    assert_eq!(warm.status, 200, "{}", warm.body);
    broker.cut().await;
    let unsure = host
        .post_with_key("/transfers", &transfer("7.00"), "timeout")
        .await?;
    assert_eq!(unsure.status, 503, "{}", unsure.body);
    assert_eq!(
        unsure.body["status"], "unknown",
        "in doubt: {}",
        unsure.body
    );
    broker.restore().await?;

    // Retried until the broker answers: the same transaction id, if the 503 named one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let retried = loop {
        let reply = host
            .post_with_key("/transfers", &transfer("7.00"), "timeout")
            .await?;
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(retried.status, 200, "{}", retried.body);
    if let Some(first) = transaction_id(&unsure) {
        assert_eq!(
            transaction_id(&retried),
            Some(first),
            "the retry is the same transfer"
        );
    }
    assert_eq!(settled(&namespace, 2).await?, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(namespace.settled_ids().await?.len(), 2, "applied once");
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(10_000 - 1 - 700)
    );
    Ok(())
}

#[tokio::test]
async fn a_deposit_with_a_key_is_made_once() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let body = json!({"user_id": 5, "currency": "USD", "amount": "12.00"});
    let first = host
        .post_with_key("/admin/deposits", &body, "fund-5")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = host
        .post_with_key("/admin/deposits", &body, "fund-5")
        .await?;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert!(replayed(&again));
    assert_eq!(namespace.ledger_balance(5, "USD").await?, Some(1_200));
    Ok(())
}

/// Found by schemathesis: with a key, a body that is not JSON was answered 400 by the key's
/// bookkeeping instead of the 422 every other bad body gets.
#[tokio::test]
async fn a_keyed_body_that_is_not_json_is_refused_like_any_other() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    for path in ["/admin/deposits", "/transfers"] {
        for body in ["YL\u{1}", "[1]", "{\"amount\": 1, \"amount\": 2}"] {
            let reply = host.post_text_with_key(path, body, "not-json").await?;
            assert_eq!(reply.status, 422, "{path} {body}: {}", reply.body);
            assert!(reply.body["detail"].is_array(), "{}", reply.body);
        }
    }
    assert_eq!(namespace.ledger_balance(1, "USD").await?, None);
    Ok(())
}
