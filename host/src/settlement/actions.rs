//! Publishing the actions that resolve two-phase transfers, and the pass that expires the
//! overdue ones and re-publishes any accepted action whose message may never have reached the
//! log. An action is recorded before it is published (`stores::actions`), so publishing it
//! again is always safe: settlement applies an action id once.

use std::time::Duration;

use transferd_message::{Action, ActionMessage, TRANSFER_TOPIC};
use uuid::Uuid;

use crate::stores::Stores;
use crate::stores::actions::NewAction;
use crate::stores::kafka::LogError;
use crate::trace::TraceContext;

/// Most transfers one expiry pass expires, and most actions it re-publishes.
const PASS_LIMIT: i64 = 1_000;

/// Produces an action's message under its sender's key, the key of the transfer it resolves,
/// so it follows that transfer's own message in the log.
pub async fn publish(
    stores: &Stores,
    message: &ActionMessage,
    trace: Option<&TraceContext>,
) -> Result<(), LogError> {
    let traced = trace.map(TraceContext::kafka_headers).unwrap_or_default();
    let id_text = message.pending_id.to_string();
    let mut headers = vec![("transaction_id", id_text.as_str())];
    headers.extend(traced.iter().map(|(name, value)| (*name, value.as_str())));
    let key = message.sender_id.to_string();
    stores
        .log
        .produce(TRANSFER_TOPIC, &key, &message.to_bytes(), &headers)
        .await?;
    Ok(())
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpiryReport {
    pub expired: usize,
    pub republished: usize,
}

/// Expires every pending transfer due at `now_ms` (records an expiry and publishes it) and
/// re-publishes actions accepted more than `republish_after` before `now_ms` whose transfer
/// is still pending (their own request's publish had that long). `now_ms` is the caller's
/// clock, so a test can pass a later one.
pub async fn expiry_pass(
    stores: &Stores,
    now_ms: i64,
    republish_after: Duration,
) -> Result<ExpiryReport, PassError> {
    let mut report = ExpiryReport::default();
    for transaction_id in stores.ledger.due_for_expiry(now_ms, PASS_LIMIT).await? {
        let new = NewAction {
            transaction_id,
            action_id: Uuid::now_v7(),
            action: Action::Expire,
            amount_minor: None,
            now_ms,
        };
        // Refused: a post or void won meanwhile, which is fine.
        if let Ok(message) = stores.ledger.accept_action(&new).await? {
            publish(stores, &message, None).await?;
            report.expired += 1;
        }
    }
    let before_ms =
        now_ms.saturating_sub(i64::try_from(republish_after.as_millis()).unwrap_or(i64::MAX));
    for message in stores
        .ledger
        .unapplied_actions(before_ms, PASS_LIMIT)
        .await?
    {
        publish(stores, &message, None).await?;
        report.republished += 1;
    }
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Ledger(#[from] crate::stores::postgres::LedgerError),
    #[error(transparent)]
    Log(#[from] LogError),
}
