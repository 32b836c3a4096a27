//! Deterministic crash points for the fault tests: with the cargo feature `crash-points`,
//! [`point`] kills the process with SIGKILL when the environment names that point, so a test
//! can land a crash in one exact failure window (after the hold, after the ledger commit, …)
//! instead of hoping a timed kill falls there. Without the feature every call compiles to
//! nothing, and the release binary carries neither the code nor the variable's name.
//!
//! `TRANSFERD_CRASH_AT=<name>` picks the point; `TRANSFERD_CRASH_SKIP=<n>` lets the first `n`
//! passes through it go by, so some work completes before the crash.
//!
//! The points, in the life of a transfer:
//! - `after-hold`: the sender's hold is reserved, nothing produced yet;
//! - `after-produce`: the broker acknowledged the message, the client has no answer yet;
//! - `after-ledger-commit`: settlement committed the batch, Redis not yet updated;
//! - `after-cache-update`: balances cached and holds released, no events yet;
//! - `after-events`: events acknowledged, offsets not yet committed.

/// Kills the process here if the crash-points build was told to.
#[cfg(feature = "crash-points")]
pub fn point(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);

    let target = TARGET.get_or_init(|| {
        let name = std::env::var("TRANSFERD_CRASH_AT").ok()?;
        // A bad skip count is a broken test setup: crash at the first pass rather than never.
        let skip = std::env::var("TRANSFERD_CRASH_SKIP")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Some((name, skip))
    });
    let Some((wanted, skip)) = target else {
        return;
    };
    if wanted != name || PASSES.fetch_add(1, Ordering::SeqCst) < *skip {
        return;
    }
    // Say where, then die as an operator's `kill -9` would: no unwinding, no destructors, no
    // flushing of the producer, no offset commit.
    eprintln!("crash point {name}: SIGKILL");
    // SAFETY: kill(2) on our own pid has no memory effects on this process before it dies.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this only runs if the signal was somehow not delivered.
    std::process::abort();
}

/// Without the feature a crash point is nothing at all.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &'static str) {}
