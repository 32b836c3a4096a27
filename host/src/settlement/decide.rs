//! The settlement decision for a batch, in memory: which transfers complete, reserve, post,
//! void, expire or are rejected and why, and the accounts afterwards. Pure, so the rules are
//! tested without a database; the ledger SQL around it only loads, locks and writes.

use std::collections::{BTreeMap, HashMap};

use transferd_message::{Action, ActionMessage, BatchMessage, Phase, TransferMessage};
use uuid::Uuid;

use crate::stores::transfer_state::{Reason, TransferStatus};

/// An account: (user id, ISO 4217 currency).
pub type AccountKey = (i64, String);

/// An account's money as settlement moves it: the balance, and what pending transfers reserve
/// on it (as sender) and promise to it (as receiver). A user's spendable balance is
/// `balance_minor - pending_debits_minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub balance_minor: i64,
    pub pending_debits_minor: i64,
    pub pending_credits_minor: i64,
}

impl Position {
    pub fn spendable_minor(&self) -> i64 {
        self.balance_minor - self.pending_debits_minor
    }
}

/// What a log message asks settlement to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move the money now.
    Immediate,
    /// Reserve the money until it is posted, voided or expires.
    Pending { expires_at_ms: i64 },
    /// Resolve the pending transfer `transaction_id` with the action the API accepted.
    Resolve { action_id: Uuid, action: Action },
}

/// What settlement applies of a transfer-log message (read with the contract's parser,
/// `LogMessage::parse`), and what the ledger gives back of a settled transfer. For a
/// [`Step::Resolve`] the fields name the pending transfer it resolves, and `amount_minor` is
/// what the action moves (post) or releases (void, expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub transaction_id: Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub description: Option<String>,
    pub created_at_ms: i64,
    pub metadata: Option<BTreeMap<String, String>>,
    pub step: Step,
    /// The atomic batch it belongs to, if any: its transfers apply all or none.
    pub atomic_batch: Option<Uuid>,
    /// The accepting request's id and trace, from the message's headers (not its payload).
    pub trace: Option<crate::trace::TraceContext>,
}

impl Transfer {
    pub fn of(message: TransferMessage, trace: Option<crate::trace::TraceContext>) -> Transfer {
        let step = match (message.phase, message.expires_at_ms) {
            (Some(Phase::Pending), Some(expires_at_ms)) => Step::Pending { expires_at_ms },
            // The parser admits no pending transfer without an expiry.
            _ => Step::Immediate,
        };
        Transfer {
            transaction_id: message.transaction_id,
            sender_id: message.sender_id,
            receiver_id: message.receiver_id,
            amount_minor: message.amount_minor,
            currency: message.currency,
            description: message.description,
            created_at_ms: message.created_at_ms,
            metadata: message.metadata,
            step,
            atomic_batch: None,
            trace,
        }
    }

    /// The transfers of a batch message, in order; an atomic batch's bound together.
    pub fn of_batch(
        message: BatchMessage,
        trace: Option<crate::trace::TraceContext>,
    ) -> Vec<Transfer> {
        let atomic_batch = message.atomic.then_some(message.batch_id);
        message
            .transfers
            .into_iter()
            .map(|transfer| Transfer {
                atomic_batch,
                ..Transfer::of(transfer, trace.clone())
            })
            .collect()
    }

    pub fn of_action(
        message: ActionMessage,
        trace: Option<crate::trace::TraceContext>,
    ) -> Transfer {
        Transfer {
            transaction_id: message.pending_id,
            sender_id: message.sender_id,
            receiver_id: message.receiver_id,
            amount_minor: message.amount_minor,
            currency: message.currency,
            description: None,
            created_at_ms: message.created_at_ms,
            metadata: None,
            step: Step::Resolve {
                action_id: message.action_id,
                action: message.action,
            },
            atomic_batch: None,
            trace,
        }
    }

    /// What makes this message's step unique: the transfer's id, or the action's.
    pub fn step_id(&self) -> Uuid {
        match self.step {
            Step::Resolve { action_id, .. } => action_id,
            _ => self.transaction_id,
        }
    }

    pub fn sender(&self) -> AccountKey {
        (self.sender_id, self.currency.clone())
    }

    pub fn receiver(&self) -> AccountKey {
        (self.receiver_id, self.currency.clone())
    }
}

/// How the ledger settles a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Rejected(Reason),
    /// Reserved: a pending transfer in the ledger.
    Pending,
    Posted,
    Voided,
    Expired,
    /// An action that does not apply (its transfer is not pending, or the API recorded
    /// another action for it): it changes nothing and is no state change of any transfer.
    Refused,
}

impl Outcome {
    /// An outcome as the ledger stores it (`transfers.status`, `transfers.reason`); `None`
    /// for a pair this version never writes.
    pub fn from_stored(status: TransferStatus, reason: Option<Reason>) -> Option<Outcome> {
        match (status, reason) {
            (TransferStatus::Completed, None) => Some(Outcome::Completed),
            (TransferStatus::Rejected, Some(Reason::Unprocessable)) => None,
            (TransferStatus::Rejected, Some(reason)) => Some(Outcome::Rejected(reason)),
            (TransferStatus::Pending, None) => Some(Outcome::Pending),
            (TransferStatus::Posted, None) => Some(Outcome::Posted),
            (TransferStatus::Voided, None) => Some(Outcome::Voided),
            (TransferStatus::Expired, None) => Some(Outcome::Expired),
            _ => None,
        }
    }

    /// The transfer's status after this outcome; `None` for [`Outcome::Refused`], which
    /// changes no transfer.
    pub fn status(self) -> Option<TransferStatus> {
        Some(match self {
            Outcome::Completed => TransferStatus::Completed,
            Outcome::Rejected(_) => TransferStatus::Rejected,
            Outcome::Pending => TransferStatus::Pending,
            Outcome::Posted => TransferStatus::Posted,
            Outcome::Voided => TransferStatus::Voided,
            Outcome::Expired => TransferStatus::Expired,
            Outcome::Refused => return None,
        })
    }

    /// The outcome's name in logs and metrics: its status, or `refused`.
    pub fn name(self) -> &'static str {
        self.status().map_or("refused", TransferStatus::as_str)
    }

    pub fn reason(self) -> Option<Reason> {
        match self {
            Outcome::Rejected(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the outcome moves money between balances (and so writes journal entries).
    pub fn moves_money(self) -> bool {
        matches!(self, Outcome::Completed | Outcome::Posted)
    }
}

/// A pending transfer as settlement knows it: from the ledger, or reserved earlier in the
/// batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransfer {
    pub sender_id: i64,
    pub receiver_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    pub status: TransferStatus,
    /// The one action the API accepted for it, if any: (action id, action, amount).
    pub accepted: Option<(Uuid, Action, i64)>,
    /// The action that resolved it, once one did.
    pub resolved_by: Option<Uuid>,
}

/// Applies `steps` in order to `accounts` (every account the ledger has among those the steps
/// name; a missing key is a missing account) and to `pending` (the pending transfers the
/// resolutions name). Returns one outcome per step. A user's spendable balance never goes
/// below zero; the sum of all balances, and of pending debits against pending credits, never
/// changes except by what a post moves between them.
pub fn decide(
    accounts: &mut BTreeMap<AccountKey, Position>,
    pending: &mut HashMap<Uuid, PendingTransfer>,
    steps: &[&Transfer],
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(steps.len());
    let mut start = 0;
    while start < steps.len() {
        let group = steps[start].atomic_batch;
        let end = match group {
            None => start + 1,
            Some(batch) => {
                start
                    + steps[start..]
                        .iter()
                        .take_while(|step| step.atomic_batch == Some(batch))
                        .count()
            }
        };
        let run = &steps[start..end];
        match group {
            None => outcomes.extend(decide_each(accounts, pending, run)),
            Some(_) => outcomes.extend(decide_all_or_none(accounts, pending, run)),
        }
        start = end;
    }
    outcomes
}

/// An atomic batch's transfers: applied together when every one applies; otherwise none is,
/// the ones that failed keep their reason and the others are `batch_failed`.
fn decide_all_or_none(
    accounts: &mut BTreeMap<AccountKey, Position>,
    pending: &mut HashMap<Uuid, PendingTransfer>,
    steps: &[&Transfer],
) -> Vec<Outcome> {
    let (accounts_before, pending_before) = (accounts.clone(), pending.clone());
    let outcomes = decide_each(accounts, pending, steps);
    if outcomes
        .iter()
        .all(|outcome| matches!(outcome, Outcome::Completed | Outcome::Pending))
    {
        return outcomes;
    }
    *accounts = accounts_before;
    *pending = pending_before;
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Rejected(reason) => Outcome::Rejected(reason),
            _ => Outcome::Rejected(Reason::BatchFailed),
        })
        .collect()
}

fn decide_each(
    accounts: &mut BTreeMap<AccountKey, Position>,
    pending: &mut HashMap<Uuid, PendingTransfer>,
    steps: &[&Transfer],
) -> Vec<Outcome> {
    steps
        .iter()
        .map(|step| match step.step {
            Step::Immediate => transfer_one(accounts, step, false),
            Step::Pending { .. } => {
                let outcome = transfer_one(accounts, step, true);
                if outcome == Outcome::Pending {
                    pending.insert(step.transaction_id, reserved(step));
                }
                outcome
            }
            Step::Resolve { action_id, action } => {
                resolve_one(accounts, pending, step, action_id, action)
            }
        })
        .collect()
}

fn reserved(transfer: &Transfer) -> PendingTransfer {
    PendingTransfer {
        sender_id: transfer.sender_id,
        receiver_id: transfer.receiver_id,
        currency: transfer.currency.clone(),
        amount_minor: transfer.amount_minor,
        status: TransferStatus::Pending,
        accepted: None,
        resolved_by: None,
    }
}

/// Moves (or, `reserve`, reserves) a transfer's amount when the sender can spend it.
fn transfer_one(
    accounts: &mut BTreeMap<AccountKey, Position>,
    transfer: &Transfer,
    reserve: bool,
) -> Outcome {
    if transfer.sender_id <= 0
        || transfer.receiver_id <= 0
        || transfer.sender_id == transfer.receiver_id
        || transfer.amount_minor <= 0
    {
        return Outcome::Rejected(Reason::InvalidMessage);
    }
    let Some(&receiver) = accounts.get(&transfer.receiver()) else {
        return Outcome::Rejected(Reason::ReceiverNotFound);
    };
    let sender = accounts
        .get(&transfer.sender())
        .copied()
        .unwrap_or_default();
    if sender.spendable_minor() < transfer.amount_minor {
        return Outcome::Rejected(Reason::InsufficientFunds);
    }
    let amount = transfer.amount_minor;
    let (new_sender, new_receiver, outcome) = if reserve {
        let Some(credits) = receiver.pending_credits_minor.checked_add(amount) else {
            return Outcome::Rejected(Reason::BalanceOverflow);
        };
        let sender = Position {
            pending_debits_minor: sender.pending_debits_minor + amount,
            ..sender
        };
        let receiver = Position {
            pending_credits_minor: credits,
            ..receiver
        };
        (sender, receiver, Outcome::Pending)
    } else {
        let Some(balance) = receiver.balance_minor.checked_add(amount) else {
            return Outcome::Rejected(Reason::BalanceOverflow);
        };
        let sender = Position {
            balance_minor: sender.balance_minor - amount,
            ..sender
        };
        let receiver = Position {
            balance_minor: balance,
            ..receiver
        };
        (sender, receiver, Outcome::Completed)
    };
    assert!(
        new_sender.spendable_minor() >= 0,
        "a user never spends more than is spendable"
    );
    accounts.insert(transfer.sender(), new_sender);
    accounts.insert(transfer.receiver(), new_receiver);
    outcome
}

/// Applies the action the API accepted for a pending transfer; any other action, or one for
/// a transfer that is not pending, is refused and changes nothing.
fn resolve_one(
    accounts: &mut BTreeMap<AccountKey, Position>,
    pending: &mut HashMap<Uuid, PendingTransfer>,
    step: &Transfer,
    action_id: Uuid,
    action: Action,
) -> Outcome {
    let Some(held) = pending.get_mut(&step.transaction_id) else {
        return Outcome::Refused;
    };
    let applies = held.status == TransferStatus::Pending
        && held.accepted == Some((action_id, action, step.amount_minor))
        && (held.sender_id, held.receiver_id, held.currency.as_str())
            == (step.sender_id, step.receiver_id, step.currency.as_str())
        && (1..=held.amount_minor).contains(&step.amount_minor)
        && (action == Action::Post || step.amount_minor == held.amount_minor);
    let (Some(sender), Some(receiver)) = (
        accounts.get(&step.sender()).copied(),
        accounts.get(&step.receiver()).copied(),
    ) else {
        return Outcome::Refused;
    };
    if !applies {
        return Outcome::Refused;
    }
    let posted = if action == Action::Post {
        step.amount_minor
    } else {
        0
    };
    let Some(receiver_balance) = receiver.balance_minor.checked_add(posted) else {
        return Outcome::Refused;
    };
    let reserved = held.amount_minor;
    let new_sender = Position {
        balance_minor: sender.balance_minor - posted,
        pending_debits_minor: sender.pending_debits_minor - reserved,
        ..sender
    };
    let new_receiver = Position {
        balance_minor: receiver_balance,
        pending_credits_minor: receiver.pending_credits_minor - reserved,
        ..receiver
    };
    assert!(
        new_sender.pending_debits_minor >= 0 && new_receiver.pending_credits_minor >= 0,
        "a resolution releases only what its transfer reserved"
    );
    assert!(
        new_sender.spendable_minor() >= 0,
        "a post moves no more than was reserved"
    );
    accounts.insert(step.sender(), new_sender);
    accounts.insert(step.receiver(), new_receiver);
    let (status, outcome) = match action {
        Action::Post => (TransferStatus::Posted, Outcome::Posted),
        Action::Void => (TransferStatus::Voided, Outcome::Voided),
        Action::Expire => (TransferStatus::Expired, Outcome::Expired),
    };
    held.status = status;
    held.resolved_by = Some(action_id);
    outcome
}

#[cfg(test)]
pub(in crate::settlement) mod tests {
    #[test]
    fn outcomes_read_back_as_the_ledger_stores_them() {
        let all = [
            Outcome::Completed,
            Outcome::Pending,
            Outcome::Posted,
            Outcome::Voided,
            Outcome::Expired,
            Outcome::Rejected(Reason::InsufficientFunds),
            Outcome::Rejected(Reason::ReceiverNotFound),
            Outcome::Rejected(Reason::InvalidMessage),
            Outcome::Rejected(Reason::BalanceOverflow),
        ];
        for outcome in all {
            let status = outcome.status().expect("a stored outcome has a status");
            assert_eq!(
                Outcome::from_stored(status, outcome.reason()),
                Some(outcome)
            );
        }
        let (completed, rejected) = (TransferStatus::Completed, TransferStatus::Rejected);
        let never_written = [
            (completed, Some(Reason::InsufficientFunds)),
            (rejected, None),
            (rejected, Some(Reason::Unprocessable)),
            (TransferStatus::Pending, Some(Reason::InsufficientFunds)),
            (TransferStatus::Posted, Some(Reason::InvalidMessage)),
        ];
        for (status, reason) in never_written {
            assert_eq!(Outcome::from_stored(status, reason), None);
        }
    }

    use super::*;
    use proptest::prelude::*;

    /// A transfer in USD, as the settlement tests make them.
    pub(in crate::settlement) fn message(
        sender_id: i64,
        receiver_id: i64,
        amount_minor: i64,
    ) -> Transfer {
        Transfer {
            transaction_id: uuid::Uuid::now_v7(),
            sender_id,
            receiver_id,
            amount_minor,
            currency: "USD".into(),
            description: None,
            created_at_ms: 0,
            metadata: None,
            step: Step::Immediate,
            atomic_batch: None,
            trace: None,
        }
    }

    fn position(balance_minor: i64) -> Position {
        Position {
            balance_minor,
            ..Position::default()
        }
    }

    fn accounts(entries: &[(i64, i64)]) -> BTreeMap<AccountKey, Position> {
        entries
            .iter()
            .map(|(user, balance)| ((*user, "USD".to_string()), position(*balance)))
            .collect()
    }

    fn decide(balances: &mut BTreeMap<AccountKey, Position>, steps: &[&Transfer]) -> Vec<Outcome> {
        super::decide(balances, &mut HashMap::new(), steps)
    }

    #[test]
    fn transfers_apply_in_order_against_the_running_balance() {
        let mut balances = accounts(&[(1, 100), (2, 0)]);
        let (a, b, c) = (message(1, 2, 60), message(1, 2, 60), message(1, 2, 40));
        let outcomes = decide(&mut balances, &[&a, &b, &c]);
        assert_eq!(
            outcomes,
            vec![
                Outcome::Completed,
                Outcome::Rejected(Reason::InsufficientFunds),
                Outcome::Completed
            ]
        );
        assert_eq!(balances, accounts(&[(1, 0), (2, 100)]));
    }

    #[test]
    fn missing_accounts_and_broken_messages_are_rejected() {
        let mut balances = accounts(&[(1, 100), (2, 0)]);
        let cases = [
            (message(1, 3, 10), Reason::ReceiverNotFound),
            (message(4, 2, 10), Reason::InsufficientFunds),
            (message(1, 1, 10), Reason::InvalidMessage),
            (message(1, 2, 0), Reason::InvalidMessage),
            (message(1, 2, -5), Reason::InvalidMessage),
            (message(0, 2, 5), Reason::InvalidMessage),
        ];
        for (transfer, reason) in cases {
            assert_eq!(
                decide(&mut balances, &[&transfer]),
                vec![Outcome::Rejected(reason)],
                "{transfer:?}"
            );
        }
        assert_eq!(
            balances,
            accounts(&[(1, 100), (2, 0)]),
            "rejections change nothing"
        );
    }

    #[test]
    fn a_receiver_at_the_limit_is_not_overflowed() {
        let mut balances = accounts(&[(1, 100), (2, i64::MAX - 5)]);
        let transfer = message(1, 2, 10);
        assert_eq!(
            decide(&mut balances, &[&transfer]),
            vec![Outcome::Rejected(Reason::BalanceOverflow)]
        );
    }

    #[test]
    fn a_transfer_is_what_the_contracts_parser_read() {
        let payload = br#"{"transaction_id":"01a20c11-98f8-747a-b2db-67d75110cae1","sender_id":1,"receiver_id":2,
            "amount":10.50,"amount_minor":1050,"currency":"USD","description":null,"created_at":"x","created_at_ms":5,
            "guest_version":"v","schema_version":1}"#;
        let parsed = Transfer::of(TransferMessage::parse(payload).expect("parses"), None);
        assert_eq!(
            (parsed.sender_id, parsed.receiver_id, parsed.amount_minor),
            (1, 2, 1050)
        );
        assert_eq!(parsed.created_at_ms, 5);
    }

    proptest! {
        #[test]
        fn money_is_conserved_and_never_overdrawn(
            opening in prop::collection::vec(0i64..1_000, 2..6),
            moves in prop::collection::vec((0usize..6, 0usize..6, -10i64..400), 0..60),
        ) {
            let mut balances: BTreeMap<AccountKey, Position> = opening
                .iter()
                .enumerate()
                .map(|(index, balance)| ((index as i64 + 1, "USD".to_string()), position(*balance)))
                .collect();
            let total_before: i64 = balances.values().map(|p| p.balance_minor).sum();
            let messages: Vec<Transfer> = moves
                .iter()
                .map(|(from, to, amount)| message(*from as i64 + 1, *to as i64 + 1, *amount))
                .collect();
            let references: Vec<&Transfer> = messages.iter().collect();
            let before = balances.clone();
            let outcomes = decide(&mut balances, &references);
            prop_assert_eq!(outcomes.len(), messages.len());
            prop_assert_eq!(balances.values().map(|p| p.balance_minor).sum::<i64>(), total_before);
            prop_assert!(balances.values().all(|p| p.balance_minor >= 0));
            // Replaying only the completed ones from the start gives the same balances.
            let mut replay = before;
            for (transfer, outcome) in messages.iter().zip(&outcomes) {
                if *outcome == Outcome::Completed {
                    replay.get_mut(&transfer.sender()).expect("sender exists").balance_minor -= transfer.amount_minor;
                    replay.get_mut(&transfer.receiver()).expect("receiver exists").balance_minor += transfer.amount_minor;
                }
            }
            prop_assert_eq!(replay, balances);
        }
    }
}

#[cfg(test)]
mod two_phase {
    use super::tests::message;
    use super::*;
    use proptest::prelude::*;

    fn pending_step(sender: i64, receiver: i64, amount_minor: i64) -> Transfer {
        Transfer {
            step: Step::Pending {
                expires_at_ms: 1_000,
            },
            ..message(sender, receiver, amount_minor)
        }
    }

    fn action(of: &Transfer, action: Action, amount_minor: i64) -> Transfer {
        Transfer {
            amount_minor,
            step: Step::Resolve {
                action_id: Uuid::from_u128(of.transaction_id.as_u128() ^ 1),
                action,
            },
            ..of.clone()
        }
    }

    /// The API's acceptance of `step`'s action, as `transfer_actions` records it.
    fn accept(pending: &mut HashMap<Uuid, PendingTransfer>, step: &Transfer) {
        let Step::Resolve { action_id, action } = step.step else {
            panic!("not an action")
        };
        let held = pending.get_mut(&step.transaction_id).expect("reserved");
        held.accepted = Some((action_id, action, step.amount_minor));
    }

    fn book(entries: &[(i64, i64)]) -> BTreeMap<AccountKey, Position> {
        entries
            .iter()
            .map(|(user, balance)| {
                let position = Position {
                    balance_minor: *balance,
                    ..Position::default()
                };
                ((*user, "USD".to_string()), position)
            })
            .collect()
    }

    #[test]
    fn a_pending_transfer_reserves_and_a_partial_post_moves_only_what_it_posts() {
        let mut accounts = book(&[(1, 100), (2, 0)]);
        let mut pending = HashMap::new();
        let reserve = pending_step(1, 2, 70);
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&reserve]),
            [Outcome::Pending]
        );
        assert_eq!(accounts[&(1, "USD".into())].spendable_minor(), 30);
        assert_eq!(accounts[&(2, "USD".into())].pending_credits_minor, 70);
        // The reservation counts against whatever comes next.
        let spend = message(1, 2, 31);
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&spend]),
            [Outcome::Rejected(Reason::InsufficientFunds)]
        );
        let post = action(&reserve, Action::Post, 50);
        accept(&mut pending, &post);
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&post]),
            [Outcome::Posted]
        );
        assert_eq!(accounts, book(&[(1, 50), (2, 50)]));
        // Posted once: the same action again, or any other, is refused and changes nothing.
        let void = action(&reserve, Action::Void, 70);
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&post, &void]),
            [Outcome::Refused, Outcome::Refused]
        );
        assert_eq!(accounts, book(&[(1, 50), (2, 50)]));
    }

    #[test]
    fn only_the_accepted_action_applies() {
        let mut accounts = book(&[(1, 100), (2, 0)]);
        let mut pending = HashMap::new();
        let reserve = pending_step(1, 2, 60);
        decide(&mut accounts, &mut pending, &[&reserve]);
        let void = action(&reserve, Action::Void, 60);
        // Not accepted by the API (a foreign message on the log): refused.
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&void]),
            [Outcome::Refused]
        );
        accept(&mut pending, &void);
        let post_instead = action(&reserve, Action::Post, 60);
        let wrong_amount = action(&reserve, Action::Void, 59);
        assert_eq!(
            decide(
                &mut accounts,
                &mut pending,
                &[&post_instead, &wrong_amount, &void]
            ),
            [Outcome::Refused, Outcome::Refused, Outcome::Voided]
        );
        assert_eq!(accounts, book(&[(1, 100), (2, 0)]));
    }

    proptest! {
        /// Whatever mix of immediate and pending transfers and actions, balances sum to what
        /// they summed to, pending debits equal pending credits equal the open reservations,
        /// and nobody's spendable balance goes below zero.
        #[test]
        fn money_and_reservations_are_conserved(
            opening in prop::collection::vec(0i64..1_000, 3),
            moves in prop::collection::vec((1i64..=3, 1i64..=3, 1i64..400, 0u8..4, 0usize..40, 1i64..400), 0..50),
        ) {
            let mut accounts = book(&opening.iter().enumerate().map(|(i, b)| (i as i64 + 1, *b)).collect::<Vec<_>>());
            let total: i64 = opening.iter().sum();
            let mut pending = HashMap::new();
            let mut reserved: Vec<Transfer> = Vec::new();
            for (sender, receiver, amount, kind, target, part) in moves {
                let step = match kind {
                    0 => message(sender, receiver, amount),
                    1 => pending_step(sender, receiver, amount),
                    _ if reserved.is_empty() => continue,
                    _ => {
                        let of = &reserved[target % reserved.len()];
                        let (verb, amount) = if kind == 2 { (Action::Post, part.min(of.amount_minor)) } else { (Action::Void, of.amount_minor) };
                        let step = action(of, verb, amount);
                        if pending.get(&of.transaction_id).is_some_and(|p: &PendingTransfer| p.accepted.is_none()) {
                            accept(&mut pending, &step);
                        }
                        step
                    }
                };
                let outcome = decide(&mut accounts, &mut pending, &[&step]);
                if outcome == [Outcome::Pending] {
                    reserved.push(step);
                }
            }
            let open: i64 = pending.values().filter(|p| p.status == TransferStatus::Pending).map(|p| p.amount_minor).sum();
            prop_assert_eq!(accounts.values().map(|p| p.balance_minor).sum::<i64>(), total);
            prop_assert_eq!(accounts.values().map(|p| p.pending_debits_minor).sum::<i64>(), open);
            prop_assert_eq!(accounts.values().map(|p| p.pending_credits_minor).sum::<i64>(), open);
            prop_assert!(accounts.values().all(|p| p.spendable_minor() >= 0));
        }
    }
}

#[cfg(test)]
mod atomic_batches {
    use super::tests::message;
    use super::*;

    fn in_batch(batch: u128, transfer: Transfer) -> Transfer {
        Transfer {
            atomic_batch: Some(Uuid::from_u128(batch)),
            ..transfer
        }
    }

    fn book() -> BTreeMap<AccountKey, Position> {
        [(1, 100), (2, 0), (3, 0)]
            .into_iter()
            .map(|(user, balance_minor)| {
                let position = Position {
                    balance_minor,
                    ..Position::default()
                };
                ((user, "USD".to_string()), position)
            })
            .collect()
    }

    #[test]
    fn an_atomic_batch_applies_all_or_none_and_names_the_transfer_that_failed() {
        let mut accounts = book();
        let mut pending = HashMap::new();
        let (a, b, c) = (
            in_batch(1, message(1, 2, 60)),
            in_batch(1, message(1, 3, 60)),
            in_batch(1, message(2, 3, 10)),
        );
        let alone = message(1, 3, 30);
        let outcomes = decide(&mut accounts, &mut pending, &[&a, &b, &c, &alone]);
        assert_eq!(
            outcomes,
            [
                Outcome::Rejected(Reason::BatchFailed),
                Outcome::Rejected(Reason::InsufficientFunds),
                Outcome::Rejected(Reason::BatchFailed),
                Outcome::Completed,
            ]
        );
        assert_eq!(
            accounts[&(1, "USD".into())].balance_minor,
            70,
            "only the lone transfer moved"
        );
        assert_eq!(accounts[&(2, "USD".into())].balance_minor, 0);
        let (d, e) = (
            in_batch(2, message(1, 2, 40)),
            in_batch(2, message(2, 3, 40)),
        );
        assert_eq!(
            decide(&mut accounts, &mut pending, &[&d, &e]),
            [Outcome::Completed, Outcome::Completed],
            "a chain: the second spends what the first brought"
        );
        assert_eq!(accounts[&(3, "USD".into())].balance_minor, 70);
    }
}
