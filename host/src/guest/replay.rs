//! Runs the guest with imports that replay a conformance vector's recorded answers instead of
//! Redis and Kafka: the host's conformance harness, and the check that an uploaded guest
//! still decides the invariant cases as every version must. Publishes pass the same host
//! checks as live ones (`capabilities::guard`), and lookups the same rule
//! (`capabilities::balance_lookup::party`), so a guest that would publish the wrong transfer
//! or ask about an account outside its request is refused at upload.

use transferd_guest::logic::{Imports, Outgoing, PublishError};
use transferd_guest::vectors::Replay;

use crate::capabilities::guard::{self, Expected, Violation};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::transferd::transfer::{account_info, publish, types};
use crate::capabilities::balance_lookup::{self, Party};
use transferd_guest::spending::Account;

/// Store data of a replayed call.
pub struct ReplayState {
    pub replay: Replay,
    /// What a publish must match.
    pub expected: Expected,
    publishes: u32,
    /// The `amount_minor` of a publish the replay answered `ok`.
    pub published_minor: Option<i64>,
    /// The host check a publish broke, when the call was trapped for it.
    pub violation: Option<Violation>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
}

impl ReplayState {
    /// Readies a kept instance's data for its next replayed call (see `RequestState::begin`).
    pub fn begin(&mut self, replay: Replay, expected: Expected) {
        self.replay = replay;
        self.expected = expected;
        self.publishes = 0;
        self.published_minor = None;
        self.violation = None;
    }

    pub fn new(replay: Replay, expected: Expected, limits: StoreLimits) -> ReplayState {
        ReplayState {
            replay,
            expected,
            publishes: 0,
            published_minor: None,
            violation: None,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
        }
    }
}

impl WasiView for ReplayState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for ReplayState {}

impl crate::bindings::transferd::transfer::balance_lookup::Host for ReplayState {
    async fn available(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<Option<i64>, String>> {
        // The live import's rule: only the request's parties, the receiver's existence only.
        let party = balance_lookup::party(&self.expected, account_id, &currency)
            .map_err(|broken| guard::trap(&mut self.violation, broken))?;
        Ok(party.reveal(self.replay.available(account_id, &currency)))
    }
}

impl crate::bindings::transferd::transfer::account_info::Host for ReplayState {
    async fn lookup(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<account_info::Account, String>> {
        // The live import's rule: only the request's parties, the receiver's existence only.
        let party = balance_lookup::party(&self.expected, account_id, &currency)
            .map_err(|broken| guard::trap(&mut self.violation, broken))?;
        let answer = self
            .replay
            .account(account_id, &currency)
            .unwrap_or_else(|| Err("the replay has no account-info".into()));
        let answer = match party {
            Party::Sender => answer,
            Party::Receiver => answer.and_then(|account| {
                let available = party.reveal(Ok(account.available))?;
                Ok(Account {
                    available,
                    ..Account::default()
                })
            }),
        };
        Ok(answer.map(Into::into))
    }
}

impl publish::Host for ReplayState {
    async fn send(
        &mut self,
        message: publish::Outgoing,
    ) -> wasmtime::Result<Result<(), publish::PublishError>> {
        let outgoing = Outgoing::from(message);
        let amount_minor = guard::admit(
            &self.expected,
            &mut self.publishes,
            &mut self.violation,
            &outgoing,
        )?;
        let answer = self.replay.send(outgoing);
        if answer.is_ok() {
            self.published_minor = Some(amount_minor);
        }
        Ok(answer.map_err(|error| match error {
            PublishError::InsufficientFunds => publish::PublishError::InsufficientFunds,
            PublishError::Unavailable(reason) => publish::PublishError::Unavailable(reason),
        }))
    }
}
