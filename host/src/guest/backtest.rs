//! Backtesting: a candidate version decides recorded transfers again (`provenance`), offline,
//! with the answers the imports gave at the time, and a report says how its decisions differ
//! from those made then. Reads `guest_decisions` only: nothing is held, published or settled.
//!
//! The candidate decides under its own version's name, as a shadow does; the messages'
//! `guest_version` field naming it is therefore not counted as a difference.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use transferd_guest::vectors::{Vector, canonical, result_kind};

use crate::guest::runtime::{Guest, GuestFailure};
use crate::stores::provenance::{self as store, Selection, StoredDecision};

/// Most recorded decisions one backtest runs.
pub const MAX_CASES: i64 = 100_000;

/// Differences and failures kept as samples in a report.
pub const SAMPLES: usize = 20;

/// The message field that names the deciding version, expected to differ.
const VERSION_FIELD: &str = "guest_version";

/// What a backtest found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Recorded decisions run.
    pub cases: u64,
    /// Decided exactly as recorded (calls, message bytes but the version's name, result).
    pub identical: u64,
    pub different: u64,
    /// `accepted→rejected`, `rejected→accepted`, `rejection reason`, `amount`,
    /// `message fields` or `calls` (other import calls), one per different case.
    pub different_by_kind: BTreeMap<String, u64>,
    /// Of the `message fields` cases: how often each field differed.
    pub message_fields: BTreeMap<String, u64>,
    /// Cases the candidate made no decision on: `trap`, `timeout`, `violation` or `busy`.
    pub failures: u64,
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Recorded decisions this transferd could not read (not run).
    pub unreadable: u64,
    /// Fuel the candidate used per case, when the runtime meters it.
    pub fuel_used: Option<FuelUsed>,
    /// Up to [`SAMPLES`] differences and failures, with their transaction ids.
    pub samples: Vec<Sample>,
    #[serde(skip)]
    fuel: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FuelUsed {
    pub max: u64,
    pub p99: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    pub transaction_id: String,
    pub kind: String,
    /// The recorded result.
    pub recorded: Value,
    /// The candidate's result, or its failure.
    pub candidate: Value,
    /// The message fields that differ, for `message fields`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// One recorded decision decided again.
#[derive(Debug)]
pub struct Case {
    pub transaction_id: String,
    /// The recorded outcome; `None` when the row could not be read.
    pub recorded: Option<Value>,
    pub candidate: Result<Value, GuestFailure>,
    pub fuel_used: Option<u64>,
}

/// How a candidate's outcome differs from the recorded one: its kind and, for a message, the
/// fields. `None` when it does not.
pub fn difference(recorded: &Value, candidate: &Value) -> Option<(&'static str, Vec<String>)> {
    if canonical(recorded) == canonical(candidate) {
        return None;
    }
    let (was, is) = (result_kind(recorded), result_kind(candidate));
    let kind = match (was.as_str(), is.as_str()) {
        ("ok", "ok") if recorded["result"] != candidate["result"] => "amount",
        ("ok", "ok") => "",
        ("ok", _) => "accepted→rejected",
        (_, "ok") => "rejected→accepted",
        _ if recorded["result"] != candidate["result"] => "rejection reason",
        _ => "",
    };
    if !kind.is_empty() {
        return Some((kind, Vec::new()));
    }
    let fields = message_fields(recorded, candidate);
    if !fields.is_empty() {
        return Some(("message fields", fields));
    }
    let calls = |outcome: &Value| canonical(&without_version(&outcome["calls"]));
    (calls(recorded) != calls(candidate)).then_some(("calls", Vec::new()))
}

/// The first message each sent, as JSON (its text when it is not JSON).
fn message(outcome: &Value) -> Option<Value> {
    let payload = crate::guest::provenance::message_of(outcome)?;
    Some(serde_json::from_str(payload).unwrap_or_else(|_| json!({ "payload": payload })))
}

/// The top-level message fields whose values differ, but the version's name.
fn message_fields(recorded: &Value, candidate: &Value) -> Vec<String> {
    let (Some(was), Some(is)) = (message(recorded), message(candidate)) else {
        return Vec::new();
    };
    let empty = serde_json::Map::new();
    let (was, is) = (
        was.as_object().unwrap_or(&empty),
        is.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<&String> = was.keys().chain(is.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| *name != VERSION_FIELD && was.get(*name) != is.get(*name))
        .cloned()
        .collect()
}

/// The calls with each message parsed and its version's name left out.
fn without_version(calls: &Value) -> Value {
    let mut calls = calls.clone();
    for call in calls.as_array_mut().into_iter().flatten() {
        let send = &mut call["send"];
        let Some(mut parsed) = send["payload"]
            .as_str()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
        else {
            continue;
        };
        if let Some(fields) = parsed.as_object_mut() {
            fields.remove(VERSION_FIELD);
        }
        send["payload"] = parsed;
    }
    calls
}

fn failure_kind(failure: &GuestFailure) -> &'static str {
    match failure {
        GuestFailure::Trap(_) => "trap",
        GuestFailure::Timeout(_) => "timeout",
        GuestFailure::Violation(_) => "violation",
        GuestFailure::OutOfFuel(_) => "out_of_fuel",
        GuestFailure::Busy => "busy",
    }
}

impl Report {
    /// Counts one case.
    pub fn add(&mut self, case: Case) {
        self.cases += 1;
        self.fuel.extend(case.fuel_used);
        let Some(recorded) = case.recorded else {
            self.unreadable += 1;
            return self.sample(Sample {
                transaction_id: case.transaction_id,
                kind: "unreadable".into(),
                recorded: Value::Null,
                candidate: Value::Null,
                fields: Vec::new(),
            });
        };
        let candidate = match case.candidate {
            Ok(candidate) => candidate,
            Err(failure) => {
                let kind = failure_kind(&failure);
                let why = json!({ kind: failure.to_string() });
                return self.failed(case.transaction_id, kind, recorded["result"].clone(), why);
            }
        };
        let Some((kind, fields)) = difference(&recorded, &candidate) else {
            self.identical += 1;
            return;
        };
        self.different += 1;
        *self.different_by_kind.entry(kind.into()).or_default() += 1;
        for field in &fields {
            *self.message_fields.entry(field.clone()).or_default() += 1;
        }
        self.sample(Sample {
            transaction_id: case.transaction_id,
            kind: kind.into(),
            recorded: recorded["result"].clone(),
            candidate: candidate["result"].clone(),
            fields,
        });
    }

    fn failed(&mut self, transaction_id: String, kind: &str, recorded: Value, candidate: Value) {
        self.failures += 1;
        *self.failures_by_kind.entry(kind.into()).or_default() += 1;
        self.sample(Sample {
            transaction_id,
            kind: kind.into(),
            recorded,
            candidate,
            fields: Vec::new(),
        });
    }

    fn sample(&mut self, sample: Sample) {
        if self.samples.len() < SAMPLES {
            self.samples.push(sample);
        }
    }

    /// Closes the report: the fuel figures from every case that reported its fuel.
    pub fn finish(mut self) -> Report {
        self.fuel.sort_unstable();
        self.fuel_used = p99(&self.fuel).map(|p99| FuelUsed {
            max: self.fuel.last().copied().unwrap_or_default(),
            p99,
        });
        self
    }
}

/// The 99th percentile of sorted `values`, nearest rank; `None` for none.
pub fn p99(sorted: &[u64]) -> Option<u64> {
    let rank = (sorted.len() * 99).div_ceil(100);
    sorted.get(rank.checked_sub(1)?).copied()
}

/// Runs `candidate` over the recorded decisions `selection` names, as many at once as there
/// are CPUs (the calls share the engine's instance pool with live requests).
pub async fn backtest(
    pool: &PgPool,
    candidate: &Guest,
    selection: Selection,
) -> Result<Report, sqlx::Error> {
    let parallel = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mut cases = store::select(pool, selection)
        .map(|row| async move { Ok::<_, sqlx::Error>(run_case(candidate, row?).await) })
        .buffer_unordered(parallel);
    let mut report = Report::default();
    while let Some(case) = cases.next().await {
        report.add(case?);
    }
    Ok(report.finish())
}

/// One recorded decision decided by `candidate`, under its own version's name.
async fn run_case(candidate: &Guest, row: StoredDecision) -> Case {
    let transaction_id = row.transaction_id.to_string();
    let vector = match Vector::parse(&transaction_id, &row.vector) {
        Ok(vector) => vector,
        Err(error) => {
            return Case {
                transaction_id,
                recorded: None,
                candidate: Err(GuestFailure::Trap(error.to_string())),
                fuel_used: None,
            };
        }
    };
    let mut context = vector.context.clone();
    context.guest_version = candidate.version().to_string();
    let measured = candidate
        .run_replayed_measured(&context, &vector.request, vector.replay())
        .await;
    Case {
        transaction_id,
        recorded: vector.expected,
        fuel_used: measured.as_ref().ok().map(|measured| measured.fuel_used),
        candidate: measured.map(|measured| measured.outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(amount_minor: i64, payload: &str) -> Value {
        json!({
            "calls": [{"send": {"topic": "t", "key": "1", "payload": payload, "hold": null}}],
            "result": {"ok": {"transaction_id": "x", "amount_minor": amount_minor}},
        })
    }

    fn rejected(rejection: Value) -> Value {
        json!({"calls": [], "result": {"err": rejection}})
    }

    fn case(id: &str, recorded: &Value, candidate: Result<Value, GuestFailure>) -> Case {
        Case {
            transaction_id: id.into(),
            recorded: Some(recorded.clone()),
            candidate,
            fuel_used: None,
        }
    }

    #[test]
    fn differences_are_named_by_kind() {
        let ok = accepted(100, r#"{"a":1,"guest_version":"old"}"#);
        let insufficient = rejected(json!("insufficient-funds"));
        let not_found = rejected(json!("receiver-not-found"));
        assert_eq!(difference(&ok, &ok), None);
        let renamed = accepted(100, r#"{"a":1,"guest_version":"new"}"#);
        assert_eq!(difference(&ok, &renamed), None, "the version's own name");
        let kind = |a: &Value, b: &Value| difference(a, b).map(|(kind, _)| kind);
        assert_eq!(kind(&ok, &insufficient), Some("accepted→rejected"));
        assert_eq!(kind(&insufficient, &ok), Some("rejected→accepted"));
        assert_eq!(kind(&insufficient, &not_found), Some("rejection reason"));
        assert_eq!(kind(&ok, &accepted(99, r#"{"a":1}"#)), Some("amount"));
        let fields = accepted(100, r#"{"a":2,"b":3,"guest_version":"new"}"#);
        assert_eq!(
            difference(&ok, &fields),
            Some(("message fields", vec!["a".to_string(), "b".to_string()]))
        );
        let mut looked = ok.clone();
        looked["calls"] =
            json!([{"available": {"account_id": 1, "currency": "USD"}}, ok["calls"][0]]);
        assert_eq!(kind(&ok, &looked), Some("calls"));
    }

    #[test]
    fn a_report_counts_cases_kinds_failures_and_samples() {
        let ok = accepted(100, r#"{"a":1}"#);
        let mut report = Report::default();
        report.add(case("same", &ok, Ok(ok.clone())));
        for index in 0..SAMPLES {
            let rejected = rejected(json!("insufficient-funds"));
            report.add(case(&format!("d{index}"), &ok, Ok(rejected)));
        }
        report.add(case("trap", &ok, Err(GuestFailure::Trap("boom".into()))));
        report.add(Case {
            transaction_id: "bad".into(),
            recorded: None,
            candidate: Err(GuestFailure::Trap("unreadable".into())),
            fuel_used: None,
        });
        let report = report.finish();
        assert_eq!(report.cases, SAMPLES as u64 + 3);
        assert_eq!((report.identical, report.different), (1, SAMPLES as u64));
        assert_eq!(
            report.different_by_kind["accepted→rejected"],
            SAMPLES as u64
        );
        assert_eq!((report.failures, report.unreadable), (1, 1));
        assert_eq!(report.failures_by_kind["trap"], 1);
        assert_eq!(report.samples.len(), SAMPLES, "samples are capped");
        assert_eq!(report.samples[0].transaction_id, "d0");
        assert_eq!(report.fuel_used, None, "no fuel reported, no fuel figures");
    }

    #[test]
    fn fuel_is_reported_as_max_and_nearest_rank_p99() {
        assert_eq!(p99(&[]), None);
        assert_eq!(p99(&[7]), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(p99(&hundred), Some(99));
        let two_hundred: Vec<u64> = (1..=200).collect();
        assert_eq!(p99(&two_hundred), Some(198));
        let mut report = Report::default();
        for fuel in [5, 1, 9] {
            report.add(Case {
                fuel_used: Some(fuel),
                ..case("f", &accepted(1, "{}"), Ok(accepted(1, "{}")))
            });
        }
        let report = report.finish();
        assert_eq!(report.fuel_used, Some(FuelUsed { max: 9, p99: 9 }));
    }
}
