//! Reading a namespace's ledger: the invariants every test checks the same way, and waits for
//! settlement to catch up.

use std::time::{Duration, Instant};

use crate::Namespace;

/// The ledger's invariants, read in one place so every test checks them the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Sum of every balance, system account included, per currency: must be zero.
    pub nonzero_currency_sums: Vec<(String, i64)>,
    /// User accounts below zero: must be none.
    pub negative_accounts: i64,
    /// Transfers that moved money: completed, or two-phase ones posted.
    pub completed_transfers: i64,
    pub rejected_transfers: i64,
    /// Journal entries of kind-transfer rows.
    pub transfer_entries: i64,
    /// Transfers whose entries do not sum to zero, or completed ones without exactly two.
    pub unbalanced_transfers: i64,
    /// Accounts whose balance differs from the sum of their journal entries, or whose entries'
    /// running balances (`balance_after_minor`) are not that sum entry by entry, ending at it.
    pub balances_off_journal: i64,
    /// Accounts whose pending debits or credits differ from the amounts of the pending
    /// (two-phase) transfers they send or receive, or users who reserve more than they have.
    pub pending_off: i64,
}

/// Accounts whose pending amounts differ from their pending transfers, or that reserve more
/// than they have.
async fn pending_off(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM accounts a
         LEFT JOIN (SELECT sender_id AS user_id, currency, SUM(amount_minor) AS total
                    FROM transfers WHERE status = 'pending' GROUP BY 1, 2) d USING (user_id, currency)
         LEFT JOIN (SELECT receiver_id AS user_id, currency, SUM(amount_minor) AS total
                    FROM transfers WHERE status = 'pending' GROUP BY 1, 2) c USING (user_id, currency)
         WHERE a.pending_debits_minor <> COALESCE(d.total, 0)
            OR a.pending_credits_minor <> COALESCE(c.total, 0)
            OR (a.user_id > 0 AND a.balance_minor < a.pending_debits_minor)",
    )
    .fetch_one(pool)
    .await?)
}

impl Namespace {
    pub async fn check_ledger(&self) -> anyhow::Result<LedgerCheck> {
        let pool = self.ledger().await?;
        let nonzero_currency_sums: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, SUM(balance_minor)::bigint FROM accounts GROUP BY currency HAVING SUM(balance_minor) <> 0",
        )
        .fetch_all(&pool)
        .await?;
        let negative_accounts: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts WHERE user_id > 0 AND balance_minor < 0",
        )
        .fetch_one(&pool)
        .await?;
        let (completed_transfers, rejected_transfers): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE status IN ('completed', 'posted')),
                    COUNT(*) FILTER (WHERE status = 'rejected')
             FROM transfers WHERE kind = 'transfer'",
        )
        .fetch_one(&pool)
        .await?;
        let transfer_entries: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM journal_entries j JOIN transfers t USING (transaction_id) WHERE t.kind = 'transfer'",
        )
        .fetch_one(&pool)
        .await?;
        let unbalanced_transfers: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM transfers t
             LEFT JOIN (SELECT transaction_id, COUNT(*) AS n, SUM(amount_minor) AS total
                        FROM journal_entries GROUP BY transaction_id) j USING (transaction_id)
             WHERE (t.status IN ('completed', 'posted') AND (j.n IS DISTINCT FROM 2 OR j.total <> 0))
                OR (t.status NOT IN ('completed', 'posted') AND j.n IS NOT NULL)",
        )
        .fetch_one(&pool)
        .await?;
        let balances_off_journal: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts a
             LEFT JOIN (
                 SELECT user_id, currency, SUM(amount_minor) AS total,
                        COUNT(*) FILTER (WHERE balance_after_minor <> running) AS off_running,
                        (array_agg(balance_after_minor ORDER BY entry_id DESC))[1] AS last_after
                 FROM (SELECT user_id, currency, entry_id, amount_minor, balance_after_minor,
                              SUM(amount_minor) OVER (PARTITION BY user_id, currency ORDER BY entry_id) AS running
                       FROM journal_entries) AS e
                 GROUP BY user_id, currency
             ) j USING (user_id, currency)
             WHERE a.balance_minor <> COALESCE(j.total, 0)
                OR a.balance_minor <> COALESCE(j.last_after, 0)
                OR COALESCE(j.off_running, 0) > 0",
        )
        .fetch_one(&pool)
        .await?;
        let pending_off = pending_off(&pool).await?;
        pool.close().await;
        Ok(LedgerCheck {
            pending_off,
            nonzero_currency_sums,
            negative_accounts,
            completed_transfers,
            rejected_transfers,
            transfer_entries,
            unbalanced_transfers,
            balances_off_journal,
        })
    }

    /// Waits until the ledger holds `count` settled transfers (kind `transfer`).
    pub async fn wait_settled(&self, count: i64, limit: Duration) -> anyhow::Result<i64> {
        self.wait_count(
            "SELECT COUNT(*) FROM transfers WHERE kind = 'transfer'",
            |settled| settled >= count,
            limit,
        )
        .await
    }

    /// Waits until settlement has run every settled batch's after-commit effects (Redis, the
    /// event message) and forgotten them: until then it may run them again, and a test that
    /// changes what they touch would race it. True when none are left within `limit`.
    pub async fn wait_effects_done(&self, limit: Duration) -> anyhow::Result<bool> {
        let left = self
            .wait_count(
                "SELECT COUNT(*) FROM settlement_effect_batches",
                |left| left == 0,
                limit,
            )
            .await?;
        Ok(left == 0)
    }

    /// Polls the ledger's `count_sql` every 100 ms until `done` holds for it or `limit` has
    /// passed; returns the last count.
    async fn wait_count(
        &self,
        count_sql: &'static str,
        done: impl Fn(i64) -> bool,
        limit: Duration,
    ) -> anyhow::Result<i64> {
        let pool = self.ledger().await?;
        let deadline = Instant::now() + limit;
        loop {
            let count: i64 = sqlx::query_scalar(count_sql).fetch_one(&pool).await?;
            if done(count) || Instant::now() >= deadline {
                pool.close().await;
                return Ok(count);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The transaction ids the ledger has settled (kind `transfer`).
    pub async fn settled_ids(&self) -> anyhow::Result<Vec<uuid::Uuid>> {
        let pool = self.ledger().await?;
        let ids =
            sqlx::query_scalar("SELECT transaction_id FROM transfers WHERE kind = 'transfer'")
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        Ok(ids)
    }

    /// Which of `ids` the ledger has settled (completed or rejected).
    pub async fn settled_among(
        &self,
        ids: &[uuid::Uuid],
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let pool = self.ledger().await?;
        let settled: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT t.transaction_id FROM UNNEST($1::uuid[]) AS i(transaction_id) JOIN transfers t USING (transaction_id)",
        )
        .bind(ids)
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(settled.into_iter().collect())
    }

    /// Waits until every one of `ids` is settled or `limit` passed; returns the settled ones.
    /// A ledger that cannot be reached yet (just restarted) is asked again.
    pub async fn wait_ids_settled(
        &self,
        ids: &[uuid::Uuid],
        limit: Duration,
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let deadline = Instant::now() + limit;
        loop {
            let settled = self.settled_among(ids).await;
            if let Ok(settled) = &settled
                && settled.len() == ids.len()
            {
                return Ok(settled.clone());
            }
            if Instant::now() >= deadline {
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
