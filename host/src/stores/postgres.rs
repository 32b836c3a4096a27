//! The ledger in PostgreSQL: the authority on balances.

use std::time::Duration;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use transferd_guest::spending::AccountLimits;
use uuid::Uuid;

use crate::config::Services;
use crate::stores::batch::BatchError;
use crate::stores::journal_chain::{self, NewEntry};
use crate::stores::limits::LimitsCache;
use crate::stores::transfer_state::{Reason, TransferKind, TransferStatus};

/// The system account's user id: it funds deposits and may go negative.
pub const SYSTEM_USER_ID: i64 = 0;

/// An account's spendable balance (its settled balance minus what its pending transfers
/// reserve), as the cache keeps it and lookups answer, and the version it was read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance_minor: i64,
    pub version: i64,
}

/// The migrations in `migrations/`, built into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the balance would exceed the largest amount an account can hold")]
    Overflow,
    #[error("this deposit_id was already used for a different deposit")]
    DepositIdReused,
    #[error("the ledger holds a row this version cannot read: {0}")]
    Unreadable(String),
    #[error("migrating the ledger database failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A write carried out with others in one statement (`stores::batch`) that failed.
    #[error(transparent)]
    Batched(#[from] BatchError<LedgerError>),
}

impl LedgerError {
    /// Whether the database refused the data itself: a data exception (SQLSTATE class 22: text
    /// with NUL, a time out of range, a number too large), a broken constraint (class 23, but
    /// not a unique violation, which a concurrent writer can cause) or a program limit (class
    /// 54). The same statement with the same data fails again however often it is retried.
    pub fn refuses_data(&self) -> bool {
        match self {
            LedgerError::Overflow => true,
            LedgerError::Unavailable(sqlx::Error::Database(error)) => {
                let code = error.code();
                let code = code.as_deref().unwrap_or_default();
                code.starts_with("22")
                    || (code.starts_with("23") && code != "23505")
                    || code.starts_with("54")
            }
            _ => false,
        }
    }
}

impl LedgerError {
    /// The server's certificate (or ours) was refused: waiting does not change that.
    pub fn is_tls_failure(&self) -> bool {
        matches!(
            self,
            LedgerError::Unavailable(sqlx::Error::Tls(_))
                | LedgerError::Migration(sqlx::migrate::MigrateError::Execute(sqlx::Error::Tls(_)))
        )
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        // 22003: numeric_value_out_of_range, what BIGINT overflow raises.
        if let sqlx::Error::Database(database_error) = &error
            && database_error.code().as_deref() == Some("22003")
        {
            return LedgerError::Overflow;
        }
        // A value this version cannot read (a status it does not know) stays unreadable
        // however often it is asked again.
        if let sqlx::Error::ColumnDecode { .. } = &error {
            return LedgerError::Unreadable(error.to_string());
        }
        LedgerError::Unavailable(error)
    }
}

/// Connection settings that keep every plan on the indexes. transferd's statements are keyed
/// lookups and writes, many of them joins of a table on a request's arrays (`UNNEST`), and
/// PostgreSQL caches a prepared statement's plan for the life of the connection. A plan made
/// while a table was small hashes the whole table, and goes on scanning all of it for every
/// batch once the table is large, until an ANALYZE replaces it, which without autovacuum is
/// never: settlement's check for ids already applied grows with the table instead of staying
/// a few index lookups. With sequential scans, hash and merge joins priced out, the planner
/// takes index lookups whatever the statistics say; it still scans where no index can serve.
/// JIT compilation is off with them: the price put on a scan makes such a plan look costly
/// enough to compile, which then costs more than the statement, and no statement of an OLTP
/// service gains from it.
fn keyed_plans_only(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ])
}

/// Whether a statement failed because its connection is gone rather than because of the
/// statement: the socket closed or broke mid-message, or the server said it was ending the
/// session (SQLSTATE 57P01 administrator command, 57P02 crash, or a connection exception,
/// class 08). sqlx discards such a connection, so the same statement on another may succeed.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database_error) => database_error
            .code()
            .is_some_and(|code| matches!(&*code, "57P01" | "57P02") || code.starts_with("08")),
        _ => false,
    }
}

/// Runs `statement` (which must be safe to run twice: a read, or a write that changes nothing
/// the second time) again on another connection while the one it got was lost, up to once
/// per connection the pool may hold and once more for a new one. A connection the server
/// dropped less than [`PING_IF_IDLE_FOR`] ago is not pinged before use; after an outage the
/// pool may hold several such connections, and each would otherwise fail one request.
pub(crate) async fn again_if_lost<T, F, Fut>(pool: &PgPool, statement: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let attempts = pool.options().get_max_connections() + 1;
    let mut attempt = 1;
    loop {
        match statement().await {
            Err(error) if connection_lost(&error) && attempt < attempts => {
                tracing::warn!(%error, attempt, "a pooled PostgreSQL connection was lost; asking again");
                attempt += 1;
            }
            answer => return answer,
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    limits: std::sync::Arc<LimitsCache>,
}

/// A pooled connection idle longer than this is pinged before it is used.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

impl Ledger {
    /// Creates the pool without connecting: connections are made (and remade after an outage)
    /// on demand, each within the configured timeout.
    ///
    /// sqlx pings a connection (a Sync round trip) when it goes back to the pool, and by
    /// default again when it is taken out: three round trips for one statement. The second
    /// ping is kept only for a connection idle longer than [`PING_IF_IDLE_FOR`]: one used or
    /// pinged more recently reached a live server then; a server restarted within that time
    /// fails a statement on it, never gives a wrong answer, and reads ask again
    /// ([`again_if_lost`]). Under load this saves a round trip per statement.
    pub async fn connect(services: &Services) -> Result<Ledger, LedgerError> {
        let pool = PgPoolOptions::new()
            .max_connections(services.database_connections)
            .acquire_timeout(services.database_timeout())
            .idle_timeout(Some(Duration::from_secs(300)))
            .test_before_acquire(false)
            .before_acquire(|connection, metadata| {
                Box::pin(async move {
                    if metadata.idle_for > PING_IF_IDLE_FOR {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(keyed_plans_only(services.database_url.parse()?));
        Ok(Ledger {
            pool,
            limits: Default::default(),
        })
    }

    /// The cache of account limits (`stores::limits`).
    pub(crate) fn limits_cache(&self) -> &LimitsCache {
        &self.limits
    }

    /// The connection pool, for other tables in the same database (the guest registry).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/`; safe to run again and from several replicas.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// How many of this binary's migrations the database has not applied (0 when ready): the
    /// readiness probe, so it answers for the database, not for one pooled connection.
    pub async fn unapplied_migrations(&self) -> Result<usize, LedgerError> {
        let applied: Vec<i64> = again_if_lost(&self.pool, || {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
        })
        .await?;
        Ok(MIGRATOR
            .iter()
            .filter(|migration| !applied.contains(&migration.version))
            .count())
    }

    /// The settled balance of an account, or `None` when it has none in that currency.
    pub async fn balance(
        &self,
        user_id: i64,
        currency: &str,
    ) -> Result<Option<Balance>, LedgerError> {
        let row: Option<(i64, i64)> = again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT balance_minor - pending_debits_minor, version FROM accounts
                 WHERE user_id = $1 AND currency = $2",
            )
            .bind(user_id)
            .bind(currency)
            .fetch_optional(&self.pool)
        })
        .await?;
        Ok(row.map(|(balance_minor, version)| Balance {
            balance_minor,
            version,
        }))
    }

    /// Funds an account from the system account (user 0) as a completed ledger transfer,
    /// creating either account if needed. A `deposit_id` seen before returns the first
    /// deposit's result and changes nothing.
    pub async fn deposit(
        &self,
        deposit_id: Uuid,
        user_id: i64,
        currency: &str,
        amount_minor: i64,
    ) -> Result<Deposit, LedgerError> {
        assert!(amount_minor > 0, "a deposit adds money");
        assert!(user_id > SYSTEM_USER_ID, "only users receive deposits");
        let mut transaction = self.pool.begin().await?;
        let (system_balance, user_balance) =
            lock_deposit_accounts(&mut transaction, user_id, currency).await?;
        if let Some(earlier) = earlier_deposit(&mut transaction, deposit_id).await? {
            transaction.rollback().await?;
            if earlier != (user_id, currency.to_string(), amount_minor) {
                return Err(LedgerError::DepositIdReused);
            }
            return self.replayed_deposit(deposit_id, user_id, currency).await;
        }
        let new_user_balance = user_balance
            .checked_add(amount_minor)
            .ok_or(LedgerError::Overflow)?;
        let new_system_balance = system_balance
            .checked_sub(amount_minor)
            .ok_or(LedgerError::Overflow)?;
        let new_balances = [new_system_balance, new_user_balance];
        let deposit = NewDeposit {
            deposit_id,
            user_id,
            currency,
            amount_minor,
        };
        record_deposit(&mut transaction, &deposit, new_balances).await?;
        let account =
            write_deposit_balances(&mut transaction, user_id, currency, new_balances).await?;
        transaction.commit().await?;
        let (balance_minor, cached) = account.ok_or(LedgerError::Overflow)?;
        Ok(Deposit {
            deposit_id,
            balance_minor,
            cached,
            replayed: false,
        })
    }

    /// The answer to a deposit id used before for the same deposit: the account as it is now.
    async fn replayed_deposit(
        &self,
        deposit_id: Uuid,
        user_id: i64,
        currency: &str,
    ) -> Result<Deposit, LedgerError> {
        let account = self
            .balances(user_id)
            .await?
            .into_iter()
            .find(|account| account.currency == currency)
            .ok_or(LedgerError::DepositIdReused)?;
        Ok(Deposit {
            deposit_id,
            balance_minor: account.balance_minor,
            cached: Balance {
                balance_minor: account.balance_minor - account.pending_debits_minor,
                version: account.version,
            },
            replayed: true,
        })
    }

    /// A transfer as the ledger recorded it, or `None` when it has not been settled.
    pub async fn transfer(
        &self,
        transaction_id: Uuid,
    ) -> Result<Option<TransferRecord>, LedgerError> {
        Ok(again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT transaction_id, kind, sender_id, receiver_id, amount_minor, currency, description,
                        status, reason, created_at, settled_at, metadata, expires_at,
                        posted_amount_minor, resolved_at
                 FROM transfers WHERE transaction_id = $1",
            )
            .bind(transaction_id)
            .fetch_optional(&self.pool)
        })
        .await?)
    }

    /// Which of `transaction_ids` the ledger has settled (completed or rejected).
    pub async fn settled_among(
        &self,
        transaction_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, LedgerError> {
        let rows: Vec<(Uuid,)> = again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT t.transaction_id FROM transfers t
                 JOIN UNNEST($1::uuid[]) AS wanted(id) ON t.transaction_id = wanted.id",
            )
            .bind(transaction_ids)
            .fetch_all(&self.pool)
        })
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The pending row of a transfer, if it has one.
    pub async fn pending(
        &self,
        transaction_id: Uuid,
    ) -> Result<Option<PendingTransfer>, LedgerError> {
        Ok(again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT transaction_id, sender_id, currency, amount_minor, message, accepted_at
                 FROM pending_transfers WHERE transaction_id = $1",
            )
            .bind(transaction_id)
            .fetch_optional(&self.pool)
        })
        .await?)
    }

    /// Deletes the pending rows of these transfers (settled, or certainly not published).
    pub async fn delete_pending(&self, transaction_ids: &[Uuid]) -> Result<(), LedgerError> {
        delete_pending_in(&self.pool, transaction_ids).await
    }

    /// Pending rows accepted before `before`, oldest first, at most `limit`.
    pub async fn pending_older_than(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PendingTransfer>, LedgerError> {
        Ok(again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT transaction_id, sender_id, currency, amount_minor, message, accepted_at
                 FROM pending_transfers WHERE accepted_at < $1 ORDER BY accepted_at LIMIT $2",
            )
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
        })
        .await?)
    }

    /// Every account of a user, by currency.
    pub async fn balances(&self, user_id: i64) -> Result<Vec<AccountRow>, LedgerError> {
        Ok(again_if_lost(&self.pool, || {
            sqlx::query_as(
                "SELECT a.currency, a.balance_minor, a.pending_debits_minor, a.pending_credits_minor,
                        a.version, l.single_max_minor, l.daily_max_minor,
                        coalesce(l.overdraft_minor, 0) AS overdraft_minor
                 FROM accounts a LEFT JOIN account_limits l
                     ON l.user_id = a.user_id AND l.currency = a.currency
                 WHERE a.user_id = $1 ORDER BY a.currency",
            )
            .bind(user_id)
            .fetch_all(&self.pool)
        })
        .await?)
    }
}

impl Ledger {
    /// The account's limits in `currency` (none set: no limits), from the cache when read
    /// within [`LIMITS_TTL`](crate::stores::limits::LIMITS_TTL).
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

/// An account as `GET /accounts/{id}/balances` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub currency: String,
    pub balance_minor: i64,
    /// What the account's pending transfers reserve as sender.
    pub pending_debits_minor: i64,
    /// What pending transfers to the account promise it.
    pub pending_credits_minor: i64,
    pub version: i64,
    /// Its limits (`stores::limits`); none set: no limits.
    pub single_max_minor: Option<i64>,
    pub daily_max_minor: Option<i64>,
    pub overdraft_minor: i64,
}

type Transaction = sqlx::Transaction<'static, sqlx::Postgres>;

/// Creates the system's and the user's accounts in `currency` if need be and locks both, in
/// settlement's lock order (by user id, so the system account first); returns their balances.
async fn lock_deposit_accounts(
    transaction: &mut Transaction,
    user_id: i64,
    currency: &str,
) -> Result<(i64, i64), LedgerError> {
    for account in [SYSTEM_USER_ID, user_id] {
        sqlx::query(
            "INSERT INTO accounts (user_id, currency) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(account)
        .bind(currency)
        .execute(&mut **transaction)
        .await?;
    }
    let locked: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT user_id, balance_minor, version FROM accounts
         WHERE currency = $1 AND user_id IN ($2, $3) ORDER BY user_id FOR UPDATE",
    )
    .bind(currency)
    .bind(SYSTEM_USER_ID)
    .bind(user_id)
    .fetch_all(&mut **transaction)
    .await?;
    assert_eq!(locked.len(), 2, "both accounts exist after the inserts");
    Ok((locked[0].1, locked[1].1))
}

/// The (receiver, currency, amount) of the transfer recorded under `deposit_id`, if any.
async fn earlier_deposit(
    transaction: &mut Transaction,
    deposit_id: Uuid,
) -> Result<Option<(i64, String, i64)>, LedgerError> {
    Ok(sqlx::query_as(
        "SELECT receiver_id, currency, amount_minor FROM transfers WHERE transaction_id = $1",
    )
    .bind(deposit_id)
    .fetch_optional(&mut **transaction)
    .await?)
}

/// A deposit about to be written.
struct NewDeposit<'a> {
    deposit_id: Uuid,
    user_id: i64,
    currency: &'a str,
    amount_minor: i64,
}

/// Writes the deposit as a completed transfer from the system account and its two journal
/// entries, each with its account's balance after it (`balances_after`: the system account's,
/// then the user's).
async fn record_deposit(
    transaction: &mut Transaction,
    deposit: &NewDeposit<'_>,
    balances_after: [i64; 2],
) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor, currency,
                                description, status, created_at)
         VALUES ($1, $6, $2, $3, $4, $5, 'deposit', $7, now())",
    )
    .bind(deposit.deposit_id)
    .bind(SYSTEM_USER_ID)
    .bind(deposit.user_id)
    .bind(deposit.amount_minor)
    .bind(deposit.currency)
    .bind(TransferKind::Deposit)
    .bind(TransferStatus::Completed)
    .execute(&mut **transaction)
    .await?;
    let entries = [
        (SYSTEM_USER_ID, -deposit.amount_minor, balances_after[0]),
        (deposit.user_id, deposit.amount_minor, balances_after[1]),
    ]
    .map(|(user_id, amount_minor, balance_after_minor)| NewEntry {
        transaction_id: deposit.deposit_id,
        user_id,
        currency: deposit.currency.to_string(),
        amount_minor,
        balance_after_minor,
    });
    journal_chain::append(transaction, &entries).await?;
    Ok(())
}

/// Writes the new balances of the system account and the user (in that order); returns the
/// user's committed state.
/// Writes both balances; returns the user's settled balance and its state as the cache keeps
/// it (spendable: what its pending transfers reserve taken off).
async fn write_deposit_balances(
    transaction: &mut Transaction,
    user_id: i64,
    currency: &str,
    new_balances: [i64; 2],
) -> Result<Option<(i64, Balance)>, LedgerError> {
    let updated: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "UPDATE accounts a SET balance_minor = u.balance_minor, version = a.version + 1, updated_at = now()
         FROM UNNEST($1::bigint[], $2::bigint[]) AS u(user_id, balance_minor)
         WHERE a.user_id = u.user_id AND a.currency = $3
         RETURNING a.user_id, a.balance_minor, a.pending_debits_minor, a.version",
    )
    .bind(vec![SYSTEM_USER_ID, user_id])
    .bind(new_balances.to_vec())
    .bind(currency)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(updated
        .into_iter()
        .find(|(account, ..)| *account == user_id)
        .map(|(_, balance_minor, pending_debits_minor, version)| {
            let cached = Balance {
                balance_minor: balance_minor - pending_debits_minor,
                version,
            };
            (balance_minor, cached)
        }))
}

/// The result of a deposit.
#[derive(Debug, Clone, Copy)]
pub struct Deposit {
    pub deposit_id: Uuid,
    /// The user's settled balance after it.
    pub balance_minor: i64,
    /// The account as the cache keeps it.
    pub cached: Balance,
    /// The deposit id had been used before; nothing changed.
    pub replayed: bool,
}

/// Deletes pending rows by transaction id, on the pool or inside a transaction.
pub(crate) async fn delete_pending_in<'e, E>(
    executor: E,
    transaction_ids: &[Uuid],
) -> Result<(), LedgerError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query(
        "DELETE FROM pending_transfers p USING UNNEST($1::uuid[]) AS i(transaction_id)
         WHERE p.transaction_id = i.transaction_id",
    )
    .bind(transaction_ids)
    .execute(executor)
    .await?;
    Ok(())
}

/// A row of `pending_transfers`: a transfer accepted while Redis was unreachable.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingTransfer {
    pub transaction_id: Uuid,
    pub sender_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    /// The transfer-log message, as produced.
    pub message: Vec<u8>,
    pub accepted_at: DateTime<Utc>,
}

/// A row of `transfers`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransferRecord {
    pub transaction_id: Uuid,
    pub kind: TransferKind,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub description: Option<String>,
    pub status: TransferStatus,
    pub reason: Option<Reason>,
    pub created_at: DateTime<Utc>,
    pub settled_at: DateTime<Utc>,
    pub metadata: Option<sqlx::types::Json<std::collections::BTreeMap<String, String>>>,
    /// A two-phase transfer's expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// A posted transfer's posted amount.
    pub posted_amount_minor: Option<i64>,
    /// When a two-phase transfer was posted, voided or expired.
    pub resolved_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::connection_lost;

    #[test]
    fn a_lost_connection_is_told_from_a_failed_statement() {
        let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "at EOF");
        assert!(connection_lost(&sqlx::Error::Io(closed)));
        assert!(connection_lost(&sqlx::Error::Protocol(
            "half a message".into()
        )));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
    }
}
