//! The settlement decision for a batch, in memory: which transfers complete, which are
//! rejected and why, and the balances afterwards. Pure, so the rules are tested without a
//! database; the ledger SQL around it only loads, locks and writes.

use std::collections::BTreeMap;

use transferd_message::TransferMessage;

use crate::stores::transfer_state::{Reason, TransferStatus};

/// An account: (user id, ISO 4217 currency).
pub type AccountKey = (i64, String);

/// What settlement applies of a transfer-log message (read with the contract's parser,
/// `TransferMessage::parse`), and what the ledger gives back of a settled transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub transaction_id: uuid::Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub description: Option<String>,
    pub created_at_ms: i64,
    /// The accepting request's id and trace, from the message's headers (not its payload).
    pub trace: Option<crate::trace::TraceContext>,
}

impl Transfer {
    pub fn of(message: TransferMessage, trace: Option<crate::trace::TraceContext>) -> Transfer {
        Transfer {
            transaction_id: message.transaction_id,
            sender_id: message.sender_id,
            receiver_id: message.receiver_id,
            amount_minor: message.amount_minor,
            currency: message.currency,
            description: message.description,
            created_at_ms: message.created_at_ms,
            trace,
        }
    }

    pub fn sender(&self) -> AccountKey {
        (self.sender_id, self.currency.clone())
    }

    pub fn receiver(&self) -> AccountKey {
        (self.receiver_id, self.currency.clone())
    }
}

/// How the ledger settles a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Rejected(Reason),
}

impl Outcome {
    /// An outcome as the ledger stores it (`transfers.status`, `transfers.reason`); `None`
    /// for a pair this version never writes.
    pub fn from_stored(status: TransferStatus, reason: Option<Reason>) -> Option<Outcome> {
        match (status, reason) {
            (TransferStatus::Completed, None) => Some(Outcome::Completed),
            (TransferStatus::Rejected, Some(Reason::Unprocessable)) => None,
            (TransferStatus::Rejected, Some(reason)) => Some(Outcome::Rejected(reason)),
            _ => None,
        }
    }

    pub fn status(self) -> TransferStatus {
        match self {
            Outcome::Completed => TransferStatus::Completed,
            Outcome::Rejected(_) => TransferStatus::Rejected,
        }
    }

    pub fn reason(self) -> Option<Reason> {
        match self {
            Outcome::Completed => None,
            Outcome::Rejected(reason) => Some(reason),
        }
    }
}

/// Applies `transfers` in order to `balances` (every account the ledger has among those the
/// transfers name; a missing key is a missing account). Returns one outcome per transfer.
/// A user's balance never goes below zero; the sum of all balances never changes.
pub fn decide(balances: &mut BTreeMap<AccountKey, i64>, transfers: &[&Transfer]) -> Vec<Outcome> {
    transfers
        .iter()
        .map(|transfer| apply_one(balances, transfer))
        .collect()
}

fn apply_one(balances: &mut BTreeMap<AccountKey, i64>, transfer: &Transfer) -> Outcome {
    if transfer.sender_id <= 0
        || transfer.receiver_id <= 0
        || transfer.sender_id == transfer.receiver_id
        || transfer.amount_minor <= 0
    {
        return Outcome::Rejected(Reason::InvalidMessage);
    }
    let Some(&receiver_balance) = balances.get(&transfer.receiver()) else {
        return Outcome::Rejected(Reason::ReceiverNotFound);
    };
    let sender_balance = balances.get(&transfer.sender()).copied().unwrap_or(0);
    if sender_balance < transfer.amount_minor {
        return Outcome::Rejected(Reason::InsufficientFunds);
    }
    let Some(new_receiver_balance) = receiver_balance.checked_add(transfer.amount_minor) else {
        return Outcome::Rejected(Reason::BalanceOverflow);
    };
    let new_sender_balance = sender_balance - transfer.amount_minor;
    assert!(
        new_sender_balance >= 0,
        "a user balance never goes negative"
    );
    balances.insert(transfer.sender(), new_sender_balance);
    balances.insert(transfer.receiver(), new_receiver_balance);
    Outcome::Completed
}

#[cfg(test)]
pub(in crate::settlement) mod tests {
    #[test]
    fn outcomes_read_back_as_the_ledger_stores_them() {
        let all = [
            Outcome::Completed,
            Outcome::Rejected(Reason::InsufficientFunds),
            Outcome::Rejected(Reason::ReceiverNotFound),
            Outcome::Rejected(Reason::InvalidMessage),
            Outcome::Rejected(Reason::BalanceOverflow),
        ];
        for outcome in all {
            assert_eq!(
                Outcome::from_stored(outcome.status(), outcome.reason()),
                Some(outcome)
            );
        }
        let (completed, rejected) = (TransferStatus::Completed, TransferStatus::Rejected);
        let never_written = [
            (completed, Some(Reason::InsufficientFunds)),
            (rejected, None),
            (rejected, Some(Reason::Unprocessable)),
            (TransferStatus::Pending, None),
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
            trace: None,
        }
    }

    fn accounts(entries: &[(i64, i64)]) -> BTreeMap<AccountKey, i64> {
        entries
            .iter()
            .map(|(user, balance)| ((*user, "USD".to_string()), *balance))
            .collect()
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
            let mut balances: BTreeMap<AccountKey, i64> = opening
                .iter()
                .enumerate()
                .map(|(index, balance)| ((index as i64 + 1, "USD".to_string()), *balance))
                .collect();
            let total_before: i64 = balances.values().sum();
            let messages: Vec<Transfer> = moves
                .iter()
                .map(|(from, to, amount)| message(*from as i64 + 1, *to as i64 + 1, *amount))
                .collect();
            let references: Vec<&Transfer> = messages.iter().collect();
            let before = balances.clone();
            let outcomes = decide(&mut balances, &references);
            prop_assert_eq!(outcomes.len(), messages.len());
            prop_assert_eq!(balances.values().sum::<i64>(), total_before);
            prop_assert!(balances.values().all(|balance| *balance >= 0));
            // Replaying only the completed ones from the start gives the same balances.
            let mut replay = before;
            for (transfer, outcome) in messages.iter().zip(&outcomes) {
                if *outcome == Outcome::Completed {
                    *replay.get_mut(&transfer.sender()).expect("sender exists") -= transfer.amount_minor;
                    *replay.get_mut(&transfer.receiver()).expect("receiver exists") += transfer.amount_minor;
                }
            }
            prop_assert_eq!(replay, balances);
        }
    }
}
