//! The ledger's history, read a page at a time: an account holder's transfers and journal
//! entries newest first, and their balances as of a past moment.
//!
//! Pages are keyset pages: each continues strictly after the last row of the one before (its
//! position, not an offset), so a page costs the same however deep it is, and rows settled
//! meanwhile never shift a page or repeat on the next.

use chrono::{DateTime, NaiveDate, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::stores::postgres::{Ledger, LedgerError, TransferRecord, again_if_lost};
use crate::stores::transfer_state::TransferStatus;

/// The most rows one page may hold.
pub const PAGE_LIMIT_MAX: i64 = 200;

/// Where a page of transfers continues: the last row shown, in the list's order (newest
/// first by when the host accepted it, the transaction id breaking ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferPosition {
    pub created_at: DateTime<Utc>,
    pub transaction_id: Uuid,
}

impl TransferPosition {
    /// Before every row: later than any time the ledger stores (messages stop at the year
    /// 9999), so the first page needs no query of its own.
    fn start() -> TransferPosition {
        let year_10000 = NaiveDate::from_ymd_opt(10_000, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|moment| moment.and_utc())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        TransferPosition {
            created_at: year_10000,
            transaction_id: Uuid::max(),
        }
    }
}

/// Which transfers a page lists: those one user sent or received.
#[derive(Debug, Clone)]
pub struct TransferQuery {
    pub user_id: i64,
    pub status: Option<TransferStatus>,
    pub currency: Option<String>,
    /// Only transfers whose metadata holds every one of these pairs.
    pub metadata: BTreeMap<String, String>,
    /// Continue after this row; `None` for the first page.
    pub after: Option<TransferPosition>,
    /// At most [`PAGE_LIMIT_MAX`].
    pub limit: i64,
}

/// Which journal entries a page lists: one user's, in one currency or all.
#[derive(Debug, Clone)]
pub struct EntryQuery {
    pub user_id: i64,
    pub currency: Option<String>,
    /// Continue after this entry id; `None` for the first page.
    pub after: Option<i64>,
    /// At most [`PAGE_LIMIT_MAX`].
    pub limit: i64,
}

/// A row of `journal_entries`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRecord {
    pub entry_id: i64,
    pub transaction_id: Uuid,
    pub currency: String,
    /// Negative for money leaving the account.
    pub amount_minor: i64,
    /// The account's balance just after this entry.
    pub balance_after_minor: i64,
    pub created_at: DateTime<Utc>,
}

/// One page of a list: at most the limit asked for, and whether rows follow it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub more: bool,
}

impl<T> Page<T> {
    /// The page of `limit` rows out of `rows`, read with one row more than the page holds.
    fn of(mut rows: Vec<T>, limit: i64) -> Page<T> {
        let limit = usize::try_from(limit).unwrap_or(0);
        let more = rows.len() > limit;
        rows.truncate(limit);
        Page { rows, more }
    }

    /// The page's last row when rows follow it: where the next page starts.
    pub fn last_if_more(&self) -> Option<&T> {
        self.rows.last().filter(|_| self.more)
    }
}

/// One account's balance as of a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceAt {
    pub currency: String,
    pub balance_minor: i64,
}

impl Ledger {
    /// A page of the transfers a user sent or received, newest first: the newest `limit` as
    /// sender and as receiver, each from its own index, merged.
    pub async fn transfers_of(
        &self,
        query: &TransferQuery,
    ) -> Result<Page<TransferRecord>, LedgerError> {
        assert!(
            (1..=PAGE_LIMIT_MAX).contains(&query.limit),
            "a bounded page"
        );
        let after = query.after.unwrap_or_else(TransferPosition::start);
        let metadata = (!query.metadata.is_empty()).then_some(sqlx::types::Json(&query.metadata));
        let pool = self.pool();
        let rows = again_if_lost(pool, || {
            sqlx::query_as(TRANSFERS_OF)
                .bind(query.user_id)
                .bind(after.created_at)
                .bind(after.transaction_id)
                .bind(query.status)
                .bind(query.currency.as_deref())
                .bind(query.limit + 1)
                .bind(metadata.as_ref())
                .fetch_all(pool)
        })
        .await?;
        Ok(Page::of(rows, query.limit))
    }

    /// A page of a user's journal entries, newest first.
    pub async fn entries_of(&self, query: &EntryQuery) -> Result<Page<EntryRecord>, LedgerError> {
        assert!(
            (1..=PAGE_LIMIT_MAX).contains(&query.limit),
            "a bounded page"
        );
        let after = query.after.unwrap_or(i64::MAX);
        let pool = self.pool();
        // Two statements, so each reads the index made for it.
        let statement = match query.currency {
            Some(_) => ENTRIES_OF_ACCOUNT,
            None => ENTRIES_OF_USER,
        };
        let rows = again_if_lost(pool, || {
            sqlx::query_as(statement)
                .bind(query.user_id)
                .bind(after)
                .bind(query.limit + 1)
                .bind(query.currency.as_deref())
                .fetch_all(pool)
        })
        .await?;
        Ok(Page::of(rows, query.limit))
    }

    /// Every account the user had at `at`, by currency, with its balance then: its last
    /// journal entry's balance at or before `at`, 0 without one. `None` when the user has no
    /// accounts at all, now.
    pub async fn balances_at(
        &self,
        user_id: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<BalanceAt>>, LedgerError> {
        let pool = self.pool();
        let rows: Vec<(String, bool, i64)> = again_if_lost(pool, || {
            sqlx::query_as(BALANCES_AT)
                .bind(user_id)
                .bind(at)
                .fetch_all(pool)
        })
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let balances = rows
            .into_iter()
            .filter(|(_, existed, _)| *existed)
            .map(|(currency, _, balance_minor)| BalanceAt {
                currency,
                balance_minor,
            })
            .collect();
        Ok(Some(balances))
    }
}

/// `$1` user, `$2`/`$3` the position to continue after, `$4` status, `$5` currency, `$7`
/// metadata pairs every row must hold (each NULL for any), `$6` how many rows. A transfer a
/// user sent to themselves is listed once.
const TRANSFERS_OF: &str = "
    SELECT transaction_id, kind, sender_id, receiver_id, amount_minor, currency, description,
           status, reason, created_at, settled_at, metadata, expires_at, posted_amount_minor,
           resolved_at
    FROM (
        (SELECT * FROM transfers
         WHERE sender_id = $1 AND (created_at, transaction_id) < ($2, $3)
           AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR currency = $5)
           AND ($7::jsonb IS NULL OR metadata @> $7)
         ORDER BY created_at DESC, transaction_id DESC LIMIT $6)
        UNION ALL
        (SELECT * FROM transfers
         WHERE receiver_id = $1 AND sender_id <> $1 AND (created_at, transaction_id) < ($2, $3)
           AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR currency = $5)
           AND ($7::jsonb IS NULL OR metadata @> $7)
         ORDER BY created_at DESC, transaction_id DESC LIMIT $6)
    ) AS mine
    ORDER BY created_at DESC, transaction_id DESC
    LIMIT $6";

/// `$1` user, `$2` the entry id to continue after, `$3` how many rows, `$4` currency.
const ENTRIES_OF_ACCOUNT: &str = "
    SELECT entry_id, transaction_id, currency, amount_minor, balance_after_minor, created_at
    FROM journal_entries
    WHERE user_id = $1 AND currency = $4 AND entry_id < $2
    ORDER BY entry_id DESC LIMIT $3";

/// `$1` user, `$2` the entry id to continue after, `$3` how many rows; `$4` is NULL.
const ENTRIES_OF_USER: &str = "
    SELECT entry_id, transaction_id, currency, amount_minor, balance_after_minor, created_at
    FROM journal_entries
    WHERE user_id = $1 AND entry_id < $2 AND $4::text IS NULL
    ORDER BY entry_id DESC LIMIT $3";

/// `$1` user, `$2` the moment: each account, whether it existed then, and its balance then.
/// Entries are written after their account's lock is taken, at the time of writing, so one
/// account's entries are in time order and its last one by time is its balance then.
const BALANCES_AT: &str = "
    SELECT a.currency, a.created_at <= $2, COALESCE(e.balance_after_minor, 0)
    FROM accounts a
    LEFT JOIN LATERAL (
        SELECT j.balance_after_minor FROM journal_entries j
        WHERE j.user_id = a.user_id AND j.currency = a.currency AND j.created_at <= $2
        ORDER BY j.created_at DESC, j.entry_id DESC LIMIT 1
    ) AS e ON true
    WHERE a.user_id = $1
    ORDER BY a.currency";
