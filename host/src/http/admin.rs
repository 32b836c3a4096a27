//! `POST /admin/deposits`; the router lets only admins reach it (`auth::Gate::admin`).

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use transferd_guest::money;
use transferd_guest::rules::{STANDARD, amount_error, max_amount_minor};

use uuid::Uuid;

use crate::auth::Admin;
use crate::http::App;
use crate::http::api::{CreateDeposit, DepositMade, ErrorBody, IdempotencyKey, Success};
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, field_problem, json_response};
use crate::http::idempotency::{self, Start};
use crate::http::routes::AdminRoute;

/// `POST /admin/deposits` `{user_id, currency, amount, deposit_id?}`: moves money from the
/// system account to a user's account, creating it. With a `deposit_id` (a UUID) a retried
/// request returns the first result instead of depositing again.
#[utoipa::path(
    post, path = AdminRoute::Deposit.path(), operation_id = "deposit", tag = "admin",
    summary = "Put money into a user's account from the system account",
    request_body = CreateDeposit,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DepositMade),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn deposit(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    // An invalid body (not one JSON object, a field wrong or unknown) gets its 422 before a
    // key is claimed for it, so the key stays free for the corrected request.
    let asked = read_deposit(&bytes)?;
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
    let reply = make_deposit(app, asked, key_id)
        .await
        .unwrap_or_else(ApiError::into_response);
    Ok(idempotency::finish(app, held, reply).await)
}

/// The deposit itself; `default_id` is its id when the body gives no `deposit_id`.
async fn make_deposit(
    app: &App,
    asked: DepositRequest,
    default_id: Uuid,
) -> Result<Reply, ApiError> {
    let deposit = app
        .stores
        .ledger
        .deposit(
            asked.deposit_id.unwrap_or(default_id),
            asked.user_id,
            &asked.currency,
            asked.amount_minor,
        )
        .await?;
    let cached = deposit.cached;
    let (user_id, currency) = (asked.user_id, asked.currency);
    if let Err(error) = app
        .stores
        .cache
        .store_balance(user_id, &currency, cached.balance_minor, cached.version)
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
            balance: money::format_minor(deposit.balance_minor, asked.exponent),
            balance_minor: deposit.balance_minor,
            version: cached.version,
        },
    ))
}

/// A deposit's body, every field checked.
#[derive(Debug, PartialEq, Eq)]
struct DepositRequest {
    /// The body's `deposit_id`; without one, the deposit takes its key's transaction id.
    deposit_id: Option<Uuid>,
    user_id: i64,
    currency: String,
    /// The number of decimals of `currency`.
    exponent: u32,
    amount_minor: i64,
}

/// Reads and checks a deposit's body, reporting every problem at once (a key that is no field
/// after the rest). The amount follows the transfer rules (`transferd_guest::rules`).
fn read_deposit(bytes: &[u8]) -> Result<DepositRequest, ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let user_id = fields.integer("user_id");
    let currency = fields.string("currency");
    let amount = fields.decimal_text("amount");
    let deposit_id = fields.optional_string("deposit_id");
    let problems = &mut fields.problems;
    let deposit_id = noted(problems, named_deposit_id(deposit_id.as_deref()));
    let user_id = user_id.and_then(|id| noted(problems, positive_user_id(id)));
    let exponent = currency
        .as_deref()
        .and_then(|code| noted(problems, known_currency(code)));
    let amount_minor = match (amount, currency.as_deref(), exponent) {
        (Some(text), Some(code), Some(exponent)) => {
            noted(problems, amount_rule(&text, code, exponent))
        }
        _ => None,
    };
    let problems = fields.into_problems();
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    let (Some(deposit_id), Some(user_id), Some(currency), Some(exponent), Some(amount_minor)) =
        (deposit_id, user_id, currency, exponent, amount_minor)
    else {
        return Err(ApiError::Internal(
            "a deposit field was neither read nor reported".into(),
        ));
    };
    Ok(DepositRequest {
        deposit_id,
        user_id,
        currency,
        exponent,
        amount_minor,
    })
}

/// The checked value, or `None` with its problem added to `problems`.
fn noted<T>(problems: &mut Vec<Invalid>, checked: Result<T, Invalid>) -> Option<T> {
    checked.map_err(|problem| problems.push(problem)).ok()
}

/// The body's `deposit_id`, if it names one.
fn named_deposit_id(deposit_id: Option<&str>) -> Result<Option<Uuid>, Invalid> {
    let Some(text) = deposit_id else {
        return Ok(None);
    };
    Uuid::parse_str(text)
        .map(Some)
        .map_err(|_| Invalid::body_field("deposit_id", "uuid_parsing", "deposit_id must be a UUID"))
}

fn positive_user_id(user_id: i64) -> Result<i64, Invalid> {
    if user_id <= 0 {
        return Err(Invalid::body_field(
            "user_id",
            "greater_than",
            "user_id must be a positive integer",
        ));
    }
    Ok(user_id)
}

/// The currency's number of decimals.
fn known_currency(code: &str) -> Result<u32, Invalid> {
    money::currency_exponent(code).ok_or_else(|| {
        Invalid::body_field(
            "currency",
            "unknown_currency",
            "currency must be an ISO 4217 code in capitals, like USD",
        )
    })
}

/// The amount in minor units under the transfer rules' limits: more than zero, at most the
/// currency's decimals, at most the largest amount of one transfer; refused in their words.
fn amount_rule(text: &str, currency: &str, exponent: u32) -> Result<i64, Invalid> {
    money::parse_amount(text, exponent, max_amount_minor(exponent))
        .map_err(|error| field_problem(amount_error(&error, currency, &STANDARD)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems a body is refused with, as (field, type, message).
    fn refusal(body: &str) -> Vec<(String, String, String)> {
        match read_deposit(body.as_bytes()) {
            Err(ApiError::Validation(problems)) => problems
                .into_iter()
                .map(|problem| (problem.location.join("."), problem.kind, problem.message))
                .collect(),
            other => panic!("{body} is not refused as invalid: {other:?}"),
        }
    }

    fn problem(field: &str, kind: &str, message: &str) -> (String, String, String) {
        (format!("body.{field}"), kind.into(), message.into())
    }

    #[test]
    fn a_valid_deposit_reads_exactly() {
        let read = |body: &str| read_deposit(body.as_bytes()).expect("valid");
        let deposit = read(r#"{"user_id": 3, "currency": "USD", "amount": "10.50"}"#);
        assert_eq!(
            deposit,
            DepositRequest {
                deposit_id: None,
                user_id: 3,
                currency: "USD".into(),
                exponent: 2,
                amount_minor: 1050,
            }
        );
        let named = read(
            r#"{"user_id": "4", "currency": "KWD", "amount": 1.005, "deposit_id": "00000000-0000-0000-0000-000000000009"}"#,
        );
        assert_eq!(
            (
                named.deposit_id,
                named.user_id,
                named.amount_minor,
                named.exponent
            ),
            (Some(Uuid::from_u128(9)), 4, 1005, 3)
        );
        let null_id = read(
            r#"{"user_id": 1, "currency": "JPY", "amount": "1000000000", "deposit_id": null}"#,
        );
        assert_eq!(
            (null_id.deposit_id, null_id.amount_minor),
            (None, 1_000_000_000)
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_in_field_order() {
        assert_eq!(
            refusal("{}"),
            vec![
                problem("user_id", "missing", "Field required"),
                problem("currency", "missing", "Field required"),
                problem("amount", "missing", "Field required"),
            ]
        );
        assert_eq!(
            refusal(r#"{"user_id": 0, "currency": "usd", "amount": "-1", "deposit_id": "nope"}"#),
            vec![
                problem("deposit_id", "uuid_parsing", "deposit_id must be a UUID"),
                problem(
                    "user_id",
                    "greater_than",
                    "user_id must be a positive integer"
                ),
                problem(
                    "currency",
                    "unknown_currency",
                    "currency must be an ISO 4217 code in capitals, like USD"
                ),
            ]
        );
        assert_eq!(
            refusal(r#"{"user_id": 1.5, "currency": 5, "amount": true, "deposit_id": 3}"#),
            vec![
                problem("user_id", "int_parsing", "Input should be a valid integer"),
                problem("currency", "string_type", "Input should be a valid string"),
                problem("amount", "decimal_type", "Input should be a valid decimal"),
                problem(
                    "deposit_id",
                    "string_type",
                    "Input should be a valid string"
                ),
            ]
        );
    }

    #[test]
    fn an_unknown_field_is_refused_after_every_other_problem() {
        assert_eq!(
            refusal(r#"{"user_id": 1, "currency": "USD", "amount": "1.00", "phase": "pending"}"#),
            vec![problem(
                "phase",
                "extra_forbidden",
                "Extra inputs are not permitted"
            )]
        );
        assert_eq!(
            refusal(r#"{"memo": "x", "user_id": 0, "currency": "USD", "note": 1}"#),
            vec![
                problem("amount", "missing", "Field required"),
                problem(
                    "user_id",
                    "greater_than",
                    "user_id must be a positive integer"
                ),
                problem("memo", "extra_forbidden", "Extra inputs are not permitted"),
                problem("note", "extra_forbidden", "Extra inputs are not permitted"),
            ]
        );
    }

    #[test]
    fn the_amount_follows_the_transfer_rules() {
        let amount = |amount: &str, currency: &str| {
            let body = format!(r#"{{"user_id": 1, "currency": "{currency}", "amount": {amount}}}"#);
            refusal(&body)
        };
        assert_eq!(
            amount("\"0\"", "USD"),
            vec![problem(
                "amount",
                "greater_than",
                "amount must be greater than 0"
            )]
        );
        assert_eq!(
            amount("-5", "USD"),
            vec![problem(
                "amount",
                "greater_than",
                "amount must be greater than 0"
            )]
        );
        assert_eq!(
            amount("\"NaN\"", "USD"),
            vec![problem(
                "amount",
                "decimal_parsing",
                "amount must be a decimal number, like 10.50"
            )]
        );
        assert_eq!(
            amount("1.5", "JPY"),
            vec![problem(
                "amount",
                "decimal_places",
                "amount must have at most 0 decimal places for JPY"
            )]
        );
        assert_eq!(
            amount("\"1000000000.01\"", "USD"),
            vec![problem(
                "amount",
                "less_than_equal",
                "amount must be at most 1000000000 USD"
            )]
        );
        // Without a known currency the amount is not judged at all.
        assert_eq!(
            amount("\"-1\"", "XYZ"),
            vec![problem(
                "currency",
                "unknown_currency",
                "currency must be an ISO 4217 code in capitals, like USD"
            )]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_whole() {
        for body in ["[]", "not json", "{\"user_id\": 1, \"user_id\": 2}"] {
            assert!(
                matches!(read_deposit(body.as_bytes()), Err(ApiError::Validation(_))),
                "{body}"
            );
        }
    }
}
