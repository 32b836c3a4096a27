//! The adapters to the service's dependencies, one module each. They speak in the domain's
//! terms (accounts, holds, messages) and hide the client libraries from the rest of the host.

pub mod actions;
pub mod batch;
pub mod history;
pub mod idempotency;
pub mod journal_chain;
pub mod journal_verify;
pub mod kafka;
pub mod limits;
pub mod log_position;
pub mod postgres;
pub mod provenance;
pub mod redis;
pub mod transfer_state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Services;
use kafka::{ForgetPositions, HOST_TOPICS, KeptPositions, TransferLog};
use postgres::Ledger;
use redis::BalanceCache;

/// Every store, connected once and shared by every part of the host: the guest's imports,
/// the handlers, settlement and the probes.
pub struct Stores {
    pub ledger: Ledger,
    pub cache: Arc<BalanceCache>,
    pub log: TransferLog,
}

impl Stores {
    /// Connects the stores and migrates the ledger. Redis and Kafka connect lazily and
    /// reconnect by themselves; missing topics are created in the background, each after
    /// `forget` made settlement forget its positions in it (see [`ForgetPositions`]).
    pub async fn connect(services: &Services, forget: ForgetPositions) -> anyhow::Result<Stores> {
        let ledger = Ledger::connect(services).await?;
        migrate_with_retry(&ledger).await?;
        let cache = BalanceCache::new(services)?;
        let positions = KeptPositions {
            ledger: ledger.pool().clone(),
            forget,
        };
        let log = TransferLog::new(services, positions.clone())?;
        ensure_topics_in_background(services.clone(), positions);
        Ok(Stores { ledger, cache, log })
    }
}

/// The database may still be starting (scripts start it just before us): retry for a while;
/// a certificate refused is not retried, it will be refused again.
async fn migrate_with_retry(ledger: &Ledger) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 30;
    for attempt in 1..=ATTEMPTS {
        match ledger.migrate().await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < ATTEMPTS && !error.is_tls_failure() => {
                tracing::warn!(%error, attempt, "database not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("migrating the database"),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Creates missing topics, retrying until the broker answers; requests that publish before
/// then fail with 503, as they would with the broker down.
fn ensure_topics_in_background(services: Services, positions: KeptPositions) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match TransferLog::ensure_topics(&services, &positions, HOST_TOPICS).await {
                Ok(()) => {
                    tracing::info!(topics = ?HOST_TOPICS, prefix = services.topic_prefix, "topics ready");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "the topics are not ready; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}
