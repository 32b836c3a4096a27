//! The host guards every publish. A guest built on the standard logic but publishing the
//! wrong transfer (tests/guests/hostile, started from `--guest-file`, which is not
//! upload-checked) is refused by the host's own checks: 500, nothing held, nothing published,
//! nothing settled, the violation counted for its version. Uploading it is refused with the
//! case and the check it breaks. What was published decides the answer: a trap after an
//! acknowledged publish is a 200 that settles once.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, KAFKA_BROKERS, Namespace, consume, hostile_guest_file,
};

fn hostile(description: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD", "description": description})
}

/// A host serving the hostile guest, with both accounts funded: the receiver has enough for
/// the reversed 1,000x transfer to settle if it ever reached the log.
async fn hostile_host(namespace: &Namespace) -> anyhow::Result<Host> {
    let mut options = HostOptions::new(namespace);
    options.guest_file = hostile_guest_file();
    let host = Host::start_with(namespace, options).await?;
    host.deposit(1, "USD", "50.00").await?;
    host.deposit(2, "USD", "2000.00").await?;
    Ok(host)
}

/// Money held on an account in Redis, in minor units.
async fn held(namespace: &Namespace, user_id: i64) -> anyhow::Result<i64> {
    let mut redis = namespace.redis().await?;
    let total: Option<i64> = redis
        .hget(
            namespace.redis_key(&format!("holds:{user_id}:USD")),
            "total",
        )
        .await?;
    Ok(total.unwrap_or(0))
}

/// Nothing reached the namespace's transfer topic (read for a few seconds).
async fn assert_nothing_published(namespace: &Namespace) -> anyhow::Result<()> {
    let published = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        1,
        Duration::from_secs(3),
    )
    .await?;
    assert!(published.is_empty(), "nothing published: {published:?}");
    Ok(())
}

async fn violations(host: &Host, version: &str) -> anyhow::Result<i64> {
    let status: Value = host
        .client
        .get(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    Ok(status["replica_guard_violations"][version]
        .as_i64()
        .unwrap_or(0))
}

#[tokio::test]
async fn a_publish_that_is_not_the_request_is_refused_before_anything_is_held() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = hostile_host(&namespace).await?;
    let cases = [
        ("hostile:wrong-sender", "sender_id"),
        ("hostile:hold-mismatch", "hold_amount"),
        ("hostile:foreign-id", "transaction_id"),
        ("hostile:inflate", "requested_amount"),
        ("hostile:amount-text", "amount"),
        // The issue's example: 1 minor unit held, 1,000x published from receiver to sender.
        ("a gift", "sender_id"),
    ];
    let mut version = String::new();
    for (description, check) in cases {
        let reply = host.transfer(hostile(description)).await?;
        assert_eq!(reply.status, 500, "{description}: {}", reply.body);
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("the transfer logic failed")
                && detail.contains(&format!("check {check} failed")),
            "{description}: {detail}"
        );
        version = reply.headers["x-guest-version"].to_str()?.to_string();
    }
    assert_eq!(
        (held(&namespace, 1).await?, held(&namespace, 2).await?),
        (0, 0)
    );
    assert_nothing_published(&namespace).await?;
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(1)).await?, 0);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(5_000));
    assert_eq!(namespace.ledger_balance(2, "USD").await?, Some(200_000));
    assert_eq!(violations(&host, &version).await?, 6, "counted per version");
    // Each call's first lookup held the request's amount ahead of its publish; refused, each
    // gave it back before answering (nothing is held, above).
    assert_eq!(
        host.metric("transferd_holds_ahead_total", &[r#"outcome="given_back""#])
            .await?,
        6.0
    );
    Ok(())
}

/// A guest that does not apply the rules' text check (it publishes the request's description
/// as it came) is refused by the guard, which reads the message with settlement's parser: a
/// description with NUL, which the ledger cannot store, or a line break, never reaches the log.
#[tokio::test]
async fn a_published_description_the_ledger_cannot_store_or_print_is_refused() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = hostile_host(&namespace).await?;
    for text in ["a\u{0}b", "line\nbreak", "\u{1b}[2J"] {
        let description = format!("hostile:verbatim:{text}");
        let reply = host.transfer(hostile(&description)).await?;
        assert_eq!(reply.status, 500, "{text:?}: {}", reply.body);
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("check json failed"), "{text:?}: {detail}");
    }
    // Printable text that is not the request's description is refused too.
    let reply = host.transfer(hostile("hostile:verbatim:a b")).await?;
    assert_eq!(reply.status, 500, "{}", reply.body);
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("check description failed"), "{detail}");
    assert_eq!(held(&namespace, 1).await?, 0);
    assert_nothing_published(&namespace).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_publish_is_refused_and_the_first_settles_once() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = hostile_host(&namespace).await?;
    let reply = host.transfer(hostile("hostile:two-publishes")).await?;
    // The first message was acknowledged before the second was refused: it is in the log and
    // will settle, so the answer is the transfer's, not the trap's.
    assert_eq!(reply.status, 200, "{}", reply.body);
    let version = reply.headers["x-guest-version"].to_str()?.to_string();
    let published = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(published.len(), 1, "only the first publish reached the log");
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(20)).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(4_900));
    assert_eq!(violations(&host, &version).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_trap_after_an_acknowledged_publish_is_accepted_and_settles_once() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = hostile_host(&namespace).await?;
    let reply = host.transfer(hostile("hostile:trap-after-publish")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let transaction_id = reply.body["transaction_id"].as_str().unwrap_or_default();
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(20)).await?, 1);
    let shown: Value = host
        .client
        .get(format!("{}/transfers/{transaction_id}", host.base_url))
        .bearer_auth(transferd_e2e::auth::user_token(1))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(4_900));
    assert_eq!(namespace.ledger_balance(2, "USD").await?, Some(200_100));
    Ok(())
}

#[tokio::test]
async fn uploading_a_guest_that_publishes_the_wrong_transfer_is_refused() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let response = host
        .client
        .put(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .body(std::fs::read(hostile_guest_file())?)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("invariant case") && detail.contains("the host's check sender_id failed"),
        "names the case and the check: {detail}"
    );
    Ok(())
}

#[tokio::test]
async fn a_guest_asking_for_a_third_accounts_balance_is_refused_and_learns_nothing()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = hostile_host(&namespace).await?;
    // The hostile guest's third account, with a balance no other number in the test has.
    host.deposit(3, "USD", "7654.31").await?;
    let secret = "765431";
    let reply = host.transfer(hostile("hostile:third-party")).await?;
    assert_eq!(reply.status, 500, "{}", reply.body);
    let version = reply.headers["x-guest-version"].to_str()?.to_string();
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("check balance_lookup failed") && detail.contains("account 3"),
        "{detail}"
    );
    assert!(!reply.body.to_string().contains(secret), "{}", reply.body);
    assert_eq!(
        (held(&namespace, 1).await?, held(&namespace, 2).await?),
        (0, 0)
    );
    assert_nothing_published(&namespace).await?;
    assert!(!host.log().contains(secret), "the log names the balance");
    assert_eq!(violations(&host, &version).await?, 1, "counted per version");
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(5_000));
    Ok(())
}
