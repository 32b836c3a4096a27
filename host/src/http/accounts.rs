//! `GET /accounts/{user_id}/balances`: every account of a user, settled and available, or as
//! they were at a moment (`?at=`); only for that user or an admin (anyone else hears that
//! there are none).

use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use transferd_guest::money::{currency_exponent, format_minor};

use crate::auth::Caller;
use crate::http::App;
use crate::http::api::{
    AccountBalances, Balance, BalanceThen, BalancesAnswer, BalancesAt, BalancesQuery, ErrorBody,
    LimitsShown, TodayShown,
};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::query::Params;
use crate::http::routes::UserRoute;
use transferd_guest::spending::AccountLimits;

/// The query parameters the route reads (documented by [`BalancesQuery`]).
pub const BALANCES_PARAMS: [&str; 1] = ["at"];

#[utoipa::path(
    get, path = UserRoute::Balances.path(), operation_id = "balances", tag = "transfers",
    summary = "A user's accounts: settled and available balances, now or at a moment",
    description = "Only for that user or an admin; anyone else hears 404. With `at`, the \
        balances the journal shows at that moment, for the accounts that existed then.",
    params(("user_id" = i64, Path, minimum = 1), BalancesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = BalancesAnswer),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Not a positive integer, or a bad parameter", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn balances(
    app: &App,
    caller: &Caller,
    user_id: &str,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let user_id = path_user_id(user_id)?;
    let mut params = Params::read(query, &BALANCES_PARAMS);
    let at = params.moment("at");
    params.finish()?;
    if !caller.may_see_account(user_id) {
        return Err(no_accounts(user_id));
    }
    match at {
        Some(at) => balances_at(app, user_id, at).await,
        None => balances_now(app, user_id).await,
    }
}

/// The `{user_id}` of a path: a positive integer.
pub fn path_user_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::Validation(vec![Invalid::path(
            "user_id",
            "greater_than",
            "user_id must be a positive integer",
        )])),
    }
}

fn no_accounts(user_id: i64) -> ApiError {
    ApiError::NotFoundMessage(format!("user {user_id} has no accounts"))
}

async fn balances_now(app: &App, user_id: i64) -> Result<Reply, ApiError> {
    let accounts = app.stores.ledger.balances(user_id).await?;
    if accounts.is_empty() {
        return Err(no_accounts(user_id));
    }
    let mut balances = Vec::with_capacity(accounts.len());
    for account in accounts {
        let currency = account.currency;
        let exponent = currency_exponent(&currency).unwrap_or(0);
        // Without Redis the holds are unknown; available is then the settled balance.
        let held = match app.stores.cache.held(user_id, &currency).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, user_id, currency, "holds unknown; available = balance");
                0
            }
        };
        let available_minor = account.balance_minor - account.pending_debits_minor - held;
        let limits = AccountLimits {
            single_max_minor: account.single_max_minor,
            daily_max_minor: account.daily_max_minor,
            overdraft_minor: account.overdraft_minor,
        };
        let today = today(app, user_id, &currency, exponent).await;
        balances.push(Balance {
            currency,
            balance: format_minor(account.balance_minor, exponent),
            balance_minor: account.balance_minor,
            available: format_minor(available_minor, exponent),
            available_minor,
            pending_debits: format_minor(account.pending_debits_minor, exponent),
            pending_debits_minor: account.pending_debits_minor,
            pending_credits: format_minor(account.pending_credits_minor, exponent),
            pending_credits_minor: account.pending_credits_minor,
            version: account.version,
            limits: shown(&limits, exponent),
            today,
        });
    }
    Ok(json_response(
        StatusCode::OK,
        &AccountBalances { user_id, balances },
    ))
}

/// Limits as the API shows them: decimal text beside minor units.
pub fn shown(limits: &AccountLimits, exponent: u32) -> LimitsShown {
    let text = |minor: Option<i64>| minor.map(|minor| format_minor(minor, exponent));
    LimitsShown {
        single_max: text(limits.single_max_minor),
        single_max_minor: limits.single_max_minor,
        daily_max: text(limits.daily_max_minor),
        daily_max_minor: limits.daily_max_minor,
        overdraft: format_minor(limits.overdraft_minor, exponent),
        overdraft_minor: limits.overdraft_minor,
    }
}

/// What the account sent today, from the counters the holds keep in Redis; `None` while
/// Redis cannot say (never a guess).
async fn today(app: &App, user_id: i64, currency: &str, exponent: u32) -> Option<TodayShown> {
    match app.stores.cache.outgoing("", user_id, currency).await {
        Ok(today) => Some(TodayShown {
            outgoing: format_minor(today.outgoing_minor, exponent),
            outgoing_minor: today.outgoing_minor,
            outgoing_count: today.outgoing_count,
            last_minute_count: today.last_minute_count,
        }),
        Err(error) => {
            tracing::warn!(%error, user_id, currency, "outgoing counters unknown");
            None
        }
    }
}

async fn balances_at(app: &App, user_id: i64, at: DateTime<Utc>) -> Result<Reply, ApiError> {
    let Some(then) = app.stores.ledger.balances_at(user_id, at).await? else {
        return Err(no_accounts(user_id));
    };
    let balances = then
        .into_iter()
        .map(|account| {
            let exponent = currency_exponent(&account.currency).unwrap_or(0);
            BalanceThen {
                balance: format_minor(account.balance_minor, exponent),
                balance_minor: account.balance_minor,
                currency: account.currency,
            }
        })
        .collect();
    let body = BalancesAt {
        user_id,
        at: at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        balances,
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::IntoParams;

    #[test]
    fn the_document_names_the_parameters_the_handler_reads() {
        let names: Vec<String> = BalancesQuery::into_params(|| None)
            .into_iter()
            .map(|param| param.name)
            .collect();
        assert_eq!(names, BALANCES_PARAMS);
    }
}
