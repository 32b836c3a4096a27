//! The `guest_decisions` table: each decided transfer's provenance, as the conformance vector
//! it is (`guest::provenance` builds it). Written in batches, the first decision of a
//! transaction id winning; read one at a time for a replay, or as a stream for a backtest;
//! trimmed to the retention in bounded chunks.

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use sqlx::PgPool;
use uuid::Uuid;

/// Most rows one retention pass deletes in one statement.
pub const DELETE_CHUNK_ROWS: i64 = 5_000;

/// One recorded decision.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredDecision {
    pub transaction_id: Uuid,
    pub decided_at: DateTime<Utc>,
    pub guest_version: String,
    pub wit_package: String,
    /// The vector's JSON text, as written.
    pub vector: String,
}

/// Which recorded decisions a backtest reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The newest `n`.
    Last(i64),
    /// Those decided at or after this moment, oldest first, at most `limit`.
    Since { at: DateTime<Utc>, limit: i64 },
}

/// Writes `rows` in one statement; a transaction id already recorded keeps its first decision.
/// Returns how many rows were new.
pub async fn insert(pool: &PgPool, rows: &[StoredDecision]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.transaction_id).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|row| row.decided_at).collect();
    let versions: Vec<&str> = rows.iter().map(|row| row.guest_version.as_str()).collect();
    let packages: Vec<&str> = rows.iter().map(|row| row.wit_package.as_str()).collect();
    let vectors: Vec<&str> = rows.iter().map(|row| row.vector.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO guest_decisions (transaction_id, decided_at, guest_version, wit_package, vector)
         SELECT id, at, version, package, vector::json
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[])
              AS u(id, at, version, package, vector)
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&at)
    .bind(&versions)
    .bind(&packages)
    .bind(&vectors)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes at most [`DELETE_CHUNK_ROWS`] decisions made before `before`; returns how many.
pub async fn delete_before(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM guest_decisions WHERE transaction_id IN (
             SELECT transaction_id FROM guest_decisions WHERE decided_at < $1 LIMIT $2)",
    )
    .bind(before)
    .bind(DELETE_CHUNK_ROWS)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The recorded decision of `transaction_id`, if one was kept.
pub async fn get(
    pool: &PgPool,
    transaction_id: Uuid,
) -> Result<Option<StoredDecision>, sqlx::Error> {
    sqlx::query_as(
        "SELECT transaction_id, decided_at, guest_version, wit_package, vector::text AS vector
         FROM guest_decisions WHERE transaction_id = $1",
    )
    .bind(transaction_id)
    .fetch_optional(pool)
    .await
}

/// The decisions `selection` names, one row at a time.
pub fn select(
    pool: &PgPool,
    selection: Selection,
) -> BoxStream<'_, Result<StoredDecision, sqlx::Error>> {
    match selection {
        Selection::Last(n) => sqlx::query_as(
            "SELECT transaction_id, decided_at, guest_version, wit_package, vector::text AS vector
             FROM guest_decisions ORDER BY decided_at DESC LIMIT $1",
        )
        .bind(n)
        .fetch(pool),
        Selection::Since { at, limit } => sqlx::query_as(
            "SELECT transaction_id, decided_at, guest_version, wit_package, vector::text AS vector
             FROM guest_decisions WHERE decided_at >= $1 ORDER BY decided_at LIMIT $2",
        )
        .bind(at)
        .bind(limit)
        .fetch(pool),
    }
}
