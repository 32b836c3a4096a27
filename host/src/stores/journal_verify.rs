//! `transferd ledger verify`: walks the journal's hash chain (`journal_chain`) from its first
//! batch, recomputing every batch's hash from its entries, checks that every entry belongs to
//! a batch of the chain and does what its transfer says, that the chain ends where its head
//! says, that every account's balance is the sum of its entries and that each currency sums
//! to zero, and that each entry's running balance is its account's balance before it plus its
//! amount. Everything is read in one read-only snapshot, a page at a time, so the check holds
//! for one moment of the ledger and its memory grows with the accounts, not the journal. It
//! stops at the first break and names it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use futures::TryStreamExt;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::stores::journal_chain::{BatchHasher, RecordedEntry};
use crate::stores::postgres::LedgerError;
use crate::stores::transfer_state::TransferStatus;
use crate::trace::hex;

/// Batches or accounts read per query.
const PAGE: i64 = 1_000;

/// Bytes shown as hex (a hash), or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Option<Vec<u8>>);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(bytes) => f.write_str(&hex(bytes)),
            None => f.write_str("none"),
        }
    }
}

/// What an intact ledger holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub batches: u64,
    pub entries: u64,
    pub accounts: u64,
    /// The last batch's hash: recorded elsewhere, it lets a later check tell a rewritten
    /// ledger from this one.
    pub head: Hex,
}

impl fmt::Display for Intact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the journal is intact: {} batches, {} entries, {} accounts checked; head hash {}",
            self.batches, self.entries, self.accounts, self.head
        )
    }
}

/// An entry that does not move what its transfer says it moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffTransfer {
    pub entry_id: i64,
    pub transaction_id: Uuid,
    pub user_id: i64,
    pub amount_minor: i64,
    /// What the transfer says this account's entry moves; `None` when it names no movement
    /// of this account (no such completed transfer, another party or currency).
    pub expected_minor: Option<i64>,
}

impl fmt::Display for OffTransfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {} (transfer {}, user {}) moves {} where ",
            self.entry_id, self.transaction_id, self.user_id, self.amount_minor
        )?;
        match self.expected_minor {
            Some(expected) => write!(f, "its transfer says {expected}"),
            None => f.write_str("no completed transfer moves this account"),
        }
    }
}

/// The first thing found that an untouched ledger cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalBreak {
    #[error("batch {expected} is missing: the chain goes on at batch {found}")]
    MissingBatch { expected: i64, found: i64 },
    #[error("batch {batch} records {recorded} as the previous batch's hash, the chain has {found}")]
    PreviousHash {
        batch: i64,
        recorded: Hex,
        found: Hex,
    },
    #[error("batch {batch} records {recorded} entries, the journal has {found} in it")]
    EntryCount {
        batch: i64,
        recorded: i64,
        found: i64,
    },
    #[error(
        "batch {batch}: its entries hash to {found}, the batch records {recorded}{}",
        .changed.as_ref().map(|entry| format!("; changed: {entry}")).unwrap_or_default()
    )]
    Hash {
        batch: i64,
        recorded: Hex,
        found: Hex,
        /// An entry of the batch that disagrees with its transfer, when one does.
        changed: Option<OffTransfer>,
    },
    #[error(
        "batch {batch}: entry {entry_id} (user {user_id} {currency}) records a balance after it of {recorded}, its account's entries make {found}"
    )]
    RunningBalance {
        batch: i64,
        entry_id: i64,
        user_id: i64,
        currency: String,
        recorded: i64,
        found: i128,
    },
    #[error("entry {entry_id} names batch {batch}, which the chain does not have")]
    EntryWithoutBatch { entry_id: i64, batch: i64 },
    #[error("batch {batch}: {entry}")]
    EntryOffTransfer { batch: i64, entry: OffTransfer },
    #[error("the journal's entries in {currency} sum to {sum}, not zero")]
    EntriesUnbalanced { currency: String, sum: i128 },
    #[error(
        "the chain's head names batch {head_batch} ({head_hash}), the chain ends at batch {last_batch} ({last_hash})"
    )]
    Head {
        head_batch: i64,
        head_hash: Hex,
        last_batch: i64,
        last_hash: Hex,
    },
    #[error("the chain's head is gone")]
    NoHead,
    #[error("account {user_id} {currency}: its balance is {recorded}, its entries sum to {found}")]
    Balance {
        user_id: i64,
        currency: String,
        recorded: i64,
        found: i64,
    },
    #[error("the balances in {currency} sum to {sum}, not zero")]
    BalancesUnbalanced { currency: String, sum: i128 },
    #[error(
        "account {user_id} {currency}: it records pending debits {recorded_debits} and credits {recorded_credits}, its pending transfers make {found_debits} and {found_credits}"
    )]
    Pending {
        user_id: i64,
        currency: String,
        recorded_debits: i64,
        recorded_credits: i64,
        found_debits: i64,
        found_credits: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the journal is broken: {0}")]
    Broken(#[from] JournalBreak),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<sqlx::Error> for VerifyError {
    fn from(error: sqlx::Error) -> Self {
        VerifyError::Ledger(error.into())
    }
}

/// Checks the whole ledger as one snapshot; see the module's comment.
pub async fn verify(pool: &PgPool) -> Result<Intact, VerifyError> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *transaction)
        .await?;
    let mut walk = Walk::default();
    let mut from = i64::MIN;
    loop {
        let batches: Vec<BatchRow> = sqlx::query_as(
            "SELECT batch_id, previous_hash, hash, entry_count FROM journal_batches
             WHERE batch_id >= $1 ORDER BY batch_id LIMIT $2",
        )
        .bind(from)
        .bind(PAGE)
        .fetch_all(&mut *transaction)
        .await?;
        let last_page = batches.len() < PAGE as usize;
        let upto = match batches.last() {
            Some(batch) if !last_page => batch.batch_id,
            _ => i64::MAX,
        };
        walk.page(&mut transaction, &batches, from, upto).await?;
        if last_page {
            break;
        }
        from = upto.saturating_add(1);
    }
    walk.check_sums()?;
    walk.check_head(&mut transaction).await?;
    let accounts = check_accounts(&mut transaction).await?;
    transaction.rollback().await?;
    Ok(Intact {
        batches: walk.batches,
        entries: walk.entries,
        accounts,
        head: Hex(walk.previous),
    })
}

#[derive(sqlx::FromRow)]
struct BatchRow {
    batch_id: i64,
    previous_hash: Option<Vec<u8>>,
    hash: Vec<u8>,
    entry_count: i64,
}

/// An entry with its batch and what its transfer says (all `None` without a transfer).
#[derive(sqlx::FromRow)]
struct EntryRow {
    #[sqlx(flatten)]
    entry: RecordedEntry,
    journal_batch: i64,
    sender_id: Option<i64>,
    receiver_id: Option<i64>,
    transfer_minor: Option<i64>,
    transfer_currency: Option<String>,
    transfer_status: Option<String>,
}

impl EntryRow {
    /// How this entry departs from its transfer, if it does: a completed transfer of A from
    /// S to R in C (or a two-phase one posted for A) has exactly S's −A and R's +A in C.
    fn off_transfer(&self) -> Option<OffTransfer> {
        let entry = &self.entry;
        let moved = [TransferStatus::Completed, TransferStatus::Posted]
            .map(TransferStatus::as_str)
            .contains(&self.transfer_status.as_deref().unwrap_or_default());
        let completed = moved && self.transfer_currency.as_deref() == Some(entry.currency.as_str());
        let moves = |party: Option<i64>, amount: Option<i64>| match (party, amount) {
            (Some(party), Some(amount)) if completed && party == entry.user_id => Some(amount),
            _ => None,
        };
        let as_sender = moves(self.sender_id, self.transfer_minor.map(|a| -a));
        let as_receiver = moves(self.receiver_id, self.transfer_minor);
        if [as_sender, as_receiver].contains(&Some(entry.amount_minor)) {
            return None;
        }
        Some(OffTransfer {
            entry_id: entry.entry_id,
            transaction_id: entry.transaction_id,
            user_id: entry.user_id,
            amount_minor: entry.amount_minor,
            expected_minor: as_sender.or(as_receiver),
        })
    }
}

/// A batch being walked: its hash so far, its entries counted, the first that is off its
/// transfer, the first whose running balance is off.
struct OpenBatch {
    hasher: BatchHasher,
    count: i64,
    off: Option<OffTransfer>,
    running_off: Option<JournalBreak>,
}

/// Where the walk is: the batch number it expects next and the hash it chains from.
struct Walk {
    next_batch: i64,
    previous: Option<Vec<u8>>,
    batches: u64,
    entries: u64,
    sums: BTreeMap<String, i128>,
    /// Each account's balance after its entries walked so far: batches are in commit order,
    /// and one account's entries in a batch in the order they were written.
    running: HashMap<(i64, String), i128>,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            next_batch: 1,
            previous: None,
            batches: 0,
            entries: 0,
            sums: BTreeMap::new(),
            running: HashMap::new(),
        }
    }
}

impl Walk {
    /// Walks `batches` with every entry whose batch number is in `from..=upto`, streamed in
    /// (batch, entry_id) order: an entry between two batches belongs to neither.
    async fn page(
        &mut self,
        connection: &mut PgConnection,
        batches: &[BatchRow],
        from: i64,
        upto: i64,
    ) -> Result<(), VerifyError> {
        let mut rows = sqlx::query_as::<_, EntryRow>(
            "SELECT e.entry_id, e.transaction_id, e.user_id, e.currency, e.amount_minor,
                    e.balance_after_minor, e.created_at, e.journal_batch, t.sender_id, t.receiver_id,
                    COALESCE(t.posted_amount_minor, t.amount_minor) AS transfer_minor,
                    t.currency AS transfer_currency,
                    t.status AS transfer_status
             FROM journal_entries e LEFT JOIN transfers t USING (transaction_id)
             WHERE e.journal_batch >= $1 AND e.journal_batch <= $2
             ORDER BY e.journal_batch, e.entry_id",
        )
        .bind(from)
        .bind(upto)
        .fetch(connection);
        let mut next = rows.try_next().await?;
        for batch in batches {
            let mut open = self.open(batch)?;
            while let Some(row) = next.take_if(|row| row.journal_batch <= batch.batch_id) {
                if row.journal_batch < batch.batch_id {
                    return Err(without_batch(&row).into());
                }
                self.add(&mut open, &row);
                next = rows.try_next().await?;
            }
            self.close(batch, open)?;
        }
        match next {
            Some(row) => Err(without_batch(&row).into()),
            None => Ok(()),
        }
    }

    fn open(&self, batch: &BatchRow) -> Result<OpenBatch, JournalBreak> {
        if batch.batch_id != self.next_batch {
            return Err(JournalBreak::MissingBatch {
                expected: self.next_batch,
                found: batch.batch_id,
            });
        }
        if batch.previous_hash != self.previous {
            return Err(JournalBreak::PreviousHash {
                batch: batch.batch_id,
                recorded: Hex(batch.previous_hash.clone()),
                found: Hex(self.previous.clone()),
            });
        }
        Ok(OpenBatch {
            hasher: BatchHasher::new(self.previous.as_deref()),
            count: 0,
            off: None,
            running_off: None,
        })
    }

    fn add(&mut self, open: &mut OpenBatch, row: &EntryRow) {
        open.hasher.add(&row.entry);
        open.count += 1;
        if open.off.is_none() {
            open.off = row.off_transfer();
        }
        self.entries += 1;
        *self.sums.entry(row.entry.currency.clone()).or_default() +=
            i128::from(row.entry.amount_minor);
        let entry = &row.entry;
        let running = self
            .running
            .entry((entry.user_id, entry.currency.clone()))
            .or_default();
        *running += i128::from(entry.amount_minor);
        if open.running_off.is_none() && *running != i128::from(entry.balance_after_minor) {
            open.running_off = Some(JournalBreak::RunningBalance {
                batch: row.journal_batch,
                entry_id: entry.entry_id,
                user_id: entry.user_id,
                currency: entry.currency.clone(),
                recorded: entry.balance_after_minor,
                found: *running,
            });
        }
    }

    fn close(&mut self, batch: &BatchRow, open: OpenBatch) -> Result<(), JournalBreak> {
        if open.count != batch.entry_count {
            return Err(JournalBreak::EntryCount {
                batch: batch.batch_id,
                recorded: batch.entry_count,
                found: open.count,
            });
        }
        let found = open.hasher.finish();
        if found != batch.hash {
            // A running balance edited alone is named by the entry that carries it.
            if let (None, Some(running_off)) = (&open.off, open.running_off) {
                return Err(running_off);
            }
            return Err(JournalBreak::Hash {
                batch: batch.batch_id,
                recorded: Hex(Some(batch.hash.clone())),
                found: Hex(Some(found)),
                changed: open.off,
            });
        }
        if let Some(entry) = open.off {
            return Err(JournalBreak::EntryOffTransfer {
                batch: batch.batch_id,
                entry,
            });
        }
        if let Some(running_off) = open.running_off {
            return Err(running_off);
        }
        self.next_batch += 1;
        self.previous = Some(found);
        self.batches += 1;
        Ok(())
    }

    fn check_sums(&self) -> Result<(), JournalBreak> {
        match self.sums.iter().find(|(_, sum)| **sum != 0) {
            Some((currency, sum)) => Err(JournalBreak::EntriesUnbalanced {
                currency: currency.clone(),
                sum: *sum,
            }),
            None => Ok(()),
        }
    }

    /// The head names the last batch walked: batches removed from the end leave it ahead.
    async fn check_head(&self, connection: &mut PgConnection) -> Result<(), VerifyError> {
        let head: Option<(i64, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT batch_id, hash FROM journal_chain_head")
                .fetch_optional(connection)
                .await?;
        let (head_batch, head_hash) = head.ok_or(JournalBreak::NoHead)?;
        let last_batch = self.next_batch - 1;
        if head_batch != last_batch || head_hash != self.previous {
            return Err(JournalBreak::Head {
                head_batch,
                head_hash: Hex(head_hash),
                last_batch,
                last_hash: Hex(self.previous.clone()),
            }
            .into());
        }
        Ok(())
    }
}

fn without_batch(row: &EntryRow) -> JournalBreak {
    JournalBreak::EntryWithoutBatch {
        entry_id: row.entry.entry_id,
        batch: row.journal_batch,
    }
}

/// Every account's balance against the sum of its entries and its pending debits and credits
/// against its pending transfers, a page of accounts at a time, and each currency's balances
/// against zero. Returns how many accounts there are.
async fn check_accounts(connection: &mut PgConnection) -> Result<u64, VerifyError> {
    let mut after = (i64::MIN, String::new());
    let mut sums: BTreeMap<String, i128> = BTreeMap::new();
    let mut accounts = 0;
    loop {
        let rows: Vec<AccountRow> = sqlx::query_as(ACCOUNTS_PAGE)
            .bind(after.0)
            .bind(&after.1)
            .bind(PAGE)
            .fetch_all(&mut *connection)
            .await?;
        for row in &rows {
            row.check()?;
            *sums.entry(row.currency.clone()).or_default() += i128::from(row.balance_minor);
        }
        accounts += rows.len() as u64;
        let full = rows.len() == PAGE as usize;
        match rows.into_iter().last() {
            Some(row) if full => after = (row.user_id, row.currency),
            _ => break,
        }
    }
    if let Some((currency, sum)) = sums.into_iter().find(|(_, sum)| *sum != 0) {
        return Err(JournalBreak::BalancesUnbalanced { currency, sum }.into());
    }
    Ok(accounts)
}

/// A page of accounts after `($1, $2)`, each with what its entries and its pending transfers
/// make.
const ACCOUNTS_PAGE: &str = "
    SELECT a.user_id, a.currency, a.balance_minor, a.pending_debits_minor, a.pending_credits_minor,
           (SELECT coalesce(sum(e.amount_minor), 0) FROM journal_entries e
            WHERE e.user_id = a.user_id AND e.currency = a.currency)::bigint AS entries_minor,
           (SELECT coalesce(sum(t.amount_minor), 0) FROM transfers t
            WHERE t.sender_id = a.user_id AND t.currency = a.currency AND t.status = 'pending'
              AND t.expires_at IS NOT NULL)::bigint AS found_debits,
           (SELECT coalesce(sum(t.amount_minor), 0) FROM transfers t
            WHERE t.receiver_id = a.user_id AND t.currency = a.currency AND t.status = 'pending'
              AND t.expires_at IS NOT NULL)::bigint AS found_credits
    FROM accounts a WHERE (a.user_id, a.currency) > ($1, $2)
    ORDER BY a.user_id, a.currency LIMIT $3";

#[derive(sqlx::FromRow)]
struct AccountRow {
    user_id: i64,
    currency: String,
    balance_minor: i64,
    pending_debits_minor: i64,
    pending_credits_minor: i64,
    entries_minor: i64,
    found_debits: i64,
    found_credits: i64,
}

impl AccountRow {
    fn check(&self) -> Result<(), JournalBreak> {
        if self.balance_minor != self.entries_minor {
            return Err(JournalBreak::Balance {
                user_id: self.user_id,
                currency: self.currency.clone(),
                recorded: self.balance_minor,
                found: self.entries_minor,
            });
        }
        if (self.pending_debits_minor, self.pending_credits_minor)
            != (self.found_debits, self.found_credits)
        {
            return Err(JournalBreak::Pending {
                user_id: self.user_id,
                currency: self.currency.clone(),
                recorded_debits: self.pending_debits_minor,
                recorded_credits: self.pending_credits_minor,
                found_debits: self.found_debits,
                found_credits: self.found_credits,
            });
        }
        Ok(())
    }
}
