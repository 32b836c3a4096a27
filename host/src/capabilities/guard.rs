//! The host's checks on what a guest publishes and what it answers. The guest is replaceable
//! at run time, so it is never trusted with money: every transfer message must be the
//! request's transfer (its parties, currency and amount), held in full on the request's
//! sender, once per call, and the sender must be the authenticated caller when there is one
//! (whatever the guest decided).
//!
//! Pure (no I/O), so the rules have unit and property tests; `publish.send` runs them before
//! any hold is reserved, the upload check runs them on every invariant vector, and the
//! transfer handler runs [`check_accepted`] on the guest's answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use transferd_guest::logic::{Accepted, Outgoing, RequestContext};
use transferd_guest::money::{currency_exponent, format_minor, parse_amount};
use transferd_guest::rules::TransferRequest;
use transferd_message::{Phase, TransferMessage};
use uuid::Uuid;

use crate::stores::kafka::GUEST_TOPICS;

/// What a transfer message must say: the request's parties, currency and amount, the
/// context's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub transaction_id: Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub currency: String,
    /// The request's amount in the currency's minor units, read with the decimal rules host
    /// and guest share (`transferd_guest::money`) and no upper limit (a guest's limits may
    /// refuse more, never move more). `None` when the request's amount or currency is not
    /// one: then no transfer message matches the request.
    pub amount_minor: Option<i64>,
    /// The authenticated caller; none when authentication is off.
    pub principal: Option<i64>,
    /// The request's description, which the message must carry unchanged.
    pub description: Option<String>,
    /// The guest version that runs the call.
    pub guest_version: String,
    /// When the host received the request (the context's time).
    pub received_at_ms: u64,
    /// The request's metadata by key, which the message must carry unchanged; `None` when
    /// the request has none.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Whether the request asks for a pending transfer: only then may the message be one.
    pub pending: bool,
    /// The request's `expires_in_s`: a pending message expires exactly that long after its
    /// creation (without it, within the contract's bound, which the parser checks).
    pub expires_in_s: Option<i64>,
}

/// How far a message's `created_at_ms` may be from the host's receive time: a guest is given
/// that time and should write it as it is; a little room for one that reads its own clock.
pub const MAX_CREATED_AT_SKEW_MS: u64 = 1_000;

impl Expected {
    /// What a call given `context` and `request` may publish. The context's id is read here,
    /// once: the host mints a UUID for every request, and a vector's context that names no
    /// UUID is refused.
    pub fn of(context: &RequestContext, request: &TransferRequest) -> Result<Expected, Violation> {
        let transaction_id = Uuid::try_parse(&context.transaction_id)
            .map_err(|_| Violation::ContextId(context.transaction_id.clone()))?;
        Ok(Expected {
            transaction_id,
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            currency: request.currency.clone(),
            amount_minor: requested_minor(&request.amount, &request.currency),
            principal: context.principal,
            description: request.description.clone(),
            guest_version: context.guest_version.clone(),
            received_at_ms: context.received_at_ms,
            metadata: (!request.metadata.is_empty())
                .then(|| request.metadata.iter().cloned().collect()),
            pending: request.phase.as_deref() == Some("pending"),
            expires_in_s: request.expires_in_s,
        })
    }
}

/// `amount` (decimal text) in minor units of `currency`, when it is an amount of it.
pub fn requested_minor(amount: &str, currency: &str) -> Option<i64> {
    let exponent = currency_exponent(currency)?;
    parse_amount(amount, exponent, i64::MAX).ok()
}

/// A broken rule. `check()` names it in a stable form for logs, counters and the 422 of an
/// upload; the message says what the guest did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a second publish in one call (at most one transfer message per request)")]
    SecondPublish,
    #[error("publishes to topic {0:?}, which a guest may not")]
    Topic(String),
    #[error("the message is not a transfer message of this version: {0}")]
    NotJson(String),
    #[error("the message's {field} is {found}, the request's is {expected}")]
    Field {
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("the message's amount_minor is {0}, not a positive integer")]
    Amount(String),
    #[error(
        "publishes {published_minor} minor units of {currency}; the request asks for {}",
        .requested.map_or("no valid amount".to_string(), |minor| format!("{minor}"))
    )]
    NotRequested {
        published_minor: i64,
        requested: Option<i64>,
        currency: String,
    },
    #[error(
        "the message's amount is {found}, not {expected} (its amount_minor at the currency's decimals)"
    )]
    AmountText { found: String, expected: String },
    #[error("publishes a transfer without a hold")]
    NoHold,
    #[error(
        "holds on account {account_id} in {currency}, not on the sender {sender_id} in {expected_currency}"
    )]
    HoldAccount {
        account_id: i64,
        currency: String,
        sender_id: i64,
        expected_currency: String,
    },
    #[error("holds {held_minor} minor units for a message of {amount_minor}")]
    HoldAmount { held_minor: i64, amount_minor: i64 },
    #[error("the message key is {found:?}, not the sender id {expected}")]
    Key { found: String, expected: i64 },
    #[error("accepted transaction {found}, not {expected}")]
    AcceptedId { found: String, expected: String },
    #[error("accepted {accepted_minor} minor units, but published {published_minor}")]
    AcceptedAmount {
        accepted_minor: i64,
        published_minor: i64,
    },
    #[error("accepted a transfer it did not publish")]
    AcceptedUnpublished,
    #[error("publishes a transfer from account {sender_id} for user {principal}")]
    Principal { principal: i64, sender_id: i64 },
    /// Checked by `balance_lookup`: a guest asks only about the request's parties.
    #[error(
        "asks for the balance of account {account_id} in {currency:?}, not a party of the request"
    )]
    Lookup { account_id: i64, currency: String },
    /// Not the guest's doing: the call was given a context whose id is not a UUID (a
    /// hand-written vector; the host mints UUIDs).
    #[error("the request context's transaction_id {0:?} is not a UUID")]
    ContextId(String),
}

impl Violation {
    /// The check's name.
    pub fn check(&self) -> &'static str {
        match self {
            Violation::SecondPublish => "one_publish",
            Violation::Topic(_) => "topic",
            Violation::NotJson(_) => "json",
            Violation::Field { field, .. } => field,
            Violation::Amount(_) => "amount_minor",
            Violation::NotRequested { .. } => "requested_amount",
            Violation::AmountText { .. } => "amount",
            Violation::NoHold => "hold_present",
            Violation::HoldAccount { .. } => "hold_account",
            Violation::HoldAmount { .. } => "hold_amount",
            Violation::Key { .. } => "key",
            Violation::AcceptedId { .. } => "accepted_id",
            Violation::AcceptedAmount { .. } => "accepted_amount",
            Violation::AcceptedUnpublished => "accepted_without_publish",
            Violation::Principal { .. } => "principal",
            Violation::Lookup { .. } => "balance_lookup",
            Violation::ContextId(_) => "context_transaction_id",
        }
    }

    /// `check <name>: <what happened>`, how violations are reported everywhere.
    pub fn describe(&self) -> String {
        format!("the host's check {} failed: {self}", self.check())
    }
}

/// Admits one publish of a call, for the live and the replayed imports alike: checks it,
/// counts it, and on a violation keeps the violation and returns the trap that stops the
/// guest. Returns the message's `amount_minor`.
pub fn admit(
    expected: &Expected,
    publishes: &mut u32,
    violation: &mut Option<Violation>,
    outgoing: &Outgoing,
) -> wasmtime::Result<i64> {
    match check_publish(expected, *publishes, outgoing) {
        Ok(amount_minor) => {
            *publishes += 1;
            Ok(amount_minor)
        }
        Err(broken) => Err(trap(violation, broken)),
    }
}

/// Keeps a broken check (a publish's, or a lookup's in `balance_lookup`) for the call's answer
/// and returns the trap that stops the guest.
pub fn trap(violation: &mut Option<Violation>, broken: Violation) -> wasmtime::Error {
    let description = broken.describe();
    *violation = Some(broken);
    wasmtime::Error::msg(description)
}

/// Checks one publish of a call, `publishes_before` being how many this call made already.
/// Returns the message's `amount_minor` (what the hold covers).
pub fn check_publish(
    expected: &Expected,
    publishes_before: u32,
    outgoing: &Outgoing,
) -> Result<i64, Violation> {
    if publishes_before > 0 {
        return Err(Violation::SecondPublish);
    }
    if let Some(principal) = expected.principal
        && principal != expected.sender_id
    {
        return Err(Violation::Principal {
            principal,
            sender_id: expected.sender_id,
        });
    }
    if !GUEST_TOPICS.contains(&outgoing.topic.as_str()) {
        return Err(Violation::Topic(outgoing.topic.clone()));
    }
    // Settlement's parser, in its exact form: what passes here is what settlement applies.
    let message = TransferMessage::parse_exact(&outgoing.payload)
        .map_err(|error| Violation::NotJson(error.to_string()))?;
    message_is_requested(expected, &message)?;
    let amount_minor = message.amount_minor;
    if amount_minor <= 0 {
        return Err(Violation::Amount(amount_minor.to_string()));
    }
    hold_covers(expected, outgoing, amount_minor)?;
    let amount = message.amount.as_ref().map(|amount| amount.as_str());
    amount_is_requested(expected, amount_minor, amount)?;
    if outgoing.key != expected.sender_id.to_string() {
        return Err(Violation::Key {
            found: outgoing.key.clone(),
            expected: expected.sender_id,
        });
    }
    Ok(amount_minor)
}

/// The message names the request's transfer: its id, parties, currency, description, the
/// guest that made it, and a creation time the host saw.
fn message_is_requested(expected: &Expected, message: &TransferMessage) -> Result<(), Violation> {
    field_is(
        "transaction_id",
        message.transaction_id.to_string(),
        expected.transaction_id.to_string(),
    )?;
    field_is("sender_id", message.sender_id, expected.sender_id)?;
    field_is("receiver_id", message.receiver_id, expected.receiver_id)?;
    field_is("currency", &message.currency, &expected.currency)?;
    field_is("description", &message.description, &expected.description)?;
    field_is(
        "guest_version",
        message.guest_version.as_deref(),
        Some(expected.guest_version.as_str()),
    )?;
    field_is("metadata", &message.metadata, &expected.metadata)?;
    phase_is_requested(expected, message)?;
    let created_at_ms = u64::try_from(message.created_at_ms).unwrap_or(0);
    if created_at_ms.abs_diff(expected.received_at_ms) > MAX_CREATED_AT_SKEW_MS {
        return Err(Violation::Field {
            field: "created_at_ms",
            found: message.created_at_ms.to_string(),
            expected: format!(
                "within {MAX_CREATED_AT_SKEW_MS} ms of {}",
                expected.received_at_ms
            ),
        });
    }
    Ok(())
}

/// The message is pending exactly when the request asked for it, and then expires when the
/// request said (the parser already bounds an expiry the request left to the guest).
fn phase_is_requested(expected: &Expected, message: &TransferMessage) -> Result<(), Violation> {
    field_is(
        "phase",
        message.phase,
        expected.pending.then_some(Phase::Pending),
    )?;
    if let (true, Some(seconds)) = (expected.pending, expected.expires_in_s) {
        let requested = seconds
            .checked_mul(1000)
            .and_then(|ms| message.created_at_ms.checked_add(ms));
        field_is("expires_at_ms", message.expires_at_ms, requested)?;
    }
    Ok(())
}

/// The hold taken for the publish is the sender's, in the transfer's currency, for exactly
/// the message's amount.
fn hold_covers(
    expected: &Expected,
    outgoing: &Outgoing,
    amount_minor: i64,
) -> Result<(), Violation> {
    let hold = outgoing.hold.as_ref().ok_or(Violation::NoHold)?;
    if hold.account_id != expected.sender_id || hold.currency != expected.currency {
        return Err(Violation::HoldAccount {
            account_id: hold.account_id,
            currency: hold.currency.clone(),
            sender_id: expected.sender_id,
            expected_currency: expected.currency.clone(),
        });
    }
    if hold.amount_minor != amount_minor {
        return Err(Violation::HoldAmount {
            held_minor: hold.amount_minor,
            amount_minor,
        });
    }
    Ok(())
}

/// Checks an `accepted` answer against what the call published (`published_minor`: the
/// `amount_minor` of a publish that succeeded, `None` when nothing was published).
pub fn check_accepted(
    expected: &Expected,
    published_minor: Option<i64>,
    accepted: &Accepted,
) -> Result<(), Violation> {
    // The id exactly as the guest was given it: another spelling of it is refused too.
    let expected_id = expected.transaction_id.to_string();
    if accepted.transaction_id != expected_id {
        return Err(Violation::AcceptedId {
            found: accepted.transaction_id.clone(),
            expected: expected_id,
        });
    }
    let published_minor = published_minor.ok_or(Violation::AcceptedUnpublished)?;
    if accepted.amount_minor != published_minor {
        return Err(Violation::AcceptedAmount {
            accepted_minor: accepted.amount_minor,
            published_minor,
        });
    }
    Ok(())
}

/// The message moves exactly the request's amount, and says so in both of its forms:
/// `amount_minor`, which settlement applies, and `amount`, the number at the currency's
/// decimals that consumers of the original message read.
fn amount_is_requested(
    expected: &Expected,
    amount_minor: i64,
    amount: Option<&str>,
) -> Result<(), Violation> {
    let exponent = currency_exponent(&expected.currency);
    let (Some(requested), Some(exponent)) = (expected.amount_minor, exponent) else {
        return Err(not_requested(expected, amount_minor));
    };
    if requested != amount_minor {
        return Err(not_requested(expected, amount_minor));
    }
    let written = format_minor(amount_minor, exponent);
    match amount {
        Some(found) if found == written => Ok(()),
        found => Err(Violation::AmountText {
            found: found.unwrap_or("nothing").to_string(),
            expected: written,
        }),
    }
}

fn not_requested(expected: &Expected, published_minor: i64) -> Violation {
    Violation::NotRequested {
        published_minor,
        requested: expected.amount_minor,
        currency: expected.currency.clone(),
    }
}

fn field_is<T: PartialEq + std::fmt::Debug>(
    field: &'static str,
    found: T,
    expected: T,
) -> Result<(), Violation> {
    if found == expected {
        return Ok(());
    }
    Err(Violation::Field {
        field,
        found: format!("{found:?}"),
        expected: format!("{expected:?}"),
    })
}

/// Violations seen on this replica, by guest version, for `GET /admin/guest`.
#[derive(Default)]
pub struct ViolationCounts {
    by_version: Mutex<HashMap<String, u64>>,
}

impl ViolationCounts {
    pub fn record(&self, version: &str) {
        let mut counts = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *counts.entry(version.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use transferd_guest::logic::Hold;

    const ID: &str = "01a20c00-0000-7000-8000-000000000001";

    const RECEIVED_AT_MS: u64 = 1_795_960_800_123;
    const VERSION: &str = "sha256:test";

    /// The request of every case: 10.50 USD from 1 to 2.
    fn expected() -> Expected {
        Expected {
            transaction_id: Uuid::parse_str(ID).expect("a UUID"),
            sender_id: 1,
            receiver_id: 2,
            currency: "USD".into(),
            amount_minor: requested_minor("10.50", "USD"),
            principal: None,
            description: None,
            guest_version: VERSION.into(),
            received_at_ms: RECEIVED_AT_MS,
            metadata: None,
            pending: false,
            expires_in_s: None,
        }
    }

    /// The standard message with `changes`; `amount` is written as the raw JSON text of the
    /// string given for it (`"10.50"` by default: `json!` would write 10.5), left out for null.
    fn payload(changes: Value) -> Vec<u8> {
        let mut message = json!({
            "transaction_id": ID, "sender_id": 1, "receiver_id": 2,
            "amount_minor": 1050, "currency": "USD", "description": null,
            "created_at": transferd_message::time::rfc3339_from_ms(RECEIVED_AT_MS),
            "created_at_ms": RECEIVED_AT_MS, "guest_version": VERSION, "schema_version": 1,
        });
        let mut amount = Some("10.50".to_string());
        for (key, value) in changes.as_object().into_iter().flatten() {
            if key == "amount" {
                amount = value.as_str().map(str::to_string);
            } else {
                message[key] = value.clone();
            }
        }
        let mut text = serde_json::to_string(&message).expect("json");
        if let Some(amount) = amount {
            text.pop();
            text.push_str(&format!(r#","amount":{amount}}}"#));
        }
        text.into_bytes()
    }

    fn outgoing(changes: Value, hold: Option<Hold>) -> Outgoing {
        Outgoing {
            topic: "transfer_topic".into(),
            key: "1".into(),
            payload: payload(changes),
            hold,
        }
    }

    fn hold(account_id: i64, amount_minor: i64) -> Option<Hold> {
        Some(Hold {
            account_id,
            currency: "USD".into(),
            amount_minor,
        })
    }

    fn check(changes: Value, hold: Option<Hold>) -> Result<i64, &'static str> {
        check_publish(&expected(), 0, &outgoing(changes, hold)).map_err(|v| v.check())
    }

    #[test]
    fn the_standard_message_passes() {
        assert_eq!(check(json!({}), hold(1, 1050)), Ok(1050));
    }

    #[test]
    fn the_message_must_move_the_requests_amount() {
        // Consistent with itself (the hold covers it), but ten times what was asked.
        assert_eq!(
            check(
                json!({"amount_minor": 10_500, "amount": "105.00"}),
                hold(1, 10_500)
            ),
            Err("requested_amount")
        );
        assert_eq!(
            check(
                json!({"amount_minor": 1049, "amount": "10.49"}),
                hold(1, 1049)
            ),
            Err("requested_amount")
        );
        // A request whose amount is no amount of its currency matches no message.
        for (amount, currency) in [
            ("abc", "USD"),
            ("10.505", "USD"),
            ("0", "USD"),
            ("1", "XXX"),
        ] {
            let request = Expected {
                amount_minor: requested_minor(amount, currency),
                ..expected()
            };
            let faithful = outgoing(json!({}), hold(1, 1050));
            assert_eq!(
                check_publish(&request, 0, &faithful).map_err(|v| v.check()),
                Err("requested_amount"),
                "{amount} {currency}"
            );
        }
    }

    #[test]
    fn the_amount_consumers_read_must_be_amount_minor_at_the_currencys_decimals() {
        for amount in ["10.5", "10.500", "1050", "105.0"] {
            assert_eq!(
                check(json!({"amount": amount}), hold(1, 1050)),
                Err("amount"),
                "{amount}"
            );
        }
        // Not a number, null or missing: not a message of this version at all.
        for amount in [json!(r#""10.50""#), json!("null"), json!(null)] {
            assert_eq!(
                check(json!({ "amount": amount }), hold(1, 1050)),
                Err("json"),
                "{amount}"
            );
        }
        let yen = Expected {
            currency: "JPY".into(),
            amount_minor: requested_minor("1050", "JPY"),
            ..expected()
        };
        let mut message = outgoing(json!({"currency": "JPY", "amount": "1050"}), hold(1, 1050));
        if let Some(hold) = &mut message.hold {
            hold.currency = "JPY".into();
        }
        assert_eq!(check_publish(&yen, 0, &message), Ok(1050));
    }

    #[test]
    fn the_sender_must_be_the_authenticated_caller() {
        let faithful = outgoing(json!({}), hold(1, 1050));
        let as_sender = Expected {
            principal: Some(1),
            ..expected()
        };
        assert_eq!(check_publish(&as_sender, 0, &faithful), Ok(1050));
        let as_someone_else = Expected {
            principal: Some(2),
            ..expected()
        };
        assert_eq!(
            check_publish(&as_someone_else, 0, &faithful).map_err(|v| v.check()),
            Err("principal")
        );
    }

    #[test]
    fn each_field_of_the_message_must_be_the_requests() {
        assert_eq!(
            check(
                json!({"transaction_id": "01a20c00-0000-7000-8000-000000000002"}),
                hold(1, 1050)
            ),
            Err("transaction_id")
        );
        assert_eq!(
            check(json!({"transaction_id": "other"}), hold(1, 1050)),
            Err("json")
        );
        assert_eq!(
            check(json!({"sender_id": 2}), hold(1, 1050)),
            Err("sender_id")
        );
        assert_eq!(check(json!({"sender_id": "1"}), hold(1, 1050)), Err("json"));
        assert_eq!(
            check(json!({"receiver_id": 3}), hold(1, 1050)),
            Err("receiver_id")
        );
        assert_eq!(
            check(json!({"currency": "EUR"}), hold(1, 1050)),
            Err("currency")
        );
    }

    #[test]
    fn every_other_field_settlement_reads_or_consumers_print_is_checked() {
        let described = Expected {
            description: Some("rent".into()),
            ..expected()
        };
        let check_as = |request: &Expected, changes: Value| {
            check_publish(request, 0, &outgoing(changes, hold(1, 1050))).map_err(|v| v.check())
        };
        assert_eq!(
            check_as(&described, json!({"description": "rent"})),
            Ok(1050)
        );
        assert_eq!(
            check_as(&described, json!({"description": "rent, and 1,000 more"})),
            Err("description")
        );
        assert_eq!(check_as(&described, json!({})), Err("description"));
        // A request the rules should have refused, passed on by a guest that did not: the
        // ledger cannot store NUL, and a line break forges lines in whatever prints it.
        for text in ["a\u{0}b", "a\nb"] {
            let controlled = Expected {
                description: Some(text.into()),
                ..expected()
            };
            assert_eq!(
                check_as(&controlled, json!({ "description": text })),
                Err("json"),
                "{text:?}"
            );
        }
        assert_eq!(
            check(json!({"guest_version": "sha256:other"}), hold(1, 1050)),
            Err("guest_version")
        );
        let late = RECEIVED_AT_MS + MAX_CREATED_AT_SKEW_MS + 1;
        let late_changes = json!({
            "created_at_ms": late,
            "created_at": transferd_message::time::rfc3339_from_ms(late),
        });
        assert_eq!(check(late_changes, hold(1, 1050)), Err("created_at_ms"));
        assert_eq!(
            check(json!({"created_at_ms": i64::MAX}), hold(1, 1050)),
            Err("json")
        );
        assert_eq!(
            check(json!({"created_at": "2026-11-29T14:00:00Z"}), hold(1, 1050)),
            Err("json")
        );
        assert_eq!(
            check(json!({"schema_version": 2}), hold(1, 1050)),
            Err("json")
        );
        assert_eq!(check(json!({"note": "extra"}), hold(1, 1050)), Err("json"));
    }

    #[test]
    fn the_metadata_must_be_the_requests() {
        let tagged = Expected {
            metadata: Some([("order".to_string(), "A-1".to_string())].into()),
            ..expected()
        };
        let check_as = |request: &Expected, changes: Value| {
            check_publish(request, 0, &outgoing(changes, hold(1, 1050))).map_err(|v| v.check())
        };
        assert_eq!(
            check_as(&tagged, json!({"metadata": {"order": "A-1"}})),
            Ok(1050)
        );
        assert_eq!(check_as(&tagged, json!({})), Err("metadata"));
        assert_eq!(
            check_as(&tagged, json!({"metadata": {"order": "A-2"}})),
            Err("metadata")
        );
        assert_eq!(
            check_as(&tagged, json!({"metadata": {"order": "A-1", "extra": "x"}})),
            Err("metadata")
        );
        assert_eq!(
            check(json!({"metadata": {"order": "A-1"}}), hold(1, 1050)),
            Err("metadata")
        );
        // No metadata is written as none, never as an empty object.
        assert_eq!(check(json!({"metadata": {}}), hold(1, 1050)), Err("json"));
        let Expected { metadata, .. } = Expected::of(
            &RequestContext {
                transaction_id: ID.into(),
                received_at_ms: RECEIVED_AT_MS,
                principal: None,
                guest_version: VERSION.into(),
            },
            &TransferRequest::default(),
        )
        .expect("a context");
        assert_eq!(metadata, None);
    }

    #[test]
    fn a_message_is_pending_exactly_when_the_request_asked() {
        let day_later = RECEIVED_AT_MS + 86_400_000;
        let pending_changes =
            |expires_at_ms: u64| json!({"phase": "pending", "expires_at_ms": expires_at_ms});
        let pending = Expected {
            pending: true,
            ..expected()
        };
        let check_as = |request: &Expected, changes: Value| {
            check_publish(request, 0, &outgoing(changes, hold(1, 1050))).map_err(|v| v.check())
        };
        assert_eq!(check_as(&pending, pending_changes(day_later)), Ok(1050));
        assert_eq!(check_as(&pending, json!({})), Err("phase"));
        assert_eq!(
            check(pending_changes(day_later), hold(1, 1050)),
            Err("phase")
        );
        // Without expires_in_s, any expiry after creation and within seven days.
        let week = u64::try_from(transferd_message::PENDING_MAX_EXPIRY_MS).expect("positive");
        assert_eq!(
            check_as(&pending, pending_changes(RECEIVED_AT_MS + 1)),
            Ok(1050)
        );
        assert_eq!(
            check_as(&pending, pending_changes(RECEIVED_AT_MS + week)),
            Ok(1050)
        );
        for out_of_range in [RECEIVED_AT_MS, RECEIVED_AT_MS + week + 1] {
            assert_eq!(
                check_as(&pending, pending_changes(out_of_range)),
                Err("json")
            );
        }
        // With it, exactly that long after creation.
        let for_an_hour = Expected {
            expires_in_s: Some(3600),
            ..pending
        };
        assert_eq!(
            check_as(&for_an_hour, pending_changes(RECEIVED_AT_MS + 3_600_000)),
            Ok(1050)
        );
        assert_eq!(
            check_as(&for_an_hour, pending_changes(day_later)),
            Err("expires_at_ms")
        );
        // An immediate message names no phase and no expiry.
        assert_eq!(
            check(json!({"phase": "immediate"}), hold(1, 1050)),
            Err("json")
        );
        assert_eq!(
            check(json!({"expires_at_ms": day_later}), hold(1, 1050)),
            Err("json")
        );
    }

    #[test]
    fn amount_minor_must_be_a_positive_integer() {
        for amount in [json!(0), json!(-5)] {
            assert_eq!(
                check(json!({"amount_minor": amount}), hold(1, 1050)),
                Err("amount_minor"),
                "{amount}"
            );
        }
        for amount in [json!(10.5), json!("1050"), json!(null)] {
            assert_eq!(
                check(json!({"amount_minor": amount}), hold(1, 1050)),
                Err("json"),
                "{amount}"
            );
        }
    }

    #[test]
    fn the_hold_must_cover_the_message_on_the_sender() {
        assert_eq!(check(json!({}), None), Err("hold_present"));
        assert_eq!(check(json!({}), hold(2, 1050)), Err("hold_account"));
        let mut other_currency = hold(1, 1050);
        if let Some(hold) = &mut other_currency {
            hold.currency = "EUR".into();
        }
        assert_eq!(check(json!({}), other_currency), Err("hold_account"));
        // The issue's hostile guest: 1 minor unit held, 1,000x the amount published.
        assert_eq!(
            check(json!({"amount_minor": 1_050_000}), hold(1, 1)),
            Err("hold_amount")
        );
        assert_eq!(check(json!({}), hold(1, 1)), Err("hold_amount"));
    }

    #[test]
    fn topic_key_json_and_count_are_checked() {
        let mut message = outgoing(json!({}), hold(1, 1050));
        assert_eq!(
            check_publish(&expected(), 1, &message).map_err(|v| v.check()),
            Err("one_publish")
        );
        message.key = "2".into();
        assert_eq!(
            check_publish(&expected(), 0, &message).map_err(|v| v.check()),
            Err("key")
        );
        message.key = "1".into();
        message.topic = "transfer_events".into();
        assert_eq!(
            check_publish(&expected(), 0, &message).map_err(|v| v.check()),
            Err("topic")
        );
        message.topic = "transfer_topic".into();
        message.payload = b"not json".to_vec();
        assert_eq!(
            check_publish(&expected(), 0, &message).map_err(|v| v.check()),
            Err("json")
        );
        // A field given twice: serde_json's Value would keep the last, settlement refuses it.
        message.payload = format!(
            r#"{{"transaction_id":"{ID}","sender_id":2,"sender_id":1,"receiver_id":2,"currency":"USD","amount_minor":1050}}"#
        )
        .into_bytes();
        assert_eq!(
            check_publish(&expected(), 0, &message).map_err(|v| v.check()),
            Err("json")
        );
    }

    #[test]
    fn a_context_that_names_no_uuid_is_refused() {
        let request = TransferRequest {
            sender_id: 1,
            receiver_id: 2,
            amount: "10.50".into(),
            currency: "USD".into(),
            ..TransferRequest::default()
        };
        let context = |id: &str| RequestContext {
            transaction_id: id.into(),
            received_at_ms: RECEIVED_AT_MS,
            principal: None,
            guest_version: VERSION.into(),
        };
        assert_eq!(Expected::of(&context(ID), &request), Ok(expected()));
        assert_eq!(
            Expected::of(&context("tx"), &request).map_err(|broken| broken.check()),
            Err("context_transaction_id")
        );
    }

    #[test]
    fn accepted_must_name_the_transaction_and_the_published_amount() {
        let accepted = |id: &str, amount_minor| Accepted {
            transaction_id: id.into(),
            amount_minor,
        };
        assert_eq!(
            check_accepted(&expected(), Some(1050), &accepted(ID, 1050)),
            Ok(())
        );
        let failing = [
            check_accepted(&expected(), Some(1050), &accepted("other", 1050)),
            check_accepted(&expected(), Some(1050), &accepted(ID, 1)),
            check_accepted(&expected(), None, &accepted(ID, 1050)),
        ];
        let checks: Vec<_> = failing
            .iter()
            .map(|result| result.as_ref().map_err(Violation::check).err())
            .collect();
        assert_eq!(
            checks,
            vec![
                Some("accepted_id"),
                Some("accepted_amount"),
                Some("accepted_without_publish")
            ]
        );
    }

    #[test]
    fn violations_are_counted_per_version() {
        let counts = ViolationCounts::default();
        counts.record("a");
        counts.record("a");
        counts.record("b");
        let snapshot = counts.snapshot();
        assert_eq!((snapshot["a"], snapshot["b"]), (2, 1));
    }

    proptest! {
        /// A message built from the request passes exactly when the hold equals its amount.
        #[test]
        fn a_faithful_message_passes_only_with_an_equal_hold(
            sender_id in 1i64..i64::MAX,
            receiver_id in 1i64..i64::MAX,
            amount_minor in 1i64..i64::MAX,
            held_minor in 1i64..i64::MAX,
        ) {
            let written = format_minor(amount_minor, 2);
            let expected = Expected {
                sender_id,
                receiver_id,
                amount_minor: requested_minor(&written, "USD"),
                ..expected()
            };
            let message = Outgoing {
                topic: "transfer_topic".into(),
                key: sender_id.to_string(),
                payload: payload(json!({
                    "sender_id": sender_id, "receiver_id": receiver_id, "amount_minor": amount_minor,
                    "amount": written,
                })),
                hold: Some(Hold { account_id: sender_id, currency: "USD".into(), amount_minor: held_minor }),
            };
            let result = check_publish(&expected, 0, &message);
            if held_minor == amount_minor {
                prop_assert_eq!(result, Ok(amount_minor));
            } else {
                prop_assert_eq!(result, Err(Violation::HoldAmount { held_minor, amount_minor }));
            }
        }

        /// A faithful message for any other amount than the request's is refused, whatever
        /// its hold.
        #[test]
        fn any_other_amount_is_refused(requested in 1i64..i64::MAX, published in 1i64..i64::MAX) {
            prop_assume!(requested != published);
            let request = Expected {
                amount_minor: requested_minor(&format_minor(requested, 2), "USD"),
                ..expected()
            };
            prop_assert_eq!(request.amount_minor, Some(requested));
            let message = outgoing(
                json!({"amount_minor": published, "amount": format_minor(published, 2)}),
                hold(1, published),
            );
            let check = check_publish(&request, 0, &message).map_err(|v| v.check());
            prop_assert_eq!(check, Err("requested_amount"));
        }

        /// Any other sender, receiver or hold account is refused.
        #[test]
        fn any_other_party_is_refused(
            other in 3i64..i64::MAX,
            which in 0usize..3,
        ) {
            let mut message = outgoing(json!({}), hold(1, 1050));
            match which {
                0 => message.payload = payload(json!({"sender_id": other})),
                1 => message.payload = payload(json!({"receiver_id": other})),
                _ => message.hold = hold(other, 1050),
            }
            let check = check_publish(&expected(), 0, &message).map_err(|v| v.check());
            prop_assert_eq!(check, Err(["sender_id", "receiver_id", "hold_account"][which]));
        }

        /// Whatever bytes the guest sends, the check answers without panicking, and passes
        /// only a message that names the request's transfer.
        #[test]
        fn arbitrary_payloads_never_pass_unless_they_are_the_transfer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let message = Outgoing { payload: bytes, ..outgoing(json!({}), hold(1, 1050)) };
            if let Ok(amount_minor) = check_publish(&expected(), 0, &message) {
                let value: Value = serde_json::from_slice(&message.payload).expect("passed as JSON");
                prop_assert_eq!(&value["transaction_id"], &json!(ID));
                prop_assert_eq!(amount_minor, 1050);
            }
        }
    }
}
