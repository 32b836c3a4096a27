//! The ledger in PostgreSQL: the authority on balances.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Services;

/// A settled balance and the version it was read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance_minor: i64,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the balance would exceed the largest amount an account can hold")]
    Overflow,
    #[error("migrating the ledger database failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        // 22003: numeric_value_out_of_range, what BIGINT overflow raises.
        if let sqlx::Error::Database(database_error) = &error
            && database_error.code().as_deref() == Some("22003")
        {
            return LedgerError::Overflow;
        }
        LedgerError::Unavailable(error)
    }
}

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
}

impl Ledger {
    /// Creates the pool without connecting: connections are made (and remade after an outage)
    /// on demand, each within the configured timeout.
    pub async fn connect(services: &Services) -> Result<Ledger, LedgerError> {
        let pool = PgPoolOptions::new()
            .max_connections(services.database_connections)
            .acquire_timeout(services.database_timeout())
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy(&services.database_url)
            .map_err(LedgerError::Unavailable)?;
        Ok(Ledger { pool })
    }

    /// Applies the migrations in `migrations/`; safe to run again and from several replicas.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// The settled balance of an account, or `None` when it has none in that currency.
    pub async fn balance(
        &self,
        user_id: i64,
        currency: &str,
    ) -> Result<Option<Balance>, LedgerError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT balance_minor, version FROM accounts WHERE user_id = $1 AND currency = $2",
        )
        .bind(user_id)
        .bind(currency)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(balance_minor, version)| Balance {
            balance_minor,
            version,
        }))
    }

    /// Adds money to an account, creating it if needed; returns the new balance.
    pub async fn deposit(
        &self,
        user_id: i64,
        currency: &str,
        amount_minor: i64,
    ) -> Result<Balance, LedgerError> {
        assert!(amount_minor > 0, "a deposit adds money");
        let (balance_minor, version): (i64, i64) = sqlx::query_as(
            "INSERT INTO accounts (user_id, currency, balance_minor, version) VALUES ($1, $2, $3, 1)
             ON CONFLICT (user_id, currency) DO UPDATE
             SET balance_minor = accounts.balance_minor + EXCLUDED.balance_minor,
                 version = accounts.version + 1,
                 updated_at = now()
             RETURNING balance_minor, version",
        )
        .bind(user_id)
        .bind(currency)
        .bind(amount_minor)
        .fetch_one(&self.pool)
        .await?;
        Ok(Balance {
            balance_minor,
            version,
        })
    }
}
