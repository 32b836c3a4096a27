//! `serve`'s settlement worker as a child process, started again whenever it dies.
//!
//! Why a process and not a task: the Kafka client can kill the process that reads the log
//! (librdkafka dies with SIGSEGV when a topic is deleted under a running consumer; README,
//! "Known crash"), and that must not take the API down with it. The child is this same binary
//! (`/proc/self/exe`, so even a binary replaced on disk starts the version that runs) as
//! `transferd worker --supervised`, with the parent's settings in its environment.
//!
//! Parent and child share one socket, the child's standard input: the child writes its metric
//! updates to it (`metrics_relay`), and reads it only to learn that the parent is gone or
//! wants it to stop (end of file). So a child never outlives its parent by more than its own
//! drain time, even when the parent is SIGKILLed.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{self, ChildEnvError, Services, Worker};
use crate::metrics::WORKER_RESTARTS;
use crate::metrics_relay;
use crate::shutdown::Stop;

/// The first pause before starting a dead worker again; it doubles up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A worker that ran this long before it died starts again after the first delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Runs the worker process until `stop`, starting it again each time it dies. The task ends
/// once a stopped child has exited; the caller bounds that wait by its drain time.
pub fn supervise(services: &Services, worker: &Worker, stop: Stop) -> JoinHandle<()> {
    let environment = config::worker_environment(services, worker);
    tokio::spawn(supervise_loop(environment, stop))
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Settings(#[from] ChildEnvError),
    #[error(transparent)]
    Spawn(#[from] std::io::Error),
}

/// An environment that could not be built is reported at each attempt, as a failed start is:
/// the unit tests of `config::worker_environment` keep it from happening.
async fn supervise_loop(environment: Result<Vec<(String, String)>, ChildEnvError>, mut stop: Stop) {
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let started = Instant::now();
        match run_child(&environment, &mut stop).await {
            Ok(Run::Stopped(status)) => {
                tracing::info!(%status, "the settlement worker process stopped");
                return;
            }
            Ok(Run::Died(status)) => {
                metrics::counter!(WORKER_RESTARTS).increment(1);
                tracing::error!(
                    %status,
                    restart_in_ms = delay.as_millis() as u64,
                    "the settlement worker process died; starting it again"
                );
            }
            Err(error) => tracing::error!(
                %error,
                restart_in_ms = delay.as_millis() as u64,
                "cannot start the settlement worker process; trying again"
            ),
        }
        if started.elapsed() >= STABLE_RUN {
            delay = FIRST_RESTART_DELAY;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.requested() => return,
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// How one child ended.
enum Run {
    /// It exited after it was asked to stop.
    Stopped(ExitStatus),
    /// It exited, or was killed, while nobody asked it to.
    Died(ExitStatus),
}

async fn run_child(
    environment: &Result<Vec<(String, String)>, ChildEnvError>,
    stop: &mut Stop,
) -> Result<Run, StartError> {
    let environment = environment.as_ref().map_err(Clone::clone)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut child = tokio::process::Command::new(own_executable())
        .args(["worker", "--supervised"])
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .kill_on_drop(true)
        .spawn()?;
    ours.set_nonblocking(true)?;
    let (updates, mut to_child) = UnixStream::from_std(ours)?.into_split();
    let relay = tokio::spawn(relay_metrics(updates));
    let run = tokio::select! {
        status = child.wait() => Run::Died(status?),
        () = stop.requested() => {
            // End of file on its standard input: the child stops between batches.
            let _ = to_child.shutdown().await;
            Run::Stopped(child.wait().await?)
        }
    };
    relay.abort();
    Ok(run)
}

/// This process's own binary, as it runs: `/proc/self/exe` opens it even when the file was
/// replaced or removed since; elsewhere the path it was started from.
fn own_executable() -> std::path::PathBuf {
    let proc_self = std::path::PathBuf::from("/proc/self/exe");
    if proc_self.exists() {
        return proc_self;
    }
    std::env::current_exe().unwrap_or(proc_self)
}

/// Applies the child's metric updates to this process's recorder until the child is gone.
async fn relay_metrics(updates: OwnedReadHalf) {
    let mut lines = BufReader::new(updates).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Err(error) = metrics_relay::apply(&line) {
                    tracing::warn!(%error, "a metric update from the settlement worker was dropped");
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "reading the settlement worker's metric updates failed");
                return;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParentLinkError {
    #[error(
        "`transferd worker --supervised` is for `transferd serve` only: its standard input must be the socket serve gives it"
    )]
    NotASocket,
    #[error("the supervised worker's standard input: {0}")]
    Io(#[from] std::io::Error),
    #[error("a metrics recorder was installed before the forwarder")]
    RecorderTaken,
}

/// The child's end: installs the forwarding recorder, and returns a future that resolves when
/// the parent asks the worker to stop or is gone.
pub fn attach_to_parent() -> Result<impl Future<Output = ()>, ParentLinkError> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let file = std::fs::File::from(stdin);
    if !file.metadata()?.file_type().is_socket() {
        return Err(ParentLinkError::NotASocket);
    }
    let socket = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
    socket.set_nonblocking(true)?;
    let (from_parent, to_parent) = UnixStream::from_std(socket)?.into_split();
    let (forwarder, lines) = metrics_relay::Forwarder::new();
    metrics::set_global_recorder(forwarder).map_err(|_| ParentLinkError::RecorderTaken)?;
    tokio::spawn(write_updates(lines, to_parent));
    Ok(parent_gone(from_parent))
}

async fn write_updates(
    mut lines: tokio::sync::mpsc::Receiver<String>,
    mut to_parent: OwnedWriteHalf,
) {
    while let Some(mut line) = lines.recv().await {
        line.push('\n');
        if to_parent.write_all(line.as_bytes()).await.is_err() {
            return; // The parent is gone; `parent_gone` stops the worker.
        }
    }
}

/// Resolves at end of file (or an error) on the socket: the parent is stopping or gone.
async fn parent_gone(mut from_parent: OwnedReadHalf) {
    let mut buffer = [0_u8; 64];
    while let Ok(read) = from_parent.read(&mut buffer).await {
        if read == 0 {
            return;
        }
    }
}
