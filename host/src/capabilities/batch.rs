//! The imports in batch mode (`POST /transfers/batch`): every item of a batch is decided by
//! the guest as a single transfer, under the same guard, but its imports touch no store.
//! `balance-lookup` answers from one read of every party of the batch taken before the first
//! item ([`snapshot`]) minus what earlier items staged; `publish.send`, once the guard admits
//! the message, stages it and its hold and answers `ok`, or `insufficient-funds` when the
//! staged running balance cannot cover it. After the last item, one Redis script holds every
//! staged item ([`reserve`]) and the host produces the batch as one record.
//!
//! An atomic batch settles all or none, in order, so there a later item may spend what an
//! earlier one credits; a batch that is not atomic counts only debits (an earlier item that
//! settlement refuses must not have paid for a later one).

use std::collections::HashMap;

use transferd_guest::logic::Outgoing;

use crate::bindings::transferd::transfer::publish::PublishError;
use crate::capabilities::balance_lookup;
use crate::capabilities::guard::Expected;
use crate::stores::Stores;
use crate::stores::redis::{BatchHold, CacheError, HoldOutcome};

/// An account in one currency.
type Account = (i64, String);

/// What the batch's items see and staged so far; carried from one item's call to the next.
#[derive(Debug, Default)]
pub struct BatchBook {
    atomic: bool,
    /// Each party's available balance when the batch began (`None`: no such account), or why
    /// it could not be read.
    snapshot: HashMap<Account, Result<Option<i64>, String>>,
    /// What the staged items change: minus what they hold, plus (atomic) what they credit.
    staged: HashMap<Account, i64>,
    /// What the staged items send, per sender: amount and count, which `account-info` adds
    /// to the sender's counters (the batch's holds are taken after its last item).
    sent: HashMap<Account, (i64, u32)>,
    /// The current item's staged message, taken by the host after its call.
    pub current: Option<Staged>,
}

/// One item's admitted message and the amount its hold covers.
#[derive(Debug, Clone)]
pub struct Staged {
    pub outgoing: Outgoing,
    pub amount_minor: i64,
}

impl BatchBook {
    /// A book over `snapshot` (see [`snapshot`]).
    pub fn new(atomic: bool, snapshot: HashMap<Account, Result<Option<i64>, String>>) -> Self {
        BatchBook {
            atomic,
            snapshot,
            staged: HashMap::new(),
            sent: HashMap::new(),
            current: None,
        }
    }

    /// The lookup's answer: the snapshot's, with what earlier items staged.
    pub fn available(&self, account_id: i64, currency: &str) -> Result<Option<i64>, String> {
        let key = (account_id, currency.to_string());
        let base = self
            .snapshot
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Err("not read for this batch".into()))?;
        let change = self.staged.get(&key).copied().unwrap_or(0);
        Ok(base.map(|available| available.saturating_add(change)))
    }

    /// Stages an admitted message whose hold is `amount_minor` on the expected sender: `ok`
    /// when the running balance covers it, else insufficient funds (nothing staged).
    pub fn stage(
        &mut self,
        expected: &Expected,
        outgoing: Outgoing,
        amount_minor: i64,
    ) -> Result<(), PublishError> {
        let currency = expected.currency.as_str();
        match self.available(expected.sender_id, currency) {
            Ok(Some(available)) if available >= amount_minor => {}
            Ok(_) => return Err(PublishError::InsufficientFunds),
            Err(reason) => return Err(PublishError::Unavailable(reason)),
        }
        let sender = (expected.sender_id, currency.to_string());
        let sent = self.sent.entry(sender.clone()).or_default();
        *sent = (
            sent.0.saturating_add(amount_minor),
            sent.1.saturating_add(1),
        );
        *self.staged.entry(sender).or_default() -= amount_minor;
        if self.atomic {
            let receiver = (expected.receiver_id, currency.to_string());
            *self.staged.entry(receiver).or_default() += amount_minor;
        }
        self.current = Some(Staged {
            outgoing,
            amount_minor,
        });
        Ok(())
    }
}

impl BatchBook {
    /// What the batch's staged items send from the account: amount and count.
    pub fn sent(&self, account_id: i64, currency: &str) -> (i64, u32) {
        let key = (account_id, currency.to_string());
        self.sent.get(&key).copied().unwrap_or_default()
    }

    /// Takes back what the current item staged: its guest did not accept it after all.
    pub fn unstage(&mut self, expected: &Expected) {
        let Some(staged) = self.current.take() else {
            return;
        };
        let currency = expected.currency.as_str();
        let sender = (expected.sender_id, currency.to_string());
        let sent = self.sent.entry(sender.clone()).or_default();
        *sent = (
            sent.0.saturating_sub(staged.amount_minor),
            sent.1.saturating_sub(1),
        );
        *self.staged.entry(sender).or_default() += staged.amount_minor;
        if self.atomic {
            *self
                .staged
                .entry((expected.receiver_id, currency.to_string()))
                .or_default() -= staged.amount_minor;
        }
    }
}

/// One read of every party of the batch: a Redis script for them all, then the ledger (cached
/// on the way) for each account Redis does not have, as a single lookup does. `items`: each
/// item's transaction id and expected transfer; an item's own id is left out of its sender's
/// holds, so a retry under the same key sees what the first attempt saw.
pub async fn snapshot(
    stores: &Stores,
    items: &[Expected],
) -> HashMap<Account, Result<Option<i64>, String>> {
    let mut own: HashMap<Account, Vec<String>> = HashMap::new();
    for item in items {
        let currency = item.currency.clone();
        own.entry((item.sender_id, currency.clone()))
            .or_default()
            .push(item.transaction_id.to_string());
        own.entry((item.receiver_id, currency)).or_default();
    }
    let accounts: Vec<(Account, Vec<String>)> = own.into_iter().collect();
    let asked: Vec<(i64, &str, Vec<String>)> = accounts
        .iter()
        .map(|((id, currency), ids)| (*id, currency.as_str(), ids.clone()))
        .collect();
    let cached = stores.cache.available_snapshot(&asked).await;
    let mut found = HashMap::with_capacity(accounts.len());
    for (position, ((account_id, currency), ids)) in accounts.into_iter().enumerate() {
        let from_cache = match &cached {
            Ok(answers) => answers.get(position).copied().flatten(),
            Err(_) => None,
        };
        let answer = match from_cache {
            Some(available) => Ok(Some(available)),
            None => {
                // An id of the batch (any: the ledger's answer does not depend on it).
                let id = ids
                    .first()
                    .and_then(|id| uuid::Uuid::parse_str(id).ok())
                    .unwrap_or_else(uuid::Uuid::nil);
                balance_lookup::lookup(stores, id, account_id, &currency, None, None)
                    .await
                    .answer
            }
        };
        found.insert((account_id, currency), answer);
    }
    found
}

/// Holds every staged item in one step (`BalanceCache::reserve_batch`), loading from the
/// ledger a sender's balance Redis lost since the snapshot and trying once more. One outcome
/// per item. `items`: each staged item's transaction id, message and receiver.
pub async fn reserve(
    stores: &Stores,
    items: &[(String, &Staged, i64)],
    atomic: bool,
) -> Result<Vec<HoldOutcome>, CacheError> {
    let holds: Vec<BatchHold<'_>> = items
        .iter()
        .filter_map(|(id, staged, receiver)| {
            let hold = staged.outgoing.hold.as_ref()?;
            Some(BatchHold {
                transaction_id: id.as_str(),
                user_id: hold.account_id,
                currency: hold.currency.as_str(),
                amount_minor: staged.amount_minor,
                record: &staged.outgoing.payload,
                credits: atomic.then_some(*receiver),
            })
        })
        .collect();
    let mut outcomes = stores.cache.reserve_batch(&holds, atomic).await?;
    let missing: Vec<&BatchHold<'_>> = holds
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == HoldOutcome::Missing)
        .map(|(hold, _)| hold)
        .collect();
    if missing.is_empty() {
        return Ok(outcomes);
    }
    for hold in missing {
        if let Ok(Some(balance)) = stores.ledger.balance(hold.user_id, hold.currency).await {
            stores
                .cache
                .store_balance(
                    hold.user_id,
                    hold.currency,
                    balance.balance_minor,
                    balance.version,
                )
                .await?;
        }
    }
    outcomes = stores.cache.reserve_batch(&holds, atomic).await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use transferd_guest::logic::Hold;

    fn expected(sender_id: i64, receiver_id: i64) -> Expected {
        Expected {
            transaction_id: uuid::Uuid::nil(),
            sender_id,
            receiver_id,
            currency: "USD".into(),
            amount_minor: Some(100),
            principal: None,
            description: None,
            guest_version: "sha256:test".into(),
            received_at_ms: 0,
            metadata: None,
            pending: false,
            expires_in_s: None,
        }
    }

    fn outgoing(account_id: i64, amount_minor: i64) -> Outgoing {
        Outgoing {
            topic: "transfers".into(),
            key: account_id.to_string(),
            payload: b"{}".to_vec(),
            hold: Some(Hold {
                account_id,
                currency: "USD".into(),
                amount_minor,
            }),
        }
    }

    fn book(atomic: bool) -> BatchBook {
        let usd = |id: i64| (id, "USD".to_string());
        BatchBook::new(
            atomic,
            HashMap::from([
                (usd(1), Ok(Some(150))),
                (usd(2), Ok(Some(0))),
                (usd(3), Ok(None)),
            ]),
        )
    }

    #[test]
    fn later_items_see_what_earlier_ones_staged_and_nothing_more() {
        let mut book = book(false);
        let first = expected(1, 2);
        assert!(book.stage(&first, outgoing(1, 100), 100).is_ok());
        assert!(book.current.take().is_some());
        assert_eq!(book.available(1, "USD"), Ok(Some(50)));
        // Not atomic: the receiver's credit does not count before it settles.
        assert_eq!(book.available(2, "USD"), Ok(Some(0)));
        assert!(matches!(
            book.stage(&first, outgoing(1, 60), 60),
            Err(PublishError::InsufficientFunds)
        ));
        assert!(book.current.is_none(), "a refused stage stages nothing");
        assert_eq!(book.available(3, "USD"), Ok(None));
        assert!(
            book.available(4, "USD").is_err(),
            "an account the batch did not read"
        );
    }

    #[test]
    fn in_an_atomic_batch_a_credit_counts_and_an_unaccepted_stage_is_taken_back() {
        let mut book = book(true);
        let first = expected(1, 2);
        assert!(book.stage(&first, outgoing(1, 100), 100).is_ok());
        book.current = None;
        assert_eq!(book.available(2, "USD"), Ok(Some(100)));
        let second = expected(2, 1);
        assert!(book.stage(&second, outgoing(2, 80), 80).is_ok());
        assert_eq!(book.sent(2, "USD"), (80, 1));
        // Its guest did not accept it: taken back, both ways.
        book.unstage(&second);
        assert_eq!(book.sent(2, "USD"), (0, 0));
        assert_eq!(book.sent(1, "USD"), (100, 1));
        assert_eq!(book.available(2, "USD"), Ok(Some(100)));
        assert_eq!(book.available(1, "USD"), Ok(Some(50)));
    }
}
