//! Runs the guest with imports that replay a conformance vector's recorded answers instead of
//! Redis and Kafka: the host's conformance harness, and the check that an uploaded guest
//! still decides the invariant cases as every version must.

use transferd_guest::logic::{Imports, Outgoing, PublishError};
use transferd_guest::vectors::Replay;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::guest::bindings::transferd::transfer::{balance_lookup, publish, types};

/// Store data of a replayed call.
pub struct ReplayState {
    pub replay: Replay,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
}

impl ReplayState {
    pub fn new(replay: Replay, limits: StoreLimits) -> ReplayState {
        ReplayState {
            replay,
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

impl balance_lookup::Host for ReplayState {
    async fn available(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<Option<i64>, String>> {
        Ok(self.replay.available(account_id, &currency))
    }
}

impl publish::Host for ReplayState {
    async fn send(
        &mut self,
        message: publish::Outgoing,
    ) -> wasmtime::Result<Result<(), publish::PublishError>> {
        let outgoing = Outgoing {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            hold: message.hold.map(|hold| transferd_guest::logic::Hold {
                account_id: hold.account_id,
                currency: hold.currency,
                amount_minor: hold.amount_minor,
            }),
        };
        Ok(self.replay.send(outgoing).map_err(|error| match error {
            PublishError::InsufficientFunds => publish::PublishError::InsufficientFunds,
            PublishError::Unavailable(reason) => publish::PublishError::Unavailable(reason),
        }))
    }
}
