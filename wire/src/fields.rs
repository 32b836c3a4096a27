//! Typed fields from a JSON object's raw text, reporting every problem at once in FastAPI's
//! shape.
//!
//! Fields are read from the raw JSON text so numbers keep their exact digits: `10.10` stays
//! "10.10", never the nearest binary float. Keys are read as JSON strings (escapes decoded:
//! `"sender_\u0069d"` is `sender_id`), and a key given twice is refused (422): a proxy or
//! firewall in front may read the first value where a last-wins reader reads the last.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::problem::{BodyError, Invalid};

/// A JSON object's fields, as raw JSON text, plus the problems found reading them.
pub struct Fields<'a> {
    raw: BTreeMap<String, &'a RawValue>,
    pub problems: Vec<Invalid>,
}

/// A JSON object's top-level members with keys decoded, and the keys given more than once (in
/// the order their second occurrence appeared).
struct RawObject<'a> {
    members: BTreeMap<String, &'a RawValue>,
    duplicates: Vec<String>,
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = RawObject<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
        let mut object = RawObject {
            members: BTreeMap::new(),
            duplicates: Vec::new(),
        };
        // `String`, not `&str`: a key with an escape cannot be borrowed from the text.
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            match object.members.entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                Entry::Occupied(occupied) => {
                    if !object.duplicates.contains(occupied.key()) {
                        object.duplicates.push(occupied.key().clone());
                    }
                }
            }
        }
        Ok(object)
    }
}

/// The refusal of keys given more than once, one problem per key.
fn duplicated(keys: Vec<String>) -> BodyError {
    BodyError {
        problems: keys
            .into_iter()
            .map(|key| {
                let message = format!("the key {key:?} appears more than once");
                Invalid::body_field(&key, "duplicate_key", message)
            })
            .collect(),
    }
}

impl<'a> Fields<'a> {
    /// Parses `body` as a JSON object with each key once; anything else is a validation error.
    pub fn parse(body: &'a [u8]) -> Result<Fields<'a>, BodyError> {
        let text = std::str::from_utf8(body).map_err(|_| BodyError {
            problems: vec![Invalid::body("json_invalid", "request body is not UTF-8")],
        })?;
        match serde_json::from_str::<RawObject>(text) {
            Ok(object) if !object.duplicates.is_empty() => Err(duplicated(object.duplicates)),
            Ok(object) => Ok(Fields {
                raw: object.members,
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
                Err(BodyError {
                    problems: vec![Invalid::body(kind, message)],
                })
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
        // `String`, not `&str`: a string with an escape ("\u0031") cannot be borrowed.
        let parsed = serde_json::from_str::<i64>(raw).ok().or_else(|| {
            serde_json::from_str::<String>(raw)
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
    pub fn finish(self) -> Result<(), BodyError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(BodyError {
                problems: self.problems,
            })
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

    fn refusal(body: &str) -> Vec<Invalid> {
        match Fields::parse(body.as_bytes()) {
            Err(BodyError { problems }) => problems,
            Ok(_) => panic!("{body}: accepted"),
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_it() {
        let problems = refusal(r#"{"amount": 1, "currency": "USD", "amount": 99999999}"#);
        assert_eq!(
            problems,
            vec![Invalid::body_field(
                "amount",
                "duplicate_key",
                "the key \"amount\" appears more than once"
            )]
        );
        let problems = refusal(r#"{"b": 1, "a": 2, "a": 3, "b": 4, "a": 5}"#);
        let keys: Vec<&str> = problems.iter().map(|p| p.location[1].as_str()).collect();
        assert_eq!(keys, ["a", "b"], "each key once, in the order found");
        // Spelled differently, the same key.
        let problems = refusal(r#"{"amount": 1, "\u0061mount": 2}"#);
        assert_eq!(problems[0].location, ["body", "amount"]);
        // Only the top level is read as fields; a nested object is one field's value.
        let mut fields = Fields::parse(br#"{"note": {"a": 1, "a": 2}}"#).expect("object");
        assert_eq!(fields.string("note"), None);
    }

    #[test]
    fn keys_with_escapes_are_read_as_the_keys_they_spell() {
        let mut fields = Fields::parse(
            br#"{"sender_\u0069d": 1, "\u0061mount": "2.50", "currency\u0000": "x", "cur\u0072ency": "USD", "n\"ote": "q"}"#,
        )
        .expect("object");
        assert_eq!(fields.integer("sender_id"), Some(1));
        assert_eq!(fields.decimal_text("amount").as_deref(), Some("2.50"));
        assert_eq!(fields.string("currency").as_deref(), Some("USD"));
        assert_eq!(fields.optional_string("n\"ote").as_deref(), Some("q"));
        assert!(fields.problems.is_empty(), "{:?}", fields.problems);
        let mut surrogate = Fields::parse(br#"{"\ud83d\udcb0": "7"}"#).expect("object");
        assert_eq!(surrogate.integer("\u{1f4b0}"), Some(7));
    }

    /// Values are JSON first: a string's escapes are decoded before it is read as a number
    /// (`"\u0031"` is "1", as it is for any JSON reader). Integers once missed this.
    #[test]
    fn values_with_escapes_are_read_as_the_text_they_spell() {
        let mut fields = Fields::parse(
            br#"{"id": "\u0031\u0032", "amount": "\u0031.5", "currency": "\u0055SD", "note": "a\nb"}"#,
        )
        .expect("object");
        assert_eq!(fields.integer("id"), Some(12));
        assert_eq!(fields.decimal_text("amount").as_deref(), Some("1.5"));
        assert_eq!(fields.string("currency").as_deref(), Some("USD"));
        assert_eq!(fields.optional_string("note").as_deref(), Some("a\nb"));
        assert!(fields.problems.is_empty(), "{:?}", fields.problems);
        let mut escaped_junk = Fields::parse(br#"{"id": "1\u0020"}"#).expect("object");
        assert_eq!(escaped_junk.integer("id"), None);
    }

    #[test]
    fn whitespace_around_a_value_is_not_part_of_it() {
        let mut fields =
            Fields::parse(b"{ \"amount\" :\t\n 10.10 \r\n, \"id\":\n\"5\"\n}").expect("object");
        assert_eq!(fields.decimal_text("amount").as_deref(), Some("10.10"));
        assert_eq!(fields.integer("id"), Some(5));
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
                matches!(Fields::parse(body.as_bytes()), Err(BodyError { problems }) if problems.len() == 1),
                "{body}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A key as JSON text, each character written plainly or as a `\uXXXX` escape.
        fn spelled(key: &str, escapes: &[bool]) -> String {
            let mut text = String::from("\"");
            for (index, c) in key.chars().enumerate() {
                if escapes.get(index).copied().unwrap_or(false) || c == '"' || c == '\\' {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        text.push_str(&format!("\\u{unit:04x}"));
                    }
                } else {
                    text.push(c);
                }
            }
            text.push('"');
            text
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
                Just("null".to_string()),
                Just("[1, {\"x\": 2}]".to_string()),
            ]
        }

        proptest! {
            #[test]
            fn every_key_reads_back_however_it_is_spelled(
                members in proptest::collection::btree_map("[a-z_\"\\\\\u{e9}\u{1f4b0}]{1,10}", value(), 0..8),
                escapes in proptest::collection::vec(any::<bool>(), 10),
            ) {
                let body = format!("{{{}}}", members
                    .iter()
                    .map(|(key, value)| format!("{}: {value}", spelled(key, &escapes)))
                    .collect::<Vec<_>>()
                    .join(", "));
                let fields = Fields::parse(body.as_bytes());
                prop_assert!(fields.is_ok(), "{}", body);
                let fields = fields.expect("checked");
                for (key, value) in &members {
                    let raw = fields.raw.get(key.as_str()).map(|raw| raw.get());
                    prop_assert_eq!(raw, Some(value.as_str()), "{}", body);
                }
                prop_assert_eq!(fields.raw.len(), members.len());
            }

            #[test]
            fn a_repeated_key_is_always_refused_and_named(
                members in proptest::collection::btree_map("[a-z]{1,6}", value(), 1..6),
                repeat in any::<proptest::sample::Index>(),
                escapes in proptest::collection::vec(any::<bool>(), 6),
                position in any::<proptest::sample::Index>(),
            ) {
                let mut entries: Vec<String> = members
                    .iter()
                    .map(|(key, value)| format!("{}: {value}", spelled(key, &[])))
                    .collect();
                let (key, value) = members.iter().nth(repeat.index(members.len())).expect("a member");
                let again = format!("{}: {value}", spelled(key, &escapes));
                entries.insert(position.index(entries.len() + 1), again);
                let body = format!("{{{}}}", entries.join(", "));
                match Fields::parse(body.as_bytes()) {
                    Err(BodyError { problems }) => {
                        prop_assert_eq!(problems.len(), 1);
                        prop_assert_eq!(&problems[0].kind, "duplicate_key");
                        prop_assert_eq!(&problems[0].location, &vec!["body".to_string(), key.clone()]);
                    }
                    _ => prop_assert!(false, "accepted {}", body),
                }
            }

            #[test]
            fn any_bytes_are_answered_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = Fields::parse(&bytes);
            }

            #[test]
            fn objects_serde_reads_without_repeats_are_read_the_same(text in "\\{(\"[a-c]\": ?[0-9], ?){0,3}\"[a-d]\": ?[0-9]\\}") {
                let parsed: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&text).expect("the pattern makes JSON objects");
                let members = text.matches(':').count();
                match Fields::parse(text.as_bytes()) {
                    Ok(fields) => {
                        prop_assert_eq!(fields.raw.len(), members, "no key was dropped");
                        for (key, value) in &parsed {
                            let raw = fields.raw.get(key.as_str()).map(|raw| raw.get().to_string());
                            prop_assert_eq!(raw, Some(value.to_string()));
                        }
                    }
                    Err(_) => prop_assert!(parsed.len() < members, "refused without a repeat: {}", text),
                }
            }
        }
    }
}
