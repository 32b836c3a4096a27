//! `POST /transfers`: parse the body, mint the transaction id, let the guest decide, answer
//! in the original service's shapes.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use transferd_guest::logic::{Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;

use chrono::SecondsFormat;
use transferd_guest::money::{currency_exponent, format_minor};

use std::sync::Arc;

use crate::guest::runtime::{Decided, Guest, GuestFailure};
use crate::guest::shadow;
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::{App, GUEST_VERSION_HEADER};
use crate::stores::postgres::TransferRecord;

pub async fn create(app: &App, headers: &HeaderMap, body: Incoming) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body).await?;
    let request = parse_request(&bytes)?;

    let transaction_id = uuid::Uuid::now_v7();
    let (guest, shadow) = app.serving().pick(&transaction_id);
    let context = RequestContext {
        transaction_id: transaction_id.to_string(),
        received_at_ms: now_ms(),
        principal: None,
        guest_version: guest.version().to_string(),
    };
    let decided = guest
        .initiate_transfer(app.capabilities.clone(), &context, &request)
        .await
        .map_err(|failure| {
            tracing::error!(%failure, transaction_id = context.transaction_id, "guest failed");
            match failure {
                GuestFailure::Trap(_) => ApiError::Internal(failure.to_string()),
                GuestFailure::Timeout(_) => ApiError::Unavailable(failure.to_string()),
            }
        })?;
    if let Some(candidate) = shadow {
        shadow_run(app, candidate, &context, &request, &decided);
    }
    let mut response = match decided.decision {
        Ok(accepted) => {
            assert_eq!(
                accepted.transaction_id, context.transaction_id,
                "the guest accepted a different transfer"
            );
            json_response(
                StatusCode::OK,
                &json!({"status": "success", "transaction_id": accepted.transaction_id}),
            )
        }
        Err(rejection) => rejection_error(rejection, &request).into_response(),
    };
    // Every decision names the version that made it, refusals included.
    if let Ok(value) = HeaderValue::from_str(guest.version()) {
        response.headers_mut().insert(GUEST_VERSION_HEADER, value);
    }
    Ok(response)
}

fn parse_request(bytes: &[u8]) -> Result<TransferRequest, ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let sender_id = fields.integer("sender_id");
    let receiver_id = fields.integer("receiver_id");
    let amount = fields.decimal_text("amount");
    let currency = fields.string("currency");
    let description = fields.optional_string("description");
    fields.finish()?;
    match (sender_id, receiver_id, amount, currency) {
        (Some(sender_id), Some(receiver_id), Some(amount), Some(currency)) => Ok(TransferRequest {
            sender_id,
            receiver_id,
            amount,
            currency,
            description,
        }),
        _ => Err(ApiError::Internal(
            "a field was neither read nor reported".into(),
        )),
    }
}

fn rejection_error(rejection: Rejection, request: &TransferRequest) -> ApiError {
    match rejection {
        Rejection::Invalid(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|error| Invalid::body_field(&error.field, &error.code, error.message))
                .collect(),
        ),
        Rejection::InsufficientFunds => ApiError::InsufficientFunds,
        Rejection::ReceiverNotFound => ApiError::Validation(vec![Invalid::body_field(
            "receiver_id",
            "receiver_not_found",
            format!(
                "receiver {} has no {} account",
                request.receiver_id, request.currency
            ),
        )]),
        Rejection::Forbidden(reason) => ApiError::Forbidden(reason),
        Rejection::Unavailable(reason) => ApiError::Unavailable(format!(
            "the transfer was not accepted, try again later: {reason}"
        )),
    }
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /transfers/{transaction_id}`: the ledger's record once settled; `pending` while the
/// transfer is accepted but not yet settled (from its pending record in Redis).
pub async fn show(app: &App, transaction_id: &str) -> Result<Reply, ApiError> {
    let Ok(id) = uuid::Uuid::parse_str(transaction_id) else {
        return Err(ApiError::Validation(vec![Invalid {
            location: vec!["path".into(), "transaction_id".into()],
            message: "transaction_id must be a UUID".into(),
            kind: "uuid_parsing".into(),
        }]));
    };
    let capabilities = &app.capabilities;
    let ledger_error = match capabilities.ledger.transfer(id).await {
        Ok(Some(record)) => return Ok(json_response(StatusCode::OK, &settled_body(&record))),
        Ok(None) => None,
        Err(error) => Some(error),
    };
    match capabilities.cache.pending(&id.to_string()).await {
        Ok(Some(message)) => {
            let message: serde_json::Value = serde_json::from_slice(&message).unwrap_or_default();
            Ok(json_response(StatusCode::OK, &pending_body(&message)))
        }
        Ok(None) => match ledger_error {
            Some(error) => Err(ApiError::Unavailable(error.to_string())),
            None => Err(ApiError::NotFoundMessage(format!("no transfer {id}"))),
        },
        Err(cache_error) => match ledger_error {
            Some(error) => Err(ApiError::Unavailable(format!("{error}; {cache_error}"))),
            None => Err(ApiError::NotFoundMessage(format!(
                "no settled transfer {id}"
            ))),
        },
    }
}

fn settled_body(record: &TransferRecord) -> serde_json::Value {
    let exponent = currency_exponent(&record.currency).unwrap_or(0);
    json!({
        "transaction_id": record.transaction_id,
        "kind": record.kind,
        "status": record.status,
        "reason": record.reason,
        "sender_id": record.sender_id,
        "receiver_id": record.receiver_id,
        "amount": format_minor(record.amount_minor, exponent),
        "amount_minor": record.amount_minor,
        "currency": record.currency,
        "description": record.description,
        "created_at": record.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "settled_at": record.settled_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

fn pending_body(message: &serde_json::Value) -> serde_json::Value {
    let exponent = message["currency"]
        .as_str()
        .and_then(currency_exponent)
        .unwrap_or(0);
    let amount = message["amount_minor"]
        .as_i64()
        .map(|minor| format_minor(minor, exponent));
    json!({
        "transaction_id": message["transaction_id"],
        "kind": "transfer",
        "status": "pending",
        "reason": null,
        "sender_id": message["sender_id"],
        "receiver_id": message["receiver_id"],
        "amount": amount,
        "amount_minor": message["amount_minor"],
        "currency": message["currency"],
        "description": message["description"],
        "created_at": message["created_at"],
        "settled_at": null,
    })
}

/// Runs the shadow candidate on this request in the background, with the answers the active
/// version got, and records whether it decided the same.
fn shadow_run(
    app: &App,
    candidate: Arc<Guest>,
    context: &RequestContext,
    request: &TransferRequest,
    decided: &Decided,
) {
    let book = Arc::clone(&app.shadow_book);
    let replay = shadow::replay_of(&decided.answers);
    let active = shadow::result_of(&decided.decision);
    let mut context = context.clone();
    context.guest_version = candidate.version().to_string();
    let request = request.clone();
    tokio::spawn(async move {
        let outcome = candidate.run_replayed(&context, &request, replay).await;
        let result = outcome.as_ref().ok().map(|outcome| &outcome["result"]);
        book.record(
            candidate.version(),
            &context.transaction_id,
            &active,
            result,
        );
    });
}
