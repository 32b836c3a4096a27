//! The host's answer to a transfer, from what the call published and what the guest said.
//!
//! What was published decides, not the guest's return value: a message the broker
//! acknowledged is a transfer that will settle, so it is accepted even if the guest then
//! trapped or answered something else; a message that may be in the log is "unknown", never
//! "failed"; only when nothing is in the log does the guest's answer count, and then only an
//! answer that passes the host's checks.

use transferd_guest::logic::Rejection;

use crate::capabilities::Publication;
use crate::capabilities::guard::{self, Expected, Violation};
use crate::guest::runtime::{Decided, GuestFailure, ItemDecided};

/// What the client is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The message is in the log: 200.
    Accepted,
    /// The guest refused, and nothing was published.
    Rejected(Rejection),
    /// The message may be in the log; its hold stays. The reason, for the client.
    InDoubt(String),
    /// No decision and nothing published: a trap, a broken host check, a timeout.
    Failed(GuestFailure),
    /// A transfer of an atomic batch the guest accepted, refused because another of the
    /// batch was.
    BatchFailed,
}

/// The answer, and the host check the guest broke if it broke one (to log and count, also
/// when the answer is `Accepted`).
pub fn verdict(expected: &Expected, decided: &Decided) -> (Answer, Option<Violation>) {
    let acknowledged_minor = match &decided.publication {
        Publication::Acknowledged { amount_minor } => Some(*amount_minor),
        _ => None,
    };
    let violation = match &decided.decision {
        Err(GuestFailure::Violation(violation)) => Some(violation.clone()),
        Ok(Ok(accepted)) => guard::check_accepted(expected, acknowledged_minor, accepted).err(),
        _ => None,
    };
    let answer = match &decided.publication {
        Publication::Acknowledged { .. } => Answer::Accepted,
        Publication::InDoubt { reason } => Answer::InDoubt(reason.clone()),
        Publication::InFlight => Answer::InDoubt(
            "the transfer logic ran out of time while its message was being published".into(),
        ),
        Publication::None | Publication::Refused { .. } => match (&violation, &decided.decision) {
            (Some(violation), _) => Answer::Failed(GuestFailure::Violation(violation.clone())),
            (None, Ok(Ok(_))) => {
                Answer::Failed(GuestFailure::Violation(Violation::AcceptedUnpublished))
            }
            (None, Ok(Err(rejection))) => Answer::Rejected(rejection.clone()),
            (None, Err(failure)) => Answer::Failed(failure.clone()),
        },
    };
    (answer, violation)
}

/// A batch item's answer: accepted only when the guest staged its message and accepted it
/// (naming the staged amount); otherwise its guest's refusal or failure. Nothing of a batch
/// is in the log before the host produces it, so here the guest's answer decides.
pub fn item_verdict(item: &ItemDecided) -> Answer {
    let staged_minor = item.staged.as_ref().map(|staged| staged.amount_minor);
    match (&item.decision, &item.expected) {
        (Err(failure), _) => Answer::Failed(failure.clone()),
        (Ok(Err(rejection)), _) => Answer::Rejected(rejection.clone()),
        (Ok(Ok(accepted)), Some(expected)) => {
            match guard::check_accepted(expected, staged_minor, accepted) {
                Ok(()) => Answer::Accepted,
                Err(violation) => Answer::Failed(GuestFailure::Violation(violation)),
            }
        }
        (Ok(Ok(_)), None) => {
            Answer::Failed(GuestFailure::Violation(Violation::AcceptedUnpublished))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::RecordedAnswers;
    use transferd_guest::logic::Accepted;

    const ID: &str = "01a20c00-0000-7000-8000-000000000001";

    fn expected() -> Expected {
        Expected {
            transaction_id: uuid::Uuid::parse_str(ID).expect("a UUID"),
            sender_id: 1,
            receiver_id: 2,
            currency: "USD".into(),
            amount_minor: Some(1050),
            principal: None,
            description: None,
            guest_version: "sha256:test".into(),
            received_at_ms: 0,
            metadata: None,
            pending: false,
            expires_in_s: None,
        }
    }

    fn decided(
        decision: Result<Result<Accepted, Rejection>, GuestFailure>,
        publication: Publication,
    ) -> Decided {
        Decided {
            decision,
            publication,
            answers: RecordedAnswers::default(),
        }
    }

    fn accepted(amount_minor: i64) -> Result<Result<Accepted, Rejection>, GuestFailure> {
        Ok(Ok(Accepted {
            transaction_id: ID.into(),
            amount_minor,
        }))
    }

    const ACKNOWLEDGED: Publication = Publication::Acknowledged { amount_minor: 100 };

    #[test]
    fn an_acknowledged_publish_is_accepted_whatever_the_guest_does_next() {
        let trapped = Err(GuestFailure::Trap("panic".into()));
        let refused = Ok(Err(Rejection::Unavailable("?".into())));
        for decision in [accepted(100), trapped, refused] {
            let (answer, violation) = verdict(&expected(), &decided(decision, ACKNOWLEDGED));
            assert_eq!(answer, Answer::Accepted);
            assert_eq!(violation, None);
        }
        // A wrong amount in `accepted` is still accepted (the log decides) but reported.
        let (answer, violation) = verdict(&expected(), &decided(accepted(5), ACKNOWLEDGED));
        assert_eq!(answer, Answer::Accepted);
        assert_eq!(violation.map(|v| v.check()), Some("accepted_amount"));
    }

    #[test]
    fn a_publish_in_doubt_is_unknown() {
        let in_doubt = Publication::InDoubt {
            reason: "timed out".into(),
        };
        let refused = Ok(Err(Rejection::Unavailable("timed out".into())));
        let (answer, _) = verdict(&expected(), &decided(refused, in_doubt));
        assert_eq!(answer, Answer::InDoubt("timed out".into()));
        let timeout = Err(GuestFailure::Timeout(10));
        let (answer, _) = verdict(&expected(), &decided(timeout, Publication::InFlight));
        assert!(matches!(answer, Answer::InDoubt(_)));
    }

    #[test]
    fn without_a_publish_the_guests_answer_counts_if_it_is_honest() {
        let rejected = Ok(Err(Rejection::InsufficientFunds));
        let (answer, _) = verdict(&expected(), &decided(rejected, Publication::None));
        assert_eq!(answer, Answer::Rejected(Rejection::InsufficientFunds));

        for publication in [
            Publication::None,
            Publication::Refused {
                reason: "no".into(),
            },
        ] {
            let (answer, violation) = verdict(&expected(), &decided(accepted(100), publication));
            assert!(matches!(
                answer,
                Answer::Failed(GuestFailure::Violation(Violation::AcceptedUnpublished))
            ));
            assert_eq!(violation, Some(Violation::AcceptedUnpublished));
        }

        let broke = Err(GuestFailure::Violation(Violation::NoHold));
        let (answer, violation) = verdict(&expected(), &decided(broke, Publication::None));
        assert!(matches!(
            answer,
            Answer::Failed(GuestFailure::Violation(Violation::NoHold))
        ));
        assert_eq!(violation, Some(Violation::NoHold));
    }
}
