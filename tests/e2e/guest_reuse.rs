//! `TRANSFERD_GUEST_REUSE_COUNT` above 1 keeps guest instances between requests. With one
//! instance slot every request lands on the same instance, so what one request left behind in
//! the host's state (its principal, its hold, its publish count, its answers) would show in the
//! next: each must be decided, published and settled as its own, on one instance. An instance
//! that trapped is never used again.

use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::{Host, HostOptions, Namespace, auth, consume, panicking_guest_file};

fn reusing(namespace: &Namespace) -> HostOptions {
    let mut options = HostOptions::new(namespace);
    options.extra_env = vec![
        ("TRANSFERD_GUEST_REUSE_COUNT".into(), "100".into()),
        ("TRANSFERD_GUEST_CONCURRENCY".into(), "1".into()),
    ];
    options
}

/// Guest instances the host created for live and replayed calls so far.
async fn instances_created(host: &Host) -> anyhow::Result<f64> {
    host.metric("transferd_guest_instances_created_total", &[])
        .await
}

fn transfer(sender: i64, receiver: i64, amount: &str) -> Value {
    json!({"sender_id": sender, "receiver_id": receiver, "amount": amount, "currency": "USD"})
}

#[tokio::test]
async fn one_reused_instance_decides_each_request_as_its_own() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start_with(&namespace, reusing(&namespace)).await?;
    for user in 1..=3 {
        host.deposit(user, "USD", "10.00").await?;
    }
    let before = instances_created(&host).await?;

    // Accepted, refused for funds, forbidden (someone else's account), accepted again: each
    // on the instance the one before it used.
    let first = host.transfer(transfer(1, 2, "1.00")).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = host.transfer(transfer(2, 3, "0.50")).await?;
    assert_eq!(
        second.status, 200,
        "a second publish on the same instance: {}",
        second.body
    );
    assert_eq!(host.transfer(transfer(3, 1, "999.00")).await?.status, 400);
    let forbidden = host
        .client
        .post(format!("{}/transfers", host.base_url))
        .bearer_auth(auth::user_token(2))
        .json(&transfer(1, 2, "1.00"))
        .send()
        .await?;
    assert_eq!(
        forbidden.status(),
        403,
        "the last caller's identity is not kept"
    );
    let third = host.transfer(transfer(1, 3, "2.00")).await?;
    assert_eq!(third.status, 200, "{}", third.body);
    let created = instances_created(&host).await? - before;
    assert_eq!(created, 1.0, "five decisions on one instance");

    // Each message is its own request's, held and settled once.
    let ids: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|reply| {
            reply.body["transaction_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let messages = consume(
        transferd_e2e::KAFKA_BROKERS,
        &namespace.transfer_topic(),
        3,
        Duration::from_secs(15),
    )
    .await?;
    let mut sent: Vec<(String, i64, i64, i64)> = messages
        .iter()
        .map(|m| {
            let j = &m.json;
            (
                j["transaction_id"].as_str().unwrap_or_default().to_string(),
                j["sender_id"].as_i64().unwrap_or(0),
                j["receiver_id"].as_i64().unwrap_or(0),
                j["amount_minor"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    sent.sort();
    let mut wanted = vec![
        (ids[0].clone(), 1, 2, 100),
        (ids[1].clone(), 2, 3, 50),
        (ids[2].clone(), 1, 3, 200),
    ];
    wanted.sort();
    assert_eq!(sent, wanted);
    assert_eq!(namespace.wait_settled(3, Duration::from_secs(30)).await?, 3);
    for (user, balance_minor) in [(1, 700), (2, 1050), (3, 1250)] {
        assert_eq!(
            namespace.ledger_balance(user, "USD").await?,
            Some(balance_minor),
            "user {user}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_that_trapped_is_never_used_again() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = reusing(&namespace);
    options.guest_file = panicking_guest_file();
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "10.00").await?;
    let before = instances_created(&host).await?;
    for _ in 0..3 {
        assert_eq!(host.transfer(transfer(1, 2, "1.00")).await?.status, 500);
    }
    assert_eq!(instances_created(&host).await? - before, 3.0);
    Ok(())
}

/// What a `hostile:remember` call says it remembers: "<calls in its statics> <bytes on its
/// heap>", counting itself.
async fn remembered(host: &Host) -> anyhow::Result<String> {
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00",
            "currency": "USD", "description": "hostile:remember"}))
        .await?;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let said = reply.body["detail"][0]["msg"].as_str().unwrap_or_default();
    Ok(said.to_string())
}

/// A fresh instance starts from the guest's image: what the last call on the same pool slot
/// wrote to its statics and heap is gone (the pooling allocator resets only the pages a call
/// dirtied, found with the kernel's page-map scan where it has one). With reuse, the same
/// guest does see its own past calls: the test can tell the two apart.
#[tokio::test]
async fn a_fresh_instance_remembers_nothing_of_the_last_call_on_its_slot() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.guest_file = transferd_e2e::hostile_guest_file();
    // One slot: every call lands on the same memory.
    options.extra_env = vec![("TRANSFERD_GUEST_CONCURRENCY".into(), "1".into())];
    let fresh = Host::start_with(&namespace, options.clone()).await?;
    for _ in 0..3 {
        assert_eq!(remembered(&fresh).await?, "1 1");
    }
    drop(fresh);

    options
        .extra_env
        .push(("TRANSFERD_GUEST_REUSE_COUNT".into(), "100".into()));
    let reusing = Host::start_with(&namespace, options).await?;
    let said = [
        remembered(&reusing).await?,
        remembered(&reusing).await?,
        remembered(&reusing).await?,
    ];
    assert_eq!(said, ["1 1", "2 2", "3 3"]);
    Ok(())
}
