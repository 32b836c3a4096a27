//! Applying one polled batch: the commit (retried while the ledger is down), the transfers the
//! ledger refuses moved to the quarantine and the rest applied, then the batch's effects. What
//! the loop does with each batch, apart from how it reads the log.

use super::counts::{count_quarantined, count_settled};
use super::dead_letter::dead_letter;
use super::effects::run_effects;
use super::ledger::{Advance, SettleError, SettledBatch, Settlements};
use super::read::Read;
use super::retry::{MAX_RETRY_DELAY, retrying};
use crate::shutdown::Stop;
use crate::stores::Stores;

/// How a stretch of settling ended.
pub(super) enum Ended {
    /// Stopping was requested.
    Stop,
    /// Start over from the ledger's positions (the lock or the position was lost, the topics
    /// were created again, or the log could not be read).
    Restart(String),
}

/// How one attempt at applying a batch ended, when it did not fail for a while.
enum Applied {
    Settled(SettledBatch),
    /// Another worker moved the position in this topic.
    Moved(String),
    /// The ledger refuses the batch's data: retrying the same batch changes nothing.
    Refused(crate::stores::postgres::LedgerError),
}

/// Applies one batch, then runs its effects. `None` when done; otherwise how the worker ends.
pub(super) async fn settle_batch(
    stores: &Stores,
    settlements: &Settlements,
    mut read: Read<'_>,
    advance: &Advance,
    stop: &mut Stop,
) -> Option<Ended> {
    let settled = match apply_batch(settlements, &mut read, advance, stop).await {
        Ok(settled) => settled,
        Err(ended) => return Some(ended),
    };
    crate::crash::point("after-ledger-commit");
    count_settled(&read.transfers, &settled);
    count_quarantined(&read);
    let released = read.quarantined_holds(stores).await;
    if !run_effects(
        stores,
        settlements,
        &read.transfers,
        &settled,
        &released,
        stop,
    )
    .await
    {
        return Some(Ended::Stop);
    }
    if !read.quarantined.is_empty() && !dead_letter(stores, settlements, stop).await {
        return Some(Ended::Stop);
    }
    None
}

/// Commits the batch, retrying while the ledger is unavailable. A batch whose data the ledger
/// refuses is searched for the transfers it refuses, which move to the quarantine, and the rest
/// is applied; `read` says what was applied and what was set aside.
async fn apply_batch(
    settlements: &Settlements,
    read: &mut Read<'_>,
    advance: &Advance,
    stop: &mut Stop,
) -> Result<SettledBatch, Ended> {
    loop {
        let applied = retrying(stop, "settling a batch", || async {
            match settlements
                .apply(&read.transfers, &read.quarantined, advance)
                .await
            {
                Ok(settled) => Ok(Applied::Settled(settled)),
                Err(SettleError::PositionMoved { topic }) => Ok(Applied::Moved(topic)),
                Err(SettleError::Ledger(error)) if error.refuses_data() => {
                    Ok(Applied::Refused(error))
                }
                Err(SettleError::Ledger(error)) => Err(error),
            }
        })
        .await;
        let error = match applied {
            None => {
                tracing::info!(
                    messages = read.transfers.len(),
                    "stopping with a batch not settled; it will be read again"
                );
                return Err(Ended::Stop);
            }
            Some(Applied::Moved(topic)) => {
                return Err(Ended::Restart(format!(
                    "another worker moved the position in {topic}"
                )));
            }
            Some(Applied::Settled(settled)) => return Ok(settled),
            Some(Applied::Refused(error)) => error,
        };
        tracing::error!(%error, "the ledger refuses a batch; finding the messages it refuses");
        let refused = retrying(stop, "finding the messages the ledger refuses", || {
            settlements.refused(&read.transfers)
        })
        .await
        .ok_or(Ended::Stop)?;
        if refused.is_empty() {
            // Only the batch as a whole is refused: try it again, as after an outage.
            tracing::error!(%error, "the ledger refuses the batch but none of its transfers alone; retrying");
            tokio::select! {
                () = tokio::time::sleep(MAX_RETRY_DELAY) => {}
                () = stop.requested() => return Err(Ended::Stop),
            }
        }
        read.quarantine(refused);
    }
}
