//! The hold taken ahead. A transfer's hold was a Redis call of its own, made when the guest
//! publishes; the decision's first balance lookup, which reads both parties in one Redis call
//! already, now takes it in that same call: the request's amount on the sender, with the
//! message the standard rules publish for the request as its pending record. An accepted
//! transfer costs one Redis round trip instead of two.
//!
//! Only an advance, never a decision: the publish that follows passes the same guard, which
//! admits exactly this hold (the sender, the currency, the request's amount), and takes it
//! over; when its message is the one expected nothing more is written, otherwise the record
//! is replaced with it (the hold stays as it is). A call whose transfer did not reach the log and
//! cannot have (nothing published: a refusal, a trap, a guard violation, a timeout before the
//! publish; or a refused publish) gives back what it may still hold before its answer. A crash
//! in between leaves what a crash after a hold always left: a hold whose transfer never
//! reaches the log, which the reconciler releases.
//!
//! The guest's lookups answer the balances as they were before the hold, as they always did.

use transferd_guest::logic::RequestContext;
use transferd_guest::message;
use transferd_guest::rules::{self, TransferRequest};
use uuid::Uuid;

use crate::capabilities::Publication;
use crate::capabilities::backend::Backend;
use crate::stores::redis::HoldRequest;

/// A hold the first lookup may take: on the sender, for the request's amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldAhead {
    pub account_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    /// The pending record: the message the standard rules publish for this request.
    pub record: Vec<u8>,
}

impl HoldAhead {
    /// The hold the request's transfer will need, when the standard rules accept the request
    /// from this caller. Otherwise nothing is held ahead: the guest refuses the request before
    /// it publishes, or (a guest with other rules) publishes and holds as it always did.
    pub fn plan(context: &RequestContext, request: &TransferRequest) -> Option<HoldAhead> {
        let transfer = rules::validate(request).ok()?;
        if context
            .principal
            .is_some_and(|principal| principal != transfer.sender_id)
        {
            return None;
        }
        let record = message::transfer_message(
            &context.transaction_id,
            context.received_at_ms,
            &context.guest_version,
            &transfer,
        )
        .ok()?;
        Some(HoldAhead {
            account_id: transfer.sender_id,
            currency: transfer.currency,
            amount_minor: transfer.amount_minor,
            record,
        })
    }

    /// The request to the cache when `accounts` are read in `currency`; `None` when the hold
    /// is not on one of them.
    pub fn request(&self, accounts: &[i64], currency: &str) -> Option<HoldRequest<'_>> {
        if currency != self.currency {
            return None;
        }
        let hold_on = accounts.iter().position(|id| *id == self.account_id)?;
        Some(HoldRequest {
            hold_on,
            amount_minor: self.amount_minor,
            record: &self.record,
        })
    }
}

/// How the publish found the transfer's hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Not held ahead: the publish reserves it.
    No,
    /// Held ahead, with the publish's message as its pending record.
    AsRecorded,
    /// Held ahead, with another message as its pending record: the publish replaces it.
    OtherRecord,
}

/// Where one call's hold ahead stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ahead {
    /// None planned, or none taken (the first lookup did not carry it, or Redis answered
    /// that it did not hold).
    #[default]
    None,
    /// To be taken by the call's first lookup.
    Planned(HoldAhead),
    /// Redis answered that it took the hold now (with its pending record).
    Held(HoldAhead),
    /// Perhaps held: the lookup carrying it failed or was dropped once sent. A publish
    /// reserves as usual (taking over a hold that exists; refused when Redis cannot be
    /// reached); unless the transfer then reached the log, or may have, the call gives it back
    /// all the same.
    Unsure(HoldAhead),
}

impl Ahead {
    pub fn planned(plan: Option<HoldAhead>) -> Ahead {
        plan.map_or(Ahead::None, Ahead::Planned)
    }

    /// The plan, for the call's first lookup: it is offered once. The call counts it as
    /// perhaps held from here until the lookup says (see [`Ahead::settle`]).
    pub fn take_plan(&mut self) -> Option<HoldAhead> {
        match std::mem::take(self) {
            Ahead::Planned(plan) => {
                *self = Ahead::Unsure(plan.clone());
                Some(plan)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// What the lookup that carried the plan said: `Some(true)` held, `Some(false)` not held,
    /// `None` unknown (the call to Redis failed).
    pub fn settle(&mut self, held: Option<bool>) {
        if let Ahead::Unsure(plan) = std::mem::take(self) {
            *self = match held {
                Some(true) => Ahead::Held(plan),
                Some(false) => Ahead::None,
                None => Ahead::Unsure(plan),
            };
        }
    }

    /// For the publish: the hold Redis confirmed, which the publish takes over. A hold that
    /// is only perhaps there stays with the call (see [`Ahead::Unsure`]).
    pub fn take_held(&mut self) -> Option<HoldAhead> {
        match std::mem::take(self) {
            Ahead::Held(held) => Some(held),
            other => {
                *self = other;
                None
            }
        }
    }

    /// For the call's end: a hold (or perhaps one) no publish took over, to give back unless
    /// the call's transfer reached the log or may have.
    pub fn take_unused(&mut self) -> Option<HoldAhead> {
        match std::mem::take(self) {
            Ahead::Held(held) | Ahead::Unsure(held) => Some(held),
            _ => None,
        }
    }
}

/// What of a call's unused hold ahead (`Ahead::take_unused`) to give back, given what its
/// publish did: nothing when the transfer reached the log or may have (its settlement, or the
/// reconciler, releases the hold by its transaction id).
pub fn to_give_back(unused: Option<HoldAhead>, publication: &Publication) -> Option<HoldAhead> {
    match publication {
        Publication::Acknowledged { .. } | Publication::InDoubt { .. } | Publication::InFlight => {
            None
        }
        Publication::None | Publication::Refused { .. } => unused,
    }
}

/// Gives back a hold ahead that no publish took over. A failure leaves it to the reconciler:
/// a hold only makes an account look poorer, never richer.
pub async fn give_back<B: Backend>(backend: &B, transaction_id: Uuid, held: &HoldAhead) {
    counted("given_back");
    if let Err(error) = backend
        .release_hold(transaction_id, held.account_id, &held.currency)
        .await
    {
        tracing::warn!(%error, %transaction_id, "could not give back a hold taken ahead");
    }
}

/// Counts what became of holds taken ahead.
pub fn counted(outcome: &'static str) {
    metrics::counter!(crate::metrics::HOLDS_AHEAD, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use transferd_guest::logic::{Imports, Outgoing, PublishError, initiate_transfer};

    /// Imports with every balance ample, keeping what is published.
    #[derive(Default)]
    struct Ample {
        published: Vec<Outgoing>,
    }

    impl Imports for Ample {
        fn available(&mut self, _: i64, _: &str) -> Result<Option<i64>, String> {
            Ok(Some(i64::MAX / 2))
        }
        fn send(&mut self, message: Outgoing) -> Result<(), PublishError> {
            self.published.push(message);
            Ok(())
        }
    }

    fn context(principal: Option<i64>) -> RequestContext {
        RequestContext {
            transaction_id: "01a20c00-0000-7000-8000-000000000001".into(),
            received_at_ms: 1_795_960_800_123,
            principal,
            guest_version: "v1".into(),
        }
    }

    fn request(amount: &str, currency: &str, description: Option<&str>) -> TransferRequest {
        TransferRequest {
            sender_id: 7,
            receiver_id: 9,
            amount: amount.into(),
            currency: currency.into(),
            description: description.map(str::to_string),
            ..TransferRequest::default()
        }
    }

    #[test]
    fn the_plan_holds_and_records_what_the_standard_logic_publishes() {
        for (amount, currency, description) in [
            ("10.50", "USD", Some("lunch \"ресторан\"")),
            ("7", "JPY", None),
            ("1.5e3", "EUR", Some("")),
            ("0.001", "BHD", None),
        ] {
            let request = request(amount, currency, description);
            let context = context(Some(7));
            let mut imports = Ample::default();
            let decided = initiate_transfer(&mut imports, &context, &request);
            assert!(decided.is_ok(), "{amount} {currency}: {decided:?}");
            let published = &imports.published[0];
            let hold = published.hold.clone().expect("the standard logic holds");
            let plan = HoldAhead::plan(&context, &request).expect("a plan");
            assert_eq!(plan.record, published.payload, "{amount} {currency}");
            assert_eq!(
                (plan.account_id, plan.currency, plan.amount_minor),
                (hold.account_id, hold.currency, hold.amount_minor)
            );
        }
    }

    /// A pending transfer with metadata holds as any other, and its record is the message the
    /// guest publishes, new fields included: the publish takes the hold over as it is.
    #[test]
    fn the_plan_records_metadata_and_a_pending_phase_as_published() {
        let request = TransferRequest {
            phase: Some("pending".into()),
            expires_in_s: Some(600),
            metadata: vec![("order_id".into(), "A-1".into())],
            ..request("10.50", "USD", None)
        };
        let context = context(Some(7));
        let mut imports = Ample::default();
        assert!(initiate_transfer(&mut imports, &context, &request).is_ok());
        let plan = HoldAhead::plan(&context, &request).expect("a plan");
        assert_eq!(plan.record, imports.published[0].payload);
        let message =
            transferd_message::TransferMessage::parse_exact(&plan.record).expect("a message");
        assert!(message.is_pending());
        assert_eq!(message.metadata.map(|m| m.len()), Some(1));
        assert_eq!(plan.amount_minor, 1050);
    }

    #[test]
    fn nothing_is_planned_for_a_request_the_rules_refuse_or_another_caller() {
        assert_eq!(
            HoldAhead::plan(&context(None), &request("abc", "USD", None)),
            None
        );
        assert_eq!(
            HoldAhead::plan(&context(None), &request("1.001", "USD", None)),
            None
        );
        assert_eq!(
            HoldAhead::plan(&context(None), &request("1", "usd", None)),
            None
        );
        assert_eq!(
            HoldAhead::plan(&context(Some(8)), &request("1", "USD", None)),
            None
        );
        assert!(HoldAhead::plan(&context(None), &request("1", "USD", None)).is_some());
    }

    #[test]
    fn only_a_transfer_that_cannot_be_in_the_log_gives_back_what_it_may_hold() {
        let held = HoldAhead::plan(&context(None), &request("1", "USD", None));
        let gives_back = |publication: Publication| to_give_back(held.clone(), &publication);
        assert_eq!(gives_back(Publication::None), held);
        assert_eq!(
            gives_back(Publication::Refused {
                reason: "refused".into()
            }),
            held
        );
        assert_eq!(
            gives_back(Publication::Acknowledged { amount_minor: 100 }),
            None
        );
        assert_eq!(
            gives_back(Publication::InDoubt {
                reason: "timed out".into()
            }),
            None
        );
        assert_eq!(gives_back(Publication::InFlight), None);
    }

    #[test]
    fn a_plan_is_offered_once_and_what_may_be_held_is_given_back_or_taken_over() {
        let plan = HoldAhead::plan(&context(None), &request("1", "USD", None));
        let held = plan.clone().expect("a plan");
        // Taken by the first lookup, which says it holds: the publish takes it, confirmed.
        let mut ahead = Ahead::planned(plan.clone());
        assert_eq!(ahead.take_plan(), Some(held.clone()));
        assert_eq!(ahead.take_plan(), None, "offered once");
        ahead.settle(Some(true));
        assert_eq!(ahead.take_held(), Some(held.clone()));
        assert_eq!(ahead.take_unused(), None, "taken over");
        // Redis did not answer: perhaps held; the publish reserves as usual, and the call
        // still has it to give back (unless its transfer reached the log).
        let mut ahead = Ahead::planned(plan.clone());
        ahead.take_plan();
        ahead.settle(None);
        assert_eq!(ahead.take_held(), None);
        assert_eq!(ahead.take_unused(), Some(held.clone()));
        // A lookup dropped before it answered (a timeout) leaves it perhaps held.
        let mut ahead = Ahead::planned(plan.clone());
        ahead.take_plan();
        assert_eq!(ahead.take_unused(), Some(held));
        // Not held: nothing to take over or give back.
        let mut ahead = Ahead::planned(plan);
        ahead.take_plan();
        ahead.settle(Some(false));
        assert_eq!(ahead, Ahead::None);
    }
}
