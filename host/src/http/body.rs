//! Reading a JSON request body: content type, size limit, and typed fields that report every
//! problem at once in FastAPI's shape.
//!
//! Fields are read from the raw JSON text so numbers keep their exact digits: `10.10` stays
//! "10.10", never the nearest binary float.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::value::RawValue;

use crate::http::error::{ApiError, Invalid};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Checks the content type and reads at most [`MAX_BODY_BYTES`].
pub async fn read_json_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
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
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit_bytes: MAX_BODY_BYTES,
        });
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge {
                limit_bytes: MAX_BODY_BYTES,
            })
        }
        Err(error) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {error}"
        ))),
    }
}

/// A JSON object's fields, as raw JSON text, plus the problems found reading them.
pub struct Fields<'a> {
    raw: BTreeMap<&'a str, &'a RawValue>,
    pub problems: Vec<Invalid>,
}

impl<'a> Fields<'a> {
    /// Parses `body` as a JSON object; anything else is a validation error.
    pub fn parse(body: &'a [u8]) -> Result<Fields<'a>, ApiError> {
        let text = std::str::from_utf8(body).map_err(|_| {
            ApiError::Validation(vec![Invalid {
                location: vec!["body".into()],
                message: "request body is not UTF-8".into(),
                kind: "json_invalid".into(),
            }])
        })?;
        match serde_json::from_str::<BTreeMap<&str, &RawValue>>(text) {
            Ok(raw) => Ok(Fields {
                raw,
                problems: Vec::new(),
            }),
            Err(error) => {
                let kind = if error.is_data() {
                    "model_attributes_type"
                } else {
                    "json_invalid"
                };
                let message = if error.is_data() {
                    "request body must be a JSON object".to_string()
                } else {
                    format!("JSON decode error: {error}")
                };
                Err(ApiError::Validation(vec![Invalid {
                    location: vec!["body".into()],
                    message,
                    kind: kind.into(),
                }]))
            }
        }
    }

    fn required(&mut self, name: &str) -> Option<&'a RawValue> {
        let raw = self.raw.get(name).copied();
        if raw.is_none() {
            self.problems
                .push(Invalid::body_field(name, "missing", "Field required"));
        }
        raw
    }

    /// A required integer: a JSON integer, or a string holding one (as pydantic accepts).
    pub fn integer(&mut self, name: &str) -> Option<i64> {
        let raw = self.required(name)?.get();
        let parsed = serde_json::from_str::<i64>(raw).ok().or_else(|| {
            serde_json::from_str::<&str>(raw)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
        });
        if parsed.is_none() {
            self.problems.push(Invalid::body_field(
                name,
                "int_parsing",
                "Input should be a valid integer",
            ));
        }
        parsed
    }

    /// A required decimal as exact text: a JSON number's digits, or a JSON string's content.
    pub fn decimal_text(&mut self, name: &str) -> Option<String> {
        let raw = self.required(name)?.get();
        let starts_like_number = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if starts_like_number {
            return Some(raw.to_string());
        }
        if let Ok(text) = serde_json::from_str::<String>(raw) {
            return Some(text);
        }
        self.problems.push(Invalid::body_field(
            name,
            "decimal_type",
            "Input should be a valid decimal",
        ));
        None
    }

    /// A required string.
    pub fn string(&mut self, name: &str) -> Option<String> {
        let raw = self.required(name)?.get();
        self.string_from(name, raw)
    }

    /// An optional string: absent and `null` are both `None`.
    pub fn optional_string(&mut self, name: &str) -> Option<String> {
        let raw = self.raw.get(name)?.get();
        if raw == "null" {
            return None;
        }
        self.string_from(name, raw)
    }

    fn string_from(&mut self, name: &str, raw: &str) -> Option<String> {
        match serde_json::from_str::<String>(raw) {
            Ok(text) => Some(text),
            Err(_) => {
                self.problems.push(Invalid::body_field(
                    name,
                    "string_type",
                    "Input should be a valid string",
                ));
                None
            }
        }
    }

    /// Fails with every problem found, or passes when there were none.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(body: &str) -> Vec<(String, String)> {
        let mut fields = Fields::parse(body.as_bytes()).expect("an object");
        let _ = (
            fields.integer("id"),
            fields.decimal_text("amount"),
            fields.string("currency"),
            fields.optional_string("note"),
        );
        fields
            .problems
            .into_iter()
            .map(|p| (p.location[1].clone(), p.kind))
            .collect()
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let mut fields = Fields::parse(br#"{"amount": 10.10, "other": "1e2"}"#).expect("object");
        assert_eq!(fields.decimal_text("amount").as_deref(), Some("10.10"));
        assert_eq!(fields.decimal_text("other").as_deref(), Some("1e2"));
    }

    #[test]
    fn types_and_presence_are_checked_together() {
        assert_eq!(
            problems(r#"{"id": 1, "amount": "5", "currency": "USD", "note": null}"#),
            vec![]
        );
        assert_eq!(
            problems(r#"{"id": "12", "amount": 5, "currency": "USD"}"#),
            vec![]
        );
        assert_eq!(
            problems(r#"{"id": 1.5, "amount": true, "currency": 5, "note": 7}"#),
            vec![
                ("id".into(), "int_parsing".into()),
                ("amount".into(), "decimal_type".into()),
                ("currency".into(), "string_type".into()),
                ("note".into(), "string_type".into()),
            ]
        );
        assert_eq!(
            problems("{}"),
            vec![
                ("id".into(), "missing".into()),
                ("amount".into(), "missing".into()),
                ("currency".into(), "missing".into()),
            ]
        );
        assert_eq!(
            problems(r#"{"id": 99999999999999999999, "amount": null, "currency": "X"}"#).len(),
            2
        );
    }

    #[test]
    fn non_objects_and_broken_json_are_validation_errors() {
        for body in [
            "[1,2]",
            "\"text\"",
            "{\"a\":",
            "NaN",
            "{\"amount\": NaN}",
            "",
        ] {
            assert!(
                matches!(Fields::parse(body.as_bytes()), Err(ApiError::Validation(_))),
                "{body}"
            );
        }
    }
}
