//! Re-driving one quarantined message once its cause is fixed (the admin route's job): applied
//! exactly once, its effects run once. Apart from the worker, which it shares the steps with
//! but not the loop, because it runs in serve on an operator's request.

use super::SettlementError;
use super::decide::{self, Transfer};
use super::effects::update_cache;
use super::events::emit_events;
use super::ledger::{self, Settlements};
use super::quarantine;
use crate::stores::Stores;
use crate::stores::kafka::TRANSFER_TOPIC;

/// Why a quarantined message was not re-driven.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("no quarantined message at {partition}:{offset}")]
    NotFound { partition: i32, offset: i64 },
    #[error("the message at {partition}:{offset} was not re-driven: {error}")]
    Refused {
        partition: i32,
        offset: i64,
        error: ledger::RetryError,
    },
}

/// Re-drives the quarantined message at `partition:offset` of the transfer topic once its
/// cause is fixed: applies it (exactly once: its row is marked in the same transaction, and
/// the ledger skips an id it has) and runs its effects once. Effects that fail stay recorded,
/// for the next worker to take the settlement lock; the reconciler releases the hold meanwhile.
/// Answers with the message's first transfer (a batch's first) and its outcome.
pub async fn redrive(
    stores: &Stores,
    partition: i32,
    offset: i64,
) -> Result<(Transfer, decide::Outcome), RedriveError> {
    let settlements = Settlements::new(stores.ledger.pool().clone());
    let topic = stores.log.physical_topic(TRANSFER_TOPIC);
    let refused = |error: ledger::RetryError| RedriveError::Refused {
        partition,
        offset,
        error,
    };
    let entry = quarantine::find(settlements.pool(), &topic, partition, offset)
        .await
        .map_err(|error| refused(error.into()))?
        .ok_or(RedriveError::NotFound { partition, offset })?;
    let (transfers, settled) = settlements.retry(&entry).await.map_err(refused)?;
    let Some(transfer) = transfers.first().cloned() else {
        let error = ledger::RetryError::StillUnreadable("it carries no transfer".into());
        return Err(refused(error));
    };
    tracing::info!(transaction_id = %transfer.transaction_id, transfers = transfers.len(), partition, offset, "re-drove a quarantined message");
    let effects = async {
        update_cache(stores, &transfers, &settled, &[]).await?;
        emit_events(stores, &transfers, &settled).await?;
        if let Some(batch_id) = settled.effects {
            settlements.effects_done(batch_id).await?;
        }
        Ok::<(), SettlementError>(())
    };
    if let Err(error) = effects.await {
        tracing::warn!(%error, "a re-driven transfer's effects did not run; they stay recorded");
    }
    let outcome = settled.transfers[0].outcome;
    Ok((transfer, outcome))
}
