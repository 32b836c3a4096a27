//! `GET /metrics` moves with what happens: accepted and refused transfers, replays, refused
//! tokens, guest traps and guest swaps each show in their counters.

use std::time::{Duration, Instant};

use serde_json::json;
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, Namespace, panicking_guest_file, strict_guest_file,
};

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
        host.metric("transferd_guest_calls_total", &[accepted])
            .await?,
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
        host.metric("transferd_guest_calls_total", &[accepted])
            .await?,
        2.0
    );
    let insufficient = r#"outcome="insufficient_funds""#;
    assert_eq!(
        host.metric("transferd_guest_calls_total", &[insufficient])
            .await?,
        1.0
    );
    assert_eq!(
        host.metric("transferd_idempotent_replays_total", &[])
            .await?,
        1.0
    );
    // Both accepted transfers were held by their first lookup, in its Redis call, and their
    // publishes needed no call of their own; the refused one had too little to hold.
    let mut ahead = Vec::new();
    for outcome in ["used", "replaced", "given_back"] {
        let label = format!(r#"outcome="{outcome}""#);
        ahead.push(
            host.metric("transferd_holds_ahead_total", &[&label])
                .await?,
        );
    }
    assert_eq!(ahead, vec![2.0, 0.0, 0.0]);
    let invalid_token = r#"reason="invalid_token""#;
    assert_eq!(
        host.metric("transferd_auth_failures_total", &[invalid_token])
            .await?,
        1.0
    );
    let created = [r#"route="create_transfer""#, r#"status="200""#];
    assert_eq!(
        host.metric("transferd_http_requests_total", &created)
            .await?,
        3.0
    );
    let timed = host
        .metric(
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
        host.metric("transferd_guest_calls_total", &[r#"outcome="trap""#])
            .await?,
        1.0
    );

    assert_eq!(host.metric("transferd_guest_swaps_total", &[]).await?, 0.0);
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
    host.activate_guest(&version).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.metric("transferd_guest_swaps_total", &[]).await? < 1.0 {
        assert!(Instant::now() < deadline, "no swap counted within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let serving = format!("guest_version=\"{version}\"");
    assert_eq!(
        host.metric("transferd_build_info", &[&serving]).await?,
        1.0,
        "the build info names the guest served after the swap"
    );
    assert_eq!(host.transfer(transfer("1.00")).await?.status, 200);
    let accepted_by_new = [r#"outcome="accepted""#, version.as_str()];
    assert_eq!(
        host.metric("transferd_guest_calls_total", &accepted_by_new)
            .await?,
        1.0
    );
    Ok(())
}

/// Waits up to 15 s for `metric` (summed over `labels`) to satisfy `wanted`; its last value.
async fn until_metric(
    host: &Host,
    name: &str,
    labels: &[&str],
    wanted: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = host.metric(name, labels).await?;
        if wanted(value) {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} {labels:?} stayed at {value} for 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn money_in_flight_settlement_and_dependencies_are_measured() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    // No worker at first: the accepted transfer stays held and unsettled.
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let api = Host::start_with(&namespace, options).await?;
    api.deposit(1, "USD", "10.00").await?;
    api.deposit(2, "USD", "1.00").await?;
    for _ in 0..3 {
        assert_eq!(api.transfer(transfer("1.25")).await?.status, 200);
    }

    for dependency in ["postgres", "redis", "broker"] {
        let label = format!(r#"dependency="{dependency}""#);
        until_metric(&api, "transferd_dependency_up", &[&label], |up| up == 1.0).await?;
    }
    until_metric(&api, "transferd_holds_outstanding", &[], |n| n == 3.0).await?;
    let usd = r#"currency="USD""#;
    until_metric(&api, "transferd_holds_outstanding_minor", &[usd], |m| {
        m == 375.0
    })
    .await?;
    until_metric(&api, "transferd_settlement_lag_messages", &[], |n| n == 3.0).await?;
    let produced = api
        .metric(
            "transferd_kafka_produce_duration_seconds_count",
            &[r#"topic="transfer_topic""#],
        )
        .await?;
    assert_eq!(produced, 3.0);
    let looked_up = api.metric("transferd_balance_lookups_total", &[]).await?;
    assert!(
        looked_up >= 1.0,
        "the guest's lookup is counted: {looked_up}"
    );

    // A worker settles them: each counted (the worker process adds a batch's count at once),
    // its batches measured, and the money in flight back to 0.
    let worker = Host::start(&namespace).await?;
    let completed = r#"status="completed""#;
    until_metric(
        &worker,
        "transferd_settled_transfers_total",
        &[completed],
        |n| n == 3.0,
    )
    .await?;
    let batches = worker
        .metric("transferd_settlement_batch_transfers_count", &[])
        .await?;
    let in_batches = worker
        .metric("transferd_settlement_batch_transfers_sum", &[])
        .await?;
    assert!((1.0..=3.0).contains(&batches), "{batches} batches");
    assert_eq!(in_batches, 3.0);
    until_metric(&worker, "transferd_settlement_lag_messages", &[], |n| {
        n == 0.0
    })
    .await?;
    until_metric(&worker, "transferd_holds_outstanding", &[], |n| n == 0.0).await?;
    until_metric(&worker, "transferd_holds_outstanding_minor", &[usd], |m| {
        m == 0.0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn shadow_runs_and_canary_share_are_measured() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let active = host.metric("transferd_guest_active_info", &[]).await?;
    assert_eq!(active, 1.0, "one version is active");

    let strict = host.upload_guest(&strict_guest_file()).await?;
    admin_post(&host, &format!("/admin/guest/{strict}/shadow"), None).await?;
    // Once the replica serves the shadow, a 150.00 transfer: accepted, and the strict
    // candidate would refuse it (a difference).
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.get_json("/admin/guest").await?["candidate"]["mode"] != "shadow" {
        anyhow::ensure!(Instant::now() < deadline, "the shadow was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.transfer(transfer("150.00")).await?.status, 200);
    let version = format!(r#"version="{strict}""#);
    until_metric(&host, "transferd_shadow_runs_total", &[&version], |n| {
        n >= 1.0
    })
    .await?;
    let differences = host
        .metric("transferd_shadow_differences_total", &[&version])
        .await?;
    assert!(differences >= 1.0, "the refused 150.00 differs");

    admin_post(
        &host,
        &format!("/admin/guest/{strict}/canary"),
        Some(json!({"percent": 30})),
    )
    .await?;
    until_metric(
        &host,
        "transferd_guest_canary_share",
        &[&version],
        |share| (share - 0.3).abs() < 1e-9,
    )
    .await?;
    Ok(())
}

/// An admin POST that must answer 200.
async fn admin_post(
    host: &Host,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let mut request = host
        .client
        .post(format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answered = request.send().await?;
    anyhow::ensure!(
        answered.status() == 200,
        "POST {path}: {}",
        answered.status()
    );
    Ok(())
}

/// With `TRANSFERD_ADMIN_LISTEN`, `/admin/*` and `/metrics` answer only on that address; the
/// API's address serves the API and the probes, and answers them 404. The metrics name the
/// build, the guest it serves and the process's own figures.
#[tokio::test]
async fn an_admin_address_takes_admin_and_metrics_off_the_api_address() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let admin_port = transferd_e2e::free_port();
    let mut options = HostOptions::new(&namespace);
    options.extra_env.push((
        "TRANSFERD_ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin_port}"),
    ));
    let host = Host::start_with(&namespace, options).await?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let status = |base: &str, path: &str| {
        let request = host
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    for path in ["/metrics", "/admin/guest", "/admin/status"] {
        assert_eq!(
            status(&host.base_url, path).await?,
            404,
            "API address {path}"
        );
        assert_eq!(status(&admin, path).await?, 200, "admin address {path}");
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            status(&host.base_url, path).await?,
            200,
            "API address {path}"
        );
    }
    assert_eq!(
        status(&admin, "/openapi.json").await?,
        404,
        "no API on the admin address"
    );
    assert_eq!(
        status(&admin, "/readyz").await?,
        200,
        "probes answer on both"
    );

    let metrics = host
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let build_info = metrics
        .lines()
        .find(|line| line.starts_with("transferd_build_info{") && line.ends_with(" 1"))
        .unwrap_or_default();
    assert!(build_info.contains("version=\""), "{build_info}");
    assert!(build_info.contains("commit=\""), "{build_info}");
    assert!(
        build_info.contains("guest_version=\"") && !build_info.contains("guest_version=\"none\""),
        "the served guest: {build_info}"
    );
    for process in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(process), "{process} in {metrics}");
    }
    Ok(())
}
