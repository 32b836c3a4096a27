//! The end-to-end harness: a private database, Redis key prefix and topic prefix per test,
//! the real `transferd` binary started as a child process, a Kafka consumer to read back what
//! it produced, and a TCP proxy that can cut a dependency off and bring it back.
//!
//! Every test makes its own names, so tests run in parallel and never depend on leftovers.

pub mod auth;
pub mod load;
pub mod proxy;
pub mod services;
pub mod stale;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A target directory's file: from an environment variable, else next to the test binary.
fn artifact(variable: &str, relative: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    // target/release/deps/<test> → target/
    let executable = std::env::current_exe().expect("the test binary has a path");
    let target = executable
        .ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps");
    target.join(relative)
}

pub fn transferd_binary() -> PathBuf {
    artifact("TRANSFERD_BIN", "release/transferd")
}

/// The host built with the cargo feature `crash-points` (scripts/test.sh builds it).
pub fn crash_binary() -> PathBuf {
    artifact("TRANSFERD_CRASH_BIN", "release/transferd-crash-points")
}

pub fn guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_GUEST",
        "wasm32-wasip2/release/transferd_guest.wasm",
    )
}

/// The standard logic with a lower amount limit (100 in major units): a rule change.
pub fn strict_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_STRICT_GUEST",
        "strict-guest/wasm32-wasip2/release/transferd_test_guest_strict.wasm",
    )
}

/// The standard logic publishing the wrong transfer in the way the request's description
/// names (tests/guests/hostile).
pub fn hostile_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_HOSTILE_GUEST",
        "hostile-guest/wasm32-wasip2/release/transferd_test_guest_hostile.wasm",
    )
}

pub fn panicking_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_PANICKING_GUEST",
        "wasm32-wasip2/release/transferd_test_guest_panicking.wasm",
    )
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Names private to one test: a database, a Redis key prefix, a topic prefix.
pub struct Namespace {
    pub id: String,
    pub database: String,
}

impl Namespace {
    pub async fn new() -> anyhow::Result<Namespace> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database = stale::database_name(&id, stale::now_unix_s());
        let admin = sqlx::PgPool::connect(POSTGRES_ADMIN_URL).await?;
        stale::sweep_once(&admin).await;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(Namespace { id, database })
    }

    pub fn database_url(&self) -> String {
        self.database_url_via(5432)
    }

    pub fn database_url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.database)
    }

    pub fn redis_prefix(&self) -> String {
        format!("t{}:", self.id)
    }

    pub fn topic_prefix(&self) -> String {
        format!("t{}.", self.id)
    }

    pub fn transfer_topic(&self) -> String {
        format!("{}transfer_topic", self.topic_prefix())
    }

    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.redis_prefix())
    }

    pub async fn ledger(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.database_url()).await?)
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(REDIS_URL)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The settled balance in the ledger, in minor units.
    pub async fn ledger_balance(
        &self,
        user_id: i64,
        currency: &str,
    ) -> anyhow::Result<Option<i64>> {
        let pool = self.ledger().await?;
        let balance = sqlx::query_scalar(
            "SELECT balance_minor FROM accounts WHERE user_id = $1 AND currency = $2",
        )
        .bind(user_id)
        .bind(currency)
        .fetch_optional(&pool)
        .await?;
        pool.close().await;
        Ok(balance)
    }
}

/// How to start a host; defaults talk to the shared local services directly.
#[derive(Clone)]
pub struct HostOptions {
    /// The executable: the release binary, or [`crash_binary`] for the crash-point tests.
    pub binary: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    pub guest_file: PathBuf,
    pub kafka_timeout_ms: u64,
    /// Run the settlement worker inside the API process.
    pub run_worker: bool,
    /// `TRANSFERD_JWT_SECRET`: the harness's own by default; none for a host checking tokens
    /// some other way (a public key) or not at all.
    pub jwt_secret: Option<String>,
    /// `TRANSFERD_TOPIC_PARTITIONS`: three by default, so that the tests cover a log of
    /// several partitions; `None` leaves the service's own default (the benchmarks).
    pub topic_partitions: Option<u32>,
    pub extra_env: Vec<(String, String)>,
}

impl HostOptions {
    pub fn new(namespace: &Namespace) -> HostOptions {
        HostOptions {
            binary: transferd_binary(),
            database_url: namespace.database_url(),
            redis_url: REDIS_URL.to_string(),
            kafka_brokers: KAFKA_BROKERS.to_string(),
            guest_file: guest_file(),
            kafka_timeout_ms: 5_000,
            run_worker: true,
            jwt_secret: Some(auth::JWT_SECRET.to_string()),
            topic_partitions: Some(3),
            extra_env: Vec::new(),
        }
    }
}

/// `transferd <subcommand>` with the namespace's settings; its log goes to the returned file,
/// named in the test's output (shown when the test fails).
fn transferd_command(
    namespace: &Namespace,
    options: &HostOptions,
    subcommand: &str,
    name: &str,
) -> anyhow::Result<(Command, PathBuf)> {
    let mut command = Command::new(&options.binary);
    command
        .arg(subcommand)
        .env("TRANSFERD_DATABASE_URL", &options.database_url)
        .env("TRANSFERD_REDIS_URL", &options.redis_url)
        .env("TRANSFERD_REDIS_PREFIX", namespace.redis_prefix())
        .env("TRANSFERD_KAFKA_BROKERS", &options.kafka_brokers)
        .env("TRANSFERD_TOPIC_PREFIX", namespace.topic_prefix())
        .env(
            "TRANSFERD_KAFKA_TIMEOUT_MS",
            options.kafka_timeout_ms.to_string(),
        )
        .env("TRANSFERD_GUEST", &options.guest_file)
        .env("TRANSFERD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TRANSFERD_RUN_WORKER", options.run_worker.to_string())
        .env("TRANSFERD_LOG", "warn")
        .stdin(Stdio::null());
    match &options.jwt_secret {
        Some(secret) => command.env("TRANSFERD_JWT_SECRET", secret),
        None => command.env_remove("TRANSFERD_JWT_SECRET"),
    };
    match options.topic_partitions {
        Some(partitions) => command.env("TRANSFERD_TOPIC_PARTITIONS", partitions.to_string()),
        None => command.env_remove("TRANSFERD_TOPIC_PARTITIONS"),
    };
    for (name, value) in &options.extra_env {
        command.env(name, value);
    }
    let log_path = std::env::temp_dir().join(format!("transferd-test-{}-{name}.log", namespace.id));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    command.stdout(log_file.try_clone()?).stderr(log_file);
    eprintln!("transferd {subcommand} log: {}", log_path.display());
    Ok((command, log_path))
}

/// Sends SIGTERM to a child process.
fn terminate(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
    Ok(())
}

/// Waits up to `limit` for a child to exit; its status, or `None` if it still runs.
async fn wait_exit(
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `transferd <subcommand>` to its end (bounded by `limit`) and returns its stdout;
/// fails when it exits unsuccessfully.
pub async fn run_to_end(
    namespace: &Namespace,
    options: &HostOptions,
    subcommand: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let (mut command, _log_path) = transferd_command(namespace, options, subcommand, subcommand)?;
    command.stdout(Stdio::piped());
    let child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("transferd {subcommand} did not finish within {limit:?}"))??;
    anyhow::ensure!(
        output.status.success(),
        "transferd {subcommand} failed: {}",
        output.status
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Waits up to `limit` for a child to exit by itself.
fn wait_exit_blocking(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process ended by SIGKILL (what a crash point and `kill -9` do).
pub fn killed_by_sigkill(status: &ExitStatus) -> bool {
    status.signal() == Some(9)
}

/// The last `lines` lines of a log file, to show why a process ended.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running `transferd worker`, killed (SIGKILL) when dropped or told to.
pub struct WorkerProcess {
    child: Child,
    pub log_path: PathBuf,
}

impl WorkerProcess {
    pub fn start(
        namespace: &Namespace,
        options: &HostOptions,
        name: &str,
    ) -> anyhow::Result<WorkerProcess> {
        let (mut command, log_path) = transferd_command(namespace, options, "worker", name)?;
        let child = command.spawn()?;
        Ok(WorkerProcess { child, log_path })
    }

    /// SIGTERM, then waits up to `limit` for the exit; the status, or `None` if it still runs.
    pub async fn terminate(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        terminate(&self.child)?;
        wait_exit(&mut self.child, limit).await
    }

    /// Waits up to `limit` for the worker to exit by itself (a crash point); None if it runs on.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILL: no shutdown, no flushing, no offset commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `transferd serve`, killed when dropped.
pub struct Host {
    child: Child,
    pub port: u16,
    pub base_url: String,
    pub client: reqwest::Client,
    pub log_path: PathBuf,
}

impl Host {
    pub async fn start(namespace: &Namespace) -> anyhow::Result<Host> {
        Host::start_with(namespace, HostOptions::new(namespace)).await
    }

    pub async fn start_with(namespace: &Namespace, options: HostOptions) -> anyhow::Result<Host> {
        Host::start_on(namespace, options, free_port()).await
    }

    /// Starts on a given port: a restarted host keeps its clients' address.
    pub async fn start_on(
        namespace: &Namespace,
        options: HostOptions,
        port: u16,
    ) -> anyhow::Result<Host> {
        let (mut command, log_path) =
            transferd_command(namespace, &options, "serve", &format!("api-{port}"))?;
        command.env("TRANSFERD_LISTEN", format!("127.0.0.1:{port}"));
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", options.binary.display()))?;
        let mut host = Host {
            child,
            port,
            base_url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            log_path,
        };
        host.wait_ready(Duration::from_secs(60)).await?;
        Ok(host)
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                bail!("transferd exited before it was ready: {status}");
            }
            if let Ok(response) = self
                .client
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("transferd was not ready within {limit:?}")
    }

    /// SIGTERM, then waits up to `limit` for the exit; the status, or `None` if it still runs.
    pub async fn terminate(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        terminate(&self.child)?;
        wait_exit(&mut self.child, limit).await
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, if it did.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the process to exit by itself (a crash point).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The process id, for reading its CPU time and memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The settlement worker process serve runs (its only child), once it is running.
    pub async fn worker_pid(&self, limit: Duration) -> anyhow::Result<u32> {
        let deadline = Instant::now() + limit;
        loop {
            if let [worker] = child_pids(self.pid())[..] {
                return Ok(worker);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "serve had no single worker process within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash or an operator's `kill -9` would: nothing is flushed.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        wait_exit_blocking(&mut self.child, Duration::from_secs(10))
    }

    pub async fn post_json(&self, path: &str, body: &str) -> anyhow::Result<Reply> {
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .bearer_auth(auth::token_for_body(body))
            .body(body.to_string())
            .send()
            .await?;
        Reply::read(response).await
    }

    /// `GET path` as an admin; fails unless the answer is 200 with a JSON body.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(auth::admin_token())
            .send()
            .await?;
        let reply = Reply::read(response).await?;
        anyhow::ensure!(
            reply.status == 200,
            "GET {path}: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }

    /// `POST path` with an `Idempotency-Key`: a transfer as its sender, a deposit as the
    /// static admin.
    pub async fn post_with_key(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Reply> {
        self.post_text_with_key(path, &body.to_string(), key).await
    }

    /// [`Host::post_with_key`] with any body text, JSON or not.
    pub async fn post_text_with_key(
        &self,
        path: &str,
        text: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        let text = text.to_string();
        let token = if path.starts_with("/admin") {
            ADMIN_TOKEN.to_string()
        } else {
            auth::token_for_body(&text)
        };
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .bearer_auth(token)
            .body(text)
            .send()
            .await?;
        Reply::read(response).await
    }

    pub async fn transfer(&self, body: Value) -> anyhow::Result<Reply> {
        self.post_json("/transfers", &body.to_string()).await
    }

    /// The sum of the `/metrics` samples of `name` whose labels contain every one of `labels`
    /// (each written as in the text format, e.g. `outcome="accepted"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base_url))
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

    /// Uploads a guest component as the static admin; its version. Fails unless stored (201).
    pub async fn upload_guest(&self, file: &Path) -> anyhow::Result<String> {
        let uploaded = self
            .client
            .put(format!("{}/admin/guest", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .body(std::fs::read(file)?)
            .send()
            .await?;
        anyhow::ensure!(uploaded.status() == 201, "upload: {}", uploaded.status());
        let version = uploaded.json::<Value>().await?["version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(version)
    }

    /// Funds an account through the admin API; fails the test if it is refused.
    pub async fn deposit(
        &self,
        user_id: i64,
        currency: &str,
        amount: &str,
    ) -> anyhow::Result<Value> {
        let body = serde_json::json!({"user_id": user_id, "currency": currency, "amount": amount});
        let response = self
            .client
            .post(format!("{}/admin/deposits", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await?;
        let reply = Reply::read(response).await?;
        anyhow::ensure!(
            reply.status == 200,
            "deposit refused: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A response read whole; a body that is not JSON becomes a JSON string.
    pub async fn read(response: reqwest::Response) -> anyhow::Result<Reply> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The `type`s of a FastAPI-style validation error, with the field each names.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.body["detail"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let field = item["loc"]
                            .as_array()
                            .and_then(|loc| loc.last())
                            .and_then(Value::as_str);
                        (
                            field.unwrap_or("").to_string(),
                            item["type"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: String,
    pub payload: String,
    pub json: Value,
    pub headers: Vec<(String, String)>,
}

/// Reads messages from `topic` from the beginning until `count` arrived or `limit` passed.
pub async fn consume(
    brokers: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Consumed>> {
    consume_until(brokers, topic, limit, |consumed| consumed.len() >= count).await
}

/// The settled transfers that `transfer_events` reports (each message is a settled batch,
/// `{"transfers":[…]}`), in log order, read until `count` of them are there or `limit` passes.
pub async fn consume_transfer_events(
    brokers: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Value>> {
    let consumed = consume_until(brokers, topic, limit, |consumed| {
        event_entries(consumed).count() >= count
    })
    .await?;
    for message in &consumed {
        anyhow::ensure!(
            message.json["transfers"].is_array(),
            "an event message without a transfers array: {}",
            message.payload
        );
        anyhow::ensure!(
            message.headers.is_empty(),
            "event messages carry no headers: {:?}",
            message.headers
        );
    }
    Ok(event_entries(&consumed).cloned().collect())
}

/// The entries of `topic`'s event messages from its start until every transfer of `ids` has
/// one or `limit` passes. Unlike a count, redelivered batches (events are at least once)
/// cannot end the reading early.
pub async fn consume_events_covering(
    brokers: &str,
    topic: &str,
    ids: &std::collections::HashSet<uuid::Uuid>,
    limit: Duration,
) -> anyhow::Result<Vec<Value>> {
    let covers = |consumed: &[Consumed]| {
        let seen: std::collections::HashSet<uuid::Uuid> = event_entries(consumed)
            .filter_map(|entry| entry["transaction_id"].as_str()?.parse().ok())
            .collect();
        ids.is_subset(&seen)
    };
    let consumed = consume_until(brokers, topic, limit, covers).await?;
    Ok(event_entries(&consumed).cloned().collect())
}

fn event_entries(consumed: &[Consumed]) -> impl Iterator<Item = &Value> {
    consumed
        .iter()
        .filter_map(|message| message.json["transfers"].as_array())
        .flatten()
}

/// Messages of `topic` from its start until `done` says so or `limit` passes.
async fn consume_until(
    brokers: &str,
    topic: &str,
    limit: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut consumed = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&consumed) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(_error)) => {
                // The topic may not exist yet the first time the consumer asks; keep waiting.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
                let payload =
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string();
                let json = serde_json::from_str(&payload).unwrap_or(Value::Null);
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                let value =
                                    String::from_utf8_lossy(header.value.unwrap_or_default())
                                        .to_string();
                                (header.key.to_string(), value)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                consumed.push(Consumed {
                    key,
                    payload,
                    json,
                    headers,
                });
            }
        }
    }
    Ok(consumed)
}

/// Where a private broker keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// Gone when the broker stops.
    Memory,
    /// A SQLite file in a directory of its own; survives a restart or a crash.
    Sqlite,
}

/// The Tansu binary: `TRANSFERD_TANSU` (the scripts set it to the build with SQLite storage),
/// else `tansu` on PATH.
pub fn tansu_binary() -> PathBuf {
    std::env::var_os("TRANSFERD_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

/// Tokio worker threads for a private broker: `TANSU_WORKER_THREADS` (the scripts set it, 1 by
/// default, as for the broker they run themselves), else 1.
fn tansu_worker_threads() -> String {
    std::env::var("TANSU_WORKER_THREADS").unwrap_or_else(|_| "1".to_string())
}

/// A private Tansu broker reached only through a proxy, for tests that take the broker away:
/// it advertises the proxy's port, so cutting the proxy cuts every client off while the broker
/// keeps its log, as a network outage would. It can also be killed and started again for real.
pub struct Broker {
    child: TansuProcess,
    proxy: proxy::Proxy,
    internal_port: u16,
    storage: BrokerStorage,
    directory: PathBuf,
}

impl Broker {
    /// A broker with memory storage.
    pub async fn start() -> anyhow::Result<Broker> {
        Broker::start_with(BrokerStorage::Memory).await
    }

    pub async fn start_with(storage: BrokerStorage) -> anyhow::Result<Broker> {
        let internal_port = free_port();
        let proxy = proxy::Proxy::start(internal_port).await?;
        let directory = std::env::temp_dir().join(format!(
            "transferd-test-broker-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&directory)?;
        eprintln!("broker log: {}", directory.with_extension("log").display());
        let child = spawn_tansu(internal_port, proxy.port, storage, &directory)?;
        let broker = Broker {
            child,
            proxy,
            internal_port,
            storage,
            directory,
        };
        broker.wait_listening().await?;
        Ok(broker)
    }

    async fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.internal_port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("tansu did not listen on {} within 30s", self.internal_port)
    }

    /// SIGKILLs the broker (a crash: nothing flushed) and starts it again on the same port
    /// and storage.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill();
        self.child = spawn_tansu(
            self.internal_port,
            self.proxy.port,
            self.storage,
            &self.directory,
        )?;
        self.wait_listening().await
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// The indexes on Tansu's `header` table in this broker's SQLite file (read with python3's
    /// sqlite3, which the index script uses too).
    pub fn header_indexes(&self) -> anyhow::Result<Vec<String>> {
        let output = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 db = sqlite3.connect(sys.argv[1])\n\
                 for (name,) in db.execute(\"select name from sqlite_master where type = 'index' and tbl_name = 'header'\"):\n    print(name)",
            ])
            .arg(self.directory.join("tansu.db"))
            .output()
            .context("reading the broker's SQLite file with python3")?;
        anyhow::ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The `TOKIO_WORKER_THREADS` the running broker was started with (none: one worker per
    /// core), and what the scripts ask for (`TANSU_WORKER_THREADS`). Read from its environment,
    /// not its threads: tokio names its blocking threads as it names its workers.
    pub fn tokio_workers(&self) -> anyhow::Result<(Option<String>, String)> {
        let environ = std::fs::read(format!("/proc/{}/environ", self.child.id()))?;
        let started_with = environ
            .split(|byte| *byte == 0)
            .filter_map(|entry| entry.strip_prefix(b"TOKIO_WORKER_THREADS="))
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .next_back();
        Ok((started_with, tansu_worker_threads()))
    }

    /// Whether Tansu's SQLite storage task died: Tansu 0.6 panics ("more or less than one
    /// row", `lite.rs`) when a fetch meets a partition deleted under it, and every storage
    /// request after that fails. An upstream bug; a test that deletes topics under a running
    /// consumer restarts the broker when it happens, as an operator would.
    pub fn storage_died(&self) -> bool {
        std::fs::read_to_string(self.directory.with_extension("log"))
            .is_ok_and(|log| log.contains("more or less than one row"))
    }

    /// Cuts every client off the broker.
    pub async fn cut(&mut self) {
        self.proxy.cut().await;
    }

    /// Lets clients reach the broker again.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        self.proxy.restore().await
    }

    /// Creates a topic on this broker.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()?;
        let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&topic], &options).await? {
            if let Err((name, code)) = result
                && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
            {
                bail!("creating {name}: {code}");
            }
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The broker goes before its storage does.
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A Tansu process that is killed when dropped, so a test or benchmark that fails half way
/// never leaves a broker running.
pub struct TansuProcess(Child);

impl TansuProcess {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILLs the broker (a crash: nothing flushed) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts Tansu on `internal_port`, advertising `advertised_port` (a proxy's, or the same port
/// for a broker clients reach directly), run in `directory` (Tansu resolves `sqlite://NAME` in
/// its working directory); its log goes to `directory.log`.
pub fn spawn_tansu(
    internal_port: u16,
    advertised_port: u16,
    storage: BrokerStorage,
    directory: &std::path::Path,
) -> anyhow::Result<TansuProcess> {
    let engine = match storage {
        BrokerStorage::Memory => "memory://tansu/",
        BrokerStorage::Sqlite => {
            index_tansu_headers(&directory.join("tansu.db"))?;
            "sqlite://tansu.db"
        }
    };
    // Beside the directory, which is removed with the broker: the log outlives a failed test.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.with_extension("log"))?;
    Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{internal_port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised_port}"),
            "--storage-engine",
            engine,
        ])
        .env("TOKIO_WORKER_THREADS", tansu_worker_threads())
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map(TansuProcess)
        .context("starting tansu (scripts/services.sh installs it)")
}

/// Adds the index Tansu 0.6's SQLite storage lacks to `database` before a broker opens it,
/// with the script `scripts/services.sh` uses (`scripts/tansu-sqlite-index.py` says why).
fn index_tansu_headers(database: &Path) -> anyhow::Result<()> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/tansu-sqlite-index.py"
    );
    let status = Command::new("python3")
        .arg(script)
        .arg(database)
        .status()
        .context("running scripts/tansu-sqlite-index.py (python3)")?;
    anyhow::ensure!(
        status.success(),
        "{script} {}: {status}",
        database.display()
    );
    Ok(())
}

/// The ledger's invariants, read in one place so every test checks them the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Sum of every balance, system account included, per currency: must be zero.
    pub nonzero_currency_sums: Vec<(String, i64)>,
    /// User accounts below zero: must be none.
    pub negative_accounts: i64,
    pub completed_transfers: i64,
    pub rejected_transfers: i64,
    /// Journal entries of kind-transfer rows.
    pub transfer_entries: i64,
    /// Transfers whose entries do not sum to zero, or completed ones without exactly two.
    pub unbalanced_transfers: i64,
    /// Accounts whose balance differs from the sum of their journal entries.
    pub balances_off_journal: i64,
}

impl Namespace {
    pub async fn check_ledger(&self) -> anyhow::Result<LedgerCheck> {
        let pool = self.ledger().await?;
        let nonzero_currency_sums: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, SUM(balance_minor)::bigint FROM accounts GROUP BY currency HAVING SUM(balance_minor) <> 0",
        )
        .fetch_all(&pool)
        .await?;
        let negative_accounts: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts WHERE user_id > 0 AND balance_minor < 0",
        )
        .fetch_one(&pool)
        .await?;
        let (completed_transfers, rejected_transfers): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'rejected')
             FROM transfers WHERE kind = 'transfer'",
        )
        .fetch_one(&pool)
        .await?;
        let transfer_entries: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM journal_entries j JOIN transfers t USING (transaction_id) WHERE t.kind = 'transfer'",
        )
        .fetch_one(&pool)
        .await?;
        let unbalanced_transfers: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM transfers t
             LEFT JOIN (SELECT transaction_id, COUNT(*) AS n, SUM(amount_minor) AS total
                        FROM journal_entries GROUP BY transaction_id) j USING (transaction_id)
             WHERE (t.status = 'completed' AND (j.n IS DISTINCT FROM 2 OR j.total <> 0))
                OR (t.status <> 'completed' AND j.n IS NOT NULL)",
        )
        .fetch_one(&pool)
        .await?;
        let balances_off_journal: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts a
             LEFT JOIN (SELECT user_id, currency, SUM(amount_minor) AS total FROM journal_entries
                        GROUP BY user_id, currency) j USING (user_id, currency)
             WHERE a.balance_minor <> COALESCE(j.total, 0)",
        )
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        Ok(LedgerCheck {
            nonzero_currency_sums,
            negative_accounts,
            completed_transfers,
            rejected_transfers,
            transfer_entries,
            unbalanced_transfers,
            balances_off_journal,
        })
    }

    /// Waits until the ledger holds `count` settled transfers (kind `transfer`).
    pub async fn wait_settled(&self, count: i64, limit: Duration) -> anyhow::Result<i64> {
        self.wait_count(
            "SELECT COUNT(*) FROM transfers WHERE kind = 'transfer'",
            |settled| settled >= count,
            limit,
        )
        .await
    }

    /// Waits until settlement has run every settled batch's after-commit effects (Redis, the
    /// event message) and forgotten them: until then it may run them again, and a test that
    /// changes what they touch would race it. True when none are left within `limit`.
    pub async fn wait_effects_done(&self, limit: Duration) -> anyhow::Result<bool> {
        let left = self
            .wait_count(
                "SELECT COUNT(*) FROM settlement_effect_batches",
                |left| left == 0,
                limit,
            )
            .await?;
        Ok(left == 0)
    }

    /// Polls the ledger's `count_sql` every 100 ms until `done` holds for it or `limit` has
    /// passed; returns the last count.
    async fn wait_count(
        &self,
        count_sql: &'static str,
        done: impl Fn(i64) -> bool,
        limit: Duration,
    ) -> anyhow::Result<i64> {
        let pool = self.ledger().await?;
        let deadline = Instant::now() + limit;
        loop {
            let count: i64 = sqlx::query_scalar(count_sql).fetch_one(&pool).await?;
            if done(count) || Instant::now() >= deadline {
                pool.close().await;
                return Ok(count);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The transaction ids the ledger has settled (kind `transfer`).
    pub async fn settled_ids(&self) -> anyhow::Result<Vec<uuid::Uuid>> {
        let pool = self.ledger().await?;
        let ids =
            sqlx::query_scalar("SELECT transaction_id FROM transfers WHERE kind = 'transfer'")
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        Ok(ids)
    }
}

/// A small deterministic generator for load tests (xorshift64*): reproducible, no dependency.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high);
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        low + (value % ((high - low + 1) as u64)) as i64
    }
}

/// Deletes topics the way an operator (or a broker that lost its log) would take them away.
pub async fn delete_topics(brokers: &str, topics: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(topics, &options).await? {
        if let Err((name, code)) = result {
            bail!("deleting {name}: {code}");
        }
    }
    Ok(())
}

/// One hold still in Redis: the transfer it belongs to and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub transaction_id: String,
    pub user_id: i64,
    pub currency: String,
    pub amount_minor: i64,
}

impl Namespace {
    /// Every hold in the namespace's `holds:{user_id}:{currency}` hashes (the `total` fields
    /// left out).
    pub async fn holds(&self) -> anyhow::Result<Vec<Held>> {
        use redis::AsyncCommands;
        let mut redis = self.redis().await?;
        let prefix = self.redis_key("holds:");
        // KEYS is fine here: a test's namespace holds a few dozen keys.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut redis)
            .await?;
        let mut holds = Vec::new();
        for key in keys {
            let Some((user, currency)) = key[prefix.len()..].split_once(':') else {
                continue;
            };
            let user_id: i64 = user.parse().with_context(|| format!("hold key {key}"))?;
            let fields: Vec<(String, i64)> = redis.hgetall(&key).await?;
            for (transaction_id, amount_minor) in fields {
                if transaction_id != "total" {
                    holds.push(Held {
                        transaction_id,
                        user_id,
                        currency: currency.to_string(),
                        amount_minor,
                    });
                }
            }
        }
        Ok(holds)
    }

    /// Which of `ids` the ledger has settled (completed or rejected).
    pub async fn settled_among(
        &self,
        ids: &[uuid::Uuid],
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let pool = self.ledger().await?;
        let settled: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT t.transaction_id FROM UNNEST($1::uuid[]) AS i(transaction_id) JOIN transfers t USING (transaction_id)",
        )
        .bind(ids)
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(settled.into_iter().collect())
    }

    /// Waits until every one of `ids` is settled or `limit` passed; returns the settled ones.
    /// A ledger that cannot be reached yet (just restarted) is asked again.
    pub async fn wait_ids_settled(
        &self,
        ids: &[uuid::Uuid],
        limit: Duration,
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let deadline = Instant::now() + limit;
        loop {
            let settled = self.settled_among(ids).await;
            if let Ok(settled) = &settled
                && settled.len() == ids.len()
            {
                return Ok(settled.clone());
            }
            if Instant::now() >= deadline {
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// User accounts whose cached balance exists and differs from the ledger: (user, currency,
    /// cached, ledger). A missing cache entry is fine (read from the ledger on demand).
    pub async fn cache_off_ledger(&self) -> anyhow::Result<Vec<(i64, String, i64, i64)>> {
        use redis::AsyncCommands;
        let pool = self.ledger().await?;
        let accounts: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT user_id, currency, balance_minor FROM accounts WHERE user_id > 0 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        let mut redis = self.redis().await?;
        let mut off = Vec::new();
        for (user_id, currency, ledger) in accounts {
            let cached: Option<i64> = redis
                .get(self.redis_key(&format!("balance:{user_id}:{currency}")))
                .await?;
            if let Some(cached) = cached
                && cached != ledger
            {
                off.push((user_id, currency, cached, ledger));
            }
        }
        Ok(off)
    }
}

/// The live child processes of `pid` (serve's settlement worker, PostgreSQL's backends).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{candidate}/stat")) else {
                return false;
            };
            // The parent's pid is the second field after the parenthesised command name.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// CPU time (user + system, with reaped children: PostgreSQL's exited backends) in clock
/// ticks, and the peak RSS in KiB, of one process.
pub fn process_figures(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // utime, stime, cutime, cstime are fields 14–17 of stat; 12–15 after the name.
    let ticks = tick(11)? + tick(12)? + tick(13)? + tick(14)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    Some((ticks, peak_kib))
}

/// Writes `payload` to one partition of `topic` as another producer would (not through
/// transferd): what a foreign writer, a bug or an older version can leave in the log.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    partition: i32,
    payload: &[u8],
) -> anyhow::Result<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()?;
    let record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key("foreign")
        .payload(payload);
    let delivered = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("producing to {topic}/{partition}: {error}"))?;
    Ok((delivered.partition, delivered.offset))
}
