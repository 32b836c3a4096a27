//! Local development: `--watch` reloads the guest file when it changes. A file that fails to
//! load (half-written, not a component, wrong world) leaves the previous version serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::guest::registry::ServingGuest;
use crate::guest::runtime::GuestEngine;

/// How often the file's size and modification time are compared.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Watches `path` until the process ends.
pub fn watch_file(path: PathBuf, engine: Arc<GuestEngine>, serving: Arc<ServingGuest>) {
    tokio::spawn(async move {
        let mut seen = stamp(&path);
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match engine.load_file(&path) {
                Ok(guest) => {
                    tracing::info!(version = guest.version(), file = %path.display(), "guest file changed; reloaded");
                    serving.serve_only(guest);
                }
                Err(error) => {
                    tracing::error!(%error, file = %path.display(), "guest file changed but does not load; keeping the previous version");
                }
            }
        }
    });
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
