//! The component glue: generated bindings for the `transfer-logic` world, converted to and
//! from the plain types of [`crate::logic`]. No decisions are made here.
//!
//! The export macro is public so another crate can ship the same logic with other limits
//! (tests/guests/strict does, to test a rule change): it implements `Guest` by calling
//! [`handle`] and exports with `transferd_guest::component::export_transfer_logic!`. This crate exports
//! its standard rules only with the `export` feature (on by default), so such a crate gets
//! one export, its own.

wit_bindgen::generate!({
    world: "transfer-logic",
    path: "../wit",
    pub_export_macro: true,
    export_macro_name: "export_transfer_logic",
    default_bindings_module: "transferd_guest::component",
});

use crate::logic::{self, Imports};
use crate::rules::{Limits, STANDARD, TransferRequest};
use crate::spending::{AccountRule, STANDARD_RULES};
pub use exports::transferd::transfer::handler::Guest;
pub use transferd::transfer::types;
use transferd::transfer::{account_info, balance_lookup, publish};

crate::wit_glue!(types, balance_lookup, publish, account_info);

/// This crate's guest: the standard limits.
pub struct Standard;

impl Guest for Standard {
    fn initiate_transfer(
        ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        handle(&STANDARD, ctx, request)
    }
}

/// `initiate-transfer` under `limits`, from WIT types to WIT types.
pub fn handle(
    limits: &Limits,
    ctx: types::RequestContext,
    request: types::TransferRequest,
) -> Result<types::Accepted, types::Rejection> {
    handle_with(limits, &mut HostImports, ctx, request)
}

/// [`handle`] with other imports in front of the host's.
pub fn handle_with(
    limits: &Limits,
    imports: &mut impl Imports,
    ctx: types::RequestContext,
    request: types::TransferRequest,
) -> Result<types::Accepted, types::Rejection> {
    handle_ruled(limits, STANDARD_RULES, imports, ctx, request)
}

/// [`handle_with`] checking `account_rules` on the sender's account instead of the standard
/// ones (a guest that adds a rule, tests/guests/velocity).
pub fn handle_ruled(
    limits: &Limits,
    account_rules: &[AccountRule],
    imports: &mut impl Imports,
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
    wit_answer(logic::initiate_transfer_ruled(
        limits,
        account_rules,
        imports,
        &logic_context(ctx),
        &request,
    ))
}

#[cfg(feature = "export")]
export_transfer_logic!(Standard with_types_in self);
