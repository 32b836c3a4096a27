//! Names private to one test (a database, a Redis key prefix, a topic prefix) and connections
//! to them, so tests run in parallel and never see each other's data.

use crate::{POSTGRES_ADMIN_URL, REDIS_URL, stale};

/// Names private to one test: a database, a Redis key prefix, a topic prefix.
pub struct Namespace {
    pub id: String,
    pub database: String,
}

impl Namespace {
    pub async fn new() -> anyhow::Result<Namespace> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database = stale::database_name(&id, stale::now_unix_s());
        let admin = sqlx::PgPool::connect(POSTGRES_ADMIN_URL).await?;
        stale::sweep_once(&admin).await;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(Namespace { id, database })
    }

    pub fn database_url(&self) -> String {
        self.database_url_via(5432)
    }

    pub fn database_url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.database)
    }

    pub fn redis_prefix(&self) -> String {
        format!("t{}:", self.id)
    }

    pub fn topic_prefix(&self) -> String {
        format!("t{}.", self.id)
    }

    pub fn transfer_topic(&self) -> String {
        format!("{}transfer_topic", self.topic_prefix())
    }

    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.redis_prefix())
    }

    pub async fn ledger(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.database_url()).await?)
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(REDIS_URL)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The settled balance in the ledger, in minor units.
    pub async fn ledger_balance(
        &self,
        user_id: i64,
        currency: &str,
    ) -> anyhow::Result<Option<i64>> {
        let pool = self.ledger().await?;
        let balance = sqlx::query_scalar(
            "SELECT balance_minor FROM accounts WHERE user_id = $1 AND currency = $2",
        )
        .bind(user_id)
        .bind(currency)
        .fetch_optional(&pool)
        .await?;
        pool.close().await;
        Ok(balance)
    }
}
