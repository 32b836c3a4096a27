//! `GET /accounts/{user_id}/balances`: every account of a user, settled and available; only
//! for that user or an admin (anyone else hears that there are none).

use http::StatusCode;
use transferd_guest::money::{currency_exponent, format_minor};

use crate::auth::Caller;
use crate::http::App;
use crate::http::api::{AccountBalances, Balance};
use crate::http::error::{ApiError, Invalid, Reply, json_response};

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
    let accounts = app
        .stores
        .ledger
        .balances(user_id)
        .await
        .map_err(|error| ApiError::Unavailable(error.to_string()))?;
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
