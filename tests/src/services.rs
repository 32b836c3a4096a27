//! Stopping and starting the shared local services for the fault tests: really stopped, as an
//! operator's restart or a crash would, not only cut off by a proxy.
//!
//! Every stop and start lives here. A [`Services`] remembers what it stopped and starts it
//! again when dropped, so a failing test never leaves PostgreSQL, Redis or the broker down.
//! Tests that use it change the services every other test uses: each lives in its own test
//! binary, which `cargo test` runs alone.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const POSTGRES_PORT: u16 = 5432;
pub const REDIS_PORT: u16 = 6379;
pub const KAFKA_PORT: u16 = 9092;

/// How long a service may take to stop or to listen again.
const PORT_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Postgres,
    Redis,
    Broker,
}

/// The shared services, with what this test stopped.
#[derive(Default)]
pub struct Services {
    stopped: Vec<Service>,
    /// Redis's own settings, read before stopping it, so it comes back exactly as it was.
    redis_arguments: Option<Vec<String>>,
}

impl Services {
    pub fn new() -> Services {
        Services::default()
    }

    pub async fn stop(&mut self, service: Service) -> anyhow::Result<()> {
        match service {
            Service::Postgres => stop_postgres().await?,
            Service::Redis => {
                self.redis_arguments = Some(redis_arguments().await?);
                stop_redis().await?;
            }
            Service::Broker => kill_broker().await?,
        }
        self.stopped.push(service);
        Ok(())
    }

    pub async fn start(&mut self, service: Service) -> anyhow::Result<()> {
        match service {
            Service::Postgres => start_postgres().await?,
            Service::Redis => start_redis(self.redis_arguments.as_deref()).await?,
            Service::Broker => start_broker().await?,
        }
        self.stopped.retain(|stopped| *stopped != service);
        Ok(())
    }
}

impl Drop for Services {
    /// Starts whatever is still stopped (a test that failed midway). Blocking is fine here: the
    /// test is over.
    fn drop(&mut self) {
        if self.stopped.is_empty() {
            return;
        }
        let stopped = std::mem::take(&mut self.stopped);
        let redis_arguments = self.redis_arguments.take();
        let restart = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to restart the services");
            for service in stopped {
                let started = runtime.block_on(async {
                    match service {
                        Service::Postgres => start_postgres().await,
                        Service::Redis => start_redis(redis_arguments.as_deref()).await,
                        Service::Broker => start_broker().await,
                    }
                });
                if let Err(error) = started {
                    eprintln!("could not start {service:?} again: {error:#}");
                }
            }
        });
        let _ = restart.join();
    }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn wait_port(port: u16, open: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PORT_LIMIT;
    while Instant::now() < deadline {
        if listening(port).await == open {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = if open { "listen" } else { "stop" };
    bail!("127.0.0.1:{port} did not {state} within {PORT_LIMIT:?}")
}

/// Runs a command to its end; fails with its output if it fails.
async fn run(program: &str, arguments: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs a command that starts a long-lived service, without any descriptor beyond stdin,
/// stdout and stderr: a service that inherited one (a lock held by whoever runs the tests, for
/// instance) would hold it for as long as it lives.
async fn run_service_start(program: &str, arguments: &[&str]) -> anyhow::Result<()> {
    const CLOSE_INHERITED: &str = r#"for fd in /proc/$$/fd/*; do n=${fd##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done; exec "$@""#;
    let mut all = vec!["-c", CLOSE_INHERITED, "bash", program];
    all.extend_from_slice(arguments);
    run("bash", &all).await
}

/// The cluster scripts/services.sh starts: the newest installed PostgreSQL's `main`.
fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL clusters (scripts/services.sh installs one)")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|version| version.parse::<u32>().unwrap_or(0));
    versions.pop().context("no PostgreSQL cluster installed")
}

async fn stop_postgres() -> anyhow::Result<()> {
    let version = postgres_version()?;
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "stop",
            "-m",
            "fast",
        ],
    )
    .await?;
    wait_port(POSTGRES_PORT, false).await
}

async fn start_postgres() -> anyhow::Result<()> {
    let version = postgres_version()?;
    run_service_start(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "start"],
    )
    .await?;
    wait_port(POSTGRES_PORT, true).await
}

/// The running Redis's own settings as `redis-server` arguments, so a restart brings back the
/// same server wherever and however it was started.
async fn redis_arguments() -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(crate::REDIS_URL)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut arguments = vec!["--daemonize".to_string(), "yes".to_string()];
    for name in ["bind", "port", "save", "appendonly", "dir", "logfile"] {
        // CONFIG GET answers [name, value].
        let answer: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut connection)
            .await?;
        let value = answer.get(1).cloned().unwrap_or_default();
        arguments.push(format!("--{name}"));
        if name == "bind" {
            // Several addresses are several arguments.
            arguments.extend(value.split_whitespace().map(str::to_string));
        } else {
            arguments.push(value);
        }
    }
    Ok(arguments)
}

async fn stop_redis() -> anyhow::Result<()> {
    // `shutdown nosave`: gone at once, nothing written, as a crash would leave it. Some
    // redis-cli versions report the connection the shutdown closed as an error: the port
    // closing is the answer that counts.
    let said = run(
        "redis-cli",
        &["-p", &REDIS_PORT.to_string(), "shutdown", "nosave"],
    )
    .await;
    wait_port(REDIS_PORT, false)
        .await
        .with_context(|| format!("redis-cli shutdown: {said:?}"))
}

async fn start_redis(arguments: Option<&[String]>) -> anyhow::Result<()> {
    match arguments {
        Some(arguments) => {
            let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
            run_service_start("redis-server", &arguments).await?;
        }
        // Never stopped by us, or its settings unknown: the project's own start.
        None => run_services_script().await?,
    }
    wait_port(REDIS_PORT, true).await
}

/// Where scripts/env.sh keeps the pid files of the services it starts.
fn state_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRANSFERD_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/transferd-state")
}

/// SIGKILL to the broker scripts/services.sh started: its log is whatever its storage kept.
async fn kill_broker() -> anyhow::Result<()> {
    let pid_file = state_dir().join("tansu.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("the broker's pid ({})", pid_file.display()))?;
    run("kill", &["-KILL", pid.trim()]).await?;
    wait_port(KAFKA_PORT, false).await
}

/// Always through scripts/services.sh: the broker comes back with the project's own settings
/// (storage engine included), and its topics are created again.
async fn start_broker() -> anyhow::Result<()> {
    run_services_script().await?;
    wait_port(KAFKA_PORT, true).await
}

async fn run_services_script() -> anyhow::Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let script = script.to_string_lossy().to_string();
    run_service_start("bash", &[&script]).await
}
