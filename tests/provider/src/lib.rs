//! A provider component for `wac plug`: it exports the three interfaces the guest imports and
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
            export transferd:transfer/balance-lookup@0.3.0;
            export transferd:transfer/account-info@0.3.0;
            export transferd:transfer/publish@0.3.0;
        }
    ",
    world: "transferd:vector-provider/provider",
});

use exports::transferd::transfer::{account_info, balance_lookup, publish};
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

/// The vector's `imports.accounts` entry for (account, currency), if listed.
fn listed_account(account_id: i64, currency: &str) -> Value {
    imports()["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| {
            entry["account_id"].as_i64() == Some(account_id)
                && entry["currency"].as_str() == Some(currency)
        })
        .cloned()
        .unwrap_or_default()
}

impl account_info::Guest for Provider {
    fn lookup(account_id: i64, currency: String) -> Result<account_info::Account, String> {
        record(json!({"account": {"account_id": account_id, "currency": currency}}));
        if let Some(error) = imports()["account_error"].as_str() {
            return Err(error.to_owned());
        }
        let entry = listed_account(account_id, &currency);
        let (limits, today) = (&entry["limits"], &entry["today"]);
        let count = |value: &Value| {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        let available = imports()["balances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|balance| {
                balance["account_id"].as_i64() == Some(account_id)
                    && balance["currency"].as_str() == Some(currency.as_str())
            })
            .and_then(|balance| balance["available"].as_i64());
        Ok(account_info::Account {
            available,
            limits: account_info::AccountLimits {
                single_max_minor: limits["single_max_minor"].as_i64(),
                daily_max_minor: limits["daily_max_minor"].as_i64(),
                overdraft_minor: limits["overdraft_minor"].as_i64().unwrap_or(0),
            },
            metadata: entry["metadata"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned()))
                })
                .collect(),
            today: account_info::RecentOutgoing {
                outgoing_minor: today["outgoing_minor"].as_i64().unwrap_or(0),
                outgoing_count: count(&today["outgoing_count"]),
                last_minute_count: count(&today["last_minute_count"]),
            },
        })
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
