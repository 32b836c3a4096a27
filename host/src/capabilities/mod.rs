//! The guest's imports, implemented with the stores. Thin on purpose: they translate between
//! the WIT types and the stores and decide nothing about transfers.
//!
//! `RequestState` is the data of one request's store: the shared stores plus what this
//! request may act on (its transaction id names the holds it takes).

mod balance_lookup;
mod publish;

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::guest::bindings::transferd::transfer::types;
use crate::stores::kafka::TransferLog;
use crate::stores::postgres::Ledger;
use crate::stores::redis::BalanceCache;

/// The stores the imports use, shared by every request.
pub struct Capabilities {
    pub ledger: Ledger,
    pub cache: Arc<BalanceCache>,
    pub log: TransferLog,
}

pub struct RequestState {
    capabilities: Arc<Capabilities>,
    transaction_id: String,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
}

impl RequestState {
    pub fn new(
        capabilities: Arc<Capabilities>,
        transaction_id: String,
        limits: StoreLimits,
    ) -> RequestState {
        RequestState {
            capabilities,
            transaction_id,
            // Nothing: no arguments, environment, files, sockets or inherited stdio.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
        }
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

/// `types` has no functions; the trait is required by the generated linker code.
impl types::Host for RequestState {}
