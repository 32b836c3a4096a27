//! No single message stops settlement: what the request edge refuses, what another producer
//! writes to the transfer topic, and a transfer the ledger refuses are each kept out of the
//! way (a 422, or the quarantine) while every other transfer settles; a quarantined message is
//! re-driven exactly once after its cause is fixed.

use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::auth::admin_token;
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, KAFKA_BROKERS, Namespace, WorkerProcess, consume, produce_raw,
};

const SETTLE_LIMIT: Duration = Duration::from_secs(60);

fn transfer(amount: &str, description: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD", "description": description})
}

async fn admin_get(host: &Host, path: &str) -> anyhow::Result<(u16, Value)> {
    as_admin(host, reqwest::Method::GET, path).await
}

async fn admin_post(host: &Host, path: &str) -> anyhow::Result<(u16, Value)> {
    as_admin(host, reqwest::Method::POST, path).await
}

async fn as_admin(
    host: &Host,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = host
        .client
        .request(method, format!("{}{path}", host.base_url))
        .bearer_auth(admin_token())
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// Polls `GET /transfers/{id}` until it is no longer pending.
async fn outcome(host: &Host, id: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        let (status, body) = admin_get(host, &format!("/transfers/{id}")).await?;
        anyhow::ensure!(status == 200, "GET /transfers/{id}: {status} {body}");
        if body["status"] != "pending" {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "transfer {id} still pending: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the quarantine until it holds `count` messages.
async fn quarantined(host: &Host, count: usize) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        let (status, body) = admin_get(host, "/admin/quarantine").await?;
        anyhow::ensure!(status == 200, "GET /admin/quarantine: {status} {body}");
        let found = body["messages"].as_array().map_or(0, Vec::len);
        if found >= count {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{found} of {count} messages quarantined: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id_of(reply_body: &Value) -> String {
    reply_body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_description_with_a_control_character_is_refused_and_changes_nothing()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    for description in ["a\u{0}b", "line\nbreak", "\u{1b}[2J"] {
        let reply = host.transfer(transfer("0.01", description)).await?;
        assert_eq!(reply.status, 422, "{description:?}: {}", reply.body);
        assert_eq!(
            reply.problems(),
            vec![(
                "description".to_string(),
                "string_pattern_mismatch".to_string()
            )],
            "{description:?}"
        );
    }
    let (_, balances) = admin_get(&host, "/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["available"], "10.00");
    // The same cent with a printable description settles: the refusal was the text's.
    let reply = host.transfer(transfer("0.01", "a b")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        outcome(&host, &id_of(&reply.body)).await?["status"],
        "completed"
    );
    Ok(())
}

#[tokio::test]
async fn foreign_messages_are_quarantined_and_every_transfer_behind_them_settles()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let topic = namespace.transfer_topic();
    let far_future = json!({
        "transaction_id": uuid::Uuid::now_v7(), "sender_id": 1, "receiver_id": 2,
        "amount": 1.00, "amount_minor": 100, "currency": "USD", "description": null,
        "created_at_ms": i64::MAX,
    });
    let nul_text = json!({
        "transaction_id": uuid::Uuid::now_v7(), "sender_id": 1, "receiver_id": 2,
        "amount": 1.00, "amount_minor": 100, "currency": "USD", "description": "a\u{0}b",
        "created_at_ms": 1_795_960_800_123_i64,
    });
    let bad: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        br#"{"hello":"world"}"#.to_vec(),
        far_future.to_string().into_bytes(),
        nul_text.to_string().into_bytes(),
    ];
    let partitions = 3;
    let mut written = Vec::new();
    for partition in 0..partitions {
        for payload in &bad {
            written.push(produce_raw(KAFKA_BROKERS, &topic, partition, payload).await?);
        }
    }

    let mut accepted = Vec::new();
    for amount in ["1.00", "2.00", "3.00"] {
        let reply = host.transfer(transfer(amount, "after the poison")).await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        accepted.push(id_of(&reply.body));
    }
    for id in &accepted {
        assert_eq!(outcome(&host, id).await?["status"], "completed", "{id}");
    }

    let listing = quarantined(&host, written.len()).await?;
    let mut listed: Vec<(i32, i64)> = listing["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["partition"].as_i64().unwrap_or(-1) as i32,
                m["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    listed.sort();
    written.sort();
    assert_eq!(listed, written, "each bad message quarantined once");
    assert_eq!(listing["open"], written.len());

    // A readable one is answered as rejected, unprocessable.
    let far_future_id = far_future["transaction_id"].as_str().unwrap_or_default();
    let shown = outcome(&host, far_future_id).await?;
    assert_eq!(shown["status"], "rejected", "{shown}");
    assert_eq!(shown["reason"], "unprocessable", "{shown}");

    // Each one is on the dead-letter topic too.
    let dead_letters = consume(
        KAFKA_BROKERS,
        &format!("{}transfer_quarantine", namespace.topic_prefix()),
        written.len(),
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(dead_letters.len(), written.len());
    assert!(
        dead_letters
            .iter()
            .all(|m| m.headers.iter().any(|(name, _)| name == "transferd-error")),
        "every dead letter says why"
    );

    let quarantined_total = host
        .metric(
            "transferd_settlement_quarantined_total",
            &["cause=\"unreadable\""],
        )
        .await?;
    assert_eq!(quarantined_total, written.len() as f64);
    // The status page's figure: the gauge of messages waiting, refreshed every few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = host
            .metric("transferd_settlement_quarantine_open", &[])
            .await?;
        if open == written.len() as f64 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the quarantine gauge says {open}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // /readyz names them without calling the replica unready.
    let (status, readiness) = admin_get(&host, "/readyz").await?;
    assert_eq!(status, 200, "{readiness}");
    assert_eq!(readiness["checks"]["quarantine"]["ready"], true);
    let detail = readiness["checks"]["quarantine"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.starts_with(&format!("{} messages waiting", written.len())),
        "{detail}"
    );
    // The status page's summary: the count and the latest entries, without their payloads.
    let (status, history) = admin_get(&host, "/admin/status/history").await?;
    assert_eq!(status, 200, "{history}");
    let summary = &history["quarantine"];
    assert_eq!(summary["open"], written.len(), "{summary}");
    let latest = summary["latest"].as_array().cloned().unwrap_or_default();
    assert_eq!(latest.len(), written.len().min(5), "{summary}");
    assert!(
        latest
            .iter()
            .all(|entry| entry["error"].is_string() && entry.get("payload").is_none()),
        "{summary}"
    );
    let check = namespace.check_ledger().await?;
    assert_eq!(check.completed_transfers, 3, "nothing foreign moved money");
    assert!(check.nonzero_currency_sums.is_empty());
    assert_eq!(check.balances_off_journal, 0);
    Ok(())
}

#[tokio::test]
async fn a_transfer_the_ledger_refuses_is_quarantined_alone_and_re_driven_once()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Host::start_with(&namespace, options.clone()).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    // An operator's rule the ledger enforces, which this one transfer breaks.
    let ledger = namespace.ledger().await?;
    sqlx::query(
        "ALTER TABLE transfers ADD CONSTRAINT no_poison CHECK (description IS DISTINCT FROM 'poison')",
    )
    .execute(&ledger)
    .await?;

    // Accepted while no worker runs, so settlement reads all three in one batch.
    let mut ids = Vec::new();
    for (amount, description) in [("10.00", "first"), ("20.00", "poison"), ("30.00", "third")] {
        let reply = host.transfer(transfer(amount, description)).await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        ids.push(id_of(&reply.body));
    }
    let _worker = WorkerProcess::start(&namespace, &options, "worker")?;
    assert_eq!(outcome(&host, &ids[0]).await?["status"], "completed");
    assert_eq!(outcome(&host, &ids[2]).await?["status"], "completed");
    let refused = outcome(&host, &ids[1]).await?;
    assert_eq!(
        (&refused["status"], &refused["reason"]),
        (&json!("rejected"), &json!("unprocessable")),
        "{refused}"
    );
    let listing = quarantined(&host, 1).await?;
    let entry = &listing["messages"][0];
    assert!(
        entry["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no_poison"),
        "{entry}"
    );
    assert_eq!(entry["transaction_id"], ids[1].as_str());
    // Its hold is given back: only the two settled transfers are off the balance.
    assert!(namespace.wait_effects_done(SETTLE_LIMIT).await?);
    let (_, balances) = admin_get(&host, "/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["balance"], "60.00", "{balances}");
    assert_eq!(balances["balances"][0]["available"], "60.00", "{balances}");

    let retry_path = format!(
        "/admin/quarantine/{}/{}/retry",
        entry["partition"], entry["offset"]
    );
    let (status, body) = admin_post(&host, &retry_path).await?;
    assert_eq!(status, 422, "the cause is not fixed yet: {body}");

    sqlx::query("ALTER TABLE transfers DROP CONSTRAINT no_poison")
        .execute(&ledger)
        .await?;
    let position = format!("{}:{}", entry["partition"], entry["offset"]);
    let output = std::process::Command::new(transferd_e2e::transferd_binary())
        .args(["quarantine", "retry", &position])
        .env("TRANSFERD_URL", &host.base_url)
        .env("TRANSFERD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("\"completed\""), "{printed}");
    let (status, body) = admin_post(&host, &retry_path).await?;
    assert_eq!(status, 409, "a second retry applies nothing: {body}");

    assert_eq!(outcome(&host, &ids[1]).await?["status"], "completed");
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal_entries WHERE transaction_id = $1::uuid")
            .bind(&ids[1])
            .fetch_one(&ledger)
            .await?;
    assert_eq!(entries, 2, "applied exactly once");
    let (_, balances) = admin_get(&host, "/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["balance"], "40.00", "{balances}");
    let listing = quarantined(&host, 1).await?;
    assert_eq!(listing["open"], 0, "{listing}");
    let check = namespace.check_ledger().await?;
    assert_eq!(check.completed_transfers, 3);
    assert_eq!(check.balances_off_journal, 0);
    Ok(())
}
