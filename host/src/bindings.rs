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
//! The host serves three packages: `transferd:transfer@0.3.0` (this module's top level, what
//! the imports implement) and the released 0.2.0 ([`v0_2`]) and 0.1.0 ([`legacy`]), whose
//! imports delegate to the 0.3.0 ones: their types are the same but for the request (0.1.0)
//! and 0.3.0's `account-info`, which they lack. One linker carries every set of imports;
//! [`LogicPre::new`] picks the package a component exports.
//!
//! Every conversion between the WIT types and the guest crate's plain types (which the guard,
//! the vectors and the HTTP answers read) is here, once.

wasmtime::component::bindgen!({
    world: "transfer-logic",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

/// The released `transferd:transfer@0.2.0` package, for guests built against it.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "transfer-logic",
        path: "../wit/0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
        // The delegating impls below cover `&mut T` as well.
        skip_mut_forwarding_impls: true,
    });
}

/// The released `transferd:transfer@0.1.0` package, for guests built against it.
pub mod legacy {
    wasmtime::component::bindgen!({
        world: "transfer-logic",
        path: "../wit/0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
        // The delegating impls below cover `&mut T` as well.
        skip_mut_forwarding_impls: true,
    });
}

use legacy::transferd::transfer as legacy_wit;
use transferd::transfer::{account_info, balance_lookup, publish, types};
use transferd_guest::logic::{Accepted, Rejection, RequestContext};
use transferd_guest::rules::{FieldError, TransferRequest};
use v0_2::transferd::transfer as v0_2_wit;
use wasmtime::AsContextMut;
use wasmtime::component::InstancePre;

/// The WIT package a guest implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// `transferd:transfer@0.3.0`: every request field and `account-info`.
    Current,
    /// `transferd:transfer@0.2.0`: every request field.
    V0_2,
    /// `transferd:transfer@0.1.0`: the original five fields.
    Legacy,
}

impl Package {
    /// The package's version, as `GET /admin/guest` shows it.
    pub fn version(self) -> &'static str {
        match self {
            Package::Current => "0.3.0",
            Package::V0_2 => "0.2.0",
            Package::Legacy => "0.1.0",
        }
    }

    /// The refusal of a request this package cannot carry, made by the host before the guest
    /// runs: one field error per field the package does not have.
    pub fn refusal(self, request: &TransferRequest) -> Option<Rejection> {
        if self != Package::Legacy || !request.has_extensions() {
            return None;
        }
        let given = [
            ("phase", request.phase.is_some()),
            ("expires_in_s", request.expires_in_s.is_some()),
            ("metadata", !request.metadata.is_empty()),
        ];
        let errors = given
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(field, _)| FieldError {
                field: field.to_string(),
                message: format!(
                    "the active transfer rules (transferd:transfer@{}) do not take {field}",
                    self.version()
                ),
                code: "not_supported".to_string(),
            })
            .collect();
        Some(Rejection::Invalid(errors))
    }
}

/// The version of the `transferd:transfer` handler a component exports ("0.3.0"; the newest
/// when it exports several), read from its bytes without compiling them; `None` when it
/// exports none or the bytes are no component.
pub fn wit_package(bytes: &[u8]) -> Option<String> {
    use wasmparser::{Parser, Payload};
    // Nested modules and components are parsed in line, each from its own `Version` to its
    // `End`: the component's own exports are those at depth 1.
    let mut depth = 0u32;
    let mut newest: Option<&str> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    let name = export.ok()?.name.name;
                    if let Some(version) = name.strip_prefix("transferd:transfer/handler@") {
                        newest = newest.max(Some(version));
                    }
                }
            }
            _ => {}
        }
    }
    newest.map(str::to_string)
}

/// A compiled guest ready to instantiate, of whichever package it exports.
pub enum LogicPre<T: 'static> {
    Current(TransferLogicPre<T>),
    V0_2(v0_2::TransferLogicPre<T>),
    Legacy(legacy::TransferLogicPre<T>),
}

/// An instance of a guest.
pub enum Logic {
    Current(TransferLogic),
    V0_2(v0_2::TransferLogic),
    Legacy(legacy::TransferLogic),
}

impl<T: Send + 'static> LogicPre<T> {
    /// The guest for the newest package its component exports the handler of (0.3.0, 0.2.0,
    /// 0.1.0); the error says what is missing when it exports none.
    pub fn new(instance_pre: InstancePre<T>) -> wasmtime::Result<LogicPre<T>> {
        let current = match TransferLogicPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(LogicPre::Current(pre)),
            Err(current) => current,
        };
        if let Ok(pre) = v0_2::TransferLogicPre::new(instance_pre.clone()) {
            return Ok(LogicPre::V0_2(pre));
        }
        match legacy::TransferLogicPre::new(instance_pre) {
            Ok(pre) => Ok(LogicPre::Legacy(pre)),
            Err(_) => Err(current
                .context("exports none of transferd:transfer/handler@0.3.0, @0.2.0 and @0.1.0")),
        }
    }

    pub fn package(&self) -> Package {
        match self {
            LogicPre::Current(_) => Package::Current,
            LogicPre::V0_2(_) => Package::V0_2,
            LogicPre::Legacy(_) => Package::Legacy,
        }
    }

    pub async fn instantiate_async(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> wasmtime::Result<Logic> {
        Ok(match self {
            LogicPre::Current(pre) => Logic::Current(pre.instantiate_async(store).await?),
            LogicPre::V0_2(pre) => Logic::V0_2(pre.instantiate_async(store).await?),
            LogicPre::Legacy(pre) => Logic::Legacy(pre.instantiate_async(store).await?),
        })
    }
}

impl Logic {
    /// Calls `initiate-transfer`. A legacy guest is given the original five fields: the host
    /// refuses a request with more before it runs (see [`Package::refusal`]).
    pub async fn initiate_transfer<T: Send + 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        context: &RequestContext,
        request: &TransferRequest,
    ) -> wasmtime::Result<Result<Accepted, Rejection>> {
        let wit_context = types::RequestContext {
            transaction_id: context.transaction_id.clone(),
            received_at_ms: context.received_at_ms,
            principal: context.principal,
            guest_version: context.guest_version.clone(),
        };
        match self {
            Logic::Current(logic) => {
                let decision = logic
                    .transferd_transfer_handler()
                    .call_initiate_transfer(store, &wit_context, &wit_request(request))
                    .await?;
                Ok(decision.map(Accepted::from).map_err(Rejection::from))
            }
            Logic::V0_2(logic) => {
                let (context, request) = v0_2_arguments(wit_context, request);
                let decision = logic
                    .transferd_transfer_handler()
                    .call_initiate_transfer(store, &context, &request)
                    .await?;
                Ok(decision
                    .map(|accepted| Accepted::from(types::Accepted::from(accepted)))
                    .map_err(|rejection| Rejection::from(types::Rejection::from(rejection))))
            }
            Logic::Legacy(logic) => {
                let (context, request) = legacy_arguments(wit_context, request);
                let decision = logic
                    .transferd_transfer_handler()
                    .call_initiate_transfer(store, &context, &request)
                    .await?;
                Ok(decision
                    .map(|accepted| Accepted::from(types::Accepted::from(accepted)))
                    .map_err(|rejection| Rejection::from(types::Rejection::from(rejection))))
            }
        }
    }
}

fn wit_request(request: &TransferRequest) -> types::TransferRequest {
    types::TransferRequest {
        sender_id: request.sender_id,
        receiver_id: request.receiver_id,
        amount: request.amount.clone(),
        currency: request.currency.clone(),
        description: request.description.clone(),
        phase: request.phase.clone(),
        expires_in_s: request.expires_in_s,
        metadata: request.metadata.clone(),
    }
}

/// The 0.2.0 forms of a context and a request: every field.
fn v0_2_arguments(
    context: types::RequestContext,
    request: &TransferRequest,
) -> (
    v0_2_wit::types::RequestContext,
    v0_2_wit::types::TransferRequest,
) {
    (
        v0_2_wit::types::RequestContext {
            transaction_id: context.transaction_id,
            received_at_ms: context.received_at_ms,
            principal: context.principal,
            guest_version: context.guest_version,
        },
        v0_2_wit::types::TransferRequest {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount: request.amount.clone(),
            currency: request.currency.clone(),
            description: request.description.clone(),
            phase: request.phase.clone(),
            expires_in_s: request.expires_in_s,
            metadata: request.metadata.clone(),
        },
    )
}

/// The 0.1.0 forms of a context and a request: the request's original five fields.
fn legacy_arguments(
    context: types::RequestContext,
    request: &TransferRequest,
) -> (
    legacy_wit::types::RequestContext,
    legacy_wit::types::TransferRequest,
) {
    (
        legacy_wit::types::RequestContext {
            transaction_id: context.transaction_id,
            received_at_ms: context.received_at_ms,
            principal: context.principal,
            guest_version: context.guest_version,
        },
        legacy_wit::types::TransferRequest {
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

/// The conversions and delegating imports of an older package (`$wit`, its generated
/// `transferd::transfer`) whose types and imports are the current ones less `account-info`:
/// its types converted field by field, and whatever store data implements the current
/// imports implements its.
macro_rules! older_package {
    ($wit:ident) => {
        impl From<$wit::types::Accepted> for types::Accepted {
            fn from(accepted: $wit::types::Accepted) -> Self {
                types::Accepted {
                    transaction_id: accepted.transaction_id,
                    amount_minor: accepted.amount_minor,
                }
            }
        }

        impl From<$wit::types::Rejection> for types::Rejection {
            fn from(rejection: $wit::types::Rejection) -> Self {
                use $wit::types::Rejection as Older;
                match rejection {
                    Older::Invalid(errors) => types::Rejection::Invalid(
                        errors
                            .into_iter()
                            .map(|error| types::FieldError {
                                field: error.field,
                                message: error.message,
                                code: error.code,
                            })
                            .collect(),
                    ),
                    Older::InsufficientFunds => types::Rejection::InsufficientFunds,
                    Older::ReceiverNotFound => types::Rejection::ReceiverNotFound,
                    Older::Forbidden(reason) => types::Rejection::Forbidden(reason),
                    Older::Unavailable(reason) => types::Rejection::Unavailable(reason),
                }
            }
        }

        impl From<$wit::publish::Outgoing> for publish::Outgoing {
            fn from(message: $wit::publish::Outgoing) -> Self {
                publish::Outgoing {
                    topic: message.topic,
                    key: message.key,
                    payload: message.payload,
                    hold: message.hold.map(|hold| publish::Hold {
                        account_id: hold.account_id,
                        currency: hold.currency,
                        amount_minor: hold.amount_minor,
                    }),
                }
            }
        }

        impl From<publish::PublishError> for $wit::publish::PublishError {
            fn from(error: publish::PublishError) -> Self {
                match error {
                    publish::PublishError::InsufficientFunds => Self::InsufficientFunds,
                    publish::PublishError::Unavailable(reason) => Self::Unavailable(reason),
                }
            }
        }

        impl<T: types::Host> $wit::types::Host for T {}

        impl<T: balance_lookup::Host + Send> $wit::balance_lookup::Host for T {
            async fn available(
                &mut self,
                account_id: i64,
                currency: String,
            ) -> wasmtime::Result<Result<Option<i64>, String>> {
                balance_lookup::Host::available(self, account_id, currency).await
            }
        }

        impl<T: publish::Host + Send> $wit::publish::Host for T {
            async fn send(
                &mut self,
                message: $wit::publish::Outgoing,
            ) -> wasmtime::Result<Result<(), $wit::publish::PublishError>> {
                let answer = publish::Host::send(self, message.into()).await?;
                Ok(answer.map_err(Into::into))
            }
        }
    };
}

older_package!(v0_2_wit);
older_package!(legacy_wit);

/// What the host knows of an account, in the guest crate's plain type, as the WIT record.
impl From<transferd_guest::spending::Account> for account_info::Account {
    fn from(account: transferd_guest::spending::Account) -> Self {
        account_info::Account {
            available: account.available,
            limits: account_info::AccountLimits {
                single_max_minor: account.limits.single_max_minor,
                daily_max_minor: account.limits.daily_max_minor,
                overdraft_minor: account.limits.overdraft_minor,
            },
            metadata: account.metadata,
            today: account_info::RecentOutgoing {
                outgoing_minor: account.today.outgoing_minor,
                outgoing_count: account.today.outgoing_count,
                last_minute_count: account.today.last_minute_count,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_guest_is_refused_each_field_it_cannot_carry_and_only_those() {
        let plain = TransferRequest {
            sender_id: 1,
            receiver_id: 2,
            amount: "1".into(),
            currency: "USD".into(),
            ..TransferRequest::default()
        };
        assert_eq!(Package::Legacy.refusal(&plain), None);
        let extended = TransferRequest {
            phase: Some("immediate".into()),
            metadata: vec![("k".into(), "v".into())],
            ..plain.clone()
        };
        assert_eq!(Package::Current.refusal(&extended), None);
        assert_eq!(Package::V0_2.refusal(&extended), None);
        let Some(Rejection::Invalid(errors)) = Package::Legacy.refusal(&extended) else {
            panic!("refused as invalid");
        };
        let fields: Vec<(&str, &str)> = errors
            .iter()
            .map(|error| (error.field.as_str(), error.code.as_str()))
            .collect();
        assert_eq!(
            fields,
            [("phase", "not_supported"), ("metadata", "not_supported")]
        );
        // Empty metadata is no metadata: nothing to refuse.
        let empty = TransferRequest {
            metadata: vec![],
            expires_in_s: Some(60),
            ..plain
        };
        assert!(matches!(
            Package::Legacy.refusal(&empty),
            Some(Rejection::Invalid(errors)) if errors.len() == 1 && errors[0].field == "expires_in_s"
        ));
    }

    #[test]
    fn bytes_that_are_no_component_name_no_package() {
        assert_eq!(wit_package(b"not wasm"), None);
        assert_eq!(wit_package(b"\0asm\x01\0\0\0"), None);
    }
}
