//! `POST /transfers/batch`: up to [`BATCH_MAX_TRANSFERS`] transfers, each decided by the guest
//! as a single transfer would be (one instance for the batch, `Guest::initiate_batch`), held
//! in one Redis step, published as one record and answered one by one.
//!
//! Ids: the batch's id is what a single transfer's would be (a new UUIDv7, or its
//! `Idempotency-Key`'s); item `i`'s transaction id is derived from it ([`item_id`]), so a
//! retry under the same key decides, holds and publishes the same ids, and settlement applies
//! each once however often the batch's record is in the log.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use transferd_guest::logic::{Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;
use transferd_message::{BATCH_MAX_TRANSFERS, BatchMessage};
use transferd_wire::BatchFields;
use uuid::Uuid;

use crate::auth::Caller;
use crate::capabilities::batch::{self, Staged};
use crate::guest::runtime::{GuestFailure, ItemDecided};
use crate::guest::verdict::{Answer, item_verdict};
use crate::http::api::{
    BatchAnswer, BatchItemStatus, BatchOutcomeUnknown, BatchResult, CreateBatch, ErrorBody,
    IdempotencyKey,
};
use crate::http::body::read_json_body_within;
use crate::http::error::{ApiError, Reply, json_response};
use crate::http::idempotency::{self, HeldKey, Start};
use crate::http::routes::UserRoute;
use crate::http::{App, GUEST_VERSION_HEADER};
use crate::stores::idempotency::KeyLease;
use crate::stores::redis::HoldOutcome;

/// Largest batch body: room for the most transfers with descriptions and some metadata.
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

#[utoipa::path(
    post, path = UserRoute::CreateBatch.path(), operation_id = "create_batch", tag = "transfers",
    summary = "Send many transfers at once",
    description = "Each transfer is decided as `POST /transfers` would decide it and answered \
        on its own; the accepted ones are held and published as one record, and settle in \
        order. `\"atomic\": true`: all or none. One `Idempotency-Key` covers the batch.",
    request_body = CreateBatch,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each transfer's answer (a batch of refusals included)", body = BatchAnswer,
            headers(("idempotent-replayed" = String, description = "`true` on a replayed answer"))),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 409, description = "The same key is still in flight", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields (an item's under its index), 0 or more \
            than 1000 transfers, or a key reused with another body", body = ErrorBody),
        (status = 429, description = "Over the caller's rate", body = ErrorBody),
        (status = 503, description = "Not accepted (nothing held or published; try again), or \
            in doubt (`status: unknown`)", body = BatchOutcomeUnknown),
    ),
)]
pub async fn create(
    app: &Arc<App>,
    caller: &Caller,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes =
        read_json_body_within(headers, body, app.body_timeout, MAX_BATCH_BODY_BYTES).await?;
    let fields = BatchFields::read(&bytes, BATCH_MAX_TRANSFERS)?;
    let scope = caller.scope();
    let (batch_id, held) =
        match idempotency::start(app, headers, scope, "POST /transfers/batch", &bytes).await? {
            Start::Proceed {
                transaction_id,
                held,
            } => (transaction_id, held),
            Start::Replay(reply) => return Ok(reply),
        };
    let requests: Vec<TransferRequest> = fields
        .transfers
        .into_iter()
        .map(super::transfers::request_of)
        .collect();
    let batch = Batch {
        id: batch_id,
        atomic: fields.atomic,
        principal: caller.principal(),
        requests,
    };
    let retry = held.as_ref().is_some_and(HeldKey::is_retry);
    // Its own task, as a single transfer's decision: nothing stops it between its holds and
    // the broker's acknowledgement, and its answer is recorded against the key.
    let task_app = Arc::clone(app);
    let lease = held.as_ref().map(|held| held.lease().clone());
    app.decisions
        .spawn(crate::trace::carried(Box::pin(async move {
            let reply = match retry {
                true => answered_before(&task_app, &batch).await,
                false => None,
            };
            let reply = match reply {
                Some(reply) => reply,
                None => run_batch(&task_app, &batch, lease).await,
            };
            Ok(idempotency::finish(&task_app, held, reply).await)
        })))
        .await
        .map_err(|error| ApiError::Internal(format!("the batch task failed: {error}")))?
}

/// A batch as the handler read it.
struct Batch {
    id: Uuid,
    atomic: bool,
    principal: Option<i64>,
    requests: Vec<TransferRequest>,
}

impl Batch {
    fn ids(&self) -> Vec<Uuid> {
        (0..self.requests.len())
            .map(|index| item_id(self.id, index))
            .collect()
    }
}

/// Item `index`'s transaction id: the batch id's first 48 bits (its UUIDv7 time, so the ids
/// sort by time like every other), then 74 bits of SHA-256 over the batch id and the index,
/// with the version (7) and variant bits set.
pub fn item_id(batch_id: Uuid, index: usize) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(batch_id.as_bytes());
    hasher.update((index as u64).to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&batch_id.as_bytes()[..6]);
    bytes[6..].copy_from_slice(&digest[..10]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// A retry whose batch the ledger has (some of its transfers settled): its record was in the
/// log, so the first attempt was accepted and only its answer was lost. Deciding again could
/// refuse transfers that moved money already. Each transfer the ledger has is accepted; the
/// others were not in the record. `None` when the ledger has none: decide again, same ids.
async fn answered_before(app: &App, batch: &Batch) -> Option<Reply> {
    let ids = batch.ids();
    let settled = match app.stores.ledger.settled_among(&ids).await {
        Ok(settled) if settled.is_empty() => return None,
        Ok(settled) => settled,
        Err(error) => return Some(ApiError::from(error).into_response()),
    };
    let answers = ids
        .iter()
        .map(|id| match settled.contains(id) {
            true => Answer::Accepted,
            false => Answer::Failed(GuestFailure::Trap(
                "not in the batch's record: refused by the attempt that published it".into(),
            )),
        })
        .collect();
    Some(answer(batch, answers))
}

/// Decides every item, holds and publishes the accepted ones, and answers each.
async fn run_batch(app: &App, batch: &Batch, lease: Option<KeyLease>) -> Reply {
    // A batch is drawn as one request, by its first transfer's sender; guardrails judge
    // single transfers only.
    let sender_id = batch
        .requests
        .first()
        .map_or(0, |request| request.sender_id);
    let (guest, _part) = app.serving().pick(&batch.id, sender_id);
    let ids = batch.ids();
    let received_at_ms = super::transfers::now_ms();
    let items: Vec<(RequestContext, TransferRequest)> = ids
        .iter()
        .zip(&batch.requests)
        .map(|(id, request)| {
            let context = RequestContext {
                transaction_id: id.to_string(),
                received_at_ms,
                principal: batch.principal,
                guest_version: guest.version().to_string(),
            };
            (context, request.clone())
        })
        .collect();
    let started = std::time::Instant::now();
    let decided = guest
        .initiate_batch(app.stores.clone(), &items, batch.atomic, lease.clone())
        .await;
    metrics::histogram!(crate::metrics::GUEST_DURATION, "version" => guest.version().to_owned())
        .record(started.elapsed().as_secs_f64());
    for item in &decided {
        if let Err(GuestFailure::Violation(violation)) = &item.decision {
            app.violations.record(guest.version());
            tracing::error!(version = guest.version(), check = violation.check(), %violation, "a batch item broke a host check");
        }
    }
    let mut reply = match deliver(app, batch, &ids, decided, lease.as_ref()).await {
        Ok(answers) => answer(batch, answers),
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(guest.version()) {
        reply.headers_mut().insert(GUEST_VERSION_HEADER, value);
    }
    reply
}

/// Holds and publishes the items the guest accepted, and returns every item's answer; an
/// atomic batch with one refusal holds and publishes nothing. `Err` for the batch as a whole:
/// not accepted (nothing held or published), or in doubt.
async fn deliver(
    app: &App,
    batch: &Batch,
    ids: &[Uuid],
    decided: Vec<ItemDecided>,
    lease: Option<&KeyLease>,
) -> Result<Vec<Answer>, ApiError> {
    let (mut answers, staged): (Vec<Answer>, Vec<Option<Staged>>) = decided
        .into_iter()
        .map(|item| (item_verdict(&item), item.staged))
        .unzip();
    if batch.atomic && answers.iter().any(|answer| *answer != Answer::Accepted) {
        return Ok(all_or_none(answers));
    }
    let held: Vec<(String, &Staged, i64)> = ids
        .iter()
        .zip(&staged)
        .zip(&batch.requests)
        .filter_map(|((id, staged), request)| {
            Some((id.to_string(), staged.as_ref()?, request.receiver_id))
        })
        .collect();
    if held.is_empty() {
        return Ok(answers);
    }
    if !crate::stores::idempotency::may_act(lease).await {
        return Err(ApiError::Unavailable(
            "the request's idempotency key is no longer its own; nothing was held or sent".into(),
        ));
    }
    let outcomes = batch::reserve(&app.stores, &held, batch.atomic)
        .await
        .map_err(|error| {
            ApiError::Unavailable(format!(
                "cannot hold the amounts ({error}); not accepted, retry"
            ))
        })?;
    if outcomes.contains(&HoldOutcome::Untrusted) {
        return Err(ApiError::Unavailable(
            crate::capabilities::HOLDS_UNTRUSTED.into(),
        ));
    }
    let mut outcome = outcomes.iter();
    for (answer, staged) in answers.iter_mut().zip(&staged) {
        if staged.is_some() && outcome.next() != Some(&HoldOutcome::Reserved) {
            *answer = Answer::Rejected(Rejection::InsufficientFunds);
        }
    }
    if batch.atomic && answers.iter().any(|answer| *answer != Answer::Accepted) {
        return Ok(all_or_none(answers));
    }
    crate::crash::point("after-batch-hold");
    let published: Vec<&(String, &Staged, i64)> = held
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == HoldOutcome::Reserved)
        .map(|(item, _)| item)
        .collect();
    produce(app, batch, &published, lease).await?;
    Ok(answers)
}

/// An atomic batch with a refusal: every item refused, those that were not with
/// `batch_failed`.
fn all_or_none(answers: Vec<Answer>) -> Vec<Answer> {
    answers
        .into_iter()
        .map(|answer| match answer {
            Answer::Accepted => Answer::BatchFailed,
            refused => refused,
        })
        .collect()
}

/// Produces the held items as one record; releases their holds when it is certainly not in
/// the log, keeps them when it may be.
async fn produce(
    app: &App,
    batch: &Batch,
    published: &[&(String, &Staged, i64)],
    lease: Option<&KeyLease>,
) -> Result<(), ApiError> {
    let Some(first) = published.first() else {
        return Ok(());
    };
    let payloads: Vec<&[u8]> = published
        .iter()
        .map(|(_, staged, _)| staged.outgoing.payload.as_slice())
        .collect();
    let record = BatchMessage::write(batch.id, batch.atomic, &payloads).map_err(|error| {
        ApiError::Internal(format!("the batch record could not be written: {error}"))
    })?;
    let batch_text = batch.id.to_string();
    let traced = crate::trace::current()
        .map(|trace| trace.kafka_headers())
        .unwrap_or_default();
    let mut headers = vec![("batch_id", batch_text.as_str())];
    headers.extend(traced.iter().map(|(name, value)| (*name, value.as_str())));
    let outgoing = &first.1.outgoing;
    let produced = app
        .stores
        .log
        .produce(&outgoing.topic, &outgoing.key, &record, &headers)
        .await;
    match produced {
        Ok(_acknowledged) => {
            crate::crash::point("after-produce");
            Ok(())
        }
        Err(error) if error.in_doubt() => {
            tracing::warn!(%error, batch_id = %batch.id, "batch publish in doubt; keeping the holds");
            metrics::counter!(crate::metrics::PUBLISHES_IN_DOUBT).increment(1);
            Err(ApiError::BatchOutcomeUnknown {
                batch_id: batch.id,
                transaction_ids: published
                    .iter()
                    .filter_map(|(id, _, _)| Uuid::parse_str(id).ok())
                    .collect(),
                reason: error.to_string(),
            })
        }
        Err(error) => {
            if crate::stores::idempotency::may_act(lease).await {
                for (id, staged, _) in published {
                    if let Some(hold) = &staged.outgoing.hold
                        && let Err(release) = app
                            .stores
                            .cache
                            .release_hold(id, hold.account_id, &hold.currency)
                            .await
                    {
                        tracing::error!(error = %release, transaction_id = id.as_str(), "could not release a refused batch's hold");
                    }
                }
            }
            Err(ApiError::Unavailable(format!(
                "the batch was not published ({error}); nothing was accepted, retry"
            )))
        }
    }
}

/// The 200 answer: each item's result, counted by outcome.
fn answer(batch: &Batch, answers: Vec<Answer>) -> Reply {
    metrics::counter!(crate::metrics::BATCHES, "atomic" => batch.atomic.to_string()).increment(1);
    let results = answers
        .into_iter()
        .zip(&batch.requests)
        .enumerate()
        .map(|(index, (answer, request))| {
            let transaction_id = item_id(batch.id, index);
            let refusal = match answer {
                Answer::Accepted => None,
                Answer::BatchFailed => Some(ApiError::BatchFailed(
                    "another transfer of this atomic batch was refused; nothing was held or published".into(),
                )),
                Answer::Rejected(rejection) => Some(ApiError::rejected(rejection, request)),
                Answer::Failed(failure) => Some(ApiError::from(failure)),
                Answer::InDoubt(reason) => Some(ApiError::Unavailable(reason)),
            };
            result(index, transaction_id, refusal)
        })
        .collect();
    let body = BatchAnswer {
        batch_id: batch.id,
        atomic: batch.atomic,
        results,
    };
    json_response(StatusCode::OK, &body)
}

/// One item's result; `refusal`: why it was refused, if it was.
fn result(index: usize, transaction_id: Uuid, refusal: Option<ApiError>) -> BatchResult {
    let outcome = if refusal.is_some() {
        "rejected"
    } else {
        "accepted"
    };
    metrics::counter!(crate::metrics::BATCH_TRANSFERS, "outcome" => outcome).increment(1);
    let Some(refusal) = refusal else {
        return BatchResult {
            index,
            transaction_id,
            status: BatchItemStatus::Accepted,
            status_code: None,
            detail: None,
            code: None,
        };
    };
    let (status, mut body) = refusal.as_item();
    BatchResult {
        index,
        transaction_id,
        status: BatchItemStatus::Rejected,
        status_code: Some(status.as_u16()),
        detail: body.get_mut("detail").map(serde_json::Value::take),
        code: body.get_mut("code").map(serde_json::Value::take),
    }
}
