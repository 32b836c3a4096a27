//! What both fuzz targets check: the guest's verdict on an amount against the independent
//! reference (tests/amount-reference). A panic here is the fuzzer's finding.

use transferd_amount_reference::{self as reference, Refusal};
use transferd_guest::money::{self, AmountError};
use transferd_guest::rules::{self, FieldError, STANDARD, TransferRequest, ValidTransfer};

/// The reference's name for a guest refusal.
pub fn refusal(error: &AmountError) -> Refusal {
    match error {
        AmountError::NotDecimal => Refusal::NotDecimal,
        AmountError::NotPositive => Refusal::NotPositive,
        AmountError::TooManyDecimals { .. } => Refusal::TooManyDecimals,
        AmountError::TooLarge => Refusal::TooLarge,
    }
}

/// The amount's verdict in a validation result: its minor units, `None` when the amount
/// passed but the request has no known currency, or the refusal its field error names.
pub fn amount_verdict(
    validated: &Result<ValidTransfer, Vec<FieldError>>,
) -> Result<Option<i64>, Refusal> {
    let errors = match validated {
        Ok(valid) => return Ok(Some(valid.amount_minor)),
        Err(errors) => errors,
    };
    let Some(error) = errors.iter().find(|error| error.field == "amount") else {
        return Ok(None);
    };
    Err(match error.code.as_str() {
        "decimal_parsing" => Refusal::NotDecimal,
        "greater_than" => Refusal::NotPositive,
        "decimal_places" => Refusal::TooManyDecimals,
        "less_than_equal" => Refusal::TooLarge,
        other => panic!("an amount error the reference does not know: {other}"),
    })
}

/// The reference's verdict on a request's amount in its currency under the standard limits.
pub fn expected_verdict(amount: &str, currency: &str) -> Result<Option<i64>, Refusal> {
    match money::currency_exponent(currency) {
        Some(exponent) => {
            reference::minor_units(amount, exponent, STANDARD.max_amount_minor(exponent)).map(Some)
        }
        None => reference::positive(amount).map(|()| None),
    }
}

/// Validates `request` natively and checks its amount's verdict against the reference.
pub fn check_request(request: &TransferRequest) -> Result<ValidTransfer, Vec<FieldError>> {
    let validated = rules::validate(request);
    let guest = amount_verdict(&validated);
    let expected = expected_verdict(&request.amount, &request.currency);
    assert_eq!(
        guest, expected,
        "amount {:?} in {:?}: the guest and the reference disagree",
        request.amount, request.currency
    );
    validated
}
