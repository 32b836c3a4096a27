//! Every setting, from flags and environment variables, validated once at start-up.
//!
//! Each setting is written once, as a clap argument: its flag, its environment variable, its
//! default and its accepted range. The worker child's environment, the validation messages and
//! docs/configuration.md ([`configuration_page`]) are all read from those arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, Args, ValueEnum};

pub mod kafka_properties;
pub use kafka_properties::{KafkaProperties, KafkaRole, PropertiesError};

/// The name a setting is known by in messages: its environment variable (else its flag), read
/// from its clap argument so that no message spells it by hand. Naming the field makes the
/// compiler check that it exists; clap's id for a field is the field's name.
macro_rules! setting {
    ($settings:ty, $field:ident) => {{
        let _field_exists = |settings: &$settings| {
            let _ = &settings.$field;
        };
        $crate::config::setting_name::<$settings>(stringify!($field))
    }};
}
pub(crate) use setting;

/// Where the service's dependencies are and how long it waits for each.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Services {
    /// PostgreSQL connection URL (the ledger). TLS is set by the URL's own parameters, as
    /// libpq reads them: `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`), `sslrootcert` (the CA file), `sslcert` and `sslkey` (a client
    /// certificate). Its password is never printed.
    #[arg(
        long,
        env = "TRANSFERD_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/transferd",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis connection URL (balance cache and holds): `redis://` in the clear, `rediss://`
    /// over TLS (the server's certificate checked against the system's roots, or against
    /// `TRANSFERD_REDIS_CA_FILE`), with an ACL user and password as
    /// `rediss://user:password@host:port`. Its password is never printed.
    #[arg(
        long,
        env = "TRANSFERD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the certificate authority that signed the Redis server's certificate
    /// (`rediss://` only); unset, the system's roots are trusted.
    #[arg(long, env = "TRANSFERD_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM file of the client certificate transferd shows Redis (`rediss://` only), with
    /// `TRANSFERD_REDIS_CLIENT_KEY_FILE`.
    #[arg(long, env = "TRANSFERD_REDIS_CLIENT_CERT_FILE")]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM file of the client certificate's private key.
    #[arg(long, env = "TRANSFERD_REDIS_CLIENT_KEY_FILE")]
    pub redis_client_key_file: Option<PathBuf>,

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

    /// A file of librdkafka properties (`name=value` lines, `#` comments) for every Kafka
    /// client transferd makes: the producer, the consumers and the admin client. The
    /// environment adds to it and wins over it: `TRANSFERD_KAFKA_CLIENT_<NAME>` for every
    /// client, `TRANSFERD_KAFKA_PRODUCER_<NAME>` and `TRANSFERD_KAFKA_CONSUMER_<NAME>` for one
    /// kind, `<NAME>` being the property upper-cased with `_` for `.`
    /// (`TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL`). The properties transferd sets for
    /// correctness (`acks`, `enable.idempotence`, `enable.auto.commit`, …) are refused at start.
    #[arg(long, env = "TRANSFERD_KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,

    /// Whether the producer is idempotent (`enable.idempotence`): a send retried after a lost
    /// acknowledgement is not written twice, and messages keep their order. `false` only for a
    /// broker that cannot take it, such as the local development broker (Tansu).
    #[arg(
        long,
        env = "TRANSFERD_KAFKA_IDEMPOTENCE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub kafka_idempotence: bool,

    /// Whether transferd creates its topics when they are missing (at start, and again when
    /// one vanishes). `false` leaves them to the operator: transferd then only checks they
    /// exist, and names those that do not in its log and readiness.
    #[arg(
        long,
        env = "TRANSFERD_CREATE_TOPICS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create_topics: bool,

    /// Replicas of each partition of a topic transferd creates; -1 takes the broker's
    /// `default.replication.factor`. A cluster that must survive the loss of a broker needs 3.
    #[arg(
        long,
        env = "TRANSFERD_TOPIC_REPLICATION_FACTOR",
        default_value_t = -1,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1..=32_767)
    )]
    pub topic_replication_factor: i32,

    /// `min.insync.replicas` of each topic transferd creates: how many replicas must have a
    /// message before the broker acknowledges it (transferd produces with `acks=all`).
    /// Unset, the broker's own default applies; 2 with a replication factor of 3 survives the
    /// loss of one broker without losing an acknowledged transfer.
    #[arg(
        long,
        env = "TRANSFERD_TOPIC_MIN_INSYNC_REPLICAS",
        value_parser = clap::value_parser!(u32).range(1..=32_767)
    )]
    pub topic_min_insync_replicas: Option<u32>,

    /// Prefix for every Kafka topic name (empty keeps the original `transfer_topic`).
    #[arg(long, env = "TRANSFERD_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions for topics transferd creates when they are missing. One by default: a
    /// single settlement worker reads the whole transfer topic, and every partition is a
    /// produce request of its own for a batch of messages (on Tansu's SQLite engine, a storage
    /// transaction each), so more partitions cost the broker more per message.
    #[arg(
        long,
        env = "TRANSFERD_TOPIC_PARTITIONS",
        default_value_t = 1,
        value_parser = clap::value_parser!(i32).range(1..=1_000)
    )]
    pub topic_partitions: i32,

    /// How long a transfer waits for Kafka to acknowledge its message before it fails with 503.
    #[arg(
        long,
        env = "TRANSFERD_KAFKA_TIMEOUT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    pub kafka_timeout_ms: u64,

    /// How long the producer waits to gather messages into one request to the broker. Longer
    /// means fewer, larger broker writes (each one a storage transaction) and more latency.
    #[arg(long, env = "TRANSFERD_KAFKA_LINGER_MS", default_value_t = 2)]
    pub kafka_linger_ms: u64,

    /// How long a request waits for a PostgreSQL connection before it fails with 503.
    #[arg(
        long,
        env = "TRANSFERD_DATABASE_TIMEOUT_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub database_timeout_ms: u64,

    /// PostgreSQL connections in the pool.
    #[arg(
        long,
        env = "TRANSFERD_DATABASE_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=1_000)
    )]
    pub database_connections: u32,

    /// How long a Redis command may take before the host falls back to PostgreSQL.
    #[arg(
        long,
        env = "TRANSFERD_REDIS_TIMEOUT_MS",
        default_value_t = 250,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub redis_timeout_ms: u64,

    /// After SIGTERM/SIGINT/SIGHUP: longest time to finish requests in flight, stop the
    /// settlement worker and flush the producer before the process exits anyway.
    #[arg(
        long,
        env = "TRANSFERD_DRAIN_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000)
    )]
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

    /// What clap cannot check alone: the characters of the topic prefix, the replication
    /// factor's forbidden 0, the Redis TLS files against the URL's scheme, and the Kafka
    /// properties (readable, none that transferd sets itself).
    pub fn validate(&self) -> anyhow::Result<()> {
        let topic_safe = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        anyhow::ensure!(
            self.topic_prefix.chars().all(topic_safe),
            "{} may hold only letters, digits, '.', '_' and '-'",
            setting!(Services, topic_prefix)
        );
        anyhow::ensure!(
            self.topic_replication_factor != 0,
            "{} must be -1 (the broker's default) or 1 or more",
            setting!(Services, topic_replication_factor)
        );
        self.validate_redis_tls()?;
        self.kafka_properties()?;
        Ok(())
    }

    /// The Redis certificate files make sense only over TLS, and a client certificate needs
    /// its key.
    fn validate_redis_tls(&self) -> anyhow::Result<()> {
        let files = [
            (setting!(Services, redis_ca_file), &self.redis_ca_file),
            (
                setting!(Services, redis_client_cert_file),
                &self.redis_client_cert_file,
            ),
            (
                setting!(Services, redis_client_key_file),
                &self.redis_client_key_file,
            ),
        ];
        let tls = self.redis_url.starts_with("rediss://");
        for (name, file) in files {
            anyhow::ensure!(
                tls || file.is_none(),
                "{name} needs a rediss:// {}",
                setting!(Services, redis_url)
            );
        }
        anyhow::ensure!(
            self.redis_client_cert_file.is_some() == self.redis_client_key_file.is_some(),
            "set both {} and {}, or neither",
            setting!(Services, redis_client_cert_file),
            setting!(Services, redis_client_key_file)
        );
        Ok(())
    }

    /// The operator's librdkafka properties, from `TRANSFERD_KAFKA_PROPERTIES_FILE` and the
    /// environment; read again for each client made, so they are checked at start too.
    pub fn kafka_properties(&self) -> Result<KafkaProperties, PropertiesError> {
        KafkaProperties::read(std::env::vars_os(), self.kafka_properties_file.as_deref())
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

    /// Address the worker serves `/healthz`, `/readyz` and `/metrics` on; unset, it listens
    /// nowhere. A worker `serve` started ignores it: serve's own port shows its metrics.
    #[arg(long, env = "TRANSFERD_WORKER_LISTEN")]
    pub worker_listen: Option<SocketAddr>,
}

/// Settings of the settlement worker.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Worker {
    /// Most messages applied in one database transaction.
    #[arg(
        long,
        env = "TRANSFERD_SETTLEMENT_BATCH",
        default_value_t = 1000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000)
    )]
    pub batch_max: usize,

    /// How long a batch waits for more messages after its first, in milliseconds.
    #[arg(
        long,
        env = "TRANSFERD_SETTLEMENT_LINGER_MS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(..=10_000)
    )]
    pub linger_ms: u64,

    /// How long the broker may hold a fetch of the transfer log open, in milliseconds. Tansu
    /// holds every fetch this long and reads every partition for each, so longer means fewer
    /// fetches for the broker to serve and later settlement (a Kafka broker answers as soon
    /// as data arrives); a transfer waits up to two fetches before it is settled.
    #[arg(
        long,
        env = "TRANSFERD_SETTLEMENT_FETCH_WAIT_MS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=1_000)
    )]
    pub fetch_wait_ms: u64,

    /// How often the hold reconciler runs (0: never).
    #[arg(
        long,
        env = "TRANSFERD_RECONCILE_INTERVAL_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(..=86_400_000)
    )]
    pub reconcile_interval_ms: u64,

    /// How old a hold must be before the reconciler judges it; far above the Kafka timeout,
    /// so any message for it was written (or failed) long before.
    #[arg(
        long,
        env = "TRANSFERD_RECONCILE_MIN_AGE_MS",
        default_value_t = 300_000,
        value_parser = clap::value_parser!(u64).range(1_000..=30 * 86_400_000)
    )]
    pub reconcile_min_age_ms: u64,

    /// How long a reconciler pass waits for settlement to consume what the log held when the
    /// pass began; holds not yet settled are judged only once it has.
    #[arg(
        long,
        env = "TRANSFERD_RECONCILE_WAIT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(..=600_000)
    )]
    pub reconcile_wait_ms: u64,

    /// How long `Idempotency-Key`s are kept, in hours; the reconciler deletes older ones.
    #[arg(
        long,
        env = "TRANSFERD_IDEMPOTENCY_RETENTION_HOURS",
        default_value_t = 24,
        value_parser = clap::value_parser!(u64).range(24..=8_760)
    )]
    pub idempotency_retention_hours: u64,
}

impl Worker {
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

    /// The reconciler judges a hold only once any publish for it has long finished; the
    /// ranges of each setting alone are clap's to check.
    pub fn validate_with(&self, services: &Services) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.reconcile_min_age_ms > services.kafka_timeout_ms,
            "{} must exceed {}",
            setting!(Worker, reconcile_min_age_ms),
            setting!(Services, kafka_timeout_ms)
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

    /// A second, internal address for `/admin/*` (the status page included) and `/metrics`;
    /// the API's address then answers them 404 and serves the API and the probes only. Unset,
    /// everything is served on the API's address.
    #[arg(long, env = "TRANSFERD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Longest wait for a request's headers, in milliseconds: a client that stalls in them is
    /// disconnected.
    #[arg(
        long,
        env = "TRANSFERD_HEADER_TIMEOUT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000)
    )]
    pub header_timeout_ms: u64,

    /// Longest wait for a request's body, in milliseconds.
    #[arg(
        long,
        env = "TRANSFERD_BODY_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000)
    )]
    pub body_timeout_ms: u64,

    /// Longest time any request but `POST /transfers` takes, in milliseconds, body included;
    /// then 503. A transfer is not cut off: its decision is bounded by the guest and Kafka
    /// timeouts, and an answer cut short would hide whether its money moved.
    #[arg(
        long,
        env = "TRANSFERD_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
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
    #[arg(
        long,
        env = "TRANSFERD_MAX_CONNECTIONS",
        default_value_t = 1_024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000)
    )]
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
    #[arg(
        long,
        env = "TRANSFERD_GUEST_MEMORY_MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=4_096)
    )]
    pub guest_memory_mib: u64,

    /// Fuel one guest call may use (about one unit per wasm instruction): a call that uses
    /// it all fails (500, nothing published), and an upload whose invariant cases need more
    /// is refused.
    #[arg(
        long,
        env = "TRANSFERD_GUEST_FUEL_BUDGET",
        default_value_t = DEFAULT_GUEST_FUEL_BUDGET,
        value_parser = clap::value_parser!(u64).range(1_000..=1_000_000_000_000)
    )]
    pub guest_fuel_budget: u64,

    /// Directory for compiled guests, reused across restarts and activations; empty means
    /// `$HOME/.cache/transferd/compiled`, `off` compiles every time.
    #[arg(long, env = "TRANSFERD_GUEST_CACHE_DIR", default_value = "")]
    pub guest_cache_dir: String,

    /// Guest calls that may run at once; further requests wait for a slot. A call holds its
    /// slot until the broker acknowledges its publish, and each slot in use keeps its guest's
    /// written pages resident, so this bounds the pool's memory as well as its concurrency.
    #[arg(
        long,
        env = "TRANSFERD_GUEST_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub guest_concurrency: u32,

    /// Decisions one guest instance may make before it is dropped: 1 instantiates afresh for
    /// every request; more keeps instances between requests (the host's per-request state is
    /// reset each time; the guest's own memory is not).
    #[arg(
        long,
        env = "TRANSFERD_GUEST_REUSE_COUNT",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub guest_reuse_count: u32,

    /// How long each decided transfer's provenance (`transferd replay`, backtests) is kept,
    /// in hours; 0 records none.
    #[arg(
        long,
        env = "TRANSFERD_PROVENANCE_RETENTION_HOURS",
        default_value_t = 168,
        value_parser = clap::value_parser!(u64).range(..=8_760)
    )]
    pub provenance_retention_hours: u64,
}

impl Serve {
    pub fn provenance_retention(&self) -> Duration {
        Duration::from_secs(self.provenance_retention_hours * 3_600)
    }

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
            "{} must exceed {}",
            setting!(Worker, reconcile_min_age_ms),
            setting!(Serve, guest_timeout_ms)
        );
        anyhow::ensure!(
            self.guest_timeout_ms
                > 2 * self.services.kafka_timeout_ms + self.services.database_timeout_ms,
            "{} must exceed 2 × {} + {}",
            setting!(Serve, guest_timeout_ms),
            setting!(Services, kafka_timeout_ms),
            setting!(Services, database_timeout_ms)
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                token.expose().len() >= 16,
                "{} must be at least 16 characters",
                setting!(Serve, admin_token)
            );
        }
        anyhow::ensure!(
            self.admin_listen != Some(self.listen),
            "{} must differ from {}",
            setting!(Serve, admin_listen),
            setting!(Serve, listen)
        );
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
            "{} must be at least {MIN_JWT_SECRET_BYTES} bytes",
            setting!(Auth, jwt_secret)
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

/// `TRANSFERD_GUEST_FUEL_BUDGET`'s default: well above what the standard guest's invariant
/// cases use, so a rule change has room and a runaway loop does not.
pub const DEFAULT_GUEST_FUEL_BUDGET: u64 = 1_000_000;

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
    #[arg(
        long,
        env = "TRANSFERD_JWT_LEEWAY_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(..=600)
    )]
    pub jwt_leeway_seconds: u64,
}

impl Auth {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        let secret = setting!(Auth, jwt_secret);
        let public_key = setting!(Auth, jwt_public_key);
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => anyhow::bail!("set one of {secret} and {public_key}, not both"),
            (None, None) => anyhow::bail!(
                "set {secret} (HS256) or {public_key} (RS256/EdDSA), or {}=none to run without \
                 authentication",
                setting!(Auth, mode)
            ),
            (Some(secret), None) => secret.check_jwt_secret()?,
            (None, Some(_)) => {}
        }
        for (name, value) in [
            (setting!(Auth, jwt_issuer), &self.jwt_issuer),
            (setting!(Auth, jwt_audience), &self.jwt_audience),
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

/// See [`setting!`]: the environment variable of the argument `id` of `T`, else its flag.
pub fn setting_name<T: Args>(id: &str) -> String {
    let command = T::augment_args(clap::Command::new("transferd"));
    let name = command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(|arg| {
            arg.get_env()
                .map(|env| env.to_string_lossy().into_owned())
                .or_else(|| arg.get_long().map(|long| format!("--{long}")))
        });
    name.unwrap_or_else(|| id.to_string())
}

/// A setting of `transferd worker` that could not be handed to its child process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChildEnvError {
    #[error("the worker's settings cannot be read as values: {0}")]
    Unreadable(String),
    #[error("{0} has no value to hand the worker process")]
    Missing(String),
}

/// The settings `serve` parsed as the environment of the `transferd worker --supervised` child
/// it starts, so the child runs with them whether they came from flags or not: one variable
/// for each argument of `transferd worker` that has one, named as clap names it, with the
/// value of the field of the same id.
pub fn worker_environment(
    services: &Services,
    worker: &Worker,
) -> Result<Vec<(String, String)>, ChildEnvError> {
    let mut values = serde_json::Map::new();
    for part in [serde_json::to_value(services), serde_json::to_value(worker)] {
        match part.map_err(|error| ChildEnvError::Unreadable(error.to_string()))? {
            serde_json::Value::Object(fields) => values.extend(fields),
            other => return Err(ChildEnvError::Unreadable(other.to_string())),
        }
    }
    let command = WorkerOnly::augment_args(clap::Command::new("worker"));
    let mut environment = Vec::new();
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env() else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        let value = match values.get(arg.get_id().as_str()) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Number(number)) => number.to_string(),
            Some(serde_json::Value::Bool(flag)) => flag.to_string(),
            // An optional setting left unset stays unset in the child.
            Some(serde_json::Value::Null) => continue,
            _ => return Err(ChildEnvError::Missing(name)),
        };
        environment.push((name, value));
    }
    Ok(environment)
}

/// A setting read from the environment alone, before the command line is parsed, so that even
/// a bad argument is logged as chosen; docs/configuration.md lists these beside clap's.
pub struct EnvironmentSetting {
    pub name: &'static str,
    pub default: &'static str,
    pub accepted: &'static str,
    pub help: &'static str,
}

pub const LOG_FILTER: EnvironmentSetting = EnvironmentSetting {
    name: "TRANSFERD_LOG",
    default: "info",
    accepted: "a `tracing` filter: `info`, `transferd=debug,warn`",
    help: "Which log lines are written (to standard output).",
};

pub const LOG_FORMAT: EnvironmentSetting = EnvironmentSetting {
    name: "TRANSFERD_LOG_FORMAT",
    default: "pretty",
    accepted: "`pretty`, `json`",
    help: "`pretty` writes one readable line per event; `json` one object per line, with the \
           request's `request_id` and `trace_id` as fields of its `span`. Any other value logs \
           pretty, with a warning.",
};

pub const OTLP_ENDPOINT: EnvironmentSetting = EnvironmentSetting {
    name: "TRANSFERD_OTLP_ENDPOINT",
    default: "",
    accepted: "an `http://` or `https://` URL",
    help: "The collector's full traces URL (`https://collector:4318/v1/traces`): request and \
           settlement spans are exported there over OTLP/HTTP (protobuf). Wins over the \
           standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and `OTEL_EXPORTER_OTLP_ENDPOINT`; \
           when none of the three is set (or all are empty), nothing is exported.",
};

pub const OTEL_TRACES_ENDPOINT: EnvironmentSetting = EnvironmentSetting {
    name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    default: "",
    accepted: "an `http://` or `https://` URL",
    help: "OpenTelemetry's standard full traces URL, used as is; `TRANSFERD_OTLP_ENDPOINT` \
           wins over it.",
};

pub const OTEL_ENDPOINT: EnvironmentSetting = EnvironmentSetting {
    name: "OTEL_EXPORTER_OTLP_ENDPOINT",
    default: "",
    accepted: "an `http://` or `https://` URL",
    help: "OpenTelemetry's standard base URL of the collector (`https://collector:4318`): \
           spans go to its `/v1/traces`, over OTLP/HTTP (protobuf; \
           `OTEL_EXPORTER_OTLP_PROTOCOL` is not read). The two settings above win over it.",
};

pub const OTEL_SERVICE_NAME: EnvironmentSetting = EnvironmentSetting {
    name: "OTEL_SERVICE_NAME",
    default: "transferd",
    accepted: "a name",
    help: "The `service.name` exported spans carry. Empty means the default.",
};

const ENVIRONMENT_ONLY: [&EnvironmentSetting; 6] = [
    &LOG_FILTER,
    &LOG_FORMAT,
    &OTLP_ENDPOINT,
    &OTEL_TRACES_ENDPOINT,
    &OTEL_ENDPOINT,
    &OTEL_SERVICE_NAME,
];

/// The command that regenerates docs/configuration.md; the page and its test both name it.
pub const WRITE_PAGE_COMMAND: &str =
    "TRANSFERD_WRITE_DOCS=1 cargo test --release -p transferd --bin transferd configuration_page";

/// docs/configuration.md: every setting of `command` (transferd's command line) and of its
/// subcommands that has an environment variable, grouped by the commands that read it, then
/// the settings read from the environment alone.
pub fn configuration_page(command: &clap::Command) -> String {
    let mut entries = Vec::new();
    collect_settings(command, "", &mut entries);
    let mut page = format!(
        "# Configuration\n\n\
         <!-- Generated by configuration_page in host/src/config.rs; do not edit. Regenerate: \
         {WRITE_PAGE_COMMAND} -->\n\n\
         transferd takes each setting from a flag or from the environment variable beside it \
         (the flag wins when both are given); a value outside its range, or settings that \
         contradict each other, stop the process at start with a message naming them. \
         `serve` hands the settings it parsed to the settlement worker process it starts, so \
         both run with the same values. This page is generated from the code, from the same \
         definitions `transferd <command> --help` prints, and a unit test fails when it \
         differs from them. Options without an environment variable (`transferd token --sub`, \
         `transferd guest upload --note`) are listed by `transferd <command> --help`.\n"
    );
    let mut groups: Vec<String> = Vec::new();
    for entry in &entries {
        let group = entry.commands.join("`, `");
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    for group in groups {
        page.push_str(&format!("\n## Read by `{group}`\n"));
        for entry in entries
            .iter()
            .filter(|entry| entry.commands.join("`, `") == group)
        {
            page.push_str(&entry.render());
        }
    }
    page.push_str("\n## Read from the environment only, by every command\n");
    for setting in ENVIRONMENT_ONLY {
        let entry = PageEntry {
            name: setting.name.to_string(),
            flag: None,
            default: Some(setting.default.to_string()),
            accepted: Some(setting.accepted.to_string()),
            help: setting.help.to_string(),
            commands: Vec::new(),
        };
        page.push_str(&entry.render());
    }
    page
}

/// One setting on the configuration page.
struct PageEntry {
    name: String,
    flag: Option<String>,
    default: Option<String>,
    accepted: Option<String>,
    help: String,
    commands: Vec<String>,
}

impl PageEntry {
    /// The entry of `arg`, named `name`, read by `command`.
    fn of(arg: &Arg, name: String, command: String) -> PageEntry {
        let help = arg.get_long_help().or(arg.get_help());
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        PageEntry {
            name,
            flag: arg.get_long().map(|long| format!("--{long}")),
            default: (!default.is_empty()).then(|| default.join(", ")),
            accepted: accepted_values(arg),
            help: help.map(ToString::to_string).unwrap_or_default(),
            commands: vec![command],
        }
    }

    fn render(&self) -> String {
        let mut text = format!("\n### `{}`\n\n", self.name);
        if let Some(flag) = &self.flag {
            text.push_str(&format!("- Flag: `{flag}`\n"));
        }
        match self.default.as_deref() {
            Some("") => text.push_str("- Default: empty\n"),
            Some(default) => text.push_str(&format!("- Default: `{default}`\n")),
            None => text.push_str("- Default: none (unset)\n"),
        }
        if let Some(accepted) = &self.accepted {
            // A list of described values goes on lines of its own.
            let space = if accepted.starts_with('\n') { "" } else { " " };
            text.push_str(&format!("- Accepted:{space}{accepted}\n"));
        }
        text.push_str(&format!("\n{}\n", sentence(&self.help)));
        text
    }
}

/// `text` with the full stop clap takes off the end of a doc comment.
fn sentence(text: &str) -> String {
    if text.is_empty() || text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

/// Adds the settings of each subcommand of `command`, recursively, to `entries`: one entry per
/// argument with an environment variable, listing every command that reads it.
fn collect_settings(command: &clap::Command, path: &str, entries: &mut Vec<PageEntry>) {
    for subcommand in command.get_subcommands() {
        let name = format!("{path}{}", subcommand.get_name());
        for arg in subcommand.get_arguments() {
            let Some(env) = arg.get_env() else {
                continue;
            };
            if arg.is_hide_set() {
                continue;
            }
            let entry = PageEntry::of(arg, env.to_string_lossy().into_owned(), name.clone());
            let same = |seen: &&mut PageEntry| {
                seen.name == entry.name && seen.flag == entry.flag && seen.help == entry.help
            };
            match entries.iter_mut().find(same) {
                Some(seen) => seen.commands.push(name.clone()),
                None => entries.push(entry),
            }
        }
        collect_settings(subcommand, &format!("{name} "), entries);
    }
}

/// What an argument accepts: its possible values, else the whole numbers its parser takes.
fn accepted_values(arg: &Arg) -> Option<String> {
    let possible = arg.get_possible_values();
    if !possible.is_empty() {
        if possible.iter().all(|value| value.get_help().is_none()) {
            let names: Vec<String> = possible
                .iter()
                .map(|value| format!("`{}`", value.get_name()))
                .collect();
            return Some(names.join(", "));
        }
        let described = possible.iter().map(|value| {
            let help = value.get_help().map(ToString::to_string);
            format!(
                "\n  - `{}`: {}",
                value.get_name(),
                sentence(&help.unwrap_or_default())
            )
        });
        return Some(described.collect());
    }
    let (lowest, highest) = accepted_range(arg)?;
    let type_maxima = [
        i32::MAX.into(),
        u32::MAX.into(),
        i64::MAX.into(),
        u64::MAX.into(),
    ];
    Some(if type_maxima.contains(&highest) {
        format!("a whole number, {lowest} or more")
    } else {
        format!("a whole number from {lowest} to {highest}")
    })
}

/// The lowest and highest whole numbers `arg` accepts, asked of its own parser (clap keeps a
/// range to itself): a binary search on each side of its default, assuming, as clap's ranged
/// parsers ensure, that what it accepts is one interval. `None` for an argument that is not a
/// number (it accepts a word, or has no numeric default).
fn accepted_range(arg: &Arg) -> Option<(i128, i128)> {
    let long = arg.get_long()?;
    let accepts = |value: &str| {
        clap::Command::new("probe")
            .arg(arg.clone())
            .try_get_matches_from(["probe".to_string(), format!("--{long}={value}")])
            .is_ok()
    };
    let inside: i128 = arg.get_default_values().first()?.to_str()?.parse().ok()?;
    if accepts("not-a-number") || !accepts(&inside.to_string()) {
        return None;
    }
    let accepts_number = |value: i128| accepts(&value.to_string());
    // Beyond every 64-bit integer: rejected by any integer parser.
    let outside = i128::from(u64::MAX) + 1;
    Some((
        boundary(inside, -outside, accepts_number),
        boundary(inside, outside, accepts_number),
    ))
}

/// The accepted end of the boundary between `accepted` and `rejected`.
fn boundary(mut accepted: i128, mut rejected: i128, accepts: impl Fn(i128) -> bool) -> i128 {
    while (rejected - accepted).abs() > 1 {
        let middle = accepted + (rejected - accepted) / 2;
        if accepts(middle) {
            accepted = middle;
        } else {
            rejected = middle;
        }
    }
    accepted
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

    /// `transferd worker`'s settings as parsed from `args` (the first is the program's name).
    fn try_parse_worker(args: &[&str]) -> Result<WorkerOnly, clap::Error> {
        use clap::Parser;

        #[derive(Parser)]
        struct Line {
            #[command(flatten)]
            settings: WorkerOnly,
        }
        Line::try_parse_from(args).map(|line| line.settings)
    }

    /// Whether `arg` alone takes `value`.
    fn accepts(arg: &Arg, value: &str) -> bool {
        let long = arg.get_long().unwrap_or_default();
        clap::Command::new("probe")
            .arg(arg.clone())
            .try_get_matches_from(["probe".to_string(), format!("--{long}={value}")])
            .is_ok()
    }

    fn parse_worker(args: &[&str]) -> WorkerOnly {
        try_parse_worker(args).expect("every flag parses")
    }

    /// Every setting of the worker reaches the child `serve` starts, with its value: each flag
    /// gets an accepted value of its own, and the child's environment must carry exactly those,
    /// one variable for each argument with an environment variable.
    #[test]
    fn a_supervised_worker_gets_every_setting_serve_parsed() {
        let command = WorkerOnly::augment_args(clap::Command::new("worker"));
        let mut given = std::collections::BTreeMap::new();
        let mut args = vec!["worker".to_string()];
        for (index, arg) in command.get_arguments().enumerate() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let possible = arg.get_possible_values();
            let value = match accepted_range(arg) {
                Some((lowest, _)) => (lowest + 3 * index as i128 + 1).to_string(),
                None if !possible.is_empty() => {
                    possible[index % possible.len()].get_name().to_string()
                }
                // A number without a default (so without a range the page reads).
                None if !accepts(arg, "value") => (index + 1).to_string(),
                None => format!("value-{index}"),
            };
            args.push(format!("--{long}={value}"));
            given.insert(env.to_string_lossy().into_owned(), value);
        }
        assert!(given.len() >= 19, "the worker's settings: {given:?}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let parsed = parse_worker(&args);
        let child: std::collections::BTreeMap<String, String> =
            worker_environment(&parsed.services, &parsed.worker)
                .expect("every setting has a value")
                .into_iter()
                .collect();
        assert_eq!(child, given);
    }

    /// The defaults too: nothing is left for the child to take from elsewhere.
    #[test]
    fn a_supervised_worker_gets_the_defaults_it_was_not_given() {
        let parsed = parse_worker(&["worker"]);
        let child = worker_environment(&parsed.services, &parsed.worker).expect("values");
        let command = WorkerOnly::augment_args(clap::Command::new("worker"));
        let named = command.get_arguments().filter(|arg| {
            let optional = arg.get_default_values().is_empty();
            arg.get_env().is_some() && !optional
        });
        assert_eq!(child.len(), named.count());
        assert!(
            !child
                .iter()
                .any(|(name, _)| name == "TRANSFERD_REDIS_CA_FILE"),
            "an unset optional setting stays unset"
        );
        assert!(child.contains(&("TRANSFERD_SETTLEMENT_BATCH".into(), "1000".into())));
        assert!(child.contains(&("TRANSFERD_TOPIC_PREFIX".into(), String::new())));
    }

    /// Messages name a setting by its environment variable, as clap knows it.
    #[test]
    fn validation_messages_name_settings_by_their_variable() {
        assert_eq!(
            setting!(Services, kafka_timeout_ms),
            "TRANSFERD_KAFKA_TIMEOUT_MS"
        );
        assert_eq!(
            setting!(Serve, guest_timeout_ms),
            "TRANSFERD_GUEST_TIMEOUT_MS"
        );
        assert_eq!(setting!(Auth, mode), "TRANSFERD_AUTH");
        assert_eq!(setting!(Token, sub), "--sub");
        let mut settings = parse_worker(&["worker", "--kafka-timeout-ms=400000"]);
        let error = settings
            .worker
            .validate_with(&settings.services)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "TRANSFERD_RECONCILE_MIN_AGE_MS must exceed TRANSFERD_KAFKA_TIMEOUT_MS"
        );
        settings.services.topic_prefix = "a/b".to_string();
        let error = settings.services.validate().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("TRANSFERD_TOPIC_PREFIX may hold only")
        );
    }

    /// The ranges validation once checked by hand are clap's now: the same values pass.
    #[test]
    fn clap_refuses_values_outside_a_range_and_takes_its_ends() {
        let worker = |flag: &str| try_parse_worker(&["worker", flag]);
        for accepted in [
            "--kafka-timeout-ms=1",
            "--kafka-timeout-ms=600000",
            "--linger-ms=0",
            "--batch-max=10000",
            "--reconcile-min-age-ms=2592000000",
            "--idempotency-retention-hours=24",
        ] {
            assert!(worker(accepted).is_ok(), "{accepted}");
        }
        for refused in [
            "--kafka-timeout-ms=0",
            "--kafka-timeout-ms=600001",
            "--batch-max=0",
            "--reconcile-min-age-ms=999",
            "--idempotency-retention-hours=23",
            "--topic-partitions=1001",
        ] {
            assert!(worker(refused).is_err(), "{refused}");
        }
    }

    /// The page's ranges are what the parsers accept.
    #[test]
    fn the_page_reads_ranges_from_the_parsers() {
        let command = Serve::augment_args(clap::Command::new("serve"));
        let range = |id: &str| {
            let arg = command.get_arguments().find(|arg| arg.get_id() == id);
            accepted_values(arg.expect("an argument"))
        };
        assert_eq!(
            range("kafka_timeout_ms").as_deref(),
            Some("a whole number from 1 to 600000")
        );
        assert_eq!(
            range("linger_ms").as_deref(),
            Some("a whole number from 0 to 10000")
        );
        assert_eq!(
            range("rate_limit_burst").as_deref(),
            Some("a whole number, 0 or more")
        );
        assert_eq!(range("database_url"), None);
        assert_eq!(range("run_worker").as_deref(), Some("`true`, `false`"));
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::from("do-not-print-me".to_string());
        assert!(!format!("{secret:?}").contains("do-not-print-me"));
    }
}
