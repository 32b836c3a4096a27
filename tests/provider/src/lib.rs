//! A provider component for `wac plug`: it exports the two interfaces the guest imports and
//! answers them from the conformance vector in the `TRANSFERD_VECTOR` environment variable
//! (`wasmtime run --env TRANSFERD_VECTOR="$(cat vector.json)"`), as tests/vectors/README.md says.
//! Each call is also written to stderr as one canonical JSON line prefixed `call `, so a
//! script can compare it with `expected.calls`.

wit_bindgen::generate!({
    // The contract's WIT is the dependency; the inline world exports what the guest imports.
    path: "../../wit",
    inline: "
        package transferd:vector-provider;

        world provider {
            export transferd:transfer/balance-lookup@0.2.0;
            export transferd:transfer/publish@0.2.0;
        }
    ",
    world: "transferd:vector-provider/provider",
});

use exports::transferd::transfer::{balance_lookup, publish};
use serde_json::{Value, json};
use std::sync::OnceLock;

struct Provider;

/// The vector's `imports` object, read once per instance. A missing or malformed vector is a
/// bug in the caller, so it traps rather than inventing an answer.
fn imports() -> &'static Value {
    static IMPORTS: OnceLock<Value> = OnceLock::new();
    IMPORTS.get_or_init(|| {
        let text = std::env::var("TRANSFERD_VECTOR")
            .expect("TRANSFERD_VECTOR is not set (wasmtime run --env TRANSFERD_VECTOR=...)");
        let vector: Value = serde_json::from_str(&text).expect("TRANSFERD_VECTOR is not JSON");
        vector["imports"].clone()
    })
}

/// One line per import call; serde_json's default map sorts keys, so this is canonical JSON.
fn record(call: Value) {
    eprintln!("call {call}");
}

impl balance_lookup::Guest for Provider {
    fn available(account_id: i64, currency: String) -> Result<Option<i64>, String> {
        record(json!({"available": {"account_id": account_id, "currency": currency}}));
        let imports = imports();
        if let Some(error) = imports["lookup_error"].as_str() {
            return Err(error.to_owned());
        }
        // A listed (account, currency) answers its `available` (null: none); others answer none.
        let listed = imports["balances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| {
                entry["account_id"].as_i64() == Some(account_id)
                    && entry["currency"].as_str() == Some(currency.as_str())
            });
        Ok(listed.and_then(|entry| entry["available"].as_i64()))
    }
}

impl publish::Guest for Provider {
    fn send(message: publish::Outgoing) -> Result<(), publish::PublishError> {
        let hold = message.hold.map(|hold| {
            json!({"account_id": hold.account_id, "currency": hold.currency, "amount_minor": hold.amount_minor})
        });
        record(json!({"send": {
            "topic": message.topic,
            "key": message.key,
            "payload": String::from_utf8_lossy(&message.payload),
            "hold": hold,
        }}));
        match &imports()["publish"] {
            Value::String(answer) if answer == "ok" => Ok(()),
            Value::String(answer) if answer == "insufficient-funds" => {
                Err(publish::PublishError::InsufficientFunds)
            }
            Value::Object(answer) if answer.get("unavailable").is_some_and(Value::is_string) => {
                let reason = answer["unavailable"].as_str().unwrap_or_default();
                Err(publish::PublishError::Unavailable(reason.to_owned()))
            }
            other => panic!(
                "imports.publish is not \"ok\", \"insufficient-funds\" or {{\"unavailable\": reason}}: {other}"
            ),
        }
    }
}

export!(Provider);
