//! `POST /transfers` end to end: the real binary, PostgreSQL, Redis and Tansu.

use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::{Host, KAFKA_BROKERS, Namespace, consume};

const READ_LIMIT: Duration = Duration::from_secs(20);

async fn funded_host() -> anyhow::Result<(Namespace, Host)> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    Ok((namespace, host))
}

fn transfer(amount: Value) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD", "description": "обед"})
}

/// Publishes one valid transfer and returns the messages in the topic: the way to show that
/// nothing else was published before it.
async fn messages_after_a_marker(
    namespace: &Namespace,
    host: &Host,
) -> anyhow::Result<(String, Vec<Value>)> {
    let marker = host.transfer(transfer(json!("0.01"))).await?;
    assert_eq!(marker.status, 200, "{}", marker.body);
    let marker_id = marker.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 1, READ_LIMIT).await?;
    // Give anything published out of order a moment to arrive too.
    let all = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        messages.len() + 1,
        Duration::from_secs(2),
    )
    .await?;
    Ok((
        marker_id,
        all.into_iter().map(|message| message.json).collect(),
    ))
}

#[tokio::test]
async fn accepted_transfer_is_acknowledged_by_kafka_with_every_field() -> anyhow::Result<()> {
    let (namespace, host) = funded_host().await?;
    let reply = host.transfer(transfer(json!(10.50))).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "success");
    let transaction_id = reply.body["transaction_id"]
        .as_str()
        .expect("a transaction id")
        .to_string();
    let uuid = uuid::Uuid::parse_str(&transaction_id)?;
    assert_eq!(uuid.get_version_num(), 7, "transaction ids are UUIDv7");
    let guest_version = reply
        .headers
        .get("x-guest-version")
        .expect("the guest version header");
    assert_eq!(guest_version.len(), 64, "a sha256 in hex");

    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 1, READ_LIMIT).await?;
    assert_eq!(messages.len(), 1, "the accepted transfer is in the topic");
    let message = &messages[0];
    assert_eq!(message.key, "1", "keyed by sender id");
    assert!(
        message.payload.contains(r#""amount":10.50"#),
        "exact amount text: {}",
        message.payload
    );
    let body = &message.json;
    assert_eq!(body["transaction_id"], transaction_id);
    assert_eq!(body["sender_id"], 1);
    assert_eq!(body["receiver_id"], 2);
    assert_eq!(body["amount_minor"], 1050);
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["description"], "обед");
    assert_eq!(body["guest_version"], guest_version.to_str()?);
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|text| text.ends_with('Z'))
    );
    assert!(
        body["created_at_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_700_000_000_000)
    );
    assert!(
        message
            .headers
            .contains(&("transaction_id".to_string(), transaction_id.clone()))
    );
    Ok(())
}

#[tokio::test]
async fn amounts_as_strings_and_other_exponents_are_exact() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(10, "JPY", "5000").await?;
    host.deposit(11, "JPY", "1").await?;
    host.deposit(10, "KWD", "5.000").await?;
    host.deposit(11, "KWD", "0.001").await?;
    let yen = host
        .transfer(json!({"sender_id": 10, "receiver_id": 11, "amount": "1500", "currency": "JPY"}))
        .await?;
    assert_eq!(yen.status, 200, "{}", yen.body);
    let dinar = host
        .transfer(json!({"sender_id": 10, "receiver_id": 11, "amount": "1.234", "currency": "KWD"}))
        .await?;
    assert_eq!(dinar.status, 200, "{}", dinar.body);
    let yen_decimals = host
        .transfer(json!({"sender_id": 10, "receiver_id": 11, "amount": "1.5", "currency": "JPY"}))
        .await?;
    assert_eq!(yen_decimals.status, 422);
    assert_eq!(
        yen_decimals.problems(),
        vec![("amount".to_string(), "decimal_places".to_string())]
    );

    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 2, READ_LIMIT).await?;
    let mut by_currency: Vec<(String, i64, String)> = messages
        .iter()
        .map(|m| {
            (
                m.json["currency"].as_str().unwrap_or("").to_string(),
                m.json["amount_minor"].as_i64().unwrap_or(0),
                m.payload.clone(),
            )
        })
        .collect();
    by_currency.sort();
    assert_eq!(by_currency.len(), 2);
    assert_eq!((by_currency[0].0.as_str(), by_currency[0].1), ("JPY", 1500));
    assert!(by_currency[0].2.contains(r#""amount":1500,"#));
    assert_eq!((by_currency[1].0.as_str(), by_currency[1].1), ("KWD", 1234));
    assert!(by_currency[1].2.contains(r#""amount":1.234,"#));
    Ok(())
}

#[tokio::test]
async fn insufficient_funds_is_400_in_the_original_words_and_publishes_nothing()
-> anyhow::Result<()> {
    let (namespace, host) = funded_host().await?;
    let reply = host.transfer(transfer(json!("100.01"))).await?;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["detail"], "Недостаточно средств");

    let (marker_id, messages) = messages_after_a_marker(&namespace, &host).await?;
    assert_eq!(
        messages.len(),
        1,
        "only the marker was published: {messages:?}"
    );
    assert_eq!(messages[0]["transaction_id"], marker_id);
    Ok(())
}

#[tokio::test]
async fn holds_stop_the_same_money_being_spent_twice() -> anyhow::Result<()> {
    let (_namespace, host) = funded_host().await?;
    let first = host.transfer(transfer(json!("60.00"))).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    // Not settled yet, but held: only 40.00 is available.
    let second = host.transfer(transfer(json!("60.00"))).await?;
    assert_eq!(second.status, 400, "{}", second.body);
    let third = host.transfer(transfer(json!("40.00"))).await?;
    assert_eq!(third.status, 200, "{}", third.body);
    Ok(())
}

#[tokio::test]
async fn a_concurrent_burst_is_never_accepted_beyond_the_balance() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = std::sync::Arc::new(Host::start(&namespace).await?);
    host.deposit(1, "USD", "100").await?;
    host.deposit(2, "USD", "1").await?;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            host.transfer(transfer(json!(10))).await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        let reply = task.await??;
        match reply.status {
            200 => accepted += 1,
            400 => assert_eq!(reply.body["detail"], "Недостаточно средств"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(accepted, 10, "100.00 covers exactly ten transfers of 10.00");
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        11,
        Duration::from_secs(8),
    )
    .await?;
    assert_eq!(
        messages.len(),
        10,
        "every accepted transfer, and only those, is in the log"
    );
    Ok(())
}

#[tokio::test]
async fn every_validation_rule_is_422_naming_the_field_and_changes_nothing() -> anyhow::Result<()> {
    let (namespace, host) = funded_host().await?;
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": 0, "currency": "USD"}),
            vec![("amount", "greater_than")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "-5", "currency": "USD"}),
            vec![("amount", "greater_than")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "NaN", "currency": "USD"}),
            vec![("amount", "decimal_parsing")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "Infinity", "currency": "USD"}),
            vec![("amount", "decimal_parsing")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "1.001", "currency": "USD"}),
            vec![("amount", "decimal_places")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "1000000000.01", "currency": "USD"}),
            vec![("amount", "less_than_equal")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": 5, "currency": "ABC"}),
            vec![("currency", "unknown_currency")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 1, "amount": 5, "currency": "USD"}),
            vec![("receiver_id", "same_account")],
        ),
        (
            json!({"sender_id": 0, "receiver_id": -2, "amount": 5, "currency": "USD"}),
            vec![
                ("sender_id", "greater_than"),
                ("receiver_id", "greater_than"),
            ],
        ),
        (
            json!({"receiver_id": 2, "amount": 5}),
            vec![("sender_id", "missing"), ("currency", "missing")],
        ),
        (
            json!({"sender_id": "x", "receiver_id": 2.5, "amount": true, "currency": 7}),
            vec![
                ("sender_id", "int_parsing"),
                ("receiver_id", "int_parsing"),
                ("amount", "decimal_type"),
                ("currency", "string_type"),
            ],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": 5, "currency": "USD", "description": "я".repeat(256)}),
            vec![("description", "string_too_long")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 3, "amount": 5, "currency": "USD"}),
            vec![("receiver_id", "receiver_not_found")],
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": 5, "currency": "EUR"}),
            vec![("receiver_id", "receiver_not_found")],
        ),
    ];
    for (body, expected) in cases {
        let reply = host.transfer(body.clone()).await?;
        assert_eq!(reply.status, 422, "{body} → {}", reply.body);
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        assert_eq!(reply.problems(), expected, "{body}");
        assert!(
            reply.body["detail"][0]["msg"]
                .as_str()
                .is_some_and(|msg| !msg.is_empty())
        );
    }
    // A description of exactly 255 characters is fine.
    let longest = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": 5, "currency": "USD", "description": "я".repeat(255)}))
        .await?;
    assert_eq!(longest.status, 200, "{}", longest.body);

    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(10_000),
        "the ledger is untouched"
    );
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(8),
    )
    .await?;
    assert_eq!(messages.len(), 1, "only the valid transfer was published");
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_clear_http_errors() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let url = format!("{}/transfers", host.base_url);

    let token = transferd_e2e::auth::user_token(1);
    let wrong_type = host
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await?;
    assert_eq!(wrong_type.status(), 415);
    let missing_type = host
        .client
        .post(&url)
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await?;
    assert_eq!(missing_type.status(), 415);

    let huge = format!(r#"{{"description": "{}"}}"#, "x".repeat(20 * 1024));
    let too_large = host.post_json("/transfers", &huge).await?;
    assert_eq!(too_large.status, 413);
    assert!(
        too_large.body["detail"]
            .as_str()
            .is_some_and(|text| text.contains("16384"))
    );

    let broken = host.post_json("/transfers", r#"{"sender_id": 1,"#).await?;
    assert_eq!(broken.status, 422);
    assert_eq!(
        broken.problems(),
        vec![("body".to_string(), "json_invalid".to_string())]
    );
    let nan = host
        .post_json(
            "/transfers",
            r#"{"sender_id": 1, "receiver_id": 2, "amount": NaN, "currency": "USD"}"#,
        )
        .await?;
    assert_eq!(nan.status, 422);
    let array = host.post_json("/transfers", "[1, 2]").await?;
    assert_eq!(array.status, 422);

    let not_found = host
        .client
        .get(format!("{}/nowhere", host.base_url))
        .send()
        .await?;
    assert_eq!(not_found.status(), 404);
    let wrong_method = host.client.put(&url).send().await?;
    assert_eq!(wrong_method.status(), 405);
    Ok(())
}

#[tokio::test]
async fn admin_deposits_need_the_token_and_valid_input() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let url = format!("{}/admin/deposits", host.base_url);
    let body = json!({"user_id": 5, "currency": "USD", "amount": "10.00"});

    let anonymous = host.client.post(&url).json(&body).send().await?;
    assert_eq!(anonymous.status(), 401);
    let wrong = host
        .client
        .post(&url)
        .bearer_auth("not-the-admin-token-at-all")
        .json(&body)
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        namespace.ledger_balance(5, "USD").await?,
        None,
        "refused deposits change nothing"
    );

    let bad = host
        .client
        .post(&url)
        .bearer_auth(transferd_e2e::ADMIN_TOKEN)
        .json(&json!({"user_id": -5, "currency": "usd", "amount": "-1"}))
        .send()
        .await?;
    assert_eq!(bad.status(), 422);

    let first = host.deposit(5, "USD", "10.00").await?;
    assert_eq!(first["balance"], "10.00");
    let second = host.deposit(5, "USD", "0.50").await?;
    assert_eq!(second["balance_minor"], 1050);
    assert_eq!(namespace.ledger_balance(5, "USD").await?, Some(1050));
    Ok(())
}

#[tokio::test]
async fn a_repeated_key_is_refused_and_an_escaped_key_is_read() -> anyhow::Result<()> {
    let (namespace, host) = funded_host().await?;

    let twice = host
        .post_json(
            "/transfers",
            r#"{"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD", "amount": "99.00"}"#,
        )
        .await?;
    assert_eq!(twice.status, 422, "{}", twice.body);
    assert_eq!(
        twice.problems(),
        vec![("amount".to_string(), "duplicate_key".to_string())]
    );
    assert_eq!(namespace.holds().await?, vec![], "nothing held");

    let escaped = host
        .post_json(
            "/transfers",
            r#"{"sender_\u0069d": 1, "receiver_id": 2, "\u0061mount": "1.00", "currency": "USD"}"#,
        )
        .await?;
    assert_eq!(escaped.status, 200, "{}", escaped.body);
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(20)).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_900));
    Ok(())
}

/// Posts `body` with `field` (a field `path` does not have) added under `key` and checks the
/// answer is pydantic's refusal of that one unknown field, exactly.
async fn refused_as_unknown(
    host: &Host,
    path: &str,
    mut body: Value,
    field: &str,
    key: &str,
) -> anyhow::Result<()> {
    body[field] = json!("pending");
    let refused = host.post_with_key(path, &body, key).await?;
    assert_eq!(refused.status, 422, "{path}: {}", refused.body);
    assert_eq!(
        refused.body,
        json!({"detail": [{"loc": ["body", field], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]}),
        "{path}"
    );
    Ok(())
}

/// Found against the service: `"phase": "pending"` was ignored and the money moved at once. A
/// field the service does not know is a 422 naming it: nothing is held, published or settled,
/// and the `Idempotency-Key` stays free for the corrected request.
#[tokio::test]
async fn an_unknown_field_is_refused_naming_it_and_nothing_moves() -> anyhow::Result<()> {
    let (namespace, host) = funded_host().await?;
    let body = transfer(json!("5.00"));
    refused_as_unknown(&host, "/transfers", body, "two_phase", "two-phase").await?;
    assert_eq!(namespace.holds().await?, vec![], "nothing held");

    // Several unknown keys with a missing field: every problem, the unknown keys last in the
    // order the body gives them (as text: `json!` would sort the keys).
    let several = host
        .post_json(
            "/transfers",
            r#"{"state": "pending", "sender_id": 1, "receiver_id": 2, "amount": "1", "hold_for_s": 60}"#,
        )
        .await?;
    assert_eq!(several.status, 422, "{}", several.body);
    assert_eq!(
        several.problems(),
        [
            ("currency", "missing"),
            ("state", "extra_forbidden"),
            ("hold_for_s", "extra_forbidden"),
        ]
        .map(|(field, kind)| (field.to_string(), kind.to_string()))
    );

    let (marker_id, messages) = messages_after_a_marker(&namespace, &host).await?;
    assert_eq!(
        messages.len(),
        1,
        "only the marker was published: {messages:?}"
    );
    assert_eq!(messages[0]["transaction_id"], marker_id);
    assert_eq!(namespace.wait_settled(1, READ_LIMIT).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(10_000 - 1));
    assert_eq!(namespace.ledger_balance(2, "USD").await?, Some(100 + 1));

    let corrected = host
        .post_with_key("/transfers", &transfer(json!("5.00")), "two-phase")
        .await?;
    assert_eq!(corrected.status, 200, "{}", corrected.body);
    assert!(corrected.headers.get("idempotent-replayed").is_none());
    assert_eq!(namespace.wait_settled(2, READ_LIMIT).await?, 2);
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(10_000 - 1 - 500)
    );
    Ok(())
}

/// As for transfers: a deposit with a field the service does not know deposits nothing, and
/// its `Idempotency-Key` is not spent on the refusal.
#[tokio::test]
async fn a_deposit_with_an_unknown_field_is_refused_and_deposits_nothing() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let deposit = json!({"user_id": 5, "currency": "USD", "amount": "12.00"});
    refused_as_unknown(&host, "/admin/deposits", deposit.clone(), "phase", "fund-5").await?;
    let several = host
        .post_with_key(
            "/admin/deposits",
            &json!({"memo": "x", "user_id": 5, "amount": "1.00", "note": 1}),
            "fund-5-again",
        )
        .await?;
    assert_eq!(
        several.problems(),
        [
            ("currency", "missing"),
            ("memo", "extra_forbidden"),
            ("note", "extra_forbidden"),
        ]
        .map(|(field, kind)| (field.to_string(), kind.to_string()))
    );
    assert_eq!(
        namespace.ledger_balance(5, "USD").await?,
        None,
        "nothing deposited"
    );

    let corrected = host
        .post_with_key("/admin/deposits", &deposit, "fund-5")
        .await?;
    assert_eq!(corrected.status, 200, "{}", corrected.body);
    assert_eq!(corrected.body["replayed"], false);
    assert!(corrected.headers.get("idempotent-replayed").is_none());
    assert_eq!(namespace.ledger_balance(5, "USD").await?, Some(1_200));
    Ok(())
}
