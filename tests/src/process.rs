//! Child-process plumbing shared by every process the harness starts or watches: signals,
//! bounded waits for an exit, log tails, and reading /proc.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGTERM to a child process.
pub(crate) fn terminate(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
    Ok(())
}

/// Waits up to `limit` for a child to exit; its status, or `None` if it still runs.
pub(crate) async fn wait_exit(
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

/// Waits up to `limit` for a child to exit by itself.
pub(crate) fn wait_exit_blocking(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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
