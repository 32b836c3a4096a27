//! Host-side bindings for the `transfer-logic` world, generated from `wit/`.
//!
//! A module of their own, below both their users: the runtime (`guest`) calls the guest's
//! exports through them and the imports (`capabilities`, a layer below the runtime) implement
//! them, which they could not do from inside `guest` without importing upward.
//!
//! Imports are async (they wait on Redis, PostgreSQL and Kafka) and trappable: a host error
//! that is the guest's fault (publishing to a topic it may not use) traps the guest instead of
//! being reported to it as an ordinary answer.
//!
//! Every conversion between the WIT types and the guest crate's plain types (which the guard,
//! the vectors and the HTTP answers read) is here, once.

wasmtime::component::bindgen!({
    world: "transfer-logic",
    path: "../wit/0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

use transferd::transfer::{publish, types};
use transferd_guest::logic::{Accepted, Rejection, RequestContext};
use transferd_guest::rules::{FieldError, TransferRequest};

/// The WIT forms of a context and a request.
pub fn wit_arguments(
    context: &RequestContext,
    request: &TransferRequest,
) -> (types::RequestContext, types::TransferRequest) {
    (
        types::RequestContext {
            transaction_id: context.transaction_id.clone(),
            received_at_ms: context.received_at_ms,
            principal: context.principal,
            guest_version: context.guest_version.clone(),
        },
        types::TransferRequest {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount: request.amount.clone(),
            currency: request.currency.clone(),
            description: request.description.clone(),
        },
    )
}

impl From<types::Accepted> for Accepted {
    fn from(accepted: types::Accepted) -> Self {
        Accepted {
            transaction_id: accepted.transaction_id,
            amount_minor: accepted.amount_minor,
        }
    }
}

impl From<types::Rejection> for Rejection {
    fn from(rejection: types::Rejection) -> Self {
        match rejection {
            types::Rejection::Invalid(errors) => Rejection::Invalid(
                errors
                    .into_iter()
                    .map(|error| FieldError {
                        field: error.field,
                        message: error.message,
                        code: error.code,
                    })
                    .collect(),
            ),
            types::Rejection::InsufficientFunds => Rejection::InsufficientFunds,
            types::Rejection::ReceiverNotFound => Rejection::ReceiverNotFound,
            types::Rejection::Forbidden(reason) => Rejection::Forbidden(reason),
            types::Rejection::Unavailable(reason) => Rejection::Unavailable(reason),
        }
    }
}

/// The WIT message as the guest crate's plain type, which the guard and the vectors read.
impl From<publish::Outgoing> for transferd_guest::logic::Outgoing {
    fn from(message: publish::Outgoing) -> Self {
        transferd_guest::logic::Outgoing {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            hold: message.hold.map(|hold| transferd_guest::logic::Hold {
                account_id: hold.account_id,
                currency: hold.currency,
                amount_minor: hold.amount_minor,
            }),
        }
    }
}
