//! What settlement does when a topic it reads is created again: it forgets its positions in
//! it. A file of its own because the Kafka store runs it (as its
//! [`ForgetPositions`](crate::stores::kafka::ForgetPositions)) while it creates topics, outside
//! any settlement transaction: the positions are settlement's table, so their SQL is here, and
//! the store only says when.

use futures::future::BoxFuture;
use sqlx::PgPool;

/// Forgets settlement's positions in `topic` (physical name), and the fingerprints that go
/// with them: they count offsets in a log that is gone. Run before the topic is created
/// again, so the next worker settles the new log from offset 0. The topic's log generation
/// moves on, so a worker still holding a batch of the old log has it refused and starts over
/// from the ledger's positions (`settlement::ledger`). Returns how many partitions had
/// positions.
pub fn forget_positions<'a>(
    ledger: &'a PgPool,
    topic: &'a str,
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        let forgotten = sqlx::query(
            "UPDATE settlement_positions
             SET next_offset = 0, last_payload_sha256 = NULL, log_generation = log_generation + 1,
                 updated_at = now()
             WHERE topic = $1",
        )
        .bind(topic)
        .execute(ledger)
        .await?;
        Ok(forgotten.rows_affected())
    })
}
