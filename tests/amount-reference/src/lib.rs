//! The guest's amount rules (guest/src/money.rs) written a second time, on `bigdecimal`
//! instead of hand-made digit arithmetic, so a property test or a fuzz target can check the
//! guest's answer against an independent one.
//!
//! The rules are the guest's contract; the decimal library only does the arithmetic:
//!
//! 1. The text is 1 to [`MAX_TEXT_BYTES`] bytes of `[-]digits[.digits][(e|E)[+|-]digits]`
//!    (ASCII digits only, no `+` before the number, no spaces), with an exponent of at most
//!    [`MAX_ABS_EXPONENT`] in magnitude however many leading zeros it is written with.
//!    Anything else is [`Refusal::NotDecimal`].
//! 2. Zero (however written, `-0` too) and negative values are [`Refusal::NotPositive`].
//! 3. A value that is not a whole number of minor units is [`Refusal::TooManyDecimals`]
//!    (trailing zeros do not count: `10.500` USD is 1050).
//! 4. More minor units than `max_minor` is [`Refusal::TooLarge`].
//!
//! The rules are checked in that order, and the first one broken is the answer.

use std::str::FromStr;

use bigdecimal::num_bigint::BigInt;
use bigdecimal::{BigDecimal, Signed, ToPrimitive, Zero};

/// Longest amount text, in bytes (the guest's `MAX_AMOUNT_TEXT_LEN`).
pub const MAX_TEXT_BYTES: usize = 64;

/// Largest exponent magnitude in `e` notation (the guest's `Decimal::MAX_ABS_EXPONENT`).
pub const MAX_ABS_EXPONENT: u32 = 1000;

/// Why text is not an amount: the first rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotDecimal,
    NotPositive,
    TooManyDecimals,
    TooLarge,
}

/// The amount in minor units of a currency with `exponent` decimals, or the first rule broken.
pub fn minor_units(text: &str, exponent: u32, max_minor: i64) -> Result<i64, Refusal> {
    let value = positive_decimal(text)?;
    let scale = BigDecimal::new(BigInt::from(1), -i64::from(exponent));
    let minor = value * scale;
    if !minor.is_integer() {
        return Err(Refusal::TooManyDecimals);
    }
    if minor > max_minor {
        return Err(Refusal::TooLarge);
    }
    // A whole number in 1..=max_minor, so it fits an i64.
    minor.to_i64().ok_or(Refusal::TooLarge)
}

/// The verdict without a currency: rules 1 and 2 only (precision and size need one).
pub fn positive(text: &str) -> Result<(), Refusal> {
    positive_decimal(text).map(|_| ())
}

/// Rules 1 and 2: the text's value when it is a well-formed positive decimal.
fn positive_decimal(text: &str) -> Result<BigDecimal, Refusal> {
    if !well_formed(text) {
        return Err(Refusal::NotDecimal);
    }
    // Well-formed text is always something the library reads; if it ever did not, the
    // disagreement shows as a refusal the guest does not make.
    let value = BigDecimal::from_str(text).map_err(|_| Refusal::NotDecimal)?;
    if value.is_zero() || value.is_negative() {
        return Err(Refusal::NotPositive);
    }
    Ok(value)
}

/// Rule 1, read by splitting the text at its sign, `e` and point.
fn well_formed(text: &str) -> bool {
    if text.is_empty() || text.len() > MAX_TEXT_BYTES {
        return false;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|fraction| !digits(fraction)) {
        return false;
    }
    match exponent {
        None => true,
        Some(exponent) => {
            let magnitude = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            // Leading zeros do not count; all zeros is an exponent of 0.
            let significant = magnitude.trim_start_matches('0');
            digits(magnitude)
                && (significant.is_empty()
                    || significant.len() <= 4
                        && significant
                            .parse::<u32>()
                            .is_ok_and(|value| value <= MAX_ABS_EXPONENT))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 1_000_000_000_000;

    #[test]
    fn reads_what_the_rules_allow() {
        assert_eq!(minor_units("10.50", 2, MAX), Ok(1050));
        assert_eq!(minor_units("10.500", 2, MAX), Ok(1050));
        assert_eq!(minor_units("007", 0, MAX), Ok(7));
        assert_eq!(minor_units("125e-2", 2, MAX), Ok(125));
        assert_eq!(minor_units("1E+0003", 0, MAX), Ok(1000));
        assert_eq!(minor_units("0.1e1", 0, MAX), Ok(1));
        assert_eq!(minor_units("1000000000000", 0, MAX), Ok(MAX));
    }

    #[test]
    fn refuses_in_rule_order() {
        for text in [
            "", "+1", ".5", "5.", "1e", "1e+", "1e1001", " 1", "١", "1_0", "--1",
        ] {
            assert_eq!(
                minor_units(text, 2, MAX),
                Err(Refusal::NotDecimal),
                "{text:?}"
            );
        }
        assert_eq!(
            minor_units(&"1".repeat(65), 2, MAX),
            Err(Refusal::NotDecimal)
        );
        assert_eq!(minor_units("-0.001", 2, MAX), Err(Refusal::NotPositive));
        assert_eq!(minor_units("-1e40", 2, MAX), Err(Refusal::NotPositive));
        assert_eq!(minor_units("0e1000", 2, MAX), Err(Refusal::NotPositive));
        assert_eq!(minor_units("1e40.5", 2, MAX), Err(Refusal::NotDecimal));
        assert_eq!(minor_units("1e30001", 2, MAX), Err(Refusal::NotDecimal));
        assert_eq!(minor_units("1e-3", 2, MAX), Err(Refusal::TooManyDecimals));
        assert_eq!(minor_units("1e40", 2, MAX), Err(Refusal::TooLarge));
        assert_eq!(minor_units("1e1000", 2, MAX), Err(Refusal::TooLarge));
        assert_eq!(
            minor_units("10000000000.001", 2, MAX),
            Err(Refusal::TooManyDecimals)
        );
        assert_eq!(positive("1e40"), Ok(()));
        assert_eq!(positive("1e-40"), Ok(()));
        assert_eq!(positive("-1e-40"), Err(Refusal::NotPositive));
    }
}
