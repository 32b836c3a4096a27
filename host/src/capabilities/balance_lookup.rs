//! `balance-lookup.available`: Redis first (settled balance minus holds), PostgreSQL when the
//! balance is not cached or Redis is down.
//!
//! A transfer's rules ask for both of its parties, one call after the other. The first call
//! of a decision reads the other party's cached balance in the same Redis round trip and keeps
//! it for the call that asks for it (`Prefetched`): one round trip fewer per transfer, and the
//! answer the guest gets is what Redis said a moment earlier, as advisory as any lookup (the
//! hold re-checks atomically, settlement re-checks in the ledger).
//!
//! A guest learns only what its request needs ([`party`]): the sender's available balance and
//! whether the receiver has an account, in the request's currency, and nothing when the
//! caller is not the sender. Whatever it learns it can write into a message the parties read,
//! so asking about anything else is a guest fault, refused before any store is asked: the call
//! traps and is counted like a broken publish check.

use std::sync::Arc;

use uuid::Uuid;

use crate::bindings::transferd::transfer::balance_lookup;
use crate::capabilities::RequestState;
use crate::capabilities::backend::Backend;
use crate::capabilities::guard::{self, Expected, Violation};
use crate::capabilities::hold_ahead::HoldAhead;

impl balance_lookup::Host for RequestState {
    async fn available(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<Option<i64>, String>> {
        let party = party(&self.expected, account_id, &currency)
            .map_err(|broken| guard::trap(&mut self.violation, broken))?;
        if let Some(book) = &self.batch {
            let answer = party.reveal(book.available(account_id, &currency));
            self.answers.lookup(account_id, currency, answer.clone());
            return Ok(answer);
        }
        let answer = match self.prefetched.take(account_id, &currency) {
            Some(available) => {
                counted("cache");
                Ok(Some(available))
            }
            None => {
                let also = Prefetched::partner(
                    &self.expected,
                    account_id,
                    &currency,
                    self.answers.lookups.is_empty(),
                );
                let stores = Arc::clone(&self.stores);
                let transaction_id = self.expected.transaction_id;
                // Perhaps held from here: a call dropped while Redis runs the script (a
                // timeout) gives back what it may hold.
                let ahead = self.ahead.take_plan();
                let looked_up = lookup(
                    &*stores,
                    transaction_id,
                    account_id,
                    &currency,
                    also,
                    ahead.as_ref(),
                )
                .await;
                self.ahead.settle(looked_up.held);
                if let (Some(partner), Some(available)) = (also, looked_up.partner) {
                    self.prefetched = Prefetched::of(partner, &currency, available);
                }
                looked_up.answer
            }
        };
        let answer = party.reveal(answer);
        self.answers.lookup(account_id, currency, answer.clone());
        Ok(answer)
    }
}

/// Which of the request's parties a lookup is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The sender (the caller, when there is one): its available balance.
    Sender,
    /// The receiver: whether it has an account, never how much is in it.
    Receiver,
}

impl Party {
    /// What the guest is told: the receiver's balance, when it has one, reads as 0.
    pub fn reveal(self, answer: Result<Option<i64>, String>) -> Result<Option<i64>, String> {
        match self {
            Party::Sender => answer,
            Party::Receiver => answer.map(|found| found.map(|_| 0)),
        }
    }
}

/// The party `account_id` is in the request, when a guest may ask about it in `currency`: the
/// request's sender or receiver in the request's currency, and only when the caller (if any)
/// is the sender, since the guest must refuse anyone else before it reads a balance.
pub fn party(expected: &Expected, account_id: i64, currency: &str) -> Result<Party, Violation> {
    let caller_sends = expected
        .principal
        .is_none_or(|principal| principal == expected.sender_id);
    match account_id {
        _ if !caller_sends || currency != expected.currency => Err(outside(account_id, currency)),
        id if id == expected.sender_id => Ok(Party::Sender),
        id if id == expected.receiver_id => Ok(Party::Receiver),
        _ => Err(outside(account_id, currency)),
    }
}

fn outside(account_id: i64, currency: &str) -> Violation {
    Violation::Lookup {
        account_id,
        // The guest's text, as much of it as names a currency.
        currency: currency.chars().take(16).collect(),
    }
}

/// A cached balance read ahead of its call, good for one call of the same decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefetched(Option<(i64, String, i64)>);

impl Prefetched {
    fn of(account_id: i64, currency: &str, available: i64) -> Prefetched {
        Prefetched(Some((account_id, currency.to_string(), available)))
    }

    /// The account worth reading beside `account_id`: the request's other party, when this is
    /// the decision's first lookup and it asks for one party in the request's currency.
    pub fn partner(
        expected: &Expected,
        account_id: i64,
        currency: &str,
        first_lookup: bool,
    ) -> Option<i64> {
        if !first_lookup || currency != expected.currency {
            return None;
        }
        let (sender, receiver) = (expected.sender_id, expected.receiver_id);
        match account_id {
            _ if sender == receiver => None,
            id if id == receiver => Some(sender),
            id if id == sender => Some(receiver),
            _ => None,
        }
    }

    /// The kept answer when it is for this account and currency; it is used once.
    pub fn take(&mut self, account_id: i64, currency: &str) -> Option<i64> {
        match &self.0 {
            Some((id, kept_currency, available))
                if *id == account_id && kept_currency == currency =>
            {
                let available = *available;
                self.0 = None;
                Some(available)
            }
            _ => None,
        }
    }
}

/// What one lookup found: the answer for the account asked for, the partner's cached
/// available balance when one was asked beside it and Redis had it, and whether the hold
/// ahead it carried is in place (`None`: unknown, the call to Redis failed; `Some(false)`
/// when it carried none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookedUp {
    pub answer: Result<Option<i64>, String>,
    pub partner: Option<i64>,
    pub held: Option<bool>,
}

/// The available balance as `transaction_id` sees it (its own hold, when a retry holds it
/// already, does not count): Redis's answer when cached; otherwise the ledger's, cached on
/// the way (with this account's holds taken off once it is); the ledger's alone while Redis
/// is down. An error only when neither can answer. `also` is read from Redis in the same
/// round trip, and only from Redis.
pub async fn lookup<B: Backend>(
    backend: &B,
    transaction_id: Uuid,
    account_id: i64,
    currency: &str,
    also: Option<i64>,
    ahead: Option<&HoldAhead>,
) -> LookedUp {
    let accounts: Vec<i64> = std::iter::once(account_id).chain(also).collect();
    let request = ahead.and_then(|ahead| ahead.request(&accounts, currency));
    let read = match request {
        Some(request) => {
            backend
                .cached_available_holding(&accounts, currency, transaction_id, request)
                .await
        }
        None => backend
            .cached_available(&accounts, currency, transaction_id)
            .await
            .map(|found| (found, false)),
    };
    let (found, held) = match read {
        Ok((found, held)) => (found, Some(held)),
        Err(error) => {
            counted("ledger_fallback");
            tracing::warn!(%error, account_id, currency, "balance cache unavailable; reading the ledger");
            let answer = backend
                .settled_balance(account_id, currency)
                .await
                .map(|balance| balance.map(|balance| balance.balance_minor))
                .map_err(|error| error.to_string());
            return LookedUp {
                answer,
                partner: None,
                held: if request.is_some() { None } else { Some(false) },
            };
        }
    };
    let partner = also.and_then(|_| found.get(1).copied().flatten());
    let answer = match found.first().copied().flatten() {
        Some(available) => {
            counted("cache");
            Ok(Some(available))
        }
        None => {
            counted("ledger_miss");
            from_ledger(backend, transaction_id, account_id, currency).await
        }
    };
    LookedUp {
        answer,
        partner,
        held,
    }
}

/// A balance Redis did not have: read from the ledger and cached, then read back from Redis
/// so that the account's holds count.
async fn from_ledger<B: Backend>(
    backend: &B,
    transaction_id: Uuid,
    account_id: i64,
    currency: &str,
) -> Result<Option<i64>, String> {
    let balance = match backend.settled_balance(account_id, currency).await {
        Ok(Some(balance)) => balance,
        Ok(None) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    if let Err(error) = backend.cache_balance(account_id, currency, balance).await {
        tracing::warn!(%error, account_id, currency, "could not fill the balance cache");
        return Ok(Some(balance.balance_minor));
    }
    match backend
        .cached_available(&[account_id], currency, transaction_id)
        .await
    {
        Ok(found) => Ok(Some(
            found
                .first()
                .copied()
                .flatten()
                .unwrap_or(balance.balance_minor),
        )),
        Err(_) => Ok(Some(balance.balance_minor)),
    }
}

/// Counts a lookup by who answered it.
fn counted(source: &'static str) {
    metrics::counter!(crate::metrics::BALANCE_LOOKUPS, "source" => source).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(sender_id: i64, receiver_id: i64) -> Expected {
        Expected {
            transaction_id: Uuid::nil(),
            sender_id,
            receiver_id,
            currency: "USD".into(),
            amount_minor: Some(1050),
            principal: Some(sender_id),
            description: None,
            guest_version: "sha256:test".into(),
            received_at_ms: 0,
            metadata: None,
            pending: false,
            expires_in_s: None,
        }
    }

    #[test]
    fn the_first_lookup_of_a_party_reads_the_other_party_beside_it() {
        let transfer = expected(1, 2);
        assert_eq!(Prefetched::partner(&transfer, 2, "USD", true), Some(1));
        assert_eq!(Prefetched::partner(&transfer, 1, "USD", true), Some(2));
        // Not on later lookups, not for another currency or an account outside the request.
        assert_eq!(Prefetched::partner(&transfer, 2, "USD", false), None);
        assert_eq!(Prefetched::partner(&transfer, 2, "EUR", true), None);
        assert_eq!(Prefetched::partner(&transfer, 3, "USD", true), None);
        assert_eq!(Prefetched::partner(&expected(1, 1), 1, "USD", true), None);
    }

    #[test]
    fn a_guest_may_ask_only_about_the_requests_parties() {
        let transfer = expected(1, 2);
        assert_eq!(party(&transfer, 1, "USD"), Ok(Party::Sender));
        assert_eq!(party(&transfer, 2, "USD"), Ok(Party::Receiver));
        // Another account, another currency, or anything while the caller is not the sender.
        let refused = |expected: &Expected, account_id, currency: &str| {
            party(expected, account_id, currency).map_err(|broken| broken.check())
        };
        assert_eq!(refused(&transfer, 3, "USD"), Err("balance_lookup"));
        assert_eq!(refused(&transfer, 1, "EUR"), Err("balance_lookup"));
        assert_eq!(refused(&transfer, 2, "EUR"), Err("balance_lookup"));
        let by_receiver = Expected {
            principal: Some(2),
            ..expected(1, 2)
        };
        assert_eq!(refused(&by_receiver, 1, "USD"), Err("balance_lookup"));
        assert_eq!(refused(&by_receiver, 2, "USD"), Err("balance_lookup"));
        let anonymous = Expected {
            principal: None,
            ..expected(1, 2)
        };
        assert_eq!(party(&anonymous, 1, "USD"), Ok(Party::Sender));
        // One account on both sides is the sender.
        assert_eq!(party(&expected(1, 1), 1, "USD"), Ok(Party::Sender));
        // The text of a violation is bounded, whatever the guest sent.
        let long = "X".repeat(10_000);
        assert!(party(&transfer, 1, &long).is_err_and(|broken| broken.describe().len() < 200));
    }

    #[test]
    fn the_receiver_is_told_whether_it_has_an_account_not_its_balance() {
        assert_eq!(Party::Receiver.reveal(Ok(Some(123_456))), Ok(Some(0)));
        assert_eq!(Party::Receiver.reveal(Ok(None)), Ok(None));
        assert_eq!(
            Party::Receiver.reveal(Err("down".into())),
            Err("down".into())
        );
        assert_eq!(Party::Sender.reveal(Ok(Some(123_456))), Ok(Some(123_456)));
    }

    #[test]
    fn a_kept_answer_serves_one_call_for_its_own_account_and_currency() {
        let mut kept = Prefetched::of(1, "USD", 500);
        assert_eq!(kept.take(2, "USD"), None);
        assert_eq!(kept.take(1, "EUR"), None);
        assert_eq!(kept.take(1, "USD"), Some(500));
        assert_eq!(kept.take(1, "USD"), None, "used once");
        assert_eq!(Prefetched::default().take(1, "USD"), None);
    }
}
