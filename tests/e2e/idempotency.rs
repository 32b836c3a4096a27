//! `Idempotency-Key`: a repeat replays the first answer and moves money once, whatever
//! happens between the two (many connections at once, a restart of transferd, a broker that
//! timed the first attempt out, a first attempt that waited for a guest slot past its lease).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{
    Broker, Host, HostOptions, KAFKA_BROKERS, Namespace, Reply, consume, hostile_guest_file,
};

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

/// Under overload a keyed request can wait for a guest slot longer than its key's lease, and a
/// retry then takes the key over. The first attempt must not run the transaction beside the
/// retry: one message for the transaction, the retry's hold in place, one final answer.
#[tokio::test]
async fn a_request_that_waits_past_its_lease_leaves_the_transaction_to_the_retry()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    // One guest slot, a 1 s guest timeout: the key's lease is 1 s + 0.3 s + 5 s.
    options.guest_file = hostile_guest_file();
    options.kafka_timeout_ms = 300;
    options.run_worker = false;
    options.extra_env = vec![
        ("TRANSFERD_GUEST_CONCURRENCY".into(), "1".into()),
        ("TRANSFERD_GUEST_TIMEOUT_MS".into(), "1000".into()),
        ("TRANSFERD_DATABASE_TIMEOUT_MS".into(), "300".into()),
        // The most fuel there is: a spinning call is ended by its deadline, not its budget.
        ("TRANSFERD_GUEST_FUEL_BUDGET".into(), "1000000000000".into()),
    ];
    let lease = Duration::from_millis(6_300);
    let host = std::sync::Arc::new(funded(&namespace, options).await?);
    let spinning = json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD",
        "description": "hostile:spin"});
    let keyed = json!({"sender_id": 1, "receiver_id": 2, "amount": "3.00", "currency": "USD",
        "description": "hostile:standard"});
    // Nine calls that each hold the slot for the guest timeout, queued ahead of the keyed one.
    let spinners: Vec<_> = (0..9)
        .map(|_| {
            let (host, body) = (std::sync::Arc::clone(&host), spinning.clone());
            tokio::spawn(async move { host.transfer(body).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_at = Instant::now();
    let first = {
        let (host, body) = (std::sync::Arc::clone(&host), keyed.clone());
        tokio::spawn(async move { host.post_with_key("/transfers", &body, "overload").await })
    };
    // Its lease ends while it still waits; the client retries.
    tokio::time::sleep_until((sent_at + lease + Duration::from_millis(300)).into()).await;
    let retry = host.post_with_key("/transfers", &keyed, "overload").await?;
    let first = first.await??;
    for spinner in spinners {
        assert_eq!(spinner.await??.status, 503, "the spinning calls time out");
    }
    assert_eq!(
        retry.status, 200,
        "the retry makes the transfer: {}",
        retry.body
    );
    assert_ne!(first.status, 200, "{}", first.body);
    assert!(
        first.status >= 500,
        "the first attempt did nothing: {}",
        first.body
    );
    let id = transaction_id(&retry).unwrap_or_default();

    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(5),
    )
    .await?;
    let for_id = messages
        .iter()
        .filter(|message| message.json["transaction_id"] == id.as_str())
        .count();
    assert_eq!(
        (messages.len(), for_id),
        (1, 1),
        "one message: {messages:?}"
    );
    let holds = namespace.holds().await?;
    assert!(
        holds
            .iter()
            .any(|hold| hold.transaction_id == id && hold.user_id == 1 && hold.amount_minor == 300),
        "the retry's hold is in place: {holds:?}"
    );
    let again = host.post_with_key("/transfers", &keyed, "overload").await?;
    assert!(replayed(&again), "{}", again.body);
    assert_eq!(
        (again.status, &again.body),
        (200, &retry.body),
        "one final answer"
    );
    Ok(())
}
