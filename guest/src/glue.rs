//! The conversions between a WIT package's generated guest types and the plain types of
//! [`crate::logic`], written once for every package whose types share these names and fields:
//! `component` uses it for the current package, and a guest built against an older one
//! (tests/guests/v0_1) for its own.

/// Defines, in the calling module, `HostImports` (the package's imports as
/// [`crate::logic::Imports`]), `logic_context` and `wit_answer`. `$types`, `$balance_lookup`
/// and `$publish` name the package's generated modules, in scope where it is called, and
/// `$account_info` the 0.3.0 import, for a package that has it.
#[macro_export]
macro_rules! wit_glue {
    ($types:ident, $balance_lookup:ident, $publish:ident, $account_info:ident) => {
        $crate::wit_glue!(@common $types, $balance_lookup, $publish, {
            fn account(
                &mut self,
                account_id: i64,
                currency: &str,
            ) -> Option<Result<$crate::spending::Account, String>> {
                Some($account_info::lookup(account_id, currency).map(|account| {
                    $crate::spending::Account {
                        available: account.available,
                        limits: $crate::spending::AccountLimits {
                            single_max_minor: account.limits.single_max_minor,
                            daily_max_minor: account.limits.daily_max_minor,
                            overdraft_minor: account.limits.overdraft_minor,
                        },
                        metadata: account.metadata,
                        today: $crate::spending::RecentOutgoing {
                            outgoing_minor: account.today.outgoing_minor,
                            outgoing_count: account.today.outgoing_count,
                            last_minute_count: account.today.last_minute_count,
                        },
                    }
                }))
            }
        });
    };
    ($types:ident, $balance_lookup:ident, $publish:ident) => {
        $crate::wit_glue!(@common $types, $balance_lookup, $publish, {});
    };
    (@common $types:ident, $balance_lookup:ident, $publish:ident, { $($account:tt)* }) => {
        /// The imports as the host provides them through the canonical ABI. Public so a test
        /// guest can wrap them (tests/guests/hostile changes what it publishes).
        pub struct HostImports;

        impl $crate::logic::Imports for HostImports {
            fn available(
                &mut self,
                account_id: i64,
                currency: &str,
            ) -> Result<Option<i64>, String> {
                $balance_lookup::available(account_id, currency)
            }

            fn send(
                &mut self,
                message: $crate::logic::Outgoing,
            ) -> Result<(), $crate::logic::PublishError> {
                let hold = message.hold.map(|hold| $publish::Hold {
                    account_id: hold.account_id,
                    currency: hold.currency,
                    amount_minor: hold.amount_minor,
                });
                let outgoing = $publish::Outgoing {
                    topic: message.topic,
                    key: message.key,
                    payload: message.payload,
                    hold,
                };
                $publish::send(&outgoing).map_err(|error| match error {
                    $publish::PublishError::InsufficientFunds => {
                        $crate::logic::PublishError::InsufficientFunds
                    }
                    $publish::PublishError::Unavailable(reason) => {
                        $crate::logic::PublishError::Unavailable(reason)
                    }
                })
            }

            $($account)*
        }

        /// The WIT context as the logic's.
        pub fn logic_context(ctx: $types::RequestContext) -> $crate::logic::RequestContext {
            $crate::logic::RequestContext {
                transaction_id: ctx.transaction_id,
                received_at_ms: ctx.received_at_ms,
                principal: ctx.principal,
                guest_version: ctx.guest_version,
            }
        }

        /// The logic's decision as the WIT result.
        pub fn wit_answer(
            decision: Result<$crate::logic::Accepted, $crate::logic::Rejection>,
        ) -> Result<$types::Accepted, $types::Rejection> {
            use $crate::logic::Rejection;
            match decision {
                Ok(accepted) => Ok($types::Accepted {
                    transaction_id: accepted.transaction_id,
                    amount_minor: accepted.amount_minor,
                }),
                Err(Rejection::Invalid(errors)) => Err($types::Rejection::Invalid(
                    errors
                        .into_iter()
                        .map(|error| $types::FieldError {
                            field: error.field,
                            message: error.message,
                            code: error.code,
                        })
                        .collect(),
                )),
                Err(Rejection::InsufficientFunds) => Err($types::Rejection::InsufficientFunds),
                Err(Rejection::ReceiverNotFound) => Err($types::Rejection::ReceiverNotFound),
                Err(Rejection::Forbidden(reason)) => Err($types::Rejection::Forbidden(reason)),
                Err(Rejection::Unavailable(reason)) => Err($types::Rejection::Unavailable(reason)),
            }
        }
    };
}
