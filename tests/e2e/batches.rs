//! `POST /transfers/batch` end to end: each transfer decided and answered on its own, the
//! accepted ones held, published as one record and settled once in order; atomic batches all
//! or none; one idempotency key for the batch; pending transfers and metadata in a batch.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::auth::user_token;
use transferd_e2e::consume_transfer_events;
use transferd_e2e::{Host, HostOptions, KAFKA_BROKERS, Namespace};

const LIMIT: Duration = Duration::from_secs(30);

fn item(sender: i64, receiver: i64, amount: &str, currency: &str) -> Value {
    json!({"sender_id": sender, "receiver_id": receiver, "amount": amount, "currency": currency})
}

async fn batch(host: &Host, sender: i64, body: &Value) -> anyhow::Result<(u16, Value)> {
    let reply = host
        .post_as("/transfers/batch", body, &user_token(sender))
        .await?;
    Ok((reply.status, reply.body))
}

/// The answer's results, each read by `read`.
fn each<T>(answer: &Value, read: impl Fn(&Value) -> T) -> Vec<T> {
    let results = answer["results"].as_array();
    results
        .map(|results| results.iter().map(read).collect())
        .unwrap_or_default()
}

/// Each result's (status, status_code or 200).
fn outcomes(answer: &Value) -> Vec<(String, i64)> {
    each(answer, |result| {
        let status = result["status"].as_str().unwrap_or_default().to_string();
        (status, result["status_code"].as_i64().unwrap_or(200))
    })
}

fn ids(answer: &Value) -> Vec<String> {
    each(answer, |result| {
        result["transaction_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

/// `GET /transfers/{id}` as `user`, once its status is `wanted` and it is settled.
async fn settled(host: &Host, user: i64, id: &str, wanted: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let reply = host
            .get_as(&format!("/transfers/{id}"), &user_token(user))
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

/// User `user`'s USD (balance, available) in minor units.
async fn usd(host: &Host, user: i64) -> anyhow::Result<(i64, i64)> {
    let reply = host
        .get_as(&format!("/accounts/{user}/balances"), &user_token(user))
        .await?;
    let account = &reply.body["balances"][0];
    let minor = |name: &str| account[name].as_i64().unwrap_or(i64::MIN);
    Ok((minor("balance_minor"), minor("available_minor")))
}

async fn start() -> anyhow::Result<(Namespace, Host)> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    host.deposit(3, "USD", "1.00").await?;
    Ok((namespace, host))
}

#[tokio::test]
async fn each_transfer_of_a_batch_is_answered_and_the_accepted_settle_in_order()
-> anyhow::Result<()> {
    let (namespace, host) = start().await?;
    let body = json!({"transfers": [
        item(1, 2, "10.00", "USD"),
        item(1, 2, "95.00", "USD"),
        item(1, 2, "5.00", "usd"),
        item(4, 2, "1.00", "USD"),
        item(1, 3, "20.00", "USD"),
        item(1, 2, "70.00", "USD"),
    ]});
    let (status, answer) = batch(&host, 1, &body).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["atomic"], false);
    let accepted = |code| ("accepted".to_string(), code);
    let rejected = |code| ("rejected".to_string(), code);
    assert_eq!(
        outcomes(&answer),
        vec![
            accepted(200),
            rejected(400),
            rejected(422),
            rejected(403),
            accepted(200),
            accepted(200),
        ],
        "{answer}"
    );
    // Each refusal says what a single POST /transfers of it would have said.
    assert_eq!(
        answer["results"][1]["code"], "insufficient_funds",
        "{answer}"
    );
    assert_eq!(
        answer["results"][2]["detail"][0]["loc"],
        json!(["body", "currency"])
    );
    assert_eq!(answer["results"][3]["code"], "forbidden", "{answer}");
    let ids = ids(&answer);
    for index in [0, 4, 5] {
        let shown = settled(&host, 1, &ids[index], "completed").await?;
        assert_eq!(shown["transaction_id"], ids[index].as_str());
    }
    for index in [1, 2, 3] {
        let shown = host
            .get_as(&format!("/transfers/{}", ids[index]), &user_token(1))
            .await?;
        assert_eq!(
            shown.status, 404,
            "a refused item is nowhere: {}",
            shown.body
        );
    }
    assert_eq!(usd(&host, 1).await?, (0, 0));
    assert_eq!(usd(&host, 2).await?, (8_100, 8_100));
    assert_eq!(usd(&host, 3).await?, (2_100, 2_100));
    let topic = format!("{}transfer_events", namespace.topic_prefix());
    // Three deposits, then one event per settled transfer of the batch.
    let events = consume_transfer_events(KAFKA_BROKERS, &topic, 3 + 3, LIMIT).await?;
    let of_batch: Vec<&Value> = events
        .iter()
        .filter(|event| ids.iter().any(|id| event["transaction_id"] == id.as_str()))
        .collect();
    assert_eq!(of_batch.len(), 3, "{events:?}");
    Ok(())
}

#[tokio::test]
async fn an_atomic_batch_with_one_refusal_holds_and_publishes_nothing() -> anyhow::Result<()> {
    let (_namespace, host) = start().await?;
    let body = json!({"atomic": true, "transfers": [
        item(1, 2, "10.00", "USD"),
        item(1, 2, "1000.00", "USD"),
        item(1, 3, "10.00", "USD"),
    ]});
    let (status, answer) = batch(&host, 1, &body).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        outcomes(&answer),
        vec![
            ("rejected".to_string(), 409),
            ("rejected".to_string(), 400),
            ("rejected".to_string(), 409),
        ],
        "{answer}"
    );
    assert_eq!(answer["results"][0]["code"], "batch_failed");
    assert_eq!(usd(&host, 1).await?, (10_000, 10_000), "nothing is held");
    for id in ids(&answer) {
        let shown = host
            .get_as(&format!("/transfers/{id}"), &user_token(1))
            .await?;
        assert_eq!(shown.status, 404, "{}", shown.body);
    }
    // The same batch within the balance is accepted whole and settles whole.
    let body = json!({"atomic": true, "transfers": [
        item(1, 2, "10.00", "USD"),
        item(1, 3, "90.00", "USD"),
    ]});
    let (status, answer) = batch(&host, 1, &body).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(outcomes(&answer), vec![("accepted".to_string(), 200); 2]);
    for id in ids(&answer) {
        settled(&host, 1, &id, "completed").await?;
    }
    assert_eq!(usd(&host, 1).await?, (0, 0));
    Ok(())
}

#[tokio::test]
async fn in_an_atomic_batch_a_transfer_spends_what_an_earlier_one_brought() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.jwt_secret = None;
    options
        .extra_env
        .push(("TRANSFERD_AUTH".into(), "none".into()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    host.deposit(3, "USD", "1.00").await?;
    let chain = |atomic| {
        json!({"atomic": atomic, "transfers": [
            item(1, 2, "10.00", "USD"),
            item(2, 3, "10.50", "USD"),
        ]})
    };
    // Not atomic: the second may not count on the first, which could still fail alone.
    let (status, answer) = batch(&host, 1, &chain(false)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        outcomes(&answer)[1],
        ("rejected".to_string(), 400),
        "{answer}"
    );
    let first = ids(&answer)[0].clone();
    settled(&host, 1, &first, "completed").await?;
    host.deposit(1, "USD", "10.00").await?;
    let (status, answer) = batch(&host, 1, &chain(true)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        outcomes(&answer),
        vec![("accepted".to_string(), 200); 2],
        "{answer}"
    );
    for id in ids(&answer) {
        settled(&host, 1, &id, "completed").await?;
    }
    assert_eq!(usd(&host, 1).await?, (0, 0));
    assert_eq!(usd(&host, 2).await?, (1_050, 1_050));
    assert_eq!(usd(&host, 3).await?, (1_150, 1_150));
    Ok(())
}

#[tokio::test]
async fn one_key_covers_a_batch_and_a_retry_replays_its_answer() -> anyhow::Result<()> {
    let (_namespace, host) = start().await?;
    let body = json!({"transfers": [item(1, 2, "30.00", "USD"), item(1, 3, "20.00", "USD")]});
    let first = host
        .post_with_key("/transfers/batch", &body, "batch-key-1")
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    for id in ids(&first.body) {
        settled(&host, 1, &id, "completed").await?;
    }
    let again = host
        .post_with_key("/transfers/batch", &body, "batch-key-1")
        .await?;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    let replayed = again.headers.get("idempotent-replayed");
    assert_eq!(replayed.and_then(|v| v.to_str().ok()), Some("true"));
    // Settled once: the money moved once.
    assert_eq!(usd(&host, 1).await?, (5_000, 5_000));
    assert_eq!(usd(&host, 2).await?, (3_100, 3_100));
    let other = json!({"transfers": [item(1, 2, "1.00", "USD")]});
    let reused = host
        .post_with_key("/transfers/batch", &other, "batch-key-1")
        .await?;
    assert_eq!(reused.status, 422, "{}", reused.body);
    Ok(())
}

#[tokio::test]
async fn a_batch_has_one_to_a_thousand_transfers_each_read_as_a_single_one() -> anyhow::Result<()> {
    let (_namespace, host) = start().await?;
    let many: Vec<Value> = (0..1001).map(|_| item(1, 2, "0.01", "USD")).collect();
    let (status, answer) = batch(&host, 1, &json!({"transfers": many})).await?;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["detail"][0]["type"], "too_long", "{answer}");
    let (status, answer) = batch(&host, 1, &json!({"transfers": [], "extra": 1})).await?;
    assert_eq!(status, 422, "{answer}");
    let body = json!({"transfers": [item(1, 2, "1", "USD"), {"sender_id": 1, "amount": "x"}]});
    let (status, answer) = batch(&host, 1, &body).await?;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["detail"][0]["loc"],
        json!(["body", "transfers", "1", "receiver_id"])
    );
    // A thousand is one batch.
    let thousand: Vec<Value> = (0..1000).map(|_| item(1, 2, "0.01", "USD")).collect();
    let (status, answer) = batch(&host, 1, &json!({"transfers": thousand})).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(outcomes(&answer), vec![("accepted".to_string(), 200); 1000]);
    let last = ids(&answer)[999].clone();
    settled(&host, 1, &last, "completed").await?;
    assert_eq!(usd(&host, 1).await?, (9_000, 9_000));
    Ok(())
}

#[tokio::test]
async fn a_batch_carries_pending_transfers_and_metadata() -> anyhow::Result<()> {
    let (_namespace, host) = start().await?;
    let body = json!({"transfers": [
        {"sender_id": 1, "receiver_id": 2, "amount": "40.00", "currency": "USD",
         "phase": "pending", "metadata": {"order": "A-1"}},
        {"sender_id": 1, "receiver_id": 3, "amount": "5.00", "currency": "USD",
         "metadata": {"order": "A-2"}},
    ]});
    let (status, answer) = batch(&host, 1, &body).await?;
    assert_eq!(status, 200, "{answer}");
    let ids = ids(&answer);
    let pending = settled(&host, 1, &ids[0], "pending").await?;
    assert_eq!(pending["phase"], "pending", "{pending}");
    assert_eq!(pending["metadata"], json!({"order": "A-1"}));
    let done = settled(&host, 1, &ids[1], "completed").await?;
    assert_eq!(done["metadata"], json!({"order": "A-2"}));
    let posted = host
        .post_as(
            &format!("/transfers/{}/post", ids[0]),
            &json!({"amount": "30.00"}),
            &user_token(1),
        )
        .await?;
    assert_eq!(posted.status, 200, "{}", posted.body);
    settled(&host, 1, &ids[0], "posted").await?;
    assert_eq!(usd(&host, 1).await?, (6_500, 6_500));
    assert_eq!(usd(&host, 2).await?, (3_100, 3_100));
    Ok(())
}
