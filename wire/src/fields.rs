//! Typed fields from a JSON object's raw text, reporting every problem at once in FastAPI's
//! shape.
//!
//! Fields are read from the raw JSON text so numbers keep their exact digits: `10.10` stays
//! "10.10", never the nearest binary float. Keys are read as JSON strings (escapes decoded:
//! `"sender_\u0069d"` is `sender_id`), and a key given twice is refused (422): a proxy or
//! firewall in front may read the first value where a last-wins reader reads the last.
//! A key that no read asks for is refused too (422 `extra_forbidden`, as pydantic's
//! `extra="forbid"`): a client asking for something the service does not understand must not
//! see its request carried out without it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::problem::{BodyError, Invalid};

/// A JSON object's fields, as raw JSON text, plus the problems found reading them.
pub struct Fields<'a> {
    raw: BTreeMap<String, &'a RawValue>,
    /// The keys in the order the body gives them: unknown ones are reported in that order.
    order: Vec<String>,
    /// The names reads asked for, given or not: the fields the body may have.
    declared: BTreeSet<String>,
    pub problems: Vec<Invalid>,
}

/// A JSON object's top-level members with keys decoded, the keys in the order they first
/// appeared, and the keys given more than once (in the order their second occurrence appeared).
struct RawObject<'a> {
    members: BTreeMap<String, &'a RawValue>,
    order: Vec<String>,
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
            order: Vec::new(),
            duplicates: Vec::new(),
        };
        // `String`, not `&str`: a key with an escape cannot be borrowed from the text.
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            match object.members.entry(key) {
                Entry::Vacant(vacant) => {
                    object.order.push(vacant.key().clone());
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
                order: object.order,
                declared: BTreeSet::new(),
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

    /// The field's raw value, if given; either way `name` is a field the body may have.
    fn given(&mut self, name: &str) -> Option<&'a RawValue> {
        self.declared.insert(name.to_string());
        self.raw.get(name).copied()
    }

    fn required(&mut self, name: &str) -> Option<&'a RawValue> {
        let raw = self.given(name);
        if raw.is_none() {
            self.problems
                .push(Invalid::body_field(name, "missing", "Field required"));
        }
        raw
    }

    /// A required integer: a JSON integer, or a string holding one (as pydantic accepts).
    pub fn integer(&mut self, name: &str) -> Option<i64> {
        let raw = self.required(name)?.get();
        self.integer_from(name, raw)
    }

    /// An optional integer: absent and `null` are both `None`.
    pub fn optional_integer(&mut self, name: &str) -> Option<i64> {
        let raw = self.given(name)?.get();
        if raw == "null" {
            return None;
        }
        self.integer_from(name, raw)
    }

    fn integer_from(&mut self, name: &str, raw: &str) -> Option<i64> {
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

    /// An optional decimal as exact text: absent and `null` are both `None`.
    pub fn optional_decimal_text(&mut self, name: &str) -> Option<String> {
        let raw = self.given(name)?.get();
        if raw == "null" {
            return None;
        }
        self.decimal_text(name)
    }

    /// A required array, as its items' raw JSON text; a problem when it is not one.
    pub fn raw_array(&mut self, name: &str) -> Option<Vec<&'a RawValue>> {
        let raw = self.required(name)?.get();
        let items = serde_json::from_str::<Vec<&'a RawValue>>(raw).ok();
        if items.is_none() {
            self.problems.push(Invalid::body_field(
                name,
                "list_type",
                "Input should be a valid list",
            ));
        }
        items
    }

    /// An optional field's raw JSON text, `null` included (a caller that tells absent from
    /// `null` reads it itself); `None` when absent.
    pub fn optional_raw(&mut self, name: &str) -> Option<&'a RawValue> {
        self.given(name)
    }

    /// An optional boolean: absent and `null` are both `None`.
    pub fn optional_bool(&mut self, name: &str) -> Option<bool> {
        let raw = self.given(name)?.get();
        if raw == "null" {
            return None;
        }
        let parsed = serde_json::from_str::<bool>(raw).ok();
        if parsed.is_none() {
            self.problems.push(Invalid::body_field(
                name,
                "bool_type",
                "Input should be a valid boolean",
            ));
        }
        parsed
    }

    /// A required string.
    pub fn string(&mut self, name: &str) -> Option<String> {
        let raw = self.required(name)?.get();
        self.string_from(name, raw)
    }

    /// An optional string: absent and `null` are both `None`.
    pub fn optional_string(&mut self, name: &str) -> Option<String> {
        let raw = self.given(name)?.get();
        if raw == "null" {
            return None;
        }
        self.string_from(name, raw)
    }

    /// An optional object of strings, as its entries in the order the body gives them: absent
    /// and `null` are both empty. A key given twice inside it is refused as at the top level;
    /// a value that is not a string is a problem named by its key (`body.metadata.<key>`).
    pub fn optional_string_map(&mut self, name: &str) -> Vec<(String, String)> {
        let Some(raw) = self.given(name).map(RawValue::get) else {
            return Vec::new();
        };
        if raw == "null" {
            return Vec::new();
        }
        let Ok(object) = serde_json::from_str::<RawObject>(raw) else {
            self.problems.push(Invalid::body_field(
                name,
                "dict_type",
                "Input should be a valid dictionary",
            ));
            return Vec::new();
        };
        for key in &object.duplicates {
            let message = format!("the key {key:?} appears more than once");
            self.problems
                .push(Invalid::body_member(name, key, "duplicate_key", message));
        }
        let mut entries = Vec::new();
        for key in object.order {
            let value = object.members.get(&key).map(|value| value.get());
            match value.and_then(|value| serde_json::from_str::<String>(value).ok()) {
                Some(text) => entries.push((key, text)),
                None => self.problems.push(Invalid::body_member(
                    name,
                    &key,
                    "string_type",
                    "Input should be a valid string",
                )),
            }
        }
        entries
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

    /// Every problem found, then one `extra_forbidden` per key no read asked for, in the
    /// body's order: pydantic reports the declared fields' problems first, then the extra keys.
    /// Call it once every field has been read.
    pub fn into_problems(self) -> Vec<Invalid> {
        let mut problems = self.problems;
        let unknown = self
            .order
            .into_iter()
            .filter(|key| !self.declared.contains(key));
        problems.extend(unknown.map(|key| {
            Invalid::body_field(&key, "extra_forbidden", "Extra inputs are not permitted")
        }));
        problems
    }

    /// Fails with every problem found, unknown keys included (see [`Fields::into_problems`]),
    /// or passes when there were none. Call it once every field has been read.
    pub fn finish(self) -> Result<(), BodyError> {
        let problems = self.into_problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BodyError { problems })
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
    fn an_object_of_strings_keeps_its_order_and_names_each_bad_member() {
        let mut fields = Fields::parse(br#"{"m": {"z": "1", "a": "\u0032", "k": ""}, "n": null}"#)
            .expect("object");
        assert_eq!(
            fields.optional_string_map("m"),
            vec![
                ("z".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
                ("k".to_string(), String::new())
            ]
        );
        assert_eq!(fields.optional_string_map("n"), vec![]);
        assert_eq!(fields.optional_string_map("absent"), vec![]);
        assert!(fields.problems.is_empty());
        let located = |body: &str| {
            let mut fields = Fields::parse(body.as_bytes()).expect("an object");
            let _ = fields.optional_string_map("m");
            fields
                .problems
                .into_iter()
                .map(|p| (p.location.join("."), p.kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            located(r#"{"m": {"a": 1, "b": "x", "c": null, "d": {"e": "f"}}}"#),
            [
                ("body.m.a", "string_type"),
                ("body.m.c", "string_type"),
                ("body.m.d", "string_type")
            ]
            .map(|(location, kind)| (location.to_string(), kind.to_string()))
        );
        assert_eq!(
            located(r#"{"m": {"a": "1", "a": "2"}}"#),
            [("body.m.a".to_string(), "duplicate_key".to_string())]
        );
        for not_an_object in [r#"{"m": []}"#, r#"{"m": "a=1"}"#, r#"{"m": 5}"#] {
            assert_eq!(
                located(not_an_object),
                [("body.m".to_string(), "dict_type".to_string())]
            );
        }
    }

    /// The problems `finish` reports after reading `id` and `note`, as (field, type).
    fn finished(body: &str) -> Vec<(String, String)> {
        let mut fields = Fields::parse(body.as_bytes()).expect("an object");
        let _ = (fields.integer("id"), fields.optional_string("note"));
        match fields.finish() {
            Ok(()) => vec![],
            Err(BodyError { problems }) => problems
                .into_iter()
                .map(|p| (p.location[1].clone(), p.kind))
                .collect(),
        }
    }

    fn found(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(field, kind)| (field.to_string(), kind.to_string()))
            .collect()
    }

    #[test]
    fn a_key_no_read_asks_for_is_refused_naming_it_wherever_it_stands() {
        for body in [
            r#"{"phase": "pending", "id": 1}"#,
            r#"{"id": 1, "phase": "pending"}"#,
            r#"{"id": 1, "phase": null, "note": "x"}"#,
            r#"{"ph\u0061se": 1, "id": 1}"#,
        ] {
            assert_eq!(
                finished(body),
                found(&[("phase", "extra_forbidden")]),
                "{body}"
            );
        }
        let mut fields = Fields::parse(br#"{"id": 1, "phase": "pending"}"#).expect("object");
        assert_eq!(fields.integer("id"), Some(1));
        assert_eq!(
            fields.into_problems(),
            vec![Invalid::body_field(
                "phase",
                "extra_forbidden",
                "Extra inputs are not permitted"
            )]
        );
        // An optional field asked for but not given is declared all the same.
        assert_eq!(finished(r#"{"id": 1}"#), vec![]);
    }

    /// As pydantic: one error per extra key, in the body's order, after every declared
    /// field's problem whatever the keys' positions.
    #[test]
    fn every_unknown_key_is_reported_after_the_declared_fields_problems() {
        assert_eq!(
            finished(r#"{"zeta": 1, "note": 5, "alpha": 2, "beta": {}}"#),
            found(&[
                ("id", "missing"),
                ("note", "string_type"),
                ("zeta", "extra_forbidden"),
                ("alpha", "extra_forbidden"),
                ("beta", "extra_forbidden"),
            ])
        );
        // A key given twice is refused before any field is read, unknown or not.
        assert!(Fields::parse(br#"{"phase": 1, "phase": 2}"#).is_err());
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
            fn exactly_the_unknown_keys_are_refused_in_order_after_the_fields_problems(
                declared in proptest::collection::btree_map("[a-m]{1,4}", value(), 0..5),
                unknown in proptest::collection::vec(("[n-z]{1,4}", value()), 0..5),
                positions in proptest::collection::vec(any::<proptest::sample::Index>(), 5),
                asked in proptest::collection::btree_set("[a-m]{1,4}", 0..5),
            ) {
                // Unknown keys (a different alphabet than declared ones) inserted anywhere.
                let mut unknown_keys: Vec<String> = Vec::new();
                let mut entries: Vec<(String, String)> = declared
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                for ((key, value), position) in unknown.iter().zip(&positions) {
                    if unknown_keys.contains(key) {
                        continue;
                    }
                    unknown_keys.push(key.clone());
                    entries.insert(position.index(entries.len() + 1), (key.clone(), value.clone()));
                }
                let body = format!("{{{}}}", entries
                    .iter()
                    .map(|(key, value)| format!("{}: {value}", spelled(key, &[])))
                    .collect::<Vec<_>>()
                    .join(", "));
                let mut fields = Fields::parse(body.as_bytes()).expect("no key repeats");
                for name in declared.keys().chain(&asked) {
                    let _ = fields.optional_string(name);
                }
                let read_problems = fields.problems.clone();
                let problems = fields.into_problems();
                prop_assert_eq!(&problems[..read_problems.len()], &read_problems[..], "{}", body);
                let extra: Vec<&Invalid> = problems[read_problems.len()..].iter().collect();
                let in_body_order: Vec<&str> = entries
                    .iter()
                    .map(|(key, _)| key.as_str())
                    .filter(|key| unknown_keys.iter().any(|unknown| unknown == key))
                    .collect();
                prop_assert_eq!(extra.len(), in_body_order.len(), "{}", body);
                for (problem, key) in extra.iter().zip(in_body_order) {
                    prop_assert_eq!(&problem.kind, "extra_forbidden");
                    prop_assert_eq!(&problem.location, &vec!["body".to_string(), key.to_string()]);
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
