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
    path: "../wit/0.1.0",
    pub_export_macro: true,
    export_macro_name: "export_transfer_logic",
    default_bindings_module: "transferd_guest::component",
});

use crate::logic::{self, Imports};
use crate::rules::{FieldError, Limits, STANDARD, TransferRequest};
pub use exports::transferd::transfer::handler::Guest;
pub use transferd::transfer::types;
use transferd::transfer::{balance_lookup, publish};

/// This crate's guest: the standard limits.
pub struct Standard;

/// The imports as the host provides them through the canonical ABI. Public so a test guest
/// can wrap them (tests/guests/hostile changes what it publishes).
pub struct HostImports;

impl Imports for HostImports {
    fn available(&mut self, account_id: i64, currency: &str) -> Result<Option<i64>, String> {
        balance_lookup::available(account_id, currency)
    }

    fn send(&mut self, message: logic::Outgoing) -> Result<(), logic::PublishError> {
        let outgoing = publish::Outgoing {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            hold: message.hold.map(|hold| publish::Hold {
                account_id: hold.account_id,
                currency: hold.currency,
                amount_minor: hold.amount_minor,
            }),
        };
        publish::send(&outgoing).map_err(|error| match error {
            publish::PublishError::InsufficientFunds => logic::PublishError::InsufficientFunds,
            publish::PublishError::Unavailable(reason) => logic::PublishError::Unavailable(reason),
        })
    }
}

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
    let context = logic::RequestContext {
        transaction_id: ctx.transaction_id,
        received_at_ms: ctx.received_at_ms,
        principal: ctx.principal,
        guest_version: ctx.guest_version,
    };
    let request = TransferRequest {
        sender_id: request.sender_id,
        receiver_id: request.receiver_id,
        amount: request.amount,
        currency: request.currency,
        description: request.description,
    };
    match logic::initiate_transfer_with(limits, imports, &context, &request) {
        Ok(accepted) => Ok(types::Accepted {
            transaction_id: accepted.transaction_id,
            amount_minor: accepted.amount_minor,
        }),
        Err(rejection) => Err(match rejection {
            logic::Rejection::Invalid(errors) => {
                types::Rejection::Invalid(errors.into_iter().map(field_error).collect())
            }
            logic::Rejection::InsufficientFunds => types::Rejection::InsufficientFunds,
            logic::Rejection::ReceiverNotFound => types::Rejection::ReceiverNotFound,
            logic::Rejection::Forbidden(reason) => types::Rejection::Forbidden(reason),
            logic::Rejection::Unavailable(reason) => types::Rejection::Unavailable(reason),
        }),
    }
}

fn field_error(error: FieldError) -> types::FieldError {
    types::FieldError {
        field: error.field,
        message: error.message,
        code: error.code,
    }
}

#[cfg(feature = "export")]
export_transfer_logic!(Standard with_types_in self);
