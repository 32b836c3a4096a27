//! Starting and stopping the `transferd` process under test: `serve` as a [`Host`], `worker`
//! as a [`WorkerProcess`], and one-shot subcommands run to their end.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::artifacts::{guest_file, transferd_binary};
use crate::process::{child_pids, terminate, wait_exit, wait_exit_blocking};
use crate::{ADMIN_TOKEN, KAFKA_BROKERS, Namespace, REDIS_URL, auth, free_port};

/// How to start a host; defaults talk to the shared local services directly.
#[derive(Clone)]
pub struct HostOptions {
    /// The executable: the release binary, or [`crate::crash_binary`] for the crash-point tests.
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
    subcommand: &[&str],
    name: &str,
) -> anyhow::Result<(Command, PathBuf)> {
    let mut command = Command::new(&options.binary);
    command
        .args(subcommand)
        .env("TRANSFERD_DATABASE_URL", &options.database_url)
        .env("TRANSFERD_REDIS_URL", &options.redis_url)
        .env("TRANSFERD_REDIS_PREFIX", namespace.redis_prefix())
        .env("TRANSFERD_KAFKA_BROKERS", &options.kafka_brokers)
        // Tansu, the test broker, cannot take an idempotent producer nor a replication factor
        // of -1 (docs/operations.md).
        .env("TRANSFERD_KAFKA_IDEMPOTENCE", "false")
        .env("TRANSFERD_TOPIC_REPLICATION_FACTOR", "1")
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
    eprintln!(
        "transferd {} log: {}",
        subcommand.join(" "),
        log_path.display()
    );
    Ok((command, log_path))
}

/// Runs `transferd <subcommand>` to its end (bounded by `limit`) and returns its stdout;
/// fails when it exits unsuccessfully.
pub async fn run_to_end(
    namespace: &Namespace,
    options: &HostOptions,
    subcommand: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let output = run_command(namespace, options, &[subcommand], limit).await?;
    anyhow::ensure!(
        output.status.success(),
        "transferd {subcommand} failed: {}",
        output.status
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `transferd <args>` to its end (bounded by `limit`), whatever its exit status, with
/// its stdout captured (its log lines go there too); stderr goes to the log file.
pub async fn run_command(
    namespace: &Namespace,
    options: &HostOptions,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<std::process::Output> {
    let name = args.join("-");
    let (mut command, _log_path) = transferd_command(namespace, options, args, &name)?;
    command.stdout(Stdio::piped());
    let child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "transferd {} did not finish within {limit:?}",
                args.join(" ")
            )
        })??;
    Ok(output)
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
        let (mut command, log_path) = transferd_command(namespace, options, &["worker"], name)?;
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
            transferd_command(namespace, &options, &["serve"], &format!("api-{port}"))?;
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
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
