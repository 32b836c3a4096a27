//! Authentication and authorisation through the real binary: who may call what, what a refusal
//! looks like (401/403/404 and the bearer challenge), that a refused transfer holds and
//! publishes nothing, the unauthenticated mode, and `transferd token`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use transferd_e2e::auth::{self, JWT_SECRET, admin_token, user_token};
use transferd_e2e::{
    ADMIN_TOKEN, Host, HostOptions, KAFKA_BROKERS, Namespace, Reply, consume, strict_guest_file,
};

fn transfer(sender_id: i64, receiver_id: i64, amount: &str) -> Value {
    json!({"sender_id": sender_id, "receiver_id": receiver_id, "amount": amount, "currency": "USD"})
}

/// A request with an optional bearer token, read whole.
async fn call(
    host: &Host,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Reply> {
    let mut request = host
        .client
        .request(method, format!("{}{path}", host.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    Reply::read(request.send().await?).await
}

async fn get(host: &Host, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
    call(host, reqwest::Method::GET, path, token, None).await
}

async fn post(host: &Host, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Reply> {
    call(host, reqwest::Method::POST, path, token, Some(body)).await
}

fn challenge(reply: &Reply) -> String {
    reply
        .headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Asserts a 401 with a bearer challenge naming `error`.
fn assert_unauthenticated(reply: &Reply, error: &str, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.body);
    let challenge = challenge(reply);
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(&format!("error=\"{error}\"")),
        "{what}: {challenge}"
    );
    assert_eq!(reply.body["code"], "unauthorized", "{what}: {}", reply.body);
    assert!(reply.body["detail"].is_string(), "{what}: {}", reply.body);
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_with_a_bearer_challenge() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    // Debug logging, to show that not even a refused token reaches the log.
    options
        .extra_env
        .push(("TRANSFERD_LOG".into(), "debug".into()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "50.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let body = transfer(1, 2, "1.00");

    let missing = post(&host, "/transfers", None, &body).await?;
    assert_unauthenticated(&missing, "invalid_request", "no token");
    let not_bearer = host
        .client
        .post(format!("{}/transfers", host.base_url))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&body)
        .send()
        .await?;
    assert_eq!(not_bearer.status(), 401, "another scheme");

    let garbage = "garbage-not-a-jwt-5f1e";
    let refused = post(&host, "/transfers", Some(garbage), &body).await?;
    assert_unauthenticated(&refused, "invalid_token", "garbage");

    let mut expired_claims = auth::claims(1, false);
    let now = expired_claims["iat"].as_i64().unwrap_or_default();
    expired_claims["exp"] = json!(now - 3_600);
    let expired = auth::sign(&expired_claims);
    let refused = post(&host, "/transfers", Some(&expired), &body).await?;
    assert_unauthenticated(&refused, "invalid_token", "expired");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("expired")),
        "{}",
        refused.body
    );

    let mut early_claims = auth::claims(1, false);
    early_claims["nbf"] = json!(now + 3_600);
    let early = post(&host, "/transfers", Some(&auth::sign(&early_claims)), &body).await?;
    assert_unauthenticated(&early, "invalid_token", "not valid before an hour from now");

    let forged = auth::sign_with(
        &auth::claims(1, true),
        b"not-the-server-secret-but-32-bytes-long",
    );
    let refused = post(&host, "/transfers", Some(&forged), &body).await?;
    assert_unauthenticated(&refused, "invalid_token", "another key");
    let refused = get(&host, "/accounts/1/balances", Some(&forged)).await?;
    assert_unauthenticated(&refused, "invalid_token", "another key, balances");
    let refused = get(&host, "/accounts/1/balances", None).await?;
    assert_unauthenticated(&refused, "invalid_request", "no token, balances");

    // Nothing was held or settled for any refused request, and the one valid token works.
    assert_eq!(namespace.holds().await?, vec![]);
    let accepted = post(&host, "/transfers", Some(&user_token(1)), &body).await?;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    // Health stays open to probes.
    assert_eq!(get(&host, "/healthz", None).await?.status, 200);

    let log = host.log();
    for secret in [garbage, expired.as_str(), forged.as_str(), JWT_SECRET] {
        assert!(!log.contains(secret), "the log shows a token or the secret");
    }
    Ok(())
}

#[tokio::test]
async fn a_transfer_from_someone_elses_account_is_403_and_holds_and_publishes_nothing()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "5.00").await?;

    let stolen = post(
        &host,
        "/transfers",
        Some(&user_token(2)),
        &transfer(1, 2, "60.00"),
    )
    .await?;
    assert_eq!(stolen.status, 403, "{}", stolen.body);
    assert_eq!(stolen.body["code"], "forbidden");
    assert!(
        stolen.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("may not send money from account 1")),
        "{}",
        stolen.body
    );
    // Neither an admin's token moves someone else's money.
    let by_admin = post(
        &host,
        "/transfers",
        Some(&admin_token()),
        &transfer(1, 2, "60.00"),
    )
    .await?;
    assert_eq!(by_admin.status, 403, "{}", by_admin.body);

    assert_eq!(namespace.holds().await?, vec![], "nothing held");
    let balances = host.get_json("/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["available_minor"], 10_000);
    assert_eq!(balances["balances"][0]["balance_minor"], 10_000);

    // The owner's transfer goes through; it is the only message in the log.
    let own = post(
        &host,
        "/transfers",
        Some(&user_token(1)),
        &transfer(1, 2, "1.00"),
    )
    .await?;
    assert_eq!(own.status, 200, "{}", own.body);
    let messages = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(8),
    )
    .await?;
    assert_eq!(messages.len(), 1, "only the owner's transfer was published");
    assert_eq!(
        messages[0].json["transaction_id"], own.body["transaction_id"],
        "{}",
        messages[0].payload
    );
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(20)).await?, 1);
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(9_900));
    Ok(())
}

#[tokio::test]
async fn transfers_and_balances_are_shown_only_to_their_parties_and_admins() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    for user in [1, 2, 3] {
        host.deposit(user, "USD", "10.00").await?;
    }
    let sent = post(
        &host,
        "/transfers",
        Some(&user_token(1)),
        &transfer(1, 2, "2.00"),
    )
    .await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let id = sent.body["transaction_id"].as_str().unwrap_or_default();
    let path = format!("/transfers/{id}");

    for (who, token) in [
        ("sender", user_token(1)),
        ("receiver", user_token(2)),
        ("admin", admin_token()),
    ] {
        let shown = get(&host, &path, Some(&token)).await?;
        assert_eq!(shown.status, 200, "{who}: {}", shown.body);
        assert_eq!(shown.body["transaction_id"], id, "{who}");
    }
    // A stranger hears exactly what they would for an id nobody accepted.
    let hidden = get(&host, &path, Some(&user_token(3))).await?;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    let unknown_id = uuid::Uuid::now_v7();
    let unknown = get(
        &host,
        &format!("/transfers/{unknown_id}"),
        Some(&user_token(3)),
    )
    .await?;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        hidden.body["detail"].as_str().map(|d| d.replace(id, "ID")),
        unknown.body["detail"]
            .as_str()
            .map(|d| d.replace(&unknown_id.to_string(), "ID")),
    );
    // Settled, the same rule.
    namespace.wait_settled(1, Duration::from_secs(20)).await?;
    assert_eq!(get(&host, &path, Some(&user_token(3))).await?.status, 404);
    assert_eq!(get(&host, &path, Some(&user_token(2))).await?.status, 200);

    let own = get(&host, "/accounts/1/balances", Some(&user_token(1))).await?;
    assert_eq!(own.status, 200, "{}", own.body);
    let admin_view = get(&host, "/accounts/1/balances", Some(&admin_token())).await?;
    assert_eq!(admin_view.status, 200, "{}", admin_view.body);
    let hidden = get(&host, "/accounts/1/balances", Some(&user_token(3))).await?;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    let nobody = get(&host, "/accounts/424242/balances", Some(&admin_token())).await?;
    assert_eq!(nobody.status, 404);
    assert_eq!(
        hidden.body["detail"].as_str().map(|d| d.replace('1', "N")),
        nobody.body["detail"]
            .as_str()
            .map(|d| d.replace("424242", "N")),
        "the same answer as for a user without accounts"
    );
    Ok(())
}

#[tokio::test]
async fn admin_routes_refuse_user_tokens_and_accept_admin_tokens() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let deposit = json!({"user_id": 5, "currency": "USD", "amount": "10.00"});

    let as_user = post(&host, "/admin/deposits", Some(&user_token(5)), &deposit).await?;
    assert_eq!(as_user.status, 403, "{}", as_user.body);
    assert!(
        challenge(&as_user).contains("error=\"insufficient_scope\""),
        "{}",
        challenge(&as_user)
    );
    let status_as_user = get(&host, "/admin/guest", Some(&user_token(5))).await?;
    assert_eq!(status_as_user.status, 403);
    let anonymous = get(&host, "/admin/guest", None).await?;
    assert_unauthenticated(&anonymous, "invalid_request", "admin without a token");
    assert_eq!(
        namespace.ledger_balance(5, "USD").await?,
        None,
        "nothing deposited"
    );

    let as_admin = post(&host, "/admin/deposits", Some(&admin_token()), &deposit).await?;
    assert_eq!(as_admin.status, 200, "{}", as_admin.body);
    let with_static = post(&host, "/admin/deposits", Some(ADMIN_TOKEN), &deposit).await?;
    assert_eq!(with_static.status, 200, "{}", with_static.body);
    assert_eq!(namespace.ledger_balance(5, "USD").await?, Some(2_000));
    let status = get(&host, "/admin/guest", Some(&admin_token())).await?;
    assert_eq!(status.status, 200, "{}", status.body);
    // The static token is for /admin only.
    let static_elsewhere = get(&host, "/accounts/5/balances", Some(ADMIN_TOKEN)).await?;
    assert_unauthenticated(
        &static_elsewhere,
        "invalid_token",
        "static token on a user route",
    );
    Ok(())
}

/// A page of another site.
const FOREIGN_ORIGIN: &str = "https://attacker.example";

/// What a page of another site can make an admin's browser send once the admin has opened the
/// status page: a form posted to `path`, with the Basic credentials the browser cached for
/// this service.
async fn cross_site_form(host: &Host, path: &str) -> anyhow::Result<Reply> {
    let response = host
        .client
        .post(format!("{}{path}", host.base_url))
        .basic_auth("oncall", Some(ADMIN_TOKEN))
        .header("origin", FOREIGN_ORIGIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user_id=5&currency=USD&amount=10.00")
        .send()
        .await?;
    Reply::read(response).await
}

/// `POST path` with the static admin token and, when given, an `Origin`.
async fn post_from(host: &Host, path: &str, origin: Option<&str>) -> anyhow::Result<Reply> {
    let mut request = host
        .client
        .post(format!("{}{path}", host.base_url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    Reply::read(request.send().await?).await
}

/// The registry's active guest version.
async fn active(host: &Host) -> anyhow::Result<Value> {
    Ok(host.get_json("/admin/guest").await?["active"].clone())
}

#[tokio::test]
async fn a_page_of_another_site_cannot_make_an_admins_browser_change_anything() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let first = active(&host).await?;
    assert!(first.is_string(), "a version is active: {first}");
    let second = host.upload_guest(&strict_guest_file()).await?;
    let activate = format!("/admin/guest/{second}/activate");

    // The admin's browser, with the status page's credentials cached, posts another site's
    // form: refused, nothing activated, rolled back or deposited.
    for path in [
        activate.as_str(),
        "/admin/guest/rollback",
        "/admin/deposits",
    ] {
        let forged = cross_site_form(&host, path).await?;
        assert!(
            [401, 403].contains(&forged.status),
            "{path}: {} {}",
            forged.status,
            forged.body
        );
        assert_eq!(active(&host).await?, first, "{path}: nothing activated");
    }
    assert_eq!(namespace.ledger_balance(5, "USD").await?, None);
    // Basic credentials do not open a change even without an Origin; no Basic challenge
    // makes a browser offer them.
    let basic = host
        .client
        .post(format!("{}{activate}", host.base_url))
        .basic_auth("oncall", Some(ADMIN_TOKEN))
        .send()
        .await?;
    assert_eq!(basic.status(), 401);
    let challenges: Vec<_> = basic.headers().get_all("www-authenticate").iter().collect();
    assert!(
        challenges
            .iter()
            .all(|c| !c.as_bytes().starts_with(b"Basic")),
        "{challenges:?}"
    );
    // A bearer token from a foreign origin is refused too.
    let foreign = post_from(&host, &activate, Some(FOREIGN_ORIGIN)).await?;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(foreign.body["code"], "forbidden");
    assert_eq!(active(&host).await?, first);

    // The CLI's way, a bearer token and no Origin, works.
    let activated = post_from(&host, &activate, None).await?;
    assert_eq!(activated.status, 200, "{}", activated.body);
    assert_eq!(active(&host).await?, second);
    for refused in [
        cross_site_form(&host, "/admin/guest/rollback").await?,
        post_from(&host, "/admin/guest/rollback", Some(FOREIGN_ORIGIN)).await?,
    ] {
        assert!([401, 403].contains(&refused.status), "{}", refused.body);
        assert_eq!(active(&host).await?, second, "not rolled back");
    }
    // A page of the service's own origin may, with a bearer token.
    let own = post_from(&host, "/admin/guest/rollback", Some(host.base_url.as_str())).await?;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(active(&host).await?, first);

    // Basic still opens the status page, its script and the JSON it polls, and nothing else.
    for path in ["/admin/status", "/admin/status.js", "/admin/guest"] {
        let opened = host
            .client
            .get(format!("{}{path}", host.base_url))
            .basic_auth("oncall", Some(ADMIN_TOKEN))
            .send()
            .await?;
        assert_eq!(opened.status(), 200, "{path}");
    }
    // The shadow report the page polls while a candidate runs in shadow: Basic passes the
    // gate (whatever the report then says of a version that is not in shadow).
    let shadow_stats = host
        .client
        .get(format!("{}/admin/guest/{second}/shadow", host.base_url))
        .basic_auth("oncall", Some(ADMIN_TOKEN))
        .send()
        .await?;
    assert!(
        ![401, 403].contains(&shadow_stats.status().as_u16()),
        "{}",
        shadow_stats.status()
    );
    // Any other read takes a bearer token only.
    let quarantine = host
        .client
        .get(format!("{}/admin/quarantine", host.base_url))
        .basic_auth("oncall", Some(ADMIN_TOKEN))
        .send()
        .await?;
    assert_eq!(quarantine.status(), 401);
    let refusals = host
        .metric(
            "transferd_auth_failures_total",
            &["reason=\"foreign_origin\""],
        )
        .await?;
    assert_eq!(refusals, 6.0, "each foreign change counted");
    Ok(())
}

#[tokio::test]
async fn without_authentication_anyone_may_call_and_every_start_warns() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.jwt_secret = None;
    options
        .extra_env
        .push(("TRANSFERD_AUTH".into(), "none".into()));
    let mut host = Host::start_with(&namespace, options.clone()).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let accepted = post(&host, "/transfers", None, &transfer(1, 2, "1.00")).await?;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let id = accepted.body["transaction_id"].as_str().unwrap_or_default();
    assert_eq!(
        get(&host, &format!("/transfers/{id}"), None).await?.status,
        200
    );
    assert_eq!(get(&host, "/accounts/1/balances", None).await?.status, 200);
    // The admin API still needs the static token.
    let anonymous_admin = get(&host, "/admin/guest", None).await?;
    assert_eq!(anonymous_admin.status, 401);

    let warning = "TRANSFERD_AUTH=none: authentication is OFF";
    assert_eq!(host.log().matches(warning).count(), 1, "{}", host.log());
    host.terminate(Duration::from_secs(20)).await?;
    let port = host.port;
    drop(host);
    let restarted = Host::start_on(&namespace, options, port).await?;
    assert_eq!(
        restarted.log().matches(warning).count(),
        2,
        "warned again at the second start"
    );
    Ok(())
}

/// `transferd token ARGS` with `env`; its stdout, trimmed.
fn token_command(arguments: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut command = std::process::Command::new(transferd_e2e::transferd_binary());
    command
        .arg("token")
        .args(arguments)
        .env_remove("TRANSFERD_JWT_SECRET")
        .env_remove("TRANSFERD_JWT_PUBLIC_KEY")
        .env_remove("TRANSFERD_JWT_PRIVATE_KEY");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "transferd token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

#[tokio::test]
async fn tokens_from_transferd_token_are_accepted_with_issuer_and_audience() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    let settings = [
        ("TRANSFERD_JWT_SECRET", JWT_SECRET),
        ("TRANSFERD_JWT_ISSUER", "https://issuer.transferd.test"),
        ("TRANSFERD_JWT_AUDIENCE", "transferd-e2e"),
    ];
    for (name, value) in &settings[1..] {
        options
            .extra_env
            .push((name.to_string(), value.to_string()));
    }
    let host = Host::start_with(&namespace, options).await?;
    let user = token_command(&["--sub", "1", "--ttl", "10m"], &settings)?;
    let admin = token_command(&["--sub", "77", "--admin"], &settings)?;
    assert_eq!(user.split('.').count(), 3, "a JWT on its own line: {user}");

    let deposit = json!({"user_id": 1, "currency": "USD", "amount": "10.00"});
    assert_eq!(
        post(&host, "/admin/deposits", Some(&admin), &deposit)
            .await?
            .status,
        200
    );
    host.deposit(2, "USD", "1.00").await?;
    let sent = post(&host, "/transfers", Some(&user), &transfer(1, 2, "1.00")).await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        get(&host, "/accounts/1/balances", Some(&user))
            .await?
            .status,
        200
    );

    // The harness's own tokens carry no issuer or audience: refused here.
    let plain = get(&host, "/accounts/1/balances", Some(&user_token(1))).await?;
    assert_unauthenticated(&plain, "invalid_token", "no iss/aud");
    // Another issuer's token is refused.
    let elsewhere = token_command(
        &["--sub", "1"],
        &[
            ("TRANSFERD_JWT_SECRET", JWT_SECRET),
            ("TRANSFERD_JWT_ISSUER", "https://elsewhere.test"),
            ("TRANSFERD_JWT_AUDIENCE", "transferd-e2e"),
        ],
    )?;
    let refused = get(&host, "/accounts/1/balances", Some(&elsewhere)).await?;
    assert_unauthenticated(&refused, "invalid_token", "another issuer");
    Ok(())
}

fn key_file(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../host/src/auth/testdata")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn a_host_with_a_public_key_accepts_tokens_signed_by_its_private_key() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.jwt_secret = None;
    let public_key = key_file("ed25519-public.pem");
    options
        .extra_env
        .push(("TRANSFERD_JWT_PUBLIC_KEY".into(), public_key.clone()));
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    let signed = token_command(
        &["--sub", "1"],
        &[
            ("TRANSFERD_JWT_PUBLIC_KEY", &public_key),
            (
                "TRANSFERD_JWT_PRIVATE_KEY",
                &key_file("ed25519-private.pem"),
            ),
        ],
    )?;
    assert_eq!(
        get(&host, "/accounts/1/balances", Some(&signed))
            .await?
            .status,
        200
    );
    // An HS256 token is not accepted by a host that checks EdDSA signatures.
    let hs256 = get(&host, "/accounts/1/balances", Some(&user_token(1))).await?;
    assert_unauthenticated(&hs256, "invalid_token", "HS256 at an EdDSA host");
    Ok(())
}
