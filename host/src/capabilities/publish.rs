//! `publish.send`: reserve the hold, produce to Kafka, wait for the acknowledgement; release
//! the hold when producing fails.

use std::sync::Arc;

use crate::capabilities::{Capabilities, RequestState};
use crate::guest::bindings::transferd::transfer::publish::{self, Hold, Outgoing, PublishError};
use crate::stores::kafka::GUEST_TOPICS;
use crate::stores::redis::HoldOutcome;

impl publish::Host for RequestState {
    async fn send(&mut self, message: Outgoing) -> wasmtime::Result<Result<(), PublishError>> {
        let capabilities = Arc::clone(&self.capabilities);
        let answer = deliver(&capabilities, &self.transaction_id, message).await?;
        self.answers.publish = Some(match &answer {
            Ok(()) => serde_json::json!("ok"),
            Err(PublishError::InsufficientFunds) => serde_json::json!("insufficient-funds"),
            Err(PublishError::Unavailable(reason)) => serde_json::json!({"unavailable": reason}),
        });
        Ok(answer)
    }
}

async fn deliver(
    capabilities: &Capabilities,
    transaction_id: &str,
    message: Outgoing,
) -> wasmtime::Result<Result<(), PublishError>> {
    // A guest that publishes where it may not, or holds nothing, is broken: trap it.
    wasmtime::ensure!(
        GUEST_TOPICS.contains(&message.topic.as_str()),
        "the guest may not publish to topic {:?}",
        message.topic
    );
    if let Some(hold) = &message.hold {
        wasmtime::ensure!(
            hold.amount_minor > 0,
            "a hold must be positive, not {}",
            hold.amount_minor
        );
    }

    let held = match &message.hold {
        None => false,
        Some(hold) => match reserve(capabilities, transaction_id, hold, &message.payload).await {
            Ok(held) => held,
            Err(error) => return Ok(Err(error)),
        },
    };

    crate::crash::point("after-hold");
    let headers = [("transaction_id", transaction_id)];
    match capabilities
        .log
        .produce(&message.topic, &message.key, &message.payload, &headers)
        .await
    {
        Ok(acknowledged) => {
            crate::crash::point("after-produce");
            tracing::debug!(
                transaction_id,
                partition = acknowledged.partition,
                offset = acknowledged.offset,
                "published"
            );
            Ok(Ok(()))
        }
        Err(error) => {
            tracing::warn!(%error, transaction_id, "publish failed");
            if held && let Some(hold) = &message.hold {
                release(capabilities, transaction_id, hold).await;
            }
            Ok(Err(PublishError::Unavailable(error.to_string())))
        }
    }
}

/// Takes the hold. Returns whether one was taken: with Redis down the transfer goes ahead
/// without one, because the ledger re-checks the balance when it settles.
async fn reserve(
    capabilities: &Capabilities,
    transaction_id: &str,
    hold: &Hold,
    payload: &[u8],
) -> Result<bool, PublishError> {
    let cache = &capabilities.cache;
    let attempt = || {
        cache.reserve_hold(
            transaction_id,
            hold.account_id,
            &hold.currency,
            hold.amount_minor,
            payload,
        )
    };
    let outcome = match attempt().await {
        Ok(HoldOutcome::Missing) => {
            // Not cached: load the settled balance, then try once more.
            match capabilities
                .ledger
                .balance(hold.account_id, &hold.currency)
                .await
            {
                Ok(Some(balance)) => {
                    let stored = cache
                        .store_balance(
                            hold.account_id,
                            &hold.currency,
                            balance.balance_minor,
                            balance.version,
                        )
                        .await;
                    match stored {
                        Ok(_) => attempt().await,
                        Err(error) => Err(error),
                    }
                }
                Ok(None) => return Err(PublishError::InsufficientFunds),
                Err(error) => return Err(PublishError::Unavailable(error.to_string())),
            }
        }
        other => other,
    };
    match outcome {
        Ok(HoldOutcome::Reserved) => Ok(true),
        Ok(HoldOutcome::Insufficient) => Err(PublishError::InsufficientFunds),
        // Still missing right after filling it: the account vanished; nothing to hold.
        Ok(HoldOutcome::Missing) => Err(PublishError::InsufficientFunds),
        Err(error) => {
            tracing::warn!(%error, transaction_id, "cannot reserve a hold; publishing without one");
            Ok(false)
        }
    }
}

async fn release(capabilities: &Capabilities, transaction_id: &str, hold: &Hold) {
    if let Err(error) = capabilities
        .cache
        .release_hold(transaction_id, hold.account_id, &hold.currency)
        .await
    {
        // The hold stays until it is released by hand or the key is rebuilt; it only makes
        // the account look poorer, never richer.
        tracing::error!(%error, transaction_id, "could not release the hold of a failed publish");
    }
}
