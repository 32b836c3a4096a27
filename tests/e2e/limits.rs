//! Spending limits and velocity written as rules (WIT 0.3.0's `account-info`): limits set
//! through the admin route and shown with the balances are enforced by the standard guest,
//! and a velocity rule is a guest of its own, not a host change.

use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::{ADMIN_TOKEN, Host, Namespace, Reply, velocity_guest_file};

const READ_LIMIT: Duration = Duration::from_secs(20);

async fn set_limits(host: &Host, user_id: i64, body: Value) -> anyhow::Result<Reply> {
    let response = host
        .client
        .put(format!("{}/admin/accounts/{user_id}/limits", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await?;
    Reply::read(response).await
}

fn usd(sender_id: i64, amount: &str) -> Value {
    json!({"sender_id": sender_id, "receiver_id": 9, "amount": amount, "currency": "USD"})
}

/// The USD entry of a user's balances.
async fn usd_balance(host: &Host, user_id: i64) -> anyhow::Result<Value> {
    let balances = host
        .get_json(&format!("/accounts/{user_id}/balances"))
        .await?;
    Ok(balances["balances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|balance| balance["currency"] == "USD")
        .cloned()
        .unwrap_or_default())
}

#[tokio::test]
async fn limits_set_by_an_admin_are_shown_and_enforced_by_the_standard_guest() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000.00").await?;
    host.deposit(9, "USD", "1.00").await?;
    let refused = set_limits(&host, 1, json!({"currency": "USD", "single_max": "-5"})).await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let set = set_limits(
        &host,
        1,
        json!({"currency": "USD", "single_max": "100.00", "daily_max": "250"}),
    )
    .await?;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["limits"]["single_max_minor"], 10_000);
    let shown = usd_balance(&host, 1).await?;
    assert_eq!(shown["limits"]["single_max"], "100.00", "{shown}");
    assert_eq!(shown["limits"]["daily_max"], "250.00", "{shown}");
    assert_eq!(shown["today"]["outgoing_count"], 0, "{shown}");

    let over = host.transfer(usd(1, "100.01")).await?;
    assert_eq!(over.status, 403, "{}", over.body);
    assert!(
        over.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("in one transfer")
    );
    for amount in ["100.00", "100.00", "50.00"] {
        let accepted = host.transfer(usd(1, amount)).await?;
        assert_eq!(accepted.status, 200, "{amount}: {}", accepted.body);
    }
    // 250.00 sent today: one more minor unit is over the daily limit.
    let daily = host.transfer(usd(1, "0.01")).await?;
    assert_eq!(daily.status, 403, "{}", daily.body);
    assert!(
        daily.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("a day")
    );
    let shown = usd_balance(&host, 1).await?;
    assert_eq!(shown["today"]["outgoing"], "250.00", "{shown}");
    assert_eq!(shown["today"]["outgoing_count"], 3, "{shown}");
    assert_eq!(namespace.wait_settled(3, READ_LIMIT).await?, 3);

    // Lifting the limit applies from the next transfer on.
    let lifted = set_limits(&host, 1, json!({"currency": "USD"})).await?;
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    let accepted = host.transfer(usd(1, "300.00")).await?;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    Ok(())
}

#[tokio::test]
async fn the_velocity_guest_refuses_a_senders_fourth_transfer_in_a_minute() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    for user in [1, 2, 3, 9] {
        host.deposit(user, "USD", "100.00").await?;
    }
    let version = host.upload_guest(&velocity_guest_file()).await?;
    host.activate_guest(&version).await?;
    // The swap reaches every instance shortly: wait until the velocity guest decides.
    let started = std::time::Instant::now();
    let mut accepted = 0;
    loop {
        let reply = host.transfer(usd(2, "1.00")).await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        accepted += 1;
        let served = reply
            .headers
            .get("x-guest-version")
            .and_then(|v| v.to_str().ok());
        if served == Some(version.as_str()) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < READ_LIMIT,
            "the velocity guest never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..=3 {
        let reply = host.transfer(usd(1, "1.00")).await?;
        assert_eq!(reply.status, 200, "transfer {n}: {}", reply.body);
        accepted += 1;
    }
    let fourth = host.transfer(usd(1, "1.00")).await?;
    assert_eq!(fourth.status, 403, "{}", fourth.body);
    let reason = fourth.body["detail"].as_str().unwrap_or_default();
    assert!(reason.contains("3 transfers a minute"), "{reason}");
    // Another sender is not affected.
    let other = host.transfer(usd(3, "1.00")).await?;
    assert_eq!(other.status, 200, "{}", other.body);
    accepted += 1;
    assert_eq!(
        namespace.wait_settled(accepted, READ_LIMIT).await?,
        accepted
    );
    let sender = usd_balance(&host, 1).await?;
    assert_eq!(sender["balance"], "97.00", "{sender}");
    assert_eq!(sender["today"]["last_minute_count"], 3, "{sender}");
    Ok(())
}
