//! The guest's side of the transfer-log message: an accepted transfer written as the contract
//! type (`transferd_message`) that the host's guard and settlement read with their parser.

use transferd_message::{AmountText, Phase, time};
pub use transferd_message::{SCHEMA_VERSION, TRANSFER_TOPIC, TransferMessage};

use crate::money;
use crate::rules::ValidTransfer;

/// Builds the JSON message for an accepted transfer. Deterministic: the same inputs give the
/// same bytes. `Err` when the host's context is not one a message can carry (a transaction id
/// that is not a UUID, a time beyond the contract's range): a defect of the host, never of the
/// request.
pub fn transfer_message(
    transaction_id: &str,
    received_at_ms: u64,
    guest_version: &str,
    transfer: &ValidTransfer,
) -> Result<Vec<u8>, String> {
    let transaction_id = transaction_id
        .parse()
        .map_err(|_| format!("the context's transaction id {transaction_id:?} is not a UUID"))?;
    let created_at_ms = i64::try_from(received_at_ms)
        .ok()
        .filter(|ms| *ms <= transferd_message::MAX_CREATED_AT_MS)
        .ok_or_else(|| format!("the context's time {received_at_ms} is out of range"))?;
    let expires_at_ms = match transfer.pending_for_s {
        None => None,
        Some(seconds) => Some(
            seconds
                .checked_mul(1000)
                .and_then(|ms| created_at_ms.checked_add(ms))
                .ok_or_else(|| format!("a pending transfer of {seconds} s has no expiry"))?,
        ),
    };
    let amount_text = money::format_minor(transfer.amount_minor, transfer.exponent);
    let message = TransferMessage {
        transaction_id,
        sender_id: transfer.sender_id,
        receiver_id: transfer.receiver_id,
        // format_minor writes digits, an optional point and an optional sign: always a number.
        amount: Some(AmountText::new(amount_text).expect("formatted money is a JSON number")),
        amount_minor: transfer.amount_minor,
        currency: transfer.currency.clone(),
        description: transfer.description.clone(),
        created_at: Some(time::rfc3339_from_ms(received_at_ms)),
        created_at_ms,
        guest_version: Some(guest_version.to_string()),
        schema_version: Some(SCHEMA_VERSION),
        metadata: transfer.metadata.clone(),
        // The writer leaves `immediate` out: a message without a phase settles at once.
        phase: transfer.pending_for_s.map(|_| Phase::Pending),
        expires_at_ms,
    };
    Ok(message.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01a20c00-0000-7000-8000-000000000001";

    fn transfer(description: Option<&str>) -> ValidTransfer {
        ValidTransfer {
            sender_id: 7,
            receiver_id: 9,
            amount_minor: 1050,
            exponent: 2,
            currency: "USD".into(),
            description: description.map(str::to_string),
            metadata: None,
            pending_for_s: None,
        }
    }

    #[test]
    fn the_message_is_one_the_guard_admits_and_settlement_applies() {
        let bytes = transfer_message(ID, 1_795_960_800_123, "sha256:00", &transfer(Some("обед")))
            .expect("a message");
        let read = TransferMessage::parse_exact(&bytes).expect("the guard's reading");
        assert_eq!(read.amount.as_ref().map(|a| a.as_str()), Some("10.50"));
        assert_eq!(read.created_at.as_deref(), Some("2026-11-29T14:00:00.123Z"));
        assert_eq!(TransferMessage::parse(&bytes), Ok(read));
    }

    #[test]
    fn missing_description_is_null_and_amounts_keep_their_decimals() {
        let yen = ValidTransfer {
            amount_minor: 5,
            exponent: 0,
            currency: "JPY".into(),
            ..transfer(None)
        };
        let value: serde_json::Value =
            serde_json::from_slice(&transfer_message(ID, 0, "v", &yen).expect("a message"))
                .expect("json");
        assert_eq!(value["description"], serde_json::Value::Null);
        assert_eq!(value["amount"], serde_json::json!(5));
    }

    #[test]
    fn a_plain_transfer_s_message_has_only_the_original_fields() {
        let bytes = transfer_message(ID, 0, "v", &transfer(None)).expect("a message");
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let keys: std::collections::BTreeSet<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, transferd_message::FIELDS.into_iter().collect());
    }

    #[test]
    fn metadata_and_a_pending_phase_are_carried() {
        let pending = ValidTransfer {
            metadata: Some([("order_id".to_string(), "A-1".to_string())].into()),
            pending_for_s: Some(3600),
            ..transfer(None)
        };
        let received_at_ms = 1_795_960_800_123;
        let bytes = transfer_message(ID, received_at_ms, "v", &pending).expect("a message");
        let read = TransferMessage::parse_exact(&bytes).expect("the guard's reading");
        assert!(read.is_pending());
        assert_eq!(read.expires_at_ms, Some(1_795_960_800_123 + 3_600_000));
        assert_eq!(read.metadata, pending.metadata);
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert!(
            text.ends_with(
                r#""metadata":{"order_id":"A-1"},"phase":"pending","expires_at_ms":1795964400123}"#
            ),
            "{text}"
        );
    }

    proptest::proptest! {
        /// Whatever metadata the rules let through and whatever expiry they allow, the message
        /// is one the guard's exact reading admits, carrying both unchanged.
        #[test]
        fn metadata_and_expiry_within_the_rules_make_an_exact_message(
            metadata in proptest::collection::btree_map("[A-Za-z0-9_.-]{1,64}", "[^\\x00-\\x1f\\x7f]{0,40}", 0..=16),
            pending_for_s in proptest::option::of(1i64..=crate::rules::MAX_EXPIRES_IN_S),
            received_at_ms in 0u64..=253_402_300_799_999,
        ) {
            let valid = ValidTransfer {
                metadata: (!metadata.is_empty()).then_some(metadata),
                pending_for_s,
                ..transfer(None)
            };
            let bytes = transfer_message(ID, received_at_ms, "v", &valid).expect("a message");
            let read = TransferMessage::parse_exact(&bytes).expect("the guard's reading");
            proptest::prop_assert_eq!(&read.metadata, &valid.metadata);
            proptest::prop_assert_eq!(read.is_pending(), pending_for_s.is_some());
            let expected_expiry = pending_for_s.map(|s| read.created_at_ms + s * 1000);
            proptest::prop_assert_eq!(read.expires_at_ms, expected_expiry);
        }
    }

    #[test]
    fn a_context_no_message_can_carry_is_an_error() {
        assert!(transfer_message("t", 0, "v", &transfer(None)).is_err());
        assert!(transfer_message(ID, u64::MAX, "v", &transfer(None)).is_err());
    }
}
