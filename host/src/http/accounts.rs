//! `GET /accounts/{user_id}/balances`: every account of a user, settled and available; only
//! for that user or an admin (anyone else hears that there are none).

use http::StatusCode;
use transferd_guest::money::{currency_exponent, format_minor};

use crate::auth::Caller;
use crate::http::App;
use crate::http::api::{AccountBalances, Balance, ErrorBody};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::routes::UserRoute;

#[utoipa::path(
    get, path = UserRoute::Balances.path(), operation_id = "balances", tag = "transfers",
    summary = "A user's accounts: settled and available balances",
    description = "Only for that user or an admin; anyone else hears 404.",
    params(("user_id" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AccountBalances),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Not a positive integer", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn balances(app: &App, caller: &Caller, user_id: &str) -> Result<Reply, ApiError> {
    let user_id = match user_id.parse::<i64>() {
        Ok(id) if id > 0 => id,
        _ => {
            return Err(ApiError::Validation(vec![Invalid {
                location: vec!["path".into(), "user_id".into()],
                message: "user_id must be a positive integer".into(),
                kind: "greater_than".into(),
            }]));
        }
    };
    let none = || ApiError::NotFoundMessage(format!("user {user_id} has no accounts"));
    if !caller.may_see_account(user_id) {
        return Err(none());
    }
    let accounts = app.stores.ledger.balances(user_id).await?;
    if accounts.is_empty() {
        return Err(none());
    }
    let mut balances = Vec::with_capacity(accounts.len());
    for (currency, balance) in accounts {
        let exponent = currency_exponent(&currency).unwrap_or(0);
        // Without Redis the holds are unknown; available is then the settled balance.
        let held = match app.stores.cache.held(user_id, &currency).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, user_id, currency, "holds unknown; available = balance");
                0
            }
        };
        let available_minor = balance.balance_minor - held;
        balances.push(Balance {
            currency,
            balance: format_minor(balance.balance_minor, exponent),
            balance_minor: balance.balance_minor,
            available: format_minor(available_minor, exponent),
            available_minor,
            version: balance.version,
        });
    }
    Ok(json_response(
        StatusCode::OK,
        &AccountBalances { user_id, balances },
    ))
}
