//! The amount parser against an independent reference (tests/amount-reference, on the
//! `bigdecimal` library): for any text and currency, the same accept-or-refuse decision, the
//! same reason, and the same number of minor units. The generated texts lean on the edges:
//! leading zeros, `e` notation with signs and padded exponents, too many decimals, huge
//! values, whitespace, a `+`, and digits from other scripts.

use proptest::prelude::*;
use transferd_amount_reference::{self as reference, Refusal};
use transferd_guest::money::{self, AmountError};
use transferd_guest::rules::{self, STANDARD, TransferRequest};

fn refusal(error: AmountError) -> Refusal {
    match error {
        AmountError::NotDecimal => Refusal::NotDecimal,
        AmountError::NotPositive => Refusal::NotPositive,
        AmountError::TooManyDecimals { .. } => Refusal::TooManyDecimals,
        AmountError::TooLarge => Refusal::TooLarge,
    }
}

/// The guest's verdict on a whole request's amount: its minor units, or the refusal its
/// field error names (`None` when the amount itself passed: an unknown currency).
fn validated_amount(amount: &str, currency: &str) -> Result<Option<i64>, Refusal> {
    let request = TransferRequest {
        sender_id: 1,
        receiver_id: 2,
        amount: amount.to_string(),
        currency: currency.to_string(),
        ..TransferRequest::default()
    };
    match rules::validate(&request) {
        Ok(valid) => Ok(Some(valid.amount_minor)),
        Err(errors) => match errors.iter().find(|error| error.field == "amount") {
            None => Ok(None),
            Some(error) => Err(match error.code.as_str() {
                "decimal_parsing" => Refusal::NotDecimal,
                "greater_than" => Refusal::NotPositive,
                "decimal_places" => Refusal::TooManyDecimals,
                "less_than_equal" => Refusal::TooLarge,
                other => panic!("an amount error the reference does not know: {other}"),
            }),
        },
    }
}

/// The reference's verdict on the same request.
fn expected_amount(amount: &str, currency: &str) -> Result<Option<i64>, Refusal> {
    match money::currency_exponent(currency) {
        Some(exponent) => {
            reference::minor_units(amount, exponent, STANDARD.max_amount_minor(exponent)).map(Some)
        }
        None => reference::positive(amount).map(|()| None),
    }
}

/// Decimal text built from parts, each part sometimes malformed.
fn decimal_text() -> impl Strategy<Value = String> {
    let sign = prop_oneof![6 => Just(""), 2 => Just("-"), 1 => Just("+"), 1 => Just("−")];
    let whole = prop_oneof![
        "0{0,3}[0-9]{1,12}",
        "[1-9][0-9]{18,40}",
        Just(String::new()),
        "[٠-٩]{1,3}",
        "[0-9]{1,3}[٠-٩０-９]",
    ];
    let fraction = prop_oneof![
        3 => Just(String::new()),
        4 => "\\.[0-9]{1,6}0{0,3}",
        1 => "\\.[0-9]{20,40}",
        1 => Just(".".to_string()),
    ];
    let exponent = prop_oneof![
        4 => Just(String::new()),
        3 => "[eE][+-]?0{0,4}[0-9]{1,2}",
        1 => "[eE][+-]?[0-9]{3,5}",
        1 => "[eE][+-]?",
    ];
    let padding = prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\t"), 1 => Just("\u{a0}")];
    (padding.clone(), sign, whole, fraction, exponent, padding).prop_map(
        |(before, sign, whole, fraction, exponent, after)| {
            format!("{before}{sign}{whole}{fraction}{exponent}{after}")
        },
    )
}

/// Any amount text: built decimals, decimal-like noise and arbitrary characters.
fn amount_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => decimal_text(),
        2 => "[-+0-9.eE]{0,70}",
        1 => "\\PC{0,20}",
        1 => Just("NaN".to_string()),
        1 => Just("Infinity".to_string()),
    ]
}

fn currency() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["USD", "JPY", "KWD", "CLF", "BHD", "EUR", "UYW"])
            .prop_map(str::to_string),
        2 => prop::sample::select(vec!["usd", "XAU", "", "US", "USDD"]).prop_map(str::to_string),
        1 => "[A-Z]{3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_parser_agrees_with_the_decimal_library(
        text in amount_text(),
        exponent in 0u32..=money::MAX_EXPONENT,
        max_minor in prop_oneof![Just(i64::MAX), 1i64..=1_000_000_000_000_000, Just(1i64)],
    ) {
        let guest = money::parse_amount(&text, exponent, max_minor).map_err(refusal);
        let expected = reference::minor_units(&text, exponent, max_minor);
        prop_assert_eq!(guest, expected, "{:?} with {} decimals, at most {}", text, exponent, max_minor);
    }

    #[test]
    fn a_refusal_for_decimals_names_the_currency_s_count(text in amount_text(), exponent in 0u32..=money::MAX_EXPONENT) {
        if let Err(AmountError::TooManyDecimals { allowed }) = money::parse_amount(&text, exponent, i64::MAX) {
            prop_assert_eq!(allowed, exponent);
        }
    }

    #[test]
    fn without_a_currency_only_shape_and_sign_are_judged(text in amount_text()) {
        let guest = money::check_positive_decimal(&text).map_err(refusal);
        prop_assert_eq!(guest, reference::positive(&text), "{:?}", text);
    }

    #[test]
    fn a_request_s_amount_verdict_agrees_with_the_decimal_library(text in amount_text(), currency in currency()) {
        prop_assert_eq!(
            validated_amount(&text, &currency),
            expected_amount(&text, &currency),
            "{:?} {:?}", text, currency
        );
    }

    #[test]
    fn canonical_text_reads_back_to_the_same_minor_units(minor in 1i64..=i64::MAX, exponent in 0u32..=money::MAX_EXPONENT) {
        let text = money::format_minor(minor, exponent);
        prop_assert_eq!(reference::minor_units(&text, exponent, i64::MAX), Ok(minor));
        prop_assert_eq!(money::parse_amount(&text, exponent, i64::MAX), Ok(minor));
    }
}

/// The reference can tell the guest apart from a wrong parser: a check that cannot fail
/// proves nothing.
#[test]
fn the_reference_disagrees_with_a_wrong_answer() {
    assert_ne!(reference::minor_units("10.5", 2, i64::MAX), Ok(105));
    assert_ne!(
        reference::minor_units("1e-3", 2, i64::MAX),
        Err(Refusal::TooLarge)
    );
    assert_eq!(expected_amount("-1", "XAU"), Err(Refusal::NotPositive));
    assert_eq!(validated_amount("1e2", "JPY"), Ok(Some(100)));
}
