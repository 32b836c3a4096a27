//! The guest's imports, implemented with the stores. The WIT impls are thin: they translate
//! between the WIT types and the policy, which is written over a small backend trait
//! (`backend`: which store answers, what is held, what to release) and unit-tested
//! without services; the host's checks on what a guest publishes live in `guard`.
//!
//! `RequestState` is the data of one request's store: the shared stores plus what this
//! request may act on (its transaction id names the holds it takes, its request is what a
//! publish must match) and what its publish did.

pub mod account_info;
pub mod backend;
pub mod balance_lookup;
pub mod batch;
pub mod guard;
pub mod hold_ahead;
mod publish;
pub use publish::HOLDS_UNTRUSTED;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::transferd::transfer::types;
use crate::stores::Stores;
use crate::stores::idempotency::KeyLease;

/// What a call's publish did. The host answers from this, not from what the guest returns:
/// a message in the log is a transfer that will settle, whatever the guest says afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Publication {
    /// Nothing was published.
    #[default]
    None,
    /// Started and not finished when the call ended (a timeout): its own task finishes it.
    InFlight,
    /// The broker acknowledged the message.
    Acknowledged { amount_minor: i64 },
    /// The message may or may not be in the log; its hold and pending record stay.
    InDoubt { reason: String },
    /// Certainly not in the log (no funds, no hold possible, the broker refused before
    /// sending); its hold and pending record were released.
    Refused { reason: String },
}

/// The publication of one call, shared with the task that delivers it.
#[derive(Debug, Clone, Default)]
pub struct PublicationCell(Arc<Mutex<Publication>>);

impl PublicationCell {
    pub fn get(&self) -> Publication {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, publication: Publication) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = publication;
    }
}

pub struct RequestState {
    stores: Arc<Stores>,
    /// What a publish must match: the request and the context's transaction id.
    expected: guard::Expected,
    /// Publishes this call made (at most one passes the guard).
    publishes: u32,
    /// What the publish did.
    pub publication: PublicationCell,
    /// The host check a publish broke, when the call was trapped for it.
    pub violation: Option<guard::Violation>,
    /// What the imports answered, in the vectors' import format, so a shadow candidate can be
    /// given the same answers (see `guest::shadow`).
    pub answers: RecordedAnswers,
    /// The other party's cached balance, read beside the first lookup (see `balance_lookup`).
    prefetched: balance_lookup::Prefetched,
    /// The hold the first lookup takes for the publish (see `hold_ahead`).
    pub ahead: hold_ahead::Ahead,
    /// The request's claim on its idempotency key, if it has one: the publish and its release
    /// act only while the claim stands.
    pub lease: Option<KeyLease>,
    /// In a batch: what the lookups answer from and where the publish stages (`batch`);
    /// the runtime carries it from one item's call to the next.
    pub batch: Option<batch::BatchBook>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
}

impl RequestState {
    pub fn new(
        stores: Arc<Stores>,
        expected: guard::Expected,
        publication: PublicationCell,
        ahead: Option<hold_ahead::HoldAhead>,
        limits: StoreLimits,
    ) -> RequestState {
        RequestState {
            stores,
            expected,
            publishes: 0,
            publication,
            violation: None,
            answers: RecordedAnswers::default(),
            prefetched: balance_lookup::Prefetched::default(),
            ahead: hold_ahead::Ahead::planned(ahead),
            lease: None,
            batch: None,
            // Nothing: no arguments, environment, files, sockets or inherited stdio; the
            // runtime gives each call its deterministic clocks and random.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
        }
    }
}

impl RequestState {
    /// Readies a kept instance's data for its next call: what the call may act on is the new
    /// request's, and what a call did (its publishes, its violation, the answers) starts empty.
    /// The resource table stays: it belongs to the instance, whose handles into it live on
    /// in its memory. The WASI context (clocks, random) is the runtime's to set for each call
    /// (`guest::determinism`).
    pub fn begin(
        &mut self,
        stores: Arc<Stores>,
        expected: guard::Expected,
        publication: PublicationCell,
        ahead: Option<hold_ahead::HoldAhead>,
    ) {
        self.stores = stores;
        self.expected = expected;
        self.publishes = 0;
        self.publication = publication;
        self.violation = None;
        self.answers = RecordedAnswers::default();
        self.prefetched = balance_lookup::Prefetched::default();
        self.ahead = hold_ahead::Ahead::planned(ahead);
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The answers one request's imports gave.
#[derive(Debug, Clone, Default)]
pub struct RecordedAnswers {
    /// (account, currency, answer) per `available` call.
    pub lookups: Vec<(i64, String, Result<Option<i64>, String>)>,
    /// (account, currency, answer) per `account-info.lookup` call.
    pub accounts: Vec<(
        i64,
        String,
        Result<transferd_guest::spending::Account, String>,
    )>,
    /// `"ok"`, `"insufficient-funds"` or `{"unavailable": reason}`, once `send` answered.
    pub publish: Option<serde_json::Value>,
    /// The message the guard admitted: the exact bytes a recorded decision keeps
    /// (`guest::provenance`).
    pub send: Option<transferd_guest::logic::Outgoing>,
    /// Which import each call went to, in the order they were made: with the lists above, the
    /// whole call sequence a recorded decision replays.
    pub order: Vec<ImportCall>,
}

/// One import call, in [`RecordedAnswers::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportCall {
    Available,
    Account,
    Send,
}

impl RecordedAnswers {
    pub fn lookup(
        &mut self,
        account_id: i64,
        currency: String,
        answer: Result<Option<i64>, String>,
    ) {
        self.lookups.push((account_id, currency, answer));
        self.order.push(ImportCall::Available);
    }

    pub fn account(
        &mut self,
        account_id: i64,
        currency: String,
        answer: Result<transferd_guest::spending::Account, String>,
    ) {
        self.accounts.push((account_id, currency, answer));
        self.order.push(ImportCall::Account);
    }

    pub fn sent(&mut self, message: transferd_guest::logic::Outgoing) {
        self.send = Some(message);
        self.order.push(ImportCall::Send);
    }
}

/// `types` has no functions; the trait is required by the generated linker code.
impl types::Host for RequestState {}
