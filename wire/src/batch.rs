//! The fields of a `POST /transfers/batch` body: `transfers`, each read exactly as a
//! `POST /transfers` body ([`TransferFields`]), and `atomic`. An item's problems are located
//! under its index (`["body", "transfers", "3", "amount"]`), every item's reported at once.

use crate::fields::Fields;
use crate::problem::{BodyError, Invalid};
use crate::transfer::TransferFields;

/// A batch body's fields, before any rule is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFields {
    pub transfers: Vec<TransferFields>,
    /// All or none; `false` when not given.
    pub atomic: bool,
}

impl BatchFields {
    /// Reads the batch and every item; 1 to `max_items` items. The error is never empty.
    pub fn read(body: &[u8], max_items: usize) -> Result<BatchFields, BodyError> {
        let mut fields = Fields::parse(body)?;
        let items = fields.raw_array("transfers");
        let atomic = fields.optional_bool("atomic").unwrap_or(false);
        let mut problems = fields.into_problems();
        let mut transfers = Vec::new();
        if let Some(items) = items {
            if items.is_empty() || items.len() > max_items {
                let (kind, message) = if items.is_empty() {
                    ("too_short", "List should have at least 1 item".to_string())
                } else {
                    (
                        "too_long",
                        format!("List should have at most {max_items} items"),
                    )
                };
                problems.push(Invalid::body_field("transfers", kind, message));
            } else {
                for (index, item) in items.iter().enumerate() {
                    match TransferFields::read(item.get().as_bytes()) {
                        Ok(read) => transfers.push(read),
                        Err(error) => problems.extend(
                            error
                                .problems
                                .into_iter()
                                .map(|problem| at_item(index, problem)),
                        ),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(BatchFields { transfers, atomic })
        } else {
            Err(BodyError { problems })
        }
    }
}

/// An item's problem, located under the batch's `transfers` at `index`.
fn at_item(index: usize, problem: Invalid) -> Invalid {
    let mut location = vec!["body".to_string(), "transfers".into(), index.to_string()];
    location.extend(problem.location.into_iter().skip(1));
    Invalid {
        location,
        ..problem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = r#"{"sender_id": 1, "receiver_id": 2, "amount": "1.50", "currency": "USD"}"#;

    fn problems(body: &str) -> Vec<(String, String)> {
        match BatchFields::read(body.as_bytes(), 3) {
            Ok(read) => panic!("{body}: read as {read:?}"),
            Err(error) => error
                .problems
                .into_iter()
                .map(|problem| (problem.location.join("."), problem.kind))
                .collect(),
        }
    }

    #[test]
    fn items_are_read_as_single_transfers_in_order() {
        let body = format!(
            r#"{{"transfers": [{ITEM}, {{"sender_id": 1, "receiver_id": 3, "amount": 2,
                "currency": "EUR", "phase": "pending", "metadata": {{"k": "v"}}}}], "atomic": true}}"#
        );
        let read = BatchFields::read(body.as_bytes(), 3).expect("a batch");
        assert!(read.atomic);
        assert_eq!(read.transfers.len(), 2);
        assert_eq!(read.transfers[0].amount, "1.50");
        assert_eq!(read.transfers[1].receiver_id, 3);
        assert_eq!(read.transfers[1].phase.as_deref(), Some("pending"));
        assert_eq!(read.transfers[1].metadata, vec![("k".into(), "v".into())]);
        let plain = BatchFields::read(format!(r#"{{"transfers": [{ITEM}]}}"#).as_bytes(), 3)
            .expect("atomic is optional");
        assert!(!plain.atomic);
    }

    #[test]
    fn each_items_problems_are_located_under_its_index() {
        let body = format!(
            r#"{{"transfers": [{ITEM}, {{"sender_id": "x", "receiver_id": 2, "amount": "1",
                "currency": 5, "memo": 1}}, 7], "atomic": "yes", "extra": 1}}"#
        );
        assert_eq!(
            problems(&body),
            [
                ("body.atomic", "bool_type"),
                ("body.extra", "extra_forbidden"),
                ("body.transfers.1.sender_id", "int_parsing"),
                ("body.transfers.1.currency", "string_type"),
                ("body.transfers.1.memo", "extra_forbidden"),
                ("body.transfers.2", "model_attributes_type"),
            ]
            .map(|(location, kind)| (location.to_string(), kind.to_string()))
        );
    }

    #[test]
    fn a_batch_has_one_to_the_most_items() {
        assert_eq!(
            problems(r#"{"transfers": []}"#),
            [("body.transfers".to_string(), "too_short".to_string())]
        );
        let four = format!(r#"{{"transfers": [{ITEM}, {ITEM}, {ITEM}, {ITEM}]}}"#);
        assert_eq!(
            problems(&four),
            [("body.transfers".to_string(), "too_long".to_string())]
        );
        assert_eq!(
            problems(r#"{"transfers": {}}"#),
            [("body.transfers".to_string(), "list_type".to_string())]
        );
        assert_eq!(
            problems(r#"{"atomic": false}"#),
            [("body.transfers".to_string(), "missing".to_string())]
        );
    }
}
