//! The journal's hash chain (migration 0014): every transaction that writes journal entries
//! writes them here, as one journal batch whose hash covers its entries and the hash of the
//! batch before it. Settlement and deposits both call [`append`], after locking their accounts;
//! `journal_verify` walks the chain back. Its errors are sqlx's, which every caller's error
//! already converts, so this file needs nothing of the ledger's other files.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// The hash the first batch chains from.
const NO_PREVIOUS: [u8; 32] = [0; 32];

/// An entry to write: what moves, before the ledger numbers and stamps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub transaction_id: Uuid,
    pub user_id: i64,
    pub currency: String,
    /// Negative for the sender, positive for the receiver.
    pub amount_minor: i64,
    /// The account's balance just after this entry.
    pub balance_after_minor: i64,
}

/// An entry as the ledger recorded it: everything its batch's hash covers.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedEntry {
    pub entry_id: i64,
    pub transaction_id: Uuid,
    pub user_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub created_at: DateTime<Utc>,
}

impl RecordedEntry {
    /// The canonical encoding, byte for byte what migration 0014's `journal_entry_bytes`
    /// makes of the same row: the integers big-endian, the currency after its length.
    fn write_to(&self, hasher: &mut Sha256) {
        hasher.update(self.entry_id.to_be_bytes());
        hasher.update(self.transaction_id.as_bytes());
        hasher.update(self.user_id.to_be_bytes());
        hasher.update(self.amount_minor.to_be_bytes());
        hasher.update(self.balance_after_minor.to_be_bytes());
        hasher.update(self.created_at.timestamp_micros().to_be_bytes());
        let currency = self.currency.as_bytes();
        // A currency longer than 4 GiB is no row PostgreSQL can store.
        let length = u32::try_from(currency.len()).unwrap_or(u32::MAX);
        hasher.update(length.to_be_bytes());
        hasher.update(currency);
    }
}

/// A batch's hash, fed its entries in entry_id order.
pub struct BatchHasher {
    hasher: Sha256,
}

impl BatchHasher {
    /// Starts the hash of the batch after the one whose hash is `previous` (`None`: the first).
    pub fn new(previous: Option<&[u8]>) -> BatchHasher {
        let mut hasher = Sha256::new();
        hasher.update(previous.unwrap_or(&NO_PREVIOUS));
        BatchHasher { hasher }
    }

    pub fn add(&mut self, entry: &RecordedEntry) {
        entry.write_to(&mut self.hasher);
    }

    pub fn finish(self) -> Vec<u8> {
        self.hasher.finalize().to_vec()
    }
}

/// Writes `entries` as the next journal batch of `transaction`, which must already hold the
/// locks of every account they touch: locks the chain's head (held to the commit, so batches
/// chain in commit order; always after the account locks, so no lock cycle), inserts the
/// entries with their batch's number and seals the batch. Three statements whatever the
/// number of entries. Returns the batch's number; writes nothing for no entries.
pub async fn append(
    transaction: &mut PgConnection,
    entries: &[NewEntry],
) -> Result<Option<i64>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(None);
    }
    let (batch_id, previous): (i64, Option<Vec<u8>>) = sqlx::query_as(
        "UPDATE journal_chain_head SET batch_id = batch_id + 1 RETURNING batch_id, hash",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let mut recorded: Vec<RecordedEntry> = sqlx::query_as(
        "INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor,
                                     balance_after_minor, journal_batch)
         SELECT t.*, $6
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[])
              AS t(transaction_id, user_id, currency, amount_minor, balance_after_minor)
         RETURNING entry_id, transaction_id, user_id, currency, amount_minor, balance_after_minor,
                   created_at",
    )
    .bind(entries.iter().map(|e| e.transaction_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.amount_minor).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.balance_after_minor)
            .collect::<Vec<_>>(),
    )
    .bind(batch_id)
    .fetch_all(&mut *transaction)
    .await?;
    recorded.sort_by_key(|entry| entry.entry_id);
    let mut hasher = BatchHasher::new(previous.as_deref());
    recorded.iter().for_each(|entry| hasher.add(entry));
    let hash = hasher.finish();
    sqlx::query(
        "WITH sealed AS (
             INSERT INTO journal_batches (batch_id, previous_hash, hash, entry_count)
             VALUES ($1, $2, $3, $4))
         UPDATE journal_chain_head SET hash = $3",
    )
    .bind(batch_id)
    .bind(previous)
    .bind(&hash)
    .bind(recorded.len() as i64)
    .execute(&mut *transaction)
    .await?;
    Ok(Some(batch_id))
}
