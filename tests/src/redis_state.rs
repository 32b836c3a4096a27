//! Reading what the host keeps in a namespace's Redis: the holds on pending transfers, and the
//! cached balances that must agree with the ledger.

use anyhow::Context;

use crate::Namespace;

/// One hold still in Redis: the transfer it belongs to and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub transaction_id: String,
    pub user_id: i64,
    pub currency: String,
    pub amount_minor: i64,
}

impl Namespace {
    /// Every hold in the namespace's `holds:{user_id}:{currency}` hashes (the `total` fields
    /// left out).
    pub async fn holds(&self) -> anyhow::Result<Vec<Held>> {
        use redis::AsyncCommands;
        let mut redis = self.redis().await?;
        let prefix = self.redis_key("holds:");
        // KEYS is fine here: a test's namespace holds a few dozen keys.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut redis)
            .await?;
        let mut holds = Vec::new();
        for key in keys {
            let Some((user, currency)) = key[prefix.len()..].split_once(':') else {
                continue;
            };
            let user_id: i64 = user.parse().with_context(|| format!("hold key {key}"))?;
            let fields: Vec<(String, i64)> = redis.hgetall(&key).await?;
            for (transaction_id, amount_minor) in fields {
                if transaction_id != "total" {
                    holds.push(Held {
                        transaction_id,
                        user_id,
                        currency: currency.to_string(),
                        amount_minor,
                    });
                }
            }
        }
        Ok(holds)
    }

    /// User accounts whose cached balance exists and differs from the ledger: (user, currency,
    /// cached, ledger). A missing cache entry is fine (read from the ledger on demand).
    pub async fn cache_off_ledger(&self) -> anyhow::Result<Vec<(i64, String, i64, i64)>> {
        use redis::AsyncCommands;
        let pool = self.ledger().await?;
        let accounts: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT user_id, currency, balance_minor - pending_debits_minor FROM accounts WHERE user_id > 0 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        let mut redis = self.redis().await?;
        let mut off = Vec::new();
        for (user_id, currency, ledger) in accounts {
            let cached: Option<i64> = redis
                .get(self.redis_key(&format!("balance:{user_id}:{currency}")))
                .await?;
            if let Some(cached) = cached
                && cached != ledger
            {
                off.push((user_id, currency, cached, ledger));
            }
        }
        Ok(off)
    }
}
