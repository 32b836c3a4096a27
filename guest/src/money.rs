//! Exact money: ISO 4217 exponents, decimal text to integer minor units and back.
//!
//! Money is never a float here. An amount arrives as the client's decimal text, becomes an
//! integer count of minor units, and is written back as decimal text with exactly the
//! currency's number of decimals.

/// Active ISO 4217 codes with their minor-unit exponent, sorted by code for binary search.
/// Codes without minor units (XAU, XDR, XXX …) are not currencies one can transfer.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// The number of decimals of an ISO 4217 currency, or `None` for an unknown code.
/// Codes are case-sensitive: "usd" is not a code.
pub fn currency_exponent(code: &str) -> Option<u32> {
    CURRENCIES
        .binary_search_by(|(known, _)| (*known).cmp(code))
        .ok()
        .map(|index| CURRENCIES[index].1)
}

/// The largest exponent in the table; bounds every power of ten computed here.
pub const MAX_EXPONENT: u32 = 4;

/// Longest amount text considered; anything longer is refused before it is looked at.
pub const MAX_AMOUNT_TEXT_LEN: usize = 64;

/// Why decimal text is not an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    /// Not a plain decimal number (empty, letters, NaN, Infinity, spaces …).
    NotDecimal,
    /// Zero or negative.
    NotPositive,
    /// More decimals than the currency has (after dropping trailing zeros).
    TooManyDecimals { allowed: u32 },
    /// Above `max_minor`.
    TooLarge,
}

/// Converts decimal text ("10.50", "7", "1.5e3") into minor units of a currency with
/// `exponent` decimals. Accepts `digits[.digits][(e|E)[+|-]digits]`; trailing zeros after the
/// point do not count as decimals ("10.500" is 10.50). Refuses anything above `max_minor`.
pub fn parse_amount(text: &str, exponent: u32, max_minor: i64) -> Result<i64, AmountError> {
    assert!(
        exponent <= MAX_EXPONENT,
        "exponent {exponent} is beyond the table"
    );
    assert!(max_minor > 0, "max_minor must be positive");
    let decimal = Decimal::parse(text)?;
    if decimal.is_zero() || decimal.negative {
        return Err(AmountError::NotPositive);
    }
    if decimal.fraction_digits > i64::from(exponent) {
        return Err(AmountError::TooManyDecimals { allowed: exponent });
    }
    // A whole number of minor units from here, so one with more significant digits than
    // `Decimal` keeps is at least 10^30 of them: more than any limit.
    let Some(significand) = decimal.significand else {
        return Err(AmountError::TooLarge);
    };
    // value = significand × 10^(−fraction_digits); minor = value × 10^exponent.
    let shift = i64::from(exponent) - decimal.fraction_digits;
    let mut minor: u128 = significand;
    if minor > max_minor as u128 {
        return Err(AmountError::TooLarge);
    }
    for _ in 0..shift {
        // It stops as soon as the maximum is passed: at most once per digit of `i64::MAX`.
        minor *= 10;
        if minor > max_minor as u128 {
            return Err(AmountError::TooLarge);
        }
    }
    // minor <= max_minor <= i64::MAX, so the conversion cannot fail.
    Ok(i64::try_from(minor).unwrap_or(i64::MAX))
}

/// Checks the shape of decimal text without a currency: is it a positive decimal number?
/// Used when the currency is unknown, so the amount still gets its own clear error. Precision
/// and size cannot be judged without a currency, so they are not.
pub fn check_positive_decimal(text: &str) -> Result<(), AmountError> {
    let decimal = Decimal::parse(text)?;
    if decimal.is_zero() || decimal.negative {
        return Err(AmountError::NotPositive);
    }
    Ok(())
}

/// Writes minor units as decimal text with exactly `exponent` decimals: (1050, 2) → "10.50".
pub fn format_minor(minor: i64, exponent: u32) -> String {
    assert!(
        exponent <= MAX_EXPONENT,
        "exponent {exponent} is beyond the table"
    );
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let unit = 10u64.pow(exponent);
    let whole = magnitude / unit;
    let fraction = magnitude % unit;
    format!(
        "{sign}{whole}.{fraction:0width$}",
        width = exponent as usize
    )
}

/// A parsed decimal: significand × 10^(−fraction_digits), trailing zeros removed from the significand.
struct Decimal {
    negative: bool,
    /// Significant digits with leading and trailing zeros stripped, when there are at most
    /// [`Decimal::MAX_SIGNIFICANT_DIGITS`] of them; `None` (never zero) when there are more.
    significand: Option<u128>,
    /// Digits after the point as written, minus the exponent, minus stripped trailing zeros:
    /// exact whatever the significand's length.
    fraction_digits: i64,
}

impl Decimal {
    /// Digits in a significand we keep; more than an i64 can hold, fewer than overflow u128.
    const MAX_SIGNIFICANT_DIGITS: usize = 30;
    /// Exponents beyond this are refused as not a sensible amount.
    const MAX_ABS_EXPONENT: i64 = 1000;

    /// Reads the text's shape and value; the only error is [`AmountError::NotDecimal`]. The
    /// value's sign, precision and size are the caller's to judge, in that order.
    fn parse(text: &str) -> Result<Decimal, AmountError> {
        if text.is_empty() || text.len() > MAX_AMOUNT_TEXT_LEN {
            return Err(AmountError::NotDecimal);
        }
        let mut cursor = Cursor::new(text);
        let negative = cursor.eat(b'-');
        let integer_digits = cursor.digits();
        let fraction_digits = if cursor.eat(b'.') {
            cursor.some_digits()?
        } else {
            ""
        };
        if integer_digits.is_empty() {
            return Err(AmountError::NotDecimal);
        }
        let exponent = if cursor.eat(b'e') || cursor.eat(b'E') {
            Self::parse_exponent(&mut cursor)?
        } else {
            0
        };
        if !cursor.at_end() {
            return Err(AmountError::NotDecimal);
        }
        Ok(Self::from_parts(
            negative,
            integer_digits,
            fraction_digits,
            exponent,
        ))
    }

    /// Reads the exponent after its `e`: an optional sign, then digits whose value is at most
    /// [`Decimal::MAX_ABS_EXPONENT`].
    fn parse_exponent(cursor: &mut Cursor<'_>) -> Result<i64, AmountError> {
        let negative = cursor.eat(b'-');
        if !negative {
            cursor.eat(b'+');
        }
        let digits = cursor.some_digits()?;
        // Leading zeros do not change it ("1e002" is 100); more than four digits after
        // them is beyond the maximum, and would not fit the parse below.
        let digits = match digits.trim_start_matches('0') {
            "" => "0",
            significant => significant,
        };
        if digits.len() > 4 {
            return Err(AmountError::NotDecimal);
        }
        let magnitude: i64 = digits.parse().map_err(|_| AmountError::NotDecimal)?;
        if magnitude > Self::MAX_ABS_EXPONENT {
            return Err(AmountError::NotDecimal);
        }
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// The value of well-formed parts: the significant digits of `integer_digits` and
    /// `fraction_digits` together, scaled by the point's place and `exponent`.
    fn from_parts(
        negative: bool,
        integer_digits: &str,
        fraction_digits: &str,
        exponent: i64,
    ) -> Decimal {
        let all_digits = integer_digits.bytes().chain(fraction_digits.bytes());
        let significant: Vec<u8> = all_digits.skip_while(|digit| *digit == b'0').collect();
        let trailing_zeros = significant.iter().rev().take_while(|d| **d == b'0').count();
        let kept = &significant[..significant.len() - trailing_zeros];
        // Too many digits to hold, so either absurdly precise or absurdly large: which one,
        // and whether it matters before its sign does, is the caller's to judge.
        let significand = (kept.len() <= Self::MAX_SIGNIFICANT_DIGITS).then(|| {
            kept.iter()
                .fold(0u128, |value, digit| value * 10 + u128::from(digit - b'0'))
        });
        // value = kept × 10^(trailing_zeros − fraction_len + exponent)
        let fraction_len = fraction_digits.len() as i64;
        let fraction_digits_total = fraction_len - trailing_zeros as i64 - exponent;
        Decimal {
            negative,
            significand,
            fraction_digits: fraction_digits_total,
        }
    }

    fn is_zero(&self) -> bool {
        self.significand == Some(0)
    }
}

/// Amount text read left to right, one ASCII byte at a time.
struct Cursor<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, position: 0 }
    }

    /// Steps over `byte` if it comes next; whether it did.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.text.as_bytes().get(self.position) == Some(&byte);
        if next {
            self.position += 1;
        }
        next
    }

    /// The ASCII digits from here on, possibly none.
    fn digits(&mut self) -> &'a str {
        let start = self.position;
        let bytes = self.text.as_bytes();
        while self.position < bytes.len() && bytes[self.position].is_ascii_digit() {
            self.position += 1;
        }
        &self.text[start..self.position]
    }

    /// The ASCII digits from here on, of which there must be at least one.
    fn some_digits(&mut self) -> Result<&'a str, AmountError> {
        match self.digits() {
            "" => Err(AmountError::NotDecimal),
            digits => Ok(digits),
        }
    }

    fn at_end(&self) -> bool {
        self.position == self.text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: i64 = 1_000_000_000_000_000;

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(currency_exponent("USD"), Some(2));
        assert_eq!(currency_exponent("EUR"), Some(2));
        assert_eq!(currency_exponent("JPY"), Some(0));
        assert_eq!(currency_exponent("KWD"), Some(3));
        assert_eq!(currency_exponent("CLF"), Some(4));
        assert_eq!(currency_exponent("usd"), None);
        assert_eq!(currency_exponent("XAU"), None);
        assert_eq!(currency_exponent(""), None);
    }

    #[test]
    fn table_is_sorted_and_bounded() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        assert!(CURRENCIES.iter().all(|(code, exponent)| code.len() == 3
            && code.bytes().all(|b| b.is_ascii_uppercase())
            && *exponent <= MAX_EXPONENT));
    }

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(parse_amount("10.50", 2, MAX), Ok(1050));
        assert_eq!(parse_amount("10.5", 2, MAX), Ok(1050));
        assert_eq!(parse_amount("10", 2, MAX), Ok(1000));
        assert_eq!(parse_amount("0.01", 2, MAX), Ok(1));
        assert_eq!(parse_amount("007.10", 2, MAX), Ok(710));
        assert_eq!(parse_amount("10.500", 2, MAX), Ok(1050));
        assert_eq!(parse_amount("1000", 0, MAX), Ok(1000));
        assert_eq!(parse_amount("1.234", 3, MAX), Ok(1234));
    }

    #[test]
    fn parses_exponent_notation() {
        assert_eq!(parse_amount("1e3", 2, MAX), Ok(100_000));
        assert_eq!(parse_amount("1.5E2", 0, MAX), Ok(150));
        assert_eq!(parse_amount("125e-2", 2, MAX), Ok(125));
        assert_eq!(
            parse_amount("1e-3", 2, MAX),
            Err(AmountError::TooManyDecimals { allowed: 2 })
        );
        assert_eq!(parse_amount("1e+2", 0, MAX), Ok(100));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for text in [
            "",
            "abc",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            " 1",
            "1 ",
            "1,5",
            ".5",
            "5.",
            "+5",
            "--5",
            "1e",
            "1e+",
            "0x10",
            "1.2.3",
            "١٢",
            "1e99999",
        ] {
            assert_eq!(
                parse_amount(text, 2, MAX),
                Err(AmountError::NotDecimal),
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_zero_negative_precision_and_size() {
        assert_eq!(parse_amount("0", 2, MAX), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("0.00", 2, MAX), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("-0", 2, MAX), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("-1", 2, MAX), Err(AmountError::NotPositive));
        assert_eq!(
            parse_amount("0.001", 2, MAX),
            Err(AmountError::TooManyDecimals { allowed: 2 })
        );
        assert_eq!(
            parse_amount("1.5", 0, MAX),
            Err(AmountError::TooManyDecimals { allowed: 0 })
        );
        assert_eq!(
            parse_amount("100.01", 2, 10_000),
            Err(AmountError::TooLarge)
        );
        assert_eq!(parse_amount("100.00", 2, 10_000), Ok(10_000));
        assert_eq!(
            parse_amount("99999999999999999999999999", 2, MAX),
            Err(AmountError::TooLarge)
        );
        assert_eq!(parse_amount("1e300", 2, MAX), Err(AmountError::TooLarge));
    }

    /// More significant digits than `Decimal` holds: judged like any other amount, sign
    /// first, then precision, then size. These were once judged by the length of their
    /// integer part alone, whatever the sign or the exponent said: "-1234…" was too large, and
    /// without a currency "-100000.0000000000000000000000001" passed as positive.
    #[test]
    fn long_amounts_are_judged_in_the_same_order() {
        let digits = "1234567890123456789012345678901"; // 31 significant digits
        let too_many_decimals = Err(AmountError::TooManyDecimals { allowed: 2 });
        assert_eq!(parse_amount(digits, 2, MAX), Err(AmountError::TooLarge));
        assert_eq!(
            parse_amount(&format!("-{digits}"), 2, MAX),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            parse_amount(&format!("-0.{digits}"), 2, MAX),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            parse_amount(&format!("{digits}e-30"), 2, MAX),
            too_many_decimals
        );
        assert_eq!(
            parse_amount(&format!("0.{digits}"), 2, MAX),
            too_many_decimals
        );
        assert_eq!(
            parse_amount("123456789012345678901.1234567891", 2, MAX),
            too_many_decimals
        );
        assert_eq!(
            parse_amount(&format!("0.{digits}e31"), 2, MAX),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_amount(&format!("{digits}000e-3"), 2, MAX),
            Err(AmountError::TooLarge)
        );
        // Without a currency only the shape and the sign are judged, as for "1e300".
        assert_eq!(check_positive_decimal(digits), Ok(()));
        assert_eq!(check_positive_decimal(&format!("0.{digits}")), Ok(()));
        assert_eq!(
            check_positive_decimal(&format!("-{digits}")),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            check_positive_decimal("-100000.0000000000000000000000001"),
            Err(AmountError::NotPositive)
        );
    }

    #[test]
    fn leading_zeros_in_an_exponent_do_not_count() {
        assert_eq!(parse_amount("1e002", 2, MAX), Ok(10_000));
        assert_eq!(parse_amount("1E+0000000002", 0, MAX), Ok(100));
        assert_eq!(parse_amount("100e-00002", 0, MAX), Ok(1));
        assert_eq!(parse_amount("5e000", 0, MAX), Ok(5));
        assert_eq!(parse_amount("1e01000", 2, MAX), Err(AmountError::TooLarge));
        assert_eq!(
            parse_amount("1e01001", 2, MAX),
            Err(AmountError::NotDecimal)
        );
        assert_eq!(
            parse_amount("1e10000", 2, MAX),
            Err(AmountError::NotDecimal)
        );
    }

    #[test]
    fn formats_with_the_currency_decimals() {
        assert_eq!(format_minor(1050, 2), "10.50");
        assert_eq!(format_minor(5, 2), "0.05");
        assert_eq!(format_minor(1000, 0), "1000");
        assert_eq!(format_minor(1, 3), "0.001");
        assert_eq!(format_minor(-1050, 2), "-10.50");
        assert_eq!(format_minor(i64::MIN, 2), "-92233720368547758.08");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in 1i64..=MAX, exponent in 0u32..=MAX_EXPONENT) {
            let text = format_minor(minor, exponent);
            prop_assert_eq!(parse_amount(&text, exponent, MAX), Ok(minor));
        }

        #[test]
        fn never_panics_and_never_exceeds_the_maximum(text in "[-+0-9.eE]{0,40}", exponent in 0u32..=MAX_EXPONENT, max in 1i64..=MAX) {
            if let Ok(minor) = parse_amount(&text, exponent, max) {
                prop_assert!(minor > 0 && minor <= max);
            }
        }

        #[test]
        fn exponent_notation_agrees_with_plain(significand in 1u64..1_000_000, shift in 0u32..=4) {
            let plain = significand.to_string();
            let scientific = format!("{significand}0e-1");
            prop_assert_eq!(parse_amount(&plain, shift, MAX), parse_amount(&scientific, shift, MAX));
        }

        #[test]
        fn extra_decimals_are_refused(minor in 1i64..1_000_000, exponent in 0u32..=3) {
            // One more significant decimal than the currency allows.
            let text = format!("{}1", if exponent == 0 { format!("{minor}.") } else { format_minor(minor, exponent) });
            prop_assert_eq!(parse_amount(&text, exponent, MAX), Err(AmountError::TooManyDecimals { allowed: exponent }));
        }
    }
}
