//! The status page at `/admin/status`, in Debian's headless Chromium (driven by
//! `tests/browser/status.mjs`, which `scripts/test.sh` installs): it asks a browser for
//! credentials, shows the active version as a short id (the whole one in its title), the
//! dependencies, the worker's role, charts of the last 15 minutes and money held as money, and
//! refreshes itself as transfers arrive. With `TRANSFERD_STATUS_SCREENSHOT=path` it saves a screenshot
//! (the one in `docs/` came from here).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::{ADMIN_TOKEN, Host, HostOptions, Namespace, auth, strict_guest_file};

fn browser_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/status.mjs")
}

/// Runs the browser script (at most 60 s); what it printed, parsed.
async fn run_browser(host: &Host, screenshot: &str, mode: &[&str]) -> anyhow::Result<Value> {
    let script = browser_script();
    anyhow::ensure!(
        script.with_file_name("node_modules").exists(),
        "tests/browser/node_modules is missing: run tests/browser/install.sh"
    );
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .args([host.base_url.as_str(), ADMIN_TOKEN, screenshot])
        .args(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn transfer(amount: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
}

async fn status_of(request: reqwest::RequestBuilder) -> anyhow::Result<u16> {
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test]
async fn the_page_asks_a_browser_to_log_in_and_only_admins_get_it() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let url = format!("{}/admin/status", host.base_url);
    let refused = host.client.get(&url).send().await?;
    assert_eq!(refused.status(), 401);
    let challenges: Vec<String> = refused
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "a browser is asked for credentials: {challenges:?}"
    );
    let as_user = host.client.get(&url).bearer_auth(auth::user_token(1));
    assert_eq!(status_of(as_user).await?, 403);
    let wrong = host
        .client
        .get(&url)
        .basic_auth("oncall", Some("wrong-password"));
    assert_eq!(status_of(wrong).await?, 401);
    let page = host
        .client
        .get(&url)
        .basic_auth("oncall", Some(ADMIN_TOKEN))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-type"].to_str()?,
        "text/html; charset=utf-8"
    );
    assert!(page.headers().contains_key("content-security-policy"));
    let script = host
        .client
        .get(format!("{}/admin/status.js", host.base_url))
        .send()
        .await?;
    assert_eq!(script.status(), 401, "the script is behind the same gate");
    Ok(())
}

#[tokio::test]
async fn the_page_shows_the_service_and_refreshes_itself_in_chromium() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "1000.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    assert_eq!(host.transfer(transfer("10.00")).await?.status, 200);
    assert_eq!(host.transfer(transfer("99999.00")).await?.status, 400);
    shadow_the_strict_guest(&host).await?;

    let first = run_browser(&host, "", &["first"]).await?;
    let serving = host.get_json("/admin/guest").await?["serving"].clone();
    let serving = serving.as_str().unwrap_or_default();
    assert_eq!(
        first["active_title"], serving,
        "the whole id on hover: {first}"
    );
    assert_eq!(
        first["active"],
        format!("{}…", &serving[..12]),
        "the active version as a short id: {first}"
    );
    assert!(
        first["copy_label"]
            .as_str()
            .is_some_and(|label| label.ends_with(serving)),
        "a button copies the whole id: {first}"
    );
    assert_eq!(first["readiness"], "ok", "{first}");
    let transfers_seen = first["transfer_requests"].as_u64().unwrap_or(0);
    assert!(transfers_seen >= 2, "transfer requests counted: {first}");
    let dependencies = first["dependencies"].to_string();
    for dependency in ["postgres", "redis", "broker", "guest"] {
        assert!(
            dependencies.contains(&format!("[\"{dependency}\",\"up\"")),
            "{dependency} shown up: {dependencies}"
        );
    }

    // The page, left open, picks up transfers made after it loaded.
    let screenshot = std::env::var("TRANSFERD_STATUS_SCREENSHOT").unwrap_or_default();
    let after = transfers_seen.to_string();
    let mode = ["moved", after.as_str()];
    let watching = run_browser(&host, &screenshot, &mode);
    let traffic = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for amount in ["150.00", "2.00", "3.00", "4.00"] {
            assert_eq!(host.transfer(transfer(amount)).await?.status, 200);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        anyhow::Ok(())
    };
    let (seen, made) = tokio::join!(watching, traffic);
    made?;
    let seen = seen?;
    assert!(
        seen["transfer_requests"].as_u64().unwrap_or(0) > transfers_seen,
        "the count moved without a reload: {seen}"
    );
    assert_ne!(
        seen["candidate"], "none",
        "the shadow candidate is shown: {seen}"
    );
    assert_eq!(seen["worker"], "active", "serve's worker settles: {seen}");
    assert_eq!(seen["quarantined"], "0", "the quarantine's count: {seen}");
    let requests = &seen["charts"]["chart-requests"];
    assert!(
        requests["points"].as_u64().unwrap_or(0) >= 1
            && requests["max"].as_f64().unwrap_or(0.0) > 0.0,
        "the request chart draws the requests' rate: {seen}"
    );
    for chart in [
        "chart-accepted",
        "chart-settled",
        "chart-lag",
        "chart-refused",
    ] {
        assert!(
            seen["charts"][chart]["points"].as_u64().unwrap_or(0) >= 1,
            "{chart} is drawn: {seen}"
        );
    }
    Ok(())
}

/// Money held shows as money in each currency's own decimals, and a replica that runs no
/// worker says so (its holds stay: nothing settles them).
#[tokio::test]
async fn the_page_shows_money_held_as_money() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.run_worker = false;
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    for amount in ["10.00", "2.50"] {
        assert_eq!(host.transfer(transfer(amount)).await?.status, 200);
    }
    let seen = run_browser(&host, "", &["held", "12.50 USD"]).await?;
    assert_eq!(seen["held"], "12.50 USD", "{seen}");
    assert_eq!(seen["worker"], "not run here", "{seen}");
    Ok(())
}

/// Uploads the strict test guest and runs it as a shadow, so the page has a candidate.
async fn shadow_the_strict_guest(host: &Host) -> anyhow::Result<()> {
    let version = host.upload_guest(&strict_guest_file()).await?;
    let shadow = host
        .client
        .post(format!("{}/admin/guest/{version}/shadow", host.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(shadow.status() == 200, "shadow: {}", shadow.status());
    Ok(())
}
