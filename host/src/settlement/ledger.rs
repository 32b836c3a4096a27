//! The settlement transaction. One PostgreSQL transaction per batch of transfer-log messages
//! applies the transfers to the ledger, moves settlement's position in the log past the batch,
//! and records the batch's after-commit effects as still to run. Because the position commits
//! with the ledger writes, a batch is applied exactly once whoever reads the log next, and a
//! crash between the commit and the effects loses nothing: the next worker runs the effects it
//! finds recorded (`settlement_effect_batches`, one row per batch) before it reads on.
//!
//! The position check is what makes two workers on one topic safe, not the ownership lock
//! (`ownership.rs`): a batch commits only if the position it was read from is still the one in
//! the table, so the slower of two workers fails with [`SettleError::PositionMoved`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use transferd_message::{Action, LogMessage};

use crate::settlement::decide::{
    AccountKey, Outcome, PendingTransfer, Position, Step, Transfer, decide,
};
use crate::settlement::quarantine::{self, Entry, Quarantined};
use crate::stores::journal_chain::{self, NewEntry};
use crate::stores::postgres::{Balance, LedgerError, delete_pending_in};
use crate::stores::transfer_state::{Reason, TransferKind, TransferStatus};

pub use crate::stores::log_position::Offsets;

/// How a batch moves settlement's position in `topic`: per partition, the next offset to
/// settle as this worker last saw it (`from`) and after the batch (`to`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    pub topic: String,
    /// The topic's log generation the batch was read in (see [`Settlements::generation`]).
    pub generation: i64,
    pub from: Offsets,
    pub to: Offsets,
    /// The fingerprint of the last message read in each partition of `to` (the one at
    /// `to - 1`), kept with the position (`same_log`).
    pub last_payload: super::same_log::Fingerprints,
}

impl Advance {
    /// An advance that moves no position (settling messages that did not come from the log).
    pub fn none() -> Advance {
        Advance::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "settlement's position in {topic} is not where this worker read from: another worker settled there, or the topic was created again"
    )]
    PositionMoved { topic: String },
}

/// Why a quarantined message was not re-driven.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("it was re-driven already")]
    AlreadyRetried,
    #[error("it is still not a transfer settlement can apply: {0}")]
    StillUnreadable(String),
    #[error("the ledger still refuses it: {0}")]
    StillRefused(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<sqlx::Error> for SettleError {
    fn from(error: sqlx::Error) -> Self {
        SettleError::Ledger(error.into())
    }
}

/// What settlement did with one message.
#[derive(Debug, Clone)]
pub struct SettledTransfer {
    /// The transfer: for an action, the pending transfer it resolves.
    pub transaction_id: Uuid,
    /// The message's own step: the transfer's id, or the action's (`Transfer::step_id`).
    pub step_id: Uuid,
    pub outcome: Outcome,
    /// Applied by this batch (false: applied before, a duplicate message or a recovery).
    pub newly_applied: bool,
}

/// What settlement did with a batch.
#[derive(Debug, Clone, Default)]
pub struct SettledBatch {
    /// One per message, in message order.
    pub transfers: Vec<SettledTransfer>,
    /// The committed state of every touched account that exists.
    pub accounts: BTreeMap<AccountKey, Balance>,
    /// The `settlement_effect_batches` row that records this batch's effects as still to run
    /// (`None` for a batch of no messages: nothing to run).
    pub effects: Option<i64>,
}

/// Settlement's tables: positions, the settlement transaction, outstanding effects.
#[derive(Clone)]
pub struct Settlements {
    pool: PgPool,
}

/// An account as locked: user id, currency, balance, pending debits, pending credits, version.
type LockedAccount = (i64, String, i64, i64, i64, i64);

impl Settlements {
    pub fn new(pool: PgPool) -> Settlements {
        Settlements { pool }
    }

    /// The ledger's pool, for the quarantine's own tables.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Settlement's position in each of `partitions` of `topic`; a partition never settled
    /// starts at offset 0 (its row is created).
    pub async fn positions(&self, topic: &str, partitions: &[i32]) -> Result<Offsets, LedgerError> {
        sqlx::query(
            "INSERT INTO settlement_positions (topic, partition, next_offset, log_generation)
             SELECT $1, p, 0, COALESCE(
                 (SELECT max(log_generation) FROM settlement_positions WHERE topic = $1), 0)
             FROM UNNEST($2::int[]) AS p ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(partitions)
        .execute(&self.pool)
        .await?;
        self.read_positions(topic).await
    }

    /// The topic's log generation: how many times the topic was created again while
    /// settlement had positions in it (`topic_recreated::forget_positions`). A worker
    /// reads it before its positions and names it in every [`Advance`]; read in that order, a
    /// generation that moves in between can only refuse a batch, never let a stale one in.
    pub async fn generation(&self, topic: &str) -> Result<i64, LedgerError> {
        let generation: Option<i64> = sqlx::query_scalar(
            "SELECT max(log_generation) FROM settlement_positions WHERE topic = $1",
        )
        .bind(topic)
        .fetch_one(&self.pool)
        .await?;
        Ok(generation.unwrap_or(0))
    }

    /// The fingerprint of the message before settlement's position, in every partition of
    /// `topic` that has one.
    pub async fn fingerprints(
        &self,
        topic: &str,
    ) -> Result<super::same_log::Fingerprints, LedgerError> {
        let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(
            "SELECT partition, last_payload_sha256 FROM settlement_positions
             WHERE topic = $1 AND last_payload_sha256 IS NOT NULL",
        )
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Settlement's position in every partition of `topic` it has a row for.
    pub async fn read_positions(&self, topic: &str) -> Result<Offsets, LedgerError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM settlement_positions WHERE topic = $1",
        )
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Applies a batch in one transaction: checks and moves the position, skips transaction
    /// ids already applied, locks every touched account in (user id, currency) order, decides
    /// in message order against the locked balances, writes transfers, journal entries and
    /// balances, deletes pending rows, records the effects to run and the `quarantined`
    /// messages. Returns the outcome of every transfer and the committed state of every
    /// touched account (for the cache).
    pub async fn apply(
        &self,
        transfers: &[Transfer],
        quarantined: &[Quarantined],
        advance: &Advance,
    ) -> Result<SettledBatch, SettleError> {
        let mut transaction = self.pool.begin().await?;
        check_position(&mut transaction, advance).await?;
        let settled = write_batch(&mut transaction, transfers).await?;
        quarantine::record(
            &mut transaction,
            &advance.topic,
            advance.generation,
            quarantined,
        )
        .await?;
        move_position(&mut transaction, advance).await?;
        transaction.commit().await?;
        Ok(settled)
    }

    /// The transfers of a batch the ledger refused whose data it refuses on their own, with
    /// its words, found by bisecting the batch in transactions that are rolled back. Empty
    /// when no single transfer is refused. A transient failure ends the search.
    pub async fn refused(
        &self,
        transfers: &[Transfer],
    ) -> Result<Vec<(usize, String)>, LedgerError> {
        let mut found = Vec::new();
        let mut ranges = vec![(0, transfers.len())];
        while let Some((start, end)) = ranges.pop() {
            if start == end {
                continue;
            }
            match self.probe(&transfers[start..end]).await {
                Ok(()) => {}
                Err(error) if error.refuses_data() && end - start == 1 => {
                    found.push((start, refusal(&error)));
                }
                Err(error) if error.refuses_data() => {
                    let middle = start + (end - start) / 2;
                    ranges.push((middle, end));
                    ranges.push((start, middle));
                }
                Err(error) => return Err(error),
            }
        }
        found.sort_by_key(|(index, _)| *index);
        Ok(found)
    }

    /// Whether the ledger takes `transfers`, written in a transaction that is rolled back.
    async fn probe(&self, transfers: &[Transfer]) -> Result<(), LedgerError> {
        let mut transaction = self.pool.begin().await?;
        write_batch(&mut transaction, transfers).await?;
        transaction.rollback().await?;
        Ok(())
    }

    /// Applies a quarantined message whose cause an operator fixed, without moving any
    /// position (settlement is past it). The row is marked re-driven in the same transaction,
    /// so of two concurrent retries one applies; a transfer the ledger has already (its id
    /// settled by another message) is not applied again.
    pub async fn retry(&self, entry: &Entry) -> Result<(Vec<Transfer>, SettledBatch), RetryError> {
        if entry.retried_at.is_some() {
            return Err(RetryError::AlreadyRetried);
        }
        let transfers = match LogMessage::parse(&entry.payload) {
            Ok(LogMessage::Transfer(message)) => vec![Transfer::of(message, None)],
            Ok(LogMessage::Action(message)) => vec![Transfer::of_action(message, None)],
            Ok(LogMessage::Batch(message)) => Transfer::of_batch(message, None),
            Err(error) => return Err(RetryError::StillUnreadable(error.to_string())),
        };
        let mut transaction = self.pool.begin().await.map_err(LedgerError::from)?;
        let settled = match write_batch(&mut transaction, &transfers).await {
            Ok(settled) => settled,
            Err(error) if error.refuses_data() => {
                return Err(RetryError::StillRefused(refusal(&error)));
            }
            Err(error) => return Err(RetryError::Ledger(error)),
        };
        if !quarantine::mark_retried(&mut transaction, entry.quarantine_id).await? {
            return Err(RetryError::AlreadyRetried);
        }
        transaction.commit().await.map_err(LedgerError::from)?;
        Ok((transfers, settled))
    }

    /// The oldest settled batch whose effects may not have run, as messages and as a settled
    /// batch, ready for the same effects a fresh batch gets; no messages when none is left.
    pub async fn outstanding_effects(&self) -> Result<(Vec<Transfer>, SettledBatch), LedgerError> {
        loop {
            let Some(batch_id) = self.oldest_effects_batch().await? else {
                return Ok((Vec::new(), SettledBatch::default()));
            };
            let (messages, transfers): (Vec<Transfer>, Vec<SettledTransfer>) = self
                .effects_batch_transfers(batch_id)
                .await?
                .into_iter()
                .map(RecordedTransfer::recovered)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .unzip();
            if messages.is_empty() {
                // Every recorded id was settled in the transaction that recorded it, and
                // nothing deletes transfers; a batch that names none has nothing to run.
                tracing::warn!(batch_id, "an effects batch names no transfer in the ledger");
                self.effects_done(batch_id).await?;
                continue;
            }
            let accounts = self.current_balances(&messages).await?;
            let settled = SettledBatch {
                transfers,
                accounts,
                effects: Some(batch_id),
            };
            return Ok((messages, settled));
        }
    }

    /// The id of the oldest batch whose effects are recorded as still to run.
    async fn oldest_effects_batch(&self) -> Result<Option<i64>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT batch_id FROM settlement_effect_batches ORDER BY batch_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The transfers an effects batch names, as the ledger recorded them, in batch order.
    async fn effects_batch_transfers(
        &self,
        batch_id: i64,
    ) -> Result<Vec<RecordedTransfer>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT t.transaction_id, t.sender_id, t.receiver_id, t.amount_minor, t.currency,
                    t.description, t.status, t.reason,
                    (extract(epoch FROM t.created_at) * 1000)::bigint AS created_at_ms,
                    (extract(epoch FROM t.expires_at) * 1000)::bigint AS expires_at_ms,
                    t.resolved_by, t.posted_amount_minor, t.metadata
             FROM settlement_effect_batches b
             CROSS JOIN LATERAL UNNEST(b.transaction_ids) WITH ORDINALITY AS i(transaction_id, position)
             JOIN transfers t ON t.transaction_id = i.transaction_id
             WHERE b.batch_id = $1
             ORDER BY i.position",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The effects of this batch ran: forget it.
    pub async fn effects_done(&self, batch_id: i64) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM settlement_effect_batches WHERE batch_id = $1")
            .bind(batch_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The committed balance of every account the messages touch.
    async fn current_balances(
        &self,
        messages: &[Transfer],
    ) -> Result<BTreeMap<AccountKey, Balance>, LedgerError> {
        let (users, currencies) = account_keys(messages);
        let rows: Vec<LockedAccount> = sqlx::query_as(
            "SELECT a.user_id, a.currency, a.balance_minor, a.pending_debits_minor,
                    a.pending_credits_minor, a.version
             FROM accounts a JOIN UNNEST($1::bigint[], $2::text[]) AS k(user_id, currency) USING (user_id, currency)",
        )
        .bind(&users)
        .bind(&currencies)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(account_entry).collect())
    }
}

/// A settled transfer as the ledger recorded it, read back to run its batch's effects.
#[derive(sqlx::FromRow)]
struct RecordedTransfer {
    transaction_id: Uuid,
    sender_id: i64,
    receiver_id: i64,
    amount_minor: i64,
    currency: String,
    description: Option<String>,
    status: TransferStatus,
    reason: Option<Reason>,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    resolved_by: Option<Uuid>,
    posted_amount_minor: Option<i64>,
    metadata: Option<sqlx::types::Json<BTreeMap<String, String>>>,
}

impl RecordedTransfer {
    /// The message and the outcome, as a fresh batch has them: a resolved two-phase
    /// transfer as the action that resolved it (its latest change of state).
    fn recovered(self) -> Result<(Transfer, SettledTransfer), LedgerError> {
        let id = self.transaction_id;
        let outcome = stored_outcome(id, self.status, self.reason)?;
        let action = match outcome {
            Outcome::Posted => Some(Action::Post),
            Outcome::Voided => Some(Action::Void),
            Outcome::Expired => Some(Action::Expire),
            _ => None,
        };
        let step = match (action, self.resolved_by, self.expires_at_ms) {
            (Some(action), Some(action_id), _) => Step::Resolve { action_id, action },
            (None, _, Some(expires_at_ms)) => Step::Pending { expires_at_ms },
            _ => Step::Immediate,
        };
        let settled = SettledTransfer {
            transaction_id: id,
            step_id: match step {
                Step::Resolve { action_id, .. } => action_id,
                _ => id,
            },
            outcome,
            newly_applied: false,
        };
        let message = Transfer {
            transaction_id: id,
            sender_id: self.sender_id,
            receiver_id: self.receiver_id,
            amount_minor: self.posted_amount_minor.unwrap_or(self.amount_minor),
            currency: self.currency,
            description: self.description,
            created_at_ms: self.created_at_ms,
            metadata: self.metadata.map(|json| json.0),
            step,
            atomic_batch: None,
            // Not kept in the ledger: a recovered transfer's event carries no trace.
            trace: None,
        };
        Ok((message, settled))
    }
}

type Transaction<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// The database's own words for a refusal, with its SQLSTATE.
fn refusal(error: &LedgerError) -> String {
    match error {
        LedgerError::Unavailable(sqlx::Error::Database(database)) => format!(
            "{} (SQLSTATE {})",
            database.message(),
            database.code().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// Writes a batch's messages in `transaction`: skips steps already applied, locks the touched
/// accounts and the pending transfers the actions resolve, decides, writes transfers, their
/// resolutions, journal entries and accounts, deletes pending rows and records the effects to
/// run. What it returns holds once the transaction commits.
async fn write_batch(
    transaction: &mut Transaction<'_>,
    messages: &[Transfer],
) -> Result<SettledBatch, LedgerError> {
    let locked = lock_accounts(transaction, messages).await?;
    let ids: Vec<Uuid> = messages.iter().map(|m| m.transaction_id).collect();
    let mut pending = lock_pending(transaction, messages).await?;
    let mut settled = already_settled(transaction, messages, &pending).await?;
    let firsts = first_of_each_step(messages);
    let fresh: Vec<&Transfer> = firsts
        .iter()
        .copied()
        .filter(|m| !settled.contains_key(&m.step_id()))
        .collect();
    let mut positions: BTreeMap<AccountKey, Position> =
        locked.iter().map(account_position).collect();
    let mut accounts: BTreeMap<AccountKey, Balance> =
        locked.into_iter().map(account_entry).collect();

    let opening = positions.clone();
    let outcomes = decide(&mut positions, &mut pending, &fresh);
    if !fresh.is_empty() {
        write_transfers(transaction, &fresh, &outcomes).await?;
        write_resolutions(transaction, &fresh, &outcomes).await?;
        let moved = moving(&fresh, &outcomes);
        let lines = journal_lines(opening, &moved)?;
        assert_closes_at(&lines, &positions);
        write_journal(transaction, &lines).await?;
        let updated = write_balances(transaction, &fresh, &outcomes, &positions).await?;
        accounts.extend(updated);
    }
    // Settled (now or before): no longer pending, and its effects are to run, in the same
    // commit as the position. A refused action changes no transfer: nothing to run for it.
    delete_pending_in(&mut **transaction, &ids).await?;
    for (message, outcome) in fresh.iter().zip(&outcomes) {
        settled.insert(message.step_id(), *outcome);
    }
    let changed: Vec<Uuid> = distinct(
        firsts
            .iter()
            .filter(|m| settled[&m.step_id()] != Outcome::Refused)
            .map(|m| m.transaction_id),
    );
    let effects = record_effects(transaction, &changed).await?;
    let newly_applied: HashSet<Uuid> = fresh.iter().map(|m| m.step_id()).collect();
    let transfers = messages
        .iter()
        .map(|message| SettledTransfer {
            transaction_id: message.transaction_id,
            step_id: message.step_id(),
            // Every step was either already settled or decided just now.
            outcome: settled[&message.step_id()],
            newly_applied: newly_applied.contains(&message.step_id()),
        })
        .collect();
    Ok(SettledBatch {
        transfers,
        accounts,
        effects,
    })
}

/// `ids` without repeats, in first-seen order.
fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

fn account_position(
    (user, currency, balance_minor, pending_debits_minor, pending_credits_minor, _): &LockedAccount,
) -> (AccountKey, Position) {
    let position = Position {
        balance_minor: *balance_minor,
        pending_debits_minor: *pending_debits_minor,
        pending_credits_minor: *pending_credits_minor,
    };
    ((*user, currency.clone()), position)
}

/// An account as the cache keeps it: its spendable balance and version.
fn account_entry(
    (user, currency, balance_minor, pending_debits_minor, _, version): LockedAccount,
) -> (AccountKey, Balance) {
    let balance = Balance {
        balance_minor: balance_minor - pending_debits_minor,
        version,
    };
    ((user, currency), balance)
}

/// The (user ids, currencies) of every account the messages touch, sorted, without repeats.
fn account_keys(messages: &[Transfer]) -> (Vec<i64>, Vec<String>) {
    let keys: BTreeSet<AccountKey> = messages
        .iter()
        .flat_map(|m| [m.sender(), m.receiver()])
        .collect();
    keys.into_iter().unzip()
}

/// Locks the position rows the batch moves and checks they are where the batch was read from,
/// in the same log generation. Taken first, so two workers on one topic queue here before
/// touching any account.
async fn check_position(
    transaction: &mut Transaction<'_>,
    advance: &Advance,
) -> Result<(), SettleError> {
    if advance.from.is_empty() {
        return Ok(());
    }
    assert_eq!(
        advance.from.keys().collect::<Vec<_>>(),
        advance.to.keys().collect::<Vec<_>>(),
        "an advance names the same partitions before and after"
    );
    let partitions: Vec<i32> = advance.from.keys().copied().collect();
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT partition, next_offset, log_generation FROM settlement_positions
         WHERE topic = $1 AND partition = ANY($2::int[]) ORDER BY partition FOR UPDATE",
    )
    .bind(&advance.topic)
    .bind(&partitions)
    .fetch_all(&mut **transaction)
    .await?;
    // A batch of an earlier generation was read from a log that is gone.
    let same_log = rows
        .iter()
        .all(|(_, _, generation)| *generation == advance.generation);
    let current: Offsets = rows
        .into_iter()
        .map(|(partition, offset, _)| (partition, offset))
        .collect();
    if current != advance.from || !same_log {
        return Err(SettleError::PositionMoved {
            topic: advance.topic.clone(),
        });
    }
    Ok(())
}

async fn move_position(
    transaction: &mut Transaction<'_>,
    advance: &Advance,
) -> Result<(), LedgerError> {
    if advance.to.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = advance.to.keys().copied().collect();
    let next: Vec<i64> = advance.to.values().copied().collect();
    // A partition without a fingerprint gets NULL: its position cannot be checked later.
    let prints: Vec<Option<Vec<u8>>> = partitions
        .iter()
        .map(|partition| advance.last_payload.get(partition).cloned())
        .collect();
    sqlx::query(
        "UPDATE settlement_positions p
         SET next_offset = u.next_offset, last_payload_sha256 = u.print, updated_at = now()
         FROM UNNEST($2::int[], $3::bigint[], $4::bytea[]) AS u(partition, next_offset, print)
         WHERE p.topic = $1 AND p.partition = u.partition",
    )
    .bind(&advance.topic)
    .bind(&partitions)
    .bind(&next)
    .bind(&prints)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Locks every account the messages touch, in (user id, currency) order (deposits use the
/// same order), and returns their balances and versions.
async fn lock_accounts(
    transaction: &mut Transaction<'_>,
    messages: &[Transfer],
) -> Result<Vec<LockedAccount>, LedgerError> {
    let (users, currencies) = account_keys(messages);
    Ok(sqlx::query_as(
        "SELECT a.user_id, a.currency, a.balance_minor, a.pending_debits_minor,
                a.pending_credits_minor, a.version
         FROM accounts a JOIN UNNEST($1::bigint[], $2::text[]) AS k(user_id, currency) USING (user_id, currency)
         ORDER BY a.user_id, a.currency
         FOR UPDATE OF a",
    )
    .bind(&users)
    .bind(&currencies)
    .fetch_all(&mut **transaction)
    .await?)
}

/// The recorded outcome of every step the ledger already has, by step id: transfers by
/// their id, actions by whether the transfer they resolve records them as its resolution.
/// Read after the account locks: a worker that waited for another one's batch sees what it
/// committed and skips it instead of failing on the primary key.
async fn already_settled(
    transaction: &mut Transaction<'_>,
    messages: &[Transfer],
    pending: &HashMap<Uuid, PendingTransfer>,
) -> Result<HashMap<Uuid, Outcome>, LedgerError> {
    let ids: Vec<Uuid> = messages
        .iter()
        .filter(|m| !matches!(m.step, Step::Resolve { .. }))
        .map(|m| m.transaction_id)
        .collect();
    let rows: Vec<(Uuid, TransferStatus, Option<Reason>)> = sqlx::query_as(
        // A join on UNNEST, not `= ANY($1)`: the generic plan of the latter scans the whole
        // table once it is large.
        "SELECT t.transaction_id, t.status, t.reason
         FROM UNNEST($1::uuid[]) AS i(transaction_id) JOIN transfers t USING (transaction_id)",
    )
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?;
    let mut settled = rows
        .into_iter()
        .map(|(id, status, reason)| Ok((id, stored_outcome(id, status, reason)?)))
        .collect::<Result<HashMap<_, _>, LedgerError>>()?;
    for message in messages {
        let Step::Resolve { action_id, .. } = message.step else {
            continue;
        };
        if let Some(held) = pending.get(&message.transaction_id)
            && held.resolved_by == Some(action_id)
        {
            let outcome = stored_outcome(message.transaction_id, held.status, None)?;
            settled.insert(action_id, outcome);
        }
    }
    Ok(settled)
}

fn stored_outcome(
    id: Uuid,
    status: TransferStatus,
    reason: Option<Reason>,
) -> Result<Outcome, LedgerError> {
    Outcome::from_stored(status, reason).ok_or_else(|| {
        LedgerError::Unreadable(format!(
            "transfer {id}: status {:?}, reason {:?}",
            status.as_str(),
            reason.map(Reason::as_str)
        ))
    })
}

/// Locks the two-phase transfers the batch's actions resolve, with the action the API
/// accepted for each, in transaction id order.
async fn lock_pending(
    transaction: &mut Transaction<'_>,
    messages: &[Transfer],
) -> Result<HashMap<Uuid, PendingTransfer>, LedgerError> {
    let mut ids: Vec<Uuid> = messages
        .iter()
        .filter(|m| matches!(m.step, Step::Resolve { .. }))
        .map(|m| m.transaction_id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort();
    ids.dedup();
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT t.transaction_id, t.sender_id, t.receiver_id, t.currency, t.amount_minor, t.status,
                t.resolved_by, a.action_id, a.action, a.amount_minor AS action_amount_minor
         FROM UNNEST($1::uuid[]) AS i(transaction_id)
         JOIN transfers t USING (transaction_id)
         LEFT JOIN transfer_actions a USING (transaction_id)
         WHERE t.expires_at IS NOT NULL
         ORDER BY t.transaction_id
         FOR UPDATE OF t",
    )
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(rows.into_iter().map(PendingRow::held).collect())
}

/// A two-phase transfer as `lock_pending` reads it, with its accepted action.
#[derive(sqlx::FromRow)]
struct PendingRow {
    transaction_id: Uuid,
    sender_id: i64,
    receiver_id: i64,
    currency: String,
    amount_minor: i64,
    status: TransferStatus,
    resolved_by: Option<Uuid>,
    action_id: Option<Uuid>,
    action: Option<String>,
    action_amount_minor: Option<i64>,
}

impl PendingRow {
    fn held(self) -> (Uuid, PendingTransfer) {
        let action = self.action.as_deref().and_then(Action::named);
        let accepted = match (self.action_id, action, self.action_amount_minor) {
            (Some(action_id), Some(action), Some(amount)) => Some((action_id, action, amount)),
            _ => None,
        };
        let held = PendingTransfer {
            sender_id: self.sender_id,
            receiver_id: self.receiver_id,
            currency: self.currency,
            amount_minor: self.amount_minor,
            status: self.status,
            accepted,
            resolved_by: self.resolved_by,
        };
        (self.transaction_id, held)
    }
}

/// Inserts the batch's new transfers: immediate and two-phase ones, with their outcome.
async fn write_transfers(
    transaction: &mut Transaction<'_>,
    fresh: &[&Transfer],
    outcomes: &[Outcome],
) -> Result<(), LedgerError> {
    assert_eq!(fresh.len(), outcomes.len(), "one outcome per fresh message");
    let (new, outcomes): (Vec<&Transfer>, Vec<Outcome>) = fresh
        .iter()
        .zip(outcomes)
        .filter(|(m, _)| !matches!(m.step, Step::Resolve { .. }))
        .map(|(m, o)| (*m, *o))
        .unzip();
    if new.is_empty() {
        return Ok(());
    }
    let expires_at_ms: Vec<Option<i64>> = new
        .iter()
        .map(|m| match m.step {
            Step::Pending { expires_at_ms } => Some(expires_at_ms),
            _ => None,
        })
        .collect();
    let metadata: Vec<Option<sqlx::types::Json<&BTreeMap<String, String>>>> = new
        .iter()
        .map(|m| m.metadata.as_ref().map(sqlx::types::Json))
        .collect();
    sqlx::query(
        "INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor, currency,
                                description, status, reason, created_at, expires_at, metadata)
         SELECT id, $10, sender, receiver, amount, currency, description, status, reason,
                to_timestamp(created_ms / 1000.0), to_timestamp(expires_ms / 1000.0), metadata
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::bigint[], $11::bigint[], $12::jsonb[])
              AS t(id, sender, receiver, amount, currency, description, status, reason, created_ms,
                   expires_ms, metadata)",
    )
    .bind(new.iter().map(|m| m.transaction_id).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.sender_id).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.receiver_id).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.amount_minor).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.currency.clone()).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.description.clone()).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.status()).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.reason()).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.created_at_ms).collect::<Vec<_>>())
    .bind(TransferKind::Transfer)
    .bind(&expires_at_ms)
    .bind(&metadata)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Marks the two-phase transfers the batch's applied actions resolved.
async fn write_resolutions(
    transaction: &mut Transaction<'_>,
    fresh: &[&Transfer],
    outcomes: &[Outcome],
) -> Result<(), LedgerError> {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut actions = Vec::new();
    let mut posted = Vec::new();
    for (message, outcome) in fresh.iter().zip(outcomes) {
        let (Step::Resolve { action_id, .. }, Some(status)) = (message.step, outcome.status())
        else {
            continue;
        };
        ids.push(message.transaction_id);
        statuses.push(status);
        actions.push(action_id);
        posted.push((*outcome == Outcome::Posted).then_some(message.amount_minor));
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE transfers t
         SET status = u.status, resolved_by = u.action_id, resolved_at = clock_timestamp(),
             posted_amount_minor = u.posted
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[]) AS u(id, status, action_id, posted)
         WHERE t.transaction_id = u.id AND t.status = 'pending'",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&actions)
    .bind(&posted)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// The steps that moved money, with the amount each moved.
fn moving<'m>(fresh: &[&'m Transfer], outcomes: &[Outcome]) -> Vec<&'m Transfer> {
    fresh
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.moves_money())
        .map(|(message, _)| *message)
        .collect()
}

/// Two entries per transfer that moved money (completed, or posted: under the pending
/// transfer's id, for the posted amount), in message order: the sender's negative, the
/// receiver's positive, each with the account's running balance from `opening` (the locked
/// accounts before the batch, moved on entry by entry).
fn journal_lines(
    opening: BTreeMap<AccountKey, Position>,
    moved: &[&Transfer],
) -> Result<Vec<NewEntry>, LedgerError> {
    let mut running: BTreeMap<AccountKey, i64> = opening
        .into_iter()
        .map(|(account, position)| (account, position.balance_minor))
        .collect();
    let mut lines = Vec::with_capacity(moved.len() * 2);
    for message in moved {
        for (account, amount_minor) in [
            (message.sender(), -message.amount_minor),
            (message.receiver(), message.amount_minor),
        ] {
            let balance = running.entry(account.clone()).or_insert(0);
            *balance = balance
                .checked_add(amount_minor)
                .ok_or(LedgerError::Overflow)?;
            let (user_id, currency) = account;
            lines.push(NewEntry {
                transaction_id: message.transaction_id,
                user_id,
                currency,
                amount_minor,
                balance_after_minor: *balance,
            });
        }
    }
    Ok(lines)
}

/// Each account's last entry ends at the balance the batch decided: the journal and the
/// balances it writes tell one story.
fn assert_closes_at(lines: &[NewEntry], decided: &BTreeMap<AccountKey, Position>) {
    let mut last: BTreeMap<AccountKey, i64> = BTreeMap::new();
    for line in lines {
        last.insert(
            (line.user_id, line.currency.clone()),
            line.balance_after_minor,
        );
    }
    for (account, balance) in last {
        assert_eq!(
            Some(balance),
            decided.get(&account).map(|position| position.balance_minor),
            "the journal's running balance of {account:?} ends at the decided balance"
        );
    }
}

/// The batch's entries as one journal batch (none when no transfer completed).
async fn write_journal(
    transaction: &mut Transaction<'_>,
    lines: &[NewEntry],
) -> Result<(), LedgerError> {
    journal_chain::append(transaction, lines).await?;
    Ok(())
}

/// Writes the new position of every account a step changed (moved, reserved or released);
/// returns their committed state as the cache keeps it.
async fn write_balances(
    transaction: &mut Transaction<'_>,
    fresh: &[&Transfer],
    outcomes: &[Outcome],
    positions: &BTreeMap<AccountKey, Position>,
) -> Result<Vec<(AccountKey, Balance)>, LedgerError> {
    let changed: BTreeSet<AccountKey> = fresh
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| !matches!(outcome, Outcome::Rejected(_) | Outcome::Refused))
        .flat_map(|(message, _)| [message.sender(), message.receiver()])
        .collect();
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<i64> = changed.iter().map(|(user, _)| *user).collect();
    let currencies: Vec<String> = changed
        .iter()
        .map(|(_, currency)| currency.clone())
        .collect();
    let position = |key: &AccountKey| positions[key];
    let balances: Vec<i64> = changed.iter().map(|k| position(k).balance_minor).collect();
    let debits: Vec<i64> = changed
        .iter()
        .map(|k| position(k).pending_debits_minor)
        .collect();
    let credits: Vec<i64> = changed
        .iter()
        .map(|k| position(k).pending_credits_minor)
        .collect();
    let updated: Vec<LockedAccount> = sqlx::query_as(
        "UPDATE accounts a SET balance_minor = u.balance_minor, pending_debits_minor = u.debits,
                pending_credits_minor = u.credits, version = a.version + 1, updated_at = now()
         FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
              AS u(user_id, currency, balance_minor, debits, credits)
         WHERE a.user_id = u.user_id AND a.currency = u.currency
         RETURNING a.user_id, a.currency, a.balance_minor, a.pending_debits_minor,
                   a.pending_credits_minor, a.version",
    )
    .bind(&users)
    .bind(&currencies)
    .bind(&balances)
    .bind(&debits)
    .bind(&credits)
    .fetch_all(&mut **transaction)
    .await?;
    assert_eq!(
        updated.len(),
        changed.len(),
        "every changed account was locked"
    );
    Ok(updated.into_iter().map(account_entry).collect())
}

/// Each step's first message, in message order (a message read twice in one batch is one
/// step).
fn first_of_each_step(messages: &[Transfer]) -> Vec<&Transfer> {
    let mut seen = HashSet::with_capacity(messages.len());
    messages
        .iter()
        .filter(|m| seen.insert(m.step_id()))
        .collect()
}

/// Records the effects of the batch's distinct transfers as still to run: one row, whose id
/// the worker deletes once they ran. `None` when there is nothing to run.
async fn record_effects(
    transaction: &mut Transaction<'_>,
    distinct_ids: &[Uuid],
) -> Result<Option<i64>, LedgerError> {
    if distinct_ids.is_empty() {
        return Ok(None);
    }
    let batch_id: i64 = sqlx::query_scalar(
        "INSERT INTO settlement_effect_batches (transaction_ids) VALUES ($1) RETURNING batch_id",
    )
    .bind(distinct_ids)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(Some(batch_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::decide::tests::message as transfer;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the batch, each entry's balance is the one before it plus its amount, and
        /// every account's last entry is the balance `decide` left.
        #[test]
        fn running_balances_follow_the_decided_balances(
            opening in proptest::collection::vec(0i64..1_000, 4),
            moves in proptest::collection::vec((1i64..=4, 1i64..=4, 1i64..600), 0..40),
        ) {
            let mut balances: BTreeMap<AccountKey, Position> = opening
                .iter()
                .enumerate()
                .map(|(i, b)| ((i as i64 + 1, "USD".to_string()), Position { balance_minor: *b, ..Position::default() }))
                .collect();
            let start = balances.clone();
            let messages: Vec<Transfer> =
                moves.iter().map(|(s, r, a)| transfer(*s, *r, *a)).collect();
            let refs: Vec<&Transfer> = messages.iter().collect();
            let outcomes = decide(&mut balances, &mut HashMap::new(), &refs);
            let lines = journal_lines(start.clone(), &moving(&refs, &outcomes)).expect("no overflow");
            assert_closes_at(&lines, &balances);
            let mut seen: BTreeMap<AccountKey, i64> =
                start.iter().map(|(k, p)| (k.clone(), p.balance_minor)).collect();
            for line in &lines {
                let account = (line.user_id, line.currency.clone());
                let before = seen[&account];
                prop_assert_eq!(line.balance_after_minor, before + line.amount_minor);
                prop_assert!(line.balance_after_minor >= 0);
                seen.insert(account, line.balance_after_minor);
            }
            let decided: BTreeMap<AccountKey, i64> =
                balances.iter().map(|(k, p)| (k.clone(), p.balance_minor)).collect();
            prop_assert_eq!(seen, decided);
        }
    }
}
