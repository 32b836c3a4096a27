//! `POST /transfers/{id}/post` and `POST /transfers/{id}/void`: the second phase of a
//! two-phase transfer. Only its sender or an admin may act on it. The action is recorded in the
//! ledger first (`stores::actions`: one action per transfer, while it is pending and
//! unexpired), then published on the transfer log; a 200 means it is in the log and settles.
//! A conflict (posted already, voided, expired, another action first) is a 409 that changes
//! nothing. `Idempotency-Key` works as on `POST /transfers`: the key's id is the action's.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use transferd_guest::money::{AmountError, currency_exponent, parse_amount};
use transferd_message::Action;
use transferd_wire::Fields;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::App;
use crate::http::api::{
    ActionAccepted, ErrorBody, IdempotencyKey, PostTransfer, Success, VoidTransfer,
};
use crate::http::body::read_json_body;
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::idempotency::{self, Start};
use crate::http::routes::UserRoute;
use crate::http::transfers::path_transaction_id;
use crate::settlement::actions;
use crate::stores::actions::{NewAction, Refusal, Target};

/// How long an action waits for a just-accepted transfer to reach the ledger.
const SETTLING_WAIT: Duration = Duration::from_secs(2);

#[utoipa::path(
    post, path = UserRoute::PostTransfer.path(), operation_id = "post_transfer", tag = "transfers",
    summary = "Complete a pending transfer: move all or part of its amount",
    description = "Only its sender or an admin. Without `amount`, the whole amount moves; a \
        smaller `amount` moves that and releases the rest. 200 means the post is in the \
        transfer log and settles exactly once.",
    params(("transaction_id" = Uuid, Path), IdempotencyKey),
    request_body = PostTransfer,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActionAccepted),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The receiver may not post", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not pending: posted, voided or expired already", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Not a UUID, or a bad amount", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn post(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    body: Incoming,
    transaction_id: &str,
) -> Result<Reply, ApiError> {
    act(app, caller, headers, body, transaction_id, Action::Post).await
}

#[utoipa::path(
    post, path = UserRoute::VoidTransfer.path(), operation_id = "void_transfer", tag = "transfers",
    summary = "Release a pending transfer: nothing moves",
    description = "Only its sender or an admin. 200 means the void is in the transfer log and \
        settles exactly once. The body is an empty object.",
    params(("transaction_id" = Uuid, Path), IdempotencyKey),
    request_body = VoidTransfer,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActionAccepted),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The receiver may not void", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not pending: posted, voided or expired already", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Not a UUID, or an unknown field", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn void(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    body: Incoming,
    transaction_id: &str,
) -> Result<Reply, ApiError> {
    act(app, caller, headers, body, transaction_id, Action::Void).await
}

async fn act(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    body: Incoming,
    transaction_id: &str,
    action: Action,
) -> Result<Reply, ApiError> {
    let id = path_transaction_id(transaction_id)?;
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    let amount_text = read_body(&bytes, action)?;
    let target = settled_target(app, id).await?;
    if !caller.may_see_transfer(Some(target.sender_id), Some(target.receiver_id)) {
        return Err(ApiError::NotFoundMessage(format!("no transfer {id}")));
    }
    if !caller.may_act_as(target.sender_id) {
        return Err(ApiError::Forbidden(format!(
            "only the sender of transfer {id} (or an admin) may {} it",
            action.as_str()
        )));
    }
    let amount_minor = amount_text
        .map(|text| amount_of(&text, &target.currency))
        .transpose()?;
    let route = format!("POST /transfers/{id}/{}", action.as_str());
    let (action_id, held) =
        match idempotency::start(app, headers, caller.scope(), &route, &bytes).await? {
            Start::Proceed {
                transaction_id,
                held,
            } => (transaction_id, held),
            Start::Replay(reply) => return Ok(reply),
        };
    let new = NewAction {
        transaction_id: id,
        action_id,
        action,
        amount_minor,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    let reply = match record_and_publish(app, &new).await {
        Ok(()) => json_response(
            StatusCode::OK,
            &ActionAccepted {
                status: Success::Success,
                transaction_id: id,
                action_id,
            },
        ),
        Err(error) => error.into_response(),
    };
    Ok(idempotency::finish(app, held, reply).await)
}

/// Records the action and publishes it. A publish that certainly wrote nothing withdraws the
/// record (503, nothing changed); one in doubt keeps it, and the expiry pass publishes it
/// again, so it settles.
async fn record_and_publish(app: &App, new: &NewAction) -> Result<(), ApiError> {
    let message = match app.stores.ledger.accept_action(new).await? {
        Ok(message) => message,
        Err(refusal) => return Err(conflict(new, refusal)),
    };
    crate::crash::point("after-action-recorded");
    let trace = crate::trace::current();
    match actions::publish(&app.stores, &message, trace.as_ref()).await {
        Ok(()) => Ok(()),
        Err(error) if error.in_doubt() => Err(ApiError::OutcomeUnknown {
            transaction_id: new.transaction_id.to_string(),
            reason: error.to_string(),
        }),
        Err(error) => {
            app.stores
                .ledger
                .withdraw_action(new.transaction_id, new.action_id)
                .await?;
            Err(ApiError::Unavailable(format!("not accepted: {error}")))
        }
    }
}

fn conflict(new: &NewAction, refusal: Refusal) -> ApiError {
    let id = new.transaction_id;
    match refusal {
        Refusal::NotFound => ApiError::NotFoundMessage(format!("no transfer {id}")),
        Refusal::NotTwoPhase => ApiError::Conflict(format!(
            "transfer {id} is not a pending (two-phase) transfer"
        )),
        Refusal::Resolved(status) => {
            ApiError::Conflict(format!("transfer {id} is {} already", status.as_str()))
        }
        Refusal::Taken(action) => ApiError::Conflict(format!(
            "transfer {id} has an accepted {} already",
            action.as_str()
        )),
        Refusal::Expired => ApiError::Conflict(format!("transfer {id} has expired")),
        Refusal::NotDueYet => ApiError::Conflict(format!("transfer {id} has not expired")),
        Refusal::OverAmount { reserved_minor } => ApiError::Validation(vec![Invalid::body_field(
            "amount",
            "less_than_equal",
            format!("amount must be at most the transfer's amount ({reserved_minor} minor units)"),
        )]),
    }
}

/// The body: `{"amount": …}` optional for a post, `{}` for a void; unknown fields refused.
fn read_body(bytes: &[u8], action: Action) -> Result<Option<String>, ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let amount = match action {
        Action::Post => fields.optional_decimal_text("amount"),
        _ => None,
    };
    fields.finish()?;
    Ok(amount)
}

/// `text` in the currency's minor units, by the guest's decimal rules.
fn amount_of(text: &str, currency: &str) -> Result<i64, ApiError> {
    let exponent = currency_exponent(currency).unwrap_or(0);
    parse_amount(text, exponent, i64::MAX).map_err(|error| {
        let (kind, message) = match error {
            AmountError::NotPositive => {
                ("greater_than", "amount must be greater than 0".to_string())
            }
            AmountError::TooManyDecimals { allowed } => (
                "decimal_places",
                format!("amount has more than {allowed} decimal places for {currency}"),
            ),
            AmountError::NotDecimal | AmountError::TooLarge => (
                "decimal_parsing",
                "amount is not a valid amount".to_string(),
            ),
        };
        ApiError::Validation(vec![Invalid::body_field("amount", kind, message)])
    })
}

/// The transfer with its accepted action, waiting briefly for one accepted moments ago to
/// reach the ledger: 404 only when neither the ledger nor Redis's pending records know it
/// (the ledger asked again after Redis, since settlement deletes the record as it commits),
/// 503 (retry) when it is on its way and settlement has not reached it in time, or when Redis
/// cannot say.
async fn settled_target(app: &App, id: Uuid) -> Result<Target, ApiError> {
    let started = std::time::Instant::now();
    loop {
        if let Some(target) = app.stores.ledger.action_target(id).await? {
            return Ok(target);
        }
        let on_its_way = match app.stores.cache.pending(&id.to_string()).await {
            Ok(record) => record.is_some(),
            Err(error) => {
                return Err(ApiError::Unavailable(format!(
                    "cannot tell whether transfer {id} is on its way to the ledger: {error}"
                )));
            }
        };
        if !on_its_way {
            return match app.stores.ledger.action_target(id).await? {
                Some(target) => Ok(target),
                None => Err(ApiError::NotFoundMessage(format!("no transfer {id}"))),
            };
        }
        if started.elapsed() >= SETTLING_WAIT {
            return Err(ApiError::Unavailable(format!(
                "transfer {id} is accepted and not settled yet; try again shortly"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
