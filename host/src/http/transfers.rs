//! `POST /transfers`: parse the body, mint the transaction id, let the guest decide, answer
//! in the original service's shapes.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use transferd_guest::logic::{Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;

use crate::guest::runtime::GuestFailure;
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::{App, GUEST_VERSION_HEADER};

pub async fn create(app: &App, headers: &HeaderMap, body: Incoming) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body).await?;
    let request = parse_request(&bytes)?;

    let guest = app.guest();
    let context = RequestContext {
        transaction_id: uuid::Uuid::now_v7().to_string(),
        received_at_ms: now_ms(),
        principal: None,
        guest_version: guest.version().to_string(),
    };
    let decision = guest
        .initiate_transfer(app.capabilities.clone(), &context, &request)
        .await
        .map_err(|failure| {
            tracing::error!(%failure, transaction_id = context.transaction_id, "guest failed");
            match failure {
                GuestFailure::Trap(_) => ApiError::Internal(failure.to_string()),
                GuestFailure::Timeout(_) => ApiError::Unavailable(failure.to_string()),
            }
        })?;
    let mut response = match decision {
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
        Err(rejection) => return Err(rejection_error(rejection, &request)),
    };
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
