//! Per-account spending limits (`account_limits`, set by an operator, read by the guest
//! through `account-info`): in PostgreSQL, read through a short-lived in-process cache so
//! that a transfer costs no PostgreSQL round trip. A change made through this process is seen
//! by it at once; another replica sees it within [`LIMITS_TTL`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use transferd_guest::spending::AccountLimits;

use crate::stores::postgres::{Ledger, LedgerError, again_if_lost};

/// How long a replica may act on limits read before: the delay before a change made on
/// another replica applies everywhere.
pub const LIMITS_TTL: Duration = Duration::from_secs(2);

/// Most (account, currency) pairs kept; the cache starts over when full.
const MAX_CACHED: usize = 100_000;

type Account = (i64, String);

/// Limits read recently, with when they were read.
#[derive(Default)]
pub struct LimitsCache {
    entries: Mutex<HashMap<Account, (Instant, AccountLimits)>>,
}

impl LimitsCache {
    fn get(&self, account: &Account) -> Option<AccountLimits> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (read_at, limits) = entries.get(account)?;
        (read_at.elapsed() < LIMITS_TTL).then(|| limits.clone())
    }

    fn put(&self, account: Account, limits: AccountLimits) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(account, (Instant::now(), limits));
    }

    fn forget(&self, account: &Account) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(account);
    }
}

impl Ledger {
    /// The account's limits in `currency` (none set: no limits), from the cache when read
    /// within [`LIMITS_TTL`].
    pub async fn account_limits(
        &self,
        user_id: i64,
        currency: &str,
    ) -> Result<AccountLimits, LedgerError> {
        let account = (user_id, currency.to_string());
        if let Some(limits) = self.limits_cache().get(&account) {
            return Ok(limits);
        }
        let row: Option<(Option<i64>, Option<i64>, i64)> = again_if_lost(self.pool(), || {
            sqlx::query_as(
                "SELECT single_max_minor, daily_max_minor, overdraft_minor FROM account_limits
                 WHERE user_id = $1 AND currency = $2",
            )
            .bind(user_id)
            .bind(currency)
            .fetch_optional(self.pool())
        })
        .await?;
        let limits = row.map_or_else(AccountLimits::default, |(single, daily, overdraft)| {
            AccountLimits {
                single_max_minor: single,
                daily_max_minor: daily,
                overdraft_minor: overdraft,
            }
        });
        self.limits_cache().put(account, limits.clone());
        Ok(limits)
    }

    /// Sets (replaces) the account's limits in `currency`; this replica's cache forgets the
    /// old ones at once.
    pub async fn set_account_limits(
        &self,
        user_id: i64,
        currency: &str,
        limits: &AccountLimits,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO account_limits
                 (user_id, currency, single_max_minor, daily_max_minor, overdraft_minor)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, currency) DO UPDATE SET
                 single_max_minor = EXCLUDED.single_max_minor,
                 daily_max_minor = EXCLUDED.daily_max_minor,
                 overdraft_minor = EXCLUDED.overdraft_minor,
                 updated_at = now()",
        )
        .bind(user_id)
        .bind(currency)
        .bind(limits.single_max_minor)
        .bind(limits.daily_max_minor)
        .bind(limits.overdraft_minor)
        .execute(self.pool())
        .await?;
        self.limits_cache().forget(&(user_id, currency.to_string()));
        Ok(())
    }
}
