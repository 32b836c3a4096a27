//! A guest that implements the `transfer-logic` world and traps (panics) on every transfer.
//! The host must fail only that request and keep serving.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "transfer-logic",
    path: "../../../wit",
});

use exports::transferd::transfer::handler::Guest;
use transferd::transfer::types;

struct Panicking;

impl Guest for Panicking {
    fn initiate_transfer(
        _ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        panic!("this guest traps on purpose (sender {})", request.sender_id)
    }
}

export!(Panicking);
