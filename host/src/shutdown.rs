//! How the process stops: the signals that ask it to, and the token every long-running part
//! (the HTTP loop, the settlement worker) watches so it stops between units of work.
//!
//! Signals are registered once, at the start of `main`, so a signal during start-up is
//! handled like any other instead of killing the process without a word (the default action
//! of SIGTERM and SIGHUP). A signal that cannot be registered is an error at start-up, never a
//! stop request: a failing signal future must not look like "asked to stop".

use std::fmt;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
    /// The terminal went away; its default action would end the process silently.
    Hangup,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
        })
    }
}

/// SIGINT, SIGTERM and SIGHUP, registered with the runtime.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Registers the handlers; needs a running tokio runtime.
    pub fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves when one of the signals arrives. A stream that ended (the runtime is shutting
    /// down) never resolves here.
    pub async fn recv(&mut self) -> StopSignal {
        loop {
            tokio::select! {
                Some(()) = self.interrupt.recv() => return StopSignal::Interrupt,
                Some(()) = self.terminate.recv() => return StopSignal::Terminate,
                Some(()) = self.hangup.recv() => return StopSignal::Hangup,
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// Tells every holder of a [`Stop`] to stop.
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// Cloned into each long-running part; says when to stop.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

/// A handle and its first token.
pub fn stop_channel() -> (StopHandle, Stop) {
    let (sender, receiver) = watch::channel(false);
    (StopHandle(sender), Stop(receiver))
}

impl Stop {
    /// Resolves once stopping was asked for (or the handle is gone, which means the same).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Awaits `work` until `deadline`. `None` (and a warning naming `what`) when the deadline came
/// first: the process then exits without it, which the design allows at any point.
pub async fn within<T>(
    deadline: tokio::time::Instant,
    what: &str,
    work: impl Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(done) => Some(done),
        Err(_elapsed) => {
            tracing::warn!(
                what,
                "the drain time ran out; exiting without waiting for it"
            );
            None
        }
    }
}
