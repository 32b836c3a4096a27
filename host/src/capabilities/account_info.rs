//! `account-info.lookup` (WIT 0.3.0): what a rule needs for spending limits and velocity
//! checks. The sender's spendable balance (as `balance-lookup` reads it), its limits (from
//! PostgreSQL through a short-lived cache, `stores::limits`) and its outgoing counters (kept
//! in Redis by the scripts that take and release holds). The same rule as `balance-lookup`
//! (`balance_lookup::party`): only the request's parties, and of the receiver only whether it
//! has an account. The counters are never guessed: while Redis cannot answer, the lookup
//! answers an error and the guest refuses the transfer as unavailable (no hold could be taken
//! then anyway).

use std::sync::Arc;

use transferd_guest::spending::{Account, RecentOutgoing};
use uuid::Uuid;

use crate::bindings::transferd::transfer::account_info;
use crate::capabilities::balance_lookup::{self, Party};
use crate::capabilities::batch::BatchBook;
use crate::capabilities::{RequestState, guard};
use crate::stores::Stores;

impl account_info::Host for RequestState {
    async fn lookup(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<account_info::Account, String>> {
        let party = balance_lookup::party(&self.expected, account_id, &currency)
            .map_err(|broken| guard::trap(&mut self.violation, broken))?;
        let stores = Arc::clone(&self.stores);
        let transaction_id = self.expected.transaction_id;
        let answer = match party {
            Party::Receiver => {
                let available = match &self.batch {
                    Some(book) => book.available(account_id, &currency),
                    None => {
                        balance_lookup::lookup(
                            &*stores,
                            transaction_id,
                            account_id,
                            &currency,
                            None,
                            None,
                        )
                        .await
                        .answer
                    }
                };
                party.reveal(available).map(|available| Account {
                    available,
                    ..Account::default()
                })
            }
            Party::Sender => {
                let asked = (transaction_id, account_id, currency.as_str());
                sender(&stores, asked, self.batch.as_ref()).await
            }
        };
        self.answers.account(account_id, currency, answer.clone());
        Ok(answer.map(Into::into))
    }
}

/// The sender's account as `transaction_id` sees it; in a batch, its spendable balance and
/// counters include what the batch's earlier items staged.
async fn sender(
    stores: &Stores,
    (transaction_id, account_id, currency): (Uuid, i64, &str),
    book: Option<&BatchBook>,
) -> Result<Account, String> {
    let available = match book {
        Some(book) => book.available(account_id, currency)?,
        None => {
            balance_lookup::lookup(stores, transaction_id, account_id, currency, None, None)
                .await
                .answer?
        }
    };
    let limits = stores
        .ledger
        .account_limits(account_id, currency)
        .await
        .map_err(|error| format!("the account's limits cannot be read: {error}"))?;
    let mut today = stores
        .cache
        .outgoing(&transaction_id.to_string(), account_id, currency)
        .await
        .map_err(|error| format!("the account's outgoing counters cannot be read: {error}"))?;
    if let Some(book) = book {
        today = with_staged(today, book.sent(account_id, currency));
    }
    Ok(Account {
        available,
        limits,
        metadata: Vec::new(),
        today,
    })
}

/// The counters plus what a batch's earlier items staged.
fn with_staged(today: RecentOutgoing, (minor, count): (i64, u32)) -> RecentOutgoing {
    RecentOutgoing {
        outgoing_minor: today.outgoing_minor.saturating_add(minor),
        outgoing_count: today.outgoing_count.saturating_add(count),
        last_minute_count: today.last_minute_count.saturating_add(count),
    }
}
