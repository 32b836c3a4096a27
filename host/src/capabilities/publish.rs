//! `publish.send`: check the message against the request (`guard`), reserve the hold, produce
//! to Kafka, wait for the acknowledgement; release the hold when the message is certainly not
//! in the log, keep it when it may be.
//!
//! The hold lives in Redis. No hold, no transfer: when Redis cannot be reached, or its holds
//! cannot be trusted yet (it came back without its data: `stores::redis`, `holds_trusted`),
//! nothing is published and the answer is 503 "not accepted", since a 200 without a hold could
//! promise money that another transfer accepted at the same time spends as well.

use std::sync::Arc;

use transferd_guest::logic::Outgoing;
use uuid::Uuid;

use crate::bindings::transferd::transfer::publish::{self, PublishError};
use crate::capabilities::backend::Backend;
use crate::capabilities::hold_ahead::{self, Taken};
use crate::capabilities::{Publication, PublicationCell, RequestState, guard};
use crate::stores::idempotency::{self, KeyLease};
use crate::stores::redis::HoldOutcome;
use crate::trace::TraceContext;

impl publish::Host for RequestState {
    async fn send(
        &mut self,
        message: publish::Outgoing,
    ) -> wasmtime::Result<Result<(), PublishError>> {
        let outgoing = Outgoing::from(message);
        // Checked before anything is held or sent; a broken rule is the guest's fault: trap.
        let amount_minor = guard::admit(
            &self.expected,
            &mut self.publishes,
            &mut self.violation,
            &outgoing,
        )?;
        self.answers.sent(outgoing.clone());
        if let Some(book) = &mut self.batch {
            // A batch's item: staged, held and produced with the batch after its last item.
            let answer = book.stage(&self.expected, outgoing, amount_minor);
            self.answers.publish = Some(publish_answer(&answer));
            return Ok(answer);
        }
        let taken = self.take_hold_ahead(&outgoing, amount_minor);
        self.publication.set(Publication::InFlight);
        // Its own task: a guest timeout that drops this call cannot stop a publish between
        // the hold and the acknowledgement; the task always records how it ended.
        // Boxed first: the future is about 5 KB, and spawning copies what it is given.
        let delivery = tokio::spawn(Box::pin(deliver(
            Arc::clone(&self.stores),
            self.expected.transaction_id,
            outgoing,
            amount_minor,
            taken,
            self.publication.clone(),
            crate::trace::current(),
            self.lease.clone(),
        )));
        let answer = delivery
            .await
            .map_err(|error| wasmtime::Error::msg(format!("the publish task failed: {error}")))?;
        self.answers.publish = Some(publish_answer(&answer));
        Ok(answer)
    }
}

/// A publish's answer in the vectors' import format.
fn publish_answer(answer: &Result<(), PublishError>) -> serde_json::Value {
    match answer {
        Ok(()) => serde_json::json!("ok"),
        Err(PublishError::InsufficientFunds) => serde_json::json!("insufficient-funds"),
        Err(PublishError::Unavailable(reason)) => serde_json::json!({"unavailable": reason}),
    }
}

impl RequestState {
    /// Takes over the hold the first lookup took ahead, if Redis confirmed it (`hold_ahead`).
    fn take_hold_ahead(&mut self, outgoing: &Outgoing, amount_minor: i64) -> Taken {
        let Some(ahead) = self.ahead.take_held() else {
            return Taken::No;
        };
        // The guard admitted the message: its hold is the request's amount on the sender.
        assert!(
            outgoing
                .hold
                .as_ref()
                .is_some_and(|hold| hold.account_id == ahead.account_id
                    && hold.currency == ahead.currency
                    && hold.amount_minor == ahead.amount_minor)
                && amount_minor == ahead.amount_minor,
            "an admitted publish holds what was held ahead"
        );
        if ahead.record == outgoing.payload {
            hold_ahead::counted("used");
            Taken::AsRecorded
        } else {
            hold_ahead::counted("replaced");
            Taken::OtherRecord
        }
    }
}

/// Holds, produces, and records what happened in `publication`. `outgoing` passed the guard:
/// its hold is present, on the sender, and equals `amount_minor`; `taken` says whether that
/// hold is in Redis already (`hold_ahead`). The message carries the transaction id and, when
/// the request has one, its request id and trace context. With an idempotency key, nothing is
/// held, sent or released once the request's claim on the key is gone (`lease`).
#[allow(clippy::too_many_arguments)] // one per thing the delivery task owns
pub async fn deliver<B: Backend>(
    backend: Arc<B>,
    transaction_id: Uuid,
    outgoing: Outgoing,
    amount_minor: i64,
    taken: Taken,
    publication: PublicationCell,
    trace: Option<TraceContext>,
    lease: Option<KeyLease>,
) -> Result<(), PublishError> {
    let refused = |reason: String| Publication::Refused { reason };
    if !idempotency::may_act(lease.as_ref()).await {
        // A retry holds the key (or it cannot be told): the retry publishes, not this.
        let reason = "the request's idempotency key is no longer its own; nothing was sent";
        tracing::warn!(%transaction_id, "{reason}");
        publication.set(refused(reason.into()));
        return Err(PublishError::Unavailable(reason.into()));
    }
    let kept = hold_as_planned(&*backend, transaction_id, &outgoing, amount_minor, taken).await;
    if let Err(error) = kept {
        publication.set(refused(match &error {
            PublishError::InsufficientFunds => "insufficient funds".into(),
            PublishError::Unavailable(reason) => reason.clone(),
        }));
        return Err(error);
    }
    crate::crash::point("after-hold");
    send_held(
        &*backend,
        transaction_id,
        &outgoing,
        amount_minor,
        &publication,
        trace.as_ref(),
        lease.as_ref(),
    )
    .await
}

/// Produces a message whose hold is taken and records in `publication` what happened: the hold
/// stays while the message may be in the log, and is released once it certainly is not.
async fn send_held<B: Backend>(
    backend: &B,
    transaction_id: Uuid,
    outgoing: &Outgoing,
    amount_minor: i64,
    publication: &PublicationCell,
    trace: Option<&TraceContext>,
    lease: Option<&KeyLease>,
) -> Result<(), PublishError> {
    let traced = trace.map(TraceContext::kafka_headers).unwrap_or_default();
    let id_text = transaction_id.to_string();
    let mut headers = vec![("transaction_id", id_text.as_str())];
    headers.extend(traced.iter().map(|(name, value)| (*name, value.as_str())));
    let produced = backend
        .produce(&outgoing.topic, &outgoing.key, &outgoing.payload, &headers)
        .await;
    match produced {
        Ok(acknowledged) => {
            crate::crash::point("after-produce");
            tracing::debug!(
                %transaction_id,
                partition = acknowledged.partition,
                offset = acknowledged.offset,
                "published"
            );
            publication.set(Publication::Acknowledged { amount_minor });
            Ok(())
        }
        Err(error) if error.in_doubt() => {
            // The message may be in the log: the hold stays until the log or the ledger says.
            tracing::warn!(%error, %transaction_id, "publish in doubt; keeping the hold");
            metrics::counter!(crate::metrics::PUBLISHES_IN_DOUBT).increment(1);
            publication.set(Publication::InDoubt {
                reason: error.to_string(),
            });
            Err(PublishError::Unavailable(error.to_string()))
        }
        Err(error) => {
            if idempotency::may_act(lease).await {
                tracing::warn!(%error, %transaction_id, "publish refused; releasing the hold");
                release(backend, transaction_id, outgoing).await;
            } else {
                // The hold may be the retry's now; it keeps it (or the reconciler releases it).
                tracing::warn!(%error, %transaction_id, "publish refused; the hold is left to the retry that holds the key");
            }
            publication.set(Publication::Refused {
                reason: error.to_string(),
            });
            Err(PublishError::Unavailable(error.to_string()))
        }
    }
}

/// Has the hold in Redis as `taken` says: taken now, or taken ahead by the first lookup with
/// this message's pending record or another one (replaced here).
async fn hold_as_planned<B: Backend>(
    backend: &B,
    transaction_id: Uuid,
    outgoing: &Outgoing,
    amount_minor: i64,
    taken: Taken,
) -> Result<(), PublishError> {
    match taken {
        Taken::No => keep(backend, transaction_id, outgoing, amount_minor).await,
        Taken::AsRecorded => Ok(()),
        Taken::OtherRecord => {
            // The hold stands either way; a record that could not be replaced still names
            // this transfer (the standard rules' message for its request).
            if let Err(error) = backend
                .replace_pending(transaction_id, &outgoing.payload)
                .await
            {
                tracing::warn!(%error, %transaction_id, "could not replace the pending record of a hold taken ahead");
            }
            Ok(())
        }
    }
}

/// Takes the hold in Redis. Not possible (Redis unreachable, or its holds not trusted): the
/// transfer is not accepted.
async fn keep<B: Backend>(
    backend: &B,
    transaction_id: Uuid,
    outgoing: &Outgoing,
    amount_minor: i64,
) -> Result<(), PublishError> {
    let Some(hold) = &outgoing.hold else {
        return Err(PublishError::Unavailable(
            "a checked message carries a hold".into(),
        ));
    };
    let (account_id, currency) = (hold.account_id, hold.currency.as_str());
    let attempt = || {
        backend.reserve_hold(
            transaction_id,
            account_id,
            currency,
            amount_minor,
            &outgoing.payload,
        )
    };
    let outcome = match attempt().await {
        // Not cached: load the settled balance, then try once more.
        Ok(HoldOutcome::Missing) => match backend.settled_balance(account_id, currency).await {
            Ok(Some(balance)) => match backend.cache_balance(account_id, currency, balance).await {
                Ok(()) => attempt().await,
                Err(error) => Err(error),
            },
            Ok(None) => return Err(PublishError::InsufficientFunds),
            Err(error) => return Err(PublishError::Unavailable(error.to_string())),
        },
        other => other,
    };
    match outcome {
        Ok(HoldOutcome::Reserved) => Ok(()),
        Ok(HoldOutcome::Insufficient) => Err(PublishError::InsufficientFunds),
        // Still missing right after filling it: the account vanished; nothing to hold.
        Ok(HoldOutcome::Missing) => Err(PublishError::InsufficientFunds),
        Ok(HoldOutcome::Untrusted) => {
            refused_hold("untrusted");
            Err(PublishError::Unavailable(HOLDS_UNTRUSTED.into()))
        }
        Err(error) => {
            tracing::warn!(%error, %transaction_id, "cannot reserve a hold; not accepted");
            refused_hold("redis_unavailable");
            Err(PublishError::Unavailable(format!(
                "cannot hold the amount ({error}); not accepted, retry"
            )))
        }
    }
}

/// Why a transfer is refused while Redis's holds cannot be trusted.
pub const HOLDS_UNTRUSTED: &str = "the holds are being rebuilt after Redis lost its data \
     (settlement is catching up with the transfer log); not accepted, retry";

/// Counts a transfer refused because no hold could be taken, by `reason`.
fn refused_hold(reason: &'static str) {
    metrics::counter!(crate::metrics::HOLDS_REFUSED, "reason" => reason).increment(1);
}

/// Undoes [`keep`] for a message certainly not in the log.
async fn release<B: Backend>(backend: &B, transaction_id: Uuid, outgoing: &Outgoing) {
    let released = match &outgoing.hold {
        Some(hold) => backend
            .release_hold(transaction_id, hold.account_id, &hold.currency)
            .await
            .map_err(|error| error.to_string()),
        None => Ok(()),
    };
    if let Err(error) = released {
        // The hold stays until the reconciler releases it; it only makes the account look
        // poorer, never richer.
        tracing::error!(%error, %transaction_id, "could not release the hold of a refused publish");
    }
}
