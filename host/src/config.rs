//! Every setting, from flags and environment variables, validated once at start-up.
//!
//! Each flag has an environment variable of the same meaning; README.md has the table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where the service's dependencies are and how long it waits for each.
#[derive(Debug, Clone, Args)]
pub struct Services {
    /// PostgreSQL connection URL (the ledger).
    #[arg(
        long,
        env = "TRANSFERD_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/transferd"
    )]
    pub database_url: String,

    /// Redis connection URL (balance cache and holds).
    #[arg(
        long,
        env = "TRANSFERD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix for every Redis key (empty keeps the original `balance:{user_id}:{currency}`).
    #[arg(long, env = "TRANSFERD_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long,
        env = "TRANSFERD_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,

    /// Prefix for every Kafka topic name (empty keeps the original `transfer_topic`).
    #[arg(long, env = "TRANSFERD_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions for topics transferd creates when they are missing. One by default: a
    /// single settlement worker reads the whole transfer topic, and every partition is a
    /// produce request of its own for a batch of messages (on Tansu's SQLite engine, a storage
    /// transaction each: the broker's CPU per message was four times higher with six).
    #[arg(long, env = "TRANSFERD_TOPIC_PARTITIONS", default_value_t = 1)]
    pub topic_partitions: i32,

    /// How long a transfer waits for Kafka to acknowledge its message before it fails with 503.
    #[arg(long, env = "TRANSFERD_KAFKA_TIMEOUT_MS", default_value_t = 5_000)]
    pub kafka_timeout_ms: u64,

    /// How long the producer waits to gather messages into one request to the broker. Longer
    /// means fewer, larger broker writes (each one a storage transaction) and more latency.
    /// At 64 connections, 2 ms took about 15 % less CPU per transfer than 1 ms; 4 ms no less.
    #[arg(long, env = "TRANSFERD_KAFKA_LINGER_MS", default_value_t = 2)]
    pub kafka_linger_ms: u64,

    /// How long a request waits for a PostgreSQL connection before it fails with 503.
    #[arg(long, env = "TRANSFERD_DATABASE_TIMEOUT_MS", default_value_t = 2_000)]
    pub database_timeout_ms: u64,

    /// PostgreSQL connections in the pool.
    #[arg(long, env = "TRANSFERD_DATABASE_CONNECTIONS", default_value_t = 16)]
    pub database_connections: u32,

    /// How long a Redis command may take before the host falls back to PostgreSQL.
    #[arg(long, env = "TRANSFERD_REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,

    /// After SIGTERM/SIGINT/SIGHUP: longest time to finish requests in flight, stop the
    /// settlement worker and flush the producer before the process exits anyway.
    #[arg(long, env = "TRANSFERD_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
}

impl Services {
    pub fn kafka_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_timeout_ms)
    }
    pub fn database_timeout(&self) -> Duration {
        Duration::from_millis(self.database_timeout_ms)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// These settings as the environment of a child process (`transferd worker --supervised`),
    /// so the child runs with what this process parsed, whether it came from flags or not.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TRANSFERD_DATABASE_URL", self.database_url.clone()),
            ("TRANSFERD_REDIS_URL", self.redis_url.clone()),
            ("TRANSFERD_REDIS_PREFIX", self.redis_prefix.clone()),
            ("TRANSFERD_KAFKA_BROKERS", self.kafka_brokers.clone()),
            ("TRANSFERD_TOPIC_PREFIX", self.topic_prefix.clone()),
            (
                "TRANSFERD_TOPIC_PARTITIONS",
                self.topic_partitions.to_string(),
            ),
            (
                "TRANSFERD_KAFKA_TIMEOUT_MS",
                self.kafka_timeout_ms.to_string(),
            ),
            (
                "TRANSFERD_KAFKA_LINGER_MS",
                self.kafka_linger_ms.to_string(),
            ),
            (
                "TRANSFERD_DATABASE_TIMEOUT_MS",
                self.database_timeout_ms.to_string(),
            ),
            (
                "TRANSFERD_DATABASE_CONNECTIONS",
                self.database_connections.to_string(),
            ),
            (
                "TRANSFERD_REDIS_TIMEOUT_MS",
                self.redis_timeout_ms.to_string(),
            ),
            (
                "TRANSFERD_DRAIN_TIMEOUT_MS",
                self.drain_timeout_ms.to_string(),
            ),
        ]
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=600_000).contains(&self.kafka_timeout_ms),
            "TRANSFERD_KAFKA_TIMEOUT_MS must be 1..=600000"
        );
        anyhow::ensure!(
            (1..=60_000).contains(&self.database_timeout_ms),
            "TRANSFERD_DATABASE_TIMEOUT_MS must be 1..=60000"
        );
        anyhow::ensure!(
            (1..=60_000).contains(&self.redis_timeout_ms),
            "TRANSFERD_REDIS_TIMEOUT_MS must be 1..=60000"
        );
        anyhow::ensure!(
            (100..=600_000).contains(&self.drain_timeout_ms),
            "TRANSFERD_DRAIN_TIMEOUT_MS must be 100..=600000"
        );
        anyhow::ensure!(
            (1..=1_000).contains(&self.database_connections),
            "TRANSFERD_DATABASE_CONNECTIONS must be 1..=1000"
        );
        anyhow::ensure!(
            (1..=1_000).contains(&self.topic_partitions),
            "TRANSFERD_TOPIC_PARTITIONS must be 1..=1000"
        );
        let topic_safe = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        anyhow::ensure!(
            self.topic_prefix.chars().all(topic_safe),
            "TRANSFERD_TOPIC_PREFIX may hold only letters, digits, '.', '_' and '-'"
        );
        Ok(())
    }
}

/// Settings of `transferd worker` and `transferd reconcile`.
#[derive(Debug, Clone, Args)]
pub struct WorkerOnly {
    #[command(flatten)]
    pub services: Services,

    #[command(flatten)]
    pub worker: Worker,
}

/// `transferd worker`: its settings, and whether `serve` started it.
#[derive(Debug, Clone, Args)]
pub struct WorkerCommand {
    #[command(flatten)]
    pub settings: WorkerOnly,

    /// Started by `transferd serve`: metrics go to serve over standard input (a socket), and
    /// the end of that socket stops the worker. Not for use by hand.
    #[arg(long, hide = true)]
    pub supervised: bool,
}

/// Settings of the settlement worker.
#[derive(Debug, Clone, Args)]
pub struct Worker {
    /// Most messages applied in one database transaction.
    #[arg(long, env = "TRANSFERD_SETTLEMENT_BATCH", default_value_t = 1000)]
    pub batch_max: usize,

    /// How long a batch waits for more messages after its first, in milliseconds.
    #[arg(long, env = "TRANSFERD_SETTLEMENT_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,

    /// How long the broker may hold a fetch of the transfer log open, in milliseconds. Tansu
    /// holds every fetch this long and reads every partition for each, so longer means fewer
    /// fetches for the broker to serve and later settlement (a Kafka broker answers as soon
    /// as data arrives). A transfer waits up to two fetches: POST → settled p99 at half load
    /// was 112 ms at 50 ms and 89 ms at 30 ms, for the same CPU per transfer within noise.
    #[arg(long, env = "TRANSFERD_SETTLEMENT_FETCH_WAIT_MS", default_value_t = 30)]
    pub fetch_wait_ms: u64,

    /// How often the hold reconciler runs (0: never).
    #[arg(
        long,
        env = "TRANSFERD_RECONCILE_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub reconcile_interval_ms: u64,

    /// How old a hold must be before the reconciler judges it; far above the Kafka timeout,
    /// so any message for it was written (or failed) long before.
    #[arg(
        long,
        env = "TRANSFERD_RECONCILE_MIN_AGE_MS",
        default_value_t = 300_000
    )]
    pub reconcile_min_age_ms: u64,

    /// How long a reconciler pass waits for settlement to consume what the log held when the
    /// pass began; holds not yet settled are judged only once it has.
    #[arg(long, env = "TRANSFERD_RECONCILE_WAIT_MS", default_value_t = 30_000)]
    pub reconcile_wait_ms: u64,

    /// How long `Idempotency-Key`s are kept, in hours (at least 24); the reconciler deletes
    /// older ones.
    #[arg(
        long,
        env = "TRANSFERD_IDEMPOTENCY_RETENTION_HOURS",
        default_value_t = 24
    )]
    pub idempotency_retention_hours: u64,
}

impl Worker {
    /// These settings as the environment of a child process; see [`Services::child_env`].
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TRANSFERD_SETTLEMENT_BATCH", self.batch_max.to_string()),
            ("TRANSFERD_SETTLEMENT_LINGER_MS", self.linger_ms.to_string()),
            (
                "TRANSFERD_SETTLEMENT_FETCH_WAIT_MS",
                self.fetch_wait_ms.to_string(),
            ),
            (
                "TRANSFERD_RECONCILE_INTERVAL_MS",
                self.reconcile_interval_ms.to_string(),
            ),
            (
                "TRANSFERD_RECONCILE_MIN_AGE_MS",
                self.reconcile_min_age_ms.to_string(),
            ),
            (
                "TRANSFERD_RECONCILE_WAIT_MS",
                self.reconcile_wait_ms.to_string(),
            ),
            (
                "TRANSFERD_IDEMPOTENCY_RETENTION_HOURS",
                self.idempotency_retention_hours.to_string(),
            ),
        ]
    }

    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn reconcile_interval(&self) -> Option<Duration> {
        (self.reconcile_interval_ms > 0).then(|| Duration::from_millis(self.reconcile_interval_ms))
    }

    pub fn reconcile_wait(&self) -> Duration {
        Duration::from_millis(self.reconcile_wait_ms)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_hours * 3_600)
    }

    /// The reconciler judges a hold only once any publish for it has long finished.
    pub fn validate_with(&self, services: &Services) -> anyhow::Result<()> {
        self.validate()?;
        anyhow::ensure!(
            self.reconcile_interval_ms <= 86_400_000,
            "TRANSFERD_RECONCILE_INTERVAL_MS must be at most 86400000"
        );
        anyhow::ensure!(
            (1_000..=30 * 86_400_000).contains(&self.reconcile_min_age_ms),
            "TRANSFERD_RECONCILE_MIN_AGE_MS must be 1000..=2592000000"
        );
        anyhow::ensure!(
            self.reconcile_wait_ms <= 600_000,
            "TRANSFERD_RECONCILE_WAIT_MS must be at most 600000"
        );
        anyhow::ensure!(
            (24..=8_760).contains(&self.idempotency_retention_hours),
            "TRANSFERD_IDEMPOTENCY_RETENTION_HOURS must be 24..=8760"
        );
        anyhow::ensure!(
            self.reconcile_min_age_ms > services.kafka_timeout_ms,
            "TRANSFERD_RECONCILE_MIN_AGE_MS must exceed TRANSFERD_KAFKA_TIMEOUT_MS"
        );
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_max),
            "TRANSFERD_SETTLEMENT_BATCH must be 1..=10000"
        );
        anyhow::ensure!(
            self.linger_ms <= 10_000,
            "TRANSFERD_SETTLEMENT_LINGER_MS must be at most 10000"
        );
        anyhow::ensure!(
            (1..=1_000).contains(&self.fetch_wait_ms),
            "TRANSFERD_SETTLEMENT_FETCH_WAIT_MS must be 1..=1000"
        );
        Ok(())
    }
}

/// Settings of the HTTP API and the guest.
#[derive(Debug, Clone, Args)]
pub struct Serve {
    #[command(flatten)]
    pub services: Services,

    #[command(flatten)]
    pub worker: Worker,

    /// Run the settlement worker in this process too (`false` for API-only replicas).
    #[arg(long, env = "TRANSFERD_RUN_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_worker: bool,

    /// Address the HTTP API listens on.
    #[arg(long, env = "TRANSFERD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest wait for a request's headers, in milliseconds: a client that stalls in them is
    /// disconnected.
    #[arg(long, env = "TRANSFERD_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,

    /// Longest wait for a request's body, in milliseconds.
    #[arg(long, env = "TRANSFERD_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Longest time any request but `POST /transfers` takes, in milliseconds, body included;
    /// then 503. A transfer is not cut off: its decision is bounded by the guest and Kafka
    /// timeouts, and an answer cut short would hide whether its money moved.
    #[arg(long, env = "TRANSFERD_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Whether a published transfer (and its settlement event) carries the request's trace
    /// context as Kafka headers (`traceparent`, and `request_id` when the caller named it).
    /// `false` sends `transaction_id` alone: each header costs Tansu's SQLite engine a row.
    #[arg(
        long,
        env = "TRANSFERD_KAFKA_TRACE_HEADERS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub kafka_trace_headers: bool,

    /// Most connections served at once; further ones wait in the listen backlog.
    #[arg(long, env = "TRANSFERD_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub max_connections: usize,

    /// Requests a second each caller may make on user routes, on average (0: no limit).
    #[arg(long, env = "TRANSFERD_RATE_LIMIT_PER_SECOND", default_value_t = 1_000)]
    pub rate_limit_per_second: u32,

    /// Requests a caller may make at once above that average.
    #[arg(long, env = "TRANSFERD_RATE_LIMIT_BURST", default_value_t = 2_000)]
    pub rate_limit_burst: u32,

    /// The guest component (.wasm) that decides transfers.
    #[arg(
        long,
        env = "TRANSFERD_GUEST",
        default_value = "target/wasm32-wasip2/release/transferd_guest.wasm"
    )]
    pub guest_file: PathBuf,

    /// Reload the guest file whenever it changes, instead of following the registry (local
    /// development).
    #[arg(long, env = "TRANSFERD_GUEST_WATCH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,

    /// Static bearer token for /admin routes (bootstrapping, `transferd guest`), beside admin
    /// JWTs. Without one only a JWT with the admin role reaches the admin API.
    #[arg(long, env = "TRANSFERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    #[command(flatten)]
    pub auth: Auth,

    /// Longest a guest call may take, imports included; must exceed twice the Kafka timeout
    /// (a publish to a missing topic creates it and sends again) plus the database timeout, so
    /// a message is never acknowledged after its request gave up.
    #[arg(long, env = "TRANSFERD_GUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub guest_timeout_ms: u64,

    /// Largest linear memory a guest instance may grow to, in MiB.
    #[arg(long, env = "TRANSFERD_GUEST_MEMORY_MIB", default_value_t = 64)]
    pub guest_memory_mib: u64,

    /// Directory for compiled guests, reused across restarts and activations; empty means
    /// `$HOME/.cache/transferd/compiled`, `off` compiles every time.
    #[arg(long, env = "TRANSFERD_GUEST_CACHE_DIR", default_value = "")]
    pub guest_cache_dir: String,

    /// Guest calls that may run at once; further requests wait for a slot. A call holds its
    /// slot until the broker acknowledges its publish, and each slot in use keeps its guest's
    /// written pages resident: 64 carries 10,000 transfers/s at 6 ms per acknowledgement, and
    /// bounds the pool's memory (at 256 connections: ~140 MiB RSS, against ~390 MiB with 256
    /// slots, for the same throughput; `scripts/bench-http.sh`).
    #[arg(long, env = "TRANSFERD_GUEST_CONCURRENCY", default_value_t = 64)]
    pub guest_concurrency: u32,

    /// Decisions one guest instance may make before it is dropped: 1 instantiates afresh for
    /// every request; more keeps instances between requests (the host's per-request state is
    /// reset each time; the guest's own memory is not).
    #[arg(long, env = "TRANSFERD_GUEST_REUSE_COUNT", default_value_t = 1)]
    pub guest_reuse_count: u32,
}

impl Serve {
    pub fn guest_timeout(&self) -> Duration {
        Duration::from_millis(self.guest_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Where compiled guests are cached, if anywhere.
    pub fn compiled_cache(&self) -> Option<PathBuf> {
        match self.guest_cache_dir.as_str() {
            "off" => None,
            "" => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/transferd/compiled")),
            directory => Some(PathBuf::from(directory)),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.services.validate()?;
        self.worker.validate_with(&self.services)?;
        anyhow::ensure!(
            self.worker.reconcile_min_age_ms > self.guest_timeout_ms,
            "TRANSFERD_RECONCILE_MIN_AGE_MS must exceed TRANSFERD_GUEST_TIMEOUT_MS"
        );
        anyhow::ensure!(
            self.guest_timeout_ms
                > 2 * self.services.kafka_timeout_ms + self.services.database_timeout_ms,
            "TRANSFERD_GUEST_TIMEOUT_MS must exceed 2 × TRANSFERD_KAFKA_TIMEOUT_MS + TRANSFERD_DATABASE_TIMEOUT_MS"
        );
        anyhow::ensure!(
            (100..=600_000).contains(&self.header_timeout_ms),
            "TRANSFERD_HEADER_TIMEOUT_MS must be 100..=600000"
        );
        anyhow::ensure!(
            (100..=600_000).contains(&self.body_timeout_ms),
            "TRANSFERD_BODY_TIMEOUT_MS must be 100..=600000"
        );
        anyhow::ensure!(
            (100..=3_600_000).contains(&self.request_timeout_ms),
            "TRANSFERD_REQUEST_TIMEOUT_MS must be 100..=3600000"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.max_connections),
            "TRANSFERD_MAX_CONNECTIONS must be 1..=100000"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.guest_memory_mib),
            "TRANSFERD_GUEST_MEMORY_MIB must be 1..=4096"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.guest_concurrency),
            "TRANSFERD_GUEST_CONCURRENCY must be 1..=10000"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.guest_reuse_count),
            "TRANSFERD_GUEST_REUSE_COUNT must be 1..=1000000"
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                token.expose().len() >= 16,
                "TRANSFERD_ADMIN_TOKEN must be at least 16 characters"
            );
        }
        self.auth.validate()
    }
}

/// A secret setting: its `Debug` never shows the value, so no log line or error can.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// An HS256 secret must be as long as the hash it keys.
    fn check_jwt_secret(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.0.len() >= MIN_JWT_SECRET_BYTES,
            "TRANSFERD_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
        );
        Ok(())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// Whether requests must carry a bearer JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every route but `/healthz` needs a valid token.
    Jwt,
    /// No authentication (behind a trusted gateway, as the original service ran); `/admin`
    /// still needs `TRANSFERD_ADMIN_TOKEN`. Logged as a warning at every start.
    None,
}

/// Shortest HS256 secret accepted, in bytes: the hash's own size (RFC 7518, section 3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// How callers are authenticated: bearer JWTs signed with a shared secret (HS256) or checked
/// with a public key (RS256 or EdDSA, told by the key), or nothing at all.
#[derive(Debug, Clone, Args)]
pub struct Auth {
    /// `jwt` (default) or `none`: no authentication at all, for a trusted gateway in front.
    #[arg(
        long = "auth",
        env = "TRANSFERD_AUTH",
        value_enum,
        default_value = "jwt"
    )]
    pub mode: AuthMode,

    /// HS256 secret that signs and checks tokens (at least 32 bytes). Prefer the environment
    /// to the flag: a flag shows in the process list.
    #[arg(long, env = "TRANSFERD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM file of the public key that checks tokens: RSA (RS256) or Ed25519 (EdDSA).
    #[arg(long, env = "TRANSFERD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// When set, a token's `iss` must be this.
    #[arg(long, env = "TRANSFERD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, a token's `aud` must be (or contain) this.
    #[arg(long, env = "TRANSFERD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "TRANSFERD_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub jwt_leeway_seconds: u64,
}

impl Auth {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.jwt_leeway_seconds <= 600,
            "TRANSFERD_JWT_LEEWAY_SECONDS must be at most 600"
        );
        if self.mode == AuthMode::None {
            return Ok(());
        }
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set one of TRANSFERD_JWT_SECRET and TRANSFERD_JWT_PUBLIC_KEY, not both"
            ),
            (None, None) => anyhow::bail!(
                "set TRANSFERD_JWT_SECRET (HS256) or TRANSFERD_JWT_PUBLIC_KEY (RS256/EdDSA), \
                 or TRANSFERD_AUTH=none to run without authentication"
            ),
            (Some(secret), None) => secret.check_jwt_secret()?,
            (None, Some(_)) => {}
        }
        for (name, value) in [
            ("TRANSFERD_JWT_ISSUER", &self.jwt_issuer),
            ("TRANSFERD_JWT_AUDIENCE", &self.jwt_audience),
        ] {
            anyhow::ensure!(
                value.as_ref().is_none_or(|value| !value.is_empty()),
                "{name} must not be empty when set"
            );
        }
        Ok(())
    }
}

/// Settings of `transferd token`: the service's token settings, a signing key for the public-key
/// algorithms, and the claims.
#[derive(Debug, Clone, Args)]
pub struct Token {
    #[command(flatten)]
    pub auth: Auth,

    /// PEM file of the private key that signs tokens when the service checks them with
    /// `TRANSFERD_JWT_PUBLIC_KEY` (the pair's other half). HS256 signs with the secret.
    #[arg(long, env = "TRANSFERD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,

    /// The caller's user id (the token's `sub`).
    #[arg(long)]
    pub sub: i64,

    /// Give the token the admin role (`"roles": ["admin"]`).
    #[arg(long)]
    pub admin: bool,

    /// How long the token is valid: a number with s, m, h or d (`90s`, `15m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

impl Token {
    /// Checks what signing needs; which key to sign with is the signer's to decide.
    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.auth.jwt_secret {
            Some(secret) => secret.check_jwt_secret(),
            None => Ok(()),
        }
    }
}

/// Longest token lifetime `transferd token` writes.
const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// `90s`, `15m`, `1h`, `7d`: a positive whole number and one unit.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let ttl = count
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .filter(|ttl| !ttl.is_zero() && *ttl <= MAX_TTL)
        .ok_or_else(|| format!("{text:?} must be more than 0 and at most 366d"))?;
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_one_unit() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for wrong in [
            "",
            "1",
            "h",
            "0h",
            "1w",
            "1h30m",
            "-1h",
            "400d",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(wrong).is_err(), "{wrong}");
        }
    }

    /// Every setting of the worker reaches the child `serve` starts, with its value: each flag
    /// gets a value of its own, and the child's environment must carry exactly those.
    #[test]
    fn a_supervised_worker_gets_every_setting_serve_parsed() {
        use clap::{CommandFactory, Parser};

        #[derive(Parser)]
        struct Line {
            #[command(flatten)]
            settings: WorkerOnly,
        }
        let mut given = std::collections::BTreeMap::new();
        let mut args = vec!["worker".to_string()];
        for (index, arg) in Line::command().get_arguments().enumerate() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let value = (100 + index).to_string();
            args.push(format!("--{long}={value}"));
            given.insert(env.to_string_lossy().into_owned(), value);
        }
        let parsed = Line::try_parse_from(&args)
            .expect("every flag parses")
            .settings;
        let mut child = parsed.services.child_env();
        child.extend(parsed.worker.child_env());
        let child: std::collections::BTreeMap<String, String> = child
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        assert_eq!(child, given);
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::from("do-not-print-me".to_string());
        assert!(!format!("{secret:?}").contains("do-not-print-me"));
    }
}
