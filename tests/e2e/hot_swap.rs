//! Hot swap: uploads are checked before anything can activate them, and every replica
//! follows an activation and a rollback while serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, KAFKA_BROKERS, Namespace, clock_guest_file, consume,
    guest_file, panicking_guest_file, strict_guest_file,
};

async fn upload(host: &Host, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
    let response = host
        .client
        .put(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-guest-note", "test upload")
        .body(bytes)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn admin_post(host: &Host, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = host
        .client
        .post(format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn registry_status(host: &Host) -> anyhow::Result<Value> {
    let response = host
        .client
        .get(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /admin/guest answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// The same component with a custom section appended: identical behaviour, another version.
fn with_custom_section(mut bytes: Vec<u8>, text: &str) -> Vec<u8> {
    let name = b"transferd-test";
    let mut contents = vec![name.len() as u8];
    contents.extend_from_slice(name);
    contents.extend_from_slice(text.as_bytes());
    assert!(contents.len() < 128, "one LEB128 byte of size");
    bytes.push(0); // custom section id
    bytes.push(contents.len() as u8);
    bytes.extend_from_slice(&contents);
    bytes
}

fn transfer() -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": "0.01", "currency": "USD"})
}

async fn served_version(host: &Host) -> anyhow::Result<String> {
    let reply = host.transfer(transfer()).await?;
    anyhow::ensure!(
        reply.status == 200,
        "transfer failed: {} {}",
        reply.status,
        reply.body
    );
    Ok(reply
        .headers
        .get("x-guest-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

/// Polls both replicas until they serve `version`; returns how long that took.
async fn until_serving(
    replicas: &[&Host],
    version: &str,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for replica in replicas {
        while served_version(replica).await? != version {
            anyhow::ensure!(
                started.elapsed() < limit,
                "a replica did not switch to {version} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

#[tokio::test]
async fn uploads_failing_a_check_are_refused_with_the_reason_and_change_nothing()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not WebAssembly",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "empty component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not fit the transfer-logic world",
        ),
        (
            "trapping guest",
            std::fs::read(panicking_guest_file())?,
            "fails invariant case",
        ),
    ];
    for (what, bytes, reason) in cases {
        let (status, body) = upload(&host, bytes).await?;
        assert_eq!(status, 422, "{what}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(reason)),
            "{what}: {body}"
        );
    }
    let anonymous = host
        .client
        .put(format!("{}/admin/guest", host.base_url))
        .body(vec![0u8; 8])
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    let registry = registry_status(&host).await?;
    let started_with = healthz_version(&host).await?;
    assert_eq!(
        registry_versions(&registry),
        vec![started_with.clone()],
        "nothing was stored but the guest the replica started with"
    );
    assert_eq!(registry["active"], started_with.as_str());
    let (status, _) = admin_post(&host, "/admin/guest/rollback").await?;
    assert_eq!(status, 409, "nothing to roll back to");
    let (status, _) =
        admin_post(&host, &format!("/admin/guest/{}/activate", "0".repeat(64))).await?;
    assert_eq!(status, 404, "an unknown version cannot be activated");
    Ok(())
}

#[tokio::test]
async fn both_replicas_follow_activation_and_rollback_while_serving() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let first = Arc::new(Host::start(&namespace).await?);
    let second = Arc::new(Host::start(&namespace).await?);
    first.deposit(1, "USD", "1000000").await?;
    first.deposit(2, "USD", "1").await?;

    let original = std::fs::read(guest_file())?;
    let (status_a, body_a) = upload(&first, original.clone()).await?;
    assert_eq!(status_a, 201, "{body_a}");
    let version_a = body_a["version"].as_str().expect("version").to_string();
    assert!(
        body_a["invariant_cases_passed"]
            .as_u64()
            .is_some_and(|n| n >= 10)
    );
    let (status_b, body_b) = upload(&second, with_custom_section(original, "version b")).await?;
    assert_eq!(status_b, 201, "{body_b}");
    let version_b = body_b["version"].as_str().expect("version").to_string();
    assert_ne!(version_a, version_b);
    assert_eq!(
        admin_post(&first, &format!("/admin/guest/{version_a}/activate"))
            .await?
            .0,
        200
    );
    until_serving(&[&first, &second], &version_a, Duration::from_secs(15)).await?;

    // Load on both replicas across the swap: no request may fail because of it.
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for client in 0..8 {
        let host = Arc::clone(if client % 2 == 0 { &first } else { &second });
        let (running, failures, served) = (
            Arc::clone(&running),
            Arc::clone(&failures),
            Arc::clone(&served),
        );
        load.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                match host.transfer(transfer()).await {
                    Ok(reply) if reply.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        admin_post(&second, &format!("/admin/guest/{version_b}/activate"))
            .await?
            .0,
        200
    );
    let switched = until_serving(&[&first, &second], &version_b, Duration::from_secs(15)).await?;
    eprintln!("both replicas served {version_b} {switched:?} after activation");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed during the swap"
    );
    assert!(served.load(Ordering::Relaxed) > 50, "the load really ran");

    let (status, body) = admin_post(&first, "/admin/guest/rollback").await?;
    assert_eq!(
        (status, body["active"].as_str()),
        (200, Some(version_a.as_str()))
    );
    until_serving(&[&first, &second], &version_a, Duration::from_secs(15)).await?;

    let registry = registry_status(&first).await?;
    assert_eq!(registry["active"], version_a.as_str());
    let actions: Vec<&str> = registry["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["rollback", "activate", "activate", "activate"],
        "newest first; the oldest records the guest the first replica started with"
    );

    // The transfer log names the version that decided each transfer.
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        100_000,
        Duration::from_secs(5),
    )
    .await?;
    let versions: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.json["guest_version"].as_str())
        .collect();
    assert!(
        versions.contains(version_a.as_str()) && versions.contains(version_b.as_str()),
        "{versions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rule_change_reaches_both_replicas_and_rollback_restores_the_old_rule()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let first = Host::start(&namespace).await?;
    let second = Host::start(&namespace).await?;
    first.deposit(1, "USD", "10000").await?;
    first.deposit(2, "USD", "1").await?;
    let large = json!({"sender_id": 1, "receiver_id": 2, "amount": "150.00", "currency": "USD"});
    for replica in [&first, &second] {
        assert_eq!(
            replica.transfer(large.clone()).await?.status,
            200,
            "150.00 is within the standard limit"
        );
    }

    let (status, standard) = upload(&first, std::fs::read(guest_file())?).await?;
    assert_eq!(status, 201, "{standard}");
    let (status, strict) = upload(&first, std::fs::read(strict_guest_file())?).await?;
    assert_eq!(
        status, 201,
        "a stricter rule still keeps every invariant: {strict}"
    );
    let (standard, strict) = (
        standard["version"].as_str().expect("v"),
        strict["version"].as_str().expect("v"),
    );
    assert_eq!(
        admin_post(&first, &format!("/admin/guest/{standard}/activate"))
            .await?
            .0,
        200
    );
    until_serving(&[&first, &second], standard, Duration::from_secs(15)).await?;
    assert_eq!(
        admin_post(&second, &format!("/admin/guest/{strict}/activate"))
            .await?
            .0,
        200
    );
    until_serving(&[&first, &second], strict, Duration::from_secs(15)).await?;
    for replica in [&first, &second] {
        let refused = replica.transfer(large.clone()).await?;
        assert_eq!(
            refused.status, 422,
            "the new rule applies: {}",
            refused.body
        );
        assert_eq!(
            refused.problems(),
            vec![("amount".to_string(), "less_than_equal".to_string())]
        );
    }

    assert_eq!(admin_post(&first, "/admin/guest/rollback").await?.0, 200);
    until_serving(&[&first, &second], standard, Duration::from_secs(15)).await?;
    for replica in [&first, &second] {
        assert_eq!(
            replica.transfer(large.clone()).await?.status,
            200,
            "rollback restores the old rule"
        );
    }
    Ok(())
}

/// Uploads the standard and the strict guest and activates the standard one.
async fn standard_active_strict_uploaded(host: &Host) -> anyhow::Result<(String, String)> {
    let (status, standard) = upload(host, std::fs::read(guest_file())?).await?;
    anyhow::ensure!(status == 201, "{standard}");
    let (status, strict) = upload(host, std::fs::read(strict_guest_file())?).await?;
    anyhow::ensure!(status == 201, "{strict}");
    let standard = standard["version"].as_str().unwrap_or_default().to_string();
    let strict = strict["version"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        admin_post(host, &format!("/admin/guest/{standard}/activate"))
            .await?
            .0
            == 200
    );
    until_serving(&[host], &standard, Duration::from_secs(15)).await?;
    Ok((standard, strict))
}

#[tokio::test]
async fn a_canary_serves_about_its_share() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000000").await?;
    host.deposit(2, "USD", "1").await?;
    let (standard, strict) = standard_active_strict_uploaded(&host).await?;
    let response = host
        .client
        .post(format!("{}/admin/guest/{strict}/canary", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"percent": 30}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let bad = host
        .client
        .post(format!("{}/admin/guest/{strict}/canary", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"percent": 101}))
        .send()
        .await?;
    assert_eq!(bad.status(), 422);
    // The follower picks the canary up; then 400 transfers of 150.00 (over the strict limit).
    let deadline = Instant::now() + Duration::from_secs(15);
    while registry_status(&host).await?["candidate"]["version"] != strict.as_str() {
        anyhow::ensure!(Instant::now() < deadline, "the canary was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let large = json!({"sender_id": 1, "receiver_id": 2, "amount": "150.00", "currency": "USD"});
    let (mut by_strict, mut by_standard) = (0, 0);
    for _ in 0..400 {
        let reply = host.transfer(large.clone()).await?;
        let version = reply
            .headers
            .get("x-guest-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match (reply.status, version) {
            (422, v) if v == strict => by_strict += 1,
            (200, v) if v == standard => by_standard += 1,
            (status, version) => panic!("unexpected {status} from {version}: {}", reply.body),
        }
    }
    eprintln!("canary at 30%: {by_strict} of 400 served by the candidate");
    assert!(
        (80..=160).contains(&by_strict),
        "about 30% of 400 ({by_strict}, {by_standard})"
    );
    Ok(())
}

#[tokio::test]
async fn a_shadow_counts_a_known_difference_and_publishes_nothing() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000000").await?;
    host.deposit(2, "USD", "1").await?;
    let (_standard, strict) = standard_active_strict_uploaded(&host).await?;
    assert_eq!(
        admin_post(&host, &format!("/admin/guest/{strict}/shadow"))
            .await?
            .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while registry_status(&host).await?["candidate"]["mode"] != "shadow" {
        anyhow::ensure!(Instant::now() < deadline, "the shadow was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 150.00: the active version accepts, the strict candidate would refuse. 50.00: both accept.
    for amount in ["150.00", "50.00"] {
        let reply = host
            .transfer(
                json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"}),
            )
            .await?;
        assert_eq!(
            reply.status, 200,
            "the active version decides: {}",
            reply.body
        );
    }
    let stats = host.shadow_report(&strict, 2).await?;
    assert_eq!(stats["replica_stats"]["runs"], 2, "{stats}");
    assert_eq!(stats["replica_stats"]["differences"], 1, "{stats}");
    let difference = &stats["replica_stats"]["recent_differences"][0];
    assert!(difference["active"]["ok"].is_object(), "{difference}");
    assert_eq!(
        difference["candidate"]["err"]["invalid"][0]["code"], "less_than_equal",
        "{difference}"
    );

    // Besides the probes of 0.01, exactly the two transfers, both from the active version.
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        100,
        Duration::from_secs(5),
    )
    .await?;
    let mut amounts: Vec<i64> = messages
        .iter()
        .filter_map(|m| m.json["amount_minor"].as_i64())
        .filter(|amount| *amount != 1)
        .collect();
    amounts.sort();
    assert_eq!(
        amounts,
        vec![5_000, 15_000],
        "the candidate published nothing"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.json["guest_version"] != strict.as_str())
    );
    Ok(())
}

/// `transferd guest ARGS` against `host`; returns (success, stdout).
fn guest_cli(host: &Host, arguments: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = std::process::Command::new(transferd_e2e::transferd_binary())
        .arg("guest")
        .args(arguments)
        .env("TRANSFERD_URL", &host.base_url)
        .env("TRANSFERD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()?;
    Ok((output.status.success(), String::from_utf8(output.stdout)?))
}

#[tokio::test]
async fn the_cli_uploads_activates_rolls_back_and_reports() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000").await?;
    host.deposit(2, "USD", "1").await?;
    let standard = guest_file();
    let strict = strict_guest_file();

    let (ok, out) = guest_cli(
        &host,
        &[
            "upload",
            standard.to_str().unwrap_or_default(),
            "--note",
            "standard",
        ],
    )?;
    assert!(ok, "{out}");
    let standard_version = serde_json::from_str::<Value>(&out)?["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (ok, out) = guest_cli(&host, &["upload", strict.to_str().unwrap_or_default()])?;
    assert!(ok, "{out}");
    let strict_version = serde_json::from_str::<Value>(&out)?["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (ok, out) = guest_cli(&host, &["upload", "/dev/null"])?;
    assert!(!ok, "an empty file is refused: {out}");

    assert!(guest_cli(&host, &["activate", &standard_version])?.0);
    assert!(guest_cli(&host, &["activate", &strict_version])?.0);
    until_serving(&[&host], &strict_version, Duration::from_secs(15)).await?;
    let (ok, out) = guest_cli(&host, &["rollback"])?;
    assert!(ok && out.contains(&standard_version), "{out}");
    until_serving(&[&host], &standard_version, Duration::from_secs(15)).await?;
    let (ok, out) = guest_cli(&host, &["status"])?;
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(status["active"], standard_version.as_str());
    assert_eq!(status["versions"].as_array().map(Vec::len), Some(2));
    assert!(
        !guest_cli(&host, &["activate", "nonexistent"])?.0,
        "an unknown version fails the command"
    );
    Ok(())
}

#[tokio::test]
async fn watch_reloads_a_changed_guest_file_and_keeps_the_old_one_on_failure() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let file = std::env::temp_dir().join(format!("transferd-watch-{}.wasm", namespace.id));
    std::fs::copy(guest_file(), &file)?;
    let mut options = transferd_e2e::HostOptions::new(&namespace);
    options.guest_file = file.clone();
    options
        .extra_env
        .push(("TRANSFERD_GUEST_WATCH".into(), "true".into()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "1000").await?;
    host.deposit(2, "USD", "1").await?;
    let first = served_version(&host).await?;

    // Replace the file the way an editor or build does: write aside, then rename over it.
    let aside = file.with_extension("new");
    std::fs::copy(strict_guest_file(), &aside)?;
    std::fs::rename(&aside, &file)?;
    let strict = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let version = served_version(&host).await?;
            if version != first {
                break version;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the changed file was not reloaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    std::fs::write(&file, b"not a component")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        served_version(&host).await?,
        strict,
        "a broken file keeps the previous version"
    );
    std::fs::remove_file(&file)?;
    Ok(())
}

#[tokio::test]
async fn a_replica_that_starts_later_serves_the_active_version_from_a_compiled_cache()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let cache = std::env::temp_dir().join(format!("transferd-compiled-{}", namespace.id));
    let mut options = transferd_e2e::HostOptions::new(&namespace);
    options.extra_env.push((
        "TRANSFERD_GUEST_CACHE_DIR".into(),
        cache.display().to_string(),
    ));
    let first = Host::start_with(&namespace, options).await?;
    first.deposit(1, "USD", "1000").await?;
    first.deposit(2, "USD", "1").await?;
    let (_standard, strict) = standard_active_strict_uploaded(&first).await?;
    assert_eq!(
        admin_post(&first, &format!("/admin/guest/{strict}/activate"))
            .await?
            .0,
        200
    );
    until_serving(&[&first], &strict, Duration::from_secs(15)).await?;
    let cached_files = walk_files(&cache);
    assert!(
        cached_files > 0,
        "compiled guests were written to the cache"
    );

    // A new replica, started with the standard guest file, serves the registry's version.
    let mut options = transferd_e2e::HostOptions::new(&namespace);
    options.extra_env.push((
        "TRANSFERD_GUEST_CACHE_DIR".into(),
        cache.display().to_string(),
    ));
    let late = Host::start_with(&namespace, options).await?;
    assert_eq!(
        served_version(&late).await?,
        strict,
        "the active version, not the file"
    );
    let health = late
        .client
        .get(format!("{}/healthz", late.base_url))
        .send()
        .await?;
    assert_eq!(
        health
            .headers()
            .get("x-guest-version")
            .and_then(|v| v.to_str().ok()),
        Some(strict.as_str())
    );
    assert_eq!(
        walk_files(&cache),
        cached_files,
        "nothing was compiled again"
    );
    std::fs::remove_dir_all(&cache)?;
    Ok(())
}

/// Files below `directory`, at any depth.
fn walk_files(directory: &std::path::Path) -> usize {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() { walk_files(&path) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn an_overlong_note_is_refused_before_anything_is_stored() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let response = host
        .client
        .put(format!("{}/admin/guest", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-guest-note", "n".repeat(501))
        .body(std::fs::read(guest_file())?)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let registry = registry_status(&host).await?;
    assert_eq!(
        registry_versions(&registry).len(),
        1,
        "only the guest the replica started with: {registry}"
    );
    Ok(())
}

/// The version a replica names on a response that no guest decided.
async fn healthz_version(host: &Host) -> anyhow::Result<String> {
    let response = host
        .client
        .get(format!("{}/healthz", host.base_url))
        .send()
        .await?;
    Ok(response
        .headers()
        .get("x-guest-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

/// The versions the registry lists.
fn registry_versions(registry: &Value) -> Vec<String> {
    registry["versions"]
        .as_array()
        .map(|versions| {
            versions
                .iter()
                .filter_map(|version| version["version"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_first_rollback_on_a_fresh_install_returns_to_the_guest_file() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "10000").await?;
    host.deposit(2, "USD", "1").await?;
    let started_with = served_version(&host).await?;
    let registry = registry_status(&host).await?;
    assert_eq!(
        registry["active"],
        started_with.as_str(),
        "the guest file is the registry's first active version: {registry}"
    );

    let (ok, out) = guest_cli(
        &host,
        &["upload", strict_guest_file().to_str().unwrap_or_default()],
    )?;
    assert!(ok, "{out}");
    let strict = serde_json::from_str::<Value>(&out)?["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(guest_cli(&host, &["activate", &strict])?.0);
    until_serving(&[&host], &strict, Duration::from_secs(15)).await?;
    let large = json!({"sender_id": 1, "receiver_id": 2, "amount": "150.00", "currency": "USD"});
    assert_eq!(
        host.transfer(large.clone()).await?.status,
        422,
        "strict rule"
    );

    let (ok, out) = guest_cli(&host, &["rollback"])?;
    assert!(
        ok && out.contains(&started_with),
        "the first rollback returns to the guest file: {out}"
    );
    until_serving(&[&host], &started_with, Duration::from_secs(15)).await?;
    let reply = host.transfer(large).await?;
    assert_eq!(reply.status, 200, "the old rule is back: {}", reply.body);

    // A replica started later with the same file changes nothing in the registry.
    let second = Host::start(&namespace).await?;
    assert_eq!(served_version(&second).await?, started_with);
    let registry = registry_status(&second).await?;
    assert_eq!(registry_versions(&registry).len(), 2, "{registry}");
    assert_eq!(
        registry["history"].as_array().map(Vec::len),
        Some(3),
        "start-up, activation, rollback: {registry}"
    );
    Ok(())
}

/// The clock test guest refuses whenever its wall clock is not the request's: it passes the
/// upload check and serves live transfers only because every call sees the request's time.
/// The registry publishes what its invariant cases used beside the budget, and a call that
/// spends its budget answers 500 having published nothing.
#[tokio::test]
async fn a_guest_that_reads_the_clock_decides_live_as_its_upload_check_did() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100").await?;
    host.deposit(2, "USD", "1").await?;
    let (status, uploaded) = upload(&host, std::fs::read(clock_guest_file())?).await?;
    assert_eq!(status, 201, "{uploaded}");
    let (fuel, budget) = (&uploaded["max_vector_fuel"], &uploaded["fuel_budget"]);
    assert!(
        fuel.as_u64() > Some(0) && fuel.as_u64() <= budget.as_u64(),
        "{uploaded}"
    );
    let version = uploaded["version"].as_str().expect("a version").to_string();
    let (status, _) = admin_post(&host, &format!("/admin/guest/{version}/activate")).await?;
    assert_eq!(status, 200);
    until_serving(&[&host], &version, Duration::from_secs(15)).await?;

    let live = json!({"sender_id": 1, "receiver_id": 2, "amount": "2.50", "currency": "USD"});
    let reply = host.transfer(live).await?;
    assert_eq!(reply.status, 200, "accepted live: {}", reply.body);
    let id: uuid::Uuid = reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let burn = json!({"sender_id": 1, "receiver_id": 2, "amount": "3.00", "currency": "USD",
        "description": "clock:burn"});
    let reply = host.transfer(burn).await?;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.to_string().contains("fuel"), "{}", reply.body);

    let registry = registry_status(&host).await?;
    let listed = registry["versions"]
        .as_array()
        .and_then(|versions| versions.iter().find(|v| v["version"] == version.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["max_vector_fuel"], *fuel, "{listed}");
    assert_eq!(listed["fuel_budget"], *budget, "{listed}");
    assert_eq!(listed["memory_limit_bytes"], 64 * 1024 * 1024, "{listed}");

    let settled = namespace
        .wait_ids_settled(&[id], Duration::from_secs(30))
        .await?;
    assert!(settled.contains(&id), "the live transfer settles");
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        100,
        Duration::from_secs(5),
    )
    .await?;
    let amounts: Vec<i64> = messages
        .iter()
        .filter_map(|m| m.json["amount_minor"].as_i64())
        .filter(|amount| *amount != 1)
        .collect();
    assert_eq!(amounts, vec![250], "the burning call published nothing");
    Ok(())
}

/// An upload whose invariant cases need more fuel than the replica's budget is refused, naming
/// the case, what it used and the budget.
#[tokio::test]
async fn an_upload_over_the_fuel_budget_is_refused_with_the_figures() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.extra_env = vec![("TRANSFERD_GUEST_FUEL_BUDGET".into(), "1000".into())];
    let host = Host::start_with(&namespace, options).await?;
    let (status, body) = upload(&host, std::fs::read(guest_file())?).await?;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("too much fuel") && detail.contains("budget of 1000"),
        "{detail}"
    );
    Ok(())
}
