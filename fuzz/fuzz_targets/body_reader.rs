//! Arbitrary bytes as a `POST /transfers` body: read as the handler reads it, then, when it
//! yields a request, validated and decided by the guest's logic (natively, imports answered
//! from memory). Never a panic; a refused body names at least one problem in the body; the
//! amount's verdict is the reference's; the decision agrees with the validation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use transferd_fuzz::check_request;
use transferd_guest::logic::{Rejection, RequestContext, initiate_transfer};
use transferd_guest::rules::TransferRequest;
use transferd_guest::vectors::Replay;
use transferd_wire::TransferFields;

fuzz_target!(|body: &[u8]| {
    let fields = match TransferFields::read(body) {
        Ok(fields) => fields,
        Err(error) => {
            assert!(!error.problems.is_empty(), "a refusal without a problem");
            for problem in &error.problems {
                assert_eq!(problem.location.first().map(String::as_str), Some("body"));
            }
            return;
        }
    };
    let request = TransferRequest {
        sender_id: fields.sender_id,
        receiver_id: fields.receiver_id,
        amount: fields.amount,
        currency: fields.currency,
        description: fields.description,
        phase: fields.phase,
        expires_in_s: fields.expires_in_s,
        metadata: fields.metadata,
    };
    let validated = check_request(&request);

    // Both accounts exist and the sender can pay anything: a valid request is accepted.
    let imports = json!({"balances": [
        {"account_id": request.sender_id, "currency": request.currency, "available": i64::MAX},
        {"account_id": request.receiver_id, "currency": request.currency, "available": 0},
    ]});
    let mut replay = Replay::new(&imports);
    let context = RequestContext {
        transaction_id: "00000000-0000-7000-8000-000000000000".into(),
        received_at_ms: 1_795_960_801_123,
        principal: None,
        guest_version: "fuzz".into(),
    };
    let decision = initiate_transfer(&mut replay, &context, &request);
    match (&validated, &decision) {
        (Ok(valid), Ok(accepted)) => assert_eq!(accepted.amount_minor, valid.amount_minor),
        (Err(errors), Err(Rejection::Invalid(invalid))) => assert_eq!(errors, invalid),
        (validated, decision) => {
            panic!("validation said {validated:?}, the decision {decision:?}")
        }
    }
});
