//! A transfer body read as the service reads it, against a model built on `serde_json::Value`:
//! for any JSON object the same fields or the same problems; for any bytes no panic and a
//! refusal that names at least one problem; however keys are spelled and values spaced, the
//! same reading.

use proptest::prelude::*;
use serde_json::{Map, Value};
use transferd_wire::{Fields, TransferFields};

/// The transfer body's fields.
const FIELDS: [&str; 8] = [
    "sender_id",
    "receiver_id",
    "amount",
    "currency",
    "description",
    "phase",
    "expires_in_s",
    "metadata",
];

/// The transfer body's keys and a few others.
const KEYS: [&str; 11] = [
    "sender_id",
    "receiver_id",
    "amount",
    "currency",
    "description",
    "phase",
    "expires_in_s",
    "metadata",
    "extra",
    "amount ",
    "Amount",
];

/// What reading `object` should give, field by field, from its parsed values: the value or
/// the problem's kind, a key that is no field last.
fn model(object: &Map<String, Value>) -> Result<TransferFields, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut problem = |name: &str, kind: &str| problems.push((name.to_string(), kind.to_string()));
    let is_integer = |value: &Value| match value {
        Value::Number(number) => number.as_i64().is_some(),
        Value::String(text) => text.parse::<i64>().is_ok(),
        _ => false,
    };
    for name in ["sender_id", "receiver_id"] {
        match object.get(name) {
            None => problem(name, "missing"),
            Some(value) if is_integer(value) => {}
            Some(_) => problem(name, "int_parsing"),
        }
    }
    match object.get("amount") {
        None => problem("amount", "missing"),
        Some(Value::Number(_) | Value::String(_)) => {}
        Some(_) => problem("amount", "decimal_type"),
    }
    match object.get("currency") {
        None => problem("currency", "missing"),
        Some(Value::String(_)) => {}
        Some(_) => problem("currency", "string_type"),
    }
    match object.get("description") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => problem("description", "string_type"),
    }
    match object.get("phase") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => problem("phase", "string_type"),
    }
    match object.get("expires_in_s") {
        None | Some(Value::Null) => {}
        Some(value) if is_integer(value) => {}
        Some(_) => problem("expires_in_s", "int_parsing"),
    }
    let mut metadata = Vec::new();
    match object.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(members)) => {
            for (key, value) in members {
                match value {
                    Value::String(text) => metadata.push((key.clone(), text.clone())),
                    _ => problem(&format!("metadata.{key}"), "string_type"),
                }
            }
        }
        Some(_) => problem("metadata", "dict_type"),
    }
    // Then every key that is no field, in the body's order (the map's, which wrote the body).
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            problem(key, "extra_forbidden");
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let optional_integer = |name: &str| match object.get(name)? {
        Value::Number(number) => number.as_i64(),
        other => other.as_str().and_then(|text| text.parse().ok()),
    };
    let integer = |name: &str| optional_integer(name).unwrap_or_default();
    let optional_text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
    let text = |name: &str| match &object[name] {
        Value::String(text) => text.clone(),
        // A number's text is what was written, which is how serde_json wrote it.
        other => other.to_string(),
    };
    Ok(TransferFields {
        sender_id: integer("sender_id"),
        receiver_id: integer("receiver_id"),
        amount: text("amount"),
        currency: text("currency"),
        description: optional_text("description"),
        phase: optional_text("phase"),
        expires_in_s: optional_integer("expires_in_s"),
        metadata,
    })
}

fn read(body: &[u8]) -> Result<TransferFields, Vec<(String, String)>> {
    TransferFields::read(body).map_err(|error| {
        error
            .problems
            .into_iter()
            .map(|problem| (problem.location[1..].join("."), problem.kind))
            .collect()
    })
}

/// JSON values of every kind, numbers exact (integers, and decimals written as text).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "-?[0-9]{1,4}\\.[0-9]{1,4}(e[+-]?[0-9]{1,3})?".prop_filter_map("a finite number", |text| {
            serde_json::from_str::<Value>(&text).ok()
        }),
        "\\PC{0,12}".prop_map(Value::String),
        "-?[0-9]{1,20}(\\.[0-9]{0,4})?".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), value(), 0..KEYS.len())
        .prop_map(|map| map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A body with every field right, values in the shapes clients send.
fn complete_object() -> impl Strategy<Value = Map<String, Value>> {
    (
        any::<i64>(),
        "-?[0-9]{1,18}".prop_map(Value::String),
        prop_oneof![
            "[0-9]{1,6}(\\.[0-9]{1,3})?".prop_map(Value::String),
            (1u32..1_000_000).prop_map(Value::from),
        ],
        "[A-Z]{3}",
        prop::option::of("\\PC{0,10}"),
    )
        .prop_map(|(sender, receiver, amount, currency, description)| {
            let mut object = Map::new();
            object.insert("sender_id".into(), Value::from(sender));
            object.insert("receiver_id".into(), receiver);
            object.insert("amount".into(), amount);
            object.insert("currency".into(), Value::String(currency));
            if let Some(description) = description {
                object.insert("description".into(), Value::String(description));
            }
            object
        })
}

/// A key as JSON text with each character plain or `\uXXXX`-escaped, as `escapes` says.
fn spelled(key: &str, escapes: &[bool]) -> String {
    let mut text = String::from("\"");
    for (index, c) in key.chars().enumerate() {
        if escapes.get(index).copied().unwrap_or(false) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                text.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            // Serialising one string escapes what must be escaped; strip its quotes.
            let plain = Value::String(c.to_string()).to_string();
            text.push_str(&plain[1..plain.len() - 1]);
        }
    }
    text.push('"');
    text
}

/// `object` as JSON text with keys and string values spelled as `escapes` says and `spaces`
/// around each token.
fn written(object: &Map<String, Value>, escapes: &[bool], spaces: &[&str]) -> String {
    let mut space = spaces.iter().cycle();
    let mut next = || space.next().copied().unwrap_or("");
    let members: Vec<String> = object
        .iter()
        .map(|(key, value)| {
            format!(
                "{}{}{}:{}{}{}",
                next(),
                spelled(key, escapes),
                next(),
                next(),
                match value {
                    Value::String(text) => spelled(text, &escapes[escapes.len() / 2..]),
                    other => other.to_string(),
                },
                next()
            )
        })
        .collect();
    format!("{}{{{}}}{}", next(), members.join(","), next())
}

fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n", "  "]),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn any_object_reads_as_its_values_say(object in object()) {
        let body = Value::Object(object.clone()).to_string();
        prop_assert_eq!(read(body.as_bytes()), model(&object), "{}", body);
    }

    #[test]
    fn a_complete_body_reads_the_same_however_it_is_spelled_and_spaced(
        object in complete_object(),
        escapes in prop::collection::vec(any::<bool>(), 12),
        spaces in whitespace(),
    ) {
        let plain = Value::Object(object.clone()).to_string();
        let body = written(&object, &escapes, &spaces);
        let expected = model(&object);
        prop_assert!(expected.is_ok(), "{}", plain);
        prop_assert_eq!(read(body.as_bytes()), expected, "{}", body);
    }

    #[test]
    fn a_repeated_transfer_key_is_refused_however_it_is_spelled(
        object in complete_object(),
        repeat in prop::sample::select(vec!["sender_id", "receiver_id", "amount", "currency"]),
        escapes in prop::collection::vec(any::<bool>(), 12),
        value in value(),
    ) {
        let body = Value::Object(object).to_string();
        let again = format!(",{}:{value}}}", spelled(repeat, &escapes));
        let body = format!("{}{again}", &body[..body.len() - 1]);
        prop_assert_eq!(
            read(body.as_bytes()),
            Err(vec![(repeat.to_string(), "duplicate_key".to_string())]),
            "{}", body
        );
    }

    #[test]
    fn any_bytes_are_answered_and_a_refusal_names_a_problem(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(error) = TransferFields::read(&bytes) {
            prop_assert!(!error.problems.is_empty());
            prop_assert!(error.problems.iter().all(|problem| problem.location[0] == "body"));
        }
    }

    #[test]
    fn a_damaged_body_is_answered_and_a_refusal_names_a_problem(
        object in complete_object(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = Value::Object(object).to_string().into_bytes();
        for (index, byte, operation) in edits {
            let at = index.index(bytes.len() + 1);
            match operation {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => bytes.push(byte),
            }
        }
        match TransferFields::read(&bytes) {
            Ok(fields) => {
                // Whatever survived is still JSON, and reads as its values say.
                let value = match serde_json::from_slice::<Value>(&bytes) {
                    Ok(value) => value,
                    Err(error) => {
                        // JSON leaves a number's range to its reader (RFC 8259, section 6):
                        // an amount beyond f64's keeps its text, for the guest to refuse as
                        // too large. serde_json's values cannot hold it.
                        prop_assert!(error.to_string().starts_with("number out of range"), "{}", error);
                        prop_assert!(fields.amount.parse::<f64>().is_ok_and(f64::is_infinite), "{:?}", fields);
                        return Ok(());
                    }
                };
                let object = value.as_object().expect("accepted bytes are an object");
                let mut expected = model(object);
                if let (Ok(expected), Some(Value::Number(number))) = (&mut expected, object.get("amount")) {
                    // A number the edits wrote ("1e000") keeps the text it was written with,
                    // which serde_json's value does not: the body's own text, the same number.
                    prop_assert!(contains(&bytes, fields.amount.as_bytes()), "{:?}", fields);
                    prop_assert!(same_number(&fields.amount, number), "{:?} {}", fields, number);
                    expected.amount = fields.amount.clone();
                }
                prop_assert_eq!(Ok(fields), expected);
            }
            Err(error) => prop_assert!(!error.problems.is_empty()),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// `text` is `number`, to f64's precision (serde_json's own float parsing may be a unit in the
/// last place off the correctly rounded value).
fn same_number(text: &str, number: &serde_json::Number) -> bool {
    match (text.parse::<f64>(), number.as_f64()) {
        (Ok(read), Some(parsed)) => {
            (read - parsed).abs() <= f64::EPSILON * read.abs().max(parsed.abs())
        }
        _ => false,
    }
}

/// An amount is the body's exact text whatever form its number takes, even one beyond what a
/// float holds; the guest's decimal rules judge it (`1e000` is one unit, `1e999` too large).
#[test]
fn an_amount_keeps_its_text_in_exponent_form_and_beyond_a_float() {
    for amount in ["1e000", "1E+2", "2.50e-1", "1e999", "-0.0"] {
        let body = format!(
            r#"{{"sender_id": 1, "receiver_id": 2, "amount": {amount}, "currency": "USD"}}"#
        );
        let fields = TransferFields::read(body.as_bytes()).expect("a complete body");
        assert_eq!(fields.amount, amount);
    }
}

/// The model can fail: a reading it does not predict is caught.
#[test]
fn the_model_tells_a_wrong_reading_apart() {
    let object: Map<String, Value> = serde_json::from_str(
        r#"{"sender_id": "7", "receiver_id": 8, "amount": 1.50, "currency": "USD"}"#,
    )
    .expect("an object");
    let fields = model(&object).expect("complete");
    assert_eq!(fields.sender_id, 7);
    assert_eq!(fields.amount, "1.5", "serde_json's Value drops the zero");
    assert_ne!(
        read(br#"{"sender_id": "7", "receiver_id": 8, "amount": 1.50, "currency": "USD"}"#),
        Ok(fields),
        "the reader keeps the digits as written"
    );
    let _ = Fields::parse(b"{}");
}
