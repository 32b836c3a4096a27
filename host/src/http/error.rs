//! Every error the API answers with, and its HTTP form, in one place.
//!
//! Bodies keep the original FastAPI service's shapes: `{"detail": "text"}` for single errors,
//! `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` for validation errors.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;
use serde_json::{Value, json};

use transferd_guest::logic::Rejection;
use transferd_guest::rules::{FieldError, TransferRequest};

use crate::auth::AuthError;
use crate::guest::registry::RegistryError;
use crate::guest::runtime::GuestFailure;
use crate::http::api::{
    BatchOutcomeUnknown, Detail, ErrorBody, ErrorCode, OutcomeUnknown, Problem, Unknown,
};
use crate::settlement::RedriveError;
use crate::settlement::ledger::RetryError;
use crate::stores::idempotency::KeyError;
use crate::stores::postgres::LedgerError;

/// One validation problem, FastAPI-style; defined with the body reader in `transferd-wire`.
pub use transferd_wire::Invalid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Validation(Vec<Invalid>),
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No, a malformed, or an invalid bearer token, or Basic credentials where only a bearer
    /// token opens (401); a valid one without the admin role on an admin route, or a change
    /// sent from another origin (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    NotFoundMessage(String),
    /// `allow` is the path's methods, for the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("too many requests; retry in {retry_after_s} s")]
    TooManyRequests { retry_after_s: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The transfer's message may or may not be in the log; `GET /transfers/{id}` tells later.
    #[error("the outcome of transfer {transaction_id} is unknown: {reason}")]
    OutcomeUnknown {
        transaction_id: String,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// An atomic batch's transfer that was not refused itself: another of the batch was.
    #[error("{0}")]
    BatchFailed(String),
    /// A batch's record may or may not be in the log.
    #[error("the outcome of batch {batch_id} is unknown: {reason}")]
    BatchOutcomeUnknown {
        batch_id: uuid::Uuid,
        transaction_ids: Vec<uuid::Uuid>,
        reason: String,
    },
}

/// A body that could not be read as its fields is a 422 listing every problem.
impl From<transferd_wire::BodyError> for ApiError {
    fn from(error: transferd_wire::BodyError) -> ApiError {
        ApiError::Validation(error.problems)
    }
}

/// The ledger's refusals of a deposit name the field at fault; anything else is the database
/// not answering, which a retry may get past.
impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> ApiError {
        let (field, kind) = match error {
            LedgerError::Overflow => ("amount", "less_than_equal"),
            LedgerError::DepositIdReused => ("deposit_id", "deposit_id_reused"),
            _ => return ApiError::Unavailable(error.to_string()),
        };
        ApiError::Validation(vec![Invalid::body_field(field, kind, error.to_string())])
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        match error {
            RegistryError::Load(_)
            | RegistryError::Invariant { .. }
            | RegistryError::FuelBudget { .. } => ApiError::Unprocessable(error.to_string()),
            RegistryError::UnknownVersion(_) => ApiError::NotFoundMessage(error.to_string()),
            RegistryError::NothingToRollBack => ApiError::Conflict(error.to_string()),
            RegistryError::Database(_) => ApiError::Unavailable(error.to_string()),
            RegistryError::Corrupt(_) => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<RedriveError> for ApiError {
    fn from(error: RedriveError) -> ApiError {
        match error {
            RedriveError::NotFound { .. } => ApiError::NotFoundMessage(error.to_string()),
            RedriveError::Refused {
                error: RetryError::Ledger(_),
                ..
            } => ApiError::Unavailable(error.to_string()),
            RedriveError::Refused {
                error: RetryError::AlreadyRetried,
                ..
            } => ApiError::Conflict(error.to_string()),
            RedriveError::Refused { .. } => ApiError::Unprocessable(error.to_string()),
        }
    }
}

/// An `Idempotency-Key` that cannot be a key is a problem with the request's header.
impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> ApiError {
        ApiError::Validation(vec![Invalid::header(
            "idempotency-key",
            "idempotency_key",
            error.to_string(),
        )])
    }
}

/// A guest call that decided nothing: a timeout or no room is worth retrying (503); a trap, a
/// broken host check or a spent fuel budget is the guest's fault (500).
impl From<GuestFailure> for ApiError {
    fn from(failure: GuestFailure) -> ApiError {
        match failure {
            GuestFailure::Timeout(_) | GuestFailure::Busy => {
                ApiError::Unavailable(failure.to_string())
            }
            GuestFailure::Trap(_) | GuestFailure::Violation(_) | GuestFailure::OutOfFuel(_) => {
                ApiError::Internal(failure.to_string())
            }
        }
    }
}

/// A broken transfer rule as a problem with the body's field.
pub fn field_problem(error: FieldError) -> Invalid {
    // `metadata.<key>` names one member of a field; a key may hold dots of its own.
    match error.field.split_once('.') {
        Some((field, key)) => Invalid::body_member(field, key, &error.code, error.message),
        None => Invalid::body_field(&error.field, &error.code, error.message),
    }
}

impl ApiError {
    /// The guest's refusal of `request`, in the original service's shapes.
    pub fn rejected(rejection: Rejection, request: &TransferRequest) -> ApiError {
        match rejection {
            Rejection::Invalid(errors) => {
                ApiError::Validation(errors.into_iter().map(field_problem).collect())
            }
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
}

pub type Reply = Response<Full<Bytes>>;

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientFunds | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Auth(AuthError::NotAdmin | AuthError::ForeignOrigin) => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound | ApiError::NotFoundMessage(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_)
            | ApiError::OutcomeUnknown { .. }
            | ApiError::BatchOutcomeUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BatchFailed(_) => StatusCode::CONFLICT,
        }
    }

    /// The machine-readable code beside `detail`; `None` for validation errors (FastAPI's shape).
    fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            ApiError::Validation(_)
            | ApiError::OutcomeUnknown { .. }
            | ApiError::BatchOutcomeUnknown { .. } => return None,
            ApiError::BatchFailed(_) => ErrorCode::BatchFailed,
            ApiError::InsufficientFunds => ErrorCode::InsufficientFunds,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Auth(AuthError::NotAdmin | AuthError::ForeignOrigin)
            | ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Auth(_) => ErrorCode::Unauthorized,
            ApiError::Unprocessable(_) => ErrorCode::Unprocessable,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::NotFound | ApiError::NotFoundMessage(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::RequestTimeout => ErrorCode::RequestTimeout,
            ApiError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        })
    }

    /// The human text: the original service's words where it had some, kept for its clients.
    fn detail(&self) -> Detail {
        Detail::Message(match self {
            ApiError::Validation(problems) => {
                return Detail::Problems(
                    problems
                        .iter()
                        .map(|problem| Problem {
                            loc: problem.location.clone(),
                            msg: problem.message.clone(),
                            kind: problem.kind.clone(),
                        })
                        .collect(),
                );
            }
            ApiError::InsufficientFunds => "Недостаточно средств".into(),
            ApiError::UnsupportedMediaType => "Content-Type must be application/json".into(),
            ApiError::PayloadTooLarge { limit_bytes } => {
                format!("request body must be at most {limit_bytes} bytes")
            }
            ApiError::NotFound => "Not Found".into(),
            ApiError::MethodNotAllowed { .. } => "Method Not Allowed".into(),
            ApiError::BadRequest(message)
            | ApiError::Forbidden(message)
            | ApiError::Unprocessable(message)
            | ApiError::Conflict(message)
            | ApiError::NotFoundMessage(message)
            | ApiError::Unavailable(message)
            | ApiError::BatchFailed(message)
            | ApiError::Internal(message) => message.clone(),
            ApiError::BatchOutcomeUnknown {
                batch_id, reason, ..
            } => format!(
                "the batch's outcome is unknown: {reason}; retry with the same Idempotency-Key, \
                 or ask GET /transfers/{{id}} of its transfers (batch {batch_id})"
            ),
            ApiError::OutcomeUnknown {
                transaction_id,
                reason,
            } => format!(
                "the transfer's outcome is unknown: {reason}; GET /transfers/{transaction_id} tells"
            ),
            ApiError::Auth(_) | ApiError::RequestTimeout | ApiError::TooManyRequests { .. } => {
                self.to_string()
            }
        })
    }

    fn body(&self) -> Value {
        let body = match self {
            ApiError::OutcomeUnknown { transaction_id, .. } => {
                serde_json::to_value(OutcomeUnknown {
                    detail: match self.detail() {
                        Detail::Message(text) => text,
                        Detail::Problems(_) => String::new(),
                    },
                    status: Unknown::Unknown,
                    transaction_id: transaction_id.clone(),
                })
            }
            ApiError::BatchOutcomeUnknown {
                batch_id,
                transaction_ids,
                ..
            } => serde_json::to_value(BatchOutcomeUnknown {
                detail: match self.detail() {
                    Detail::Message(text) => text,
                    Detail::Problems(_) => String::new(),
                },
                status: Unknown::Unknown,
                batch_id: *batch_id,
                transaction_ids: transaction_ids.clone(),
            }),
            _ => serde_json::to_value(ErrorBody {
                detail: self.detail(),
                code: self.code(),
            }),
        };
        body.unwrap_or_else(|_| json!({"detail": "the error could not be written"}))
    }

    /// A batch item's refusal: the status and body a `POST /transfers` of it would answer.
    pub fn as_item(&self) -> (StatusCode, Value) {
        (self.status(), self.body())
    }

    pub fn into_response(self) -> Reply {
        let mut response = json_response(self.status(), &self.body());
        if let ApiError::MethodNotAllowed { allow } = &self
            && let Ok(allow) = HeaderValue::from_str(allow)
        {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if let ApiError::TooManyRequests { retry_after_s } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if let ApiError::Auth(error) = &self
            && error.challenges()
            && let Ok(challenge) = HeaderValue::from_str(&bearer_challenge(error))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The RFC 6750 challenge for a refusal: `Bearer realm=..., error=..., error_description=...`.
/// The description is the error's own text, which never holds the token.
fn bearer_challenge(error: &AuthError) -> String {
    let description: String = error
        .to_string()
        .chars()
        .filter(|c| *c == ' ' || (c.is_ascii_graphic() && *c != '"' && *c != '\\'))
        .collect();
    format!(
        "Bearer realm=\"transferd\", error=\"{}\", error_description=\"{description}\"",
        error.code()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest names one metadata entry `metadata.<key>`; the answer locates it as pydantic
    /// locates a dictionary's member, the key whole even when it holds dots.
    #[test]
    fn a_guest_s_dotted_field_is_located_as_a_member() {
        let problem = |field: &str| {
            field_problem(FieldError {
                field: field.into(),
                message: "m".into(),
                code: "c".into(),
            })
            .location
        };
        assert_eq!(problem("amount"), ["body", "amount"]);
        assert_eq!(
            problem("metadata.order_id"),
            ["body", "metadata", "order_id"]
        );
        assert_eq!(problem("metadata.a.b"), ["body", "metadata", "a.b"]);
    }

    #[test]
    fn insufficient_funds_keeps_the_original_words() {
        let error = ApiError::InsufficientFunds;
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.body()["detail"], "Недостаточно средств");
    }

    #[test]
    fn an_unknown_outcome_names_the_transaction_to_ask_about() {
        let error = ApiError::OutcomeUnknown {
            transaction_id: "t-1".into(),
            reason: "timed out".into(),
        };
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error.body(),
            json!({
                "detail": "the transfer's outcome is unknown: timed out; GET /transfers/t-1 tells",
                "status": "unknown",
                "transaction_id": "t-1",
            })
        );
    }

    #[test]
    fn auth_refusals_carry_a_bearer_challenge_and_a_fastapi_body() {
        use crate::auth::jwt::TokenError;
        let expired = ApiError::from(AuthError::Token(TokenError::Expired)).into_response();
        assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            expired.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"transferd\", error=\"invalid_token\", error_description=\"invalid bearer token: the token has expired\""
        );
        let missing = ApiError::from(AuthError::Missing);
        assert_eq!(
            missing.body(),
            json!({"detail": "missing bearer token", "code": "unauthorized"})
        );
        assert!(
            missing.into_response().headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .is_ok_and(|value| value.contains("error=\"invalid_request\""))
        );
        let not_admin = ApiError::from(AuthError::NotAdmin).into_response();
        assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
        assert!(
            not_admin.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .is_ok_and(|value| value.contains("error=\"insufficient_scope\""))
        );
        // A foreign origin is not about the token: 403 with no challenge to answer.
        let foreign = ApiError::from(AuthError::ForeignOrigin);
        assert_eq!(
            foreign.body(),
            json!({"detail": "a request from another origin may not change anything here", "code": "forbidden"})
        );
        let foreign = foreign.into_response();
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
        assert!(!foreign.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn an_unreadable_body_is_a_422_listing_its_problems() {
        let problems = vec![
            Invalid::body_field("amount", "missing", "Field required"),
            Invalid::body_field("currency", "string_type", "Input should be a valid string"),
        ];
        let error = ApiError::from(transferd_wire::BodyError {
            problems: problems.clone(),
        });
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(matches!(error, ApiError::Validation(found) if found == problems));
    }

    #[test]
    fn domain_errors_convert_to_their_statuses() {
        let status = |error: ApiError| error.status();
        assert_eq!(
            ApiError::from(LedgerError::Overflow).body(),
            json!({"detail": [{"loc": ["body", "amount"], "msg": "the balance would exceed the largest amount an account can hold", "type": "less_than_equal"}]})
        );
        assert_eq!(
            ApiError::from(LedgerError::DepositIdReused).body()["detail"][0]["loc"],
            json!(["body", "deposit_id"])
        );
        assert_eq!(
            status(LedgerError::Unreadable("x".into()).into()),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(RegistryError::NothingToRollBack.into()),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(RegistryError::UnknownVersion("v".into()).into()),
            StatusCode::NOT_FOUND
        );
        let redrive = |error| RedriveError::Refused {
            partition: 0,
            offset: 1,
            error,
        };
        assert_eq!(
            status(redrive(RetryError::AlreadyRetried).into()),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(redrive(RetryError::StillRefused("no".into())).into()),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(GuestFailure::Busy.into()),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(GuestFailure::Trap("boom".into()).into()),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::from(KeyError::Malformed).body()["detail"][0]["loc"],
            json!(["header", "idempotency-key"])
        );
    }

    #[test]
    fn validation_errors_are_fastapi_shaped() {
        let error = ApiError::Validation(vec![Invalid::body_field(
            "amount",
            "greater_than",
            "amount must be greater than 0",
        )]);
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            error.body(),
            json!({"detail": [{"loc": ["body", "amount"], "msg": "amount must be greater than 0", "type": "greater_than"}]})
        );
    }
}
