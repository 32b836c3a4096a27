//! Conformance vectors (tests/vectors): reading them, replaying their recorded import
//! answers, and writing an outcome as canonical JSON so runtimes compare byte for byte.
//!
//! Native only: the component never reads vectors. The host's wasmtime harness and upload
//! check, and the native check in `examples/vectors.rs`, share this code; the Node.js harness
//! implements the same format in JavaScript.

use std::collections::HashMap;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Value, json};

use crate::logic::{Accepted, Imports, Outgoing, PublishError, Rejection, RequestContext};
use crate::rules::TransferRequest;
use crate::spending::{Account, AccountLimits, RecentOutgoing};

/// One case.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    pub invariant: bool,
    pub context: RequestContext,
    pub request: TransferRequest,
    pub imports: Value,
    /// `{"calls": [...], "result": ...}`; `None` in a case not yet filled in.
    pub expected: Option<Value>,
    /// The whole file, to write back with `expected` filled in.
    pub document: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl Vector {
    pub fn parse(path: &str, text: &str) -> Result<Vector, VectorError> {
        let invalid = |message: &str| VectorError::Invalid {
            path: path.to_string(),
            message: message.to_string(),
        };
        let document: Value =
            serde_json::from_str(text).map_err(|error| invalid(&error.to_string()))?;
        let context = &document["context"];
        let request = &document["request"];
        let text_field = |value: &Value, name: &str| {
            value[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(&format!("{name} must be a string")))
        };
        let integer_field = |value: &Value, name: &str| {
            value[name]
                .as_i64()
                .ok_or_else(|| invalid(&format!("{name} must be an integer")))
        };
        Ok(Vector {
            name: text_field(&document, "name")?,
            invariant: document["invariant"].as_bool().unwrap_or(false),
            context: RequestContext {
                transaction_id: text_field(context, "transaction_id")?,
                received_at_ms: context["received_at_ms"]
                    .as_u64()
                    .ok_or_else(|| invalid("received_at_ms"))?,
                principal: context["principal"].as_i64(),
                guest_version: text_field(context, "guest_version")?,
            },
            request: TransferRequest {
                sender_id: integer_field(request, "sender_id")?,
                receiver_id: integer_field(request, "receiver_id")?,
                amount: text_field(request, "amount")?,
                currency: text_field(request, "currency")?,
                description: request["description"].as_str().map(str::to_string),
                phase: request["phase"].as_str().map(str::to_string),
                expires_in_s: request["expires_in_s"].as_i64(),
                metadata: serde_json::from_str::<Document>(text)
                    .map_err(|error| invalid(&format!("metadata: {error}")))?
                    .request
                    .metadata
                    .map_or_else(Vec::new, |pairs| pairs.0),
            },
            imports: document["imports"].clone(),
            expected: document.get("expected").cloned(),
            document,
        })
    }

    /// Every `*.json` in `directory`, by name.
    pub fn load_dir(directory: &Path) -> Result<Vec<Vector>, VectorError> {
        let read_error = |source| VectorError::Read {
            path: directory.display().to_string(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(directory)
            .map_err(read_error)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "json")
            })
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|source| VectorError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Vector::parse(&path.display().to_string(), &text)
            })
            .collect()
    }

    /// Imports that answer as the vector recorded.
    pub fn replay(&self) -> Replay {
        Replay::new(&self.imports)
    }
}

/// The part of a vector's file that a `serde_json::Value` cannot keep: the order of the
/// request's metadata entries.
#[derive(serde::Deserialize)]
struct Document {
    request: MetadataOnly,
}

#[derive(serde::Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: Option<Pairs>,
}

/// A JSON object of strings as its entries, in the order written.
struct Pairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    pairs.push(entry);
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// Recorded import answers, and the calls made to them.
#[derive(Debug, Clone)]
pub struct Replay {
    balances: HashMap<(i64, String), Option<i64>>,
    lookup_error: Option<String>,
    /// `account-info` answers beyond the balance: limits, metadata and counters.
    accounts: HashMap<(i64, String), Account>,
    account_error: Option<String>,
    publish: Result<(), PublishError>,
    pub calls: Vec<Value>,
}

impl Replay {
    pub fn new(imports: &Value) -> Replay {
        let balances = imports["balances"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| {
                        let account = entry["account_id"].as_i64()?;
                        let currency = entry["currency"].as_str()?.to_string();
                        Some(((account, currency), entry["available"].as_i64()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let publish = match &imports["publish"] {
            Value::String(answer) if answer == "insufficient-funds" => {
                Err(PublishError::InsufficientFunds)
            }
            Value::Object(answer) => Err(PublishError::Unavailable(
                answer
                    .get("unavailable")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )),
            _ => Ok(()),
        };
        Replay {
            balances,
            lookup_error: imports["lookup_error"].as_str().map(str::to_string),
            accounts: recorded_accounts(imports),
            account_error: imports["account_error"].as_str().map(str::to_string),
            publish,
            calls: Vec::new(),
        }
    }
}

/// An `account-info` answer as an entry of `imports.accounts` (its `available` is the
/// `balances` entry's).
pub fn account_json(account_id: i64, currency: &str, account: &Account) -> Value {
    let limits = &account.limits;
    let today = &account.today;
    json!({
        "account_id": account_id,
        "currency": currency,
        "limits": {
            "single_max_minor": limits.single_max_minor,
            "daily_max_minor": limits.daily_max_minor,
            "overdraft_minor": limits.overdraft_minor,
        },
        "metadata": account.metadata.iter().map(|(key, value)| json!([key, value])).collect::<Vec<_>>(),
        "today": {
            "outgoing_minor": today.outgoing_minor,
            "outgoing_count": today.outgoing_count,
            "last_minute_count": today.last_minute_count,
        },
    })
}

/// `imports.accounts`: per (account, currency) its limits, metadata and counters; what is
/// left out is empty (no limits, nothing sent).
fn recorded_accounts(imports: &Value) -> HashMap<(i64, String), Account> {
    let number = |value: &Value, name: &str| value[name].as_i64();
    let count = |value: &Value, name: &str| {
        value[name]
            .as_u64()
            .and_then(|count| u32::try_from(count).ok())
            .unwrap_or(0)
    };
    let entries = imports["accounts"].as_array().into_iter().flatten();
    entries
        .filter_map(|entry| {
            let account = entry["account_id"].as_i64()?;
            let currency = entry["currency"].as_str()?.to_string();
            let (limits, today) = (&entry["limits"], &entry["today"]);
            let metadata = entry["metadata"].as_array().into_iter().flatten();
            let recorded = Account {
                available: None,
                limits: AccountLimits {
                    single_max_minor: number(limits, "single_max_minor"),
                    daily_max_minor: number(limits, "daily_max_minor"),
                    overdraft_minor: number(limits, "overdraft_minor").unwrap_or(0),
                },
                metadata: metadata
                    .filter_map(|pair| {
                        Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
                    })
                    .collect(),
                today: RecentOutgoing {
                    outgoing_minor: number(today, "outgoing_minor").unwrap_or(0),
                    outgoing_count: count(today, "outgoing_count"),
                    last_minute_count: count(today, "last_minute_count"),
                },
            };
            Some(((account, currency), recorded))
        })
        .collect()
}

impl Imports for Replay {
    fn available(&mut self, account_id: i64, currency: &str) -> Result<Option<i64>, String> {
        self.calls
            .push(json!({"available": {"account_id": account_id, "currency": currency}}));
        if let Some(error) = &self.lookup_error {
            return Err(error.clone());
        }
        Ok(self
            .balances
            .get(&(account_id, currency.to_string()))
            .copied()
            .flatten())
    }

    fn account(&mut self, account_id: i64, currency: &str) -> Option<Result<Account, String>> {
        self.calls
            .push(json!({"account": {"account_id": account_id, "currency": currency}}));
        if let Some(error) = &self.account_error {
            return Some(Err(error.clone()));
        }
        let key = (account_id, currency.to_string());
        let mut account = self.accounts.get(&key).cloned().unwrap_or_default();
        account.available = self.balances.get(&key).copied().flatten();
        Some(Ok(account))
    }

    fn send(&mut self, message: Outgoing) -> Result<(), PublishError> {
        let hold = message.hold.as_ref().map(|hold| {
            json!({"account_id": hold.account_id, "currency": hold.currency, "amount_minor": hold.amount_minor})
        });
        self.calls.push(json!({"send": {
            "topic": message.topic,
            "key": message.key,
            "payload": String::from_utf8_lossy(&message.payload),
            "hold": hold,
        }}));
        self.publish.clone()
    }
}

/// The command line of a native vectors checker (guest/examples/vectors.rs): `DIR`, `--write`,
/// `--print`, with `decide` as the guest's logic over the replayed imports.
pub fn run_cli(
    decide: impl Fn(&mut Replay, &Vector) -> Result<Accepted, Rejection>,
) -> std::process::ExitCode {
    use std::path::PathBuf;
    use std::process::ExitCode;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let write = args.iter().any(|arg| arg == "--write");
    let print = args.iter().any(|arg| arg == "--print");
    let directory = args
        .iter()
        .find(|arg| !arg.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| "tests/vectors".into());
    let vectors = match Vector::load_dir(&directory) {
        Ok(vectors) => vectors,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = 0;
    for vector in &vectors {
        let mut replay = vector.replay();
        let result = decide(&mut replay, vector);
        let actual = outcome(&result, &replay.calls);
        if print {
            println!("{} {}", vector.name, canonical(&actual));
        }
        if write {
            let mut document = vector.document.clone();
            document["expected"] = actual;
            let text = serde_json::to_string_pretty(&document).expect("a vector serialises") + "\n";
            let path = directory.join(format!("{}.json", vector.name));
            if let Err(error) = std::fs::write(&path, text) {
                eprintln!("{}: {error}", path.display());
                failures += 1;
            }
        } else if vector.expected.as_ref().map(canonical) != Some(canonical(&actual)) {
            eprintln!("FAIL {}: got {}", vector.name, canonical(&actual));
            failures += 1;
        }
    }
    eprintln!("{} vectors, {} failed", vectors.len(), failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `{"calls": [...], "result": ...}` for a decision.
pub fn outcome(result: &Result<Accepted, Rejection>, calls: &[Value]) -> Value {
    let result = match result {
        Ok(accepted) => {
            json!({"ok": {"transaction_id": accepted.transaction_id, "amount_minor": accepted.amount_minor}})
        }
        Err(rejection) => json!({"err": rejection_json(rejection)}),
    };
    json!({"calls": calls, "result": result})
}

fn rejection_json(rejection: &Rejection) -> Value {
    match rejection {
        Rejection::Invalid(errors) => json!({"invalid": errors
            .iter()
            .map(|error| json!({"field": error.field, "message": error.message, "code": error.code}))
            .collect::<Vec<_>>()}),
        Rejection::InsufficientFunds => json!("insufficient-funds"),
        Rejection::ReceiverNotFound => json!("receiver-not-found"),
        Rejection::Forbidden(reason) => json!({"forbidden": reason}),
        Rejection::Unavailable(reason) => json!({"unavailable": reason}),
    }
}

/// The kind of a result: `ok`, `invalid`, `insufficient-funds`, `receiver-not-found`,
/// `forbidden` or `unavailable`. Invariant cases are judged on this.
pub fn result_kind(outcome: &Value) -> String {
    let result = &outcome["result"];
    if result.get("ok").is_some() {
        return "ok".into();
    }
    match &result["err"] {
        Value::String(kind) => kind.clone(),
        Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// What an invariant case demands of any guest version: the same kind of result, and every
/// message sent with a hold on the sender. Returns the first broken rule.
pub fn check_invariant(vector: &Vector, actual: &Value) -> Result<(), String> {
    let Some(expected) = &vector.expected else {
        return Err(format!(
            "{}: the vector has no expected outcome",
            vector.name
        ));
    };
    let (want, got) = (result_kind(expected), result_kind(actual));
    if want != got {
        return Err(format!(
            "{}: expected {want}, the guest answered {got}",
            vector.name
        ));
    }
    for call in actual["calls"].as_array().into_iter().flatten() {
        let Some(send) = call.get("send") else {
            continue;
        };
        let hold = &send["hold"];
        if hold["account_id"].as_i64() != Some(vector.request.sender_id)
            || hold["amount_minor"].as_i64().unwrap_or(0) <= 0
        {
            return Err(format!(
                "{}: the guest published without a hold on the sender",
                vector.name
            ));
        }
    }
    Ok(())
}

/// JSON with object keys sorted and no spaces: one spelling per value, whatever the runtime.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                write_canonical(&map[*key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_s_metadata_keeps_the_order_written() {
        let text = r#"{"name": "m", "context": {"transaction_id": "t", "received_at_ms": 1,
            "guest_version": "v"}, "request": {"sender_id": 1, "receiver_id": 2, "amount": "1",
            "currency": "USD", "phase": "pending", "expires_in_s": 60,
            "metadata": {"z": "1", "a": "2"}}, "imports": {}}"#;
        let vector = Vector::parse("m.json", text).expect("a vector");
        assert_eq!(
            vector.request.metadata,
            vec![("z".into(), "1".into()), ("a".into(), "2".into())]
        );
        assert_eq!(vector.request.phase.as_deref(), Some("pending"));
        assert_eq!(vector.request.expires_in_s, Some(60));
    }

    #[test]
    fn canonical_sorts_keys_at_every_depth() {
        let value = json!({"b": [ {"z": 1, "a": "é\n"} ], "a": null});
        assert_eq!(canonical(&value), r#"{"a":null,"b":[{"a":"é\n","z":1}]}"#);
    }
}
