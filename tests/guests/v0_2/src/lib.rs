//! The standard transfer logic built against the released `transferd:transfer@0.2.0` package
//! (`wit/0.2.0`), as a guest shipped before 0.3.0 is: it has no `account-info`, so it checks
//! no account limits. The tests load it to show the host still serves such a guest.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "transfer-logic",
    path: "../../../wit/0.2.0",
});

use exports::transferd::transfer::handler::Guest;
use transferd::transfer::{balance_lookup, publish, types};
use transferd_guest::logic;
use transferd_guest::rules::{STANDARD, TransferRequest};

transferd_guest::wit_glue!(types, balance_lookup, publish);

struct V0_2;

impl Guest for V0_2 {
    fn initiate_transfer(
        ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        let request = TransferRequest {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount: request.amount,
            currency: request.currency,
            description: request.description,
            phase: request.phase,
            expires_in_s: request.expires_in_s,
            metadata: request.metadata,
        };
        wit_answer(logic::initiate_transfer_with(
            &STANDARD,
            &mut HostImports,
            &logic_context(ctx),
            &request,
        ))
    }
}

export!(V0_2);
