//! The standard transfer logic built against the released `transferd:transfer@0.1.0` package
//! (`wit/0.1.0`), as a guest shipped before 0.2.0 is: the tests activate it to show the host
//! still serves such a guest, and refuses before it runs a request with a field 0.1.0 lacks.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "transfer-logic",
    path: "../../../wit/0.1.0",
});

use exports::transferd::transfer::handler::Guest;
use transferd::transfer::{balance_lookup, publish, types};
use transferd_guest::logic;
use transferd_guest::rules::{STANDARD, TransferRequest};

transferd_guest::wit_glue!(types, balance_lookup, publish);

struct V0_1;

impl Guest for V0_1 {
    fn initiate_transfer(
        ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        // 0.1.0 carries the original five fields; the rest stays empty.
        let request = TransferRequest {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount: request.amount,
            currency: request.currency,
            description: request.description,
            ..TransferRequest::default()
        };
        wit_answer(logic::initiate_transfer_with(
            &STANDARD,
            &mut HostImports,
            &logic_context(ctx),
            &request,
        ))
    }
}

export!(V0_1);
