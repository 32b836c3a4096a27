//! Provenance: every transfer the guest decides is recorded as the conformance vector it is;
//! `transferd replay` decides it again identically, down to the message bytes the log got;
//! jco replays it from the same record; backtests run candidate versions over the records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, KAFKA_BROKERS, Namespace, consume, guest_file,
    hostile_guest_file, run_command, strict_guest_file,
};

/// The recorded decisions, by transaction id, once at least `count` are recorded.
async fn recorded(namespace: &Namespace, count: usize) -> anyhow::Result<HashMap<String, Value>> {
    let ledger = namespace.ledger().await?;
    let started = Instant::now();
    loop {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT transaction_id, vector::text FROM guest_decisions")
                .fetch_all(&ledger)
                .await?;
        if rows.len() >= count {
            return rows
                .into_iter()
                .map(|(id, text)| Ok((id.to_string(), serde_json::from_str(&text)?)))
                .collect();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {count} decisions recorded",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The transaction id of the one recorded decision whose result is `kind`.
fn id_of(decisions: &HashMap<String, Value>, kind: &str) -> String {
    let matching: Vec<&String> = decisions
        .iter()
        .filter(|(_, vector)| {
            let result = &vector["expected"]["result"];
            result.get(kind).is_some()
                || result["err"] == json!(kind)
                || result["err"].get(kind).is_some()
        })
        .map(|(id, _)| id)
        .collect();
    assert_eq!(matching.len(), 1, "one {kind} decision: {decisions:?}");
    matching[0].clone()
}

/// `transferd replay <id>`: its exit status and its output's lines by their label.
async fn replay(
    namespace: &Namespace,
    id: &str,
) -> anyhow::Result<(bool, HashMap<String, String>)> {
    let options = HostOptions::new(namespace);
    let output = run_command(
        namespace,
        &options,
        &["replay", id],
        Duration::from_secs(60),
    )
    .await?;
    let text = String::from_utf8(output.stdout)?;
    let lines = text
        .lines()
        .map(|line| match line.split_once(": ") {
            Some((label, rest)) => (label.to_string(), rest.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();
    Ok((output.status.success(), lines))
}

#[tokio::test]
async fn live_decisions_replay_identically_with_the_message_bytes_the_log_got() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let sent = [
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "10.50", "currency": "USD",
            "description": "lunch", "metadata": {"z": "1", "a": "2"}}),
            200,
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "1000.00", "currency": "USD"}),
            400,
        ),
        (
            json!({"sender_id": 1, "receiver_id": 2, "amount": "1.001", "currency": "USD"}),
            422,
        ),
        (
            json!({"sender_id": 1, "receiver_id": 424_242, "amount": "1.00", "currency": "USD"}),
            422,
        ),
    ];
    for (body, status) in &sent {
        let reply = host.transfer(body.clone()).await?;
        assert_eq!(reply.status, *status, "{body}: {}", reply.body);
    }
    let decisions = recorded(&namespace, sent.len()).await?;
    assert_eq!(decisions.len(), sent.len(), "one record per decision");
    let published = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        1,
        Duration::from_secs(10),
    )
    .await?;
    let accepted = id_of(&decisions, "ok");
    for kind in ["ok", "insufficient-funds", "invalid", "receiver-not-found"] {
        let id = id_of(&decisions, kind);
        let (identical, lines) = replay(&namespace, &id).await?;
        assert!(identical, "{kind} {id}: {lines:?}");
        assert!(lines.contains_key("identical"), "{kind}: {lines:?}");
        assert_eq!(lines["recorded"], lines["replayed"], "{kind}");
        let message = &lines["message"];
        if id == accepted {
            assert_eq!(published.len(), 1);
            assert_eq!(
                message, &published[0].payload,
                "the replay names the exact bytes the log got"
            );
        } else {
            assert_eq!(message, "none", "{kind}: nothing was sent");
        }
    }
    // The record reads as a conformance vector, the metadata as the guest got it.
    let options = HostOptions::new(&namespace);
    let vector = run_command(
        &namespace,
        &options,
        &["replay", &accepted, "--vector"],
        Duration::from_secs(30),
    )
    .await?;
    let text = String::from_utf8(vector.stdout)?;
    assert!(text.contains(r#""metadata":{"a":"2","z":"1"}"#), "{text}");
    let vector: Value = serde_json::from_str(&text)?;
    assert_eq!(
        vector["expected"]["result"]["ok"]["amount_minor"],
        json!(1050)
    );
    assert_eq!(vector["context"]["transaction_id"], json!(accepted));
    let (known, lines) = replay(&namespace, &uuid::Uuid::new_v4().to_string()).await?;
    assert!(!known, "an unknown transaction is not identical: {lines:?}");
    Ok(())
}

#[tokio::test]
async fn a_recorded_transfer_replays_identically_under_jco() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let harness = root.join("tests/jco/node_modules/@bytecodealliance/jco");
    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() || !harness.exists() {
        eprintln!("SKIPPED: node or jco is not installed (tests/jco/install.sh installs jco)");
        return Ok(());
    }
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let body = json!({"sender_id": 1, "receiver_id": 2, "amount": "2.50", "currency": "USD"});
    host.transfer(body).await?;
    let decisions = recorded(&namespace, 1).await?;
    let id = id_of(&decisions, "ok");
    let output = tokio::process::Command::new(root.join("scripts/replay-jco.sh"))
        .arg(&id)
        .env("TRANSFERD_BIN", HostOptions::new(&namespace).binary)
        .env("TRANSFERD_DATABASE_URL", namespace.database_url())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("identical"),
        "{stdout}\n{stderr}"
    );
    Ok(())
}

async fn admin(
    host: &Host,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = host
        .client
        .request(method, format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn backtest(host: &Host, version: &str, window: Value) -> anyhow::Result<(u16, Value)> {
    let path = format!("/admin/guest/{version}/backtest");
    admin(
        host,
        reqwest::Method::POST,
        &path,
        Some(window.to_string().into_bytes()),
    )
    .await
}

async fn upload(host: &Host, bytes: Vec<u8>, query: &str) -> anyhow::Result<(u16, Value)> {
    let path = format!("/admin/guest{query}");
    let response = host
        .client
        .put(format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn backtests_report_what_a_candidate_would_have_decided() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    host.deposit(3, "USD", "1.00").await?;
    let transfer = |amount: &str, description: &str| {
        json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD",
            "description": description})
    };
    let mut served = String::new();
    for body in [
        transfer("1.00", "a"),
        transfer("2.00", "b"),
        transfer("3.00", "c"),
        // The strict guest refuses over 100.
        transfer("500.00", "large"),
        // The hostile guest publishes this one, then traps.
        transfer("4.00", "hostile:trap-after-publish"),
        json!({"sender_id": 3, "receiver_id": 2, "amount": "50.00", "currency": "USD"}),
    ] {
        let reply = host.transfer(body).await?;
        served = reply.headers["x-guest-version"].to_str()?.to_string();
    }
    let decisions = recorded(&namespace, 6).await?;
    let large = decisions
        .iter()
        .find(|(_, vector)| vector["request"]["amount"] == json!("500.00"))
        .map(|(id, _)| id.clone())
        .unwrap_or_default();
    let trapping = decisions
        .iter()
        .find(|(_, vector)| vector["request"]["amount"] == json!("4.00"))
        .map(|(id, _)| id.clone())
        .unwrap_or_default();

    // The version that decided: every case identical.
    let (status, same) = backtest(&host, &served, json!({"last": 100})).await?;
    assert_eq!(status, 200, "{same}");
    let report = &same["report"];
    assert_eq!(
        (report["cases"].as_u64(), report["identical"].as_u64()),
        (Some(6), Some(6)),
        "{report}"
    );
    assert_eq!(report["failures"], json!(0));
    // Fuel is metered on every replayed call: the figures are there and ordered.
    let (fuel_max, fuel_p99) = (
        report["fuel_used"]["max"].as_u64().unwrap_or(0),
        report["fuel_used"]["p99"].as_u64().unwrap_or(0),
    );
    assert!(fuel_p99 > 0 && fuel_p99 <= fuel_max, "{report}");

    // A stricter rule: the large transfer would have been refused.
    let (status, strict) = upload(&host, std::fs::read(strict_guest_file())?, "").await?;
    assert_eq!(status, 201, "{strict}");
    let strict_version = strict["version"].as_str().unwrap_or_default();
    let since = json!({"since": "2000-01-01T00:00:00Z"});
    let (status, strict) = backtest(&host, strict_version, since).await?;
    assert_eq!(status, 200, "{strict}");
    let report = &strict["report"];
    assert_eq!(report["cases"], json!(6), "{report}");
    assert_eq!(report["different"], json!(1), "{report}");
    assert_eq!(
        report["different_by_kind"]["accepted→rejected"],
        json!(1),
        "{report}"
    );
    assert_eq!(
        report["samples"][0]["transaction_id"],
        json!(large),
        "{report}"
    );
    assert_eq!(
        report["samples"][0]["recorded"]["ok"]["amount_minor"],
        json!(50_000)
    );

    // A version that fails on recorded cases: the hostile guest (standard only for the
    // descriptions it knows, and trapping after its publish for one of them). Its upload is
    // refused (its invariant cases already fail) and changes nothing; stored as a version that
    // predates those checks would be, its backtest counts the failures by kind.
    let hostile = std::fs::read(hostile_guest_file())?;
    let (_, before) = admin(&host, reqwest::Method::GET, "/admin/guest", None).await?;
    let (status, refused) = upload(&host, hostile.clone(), "?backtest_last=100").await?;
    assert_eq!(status, 422, "{refused}");
    let (_, after) = admin(&host, reqwest::Method::GET, "/admin/guest", None).await?;
    assert_eq!(before["versions"], after["versions"], "nothing stored");
    let (hostile_version,): (String,) = sqlx::query_as(
        "INSERT INTO guest_versions (version, bytes, size_bytes, uploaded_by)
         VALUES (encode(sha256($1), 'hex'), $1, length($1), 'test') RETURNING version",
    )
    .bind(&hostile)
    .fetch_one(&namespace.ledger().await?)
    .await?;
    let (_, hostile) = backtest(&host, &hostile_version, json!({"last": 100})).await?;
    let report = &hostile["report"];
    assert_eq!(report["cases"], json!(6), "{report}");
    assert_eq!(report["failures_by_kind"]["trap"], json!(1), "{report}");
    assert_eq!(
        report["failures_by_kind"]["violation"],
        json!(4),
        "the other accepted ones break a host check: {report}"
    );
    assert_eq!(
        report["identical"],
        json!(1),
        "the refused one is refused alike: {report}"
    );
    let trapped = report["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|sample| sample["kind"] == json!("trap"));
    assert_eq!(
        trapped.map(|sample| &sample["transaction_id"]),
        Some(&json!(trapping))
    );
    // The standard guest passes the upload's backtest and its report comes back with it.
    let (status, passed) = upload(&host, std::fs::read(guest_file())?, "?backtest_last=3").await?;
    assert_eq!(status, 201, "{passed}");
    assert_eq!(passed["backtest"]["cases"], json!(3), "{passed}");

    // Refusals: FastAPI's shapes.
    for (window, field) in [
        (json!({"last": 0}), "last"),
        (json!({}), "last"),
        (json!({"last": 1, "since": "2000-01-01T00:00:00Z"}), "last"),
        (json!({"since": "yesterday"}), "since"),
    ] {
        let (status, body) = backtest(&host, &served, window.clone()).await?;
        assert_eq!(status, 422, "{window}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", field]),
            "{window}: {body}"
        );
    }
    let (status, _) = backtest(&host, &"0".repeat(64), json!({"last": 1})).await?;
    assert_eq!(status, 404);

    // The command line asks the same route.
    let mut options = HostOptions::new(&namespace);
    options
        .extra_env
        .push(("TRANSFERD_URL".into(), host.base_url.clone()));
    let output = run_command(
        &namespace,
        &options,
        &["guest", "backtest", &served, "--last", "2"],
        Duration::from_secs(60),
    )
    .await?;
    assert!(output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(printed["report"]["identical"], json!(2), "{printed}");
    Ok(())
}

/// The upload's backtest is what refuses a version that passes every invariant case but traps
/// on recorded traffic: the strict guest traps on a description no invariant case has.
#[tokio::test]
async fn an_upload_that_would_trap_on_recorded_traffic_is_refused() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    for description in ["lunch", "strict:trap", "rent"] {
        let reply = host
            .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00",
                "currency": "USD", "description": description}))
            .await?;
        assert_eq!(
            reply.status, 200,
            "the active version accepts {description}"
        );
    }
    let decisions = recorded(&namespace, 3).await?;
    let trapping = decisions
        .iter()
        .find(|(_, vector)| vector["request"]["description"] == json!("strict:trap"))
        .map(|(id, _)| id.clone())
        .unwrap_or_default();
    let strict = std::fs::read(strict_guest_file())?;
    let (_, before) = admin(&host, reqwest::Method::GET, "/admin/guest", None).await?;

    let (status, refused) = upload(&host, strict.clone(), "?backtest_last=3").await?;
    assert_eq!(status, 422, "{refused}");
    let detail = refused["detail"].to_string();
    assert!(
        detail.contains(&trapping),
        "names the failing transfer: {refused}"
    );
    let (_, after) = admin(&host, reqwest::Method::GET, "/admin/guest", None).await?;
    assert_eq!(before["versions"], after["versions"], "nothing stored");

    // Without the trapping transfer in its window, the same bytes upload.
    let (status, stored) = upload(&host, strict, "?backtest_last=1").await?;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["backtest"]["failures"], json!(0), "{stored}");
    Ok(())
}
