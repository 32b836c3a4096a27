//! `GET /transfers` and `GET /accounts/{user_id}/entries`: a user's settled transfers and
//! journal entries, newest first, a page at a time; only for that user or an admin (anyone
//! else hears that there are none).
//!
//! A page ends with an opaque cursor naming its last row; the next page starts after it. The
//! cursor is the row's position in the list, so it is no secret: a client that forges one only
//! skips part of a list it may read anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat};
use http::StatusCode;
use transferd_guest::money::{currency_exponent, format_minor};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::api::{
    EntryListQuery, EntryPage, EntryView, ErrorBody, TransferListQuery, TransferPage,
};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::query::Params;
use crate::http::routes::UserRoute;
use crate::http::transfers::settled_view;
use crate::http::{App, accounts};
use crate::stores::history::{
    EntryQuery, EntryRecord, PAGE_LIMIT_MAX, TransferPosition, TransferQuery,
};

/// Rows per page when the request does not say.
const DEFAULT_LIMIT: i64 = 50;

/// The query parameters `GET /transfers` reads (documented by [`TransferListQuery`]).
pub const TRANSFER_LIST_PARAMS: [&str; 6] = [
    "account",
    "status",
    "currency",
    "metadata[]",
    "after",
    "limit",
];
/// The query parameters `GET /accounts/{user_id}/entries` reads ([`EntryListQuery`]).
pub const ENTRY_LIST_PARAMS: [&str; 3] = ["currency", "after", "limit"];

#[utoipa::path(
    get, path = UserRoute::ListTransfers.path(), operation_id = "list_transfers", tag = "transfers",
    summary = "A user's settled transfers, sent and received, newest first",
    description = "Only for that user or an admin; anyone else hears 404. A transfer is \
        listed once the ledger has settled it (completed, rejected, or a two-phase transfer \
        reserved, posted, voided or expired); one on its way to the ledger is found by its \
        id. `metadata[key]=value` (repeatable with other keys) keeps transfers whose \
        metadata holds every pair. Pages continue with `after` = the previous page's \
        `next_cursor`.",
    params(TransferListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TransferPage),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "An unknown, repeated or invalid parameter", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn list_transfers(
    app: &App,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let mut params = Params::read(query, &TRANSFER_LIST_PARAMS);
    let account = params.integer("account", 0..=i64::MAX);
    let status = params.status("status");
    let currency = params.currency("currency");
    let metadata = params.object("metadata", transferd_message::METADATA_MAX_ENTRIES);
    let after = params.with("after", read_transfer_cursor);
    let limit = params.integer("limit", 1..=PAGE_LIMIT_MAX);
    params.finish()?;
    let user_id = account.or(caller.principal()).ok_or_else(|| {
        ApiError::Validation(vec![Invalid::query(
            "account",
            "missing",
            "Field required without a user token",
        )])
    })?;
    if !caller.may_see_account(user_id) {
        return Err(ApiError::NotFoundMessage(format!(
            "user {user_id} has no transfers"
        )));
    }
    let query = TransferQuery {
        user_id,
        status,
        currency,
        metadata,
        after,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    };
    let page = app.stores.ledger.transfers_of(&query).await?;
    let next_cursor = page.last_if_more().map(|last| {
        transfer_cursor(TransferPosition {
            created_at: last.created_at,
            transaction_id: last.transaction_id,
        })
    });
    let transfers = page
        .rows
        .iter()
        .map(settled_view)
        .collect::<Result<_, _>>()?;
    let body = TransferPage {
        transfers,
        next_cursor,
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[utoipa::path(
    get, path = UserRoute::Entries.path(), operation_id = "list_entries", tag = "transfers",
    summary = "A user's journal entries with the balance after each, newest first",
    description = "Only for that user or an admin; anyone else hears 404. Every completed \
        transfer and deposit writes one entry per account it moved. Pages continue with \
        `after` = the previous page's `next_cursor`.",
    params(("user_id" = i64, Path, minimum = 1), EntryListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = EntryPage),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "An unknown, repeated or invalid parameter", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn entries(
    app: &App,
    caller: &Caller,
    user_id: &str,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let user_id = accounts::path_user_id(user_id)?;
    let mut params = Params::read(query, &ENTRY_LIST_PARAMS);
    let currency = params.currency("currency");
    let after = params.with("after", read_entry_cursor);
    let limit = params.integer("limit", 1..=PAGE_LIMIT_MAX);
    params.finish()?;
    if !caller.may_see_account(user_id) {
        return Err(ApiError::NotFoundMessage(format!(
            "user {user_id} has no accounts"
        )));
    }
    let query = EntryQuery {
        user_id,
        currency,
        after,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    };
    let page = app.stores.ledger.entries_of(&query).await?;
    let next_cursor = page.last_if_more().map(|last| entry_cursor(last.entry_id));
    let entries = page.rows.iter().map(entry_view).collect::<Result<_, _>>()?;
    let body = EntryPage {
        entries,
        next_cursor,
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn entry_view(entry: &EntryRecord) -> Result<EntryView, ApiError> {
    let exponent = currency_exponent(&entry.currency).ok_or_else(|| {
        ApiError::Internal(format!(
            "entry {} has an unknown currency in the ledger",
            entry.entry_id
        ))
    })?;
    Ok(EntryView {
        entry_id: entry.entry_id,
        transaction_id: entry.transaction_id,
        currency: entry.currency.clone(),
        amount: format_minor(entry.amount_minor, exponent),
        amount_minor: entry.amount_minor,
        balance_after: format_minor(entry.balance_after_minor, exponent),
        balance_after_minor: entry.balance_after_minor,
        created_at: entry
            .created_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    })
}

/// The first byte of a cursor says which list gave it, so one list's cursor is refused by
/// the other.
const TRANSFERS: u8 = 1;
const ENTRIES: u8 = 2;

fn transfer_cursor(position: TransferPosition) -> String {
    let mut bytes = Vec::with_capacity(25);
    bytes.push(TRANSFERS);
    bytes.extend_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(position.transaction_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn read_transfer_cursor(raw: &str) -> Result<TransferPosition, Invalid> {
    let bytes = cursor_bytes(raw, TRANSFERS, 24)?;
    let (micros, id) = bytes.split_at(8);
    let micros = i64::from_be_bytes(micros.try_into().map_err(|_| bad_cursor())?);
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad_cursor)?;
    let transaction_id = Uuid::from_slice(id).map_err(|_| bad_cursor())?;
    Ok(TransferPosition {
        created_at,
        transaction_id,
    })
}

fn entry_cursor(entry_id: i64) -> String {
    let mut bytes = Vec::with_capacity(9);
    bytes.push(ENTRIES);
    bytes.extend_from_slice(&entry_id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn read_entry_cursor(raw: &str) -> Result<i64, Invalid> {
    let bytes = cursor_bytes(raw, ENTRIES, 8)?;
    Ok(i64::from_be_bytes(
        bytes.try_into().map_err(|_| bad_cursor())?,
    ))
}

/// The bytes after the list's tag of a cursor `raw` that list gave, `len` of them.
fn cursor_bytes(raw: &str, list: u8, len: usize) -> Result<Vec<u8>, Invalid> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_cursor())?;
    match bytes.split_first() {
        Some((tag, rest)) if *tag == list && rest.len() == len => Ok(rest.to_vec()),
        _ => Err(bad_cursor()),
    }
}

fn bad_cursor() -> Invalid {
    Invalid::query(
        "after",
        "cursor",
        "after must be a next_cursor this list returned",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::{EntryListQuery, TransferListQuery};
    use utoipa::IntoParams;

    fn names<P: IntoParams>() -> Vec<String> {
        P::into_params(|| None)
            .into_iter()
            .map(|param| param.name)
            .collect()
    }

    #[test]
    fn the_document_names_the_parameters_the_handlers_read() {
        // A family `base[]` is documented as the object parameter `base` (deepObject).
        let read: Vec<&str> = TRANSFER_LIST_PARAMS
            .iter()
            .map(|name| name.trim_end_matches("[]"))
            .collect();
        assert_eq!(names::<TransferListQuery>(), read);
        assert_eq!(names::<EntryListQuery>(), ENTRY_LIST_PARAMS);
    }

    #[test]
    fn cursors_read_back_and_belong_to_their_list() {
        let position = TransferPosition {
            created_at: DateTime::from_timestamp_micros(1_765_000_000_123_456).expect("a time"),
            transaction_id: Uuid::now_v7(),
        };
        let cursor = transfer_cursor(position);
        assert_eq!(read_transfer_cursor(&cursor), Ok(position));
        assert_eq!(read_entry_cursor(&entry_cursor(42)), Ok(42));
        assert!(read_entry_cursor(&cursor).is_err());
        assert!(read_transfer_cursor(&entry_cursor(42)).is_err());
        for garbage in ["", "!!", "AQ", &cursor[..cursor.len() - 2]] {
            assert_eq!(
                read_transfer_cursor(garbage),
                Err(bad_cursor()),
                "{garbage}"
            );
        }
    }
}
