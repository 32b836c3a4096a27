//! Generated `POST /transfers` bodies, read as the service reads them (transferd-wire) and
//! decided twice: by the real wasm guest through the host's engine, with imports answered
//! from memory, and by the same logic compiled natively. The two outcomes (every import call
//! and the result) must be identical, and the wasm guest must never trap.
//!
//! The guest is `TRANSFERD_GUEST` (scripts/test.sh builds it), as for the other engine tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use transferd::guest::runtime::{Guest, GuestEngine, GuestLimits};
use transferd_guest::logic::{RequestContext, initiate_transfer};
use transferd_guest::rules::TransferRequest;
use transferd_guest::vectors::{Replay, canonical, outcome, result_kind};
use transferd_wire::TransferFields;

/// Enough to cover every kind of body and answer, few enough to stay a few seconds.
const CASES: u32 = 256;

fn guest_file() -> PathBuf {
    if let Ok(path) = std::env::var("TRANSFERD_GUEST") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("wasm32-wasip2/release/transferd_guest.wasm")
}

/// One generated call: a body, what the imports answer, and who is asking.
#[derive(Debug, Clone)]
struct Call {
    body: String,
    sender_balance: Option<i64>,
    receiver_exists: bool,
    lookup_error: bool,
    publish: Value,
    principal: Principal,
}

#[derive(Debug, Clone, Copy)]
enum Principal {
    Nobody,
    Sender,
    Someone,
}

/// Amount text as clients send it, and as they should not.
fn amount() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[1-9][0-9]{0,5}(\\.[0-9]{1,2})?",
        1 => "[0-9]{1,6}(\\.[0-9]{1,5})?",
        1 => "0{1,3}[0-9]{1,3}\\.[0-9]{0,3}0{0,3}",
        1 => "[0-9]{1,3}(\\.[0-9]{1,3})?[eE][+-]?0{0,3}[0-9]{1,2}",
        1 => "-[0-9]{1,4}(\\.[0-9]{1,2})?",
        1 => "[1-9][0-9]{9,40}(\\.[0-9]{1,20})?",
        1 => Just("1000000000".to_string()),
        1 => Just("1000000000.01".to_string()),
        1 => Just("0".to_string()),
        1 => Just(" 1".to_string()),
        1 => Just("+1".to_string()),
        1 => Just("١٢".to_string()),
        1 => Just("NaN".to_string()),
    ]
}

fn body() -> impl Strategy<Value = String> {
    // Few enough ids that a sender is sometimes its own receiver.
    let id = prop_oneof![
        16 => (1i64..20).prop_map(Value::from),
        1 => (-2i64..=0).prop_map(Value::from),
        2 => (1i64..20).prop_map(|id| Value::String(id.to_string())),
    ];
    let currency = prop_oneof![
        12 => prop::sample::select(vec!["USD", "JPY", "KWD", "CLF", "BHD"]),
        1 => prop::sample::select(vec!["usd", "XAU"]),
    ];
    let description = prop_oneof![
        8 => Just(None),
        8 => "\\PC{0,20}".prop_map(Some),
        1 => (250usize..260).prop_map(|length| Some("é".repeat(length))),
    ];
    (
        id.clone(),
        id,
        amount(),
        any::<bool>(),
        currency,
        description,
        extensions(),
    )
        .prop_map(
            |(sender, receiver, amount, as_number, currency, description, extensions)| {
                // Text that is a JSON number sometimes goes as one, digits as written.
                let is_number = serde_json::from_str::<Value>(&amount).is_ok_and(|v| v.is_number());
                let amount = if as_number && is_number {
                    amount
                } else {
                    Value::String(amount).to_string()
                };
                let description = description
                    .map(|text| format!(", \"description\": {}", Value::String(text)))
                    .unwrap_or_default();
                format!(
                    "{{\"sender_id\": {sender}, \"receiver_id\": {receiver}, \"amount\": {amount}, \"currency\": \"{currency}\"{description}{extensions}}}"
                )
            },
        )
}

/// The fields 0.2.0 added, as members to append to a body: usually none, else an immediate
/// phase (the edge refuses a pending one for now), an expiry and metadata within or beyond
/// their bounds.
fn extensions() -> impl Strategy<Value = String> {
    let phase = prop_oneof![
        4 => Just(String::new()),
        1 => prop::sample::select(vec!["immediate", "Pending", ""])
            .prop_map(|phase| format!(", \"phase\": \"{phase}\"")),
    ];
    let expiry = prop_oneof![
        6 => Just(String::new()),
        1 => (-2i64..700_000).prop_map(|seconds| format!(", \"expires_in_s\": {seconds}")),
    ];
    let metadata = prop_oneof![
        4 => Just(String::new()),
        2 => prop::collection::btree_map("[a-z_.-]{0,5}", "\\PC{0,8}", 0..4)
            .prop_map(|entries| format!(", \"metadata\": {}", serde_json::json!(entries))),
        1 => prop::collection::btree_map("[a-z]{1,3}", "[a-z]{400,520}", 8..18)
            .prop_map(|entries| format!(", \"metadata\": {}", serde_json::json!(entries))),
    ];
    (phase, expiry, metadata).prop_map(|(phase, expiry, metadata)| phase + &expiry + &metadata)
}

fn call() -> impl Strategy<Value = Call> {
    (
        body(),
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(0)),
            2 => Just(Some(150_000)),
            6 => Just(Some(i64::MAX)),
        ],
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.05),
        prop_oneof![
            6 => Just(json!("ok")),
            1 => Just(json!("insufficient-funds")),
            1 => Just(json!({"unavailable": "the log is down"})),
        ],
        prop_oneof![
            4 => Just(Principal::Nobody),
            4 => Just(Principal::Sender),
            1 => Just(Principal::Someone),
        ],
    )
        .prop_map(
            |(body, sender_balance, receiver_exists, lookup_error, publish, principal)| Call {
                body,
                sender_balance,
                receiver_exists,
                lookup_error,
                publish,
                principal,
            },
        )
}

/// The imports' recorded answers, in the conformance vectors' format.
fn imports(call: &Call, request: &TransferRequest) -> Value {
    let mut balances = Vec::new();
    if let Some(available) = call.sender_balance {
        balances.push(json!({"account_id": request.sender_id, "currency": request.currency, "available": available}));
    }
    if call.receiver_exists && request.receiver_id != request.sender_id {
        balances.push(json!({"account_id": request.receiver_id, "currency": request.currency, "available": 0}));
    }
    json!({
        "balances": balances,
        "lookup_error": call.lookup_error.then_some("the cache is down"),
        "publish": call.publish,
    })
}

/// Decides `call` in wasm and natively; the kind of result both gave, or `None` when the
/// body never reached the guest.
async fn same_outcome(guest: &Guest, call: &Call) -> Result<Option<String>, TestCaseError> {
    let Ok(fields) = TransferFields::read(call.body.as_bytes()) else {
        return Ok(None);
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
    let context = RequestContext {
        transaction_id: "01a20c00-0000-7000-8000-00000000f022".into(),
        received_at_ms: 1_795_960_801_123,
        principal: match call.principal {
            Principal::Nobody => None,
            Principal::Sender => Some(request.sender_id),
            Principal::Someone => Some(request.sender_id.wrapping_add(100)),
        },
        guest_version: "proptest".into(),
    };
    let imports = imports(call, &request);
    let in_wasm = guest
        .run_replayed(&context, &request, Replay::new(&imports))
        .await
        .map_err(|failure| TestCaseError::fail(format!("{}: {failure}", call.body)))?;
    let mut replay = Replay::new(&imports);
    let decision = initiate_transfer(&mut replay, &context, &request);
    let native = outcome(&decision, &replay.calls);
    prop_assert_eq!(canonical(&in_wasm), canonical(&native), "{}", call.body);
    Ok(Some(result_kind(&native)))
}

#[test]
fn the_wasm_guest_decides_generated_bodies_as_the_native_logic_does() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        fuel_budget: transferd::config::DEFAULT_GUEST_FUEL_BUDGET,
        concurrency: 1,
        reuse_count: 1,
        compiled_cache: None,
    })?);
    let guest = engine.load_file(&guest_file())?;
    // How many cases ended in each kind of result: the generator must reach them all.
    let kinds = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&call(), |call| {
        let kind = runtime.block_on(same_outcome(&guest, &call))?;
        let kind = kind.unwrap_or_else(|| "unreadable body".into());
        *kinds.borrow_mut().entry(kind).or_default() += 1;
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let kinds = kinds.into_inner();
    eprintln!("results over {CASES} cases: {kinds:?}");
    for kind in [
        "ok",
        "invalid",
        "insufficient-funds",
        "receiver-not-found",
        "forbidden",
    ] {
        assert!(kinds.contains_key(kind), "no case ended {kind}: {kinds:?}");
    }
    Ok(())
}
