//! The rules a transfer request must follow before anything is looked up.
//!
//! Every rule is checked and every failure reported, so a client fixes its request in one
//! round trip. The limits are constants here because they are this guest version's rules:
//! changing one is a new guest version, not a host setting.

use crate::money::{self, AmountError};

/// Largest amount of one transfer, in major units of its currency (1,000,000,000.00 USD,
/// 1,000,000,000 JPY, 1,000,000,000.000 KWD).
pub const MAX_AMOUNT_MAJOR: i64 = 1_000_000_000;

/// Longest description, in Unicode scalar values (what Python's `len` counts).
pub const MAX_DESCRIPTION_CHARS: usize = 255;

/// The limits of a guest version's rules. This guest ships [`STANDARD`]; a stricter
/// version is the same code with other limits (tests/guests/strict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_amount_major: i64,
    pub max_description_chars: usize,
}

pub const STANDARD: Limits = Limits {
    max_amount_major: MAX_AMOUNT_MAJOR,
    max_description_chars: MAX_DESCRIPTION_CHARS,
};

impl Limits {
    /// The largest amount in minor units for a currency with `exponent` decimals.
    pub fn max_amount_minor(&self, exponent: u32) -> i64 {
        assert!(exponent <= money::MAX_EXPONENT);
        assert!(self.max_amount_major > 0, "a limit allows something");
        self.max_amount_major * 10i64.pow(exponent)
    }
}

/// A transfer as the client asked for it (the WIT `transfer-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
}

/// One broken rule (the WIT `field-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub code: String,
}

impl FieldError {
    fn new(field: &str, code: &str, message: String) -> FieldError {
        FieldError {
            field: field.to_string(),
            message,
            code: code.to_string(),
        }
    }
}

/// A request that follows every rule, with its amount in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTransfer {
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount_minor: i64,
    /// The number of decimals of `currency`.
    pub exponent: u32,
    pub currency: String,
    pub description: Option<String>,
}

/// The largest amount in minor units under the standard limits.
pub fn max_amount_minor(exponent: u32) -> i64 {
    STANDARD.max_amount_minor(exponent)
}

/// Checks every rule under the standard limits.
pub fn validate(request: &TransferRequest) -> Result<ValidTransfer, Vec<FieldError>> {
    validate_with(&STANDARD, request)
}

/// Checks every rule; returns the valid transfer or all the broken rules, in field order.
pub fn validate_with(
    limits: &Limits,
    request: &TransferRequest,
) -> Result<ValidTransfer, Vec<FieldError>> {
    let mut errors = Vec::new();
    check_ids(request, &mut errors);
    let money = check_money(limits, request, &mut errors);
    if let Some(description) = &request.description {
        check_description(limits, description, &mut errors);
    }
    match (errors.is_empty(), money) {
        (true, Some((amount_minor, exponent))) => Ok(ValidTransfer {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount_minor,
            exponent,
            currency: request.currency.clone(),
            description: request.description.clone(),
        }),
        _ => {
            assert!(
                !errors.is_empty(),
                "an invalid request names at least one broken rule"
            );
            Err(errors)
        }
    }
}

/// The sender and receiver: positive ids, and two different accounts.
fn check_ids(request: &TransferRequest, errors: &mut Vec<FieldError>) {
    if request.sender_id <= 0 {
        errors.push(FieldError::new(
            "sender_id",
            "greater_than",
            "sender_id must be a positive integer".into(),
        ));
    }
    if request.receiver_id <= 0 {
        errors.push(FieldError::new(
            "receiver_id",
            "greater_than",
            "receiver_id must be a positive integer".into(),
        ));
    } else if request.receiver_id == request.sender_id {
        errors.push(FieldError::new(
            "receiver_id",
            "same_account",
            "receiver_id must differ from sender_id".into(),
        ));
    }
}

/// The amount, then the currency; the amount in minor units and the currency's exponent when
/// both hold. Without a known currency the amount's shape and sign are still judged.
fn check_money(
    limits: &Limits,
    request: &TransferRequest,
    errors: &mut Vec<FieldError>,
) -> Option<(i64, u32)> {
    let exponent = money::currency_exponent(&request.currency);
    let amount = match exponent {
        Some(exponent) => {
            money::parse_amount(&request.amount, exponent, limits.max_amount_minor(exponent))
                .map(Some)
        }
        None => money::check_positive_decimal(&request.amount).map(|()| None),
    };
    let amount_minor = match amount {
        Ok(minor) => minor,
        Err(error) => {
            errors.push(amount_error(&error, &request.currency, limits));
            None
        }
    };
    if exponent.is_none() {
        errors.push(FieldError::new(
            "currency",
            "unknown_currency",
            format!(
                "currency must be an ISO 4217 code in capitals, like USD; {:?} is not one",
                truncate(&request.currency, 16)
            ),
        ));
    }
    amount_minor.zip(exponent)
}

/// The description: not too long, and nothing in it that could forge a line.
fn check_description(limits: &Limits, description: &str, errors: &mut Vec<FieldError>) {
    let length = description.chars().count();
    let max_chars = limits.max_description_chars;
    if length > max_chars {
        errors.push(FieldError::new(
            "description",
            "string_too_long",
            format!("description must be at most {max_chars} characters, not {length}"),
        ));
    }
    // The ledger cannot store NUL, and a line break or escape sequence in a description
    // would let a caller forge lines in whatever prints it.
    if !transferd_message::printable(description) {
        errors.push(FieldError::new(
            "description",
            "string_pattern_mismatch",
            "description must not contain control characters (U+0000 to U+001F, U+007F)"
                .to_string(),
        ));
    }
}

/// The field error for an amount that is not valid in `currency` under `limits`.
pub fn amount_error(error: &AmountError, currency: &str, limits: &Limits) -> FieldError {
    match error {
        AmountError::NotDecimal => FieldError::new(
            "amount",
            "decimal_parsing",
            "amount must be a decimal number, like 10.50".into(),
        ),
        AmountError::NotPositive => FieldError::new(
            "amount",
            "greater_than",
            "amount must be greater than 0".into(),
        ),
        AmountError::TooManyDecimals { allowed } => FieldError::new(
            "amount",
            "decimal_places",
            format!("amount must have at most {allowed} decimal places for {currency}"),
        ),
        AmountError::TooLarge => FieldError::new(
            "amount",
            "less_than_equal",
            format!(
                "amount must be at most {} {currency}",
                limits.max_amount_major
            ),
        ),
    }
}

/// Echoes at most `limit` characters of client text back in an error message.
fn truncate(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(amount: &str, currency: &str) -> TransferRequest {
        TransferRequest {
            sender_id: 1,
            receiver_id: 2,
            amount: amount.into(),
            currency: currency.into(),
            description: None,
        }
    }

    fn codes(request: &TransferRequest) -> Vec<(String, String)> {
        match validate(request) {
            Ok(_) => vec![],
            Err(errors) => errors.into_iter().map(|e| (e.field, e.code)).collect(),
        }
    }

    fn pair(field: &str, code: &str) -> (String, String) {
        (field.to_string(), code.to_string())
    }

    #[test]
    fn accepts_a_valid_request() {
        let valid = validate(&request("10.50", "USD")).expect("valid");
        assert_eq!(valid.amount_minor, 1050);
        assert_eq!(valid.exponent, 2);
        assert_eq!(
            validate(&request("500", "JPY"))
                .expect("valid")
                .amount_minor,
            500
        );
        assert_eq!(
            validate(&request("1.005", "KWD"))
                .expect("valid")
                .amount_minor,
            1005
        );
    }

    #[test]
    fn every_amount_and_currency_rule_names_its_field() {
        assert_eq!(
            codes(&request("0", "USD")),
            vec![pair("amount", "greater_than")]
        );
        assert_eq!(
            codes(&request("-5", "USD")),
            vec![pair("amount", "greater_than")]
        );
        assert_eq!(
            codes(&request("NaN", "USD")),
            vec![pair("amount", "decimal_parsing")]
        );
        assert_eq!(
            codes(&request("Infinity", "USD")),
            vec![pair("amount", "decimal_parsing")]
        );
        assert_eq!(
            codes(&request("1.001", "USD")),
            vec![pair("amount", "decimal_places")]
        );
        assert_eq!(
            codes(&request("1.5", "JPY")),
            vec![pair("amount", "decimal_places")]
        );
        assert_eq!(
            codes(&request("1000000000.01", "USD")),
            vec![pair("amount", "less_than_equal")]
        );
        assert_eq!(codes(&request("1000000000.00", "USD")), vec![]);
        assert_eq!(
            codes(&request("10", "XYZ")),
            vec![pair("currency", "unknown_currency")]
        );
        assert_eq!(
            codes(&request("10", "usd")),
            vec![pair("currency", "unknown_currency")]
        );
        // Without a currency an amount's size and precision are not judged, only its sign.
        assert_eq!(
            codes(&request("1234567890123456789012345678901", "XYZ")),
            vec![pair("currency", "unknown_currency")]
        );
        assert_eq!(
            codes(&request("-0.0000000000000000000000000000001", "XYZ")),
            vec![
                pair("amount", "greater_than"),
                pair("currency", "unknown_currency")
            ]
        );
    }

    #[test]
    fn every_id_and_description_rule_names_its_field() {
        let mut same = request("10", "USD");
        same.receiver_id = same.sender_id;
        assert_eq!(codes(&same), vec![pair("receiver_id", "same_account")]);

        let mut ids = request("10", "USD");
        ids.sender_id = 0;
        ids.receiver_id = -3;
        assert_eq!(
            codes(&ids),
            vec![
                pair("sender_id", "greater_than"),
                pair("receiver_id", "greater_than")
            ]
        );

        let mut long = request("10", "USD");
        long.description = Some("ж".repeat(MAX_DESCRIPTION_CHARS + 1));
        assert_eq!(codes(&long), vec![pair("description", "string_too_long")]);
        long.description = Some("ж".repeat(MAX_DESCRIPTION_CHARS));
        assert_eq!(codes(&long), vec![]);
    }

    #[test]
    fn a_description_with_a_control_character_is_refused() {
        for text in [
            "a\u{0}b",
            "two\nlines",
            "tab\t",
            "\u{1b}[31mred",
            "del\u{7f}",
        ] {
            let mut controlled = request("10", "USD");
            controlled.description = Some(text.to_string());
            assert_eq!(
                codes(&controlled),
                vec![pair("description", "string_pattern_mismatch")],
                "{text:?}"
            );
        }
        let mut printable = request("10", "USD");
        printable.description = Some("обед \"ресторан\" 🍜 \u{a0}".into());
        assert_eq!(codes(&printable), vec![]);
    }

    #[test]
    fn reports_every_broken_rule_at_once() {
        let bad = TransferRequest {
            sender_id: -1,
            receiver_id: 0,
            amount: "0".into(),
            currency: "???".into(),
            description: Some("x".repeat(300)),
        };
        assert_eq!(
            codes(&bad),
            vec![
                pair("sender_id", "greater_than"),
                pair("receiver_id", "greater_than"),
                pair("amount", "greater_than"),
                pair("currency", "unknown_currency"),
                pair("description", "string_too_long"),
            ]
        );
    }

    proptest! {
        #[test]
        fn valid_means_every_rule_holds(
            sender_id in -5i64..100, receiver_id in -5i64..100,
            amount in "-?[0-9]{1,12}(\\.[0-9]{1,5})?",
            currency in prop::sample::select(vec!["USD", "JPY", "KWD", "CLF", "EUR", "usd", "XXX"]),
            description_len in 0usize..300,
        ) {
            let candidate = TransferRequest {
                sender_id, receiver_id, amount, currency: currency.to_string(),
                description: Some("é".repeat(description_len)),
            };
            match validate(&candidate) {
                Ok(valid) => {
                    prop_assert!(valid.sender_id > 0 && valid.receiver_id > 0);
                    prop_assert!(valid.sender_id != valid.receiver_id);
                    prop_assert!(valid.amount_minor > 0);
                    prop_assert!(valid.amount_minor <= max_amount_minor(valid.exponent));
                    prop_assert!(description_len <= MAX_DESCRIPTION_CHARS);
                    let canonical = money::format_minor(valid.amount_minor, valid.exponent);
                    prop_assert_eq!(money::parse_amount(&canonical, valid.exponent, i64::MAX), Ok(valid.amount_minor));
                }
                Err(errors) => prop_assert!(!errors.is_empty()),
            }
        }
    }
}
