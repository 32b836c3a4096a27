use super::*;
use proptest::prelude::*;

const ID: &str = "01a20c00-0000-7000-8000-000000000001";

fn standard() -> TransferMessage {
    TransferMessage {
        transaction_id: Uuid::parse_str(ID).expect("uuid"),
        sender_id: 7,
        receiver_id: 9,
        amount: AmountText::new("10.50".into()),
        amount_minor: 1050,
        currency: "USD".into(),
        description: Some("обед \"ресторан\"".into()),
        created_at: Some(time::rfc3339_from_ms(1_795_960_800_123)),
        created_at_ms: 1_795_960_800_123,
        guest_version: Some("sha256:00".into()),
        schema_version: Some(SCHEMA_VERSION),
        metadata: None,
        phase: None,
        expires_at_ms: None,
    }
}

/// The standard message's JSON with `field` set to the raw JSON text `value`.
fn with(field: &str, value: &str) -> Vec<u8> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&standard().to_bytes()).expect("object");
    object.insert(field.into(), serde_json::from_str(value).expect("json"));
    serde_json::to_vec(&object).expect("json")
}

fn problem(result: Result<TransferMessage, MessageError>) -> Option<&'static str> {
    match result {
        Ok(_) => None,
        Err(MessageError::Shape(_)) => Some("shape"),
        Err(MessageError::Field { field, .. }) => Some(field),
    }
}

#[test]
fn the_message_keeps_the_original_fields_in_order_and_the_exact_amount() {
    let text = String::from_utf8(standard().to_bytes()).expect("utf-8");
    assert_eq!(
        text,
        r#"{"transaction_id":"01a20c00-0000-7000-8000-000000000001","sender_id":7,"receiver_id":9,"amount":10.50,"amount_minor":1050,"currency":"USD","description":"обед \"ресторан\"","created_at":"2026-11-29T14:00:00.123Z","created_at_ms":1795960800123,"guest_version":"sha256:00","schema_version":1}"#
    );
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<_, _>>(&text)
        .expect("object")
        .keys()
        .cloned()
        .collect();
    let mut sorted_fields = FIELDS.map(String::from).to_vec();
    sorted_fields.sort();
    assert_eq!(keys, sorted_fields, "every field, and only those");
}

#[test]
fn both_readings_take_what_the_writer_writes() {
    let bytes = standard().to_bytes();
    assert_eq!(TransferMessage::parse(&bytes), Ok(standard()));
    assert_eq!(TransferMessage::parse_exact(&bytes), Ok(standard()));
}

#[test]
fn text_the_ledger_cannot_store_is_refused_by_both() {
    for field in ["description", "currency"] {
        let bytes = with(field, r#""a\u0000b""#);
        assert_eq!(problem(TransferMessage::parse(&bytes)), Some(field));
        assert_eq!(problem(TransferMessage::parse_exact(&bytes)), Some(field));
    }
}

#[test]
fn control_characters_settle_but_the_guard_refuses_them() {
    for text in [
        r#""line\nbreak""#,
        r#""tab\there""#,
        r#""bell\u0007""#,
        r#""del\u007f""#,
    ] {
        let bytes = with("description", text);
        assert!(TransferMessage::parse(&bytes).is_ok(), "{text}");
        assert_eq!(
            problem(TransferMessage::parse_exact(&bytes)),
            Some("description"),
            "{text}"
        );
    }
    // Beyond C0 and DEL, any text is printable.
    let bytes = with("description", r#""é 日本 \u0080 😀""#);
    assert_eq!(
        TransferMessage::parse_exact(&bytes).map(|m| m.description),
        Ok(Some("é 日本 \u{80} 😀".into()))
    );
}

#[test]
fn a_time_outside_what_the_ledger_and_rfc_3339_hold_is_refused() {
    for ms in ["9223372036854775807", "-1", "253402300800000"] {
        let bytes = with("created_at_ms", ms);
        assert_eq!(
            problem(TransferMessage::parse(&bytes)),
            Some("created_at_ms"),
            "{ms}"
        );
    }
    for ms in ["9223372036854775808", "1.5", "\"1\""] {
        let bytes = with("created_at_ms", ms);
        assert_eq!(
            problem(TransferMessage::parse(&bytes)),
            Some("shape"),
            "{ms}"
        );
    }
}

#[test]
fn the_exact_reading_wants_every_field_of_this_version_and_no_other() {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&standard().to_bytes()).expect("object");
    object.remove("guest_version");
    let missing = serde_json::to_vec(&object).expect("json");
    assert!(TransferMessage::parse(&missing).is_ok(), "settles");
    assert_eq!(
        problem(TransferMessage::parse_exact(&missing)),
        Some("shape")
    );

    // A field's name written with an escape reads the same to settlement; this version never
    // writes one.
    let text = String::from_utf8(standard().to_bytes()).expect("utf-8");
    let escaped = text.replacen("\"sender_id\"", "\"sender\\u005fid\"", 1);
    assert!(
        TransferMessage::parse(escaped.as_bytes()).is_ok(),
        "settles"
    );
    assert_eq!(
        problem(TransferMessage::parse_exact(escaped.as_bytes())),
        Some("shape")
    );

    let extra = with("note", "1");
    assert!(TransferMessage::parse(&extra).is_ok(), "settles");
    assert_eq!(problem(TransferMessage::parse_exact(&extra)), Some("shape"));

    let cases = [
        ("schema_version", "2", "schema_version"),
        ("schema_version", "null", "schema_version"),
        ("created_at", r#""2026-11-29T14:00:00Z""#, "created_at"),
        ("guest_version", "null", "guest_version"),
        ("amount", "null", "amount"),
        (
            "transaction_id",
            r#""01A20C00-0000-7000-8000-000000000001""#,
            "transaction_id",
        ),
    ];
    for (field, value, refused) in cases {
        let bytes = with(field, value);
        assert!(TransferMessage::parse(&bytes).is_ok(), "{field} {value}");
        assert_eq!(
            problem(TransferMessage::parse_exact(&bytes)),
            Some(refused),
            "{field} {value}"
        );
    }
}

#[test]
fn a_field_given_twice_is_not_a_message() {
    let text = String::from_utf8(standard().to_bytes()).expect("utf-8");
    let twice = text.replacen(r#""sender_id":7,"#, r#""sender_id":8,"sender_id":7,"#, 1);
    assert_eq!(
        problem(TransferMessage::parse(twice.as_bytes())),
        Some("shape")
    );
}

#[test]
fn the_wrong_shapes_are_named_as_such() {
    for bytes in [
        &b"not json"[..],
        b"[]",
        b"{}",
        b"null",
        br#"{"transaction_id":"x","sender_id":1,"receiver_id":2,"amount_minor":1,"currency":"USD","created_at_ms":1}"#,
    ] {
        assert_eq!(problem(TransferMessage::parse(bytes)), Some("shape"));
    }
    assert_eq!(
        problem(TransferMessage::parse(&with("amount", r#""10.50""#))),
        Some("shape")
    );
    assert_eq!(
        problem(TransferMessage::parse(&with("sender_id", "1e3"))),
        Some("shape")
    );
}

#[test]
fn amount_text_keeps_a_number_as_written() {
    assert_eq!(
        AmountText::new("10.50".into()).map(|a| a.0),
        Some("10.50".into())
    );
    assert_eq!(
        AmountText::new("-0.5".into()).map(|a| a.0),
        Some("-0.5".into())
    );
    for text in ["\"10\"", "null", "", "10 11", "{}"] {
        assert_eq!(AmountText::new(text.into()), None, "{text:?}");
    }
}

#[test]
fn printable_is_c0_and_del_free() {
    assert!(printable("ordinary text, ünïcödé"));
    for c in (0u8..=0x1f).chain([0x7f]) {
        assert!(!printable(&format!("a{}b", c as char)), "{c:#x}");
    }
    assert!(storable("line\nbreak"));
    assert!(!storable("a\0b"));
}

proptest! {
    /// Whatever the bytes, both readings answer without panicking, and the exact reading never
    /// admits what settlement's would refuse.
    #[test]
    fn any_bytes_are_answered_and_exact_is_stricter(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let settled = TransferMessage::parse(&bytes);
        if let Ok(message) = TransferMessage::parse_exact(&bytes) {
            prop_assert_eq!(settled, Ok(message));
        }
    }

    /// A message written from any field values reads back the same when it is storable, and
    /// is refused by field when not.
    #[test]
    fn written_messages_read_back(
        sender_id in any::<i64>(),
        receiver_id in any::<i64>(),
        amount_minor in any::<i64>(),
        created_at_ms in any::<i64>(),
        currency in "\\PC{0,5}|[\\x00-\\x20]{0,3}",
        description in proptest::option::of("\\PC{0,40}|[\\x00-\\x7f]{0,40}"),
    ) {
        let message = TransferMessage {
            sender_id, receiver_id, amount_minor, created_at_ms,
            currency: currency.clone(),
            description: description.clone(),
            ..standard()
        };
        let read = TransferMessage::parse(&message.to_bytes());
        let storable_text = storable(&currency) && description.as_deref().is_none_or(storable);
        if (0..=MAX_CREATED_AT_MS).contains(&created_at_ms) && storable_text {
            prop_assert_eq!(read, Ok(message));
        } else {
            let refused_by_field = matches!(read, Err(MessageError::Field { .. }));
            prop_assert!(refused_by_field, "{:?}", read);
        }
    }
}

fn pending_with_metadata() -> TransferMessage {
    TransferMessage {
        metadata: Some(BTreeMap::from([
            ("order_id".to_string(), "A-1".to_string()),
            ("channel".to_string(), "web".to_string()),
        ])),
        phase: Some(Phase::Pending),
        expires_at_ms: Some(standard().created_at_ms + 3_600_000),
        ..standard()
    }
}

#[test]
fn optional_fields_follow_the_original_ones_and_read_back_exactly() {
    let message = pending_with_metadata();
    let text = String::from_utf8(message.to_bytes()).expect("utf-8");
    assert!(
        text.ends_with(r#""schema_version":1,"metadata":{"channel":"web","order_id":"A-1"},"phase":"pending","expires_at_ms":1795964400123}"#),
        "{text}"
    );
    assert_eq!(TransferMessage::parse_exact(text.as_bytes()), Ok(message));
}

#[test]
fn the_guard_refuses_metadata_not_written_once_per_key_in_order() {
    let base = String::from_utf8(standard().to_bytes()).expect("utf-8");
    let open = base.trim_end_matches('}');
    for metadata in [
        r#"{"b":"1","a":"2"}"#,
        r#"{"a":"1","a":"2"}"#,
        r#"{}"#,
        r#"{"a":"line\nbreak"}"#,
    ] {
        let bytes = format!(r#"{open},"metadata":{metadata}}}"#);
        assert_eq!(
            problem(TransferMessage::parse_exact(bytes.as_bytes())),
            Some("metadata"),
            "{metadata}"
        );
    }
}

#[test]
fn metadata_out_of_bounds_is_refused_by_both_readings() {
    let many: BTreeMap<String, String> = (0..=METADATA_MAX_ENTRIES)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let big: BTreeMap<String, String> = (0..9)
        .map(|i| (format!("k{i}"), "v".repeat(METADATA_VALUE_MAX_BYTES)))
        .collect();
    for metadata in [
        many,
        big,
        BTreeMap::from([("".to_string(), "v".to_string())]),
        BTreeMap::from([("a b".to_string(), "v".to_string())]),
        BTreeMap::from([("k".repeat(METADATA_KEY_MAX_BYTES + 1), "v".to_string())]),
        BTreeMap::from([("k".to_string(), "v".repeat(METADATA_VALUE_MAX_BYTES + 1))]),
        BTreeMap::from([("k".to_string(), "a\0b".to_string())]),
    ] {
        let bytes = TransferMessage {
            metadata: Some(metadata),
            ..standard()
        }
        .to_bytes();
        assert_eq!(problem(TransferMessage::parse(&bytes)), Some("metadata"));
        assert_eq!(
            problem(TransferMessage::parse_exact(&bytes)),
            Some("metadata")
        );
    }
}

#[test]
fn a_pending_transfer_expires_after_it_was_made_and_within_the_bound() {
    let created = standard().created_at_ms;
    let cases = [
        (Some(Phase::Pending), None, Some("expires_at_ms")),
        (Some(Phase::Pending), Some(created), Some("expires_at_ms")),
        (Some(Phase::Pending), Some(created + 1), None),
        (
            Some(Phase::Pending),
            Some(created + PENDING_MAX_EXPIRY_MS),
            None,
        ),
        (
            Some(Phase::Pending),
            Some(created + PENDING_MAX_EXPIRY_MS + 1),
            Some("expires_at_ms"),
        ),
        (None, Some(created + 1), Some("expires_at_ms")),
    ];
    for (phase, expires_at_ms, refused) in cases {
        let bytes = TransferMessage {
            phase,
            expires_at_ms,
            ..standard()
        }
        .to_bytes();
        assert_eq!(
            problem(TransferMessage::parse(&bytes)),
            refused,
            "{expires_at_ms:?}"
        );
    }
    let immediate = TransferMessage {
        phase: Some(Phase::Immediate),
        ..standard()
    };
    assert!(TransferMessage::parse(&immediate.to_bytes()).is_ok());
    assert_eq!(
        problem(TransferMessage::parse_exact(&immediate.to_bytes())),
        Some("phase")
    );
}

#[test]
fn the_log_tells_actions_from_transfers() {
    let action = ActionMessage {
        action: Action::Post,
        action_id: Uuid::from_u128(42),
        pending_id: Uuid::parse_str(ID).expect("uuid"),
        sender_id: 7,
        receiver_id: 9,
        currency: "USD".into(),
        amount_minor: 500,
        created_at_ms: 5,
        schema_version: SCHEMA_VERSION,
    };
    assert_eq!(
        LogMessage::parse(&action.to_bytes()),
        Ok(LogMessage::Action(action.clone()))
    );
    assert_eq!(
        LogMessage::parse(&standard().to_bytes()),
        Ok(LogMessage::Transfer(standard()))
    );
    // An older reader, which knows only transfers, refuses an action.
    assert!(TransferMessage::parse(&action.to_bytes()).is_err());
    let zero = ActionMessage {
        amount_minor: 0,
        ..action.clone()
    };
    assert_eq!(problem_of_log(&zero.to_bytes()), Some("amount_minor"));
    let mut extra: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&action.to_bytes()).expect("object");
    extra.insert("note".into(), serde_json::json!("x"));
    let extra = serde_json::to_vec(&extra).expect("json");
    assert_eq!(problem_of_log(&extra), Some("shape"));
    assert_eq!(problem_of_log(b"[1]"), Some("shape"));
}

fn problem_of_log(payload: &[u8]) -> Option<&'static str> {
    match LogMessage::parse(payload) {
        Ok(_) => None,
        Err(MessageError::Shape(_)) => Some("shape"),
        Err(MessageError::Field { field, .. }) => Some(field),
    }
}

#[test]
fn a_batch_carries_each_transfer_as_written_and_old_readers_refuse_it() {
    let first = standard();
    let second = TransferMessage {
        transaction_id: Uuid::from_u128(7),
        ..pending_with_metadata()
    };
    let payloads = [first.to_bytes(), second.to_bytes()];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let bytes = BatchMessage::write(Uuid::from_u128(9), true, &refs).expect("json");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    for payload in &payloads {
        assert!(
            text.contains(std::str::from_utf8(payload).expect("utf-8")),
            "kept byte for byte"
        );
    }
    let Ok(LogMessage::Batch(batch)) = LogMessage::parse(&bytes) else {
        panic!("not read as a batch: {text}")
    };
    assert_eq!((batch.batch_id, batch.atomic), (Uuid::from_u128(9), true));
    assert_eq!(batch.transfers, vec![first.clone(), second]);
    assert!(
        TransferMessage::parse(&bytes).is_err(),
        "an older reader refuses a batch"
    );
    let twice = BatchMessage::write(Uuid::from_u128(9), false, &[&payloads[0], &payloads[0]])
        .expect("json");
    assert_eq!(problem_of_log(&twice), Some("transfers"));
    let empty = br#"{"batch_id":"01a20c00-0000-7000-8000-000000000009","atomic":false,"transfers":[],"schema_version":1}"#;
    assert_eq!(problem_of_log(empty), Some("transfers"));
    let broken =
        BatchMessage::write(Uuid::from_u128(9), false, &[br#"{"sender_id":1}"#]).expect("json");
    assert_eq!(problem_of_log(&broken), Some("shape"));
}
