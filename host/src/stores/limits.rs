//! Per-account spending limits (`account_limits`, set by an operator, read by the guest
//! through `account-info`): in PostgreSQL, read through a short-lived in-process cache so
//! that a transfer costs no PostgreSQL round trip. A change made through this process is seen
//! by it at once; another replica sees it within [`LIMITS_TTL`]. The reads and writes are
//! `Ledger::account_limits` and `Ledger::set_account_limits`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use transferd_guest::spending::AccountLimits;

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
    pub(crate) fn get(&self, account: &Account) -> Option<AccountLimits> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (read_at, limits) = entries.get(account)?;
        (read_at.elapsed() < LIMITS_TTL).then(|| limits.clone())
    }

    pub(crate) fn put(&self, account: Account, limits: AccountLimits) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(account, (Instant::now(), limits));
    }

    pub(crate) fn forget(&self, account: &Account) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(account);
    }
}
