//! Kafka-protocol brokers and topics beyond the shared one: private Tansu brokers a test can
//! cut off, crash and restart, deleting topics, and producing messages as a foreign writer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;

use crate::{free_port, proxy};

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
