//! The standard transfer logic with one rule changed: at most 100 in major units per
//! transfer. Hot-swap tests activate it to see every replica apply the new rule. It also traps
//! on a transfer whose description is `strict:trap` (before looking anything up): guardrail
//! tests canary it as a version that traps on some inputs.
#![cfg(target_arch = "wasm32")]

use transferd_guest::component::{Guest, handle, types};
use transferd_guest::rules::{Limits, STANDARD};

/// The changed rule.
const STRICT: Limits = Limits {
    max_amount_major: 100,
    ..STANDARD
};

/// The description it traps on.
const TRAP: &str = "strict:trap";

struct Strict;

impl Guest for Strict {
    fn initiate_transfer(
        ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        if request.description.as_deref() == Some(TRAP) {
            panic!("this guest traps on {TRAP:?}, on purpose");
        }
        handle(&STRICT, ctx, request)
    }
}

transferd_guest::component::export_transfer_logic!(Strict with_types_in transferd_guest::component);
