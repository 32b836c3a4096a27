//! Reading a JSON request body: content type, size limit and timeout. The typed fields read
//! from it are the `transferd-wire` crate's [`Fields`] (pure, and fuzzed on its own), re-exported
//! here so handlers keep reading bodies through `crate::http::body`.

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::http::error::ApiError;

pub use transferd_wire::Fields;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Checks the content type and reads at most [`MAX_BODY_BYTES`], within `timeout`.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Incoming,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    read_json_body_within(headers, body, timeout, MAX_BODY_BYTES).await
}

/// [`read_json_body`] with another size limit (a batch's).
pub async fn read_json_body_within(
    headers: &HeaderMap,
    body: Incoming,
    timeout: std::time::Duration,
    max_body_bytes: usize,
) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit_bytes: max_body_bytes,
        });
    }
    let reading = tokio::time::timeout(timeout, Limited::new(body, max_body_bytes).collect());
    let Ok(read) = reading.await else {
        return Err(ApiError::RequestTimeout);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge {
                limit_bytes: max_body_bytes,
            })
        }
        Err(error) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {error}"
        ))),
    }
}
