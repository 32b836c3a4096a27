//! The amount parser on arbitrary text: never a panic, and always the reference's answer
//! (the same decision, the same reason, the same minor units), with and without a currency,
//! alone and inside a request's validation.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use transferd_amount_reference as reference;
use transferd_fuzz::{check_request, refusal};
use transferd_guest::money;
use transferd_guest::rules::{STANDARD, TransferRequest};

#[derive(Debug, Arbitrary)]
enum Currency<'a> {
    Usd,
    Jpy,
    Kwd,
    Clf,
    Other(&'a str),
}

#[derive(Debug, Arbitrary)]
struct Case<'a> {
    currency: Currency<'a>,
    /// A limit in minor units other than the standard one, when positive.
    max_minor: i64,
    text: &'a str,
}

fuzz_target!(|case: Case| {
    let currency = match case.currency {
        Currency::Usd => "USD",
        Currency::Jpy => "JPY",
        Currency::Kwd => "KWD",
        Currency::Clf => "CLF",
        Currency::Other(code) => code,
    };
    let text = case.text;

    let positive = money::check_positive_decimal(text).map_err(|error| refusal(&error));
    assert_eq!(
        positive,
        reference::positive(text),
        "{text:?} without a currency"
    );

    if let Some(exponent) = money::currency_exponent(currency) {
        let max_minor = match case.max_minor {
            limit if limit > 0 => limit,
            _ => STANDARD.max_amount_minor(exponent),
        };
        let guest = money::parse_amount(text, exponent, max_minor);
        let expected = reference::minor_units(text, exponent, max_minor);
        assert_eq!(
            guest.clone().map_err(|error| refusal(&error)),
            expected,
            "{text:?} with {exponent} decimals, at most {max_minor}"
        );
        if let Ok(minor) = guest {
            let canonical = money::format_minor(minor, exponent);
            assert_eq!(
                money::parse_amount(&canonical, exponent, max_minor),
                Ok(minor)
            );
        }
    }

    // The check is the assertion inside; the validation's result itself is not needed here.
    let _ = check_request(&TransferRequest {
        sender_id: 1,
        receiver_id: 2,
        amount: text.to_string(),
        currency: currency.to_string(),
        ..TransferRequest::default()
    });
});
