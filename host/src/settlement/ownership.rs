//! Which worker settles a topic: the one holding a PostgreSQL advisory lock named after the
//! topic, on a connection of its own. The lock lives exactly as long as that connection, so
//! when its worker dies (SIGKILL included) or loses the database, PostgreSQL frees it at once
//! and a standby worker takes over within [`RETRY`]: no broker-side group coordinator, whose
//! hand-over of a dead member's partitions was the slow and fragile part, is involved.
//!
//! Money does not depend on the lock: the settlement transaction checks the log position it
//! read from (`ledger.rs`), so even two workers that both believe they own the topic apply
//! every transfer once. The lock only keeps them from doing the same work twice.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

/// How often a standby worker tries to take the lock, and retries an unreachable database.
pub const RETRY: Duration = Duration::from_secs(1);

/// Longest wait for the lock connection to connect or answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What this process's worker is doing about the lock, for its `/readyz` and
/// `transferd_worker_active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not asked for the lock yet (starting, or no worker in this process).
    Starting,
    /// Waiting for the lock another worker holds.
    Standby,
    /// Holding the lock: this worker settles.
    Active,
}

/// This process's [`Role`]: one worker per process.
static ROLE: AtomicU8 = AtomicU8::new(Role::Starting as u8);

/// This process's worker's role now.
pub fn role() -> Role {
    match ROLE.load(Ordering::Relaxed) {
        r if r == Role::Active as u8 => Role::Active,
        r if r == Role::Standby as u8 => Role::Standby,
        _ => Role::Starting,
    }
}

fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Relaxed);
    let active = if role == Role::Active { 1.0 } else { 0.0 };
    metrics::gauge!(crate::metrics::WORKER_ACTIVE).set(active);
}

pub struct Ownership {
    connection: PgConnection,
    topic: String,
}

impl Ownership {
    /// Waits until this worker holds the lock for `topic` (a physical topic name); says once
    /// that it stands by while another worker holds it.
    pub async fn acquire(database_url: &str, topic: &str) -> Ownership {
        let key = lock_key(topic);
        let mut said = false;
        set_role(Role::Standby);
        loop {
            match try_lock(database_url, key).await {
                Ok(Some(connection)) => {
                    set_role(Role::Active);
                    tracing::info!(topic, "this worker now settles the topic");
                    return Ownership {
                        connection,
                        topic: topic.to_string(),
                    };
                }
                Ok(None) if !said => {
                    tracing::info!(topic, "another worker settles the topic; standing by");
                    said = true;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, topic, "cannot reach the database to take the settlement lock")
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Whether the lock is still held: its connection still answers (a lost connection means
    /// PostgreSQL has freed the lock and another worker may hold it now).
    pub async fn still_held(&mut self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&mut self.connection);
        match tokio::time::timeout(QUERY_TIMEOUT, ping).await {
            Ok(Ok(_)) => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, topic = self.topic, "lost the settlement lock's connection");
                false
            }
            Err(_elapsed) => {
                tracing::warn!(
                    topic = self.topic,
                    "the settlement lock's connection does not answer"
                );
                false
            }
        }
    }
}

/// Dropping the lock's connection frees the lock: the worker stands by again (or stops).
impl Drop for Ownership {
    fn drop(&mut self) {
        set_role(Role::Standby);
    }
}

/// The lock's connection when the lock was free, `None` when another session holds it.
async fn try_lock(database_url: &str, key: i64) -> Result<Option<PgConnection>, sqlx::Error> {
    let connecting = PgConnection::connect(database_url);
    let mut connection = tokio::time::timeout(QUERY_TIMEOUT, connecting)
        .await
        .map_err(|_elapsed| sqlx::Error::PoolTimedOut)??;
    let locking = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut connection);
    let locked: bool = tokio::time::timeout(QUERY_TIMEOUT, locking)
        .await
        .map_err(|_elapsed| sqlx::Error::PoolTimedOut)??;
    Ok(locked.then_some(connection))
}

/// A stable 64-bit advisory-lock key for the topic (the same in every process and release).
pub fn lock_key(topic: &str) -> i64 {
    let digest = Sha256::digest(format!("transferd settlement {topic}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_has_its_own_stable_key() {
        assert_eq!(lock_key("transfer_topic"), lock_key("transfer_topic"));
        assert_ne!(lock_key("transfer_topic"), lock_key("test_transfer_topic"));
    }
}
