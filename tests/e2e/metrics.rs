//! `GET /metrics` moves with what happens: accepted and refused transfers, replays, refused
//! tokens, guest traps and guest swaps each show in their counters.

use std::time::{Duration, Instant};

use serde_json::json;
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, Namespace, panicking_guest_file, strict_guest_file,
};

/// The sum of the samples of `name` whose labels contain every one of `labels`.
async fn metric(host: &Host, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let text = host
        .client
        .get(format!("{}/metrics", host.base_url))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && labels.iter().all(|label| line.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn transfer(amount: &str) -> serde_json::Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
}

#[tokio::test]
async fn counters_move_with_transfers_refusals_replays_and_bad_tokens() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;

    let accepted = r#"outcome="accepted""#;
    assert_eq!(
        metric(&host, "transferd_guest_calls_total", &[accepted]).await?,
        0.0
    );
    assert_eq!(host.transfer(transfer("1.00")).await?.status, 200);
    assert_eq!(host.transfer(transfer("999.00")).await?.status, 400);
    let first = host
        .post_with_key("/transfers", &transfer("2.00"), "m-1")
        .await?;
    let again = host
        .post_with_key("/transfers", &transfer("2.00"), "m-1")
        .await?;
    assert_eq!((first.status, again.status), (200, 200));
    let refused = host
        .client
        .get(format!("{}/transfers/{}", host.base_url, uuid::Uuid::nil()))
        .bearer_auth("not-a-token")
        .send()
        .await?;
    assert_eq!(refused.status(), 401);

    assert_eq!(
        metric(&host, "transferd_guest_calls_total", &[accepted]).await?,
        2.0
    );
    let insufficient = r#"outcome="insufficient_funds""#;
    assert_eq!(
        metric(&host, "transferd_guest_calls_total", &[insufficient]).await?,
        1.0
    );
    assert_eq!(
        metric(&host, "transferd_idempotent_replays_total", &[]).await?,
        1.0
    );
    let invalid_token = r#"reason="invalid_token""#;
    assert_eq!(
        metric(&host, "transferd_auth_failures_total", &[invalid_token]).await?,
        1.0
    );
    let created = [r#"route="create_transfer""#, r#"status="200""#];
    assert_eq!(
        metric(&host, "transferd_http_requests_total", &created).await?,
        3.0
    );
    let timed = metric(
        &host,
        "transferd_http_request_duration_seconds_count",
        &[r#"route="create_transfer""#],
    )
    .await?;
    assert_eq!(timed, 4.0);
    Ok(())
}

#[tokio::test]
async fn traps_and_swaps_are_counted() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.guest_file = panicking_guest_file();
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    assert_eq!(host.transfer(transfer("1.00")).await?.status, 500);
    assert_eq!(
        metric(&host, "transferd_guest_calls_total", &[r#"outcome="trap""#]).await?,
        1.0
    );

    assert_eq!(
        metric(&host, "transferd_guest_swaps_total", &[]).await?,
        0.0
    );
    let bytes = std::fs::read(strict_guest_file())?;
    let uploaded = host
        .client
        .put(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .send()
        .await?;
    assert_eq!(uploaded.status(), 201);
    let version = uploaded.json::<serde_json::Value>().await?["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let activated = host
        .client
        .post(format!("{}/admin/guest/{version}/activate", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(activated.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&host, "transferd_guest_swaps_total", &[]).await? < 1.0 {
        assert!(Instant::now() < deadline, "no swap counted within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(host.transfer(transfer("1.00")).await?.status, 200);
    let accepted_by_new = [r#"outcome="accepted""#, version.as_str()];
    assert_eq!(
        metric(&host, "transferd_guest_calls_total", &accepted_by_new).await?,
        1.0
    );
    Ok(())
}
