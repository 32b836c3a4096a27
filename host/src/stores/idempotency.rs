//! Idempotency keys in PostgreSQL (shared by every replica, kept across restarts).
//!
//! A key, scoped to its caller, is bound to one request body (by hash) and one transaction id
//! for good. The first request claims it for a lease; a final answer (200, or a 4xx that
//! changed nothing) is stored and replayed to every repeat; an unfinished one (a 503, in doubt
//! or not, a 500, a crash) leaves the key to the next repeat, which takes it over with the
//! same transaction id: whatever the first attempt may have written to the log, settlement
//! applies that id once.
//!
//! Each takeover moves the key's claim generation on. An attempt's [`KeyLease`] names the
//! generation it claimed: the attempt publishes, releases a hold and gives up its key only
//! while the lease is still its own (by its own clock while the lease it took has time left,
//! otherwise by renewing it in PostgreSQL for its generation), and its answer is stored only
//! for its generation. An attempt that outlived its lease and lost the key to a retry can
//! neither publish nor release the retry's hold nor overwrite the retry's answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::stores::batch::{Batcher, Limits};
use crate::stores::postgres::LedgerError;

/// Longest key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// What a request may do with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the key: process it with this transaction id. `retry` when an
    /// earlier attempt with the key did not finish; `generation` counts the takeovers.
    Owned {
        transaction_id: Uuid,
        retry: bool,
        generation: i64,
    },
    /// A request with this key and body finished: answer what it answered.
    Replay {
        status: u16,
        body: serde_json::Value,
        transaction_id: Uuid,
    },
    /// The key was used with a different request.
    Mismatch,
    /// The first request with this key is still being processed.
    InFlight,
}

/// Why a key cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    Malformed,
}

/// Checks a key as sent: 1 to [`MAX_KEY_CHARS`] visible ASCII characters.
pub fn parse_key(raw: &[u8]) -> Result<&str, KeyError> {
    let valid = !raw.is_empty()
        && raw.len() <= MAX_KEY_CHARS
        && raw
            .iter()
            .all(|byte| byte.is_ascii_graphic() || *byte == b' ');
    if !valid {
        return Err(KeyError::Malformed);
    }
    std::str::from_utf8(raw).map_err(|_| KeyError::Malformed)
}

/// The hash a key is bound to: the route and the body as parsed JSON (so spacing and key
/// order do not make a repeat look different).
pub fn request_hash(route: &str, body: &serde_json::Value) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(canonical(body).as_bytes());
    hasher.finalize().to_vec()
}

/// JSON with object keys sorted at every level.
fn canonical(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|left, right| left.0.cmp(right.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| format!("{}:{}", Value::from(key.as_str()), canonical(value)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// A first request's claim, as the batched insert takes it.
struct NewClaim {
    scope: String,
    key: String,
    hash: Vec<u8>,
    transaction_id: Uuid,
    lease_ms: i64,
}

/// The final answer of the request that holds a key, to store against it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub scope: String,
    pub key: String,
    /// What the key was claimed with: an answer is stored only on the row of its own
    /// transaction id, and puts back a row that was purged meanwhile.
    pub request_hash: Vec<u8>,
    pub transaction_id: Uuid,
    /// The claim generation of the request that answers: a later one's answer stays.
    pub generation: i64,
    pub status: u16,
    pub body: serde_json::Value,
}

/// Most claims (or answers) written in one statement.
const MAX_BATCH: usize = 256;

/// Batches of each kind running at once: each holds a pooled connection for one statement.
/// One: what queues behind it goes into the next statement, so under load PostgreSQL commits
/// fewer, larger batches, which costs it fewer write transactions and less CPU per transfer
/// than two batches at once do.
const MAX_BATCHES_IN_FLIGHT: usize = 1;

/// Claims and answers waiting for a batch; requests beyond it wait for room.
const MAX_QUEUED: usize = 4_096;

const LIMITS: Limits = Limits {
    max_items: MAX_BATCH,
    max_in_flight: MAX_BATCHES_IN_FLIGHT,
    queue_capacity: MAX_QUEUED,
};

/// Every request with a key writes it twice, its claim and its answer; under load those are
/// many requests' rows in one statement each (`stores::batch`), so a key costs PostgreSQL a
/// share of a transaction instead of two.
#[derive(Clone)]
pub struct IdempotencyKeys {
    pool: PgPool,
    /// Claims of keys never seen: `true` when this request's row went in.
    inserts: Batcher<NewClaim, bool, LedgerError>,
    answers: Batcher<Answer, (), LedgerError>,
}

type Row = (
    Vec<u8>,
    Uuid,
    Option<i16>,
    Option<serde_json::Value>,
    bool,
    i64,
);

impl IdempotencyKeys {
    /// Starts the batchers on the current tokio runtime.
    pub fn new(pool: PgPool) -> IdempotencyKeys {
        let inserts = {
            let pool = pool.clone();
            Batcher::spawn(LIMITS, move |claims| insert_claims(pool.clone(), claims))
        };
        let answers = {
            let pool = pool.clone();
            Batcher::spawn(LIMITS, move |answers| store_answers(pool.clone(), answers))
        };
        IdempotencyKeys {
            pool,
            inserts,
            answers,
        }
    }

    /// Claims `key` in `scope` for a request with `hash`, holding it for `lease` (longer than
    /// any request takes). `transaction_id` is the id a first request gets.
    pub async fn claim(
        &self,
        scope: &str,
        key: &str,
        hash: &[u8],
        transaction_id: Uuid,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        // The common case, a key never seen, is a row in the next batched insert; only a key
        // that exists needs the transaction below.
        let inserted = self
            .inserts
            .submit(NewClaim {
                scope: scope.to_string(),
                key: key.to_string(),
                hash: hash.to_vec(),
                transaction_id,
                lease_ms,
            })
            .await
            .map_err(LedgerError::from)?;
        if inserted {
            return Ok(Claim::Owned {
                transaction_id,
                retry: false,
                generation: 0,
            });
        }
        self.claim_existing(scope, key, hash, lease_ms).await
    }

    /// A key that has a row: replayed, refused, in flight, or taken over after an unfinished
    /// attempt (the lease renewed, the stored transaction id kept).
    async fn claim_existing(
        &self,
        scope: &str,
        key: &str,
        hash: &[u8],
        lease_ms: i64,
    ) -> Result<Claim, LedgerError> {
        let mut transaction = self.pool.begin().await?;
        let (stored_hash, stored_id, status, body, locked, generation): Row = sqlx::query_as(
            "SELECT request_hash, transaction_id, response_status, response_body, locked_until > now(),
                    claim_generation
             FROM idempotency_keys WHERE scope = $1 AND idempotency_key = $2 FOR UPDATE",
        )
        .bind(scope)
        .bind(key)
        .fetch_one(&mut *transaction)
        .await?;
        let claim = match (status, body) {
            _ if stored_hash != hash => Claim::Mismatch,
            (Some(status), Some(body)) => Claim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body,
                transaction_id: stored_id,
            },
            _ if locked => Claim::InFlight,
            _ => {
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until = now() + $3 * interval '1 millisecond',
                         claim_generation = $4
                     WHERE scope = $1 AND idempotency_key = $2",
                )
                .bind(scope)
                .bind(key)
                .bind(lease_ms)
                .bind(generation + 1)
                .execute(&mut *transaction)
                .await?;
                Claim::Owned {
                    transaction_id: stored_id,
                    retry: true,
                    generation: generation + 1,
                }
            }
        };
        transaction.commit().await?;
        Ok(claim)
    }

    /// Stores the final answer of the request that holds the key; returns once it is
    /// committed.
    pub async fn finish(&self, answer: Answer) -> Result<(), LedgerError> {
        self.answers.submit(answer).await.map_err(LedgerError::from)
    }

    /// Ends the lease of a request that did not finish, when the key is still its claim
    /// (`generation`): the next repeat takes the key over.
    pub async fn abandon(
        &self,
        scope: &str,
        key: &str,
        generation: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE idempotency_keys SET locked_until = now()
             WHERE scope = $1 AND idempotency_key = $2 AND response_status IS NULL
               AND claim_generation = $3",
        )
        .bind(scope)
        .bind(key)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Holds the key for `lease` more from now, if it is still the unanswered claim of
    /// `generation`; `false` when a retry took it over (or an answer was stored).
    pub async fn renew(
        &self,
        scope: &str,
        key: &str,
        generation: i64,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let renewed = sqlx::query(
            "UPDATE idempotency_keys
             SET locked_until = GREATEST(locked_until, now() + $4 * interval '1 millisecond')
             WHERE scope = $1 AND idempotency_key = $2 AND response_status IS NULL
               AND claim_generation = $3",
        )
        .bind(scope)
        .bind(key)
        .bind(generation)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }
}

/// One attempt's claim on its key, shared by what acts for the attempt (the decision, its
/// publish, the handler that answers). Cheap to clone.
#[derive(Clone)]
pub struct KeyLease {
    keys: IdempotencyKeys,
    scope: String,
    key: String,
    generation: i64,
    lease: Duration,
    /// The longest one act takes once it is allowed (a publish: the guest timeout bounds it).
    act_within: Duration,
    /// Until when, by this process's clock, nobody can take the key over (the lease counted
    /// from before the statement that took it); `None` once the attempt has lost or given up
    /// its key.
    until: Arc<Mutex<Option<Instant>>>,
}

impl KeyLease {
    /// The lease of a claim of `generation` sent at `claimed_at`.
    pub fn new(
        keys: IdempotencyKeys,
        scope: String,
        key: String,
        generation: i64,
        claimed_at: Instant,
        lease: Duration,
        act_within: Duration,
    ) -> KeyLease {
        KeyLease {
            keys,
            scope,
            key,
            generation,
            lease,
            act_within,
            until: Arc::new(Mutex::new(Some(claimed_at + lease))),
        }
    }

    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Until when the key is certainly this attempt's; `None` once it is not.
    pub fn until(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this attempt may still act on its key for one act: yes while its lease has an
    /// act's time left by its own clock; otherwise only if PostgreSQL renews the lease for its
    /// generation (no retry took it over meanwhile). `false` when that cannot be asked.
    pub async fn still_held(&self) -> bool {
        let Some(until) = self.until() else {
            return false;
        };
        if until.saturating_duration_since(Instant::now()) >= self.act_within {
            return true;
        }
        let asked_at = Instant::now();
        let renewed = self
            .keys
            .renew(&self.scope, &self.key, self.generation, self.lease)
            .await;
        let mut kept = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match renewed {
            Ok(true) if kept.is_some() => {
                *kept = Some(asked_at + self.lease);
                true
            }
            Ok(_) => {
                *kept = None;
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot confirm an idempotency key's lease; not acting on it");
                false
            }
        }
    }

    /// Gives the key up: nothing acts on it for this attempt from here on.
    pub fn give_up(&self) {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Gives the key up and ends its lease in PostgreSQL, unless a retry holds it already.
    pub async fn abandon(&self) -> Result<(), LedgerError> {
        self.give_up();
        self.keys
            .abandon(&self.scope, &self.key, self.generation)
            .await
    }
}

/// Whether an attempt may act on its transaction: always without a key, else while its
/// claim on the key stands ([`KeyLease::still_held`]).
pub async fn may_act(lease: Option<&KeyLease>) -> bool {
    match lease {
        Some(lease) => lease.still_held().await,
        None => true,
    }
}

/// Most keys one purge statement deletes: a short transaction each, however many expired.
const PURGE_BATCH: i64 = 10_000;

/// Most purge statements in one pass; what is left waits for the next pass.
const PURGE_BATCHES_PER_PASS: u32 = 100;

/// Deletes keys older than `retention`, at most [`PURGE_BATCH`] per statement and
/// [`PURGE_BATCHES_PER_PASS`] statements; returns how many.
pub async fn purge_older_than(pool: &PgPool, retention: Duration) -> Result<u64, LedgerError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut purged = 0;
    for _ in 0..PURGE_BATCHES_PER_PASS {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (scope, idempotency_key) IN (
                 SELECT scope, idempotency_key FROM idempotency_keys
                 WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
        )
        .bind(retention_ms)
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged += deleted;
        if deleted < PURGE_BATCH as u64 {
            break;
        }
    }
    Ok(purged)
}

/// Inserts the claims of keys not seen before in one statement; `true` for each claim whose
/// row went in. A key that exists, or that an earlier claim in the same batch took (the same
/// key sent twice at once), is left alone: its claim reads the row it finds. Rows go in in
/// key order, so two batches that share keys wait for each other in the same order instead of
/// deadlocking.
async fn insert_claims(pool: PgPool, claims: Vec<NewClaim>) -> Result<Vec<bool>, LedgerError> {
    // Each request mints its own id: the ids are how the inserted rows find their claims.
    let distinct: HashSet<Uuid> = claims.iter().map(|claim| claim.transaction_id).collect();
    assert_eq!(
        distinct.len(),
        claims.len(),
        "claims carry distinct transaction ids"
    );
    let mut order: Vec<&NewClaim> = claims.iter().collect();
    order.sort_by(|left, right| (&left.scope, &left.key).cmp(&(&right.scope, &right.key)));
    let mut scopes = Vec::with_capacity(order.len());
    let mut keys = Vec::with_capacity(order.len());
    let mut hashes = Vec::with_capacity(order.len());
    let mut ids = Vec::with_capacity(order.len());
    let mut leases = Vec::with_capacity(order.len());
    for claim in order {
        scopes.push(claim.scope.as_str());
        keys.push(claim.key.as_str());
        hashes.push(claim.hash.as_slice());
        ids.push(claim.transaction_id);
        leases.push(claim.lease_ms);
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (scope, idempotency_key, request_hash, transaction_id, locked_until)
         SELECT scope, idempotency_key, request_hash, transaction_id,
                now() + lease_ms * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::bigint[])
              WITH ORDINALITY AS claim (scope, idempotency_key, request_hash, transaction_id, lease_ms, position)
         ORDER BY position
         ON CONFLICT DO NOTHING RETURNING transaction_id",
    )
    .bind(&scopes)
    .bind(&keys)
    .bind(&hashes)
    .bind(&ids)
    .bind(&leases)
    .fetch_all(&pool)
    .await?;
    let inserted: HashSet<Uuid> = inserted.into_iter().collect();
    Ok(claims
        .iter()
        .map(|claim| inserted.contains(&claim.transaction_id))
        .collect())
}

/// Stores final answers in one statement, in key order (see [`insert_claims`]). An upsert
/// rather than an update joined on the arrays: the unique index finds each row whatever the
/// table's statistics say (a join's plan cached while the table was empty scans all of it
/// for every batch once it has grown, and this machine runs without autovacuum). An answer
/// is stored only over its own claim (transaction id and generation): a request that outlived
/// its lease does not overwrite the answer of the retry that took the key over. Two answers
/// for one key in a batch cannot both go into one upsert: the later generation's is kept.
async fn store_answers(pool: PgPool, mut answers: Vec<Answer>) -> Result<Vec<()>, LedgerError> {
    let count = answers.len();
    answers.sort_by(|left, right| {
        (&left.scope, &left.key, left.generation).cmp(&(&right.scope, &right.key, right.generation))
    });
    answers.dedup_by(|later, earlier| {
        let same = (&later.scope, &later.key) == (&earlier.scope, &earlier.key);
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    let mut scopes = Vec::with_capacity(answers.len());
    let mut keys = Vec::with_capacity(answers.len());
    let mut hashes = Vec::with_capacity(answers.len());
    let mut ids = Vec::with_capacity(answers.len());
    let mut generations = Vec::with_capacity(answers.len());
    let mut statuses = Vec::with_capacity(answers.len());
    let mut bodies = Vec::with_capacity(answers.len());
    for answer in answers {
        scopes.push(answer.scope);
        keys.push(answer.key);
        hashes.push(answer.request_hash);
        ids.push(answer.transaction_id);
        generations.push(answer.generation);
        statuses.push(i16::try_from(answer.status).unwrap_or(500));
        bodies.push(answer.body);
    }
    sqlx::query(
        "INSERT INTO idempotency_keys AS stored
             (scope, idempotency_key, request_hash, transaction_id, response_status, response_body,
              locked_until, claim_generation)
         SELECT scope, idempotency_key, request_hash, transaction_id, status, body, now(), generation
         FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::smallint[], $6::jsonb[],
                     $7::bigint[])
              AS answer (scope, idempotency_key, request_hash, transaction_id, status, body, generation)
         ON CONFLICT (scope, idempotency_key) DO UPDATE
         SET response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
             locked_until = now()
         WHERE stored.transaction_id = EXCLUDED.transaction_id
           AND stored.claim_generation = EXCLUDED.claim_generation",
    )
    .bind(&scopes)
    .bind(&keys)
    .bind(&hashes)
    .bind(&ids)
    .bind(&statuses)
    .bind(&bodies)
    .bind(&generations)
    .execute(&pool)
    .await?;
    Ok(vec![(); count])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert_eq!(parse_key(b"order-42 retry"), Ok("order-42 retry"));
        assert!(parse_key(b"").is_err());
        assert!(parse_key(&[b'k'; 256]).is_err());
        assert!(parse_key(&[b'k'; 255]).is_ok());
        assert!(parse_key("caf\u{e9}".as_bytes()).is_err());
        assert!(parse_key(b"tab\there").is_err());
    }

    #[test]
    fn the_hash_ignores_spacing_and_key_order_but_not_values_or_route() {
        let one = json!({"sender_id": 1, "amount": "1.00", "nested": {"b": 1, "a": [2, 1]}});
        let reordered: serde_json::Value = serde_json::from_str(
            r#"{ "nested": {"a": [2, 1], "b": 1}, "amount": "1.00", "sender_id": 1 }"#,
        )
        .expect("json");
        assert_eq!(
            request_hash("/transfers", &one),
            request_hash("/transfers", &reordered)
        );
        let other = json!({"sender_id": 1, "amount": "1.01", "nested": {"b": 1, "a": [2, 1]}});
        assert_ne!(
            request_hash("/transfers", &one),
            request_hash("/transfers", &other)
        );
        assert_ne!(
            request_hash("/transfers", &one),
            request_hash("/admin/deposits", &one)
        );
        let swapped = json!({"sender_id": 1, "amount": "1.00", "nested": {"b": 1, "a": [1, 2]}});
        assert_ne!(
            request_hash("/transfers", &one),
            request_hash("/transfers", &swapped)
        );
    }

    proptest! {
        /// The canonical form is JSON that reads back as the same value.
        #[test]
        fn the_canonical_form_is_the_same_json(keys in proptest::collection::vec("[a-z\"\\\\]{0,6}", 0..6), numbers in proptest::collection::vec(any::<i64>(), 0..6)) {
            let value: serde_json::Value = keys
                .iter()
                .zip(numbers.iter().chain(std::iter::repeat(&0)))
                .map(|(key, number)| (key.clone(), json!([number, {"k": key}])))
                .collect::<serde_json::Map<_, _>>()
                .into();
            let read: serde_json::Value = serde_json::from_str(&canonical(&value)).expect("valid json");
            prop_assert_eq!(read, value);
        }
    }
}
