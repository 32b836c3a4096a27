//! What the imports' policy needs from the stores, as one small trait. The policy (Redis
//! first and the ledger when Redis is down or the balance is not cached; no transfer without
//! a hold; release only what is certainly not in the log) is written once over it, so it is
//! unit-tested against an in-memory backend without services (`tests` below), while
//! [`Stores`] implements it with Redis, PostgreSQL and Kafka. A transaction id is a [`Uuid`]
//! here; Redis keys and hash fields hold its text.

use std::future::Future;

use uuid::Uuid;

use crate::stores::Stores;
use crate::stores::kafka::{Acknowledged, LogError};
use crate::stores::postgres::{Balance, LedgerError};
use crate::stores::redis::{CacheError, HoldOutcome, HoldRequest};

pub trait Backend: Send + Sync + 'static {
    /// Redis, one round trip: each account's settled balance minus its holds, except the hold
    /// of `transaction_id` itself (a retry under the same idempotency key); `None` for an
    /// account whose balance is not cached. One answer per account, in order.
    fn cached_available(
        &self,
        account_ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Option<i64>>, CacheError>> + Send;

    /// Redis, one round trip: [`Backend::cached_available`], and the hold `ahead` in the same
    /// step when every account read is cached and the one it is on has the amount available
    /// (`hold_ahead`). Also whether `transaction_id` holds the amount now.
    fn cached_available_holding(
        &self,
        account_ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
        ahead: HoldRequest<'_>,
    ) -> impl Future<Output = Result<(Vec<Option<i64>>, bool), CacheError>> + Send;

    /// Redis: caches a settled balance unless a newer version is cached.
    fn cache_balance(
        &self,
        account_id: i64,
        currency: &str,
        balance: Balance,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Redis: sets `amount_minor` of the available balance aside for `transaction_id`, with
    /// the message as its pending record, when the holds are trusted.
    fn reserve_hold(
        &self,
        transaction_id: Uuid,
        account_id: i64,
        currency: &str,
        amount_minor: i64,
        message: &[u8],
    ) -> impl Future<Output = Result<HoldOutcome, CacheError>> + Send;

    /// Redis: replaces the pending record of a transfer that holds already.
    fn replace_pending(
        &self,
        transaction_id: Uuid,
        message: &[u8],
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Redis: gives a hold (and its pending record) back.
    fn release_hold(
        &self,
        transaction_id: Uuid,
        account_id: i64,
        currency: &str,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// PostgreSQL: the settled balance, `None` when the account does not exist.
    fn settled_balance(
        &self,
        account_id: i64,
        currency: &str,
    ) -> impl Future<Output = Result<Option<Balance>, LedgerError>> + Send;

    /// Kafka: writes the message and waits for the broker's acknowledgement.
    fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Result<Acknowledged, LogError>> + Send;
}

impl Backend for Stores {
    async fn cached_available(
        &self,
        account_ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
    ) -> Result<Vec<Option<i64>>, CacheError> {
        self.cache
            .available_many(account_ids, currency, &transaction_id.to_string())
            .await
    }

    async fn cached_available_holding(
        &self,
        account_ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
        ahead: HoldRequest<'_>,
    ) -> Result<(Vec<Option<i64>>, bool), CacheError> {
        self.cache
            .available_holding(account_ids, currency, &transaction_id.to_string(), &ahead)
            .await
    }

    async fn cache_balance(
        &self,
        account_id: i64,
        currency: &str,
        balance: Balance,
    ) -> Result<(), CacheError> {
        let Balance {
            balance_minor,
            version,
        } = balance;
        self.cache
            .store_balance(account_id, currency, balance_minor, version)
            .await
            .map(|_stored| ())
    }

    async fn reserve_hold(
        &self,
        transaction_id: Uuid,
        account_id: i64,
        currency: &str,
        amount_minor: i64,
        message: &[u8],
    ) -> Result<HoldOutcome, CacheError> {
        self.cache
            .reserve_hold(
                &transaction_id.to_string(),
                account_id,
                currency,
                amount_minor,
                message,
            )
            .await
    }

    async fn replace_pending(
        &self,
        transaction_id: Uuid,
        message: &[u8],
    ) -> Result<(), CacheError> {
        self.cache
            .replace_pending(&transaction_id.to_string(), message)
            .await
    }

    async fn release_hold(
        &self,
        transaction_id: Uuid,
        account_id: i64,
        currency: &str,
    ) -> Result<(), CacheError> {
        self.cache
            .release_hold(&transaction_id.to_string(), account_id, currency)
            .await
    }

    async fn settled_balance(
        &self,
        account_id: i64,
        currency: &str,
    ) -> Result<Option<Balance>, LedgerError> {
        self.ledger.balance(account_id, currency).await
    }

    async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Acknowledged, LogError> {
        self.log.produce(topic, key, payload, headers).await
    }
}
