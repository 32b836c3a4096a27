//! `balance-lookup.available`: Redis first (settled balance minus holds), PostgreSQL when the
//! balance is not cached or Redis is down.

use std::sync::Arc;

use crate::capabilities::RequestState;
use crate::capabilities::backend::Backend;
use crate::guest::bindings::transferd::transfer::balance_lookup;

impl balance_lookup::Host for RequestState {
    async fn available(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<Option<i64>, String>> {
        let capabilities = Arc::clone(&self.capabilities);
        let transaction_id = self.expected.transaction_id.clone();
        let answer = lookup(&*capabilities, &transaction_id, account_id, &currency).await;
        self.answers
            .lookups
            .push((account_id, currency, answer.clone()));
        Ok(answer)
    }
}

/// The available balance as `transaction_id` sees it (its own hold, when a retry holds it
/// already, does not count): Redis's answer when cached; otherwise the ledger's, cached on
/// the way (with this account's holds taken off once it is); the ledger's alone while Redis
/// is down. An error only when neither can answer.
pub async fn lookup<B: Backend>(
    backend: &B,
    transaction_id: &str,
    account_id: i64,
    currency: &str,
) -> Result<Option<i64>, String> {
    match backend
        .cached_available(account_id, currency, transaction_id)
        .await
    {
        Ok(Some(available)) => {
            counted("cache");
            return Ok(Some(available));
        }
        Ok(None) => counted("ledger_miss"),
        Err(error) => {
            counted("ledger_fallback");
            tracing::warn!(%error, account_id, currency, "balance cache unavailable; reading the ledger");
            return backend
                .settled_balance(account_id, currency)
                .await
                .map(|balance| balance.map(|balance| balance.balance_minor))
                .map_err(|error| error.to_string());
        }
    }
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
        .cached_available(account_id, currency, transaction_id)
        .await
    {
        Ok(Some(available)) => Ok(Some(available)),
        _ => Ok(Some(balance.balance_minor)),
    }
}

/// Counts a lookup by who answered it.
fn counted(source: &'static str) {
    metrics::counter!(crate::metrics::BALANCE_LOOKUPS, "source" => source).increment(1);
}
