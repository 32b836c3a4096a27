//! The request fields of WIT 0.2.0 end to end: metadata carried into the transfer log, its
//! bounds refused before anything is held, pending transfers refused until settlement takes
//! them, and a guest built against 0.1.0 still serving what it understands.

use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::{Host, KAFKA_BROKERS, Namespace, consume, v0_1_guest_file};

const READ_LIMIT: Duration = Duration::from_secs(20);

async fn funded_host(namespace: &Namespace) -> anyhow::Result<Host> {
    let host = Host::start(namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    Ok(host)
}

/// 1.00 USD from 1 to 2 with `extra` fields added.
fn transfer(extra: Value) -> Value {
    let mut body = json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"});
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body
}

/// Each refusal's problems as (location after `body`, type).
fn located(reply: &transferd_e2e::Reply) -> Vec<(String, String)> {
    reply.body["detail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let location: Vec<&str> = item["loc"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(1)
                .filter_map(Value::as_str)
                .collect();
            (
                location.join("."),
                item["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(location, kind)| (location.to_string(), kind.to_string()))
        .collect()
}

#[tokio::test]
async fn metadata_is_carried_in_the_transfer_message() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded_host(&namespace).await?;
    let metadata = json!({"order_id": "A-1042", "channel": "web", "note": "обед 🍜"});
    let reply = host
        .transfer(transfer(json!({ "metadata": metadata })))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 1, READ_LIMIT).await?;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.json["transaction_id"], reply.body["transaction_id"]);
    assert_eq!(message.json["metadata"], metadata);
    // Written by key, after the original fields; an immediate transfer names no phase.
    assert!(
        message
            .payload
            .ends_with(r#","metadata":{"channel":"web","note":"обед 🍜","order_id":"A-1042"}}"#),
        "{}",
        message.payload
    );
    assert!(message.json.get("phase").is_none() && message.json.get("expires_at_ms").is_none());
    // The hold taken ahead recorded this very message: the publish took it over as it was.
    for (outcome, count) in [("outcome=\"used\"", 1.0), ("outcome=\"replaced\"", 0.0)] {
        let counted = host
            .metric("transferd_holds_ahead_total", &[outcome])
            .await?;
        assert_eq!(counted, count, "{outcome}");
    }
    assert_eq!(namespace.wait_settled(1, READ_LIMIT).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_900));

    // No metadata, or an empty object: the message is the original contract's.
    for extra in [
        json!({}),
        json!({"metadata": {}}),
        json!({"metadata": null}),
    ] {
        let plain = host.transfer(transfer(extra.clone())).await?;
        assert_eq!(plain.status, 200, "{extra}: {}", plain.body);
    }
    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 4, READ_LIMIT).await?;
    assert_eq!(messages.len(), 4);
    for message in &messages[1..] {
        assert!(
            message.json.get("metadata").is_none(),
            "{}",
            message.payload
        );
    }
    Ok(())
}

#[tokio::test]
async fn invalid_metadata_is_422_naming_the_problem_and_holds_nothing() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded_host(&namespace).await?;
    let seventeen: serde_json::Map<String, Value> = (0..17)
        .map(|index| (format!("key{index}"), json!("v")))
        .collect();
    let large: serde_json::Map<String, Value> = (0..9)
        .map(|index| (format!("key{index}"), json!("v".repeat(500))))
        .collect();
    let cases: Vec<(Value, Vec<(String, String)>)> = vec![
        (
            json!({"metadata": seventeen}),
            pairs(&[("metadata", "too_long")]),
        ),
        (
            json!({"metadata": large}),
            pairs(&[("metadata", "too_large")]),
        ),
        (
            json!({"metadata": {"order id": "A-1"}}),
            pairs(&[("metadata", "string_pattern_mismatch")]),
        ),
        (
            json!({"metadata": {"note": "x".repeat(513)}}),
            pairs(&[("metadata.note", "string_too_long")]),
        ),
        (
            json!({"metadata": {"note": "two\nlines"}}),
            pairs(&[("metadata.note", "string_pattern_mismatch")]),
        ),
        // JSON types are the host's to check: a value that is no string, or no object at all.
        (
            json!({"metadata": {"order_id": 1042, "ok": "yes"}}),
            pairs(&[("metadata.order_id", "string_type")]),
        ),
        (
            json!({"metadata": ["order_id", "A-1"]}),
            pairs(&[("metadata", "dict_type")]),
        ),
    ];
    for (extra, expected) in cases {
        let reply = host.transfer(transfer(extra.clone())).await?;
        assert_eq!(reply.status, 422, "{extra} → {}", reply.body);
        assert_eq!(located(&reply), expected, "{extra}");
    }
    // A key given twice inside the object: refused by the host, naming it.
    let twice = host
        .post_json(
            "/transfers",
            r#"{"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD",
                "metadata": {"order_id": "A-1", "order_id": "A-2"}}"#,
        )
        .await?;
    assert_eq!(twice.status, 422, "{}", twice.body);
    assert_eq!(
        located(&twice),
        pairs(&[("metadata.order_id", "duplicate_key")])
    );
    assert_eq!(namespace.holds().await?, vec![], "nothing held");
    let nothing = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        1,
        Duration::from_secs(3),
    )
    .await?;
    assert!(nothing.is_empty(), "nothing published: {nothing:?}");
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(10_000));
    Ok(())
}

/// The guest's rules on the phase and the expiry: every problem named, nothing held; an
/// explicit immediate phase is an ordinary transfer (tests/e2e/two_phase.rs has pending ones).
#[tokio::test]
async fn the_phase_and_expiry_are_judged_by_the_guest() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded_host(&namespace).await?;
    let cases = [
        (json!({"phase": "posted"}), pairs(&[("phase", "enum")])),
        (
            json!({"expires_in_s": 60}),
            pairs(&[("expires_in_s", "pending_only")]),
        ),
        (
            json!({"phase": "immediate", "expires_in_s": 0}),
            pairs(&[
                ("expires_in_s", "greater_than_equal"),
                ("expires_in_s", "pending_only"),
            ]),
        ),
        (
            json!({"phase": 1, "expires_in_s": "soon"}),
            pairs(&[("phase", "string_type"), ("expires_in_s", "int_parsing")]),
        ),
    ];
    for (extra, expected) in cases {
        let reply = host.transfer(transfer(extra.clone())).await?;
        assert_eq!(reply.status, 422, "{extra} → {}", reply.body);
        assert_eq!(located(&reply), expected, "{extra}");
    }
    assert_eq!(namespace.holds().await?, vec![], "nothing held");
    // An explicit immediate phase is an ordinary transfer.
    let immediate = host
        .transfer(transfer(json!({"phase": "immediate"})))
        .await?;
    assert_eq!(immediate.status, 200, "{}", immediate.body);
    let messages = consume(KAFKA_BROKERS, &namespace.transfer_topic(), 1, READ_LIMIT).await?;
    assert_eq!(
        messages.len(),
        1,
        "only the immediate transfer was published"
    );
    assert!(messages[0].json.get("phase").is_none());
    Ok(())
}

/// A guest built against the released 0.1.0 package passes the upload check, serves plain
/// transfers once active, and never sees a field it cannot carry: the host refuses the request
/// first, naming each such field, and holds and publishes nothing.
#[tokio::test]
async fn a_0_1_guest_serves_plain_transfers_and_is_spared_fields_it_lacks() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded_host(&namespace).await?;
    let status = host.get_json("/admin/guest").await?;
    assert_eq!(status["serving_wit_package"], "0.3.0", "{status}");
    let version = host.upload_guest(&v0_1_guest_file()).await?;
    host.activate_guest(&version).await?;
    let started = std::time::Instant::now();
    let mut accepted = 0;
    let plain = loop {
        let reply = host.transfer(transfer(json!({}))).await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        accepted += 1;
        if reply
            .headers
            .get("x-guest-version")
            .and_then(|v| v.to_str().ok())
            == Some(&version)
        {
            break reply;
        }
        assert!(
            started.elapsed() < READ_LIMIT,
            "the 0.1.0 guest never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = host.get_json("/admin/guest").await?;
    assert_eq!(status["serving_wit_package"], "0.1.0", "{status}");
    let listed = status["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|info| info["version"] == version.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["wit_package"], "0.1.0", "{status}");

    let refused = host
        .transfer(transfer(
            json!({"metadata": {"order_id": "A-1"}, "phase": "immediate"}),
        ))
        .await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        located(&refused),
        pairs(&[("phase", "not_supported"), ("metadata", "not_supported")])
    );
    let message = refused.body["detail"][0]["msg"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("transfer rules") && message.contains("0.1.0"),
        "{message}"
    );
    let expiring = host.transfer(transfer(json!({"expires_in_s": 60}))).await?;
    assert_eq!(
        located(&expiring),
        pairs(&[("expires_in_s", "not_supported")])
    );

    // Every accepted transfer is in the log, the 0.1.0 guest's last, and nothing else.
    assert_eq!(
        namespace.wait_settled(accepted, READ_LIMIT).await?,
        accepted
    );
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        accepted as usize + 1,
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(messages.len(), accepted as usize, "{messages:?}");
    let last = messages.last().expect("the 0.1.0 guest's transfer");
    assert_eq!(last.json["transaction_id"], plain.body["transaction_id"]);
    assert_eq!(last.json["guest_version"], version.as_str());
    assert!(last.json.get("metadata").is_none());
    Ok(())
}

/// A 0.1.0 guest as the shadow of the active 0.2.0 one: on a plain transfer it decides the
/// same; on one with metadata the host refuses it the request, which counts as a difference,
/// and the candidate publishes nothing either way.
#[tokio::test]
async fn a_0_1_shadow_differs_exactly_where_it_cannot_carry_the_request() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = funded_host(&namespace).await?;
    let version = host.upload_guest(&v0_1_guest_file()).await?;
    let shadow_url = format!("{}/admin/guest/{version}/shadow", host.base_url);
    let admin = transferd_e2e::auth::admin_token();
    let started = host
        .client
        .post(&shadow_url)
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(started.status(), 200);
    let deadline = std::time::Instant::now() + READ_LIMIT;
    while host.get_json("/admin/guest").await?["candidate"]["mode"] != "shadow" {
        assert!(std::time::Instant::now() < deadline, "no shadow recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The follower swaps the candidate in moments after the registry records it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for extra in [json!({}), json!({"metadata": {"order_id": "A-1"}})] {
        let reply = host.transfer(transfer(extra)).await?;
        assert_eq!(
            reply.status, 200,
            "the active version decides: {}",
            reply.body
        );
    }
    let stats = host.shadow_report(&version, 2).await?;
    assert_eq!(stats["replica_stats"]["runs"], 2, "{stats}");
    assert_eq!(stats["replica_stats"]["differences"], 1, "{stats}");
    let difference = &stats["replica_stats"]["recent_differences"][0];
    assert_eq!(
        difference["candidate"]["err"]["invalid"][0]["code"], "not_supported",
        "{difference}"
    );
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        3,
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(messages.len(), 2, "the active version's two transfers only");
    assert!(
        messages
            .iter()
            .all(|m| m.json["guest_version"] != version.as_str())
    );
    Ok(())
}
