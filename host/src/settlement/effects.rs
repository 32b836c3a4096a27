//! A committed batch's after-commit effects: new balances into the cache with the holds
//! released, the events, then the record of them forgotten; and the effects a previous owner
//! left, run before reading on. One file so the order of the steps, on which a crash between
//! any two depends, is written once.

use super::SettlementError;
use super::dead_letter::dead_letter;
use super::decide::Transfer;
use super::events::emit_events;
use super::ledger::{SettledBatch, Settlements};
use super::retry::retrying;
use crate::shutdown::Stop;
use crate::stores::Stores;
use crate::stores::redis::{SettledBalance, SettledHold};

/// Runs the effects a previous owner of the topic recorded and did not finish, and sends the
/// quarantined messages it did not get onto the dead-letter topic. False when
/// stopping was requested first.
pub(super) async fn finish_outstanding(
    stores: &Stores,
    settlements: &Settlements,
    stop: &mut Stop,
) -> bool {
    loop {
        let Some((messages, settled)) = retrying(stop, "reading outstanding effects", || {
            settlements.outstanding_effects()
        })
        .await
        else {
            return false;
        };
        if messages.is_empty() {
            break;
        }
        tracing::info!(
            transfers = messages.len(),
            "running the effects a previous worker left"
        );
        if !run_effects(stores, settlements, &messages, &settled, &[], stop).await {
            return false;
        }
    }
    // Quarantined messages a previous worker did not get onto the dead-letter topic.
    dead_letter(stores, settlements, stop).await
}

/// The after-commit effects of settled transfers, retried until they run, then forgotten;
/// `released` are the holds of quarantined messages, given back with the others. False when
/// stopping was requested first (they stay recorded for the next worker).
pub(super) async fn run_effects(
    stores: &Stores,
    settlements: &Settlements,
    messages: &[Transfer],
    settled: &SettledBatch,
    released: &[SettledHold],
    stop: &mut Stop,
) -> bool {
    if messages.is_empty() && released.is_empty() {
        return true;
    }
    let done = retrying(stop, "running a batch's effects", || async {
        update_cache(stores, messages, settled, released).await?;
        crate::crash::point("after-cache-update");
        emit_events(stores, messages, settled).await?;
        Ok::<(), SettlementError>(())
    })
    .await;
    if done.is_none() {
        return false;
    }
    crate::crash::point("after-events");
    let Some(batch_id) = settled.effects else {
        return true;
    };
    retrying(stop, "forgetting a batch's effects", || {
        settlements.effects_done(batch_id)
    })
    .await
    .is_some()
}

/// New balances first, holds released in the same atomic step: available never counts a
/// settled transfer twice (balance lowered and still held is only conservative) or not at all.
pub(super) async fn update_cache(
    stores: &Stores,
    messages: &[Transfer],
    settled: &SettledBatch,
    released: &[SettledHold],
) -> Result<(), SettlementError> {
    let balances: Vec<SettledBalance> = settled
        .accounts
        .iter()
        .map(|((user_id, currency), balance)| SettledBalance {
            user_id: *user_id,
            currency: currency.clone(),
            balance_minor: balance.balance_minor,
            version: balance.version,
        })
        .collect();
    let holds: Vec<SettledHold> = messages
        .iter()
        .map(|message| SettledHold {
            transaction_id: message.transaction_id.to_string(),
            user_id: message.sender_id,
            currency: message.currency.clone(),
        })
        .chain(released.iter().cloned())
        .collect();
    stores.cache.settle(&balances, &holds).await?;
    Ok(())
}
