//! The rules a transfer request must follow before anything is looked up.
//!
//! Every rule is checked and every failure reported, so a client fixes its request in one
//! round trip. The limits are constants here because they are this guest version's rules:
//! changing one is a new guest version, not a host setting.

use std::collections::BTreeMap;

use transferd_message::{
    METADATA_MAX_BYTES, METADATA_MAX_ENTRIES, METADATA_VALUE_MAX_BYTES, PENDING_MAX_EXPIRY_MS,
    metadata_key, printable,
};

use crate::money::{self, AmountError};

/// Largest amount of one transfer, in major units of its currency (1,000,000,000.00 USD,
/// 1,000,000,000 JPY, 1,000,000,000.000 KWD).
pub const MAX_AMOUNT_MAJOR: i64 = 1_000_000_000;

/// Longest description, in Unicode scalar values (what Python's `len` counts).
pub const MAX_DESCRIPTION_CHARS: usize = 255;

/// How long a pending transfer waits to be posted or voided when the client does not say.
pub const DEFAULT_EXPIRES_IN_S: i64 = 86_400;

/// The longest wait a client may ask for: the message contract's bound, in whole seconds.
pub const MAX_EXPIRES_IN_S: i64 = PENDING_MAX_EXPIRY_MS / 1000;

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferRequest {
    pub sender_id: i64,
    pub receiver_id: i64,
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    /// `"immediate"` (what `None` means) or `"pending"`, as the client sent it.
    pub phase: Option<String>,
    /// A pending transfer's wait before it expires, in seconds, as the client sent it.
    pub expires_in_s: Option<i64>,
    /// The client's key-value pairs in the order sent; empty when there are none.
    pub metadata: Vec<(String, String)>,
}

impl TransferRequest {
    /// Whether the request asks for anything beyond the original five fields (what a guest of
    /// the 0.1.0 contract cannot be given).
    pub fn has_extensions(&self) -> bool {
        self.phase.is_some() || self.expires_in_s.is_some() || !self.metadata.is_empty()
    }
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
    /// The metadata by key; `None` when the request has none.
    pub metadata: Option<BTreeMap<String, String>>,
    /// For a pending transfer, how many seconds it waits before it expires; `None` for a
    /// transfer that settles at once.
    pub pending_for_s: Option<i64>,
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
    let pending_for_s = check_phase(request, &mut errors);
    let metadata = check_metadata(&request.metadata, &mut errors);
    match (errors.is_empty(), money) {
        (true, Some((amount_minor, exponent))) => Ok(ValidTransfer {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount_minor,
            exponent,
            currency: request.currency.clone(),
            description: request.description.clone(),
            metadata: (!metadata.is_empty()).then_some(metadata),
            pending_for_s,
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
    if !printable(description) {
        errors.push(FieldError::new(
            "description",
            "string_pattern_mismatch",
            "description must not contain control characters (U+0000 to U+001F, U+007F)"
                .to_string(),
        ));
    }
}

/// The phase and the expiry: a known phase, and an expiry in range given only with `pending`.
/// Returns the pending transfer's wait in seconds (the default when none was given), `None`
/// for an immediate transfer or a broken rule.
fn check_phase(request: &TransferRequest, errors: &mut Vec<FieldError>) -> Option<i64> {
    let pending = match request.phase.as_deref() {
        None | Some("immediate") => Some(false),
        Some("pending") => Some(true),
        Some(other) => {
            errors.push(FieldError::new(
                "phase",
                "enum",
                format!(
                    "phase must be \"immediate\" or \"pending\"; {:?} is not one",
                    truncate(other, 16)
                ),
            ));
            None
        }
    };
    let Some(seconds) = request.expires_in_s else {
        return pending.unwrap_or(false).then_some(DEFAULT_EXPIRES_IN_S);
    };
    if seconds < 1 {
        errors.push(FieldError::new(
            "expires_in_s",
            "greater_than_equal",
            format!("expires_in_s must be at least 1 second, not {seconds}"),
        ));
    } else if seconds > MAX_EXPIRES_IN_S {
        errors.push(FieldError::new(
            "expires_in_s",
            "less_than_equal",
            format!(
                "expires_in_s must be at most {MAX_EXPIRES_IN_S} seconds (7 days), not {seconds}"
            ),
        ));
    }
    if pending == Some(false) {
        errors.push(FieldError::new(
            "expires_in_s",
            "pending_only",
            "expires_in_s is only for a pending transfer (\"phase\": \"pending\")".into(),
        ));
    }
    (pending == Some(true) && (1..=MAX_EXPIRES_IN_S).contains(&seconds)).then_some(seconds)
}

/// The metadata: at most [`METADATA_MAX_ENTRIES`] entries, each key once and of the allowed
/// spelling, printable values of at most [`METADATA_VALUE_MAX_BYTES`], and at most
/// [`METADATA_MAX_BYTES`] in all. Returns the entries by key (all of them, even when a rule
/// is broken: the errors decide).
fn check_metadata(
    metadata: &[(String, String)],
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, String> {
    if metadata.len() > METADATA_MAX_ENTRIES {
        errors.push(FieldError::new(
            "metadata",
            "too_long",
            format!(
                "metadata must have at most {METADATA_MAX_ENTRIES} entries, not {}",
                metadata.len()
            ),
        ));
    }
    let mut by_key = BTreeMap::new();
    let mut total_bytes = 0;
    for (key, value) in metadata {
        total_bytes += key.len() + value.len();
        check_metadata_entry(key, value, errors);
        if by_key.insert(key.clone(), value.clone()).is_some() {
            errors.push(FieldError::new(
                &metadata_field(key),
                "duplicate_key",
                format!(
                    "the metadata key {:?} is given more than once",
                    truncate(key, 64)
                ),
            ));
        }
    }
    if total_bytes > METADATA_MAX_BYTES {
        errors.push(FieldError::new(
            "metadata",
            "too_large",
            format!(
                "metadata must be at most {METADATA_MAX_BYTES} bytes of keys and values (UTF-8), not {total_bytes}"
            ),
        ));
    }
    by_key
}

/// One metadata entry's key and value.
fn check_metadata_entry(key: &str, value: &str, errors: &mut Vec<FieldError>) {
    if !metadata_key(key) {
        errors.push(FieldError::new(
            "metadata",
            "string_pattern_mismatch",
            format!(
                "metadata keys must be 1 to 64 of A-Z a-z 0-9 _ . -; {:?} is not one",
                truncate(key, 64)
            ),
        ));
    }
    let field = metadata_field(key);
    if value.len() > METADATA_VALUE_MAX_BYTES {
        errors.push(FieldError::new(
            &field,
            "string_too_long",
            format!(
                "metadata values must be at most {METADATA_VALUE_MAX_BYTES} bytes (UTF-8), not {}",
                value.len()
            ),
        ));
    }
    // As for the description: the ledger cannot store NUL, and a line break would let a
    // caller forge lines in whatever prints the value.
    if !printable(value) {
        errors.push(FieldError::new(
            &field,
            "string_pattern_mismatch",
            "metadata values must not contain control characters (U+0000 to U+001F, U+007F)".into(),
        ));
    }
}

/// The field an entry's error names: `metadata.<key>`, or `metadata` when the key itself is
/// not one a client may use (it could be long, or print as anything).
fn metadata_field(key: &str) -> String {
    if metadata_key(key) {
        format!("metadata.{key}")
    } else {
        "metadata".to_string()
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
            ..TransferRequest::default()
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
            phase: Some("later".into()),
            expires_in_s: Some(0),
            metadata: vec![("bad key".into(), "v".into())],
        };
        assert_eq!(
            codes(&bad),
            vec![
                pair("sender_id", "greater_than"),
                pair("receiver_id", "greater_than"),
                pair("amount", "greater_than"),
                pair("currency", "unknown_currency"),
                pair("description", "string_too_long"),
                pair("phase", "enum"),
                pair("expires_in_s", "greater_than_equal"),
                pair("metadata", "string_pattern_mismatch"),
            ]
        );
    }

    fn phased(phase: Option<&str>, expires_in_s: Option<i64>) -> TransferRequest {
        TransferRequest {
            phase: phase.map(str::to_string),
            expires_in_s,
            ..request("10", "USD")
        }
    }

    fn with_metadata(entries: &[(&str, &str)]) -> TransferRequest {
        TransferRequest {
            metadata: entries
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..request("10", "USD")
        }
    }

    #[test]
    fn a_pending_transfer_waits_a_day_unless_it_says_otherwise() {
        let pending = |expires_in_s| validate(&phased(Some("pending"), expires_in_s));
        assert_eq!(
            pending(None).map(|valid| valid.pending_for_s),
            Ok(Some(DEFAULT_EXPIRES_IN_S))
        );
        assert_eq!(pending(Some(1)).map(|v| v.pending_for_s), Ok(Some(1)));
        assert_eq!(
            pending(Some(604_800)).map(|v| v.pending_for_s),
            Ok(Some(604_800))
        );
        for immediate in [None, Some("immediate")] {
            assert_eq!(
                validate(&phased(immediate, None)).map(|v| v.pending_for_s),
                Ok(None)
            );
        }
        // The bound is the message contract's, in seconds.
        assert_eq!(MAX_EXPIRES_IN_S * 1000, PENDING_MAX_EXPIRY_MS);
    }

    #[test]
    fn every_phase_and_expiry_rule_names_its_field() {
        assert_eq!(
            codes(&phased(Some("pending"), Some(0))),
            vec![pair("expires_in_s", "greater_than_equal")]
        );
        assert_eq!(
            codes(&phased(Some("pending"), Some(-5))),
            vec![pair("expires_in_s", "greater_than_equal")]
        );
        assert_eq!(
            codes(&phased(Some("pending"), Some(604_801))),
            vec![pair("expires_in_s", "less_than_equal")]
        );
        for phase in ["Pending", "", "posted", "immediate "] {
            assert_eq!(
                codes(&phased(Some(phase), None)),
                vec![pair("phase", "enum")],
                "{phase:?}"
            );
        }
        for phase in [None, Some("immediate")] {
            assert_eq!(
                codes(&phased(phase, Some(60))),
                vec![pair("expires_in_s", "pending_only")]
            );
        }
        // An unknown phase is not judged as immediate: only its own error.
        assert_eq!(
            codes(&phased(Some("later"), Some(60))),
            vec![pair("phase", "enum")]
        );
    }

    #[test]
    fn metadata_within_the_bounds_is_kept_by_key() {
        let valid =
            validate(&with_metadata(&[("order_id", "A-1"), ("a.b-c", "обед 🍜")])).expect("valid");
        let metadata = valid.metadata.expect("metadata");
        assert_eq!(
            metadata.into_iter().collect::<Vec<_>>(),
            vec![
                ("a.b-c".to_string(), "обед 🍜".to_string()),
                ("order_id".to_string(), "A-1".to_string())
            ]
        );
        assert_eq!(validate(&with_metadata(&[])).expect("valid").metadata, None);
        // Empty values are values.
        assert!(validate(&with_metadata(&[("k", "")])).is_ok());
    }

    #[test]
    fn every_metadata_rule_names_its_field() {
        let key_64 = "k".repeat(64);
        let value_512 = "v".repeat(512);
        assert!(validate(&with_metadata(&[(&key_64, &value_512)])).is_ok());
        let key_65 = "k".repeat(65);
        for bad_key in ["", "has space", "ключ", "a/b", key_65.as_str()] {
            assert_eq!(
                codes(&with_metadata(&[(bad_key, "v")])),
                vec![pair("metadata", "string_pattern_mismatch")],
                "{bad_key:?}"
            );
        }
        let value_513 = "v".repeat(513);
        assert_eq!(
            codes(&with_metadata(&[("order", &value_513)])),
            vec![pair("metadata.order", "string_too_long")]
        );
        for controlled in ["a\nb", "tab\t", "nul\u{0}", "del\u{7f}"] {
            assert_eq!(
                codes(&with_metadata(&[("note", controlled)])),
                vec![pair("metadata.note", "string_pattern_mismatch")],
                "{controlled:?}"
            );
        }
        assert_eq!(
            codes(&with_metadata(&[("k", "1"), ("k", "2")])),
            vec![pair("metadata.k", "duplicate_key")]
        );
        let keys: Vec<String> = (0..17).map(|index| format!("k{index}")).collect();
        let seventeen: Vec<(&str, &str)> = keys.iter().map(|key| (key.as_str(), "v")).collect();
        assert_eq!(
            codes(&with_metadata(&seventeen)),
            vec![pair("metadata", "too_long")]
        );
        assert!(validate(&with_metadata(&seventeen[..16])).is_ok());
        // Nine values of 500 bytes: each within its bound, 4,500 bytes and more in all.
        let values: Vec<String> = (0..9).map(|_| "v".repeat(500)).collect();
        let large: Vec<(&str, &str)> = keys
            .iter()
            .zip(&values)
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            codes(&with_metadata(&large)),
            vec![pair("metadata", "too_large")]
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
                ..TransferRequest::default()
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

        /// Whatever the phase, expiry and metadata, a valid transfer is one the message
        /// contract admits, and a refusal names only the fields at fault.
        #[test]
        fn valid_phase_and_metadata_are_what_the_message_admits(
            phase in prop::option::of(prop::sample::select(vec!["immediate", "pending", "Pending", ""])),
            expires_in_s in prop::option::of(-2i64..700_000),
            metadata in prop::collection::vec(("[a-z._ -]{0,70}", "[a-z\\n é]{0,600}"), 0..20),
        ) {
            let candidate = TransferRequest {
                phase: phase.map(str::to_string),
                expires_in_s,
                metadata: metadata.clone(),
                ..request("10", "USD")
            };
            match validate(&candidate) {
                Ok(valid) => {
                    let given: BTreeMap<_, _> = metadata.into_iter().collect();
                    prop_assert_eq!(valid.metadata.clone().unwrap_or_default(), given.clone());
                    if let Some(metadata) = &valid.metadata {
                        prop_assert!(transferd_message::check_metadata(metadata).is_ok());
                        prop_assert!(metadata.values().all(|value| printable(value)));
                    }
                    prop_assert_eq!(valid.pending_for_s.is_some(), phase == Some("pending"));
                    if let Some(seconds) = valid.pending_for_s {
                        prop_assert!((1..=MAX_EXPIRES_IN_S).contains(&seconds));
                    }
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for error in errors {
                        prop_assert!(
                            ["phase", "expires_in_s", "metadata"].contains(&error.field.as_str())
                                || error.field.starts_with("metadata."),
                            "{:?}", error
                        );
                    }
                }
            }
        }
    }
}
