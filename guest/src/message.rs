//! The transfer-log message: the record of an accepted transfer that the settlement worker
//! applies and other consumers read.
//!
//! It keeps the original service's fields (`sender_id, receiver_id, amount, currency,
//! description, transaction_id`) and adds exact ones. `amount` is a JSON number written with
//! exactly the currency's decimals (`10.50`), so old consumers still read a number and new
//! ones can read it exactly; `amount_minor` is the integer to use.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::money;
use crate::rules::ValidTransfer;
use crate::time;

/// Bumped when a field changes meaning or disappears; adding a field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// The topic accepted transfers are published to (the original service's name).
pub const TRANSFER_TOPIC: &str = "transfer_topic";

#[derive(Serialize)]
struct TransferMessage<'a> {
    transaction_id: &'a str,
    sender_id: i64,
    receiver_id: i64,
    amount: &'a RawValue,
    amount_minor: i64,
    currency: &'a str,
    description: Option<&'a str>,
    created_at: String,
    created_at_ms: u64,
    guest_version: &'a str,
    schema_version: u32,
}

/// Builds the JSON message for an accepted transfer. Deterministic: the same inputs give the
/// same bytes.
pub fn transfer_message(
    transaction_id: &str,
    received_at_ms: u64,
    guest_version: &str,
    transfer: &ValidTransfer,
) -> Vec<u8> {
    let amount_text = money::format_minor(transfer.amount_minor, transfer.exponent);
    // format_minor writes digits, an optional point and an optional sign: always a JSON number.
    let amount = RawValue::from_string(amount_text).expect("formatted money is a JSON number");
    let message = TransferMessage {
        transaction_id,
        sender_id: transfer.sender_id,
        receiver_id: transfer.receiver_id,
        amount: &amount,
        amount_minor: transfer.amount_minor,
        currency: &transfer.currency,
        description: transfer.description.as_deref(),
        created_at: time::rfc3339_from_ms(received_at_ms),
        created_at_ms: received_at_ms,
        guest_version,
        schema_version: SCHEMA_VERSION,
    };
    serde_json::to_vec(&message).expect("a message of strings and integers always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keeps_original_fields_and_exact_amount() {
        let transfer = ValidTransfer {
            sender_id: 7,
            receiver_id: 9,
            amount_minor: 1050,
            exponent: 2,
            currency: "USD".into(),
            description: Some("обед \"ресторан\"".into()),
        };
        let bytes = transfer_message("0190-abc", 1_795_960_800_123, "sha256:00", &transfer);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert_eq!(
            text,
            r#"{"transaction_id":"0190-abc","sender_id":7,"receiver_id":9,"amount":10.50,"amount_minor":1050,"currency":"USD","description":"обед \"ресторан\"","created_at":"2026-11-29T14:00:00.123Z","created_at_ms":1795960800123,"guest_version":"sha256:00","schema_version":1}"#
        );
    }

    #[test]
    fn missing_description_is_null() {
        let transfer = ValidTransfer {
            sender_id: 1,
            receiver_id: 2,
            amount_minor: 5,
            exponent: 0,
            currency: "JPY".into(),
            description: None,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&transfer_message("t", 0, "v", &transfer)).expect("json");
        assert_eq!(value["description"], serde_json::Value::Null);
        assert_eq!(value["amount"], serde_json::json!(5));
    }
}
