//! `POST /admin/deposits`; the router lets only admins reach it (`auth::Gate::admin`).

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use transferd_guest::money;
use transferd_guest::rules::{STANDARD, amount_error, max_amount_minor};

use crate::auth::Admin;
use crate::http::App;
use crate::http::api::{DepositMade, Success};
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::idempotency::{self, Start};
use crate::stores::postgres::LedgerError;

/// `POST /admin/deposits` `{user_id, currency, amount, deposit_id?}`: moves money from the
/// system account to a user's account, creating it. With a `deposit_id` (a UUID) a retried
/// request returns the first result instead of depositing again.
pub async fn deposit(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    // A body that is not one JSON object gets its 422 before a key is claimed for it.
    Fields::parse(&bytes)?;
    // A key's transaction id is the deposit id when the body names none.
    let (key_id, held) =
        match idempotency::start(app, headers, admin.actor(), "POST /admin/deposits", &bytes)
            .await?
        {
            Start::Proceed {
                transaction_id,
                held,
            } => (transaction_id, held),
            Start::Replay(reply) => return Ok(reply),
        };
    let reply = make_deposit(app, &bytes, key_id)
        .await
        .unwrap_or_else(ApiError::into_response);
    Ok(idempotency::finish(app, held, reply).await)
}

/// The deposit itself; `default_id` is its id when the body gives no `deposit_id`.
async fn make_deposit(app: &App, bytes: &[u8], default_id: uuid::Uuid) -> Result<Reply, ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let user_id = fields.integer("user_id");
    let currency = fields.string("currency");
    let amount = fields.decimal_text("amount");
    let deposit_id = fields.optional_string("deposit_id");
    let mut problems = std::mem::take(&mut fields.problems);
    let deposit_id = match deposit_id.as_deref().map(uuid::Uuid::parse_str) {
        None => Some(default_id),
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            problems.push(Invalid::body_field(
                "deposit_id",
                "uuid_parsing",
                "deposit_id must be a UUID",
            ));
            None
        }
    };

    if let Some(user_id) = user_id
        && user_id <= 0
    {
        problems.push(Invalid::body_field(
            "user_id",
            "greater_than",
            "user_id must be a positive integer",
        ));
    }
    let exponent = currency.as_deref().and_then(money::currency_exponent);
    if currency.is_some() && exponent.is_none() {
        problems.push(Invalid::body_field(
            "currency",
            "unknown_currency",
            "currency must be an ISO 4217 code in capitals, like USD",
        ));
    }
    let amount_minor = match (&amount, exponent) {
        (Some(text), Some(exponent)) => {
            match money::parse_amount(text, exponent, max_amount_minor(exponent)) {
                Ok(minor) => Some(minor),
                Err(error) => {
                    let field_error =
                        amount_error(&error, currency.as_deref().unwrap_or_default(), &STANDARD);
                    problems.push(Invalid::body_field(
                        &field_error.field,
                        &field_error.code,
                        field_error.message,
                    ));
                    None
                }
            }
        }
        _ => None,
    };
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    let (Some(user_id), Some(currency), Some(amount_minor), Some(exponent), Some(deposit_id)) =
        (user_id, currency, amount_minor, exponent, deposit_id)
    else {
        return Err(ApiError::Internal(
            "a deposit field was neither read nor reported".into(),
        ));
    };

    let deposit = app
        .stores
        .ledger
        .deposit(deposit_id, user_id, &currency, amount_minor)
        .await
        .map_err(|error| match error {
            LedgerError::Overflow => ApiError::Validation(vec![Invalid::body_field(
                "amount",
                "less_than_equal",
                error.to_string(),
            )]),
            LedgerError::DepositIdReused => ApiError::Validation(vec![Invalid::body_field(
                "deposit_id",
                "deposit_id_reused",
                error.to_string(),
            )]),
            other => ApiError::Unavailable(other.to_string()),
        })?;
    let balance = deposit.balance;
    if let Err(error) = app
        .stores
        .cache
        .store_balance(user_id, &currency, balance.balance_minor, balance.version)
        .await
    {
        tracing::warn!(%error, user_id, currency, "deposit not reflected in the balance cache");
    }
    Ok(json_response(
        StatusCode::OK,
        &DepositMade {
            status: Success::Success,
            deposit_id: deposit.deposit_id,
            replayed: deposit.replayed,
            user_id,
            currency,
            balance: money::format_minor(balance.balance_minor, exponent),
            balance_minor: balance.balance_minor,
            version: balance.version,
        },
    ))
}
