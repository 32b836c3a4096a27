//! `PUT /admin/accounts/{user_id}/limits`: an operator sets an account's spending limits in
//! one currency. The host only stores them (`stores::limits`); the transfer rules read them
//! through `account-info` and enforce them. Money comes in as decimal text and is kept in
//! minor units.

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use transferd_guest::money;
use transferd_guest::spending::AccountLimits;

use crate::auth::Admin;
use crate::http::App;
use crate::http::accounts::{path_user_id, shown};
use crate::http::api::{ErrorBody, LimitsSet, SetLimits, Success};
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::routes::AdminRoute;

#[utoipa::path(
    put, path = AdminRoute::AccountLimits.path(), operation_id = "set_account_limits", tag = "admin",
    summary = "Set an account's spending limits in one currency",
    description = "Replaces the account's single-transfer and daily limits in the currency (a \
        limit left out or null is no limit). The transfer rules enforce them from the next \
        transfer on (other replicas within two seconds). The account need not exist yet.",
    request_body = SetLimits,
    params(("user_id" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = LimitsSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A field missing, unknown or wrong; nothing changed", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn set_limits(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    user_id: &str,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let user_id = path_user_id(user_id)?;
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    let (currency, exponent, limits) = read_limits(&bytes)?;
    app.stores
        .ledger
        .set_account_limits(user_id, &currency, &limits)
        .await?;
    tracing::info!(actor = %admin.actor(), user_id, currency, ?limits, "account limits set");
    let answer = LimitsSet {
        status: Success::Success,
        user_id,
        currency,
        limits: shown(&limits, exponent),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Reads and checks the body, reporting every problem at once: the currency, its number of
/// decimals, and the limits in its minor units.
fn read_limits(bytes: &[u8]) -> Result<(String, u32, AccountLimits), ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let currency = fields.string("currency");
    let single_max = fields.optional_decimal_text("single_max");
    let daily_max = fields.optional_decimal_text("daily_max");
    let overdraft = fields.optional_decimal_text("overdraft");
    let problems = &mut fields.problems;
    let exponent = currency.as_deref().and_then(|code| {
        let exponent = money::currency_exponent(code);
        if exponent.is_none() {
            problems.push(Invalid::body_field(
                "currency",
                "unknown_currency",
                "currency must be an ISO 4217 code in capitals, like USD",
            ));
        }
        exponent
    });
    let mut limit = |name: &str, text: Option<String>| match (text, exponent) {
        (Some(text), Some(exponent)) => limit_minor(name, &text, exponent)
            .map_err(|problem| problems.push(problem))
            .ok(),
        _ => None,
    };
    let single_max_minor = limit("single_max", single_max);
    let daily_max_minor = limit("daily_max", daily_max);
    if overdraft.as_deref().is_some_and(|text| !is_zero(text)) {
        problems.push(Invalid::body_field(
            "overdraft",
            "not_supported",
            "overdraft must be 0: the ledger lets no balance go below zero",
        ));
    }
    let problems = fields.into_problems();
    let (Some(currency), Some(exponent), true) = (currency, exponent, problems.is_empty()) else {
        return Err(ApiError::Validation(problems));
    };
    let limits = AccountLimits {
        single_max_minor,
        daily_max_minor,
        overdraft_minor: 0,
    };
    Ok((currency, exponent, limits))
}

/// A limit in minor units: a positive amount with at most the currency's decimals.
fn limit_minor(name: &str, text: &str, exponent: u32) -> Result<i64, Invalid> {
    money::parse_amount(text, exponent, i64::MAX).map_err(|_| {
        Invalid::body_field(
            name,
            "decimal_parsing",
            format!("{name} must be a positive amount with at most {exponent} decimals, or null"),
        )
    })
}

/// Decimal text that means zero ("0", "0.00").
fn is_zero(text: &str) -> bool {
    text.contains('0') && text.chars().all(|c| c == '0' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(body: &str) -> Vec<(String, String)> {
        match read_limits(body.as_bytes()) {
            Err(ApiError::Validation(problems)) => problems
                .into_iter()
                .map(|problem| (problem.location.join("."), problem.kind))
                .collect(),
            other => panic!("{body} is not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn limits_read_in_minor_units_and_absent_is_no_limit() {
        let read = |body: &str| read_limits(body.as_bytes()).expect("valid");
        let (currency, exponent, limits) =
            read(r#"{"currency": "USD", "single_max": "500", "daily_max": 2000.5}"#);
        assert_eq!((currency.as_str(), exponent), ("USD", 2));
        assert_eq!(limits.single_max_minor, Some(50_000));
        assert_eq!(limits.daily_max_minor, Some(200_050));
        let (_, _, none) = read(r#"{"currency": "JPY", "single_max": null, "overdraft": "0"}"#);
        assert_eq!(none, AccountLimits::default());
    }

    #[test]
    fn every_problem_is_reported_and_overdraft_is_refused() {
        assert_eq!(
            problems(
                r#"{"currency": "USD", "single_max": "-1", "daily_max": "1.001", "overdraft": "5", "x": 1}"#
            ),
            [
                ("body.single_max".to_string(), "decimal_parsing".to_string()),
                ("body.daily_max".into(), "decimal_parsing".into()),
                ("body.overdraft".into(), "not_supported".into()),
                ("body.x".into(), "extra_forbidden".into()),
            ]
        );
        assert_eq!(
            problems(r#"{"single_max": "1"}"#),
            [("body.currency".to_string(), "missing".to_string())]
        );
        assert_eq!(
            problems(r#"{"currency": "usd"}"#),
            [("body.currency".to_string(), "unknown_currency".to_string())]
        );
    }
}
