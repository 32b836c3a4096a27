//! `POST /transfers`: parse the body, mint the transaction id, run the guest as its own task,
//! answer from what was published (`guest::verdict`) in the original service's shapes.
//! `GET /transfers/{id}`: the ledger, else a pending record in Redis or PostgreSQL; only for
//! its sender, its receiver or an admin (anyone else hears that there is no such transfer).
//!
//! The caller's user id goes to the guest as the request's `principal`; the guest refuses a
//! transfer from someone else's account (403) before it reads a balance or holds anything.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use transferd_guest::logic::{Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;
use transferd_wire::TransferFields;

use chrono::SecondsFormat;
use transferd_guest::money::{currency_exponent, format_minor};

use std::sync::Arc;

use crate::auth::Caller;
use crate::capabilities::guard::Expected;
use crate::guest::provenance;
use crate::guest::runtime::{Decided, Guest, GuestFailure};
use crate::guest::verdict::{Answer, verdict};
use crate::http::api::{
    CreateTransfer, ErrorBody, IdempotencyKey, Phase, Reason, Success, TransferAccepted,
    TransferKind, TransferStatus, TransferUnavailable, TransferView,
};
use crate::http::body::read_json_body;
use crate::http::candidate_runs::{self, Decision};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::idempotency::{self, HeldKey, Start};
use crate::http::routes::UserRoute;
use crate::http::{App, GUEST_VERSION_HEADER};
use crate::settlement::quarantine;
use crate::stores::idempotency::KeyLease;
use crate::stores::postgres::TransferRecord;
use transferd_message::TransferMessage;
use uuid::Uuid;

#[utoipa::path(
    post, path = UserRoute::CreateTransfer.path(), operation_id = "create_transfer", tag = "transfers",
    summary = "Send money to another user",
    description = "Held on the sender's account and published to the transfer log before the \
        answer: a 200 means the transfer will settle exactly once. With an `Idempotency-Key`, \
        a repeat of the same request answers the first response again \
        (`Idempotent-Replayed: true`).",
    request_body = CreateTransfer,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Accepted", body = TransferAccepted,
            headers(("idempotent-replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Insufficient funds", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "`sender_id` is not the caller", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The same key is still in flight", body = ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields, or a key reused with another body", body = ErrorBody),
        (status = 429, description = "Over the caller's rate", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds"))),
        (status = 500, description = "The guest logic failed; nothing was published", body = ErrorBody),
        (status = 503, description = "Not accepted (try again), or accepted in doubt \
            (`status: unknown`: ask `GET /transfers/{transaction_id}`)", body = TransferUnavailable),
    ),
)]
pub async fn create(
    app: &Arc<App>,
    caller: &Caller,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    let request = parse_request(&bytes)?;
    // The transfer's identity, chosen before the decision and handed to it: a retry under
    // the same idempotency key hands the same id to a new decision.
    let scope = caller.scope();
    let (transaction_id, held) =
        match idempotency::start(app, headers, scope, "POST /transfers", &bytes).await? {
            Start::Proceed {
                transaction_id,
                held,
            } => (transaction_id, held),
            Start::Replay(reply) => return Ok(reply),
        };
    if held.as_ref().is_some_and(HeldKey::is_retry)
        && let Some(reply) = accepted_before(app, transaction_id).await
    {
        return Ok(idempotency::finish(app, held, reply).await);
    }
    // Its own task: a client that disconnects, or anything else that drops this handler,
    // cannot stop a decision between its hold and its acknowledgement, nor leave its key
    // unrecorded. Boxed first: the guest call's future is large, and spawning copies what it
    // is given several times over.
    let task_app = Arc::clone(app);
    let principal = caller.principal();
    let lease = held.as_ref().map(|held| held.lease().clone());
    app.decisions
        .spawn(crate::trace::carried(Box::pin(async move {
            let reply = run_guest(&task_app, transaction_id, principal, request, lease).await;
            Ok(idempotency::finish(&task_app, held, reply).await)
        })))
        .await
        .map_err(|error| ApiError::Internal(format!("the transfer task failed: {error}")))?
}

/// The answer for a retry whose transfer the ledger already has, whatever it settled to:
/// its message was in the log, so the first attempt was accepted and only its answer was
/// lost (not recorded, or recorded in a commit the database lost). Deciding again could
/// refuse a transfer that has already moved money, since the balance no longer holds it.
/// `None` when the ledger does not have it: the retry decides again, with the same id.
async fn accepted_before(app: &App, transaction_id: Uuid) -> Option<Reply> {
    match app.stores.ledger.transfer(transaction_id).await {
        Ok(Some(_)) => Some(json_response(
            StatusCode::OK,
            &TransferAccepted {
                status: Success::Success,
                transaction_id,
            },
        )),
        Ok(None) => None,
        // A 5xx leaves the key to the next retry.
        Err(error) => Some(ApiError::from(error).into_response()),
    }
}

/// Runs the guest on one transfer and answers for it; `lease` is the request's claim on its
/// idempotency key, if it has one.
async fn run_guest(
    app: &App,
    transaction_id: Uuid,
    principal: Option<i64>,
    request: TransferRequest,
    lease: Option<KeyLease>,
) -> Reply {
    let serving = app.serving();
    let (guest, part) = serving.pick(&transaction_id, request.sender_id);
    let context = RequestContext {
        transaction_id: transaction_id.to_string(),
        received_at_ms: now_ms(),
        principal,
        guest_version: guest.version().to_string(),
    };
    let started = std::time::Instant::now();
    let decided = guest
        .initiate_transfer(app.stores.clone(), &context, &request, lease)
        .await;
    let guest_time = started.elapsed();
    let version = guest.version();
    metrics::histogram!(crate::metrics::GUEST_DURATION, "version" => version.to_owned())
        .record(guest_time.as_secs_f64());
    record_provenance(app, &guest, &context, &request, &decided);
    let (answer, violation) = match Expected::of(&context, &request) {
        Ok(expected) => verdict(&expected, &decided),
        Err(broken) => (
            Answer::Failed(GuestFailure::Violation(broken.clone())),
            Some(broken),
        ),
    };
    if let Some(violation) = &violation {
        app.violations.record(version);
        tracing::error!(
            version,
            transaction_id = context.transaction_id.as_str(),
            check = violation.check(),
            %violation,
            "the guest broke a host check"
        );
    }
    let decision = Decision {
        context: &context,
        request: &request,
        decided: &decided,
        violation: violation.as_ref(),
        guest_time,
    };
    candidate_runs::follow_up(app, part, &serving.active, &decision);
    metrics::counter!(crate::metrics::GUEST_CALLS, "version" => version.to_owned(), "outcome" => outcome_name(&answer))
        .increment(1);
    let failed_after = decided.decision.as_ref().err();
    let mut response = answer_reply(answer, failed_after, transaction_id, &context, &request);
    // Every decision names the version that made it, refusals included.
    if let Ok(value) = HeaderValue::from_str(version) {
        response.headers_mut().insert(GUEST_VERSION_HEADER, value);
    }
    response
}

/// The client's answer for the guest's verdict on transfer `id`; `failed` is how the guest
/// call failed, if it did (after publishing, an accepted transfer stands all the same).
fn answer_reply(
    answer: Answer,
    failed: Option<&GuestFailure>,
    id: Uuid,
    context: &RequestContext,
    request: &TransferRequest,
) -> Reply {
    let version = context.guest_version.as_str();
    let transaction_id = context.transaction_id.as_str();
    match answer {
        Answer::Accepted => {
            if let Some(failure) = failed {
                tracing::error!(%failure, version, transaction_id, "the guest failed after its transfer was published; it stands");
            }
            let accepted = TransferAccepted {
                status: Success::Success,
                transaction_id: id,
            };
            json_response(StatusCode::OK, &accepted)
        }
        Answer::Rejected(rejection) => ApiError::rejected(rejection, request).into_response(),
        Answer::InDoubt(reason) => ApiError::OutcomeUnknown {
            transaction_id: transaction_id.to_string(),
            reason,
        }
        .into_response(),
        Answer::BatchFailed => {
            ApiError::Internal("a single transfer is not in a batch".into()).into_response()
        }
        Answer::Failed(failure) => {
            if !matches!(failure, GuestFailure::Violation(_)) {
                tracing::error!(%failure, version, transaction_id, "guest failed");
            }
            ApiError::from(failure).into_response()
        }
    }
}

/// The request's fields, read by `transferd_wire::TransferFields`: the same code the fuzz
/// targets and property tests drive.
pub(super) fn parse_request(bytes: &[u8]) -> Result<TransferRequest, ApiError> {
    Ok(request_of(TransferFields::read(bytes)?))
}

/// The guest's request for a body's fields (a batch's items are read the same way).
pub(super) fn request_of(fields: TransferFields) -> TransferRequest {
    TransferRequest {
        sender_id: fields.sender_id,
        receiver_id: fields.receiver_id,
        amount: fields.amount,
        currency: fields.currency,
        description: fields.description,
        phase: fields.phase,
        expires_in_s: fields.expires_in_s,
        metadata: fields.metadata,
    }
}

/// The decision's kind, for the metrics.
fn outcome_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::Accepted => "accepted",
        Answer::Rejected(Rejection::Invalid(_)) => "invalid",
        Answer::Rejected(Rejection::InsufficientFunds) => "insufficient_funds",
        Answer::Rejected(Rejection::ReceiverNotFound) => "receiver_not_found",
        Answer::Rejected(Rejection::Forbidden(_)) => "forbidden",
        Answer::Rejected(Rejection::Unavailable(_)) => "unavailable",
        Answer::InDoubt(_) => "in_doubt",
        Answer::BatchFailed => "batch_failed",
        Answer::Failed(GuestFailure::Timeout(_)) => "timeout",
        Answer::Failed(GuestFailure::Busy) => "busy",
        Answer::Failed(GuestFailure::Trap(_)) => "trap",
        Answer::Failed(GuestFailure::Violation(_)) => "violation",
        Answer::Failed(GuestFailure::OutOfFuel(_)) => "out_of_fuel",
    }
}

pub(super) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /transfers/{transaction_id}`: the ledger's record once settled; `pending` while the
/// transfer is accepted but not yet settled (from its pending record in Redis, or its pending
/// row in PostgreSQL, which older versions wrote for a transfer accepted without Redis). Never
/// 404 for an accepted transfer: 503 when a place it could be in could not be asked. A caller
/// who is neither party nor admin gets the same 404 as for an id nobody accepted.
#[utoipa::path(
    get, path = UserRoute::ShowTransfer.path(), operation_id = "show_transfer", tag = "transfers",
    summary = "A transfer: pending until settled, then completed or rejected",
    description = "Only for its sender, its receiver or an admin; anyone else hears 404.",
    params(("transaction_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TransferView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Not a UUID", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, description = "A place the transfer could be in did not answer", body = ErrorBody),
    ),
)]
pub async fn show(app: &App, caller: &Caller, transaction_id: &str) -> Result<Reply, ApiError> {
    let id = path_transaction_id(transaction_id)?;
    let not_found = || ApiError::NotFoundMessage(format!("no transfer {id}"));
    let shown = find(app, id).await?.ok_or_else(not_found)?;
    if !caller.may_see_transfer(Some(shown.sender_id), Some(shown.receiver_id)) {
        return Err(not_found());
    }
    Ok(json_response(StatusCode::OK, &shown))
}

/// The `{transaction_id}` of a path: a UUID.
pub(super) fn path_transaction_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::Validation(vec![Invalid::path(
            "transaction_id",
            "uuid_parsing",
            "transaction_id must be a UUID",
        )])
    })
}

/// The transfer's body for `GET /transfers/{id}`, wherever it is; `None` when nobody knows it.
async fn find(app: &App, id: Uuid) -> Result<Option<TransferView>, ApiError> {
    let stores = &app.stores;
    let mut unreachable = Vec::new();
    match stores.ledger.transfer(id).await {
        Ok(Some(record)) => return settled_view(&record).map(Some),
        Ok(None) => {}
        Err(error) => unreachable.push(error.to_string()),
    }
    match stores.cache.pending(&id.to_string()).await {
        Ok(Some(message)) => return pending_view(&message).map(Some),
        Ok(None) => {}
        Err(error) => unreachable.push(error.to_string()),
    }
    match stores.ledger.pending(id).await {
        Ok(Some(row)) => return pending_view(&row.message).map(Some),
        Ok(None) => {}
        Err(error) => unreachable.push(error.to_string()),
    }
    match quarantine::of_transaction(stores.ledger.pool(), id).await {
        Ok(Some(entry)) => {
            if let Some(view) = quarantined_view(id, &entry) {
                return Ok(Some(view));
            }
        }
        Ok(None) => {}
        Err(error) => unreachable.push(error.to_string()),
    }
    if !unreachable.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "cannot tell what became of transfer {id}: {}",
            unreachable.join("; ")
        )));
    }
    // Settlement deletes the pending records when it commits: a transfer settled between the
    // first read and the last is in the ledger now.
    let record = stores.ledger.transfer(id).await?;
    record.as_ref().map(settled_view).transpose()
}

pub(super) fn settled_view(record: &TransferRecord) -> Result<TransferView, ApiError> {
    let unreadable = |what: &str| {
        ApiError::Internal(format!(
            "transfer {} has an unknown {what} in the ledger",
            record.transaction_id
        ))
    };
    let exponent = currency_exponent(&record.currency).ok_or_else(|| unreadable("currency"))?;
    Ok(TransferView {
        transaction_id: record.transaction_id,
        kind: record.kind,
        status: record.status,
        reason: record.reason,
        sender_id: record.sender_id,
        receiver_id: record.receiver_id,
        amount: format_minor(record.amount_minor, exponent),
        amount_minor: record.amount_minor,
        currency: record.currency.clone(),
        description: record.description.clone(),
        created_at: record
            .created_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        settled_at: Some(
            record
                .settled_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        metadata: record.metadata.as_ref().map(|json| json.0.clone()),
        phase: if record.expires_at.is_some() {
            Phase::Pending
        } else {
            Phase::Immediate
        },
        expires_at: record.expires_at.map(millis),
        posted_amount: record
            .posted_amount_minor
            .map(|posted| format_minor(posted, exponent)),
        posted_amount_minor: record.posted_amount_minor,
        resolved_at: record.resolved_at.map(millis),
    })
}

/// A moment as the API writes it: RFC 3339, milliseconds, UTC.
fn millis(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A quarantined message as the API shows it: rejected, reason `unprocessable`, nothing moved.
/// `None` when its parties, amount or currency could not be read: nobody can be shown it.
fn quarantined_view(id: Uuid, entry: &quarantine::Entry) -> Option<TransferView> {
    let currency = entry.currency.clone()?;
    let amount_minor = entry.amount_minor?;
    let exponent = currency_exponent(&currency)?;
    let at = entry
        .quarantined_at
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    Some(TransferView {
        transaction_id: id,
        kind: TransferKind::Transfer,
        status: TransferStatus::Rejected,
        reason: Some(Reason::Unprocessable),
        sender_id: entry.sender_id?,
        receiver_id: entry.receiver_id?,
        amount: format_minor(amount_minor, exponent),
        amount_minor,
        currency,
        description: None,
        created_at: at.clone(),
        settled_at: Some(at),
        metadata: None,
        phase: Phase::Immediate,
        expires_at: None,
        posted_amount: None,
        posted_amount_minor: None,
        resolved_at: None,
    })
}

/// A pending record (the transfer's message, checked by the host when it was published) as
/// the API shows it.
fn pending_view(message: &[u8]) -> Result<TransferView, ApiError> {
    // Read as settlement reads it: what is shown pending is what will settle.
    let message = TransferMessage::parse(message)
        .map_err(|error| ApiError::Internal(format!("an unreadable pending record: {error}")))?;
    let created_at = chrono::DateTime::from_timestamp_millis(message.created_at_ms)
        .ok_or_else(|| ApiError::Internal("a pending record's time is out of range".into()))?;
    let exponent = currency_exponent(&message.currency).ok_or_else(|| {
        ApiError::Internal(format!(
            "pending transfer {} has an unknown currency",
            message.transaction_id
        ))
    })?;
    let phase = if message.is_pending() {
        Phase::Pending
    } else {
        Phase::Immediate
    };
    Ok(TransferView {
        transaction_id: message.transaction_id,
        kind: TransferKind::Transfer,
        status: TransferStatus::Pending,
        reason: None,
        sender_id: message.sender_id,
        receiver_id: message.receiver_id,
        amount: format_minor(message.amount_minor, exponent),
        amount_minor: message.amount_minor,
        currency: message.currency,
        description: message.description,
        created_at: created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        settled_at: None,
        phase,
        expires_at: message
            .expires_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(millis),
        metadata: message.metadata,
        posted_amount: None,
        posted_amount_minor: None,
        resolved_at: None,
    })
}

/// Hands the guest's decision to the provenance recorder: accepted and rejected alike, not a
/// call that failed, nor a request its WIT package could not carry (refused before it ran).
fn record_provenance(
    app: &App,
    guest: &Guest,
    context: &RequestContext,
    request: &TransferRequest,
    decided: &Decided,
) {
    let Ok(result) = &decided.decision else {
        return;
    };
    if !app.provenance.is_on() || guest.package().refusal(request).is_some() {
        return;
    }
    app.provenance.record(provenance::Decision {
        context: context.clone(),
        request: request.clone(),
        wit_package: guest.package().version(),
        result: result.clone(),
        answers: decided.answers.clone(),
        decided_at: chrono::Utc::now(),
    });
}
