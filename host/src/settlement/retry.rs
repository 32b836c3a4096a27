//! The back-off every settlement step shares while a dependency is down: one place, so each
//! step retries the same way and stops as soon as stopping is requested.

use std::time::Duration;

use crate::shutdown::Stop;

/// Longest pause between attempts at a step that keeps failing (a dependency is down).
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, backing off while it fails; `None` when stopping was
/// requested first.
pub(super) async fn retrying<T, E, F, Fut>(stop: &mut Stop, what: &str, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                if stop.is_requested() {
                    return None;
                }
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.requested() => return None,
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}
