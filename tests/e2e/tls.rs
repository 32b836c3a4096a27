//! TLS to the stores, for real: a private PostgreSQL and a private Redis that speak only TLS,
//! with certificates from a CA this test makes. transferd, checking their certificates
//! (`sslmode=verify-full`, `rediss://` with a CA file) and logging in to Redis as an ACL user,
//! serves a transfer that settles; given another CA's file instead, it refuses each server and
//! says it was the certificate.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use transferd_e2e::tls_services::{ServerIdentity, TlsPostgres, TlsRedis};
use transferd_e2e::{Host, HostOptions, Namespace, free_port, run_command};

const REDIS_PASSWORD: &str = "a-password-never-logged";
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// A certificate authority made for the test.
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> anyhow::Result<Authority> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Authority {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by this authority.
    fn server(&self) -> anyhow::Result<ServerIdentity> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.pem.clone(),
        })
    }
}

/// The private servers, both with certificates from `authority`, and a CA file of the right
/// authority and of another.
struct Servers {
    postgres: TlsPostgres,
    redis: TlsRedis,
    right_ca: std::path::PathBuf,
    wrong_ca: std::path::PathBuf,
}

async fn servers() -> anyhow::Result<Servers> {
    let authority = Authority::new("transferd test CA")?;
    let stranger = Authority::new("another CA")?;
    let postgres = TlsPostgres::start(&authority.server()?).await?;
    let redis = TlsRedis::start(&authority.server()?, REDIS_PASSWORD).await?;
    let right_ca = postgres.file("ca.pem", &authority.pem)?;
    let wrong_ca = postgres.file("other-ca.pem", &stranger.pem)?;
    Ok(Servers {
        postgres,
        redis,
        right_ca,
        wrong_ca,
    })
}

/// transferd's settings for the private servers, each checked against `postgres_ca` and
/// `redis_ca`; Kafka is the shared broker.
fn options(
    namespace: &Namespace,
    servers: &Servers,
    postgres_ca: &std::path::Path,
    redis_ca: &std::path::Path,
) -> HostOptions {
    let mut options = HostOptions::new(namespace);
    options.database_url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        servers.postgres.port,
        postgres_ca.display()
    );
    options.redis_url = format!(
        "rediss://transferd:{REDIS_PASSWORD}@127.0.0.1:{}",
        servers.redis.port
    );
    options.extra_env.push((
        "TRANSFERD_REDIS_CA_FILE".to_string(),
        redis_ca.display().to_string(),
    ));
    options
}

/// The receiver's settled balance in the private ledger, read in the clear (the cluster
/// accepts both).
async fn settled_balance(servers: &Servers, user_id: i64) -> anyhow::Result<Option<i64>> {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        servers.postgres.port
    );
    let pool = sqlx::PgPool::connect(&url).await?;
    let balance = sqlx::query_scalar(
        "SELECT balance_minor FROM accounts WHERE user_id = $1 AND currency = 'USD'",
    )
    .bind(user_id)
    .fetch_optional(&pool)
    .await?;
    pool.close().await;
    Ok(balance)
}

/// `GET /readyz`, polled (up to 15 s) until the check of `store` says `expected` (`ready`
/// when it is ready); that check.
async fn store_readiness(host: &Host, store: &str, expected: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = host
            .client
            .get(format!("{}/readyz", host.base_url))
            .send()
            .await?;
        let body: Value = response.json().await?;
        let check = body["checks"][store].clone();
        let says = if check["ready"] == true {
            "ready"
        } else {
            check["detail"].as_str().unwrap_or_default()
        };
        if says.contains(expected) || Instant::now() > deadline {
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn transferd_checks_each_store_s_certificate_and_settles_over_tls() -> anyhow::Result<()> {
    let servers = servers().await?;
    let namespace = Namespace::new().await?;

    let host = Host::start_with(
        &namespace,
        options(&namespace, &servers, &servers.right_ca, &servers.right_ca),
    )
    .await?;
    for store in ["postgres", "redis"] {
        let check = store_readiness(&host, store, "ready").await?;
        assert_eq!(check["ready"], true, "{store}: {check}");
    }
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let reply = host
        .transfer(json!({"sender_id": 1, "receiver_id": 2, "amount": "10.50", "currency": "USD"}))
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let started = Instant::now();
    while settled_balance(&servers, 2).await? != Some(1_150) {
        assert!(
            started.elapsed() < SETTLE_LIMIT,
            "the transfer did not settle within {SETTLE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&host.log_path)?;
    assert!(
        !log.contains(REDIS_PASSWORD),
        "the Redis password is logged"
    );
    drop(host);

    // PostgreSQL's certificate from an unknown CA: serve stops at once, saying why.
    let mut refused = options(&namespace, &servers, &servers.wrong_ca, &servers.right_ca);
    refused.extra_env.push((
        "TRANSFERD_LISTEN".to_string(),
        format!("127.0.0.1:{}", free_port()),
    ));
    let output = run_command(&namespace, &refused, &["serve"], Duration::from_secs(30)).await?;
    assert!(!output.status.success(), "serve started with an unknown CA");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("invalid peer certificate") && said.contains("UnknownIssuer"),
        "the error names the certificate problem: {said}"
    );

    // Redis's certificate from an unknown CA: serve runs (Redis connects on demand), and
    // readiness names the certificate problem. The Redis timeout is long enough for an attempt
    // to end with its own error rather than the timeout's.
    let mut redis_refused = options(&namespace, &servers, &servers.right_ca, &servers.wrong_ca);
    redis_refused
        .extra_env
        .push(("TRANSFERD_REDIS_TIMEOUT_MS".to_string(), "5000".to_string()));
    let host = Host::start_with(&namespace, redis_refused).await?;
    let redis = store_readiness(&host, "redis", "UnknownIssuer").await?;
    assert_eq!(redis["ready"], false, "{redis}");
    let detail = redis["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("invalid peer certificate") && detail.contains("UnknownIssuer"),
        "readiness names the certificate problem: {redis}"
    );
    Ok(())
}
