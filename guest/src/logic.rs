//! The decision: validate, look up balances, publish with a hold on the sender.
//!
//! Written against the [`Imports`] trait instead of the generated bindings so the same code
//! runs inside the component, natively in the host's benchmarks and in unit tests.

use crate::message;
use crate::rules::{self, FieldError, TransferRequest};
use crate::spending::{self, Account, AccountRule};

/// Everything non-deterministic, from the host (the WIT `request-context`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub transaction_id: String,
    pub received_at_ms: u64,
    pub principal: Option<i64>,
    pub guest_version: String,
}

/// The WIT `accepted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub transaction_id: String,
    pub amount_minor: i64,
}

/// The WIT `rejection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Invalid(Vec<FieldError>),
    InsufficientFunds,
    ReceiverNotFound,
    Forbidden(String),
    Unavailable(String),
}

/// The WIT `publish.hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub account_id: i64,
    pub currency: String,
    pub amount_minor: i64,
}

/// The WIT `publish.outgoing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub hold: Option<Hold>,
}

/// The WIT `publish.publish-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    InsufficientFunds,
    Unavailable(String),
}

/// The guest's imports: `balance-lookup.available`, `publish.send` and (0.3.0)
/// `account-info.lookup`.
pub trait Imports {
    fn available(&mut self, account_id: i64, currency: &str) -> Result<Option<i64>, String>;
    fn send(&mut self, message: Outgoing) -> Result<(), PublishError>;
    /// `account-info.lookup`; `None` when the guest's package has no such import (before
    /// 0.3.0): its account rules are then not checked.
    fn account(&mut self, _account_id: i64, _currency: &str) -> Option<Result<Account, String>> {
        None
    }
}

/// Decides one transfer under the standard limits.
pub fn initiate_transfer(
    imports: &mut impl Imports,
    context: &RequestContext,
    request: &TransferRequest,
) -> Result<Accepted, Rejection> {
    initiate_transfer_with(&rules::STANDARD, imports, context, request)
}

/// Decides one transfer with the standard account rules (spending limits).
pub fn initiate_transfer_with(
    limits: &rules::Limits,
    imports: &mut impl Imports,
    context: &RequestContext,
    request: &TransferRequest,
) -> Result<Accepted, Rejection> {
    initiate_transfer_ruled(limits, spending::STANDARD_RULES, imports, context, request)
}

/// Decides one transfer: the request's rules under `limits`, the balances, then (when the
/// imports answer `account-info`) each of `account_rules` on the sender's account. Returns
/// `Accepted` only after `send` succeeded.
pub fn initiate_transfer_ruled(
    limits: &rules::Limits,
    account_rules: &[AccountRule],
    imports: &mut impl Imports,
    context: &RequestContext,
    request: &TransferRequest,
) -> Result<Accepted, Rejection> {
    let transfer = rules::validate_with(limits, request).map_err(Rejection::Invalid)?;
    if let Some(principal) = context.principal
        && principal != transfer.sender_id
    {
        return Err(Rejection::Forbidden(format!(
            "user {principal} may not send money from account {}",
            transfer.sender_id
        )));
    }

    let receiver = imports
        .available(transfer.receiver_id, &transfer.currency)
        .map_err(Rejection::Unavailable)?;
    if receiver.is_none() {
        return Err(Rejection::ReceiverNotFound);
    }
    // A sender without an account in this currency has nothing to send.
    let sender_available = imports
        .available(transfer.sender_id, &transfer.currency)
        .map_err(Rejection::Unavailable)?
        .unwrap_or(0);
    if sender_available < transfer.amount_minor {
        return Err(Rejection::InsufficientFunds);
    }
    if let Some(account) = imports.account(transfer.sender_id, &transfer.currency) {
        let account = account.map_err(Rejection::Unavailable)?;
        for rule in account_rules {
            rule(&account, &transfer)?;
        }
    }

    let payload = message::transfer_message(
        &context.transaction_id,
        context.received_at_ms,
        &context.guest_version,
        &transfer,
    )
    .map_err(Rejection::Unavailable)?;
    let outgoing = Outgoing {
        topic: message::TRANSFER_TOPIC.to_string(),
        key: transfer.sender_id.to_string(),
        payload,
        hold: Some(Hold {
            account_id: transfer.sender_id,
            currency: transfer.currency.clone(),
            amount_minor: transfer.amount_minor,
        }),
    };
    imports.send(outgoing).map_err(|error| match error {
        PublishError::InsufficientFunds => Rejection::InsufficientFunds,
        PublishError::Unavailable(reason) => Rejection::Unavailable(reason),
    })?;
    Ok(Accepted {
        transaction_id: context.transaction_id.clone(),
        amount_minor: transfer.amount_minor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Imports that answer from a table and record what was asked and sent.
    #[derive(Default)]
    struct Recorded {
        balances: HashMap<(i64, String), i64>,
        lookup_error: Option<String>,
        publish_error: Option<PublishError>,
        asked: Vec<(i64, String)>,
        sent: Vec<Outgoing>,
        /// What `account-info` answers; `None`: a package without it.
        sender_account: Option<Account>,
    }

    impl Imports for Recorded {
        fn available(&mut self, account_id: i64, currency: &str) -> Result<Option<i64>, String> {
            self.asked.push((account_id, currency.to_string()));
            if let Some(error) = &self.lookup_error {
                return Err(error.clone());
            }
            Ok(self
                .balances
                .get(&(account_id, currency.to_string()))
                .copied())
        }
        fn send(&mut self, message: Outgoing) -> Result<(), PublishError> {
            self.sent.push(message);
            match &self.publish_error {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }
        fn account(
            &mut self,
            _account_id: i64,
            _currency: &str,
        ) -> Option<Result<Account, String>> {
            self.sender_account.clone().map(Ok)
        }
    }

    fn context() -> RequestContext {
        RequestContext {
            transaction_id: "01a20c00-0000-7000-8000-0000000000f1".into(),
            received_at_ms: 1_000,
            principal: None,
            guest_version: "test".into(),
        }
    }

    fn request(amount: &str) -> TransferRequest {
        TransferRequest {
            sender_id: 1,
            receiver_id: 2,
            amount: amount.into(),
            currency: "USD".into(),
            ..TransferRequest::default()
        }
    }

    fn funded(sender_minor: i64) -> Recorded {
        let mut imports = Recorded::default();
        imports.balances.insert((1, "USD".into()), sender_minor);
        imports.balances.insert((2, "USD".into()), 0);
        imports
    }

    #[test]
    fn accepts_and_publishes_with_a_hold() {
        let mut imports = funded(2_000);
        let accepted =
            initiate_transfer(&mut imports, &context(), &request("10.50")).expect("accepted");
        assert_eq!(
            accepted,
            Accepted {
                transaction_id: "01a20c00-0000-7000-8000-0000000000f1".into(),
                amount_minor: 1050
            }
        );
        assert_eq!(imports.sent.len(), 1);
        let sent = &imports.sent[0];
        assert_eq!(sent.topic, "transfer_topic");
        assert_eq!(sent.key, "1");
        assert_eq!(
            sent.hold,
            Some(Hold {
                account_id: 1,
                currency: "USD".into(),
                amount_minor: 1050
            })
        );
    }

    #[test]
    fn a_pending_transfer_holds_what_an_immediate_one_does() {
        let pending = TransferRequest {
            phase: Some("pending".into()),
            metadata: vec![("order_id".into(), "A-1".into())],
            ..request("10.50")
        };
        let mut immediate_imports = funded(2_000);
        let mut pending_imports = funded(2_000);
        initiate_transfer(&mut immediate_imports, &context(), &request("10.50")).expect("accepted");
        initiate_transfer(&mut pending_imports, &context(), &pending).expect("accepted");
        assert_eq!(pending_imports.sent[0].hold, immediate_imports.sent[0].hold);
        let message =
            crate::message::TransferMessage::parse_exact(&pending_imports.sent[0].payload)
                .expect("a message");
        assert!(message.is_pending());
        assert_eq!(message.expires_at_ms, Some(1_000 + 86_400_000));
        // Pending or not, a sender short of the amount cannot reserve it.
        let mut short = funded(1049);
        assert_eq!(
            initiate_transfer(&mut short, &context(), &pending),
            Err(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn exact_balance_is_enough_one_minor_unit_less_is_not() {
        assert!(initiate_transfer(&mut funded(1050), &context(), &request("10.50")).is_ok());
        let mut short = funded(1049);
        assert_eq!(
            initiate_transfer(&mut short, &context(), &request("10.50")),
            Err(Rejection::InsufficientFunds)
        );
        assert!(short.sent.is_empty());
    }

    #[test]
    fn sender_without_account_has_insufficient_funds() {
        let mut imports = funded(0);
        imports.balances.remove(&(1, "USD".into()));
        assert_eq!(
            initiate_transfer(&mut imports, &context(), &request("1")),
            Err(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn unknown_receiver_is_rejected_before_anything_is_sent() {
        let mut imports = funded(10_000);
        imports.balances.remove(&(2, "USD".into()));
        assert_eq!(
            initiate_transfer(&mut imports, &context(), &request("1")),
            Err(Rejection::ReceiverNotFound)
        );
        assert!(imports.sent.is_empty());
    }

    #[test]
    fn invalid_requests_look_nothing_up() {
        let mut imports = funded(10_000);
        let rejection =
            initiate_transfer(&mut imports, &context(), &request("-1")).expect_err("invalid");
        assert!(matches!(rejection, Rejection::Invalid(errors) if errors[0].field == "amount"));
        assert!(imports.asked.is_empty() && imports.sent.is_empty());
    }

    #[test]
    fn failures_of_the_imports_are_never_accepted() {
        let mut lookup_down = funded(10_000);
        lookup_down.lookup_error = Some("redis and postgres down".into());
        assert_eq!(
            initiate_transfer(&mut lookup_down, &context(), &request("1")),
            Err(Rejection::Unavailable("redis and postgres down".into()))
        );
        let mut log_down = funded(10_000);
        log_down.publish_error = Some(PublishError::Unavailable("no ack".into()));
        assert_eq!(
            initiate_transfer(&mut log_down, &context(), &request("1")),
            Err(Rejection::Unavailable("no ack".into()))
        );
        let mut hold_refused = funded(10_000);
        hold_refused.publish_error = Some(PublishError::InsufficientFunds);
        assert_eq!(
            initiate_transfer(&mut hold_refused, &context(), &request("1")),
            Err(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn a_sender_over_its_limits_is_refused_and_nothing_is_sent() {
        let mut imports = funded(1_000_000);
        imports.sender_account = Some(Account {
            available: Some(1_000_000),
            limits: spending::AccountLimits {
                single_max_minor: Some(10_000),
                daily_max_minor: Some(15_000),
                overdraft_minor: 0,
            },
            ..Account::default()
        });
        assert!(initiate_transfer(&mut imports, &context(), &request("100")).is_ok());
        assert!(matches!(
            initiate_transfer(&mut imports, &context(), &request("100.01")),
            Err(Rejection::Forbidden(reason)) if reason.contains("in one transfer")
        ));
        if let Some(account) = &mut imports.sender_account {
            account.today.outgoing_minor = 10_000;
        }
        assert!(initiate_transfer(&mut imports, &context(), &request("50")).is_ok());
        assert!(matches!(
            initiate_transfer(&mut imports, &context(), &request("50.01")),
            Err(Rejection::Forbidden(reason)) if reason.contains("a day")
        ));
        assert_eq!(
            imports.sent.len(),
            2,
            "only the transfers within the limits were sent"
        );
    }

    #[test]
    fn a_principal_may_only_send_from_its_own_account() {
        let mut imports = funded(10_000);
        let mut other = context();
        other.principal = Some(99);
        assert!(matches!(
            initiate_transfer(&mut imports, &other, &request("1")),
            Err(Rejection::Forbidden(_))
        ));
        other.principal = Some(1);
        assert!(initiate_transfer(&mut imports, &other, &request("1")).is_ok());
    }
}
