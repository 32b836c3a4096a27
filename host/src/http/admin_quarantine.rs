//! `/admin/quarantine`: the transfer-log messages settlement set aside, and re-driving one once
//! its cause is fixed. The router lets only admins reach these (`auth::Gate::admin`).

use chrono::SecondsFormat;
use http::StatusCode;

use crate::http::App;
use crate::http::api::{ErrorBody, QuarantineList, QuarantineRetried, QuarantinedMessage, Success};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::routes::AdminRoute;
use crate::settlement::quarantine::{self, Entry};
use crate::settlement::redrive;
use crate::stores::transfer_state::TransferStatus;

/// Most messages one listing shows.
const LIST_LIMIT: i64 = 100;

/// Longest payload text one entry shows, in characters.
const PAYLOAD_CHARS: usize = 4_096;

/// `GET /admin/quarantine`.
#[utoipa::path(
    get, path = AdminRoute::QuarantineList.path(), operation_id = "quarantine_list", tag = "admin",
    summary = "Transfer-log messages settlement could not apply, newest first",
    security(("bearer" = [])),
    responses(
        (status = 200, body = QuarantineList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn list(app: &App) -> Result<Reply, ApiError> {
    let pool = app.stores.ledger.pool();
    let open = quarantine::open_count(pool).await?;
    let entries = quarantine::list(pool, LIST_LIMIT).await?;
    let messages = entries.iter().map(shown).collect();
    Ok(json_response(
        StatusCode::OK,
        &QuarantineList { open, messages },
    ))
}

fn shown(entry: &Entry) -> QuarantinedMessage {
    let time = |at: &chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(SecondsFormat::Millis, true);
    QuarantinedMessage {
        partition: entry.partition,
        offset: entry.log_offset,
        log_generation: entry.log_generation,
        error: entry.error.clone(),
        transaction_id: entry.transaction_id,
        payload: String::from_utf8_lossy(&entry.payload)
            .chars()
            .take(PAYLOAD_CHARS)
            .collect(),
        quarantined_at: time(&entry.quarantined_at),
        dead_lettered: entry.dead_lettered_at.is_some(),
        retried_at: entry.retried_at.as_ref().map(time),
    }
}

/// `POST /admin/quarantine/{partition}/{offset}/retry`.
#[utoipa::path(
    post, path = AdminRoute::QuarantineRetry.path(), operation_id = "quarantine_retry", tag = "admin",
    summary = "Re-drive a quarantined message once its cause is fixed",
    description = "Applies the message at that position of the transfer topic to the ledger, exactly once.",
    params(
        ("partition" = i32, Path, minimum = 0),
        ("offset" = i64, Path, minimum = 0),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = QuarantineRetried),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No quarantined message there", body = ErrorBody),
        (status = 409, description = "Re-driven already", body = ErrorBody),
        (status = 422, description = "Settlement still cannot apply it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn retry(app: &App, partition: &str, offset: &str) -> Result<Reply, ApiError> {
    let (partition, offset) = position(partition, offset)?;
    let (transfer, outcome) = redrive(&app.stores, partition, offset).await?;
    Ok(json_response(
        StatusCode::OK,
        &QuarantineRetried {
            status: Success::Success,
            transaction_id: transfer.transaction_id,
            // A re-driven action that no longer applies changed nothing: rejected.
            outcome: outcome.status().unwrap_or(TransferStatus::Rejected),
            reason: outcome.reason(),
        },
    ))
}

/// A message's position in the log from the path's segments.
fn position(partition: &str, offset: &str) -> Result<(i32, i64), ApiError> {
    let partition = partition.parse::<i32>().ok().filter(|p| *p >= 0);
    let offset = offset.parse::<i64>().ok().filter(|o| *o >= 0);
    let mut problems = Vec::new();
    for (name, valid) in [
        ("partition", partition.is_some()),
        ("offset", offset.is_some()),
    ] {
        if !valid {
            problems.push(Invalid::path(
                name,
                "int_parsing",
                format!("{name} must be a non-negative integer"),
            ));
        }
    }
    match (partition, offset) {
        (Some(partition), Some(offset)) => Ok((partition, offset)),
        _ => Err(ApiError::Validation(problems)),
    }
}
