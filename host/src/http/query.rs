//! A request's query string read as a route's parameters, FastAPI-style: every problem is
//! reported at once (422, `loc: ["query", name]`), and a parameter the route does not know or
//! one given twice is refused, never ignored: a misspelt filter must not answer an unfiltered
//! list.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};

use crate::http::error::{ApiError, Invalid};
use crate::stores::transfer_state::TransferStatus;

/// The most bytes of query string a request may carry.
const QUERY_MAX_BYTES: usize = 4096;

/// The parameters of one request, read one by one; [`Params::finish`] answers the problems.
pub struct Params {
    values: BTreeMap<String, String>,
    problems: Vec<Invalid>,
}

/// `base[key]` of a bracketed parameter family (`metadata[order_id]`): its base and key.
fn bracketed(name: &str) -> Option<(&str, &str)> {
    let (base, rest) = name.split_once('[')?;
    Some((base, rest.strip_suffix(']')?))
}

impl Params {
    /// Splits `query` into its parameters; any not among `known` is a problem already. A
    /// known name written `base[]` admits the family `base[key]` (an object, deepObject style).
    pub fn read(query: Option<&str>, known: &[&str]) -> Params {
        let mut params = Params {
            values: BTreeMap::new(),
            problems: Vec::new(),
        };
        let query = query.unwrap_or_default();
        if query.len() > QUERY_MAX_BYTES {
            params.problems.push(Invalid {
                location: vec!["query".into()],
                message: format!("the query string is over {QUERY_MAX_BYTES} bytes"),
                kind: "string_too_long".into(),
            });
            return params;
        }
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let family = bracketed(&name).map(|(base, _)| format!("{base}[]"));
            let admitted = match &family {
                Some(family) => known.contains(&family.as_str()),
                None => known.contains(&name.as_ref()),
            };
            if !admitted {
                params.problem(&name, "extra_forbidden", "Extra inputs are not permitted");
            } else if params.values.contains_key(name.as_ref()) {
                params.problem(&name, "repeated", format!("{name} is given more than once"));
            } else {
                params.values.insert(name.into_owned(), value.into_owned());
            }
        }
        params
    }

    fn problem(&mut self, name: &str, kind: &str, message: impl Into<String>) {
        self.problems.push(Invalid::query(name, kind, message));
    }

    /// An integer within `range`; `None` when absent or not one (a problem then).
    pub fn integer(&mut self, name: &str, range: RangeInclusive<i64>) -> Option<i64> {
        let raw = self.values.get(name)?;
        let Ok(value) = raw.parse::<i64>() else {
            let message = "Input should be a valid integer, unable to parse string as an integer";
            self.problem(name, "int_parsing", message);
            return None;
        };
        if value < *range.start() {
            let message = format!("Input should be greater than or equal to {}", range.start());
            self.problem(name, "greater_than_equal", message);
            return None;
        }
        if value > *range.end() {
            let message = format!("Input should be less than or equal to {}", range.end());
            self.problem(name, "less_than_equal", message);
            return None;
        }
        Some(value)
    }

    /// A currency code: three capital letters.
    pub fn currency(&mut self, name: &str) -> Option<String> {
        let raw = self.values.get(name)?;
        if raw.len() == 3 && raw.bytes().all(|byte| byte.is_ascii_uppercase()) {
            return Some(raw.clone());
        }
        let message = "String should match pattern '^[A-Z]{3}$'";
        self.problem(name, "string_pattern_mismatch", message);
        None
    }

    /// A transfer status, by its name.
    pub fn status(&mut self, name: &str) -> Option<TransferStatus> {
        let raw = self.values.get(name)?;
        if let Ok(status) = TransferStatus::try_from(raw.as_str()) {
            return Some(status);
        }
        let names: Vec<String> = TransferStatus::ALL
            .iter()
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        let message = format!("Input should be {}", names.join(", "));
        self.problem(name, "enum", message);
        None
    }

    /// An RFC 3339 moment.
    pub fn moment(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let raw = self.values.get(name)?;
        match DateTime::parse_from_rfc3339(raw) {
            Ok(moment) => Some(moment.with_timezone(&Utc)),
            Err(error) => {
                let message = format!("Input should be an RFC 3339 date and time: {error}");
                self.problem(name, "datetime_parsing", message);
                None
            }
        }
    }

    /// The `base[key]` parameters as an object: each key a metadata key
    /// (`transferd_message::metadata_key`), at most `max_entries` of them.
    pub fn object(&mut self, base: &str, max_entries: usize) -> BTreeMap<String, String> {
        let entries: BTreeMap<String, String> = self
            .values
            .iter()
            .filter_map(|(name, value)| match bracketed(name) {
                Some((b, key)) if b == base => Some((key.to_string(), value.clone())),
                _ => None,
            })
            .collect();
        for key in entries.keys() {
            if !transferd_message::metadata_key(key) {
                let name = format!("{base}[{key}]");
                let message = "keys are 1 to 64 of A-Z a-z 0-9 _ . -";
                self.problem(&name, "string_pattern_mismatch", message);
            }
        }
        if entries.len() > max_entries {
            let message = format!("at most {max_entries} {base} pairs");
            self.problem(base, "too_long", message);
        }
        entries
    }

    /// Reads `name` with `read`, which says what is wrong with a value it refuses.
    pub fn with<T>(
        &mut self,
        name: &str,
        read: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        let raw = self.values.get(name)?;
        match read(raw) {
            Ok(value) => Some(value),
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }

    /// The problems found, as one 422; `Ok` when there were none.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(ApiError::Validation(self.problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(params: Params) -> Vec<(Vec<String>, String)> {
        match params.finish() {
            Ok(()) => Vec::new(),
            Err(ApiError::Validation(problems)) => problems
                .into_iter()
                .map(|problem| (problem.location, problem.kind))
                .collect(),
            Err(other) => panic!("not a validation error: {other}"),
        }
    }

    fn at(name: &str, kind: &str) -> (Vec<String>, String) {
        (vec!["query".into(), name.into()], kind.into())
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused_by_name() {
        let params = Params::read(Some("limit=5&stauts=completed&limit=6"), &["limit"]);
        assert_eq!(
            problems(params),
            vec![at("stauts", "extra_forbidden"), at("limit", "repeated")]
        );
    }

    #[test]
    fn a_bracketed_family_reads_as_an_object_and_its_keys_are_checked() {
        let mut params = Params::read(
            Some(
                "metadata%5Border_id%5D=A-1&metadata[channel]=web&metadata[bad%20key]=x&other[a]=1",
            ),
            &["metadata[]"],
        );
        let object = params.object("metadata", 16);
        assert_eq!(object.get("order_id").map(String::as_str), Some("A-1"));
        assert_eq!(object.get("channel").map(String::as_str), Some("web"));
        assert_eq!(
            problems(params),
            vec![
                at("other[a]", "extra_forbidden"),
                at("metadata[bad key]", "string_pattern_mismatch")
            ]
        );
        let plain = Params::read(Some("metadata=x"), &["metadata[]"]);
        assert_eq!(problems(plain), vec![at("metadata", "extra_forbidden")]);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let mut params = Params::read(
            Some("limit=0&currency=usd&status=done&at=yesterday&account=x"),
            &["limit", "currency", "status", "at", "account"],
        );
        assert_eq!(params.integer("limit", 1..=200), None);
        assert_eq!(params.currency("currency"), None);
        assert_eq!(params.status("status"), None);
        assert_eq!(params.moment("at"), None);
        assert_eq!(params.integer("account", 0..=i64::MAX), None);
        assert_eq!(
            problems(params),
            vec![
                at("limit", "greater_than_equal"),
                at("currency", "string_pattern_mismatch"),
                at("status", "enum"),
                at("at", "datetime_parsing"),
                at("account", "int_parsing"),
            ]
        );
    }

    #[test]
    fn good_values_are_read_percent_decoded() {
        let mut params = Params::read(
            Some("limit=200&currency=EUR&status=rejected&at=2026-01-02T03%3A04%3A05%2B01%3A00"),
            &["limit", "currency", "status", "at"],
        );
        assert_eq!(params.integer("limit", 1..=200), Some(200));
        assert_eq!(params.currency("currency").as_deref(), Some("EUR"));
        assert_eq!(params.status("status"), Some(TransferStatus::Rejected));
        let moment = params.moment("at").expect("a moment");
        assert_eq!(moment.to_rfc3339(), "2026-01-02T02:04:05+00:00");
        assert_eq!(params.integer("absent", 1..=2), None);
        assert!(problems(params).is_empty());
    }
}
