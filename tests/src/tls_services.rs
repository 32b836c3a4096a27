//! A private PostgreSQL and a private Redis that speak only TLS, with the certificate a test
//! made, each in a directory of its own and stopped when dropped: the shared services stay
//! in the clear and untouched.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::free_port;
use crate::process::log_tail;

/// Where Debian installs PostgreSQL's server programs; `TRANSFERD_PG_BIN` names another.
const PG_BIN_ROOT: &str = "/usr/lib/postgresql";

/// Longest wait for a private server to listen.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A server's certificate and key, and the CA file that signed it, as PEM text.
pub struct ServerIdentity {
    pub certificate_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// A directory removed with the server that used it; `owner` gets it when the tests run as
/// root (PostgreSQL refuses to run as root).
struct Directory(PathBuf);

impl Directory {
    fn new(kind: &str, owner: Option<(u32, u32)>) -> anyhow::Result<Directory> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("transferd-tls-{kind}-{}", &id[..12]));
        std::fs::create_dir_all(&path)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(Directory(path))
    }

    /// Writes a file only its owner reads (a key must be so for PostgreSQL).
    fn write(&self, name: &str, text: &str, owner: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(path)
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process, stopped (`signal`, then SIGKILL) when dropped.
struct Server {
    child: Child,
    signal: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.signal, &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `postgres` account's user and group ids, when the tests run as root.
fn postgres_account() -> anyhow::Result<Option<(u32, u32)>> {
    let root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .context("running as root needs a postgres account to run PostgreSQL as")?;
    let fields: Vec<&str> = line.split(':').collect();
    match (fields.get(2), fields.get(3)) {
        (Some(uid), Some(gid)) => Ok(Some((uid.parse()?, gid.parse()?))),
        _ => bail!("unreadable /etc/passwd line for postgres"),
    }
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`): `TRANSFERD_PG_BIN`,
/// else the newest under Debian's root.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TRANSFERD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_BIN_ROOT)
        .with_context(|| format!("listing {PG_BIN_ROOT} (set TRANSFERD_PG_BIN)"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no PostgreSQL under {PG_BIN_ROOT}"))
}

/// `program` as the postgres account when the tests run as root.
fn as_account(program: PathBuf, account: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = account {
        command.uid(uid).gid(gid);
    }
    command.stdin(Stdio::null());
    command
}

/// A private PostgreSQL cluster with `ssl=on`, its database `postgres` open to the user
/// `postgres` without a password from 127.0.0.1.
pub struct TlsPostgres {
    pub port: u16,
    _server: Server,
    directory: Directory,
}

impl TlsPostgres {
    pub async fn start(identity: &ServerIdentity) -> anyhow::Result<TlsPostgres> {
        let account = postgres_account()?;
        let bin = pg_bin()?;
        let directory = Directory::new("postgres", account)?;
        let certificate = directory.write("server.crt", &identity.certificate_pem, account)?;
        let key = directory.write("server.key", &identity.key_pem, account)?;
        let data = directory.0.join("data");
        let initdb = as_account(bin.join("initdb"), account)
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(directory.0.join("postgres.log"))?;
        let setting = |name: &str, value: &Path| format!("{name}={}", value.display());
        let child = as_account(bin.join("postgres"), account)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&directory.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .args(["-c", "fsync=off", "-c", "max_connections=40"])
            .args(["-c", &setting("ssl_cert_file", &certificate)])
            .args(["-c", &setting("ssl_key_file", &key)])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let server = Server {
            child,
            // Immediate shutdown: a test's cluster keeps nothing.
            signal: "-QUIT",
        };
        wait_listening(port, &directory.0.join("postgres.log")).await?;
        Ok(TlsPostgres {
            port,
            _server: server,
            directory,
        })
    }

    /// Writes a file the test's transferd reads (a CA file) into the cluster's directory.
    pub fn file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        self.directory.write(name, text, None)
    }
}

/// A private Redis that listens only for TLS, where the user `transferd` (with a password)
/// may do anything and the default user nothing.
pub struct TlsRedis {
    pub port: u16,
    _server: Server,
    _directory: Directory,
}

impl TlsRedis {
    pub async fn start(identity: &ServerIdentity, password: &str) -> anyhow::Result<TlsRedis> {
        let directory = Directory::new("redis", None)?;
        let certificate = directory.write("server.crt", &identity.certificate_pem, None)?;
        let key = directory.write("server.key", &identity.key_pem, None)?;
        let ca = directory.write("ca.crt", &identity.ca_pem, None)?;
        let port = free_port();
        let config = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\nsave \"\"\nappendonly no\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients optional\nuser default off\n\
             user transferd on >{password} ~* &* +@all\n",
            dir = directory.0.display(),
            cert = certificate.display(),
            key = key.display(),
            ca = ca.display(),
        );
        let config_file = directory.write("redis.conf", &config, None)?;
        let log_path = directory.0.join("redis.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("redis-server")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server")?;
        let server = Server {
            child,
            signal: "-TERM",
        };
        wait_listening(port, &log_path).await?;
        Ok(TlsRedis {
            port,
            _server: server,
            _directory: directory,
        })
    }
}

async fn wait_listening(port: u16, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        if crate::services::listening(port).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "127.0.0.1:{port} did not listen within {START_LIMIT:?}: {}",
        log_tail(log, 20)
    )
}
