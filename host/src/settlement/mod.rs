//! The settlement worker: reads accepted transfers from `transfer_topic`, applies each polled
//! batch to the ledger in one PostgreSQL transaction that also moves settlement's position in
//! the log (so each message is applied exactly once), then runs the batch's after-commit
//! effects: new balances into the cache with the holds released, and the batch's event.
//!
//! Positions live in the ledger, not in a Kafka consumer group: the worker holding the topic's
//! advisory lock (`ownership.rs`) assigns itself every partition at the positions the ledger
//! holds. A crash anywhere loses nothing: before the commit the batch is read again; after it,
//! the effects recorded in the same commit are run by the next worker before it reads on
//! (effects are idempotent; events may come twice and consumers dedupe by transaction id).
//!
//! One job a file: the loop (`worker`), where it reads from (`assignment`), a polled batch as
//! read (`read`), applying it (`apply`), its effects (`effects`, `events`, `dead_letter`),
//! its metrics (`counts`), re-driving one quarantined message (`redrive`), and the back-off
//! they share (`retry`).

pub mod actions;
mod apply;
mod assignment;
mod counts;
mod dead_letter;
pub mod decide;
mod effects;
pub mod events;
pub mod ledger;
pub mod ownership;
pub mod process;
pub mod quarantine;
mod read;
pub mod reconcile;
mod redrive;
mod retry;
pub mod same_log;
pub mod topic_recreated;
mod worker;

pub use events::MAX_TRANSFERS_PER_EVENT;
pub use redrive::{RedriveError, redrive};
pub use worker::{WorkerTask, ended, log_end, run, spawn};

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error(transparent)]
    Ledger(#[from] crate::stores::postgres::LedgerError),
    #[error(transparent)]
    Cache(#[from] crate::stores::redis::CacheError),
    #[error(transparent)]
    Log(#[from] crate::stores::kafka::LogError),
    #[error("kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
}
