//! The fields of a `POST /transfers` body, read in the order and with the reads of the host's
//! handler (`parse_request` in host/src/http/transfers.rs). Here so the fuzz target and the
//! property tests read a transfer body exactly as the service does; the handler can call it.

use crate::fields::Fields;
use crate::problem::BodyError;

/// A transfer body's fields, before any rule is checked (the guest checks the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferFields {
    pub sender_id: i64,
    pub receiver_id: i64,
    /// The amount's exact decimal text, as the guest receives it.
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    /// The phase's text as sent ("immediate", "pending"; the guest judges it).
    pub phase: Option<String>,
    pub expires_in_s: Option<i64>,
    /// The metadata's entries in the order sent, each key once; empty when none was sent.
    pub metadata: Vec<(String, String)>,
}

impl TransferFields {
    /// Reads every field and reports every problem at once; the error is never empty.
    pub fn read(body: &[u8]) -> Result<TransferFields, BodyError> {
        let mut fields = Fields::parse(body)?;
        let sender_id = fields.integer("sender_id");
        let receiver_id = fields.integer("receiver_id");
        let amount = fields.decimal_text("amount");
        let currency = fields.string("currency");
        let description = fields.optional_string("description");
        let phase = fields.optional_string("phase");
        let expires_in_s = fields.optional_integer("expires_in_s");
        let metadata = fields.optional_string_map("metadata");
        let problems = fields.into_problems();
        match (sender_id, receiver_id, amount, currency) {
            (Some(sender_id), Some(receiver_id), Some(amount), Some(currency))
                if problems.is_empty() =>
            {
                Ok(TransferFields {
                    sender_id,
                    receiver_id,
                    amount,
                    currency,
                    description,
                    phase,
                    expires_in_s,
                    metadata,
                })
            }
            // Every read that gives nothing records why, so the problems are not empty here.
            _ => Err(BodyError { problems }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(body: &str) -> Vec<(String, String)> {
        match TransferFields::read(body.as_bytes()) {
            Ok(fields) => panic!("{body}: read as {fields:?}"),
            Err(error) => error
                .problems
                .into_iter()
                .map(|problem| (problem.location.join("."), problem.kind))
                .collect(),
        }
    }

    #[test]
    fn a_complete_body_is_read_with_its_exact_amount() {
        let fields = TransferFields::read(
            br#"{"sender_id": 1, "receiver_id": "2", "amount": 10.10, "currency": "USD"}"#,
        )
        .expect("a complete body");
        assert_eq!(
            fields,
            TransferFields {
                sender_id: 1,
                receiver_id: 2,
                amount: "10.10".into(),
                currency: "USD".into(),
                description: None,
                phase: None,
                expires_in_s: None,
                metadata: vec![],
            }
        );
    }

    #[test]
    fn phase_expiry_and_metadata_are_read_as_sent() {
        let fields = TransferFields::read(
            br#"{"sender_id": 1, "receiver_id": 2, "amount": "1", "currency": "USD",
                "phase": "Pending", "expires_in_s": "-3", "metadata": {"z": "1", "a": ""}}"#,
        )
        .expect("a complete body");
        assert_eq!(fields.phase.as_deref(), Some("Pending"));
        assert_eq!(fields.expires_in_s, Some(-3));
        assert_eq!(
            fields.metadata,
            vec![("z".into(), "1".into()), ("a".into(), String::new())]
        );
        assert_eq!(
            kinds(
                r#"{"sender_id": 1, "receiver_id": 2, "amount": "1", "currency": "USD",
                    "phase": 1, "expires_in_s": 1.5, "metadata": {"order": 7}}"#
            ),
            [
                ("body.phase", "string_type"),
                ("body.expires_in_s", "int_parsing"),
                ("body.metadata.order", "string_type"),
            ]
            .map(|(location, kind)| (location.to_string(), kind.to_string()))
        );
    }

    #[test]
    fn every_problem_is_reported_in_field_order() {
        assert_eq!(
            kinds(r#"{"receiver_id": 1.5, "amount": [], "description": 3}"#),
            [
                ("body.sender_id", "missing"),
                ("body.receiver_id", "int_parsing"),
                ("body.amount", "decimal_type"),
                ("body.currency", "missing"),
                ("body.description", "string_type"),
            ]
            .map(|(location, kind)| (location.to_string(), kind.to_string()))
        );
        // Only the optional field is wrong: still refused.
        assert_eq!(
            kinds(
                r#"{"sender_id": 1, "receiver_id": 2, "amount": "1", "currency": "USD", "description": false}"#
            ),
            [("body.description".to_string(), "string_type".to_string())]
        );
    }

    /// Found against the service: `"phase": "pending"` was ignored and the money moved at once.
    #[test]
    fn an_unknown_field_is_refused_after_every_other_problem() {
        assert_eq!(
            kinds(
                r#"{"sender_id": 1, "receiver_id": 2, "amount": "1", "currency": "USD", "two_phase": true}"#
            ),
            [("body.two_phase".to_string(), "extra_forbidden".to_string())]
        );
        assert_eq!(
            kinds(r#"{"tags": [], "receiver_id": 1.5, "meta": {}, "amount": "1"}"#),
            [
                ("body.sender_id", "missing"),
                ("body.receiver_id", "int_parsing"),
                ("body.currency", "missing"),
                ("body.tags", "extra_forbidden"),
                ("body.meta", "extra_forbidden"),
            ]
            .map(|(location, kind)| (location.to_string(), kind.to_string()))
        );
    }
}
