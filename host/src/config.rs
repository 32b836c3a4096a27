//! Every setting, from flags and environment variables, validated once at start-up.
//!
//! Each flag has an environment variable of the same meaning; README.md has the table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

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

    /// Partitions for topics transferd creates when they are missing.
    #[arg(long, env = "TRANSFERD_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// How long a transfer waits for Kafka to acknowledge its message before it fails with 503.
    #[arg(long, env = "TRANSFERD_KAFKA_TIMEOUT_MS", default_value_t = 5_000)]
    pub kafka_timeout_ms: u64,

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

/// Settings of `transferd worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerOnly {
    #[command(flatten)]
    pub services: Services,

    #[command(flatten)]
    pub worker: Worker,
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

    /// Bearer token for /admin routes. Without one the admin API answers 401 to everyone.
    #[arg(long, env = "TRANSFERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

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

    /// Guest calls that may run at once; further requests wait for a slot.
    #[arg(long, env = "TRANSFERD_GUEST_CONCURRENCY", default_value_t = 256)]
    pub guest_concurrency: u32,
}

impl Serve {
    pub fn guest_timeout(&self) -> Duration {
        Duration::from_millis(self.guest_timeout_ms)
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
            (1..=4096).contains(&self.guest_memory_mib),
            "TRANSFERD_GUEST_MEMORY_MIB must be 1..=4096"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.guest_concurrency),
            "TRANSFERD_GUEST_CONCURRENCY must be 1..=10000"
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                token.len() >= 16,
                "TRANSFERD_ADMIN_TOKEN must be at least 16 characters"
            );
        }
        Ok(())
    }
}
