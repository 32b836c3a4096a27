//! `balance-lookup.available`: Redis first (settled balance minus holds), PostgreSQL when the
//! balance is not cached or Redis is down.

use std::sync::Arc;

use crate::capabilities::{Capabilities, RequestState};
use crate::guest::bindings::transferd::transfer::balance_lookup;

impl balance_lookup::Host for RequestState {
    async fn available(
        &mut self,
        account_id: i64,
        currency: String,
    ) -> wasmtime::Result<Result<Option<i64>, String>> {
        let capabilities = Arc::clone(&self.capabilities);
        let answer = lookup(&capabilities, account_id, &currency).await;
        self.answers
            .lookups
            .push((account_id, currency, answer.clone()));
        Ok(answer)
    }
}

async fn lookup(
    capabilities: &Capabilities,
    account_id: i64,
    currency: &str,
) -> Result<Option<i64>, String> {
    match capabilities.cache.available(account_id, currency).await {
        Ok(Some(available)) => return Ok(Some(available)),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, account_id, currency, "balance cache unavailable; reading the ledger");
            return capabilities
                .ledger
                .balance(account_id, currency)
                .await
                .map(|balance| balance.map(|balance| balance.balance_minor))
                .map_err(|error| error.to_string());
        }
    }
    // Not cached: read the ledger, fill the cache, and answer with the holds taken off.
    let balance = match capabilities.ledger.balance(account_id, currency).await {
        Ok(Some(balance)) => balance,
        Ok(None) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    if let Err(error) = capabilities
        .cache
        .store_balance(account_id, currency, balance.balance_minor, balance.version)
        .await
    {
        tracing::warn!(%error, account_id, currency, "could not fill the balance cache");
        return Ok(Some(balance.balance_minor));
    }
    match capabilities.cache.available(account_id, currency).await {
        Ok(Some(available)) => Ok(Some(available)),
        _ => Ok(Some(balance.balance_minor)),
    }
}
