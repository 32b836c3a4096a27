//! The quarantine: transfer-log messages settlement cannot apply, set aside so that every
//! message behind them still settles.
//!
//! A message lands here when it is not a transfer message (`TransferMessage::parse` refuses
//! it) or when the ledger refuses its data (found by bisecting a refused batch, see
//! `Settlements::refused`). Its row is written in the transaction that moves settlement's
//! position past it; after the commit it is copied to the dead-letter topic, its hold (when its
//! id, sender and currency could be read) is released, and `GET /transfers/{id}` answers it as
//! rejected, reason `unprocessable` (`Reason::Unprocessable`). An operator re-drives one with
//! `Settlements::retry` once its cause is fixed.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::stores::postgres::LedgerError;

/// Longest error text kept with a quarantined message.
const MAX_ERROR_CHARS: usize = 1_000;

/// A message settlement set aside, where it was in the log, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub error: String,
    pub found: Found,
}

impl Quarantined {
    pub fn new(partition: i32, offset: i64, payload: &[u8], error: &str) -> Quarantined {
        // The error may quote the message; what the ledger cannot store must not stop the
        // quarantine too.
        let error: String = error
            .replace('\0', "\\u0000")
            .chars()
            .take(MAX_ERROR_CHARS)
            .collect();
        Quarantined {
            partition,
            offset,
            payload: payload.to_vec(),
            error,
            found: Found::read(payload),
        }
    }
}

/// What could be read of a message that is not a transfer settlement can apply: each field
/// when it is there with the right type and storable text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub transaction_id: Option<Uuid>,
    pub sender_id: Option<i64>,
    pub receiver_id: Option<i64>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
}

impl Found {
    pub fn read(payload: &[u8]) -> Found {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) else {
            return Found::default();
        };
        let text = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_str)
                .filter(|text| text.len() <= 64 && transferd_message::printable(text))
        };
        Found {
            transaction_id: text("transaction_id").and_then(|id| id.parse().ok()),
            sender_id: fields.get("sender_id").and_then(Value::as_i64),
            receiver_id: fields.get("receiver_id").and_then(Value::as_i64),
            amount_minor: fields.get("amount_minor").and_then(Value::as_i64),
            currency: text("currency").map(str::to_string),
        }
    }
}

type Transaction<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Records `quarantined` messages of `topic` (in log generation `generation`), in the
/// settlement transaction. A message already recorded (the batch read again after a crash)
/// keeps its row.
pub async fn record(
    transaction: &mut Transaction<'_>,
    topic: &str,
    generation: i64,
    quarantined: &[Quarantined],
) -> Result<(), LedgerError> {
    for message in quarantined {
        let found = &message.found;
        sqlx::query(
            "INSERT INTO settlement_quarantine (topic, log_generation, partition, log_offset,
                 payload, error, transaction_id, sender_id, receiver_id, amount_minor, currency)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT ON CONSTRAINT one_row_per_message DO NOTHING",
        )
        .bind(topic)
        .bind(generation)
        .bind(message.partition)
        .bind(message.offset)
        .bind(&message.payload)
        .bind(&message.error)
        .bind(found.transaction_id)
        .bind(found.sender_id)
        .bind(found.receiver_id)
        .bind(found.amount_minor)
        .bind(&found.currency)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// One quarantined message, as an operator sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub quarantine_id: i64,
    pub topic: String,
    pub log_generation: i64,
    pub partition: i32,
    pub log_offset: i64,
    pub payload: Vec<u8>,
    pub error: String,
    pub transaction_id: Option<Uuid>,
    pub sender_id: Option<i64>,
    pub receiver_id: Option<i64>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub quarantined_at: DateTime<Utc>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub retried_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "quarantine_id, topic, log_generation, partition, log_offset, payload, error,
     transaction_id, sender_id, receiver_id, amount_minor, currency, quarantined_at,
     dead_lettered_at, retried_at";

/// The quarantine's rows, newest first, at most `limit`.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<Entry>, LedgerError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_quarantine ORDER BY quarantine_id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The message at `partition:offset` of `topic`, in the newest log generation that has one.
pub async fn find(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<Entry>, LedgerError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_quarantine
         WHERE topic = $1 AND partition = $2 AND log_offset = $3
         ORDER BY log_generation DESC LIMIT 1"
    ))
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .fetch_optional(pool)
    .await?)
}

/// The quarantined, not re-driven message of a transaction id, if any.
pub async fn of_transaction(
    pool: &PgPool,
    transaction_id: Uuid,
) -> Result<Option<Entry>, LedgerError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_quarantine
         WHERE transaction_id = $1 AND retried_at IS NULL
         ORDER BY quarantine_id DESC LIMIT 1"
    ))
    .bind(transaction_id)
    .fetch_optional(pool)
    .await?)
}

/// How many quarantined messages wait for an operator (not re-driven).
pub async fn open_count(pool: &PgPool) -> Result<i64, LedgerError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM settlement_quarantine WHERE retried_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Rows not yet on the dead-letter topic, oldest first, at most `limit`.
pub async fn not_dead_lettered(pool: &PgPool, limit: i64) -> Result<Vec<Entry>, LedgerError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_quarantine WHERE dead_lettered_at IS NULL
         ORDER BY quarantine_id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn dead_lettered(pool: &PgPool, quarantine_id: i64) -> Result<(), LedgerError> {
    sqlx::query(
        "UPDATE settlement_quarantine SET dead_lettered_at = now() WHERE quarantine_id = $1",
    )
    .bind(quarantine_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a row re-driven, in the transaction that applied it; false when it was already (a
/// concurrent retry), which then must not commit.
pub async fn mark_retried(
    transaction: &mut Transaction<'_>,
    quarantine_id: i64,
) -> Result<bool, LedgerError> {
    let marked = sqlx::query(
        "UPDATE settlement_quarantine SET retried_at = now()
         WHERE quarantine_id = $1 AND retried_at IS NULL",
    )
    .bind(quarantine_id)
    .execute(&mut **transaction)
    .await?;
    Ok(marked.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_can_be_read_of_a_bad_message_is_kept() {
        let found = Found::read(
            br#"{"transaction_id":"01a20c00-0000-7000-8000-000000000001","sender_id":3,
                 "currency":"USD","created_at_ms":9223372036854775807}"#,
        );
        assert_eq!(
            found,
            Found {
                transaction_id: "01a20c00-0000-7000-8000-000000000001".parse().ok(),
                sender_id: Some(3),
                currency: Some("USD".into()),
                ..Found::default()
            }
        );
        assert_eq!(Found::read(b"not json"), Found::default());
        assert_eq!(Found::read(b"[1]"), Found::default());
        let unstorable = Found::read(br#"{"transaction_id":"x","currency":"U\u0000SD"}"#);
        assert_eq!(unstorable, Found::default());
    }

    #[test]
    fn the_error_kept_is_storable_and_bounded() {
        let quarantined = Quarantined::new(0, 1, b"{}", &format!("a\0b{}", "x".repeat(5_000)));
        assert!(!quarantined.error.contains('\0'));
        assert_eq!(quarantined.error.chars().count(), MAX_ERROR_CHARS);
    }
}
