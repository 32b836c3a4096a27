//! Shadow runs: a candidate version decides each live request beside the active version,
//! with the imports answering exactly what they answered the active version (so the candidate
//! sees the same balances and takes no holds) and its publish captured, never sent. Decisions
//! that differ are counted, and the last few kept, per replica.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};
use transferd_guest::logic::{Accepted, Rejection};
use transferd_guest::vectors::{Replay, account_json, outcome};

use crate::capabilities::RecordedAnswers;

/// Differences kept per candidate for inspection.
pub const RECENT_DIFFERENCES: usize = 20;

/// The import answers of the active run, as a vector's `imports`: a lookup the active version
/// did not make answers "no account"; publishing answers what the active publish answered.
pub fn replay_of(answers: &RecordedAnswers) -> Replay {
    Replay::new(&imports_of(answers))
}

/// The import answers of a live call in the vectors' `imports` format.
pub fn imports_of(answers: &RecordedAnswers) -> Value {
    let balances: Vec<Value> = answers
        .lookups
        .iter()
        .filter_map(|(account_id, currency, answer)| {
            let available = answer.as_ref().ok()?;
            Some(json!({"account_id": account_id, "currency": currency, "available": available}))
        })
        .collect();
    let lookup_error = answers
        .lookups
        .iter()
        .find_map(|(_, _, answer)| answer.as_ref().err().cloned());
    let accounts: Vec<Value> = answers
        .accounts
        .iter()
        .filter_map(|(account_id, currency, answer)| {
            Some(account_json(*account_id, currency, answer.as_ref().ok()?))
        })
        .collect();
    let account_error = answers
        .accounts
        .iter()
        .find_map(|(_, _, answer)| answer.as_ref().err().cloned());
    json!({
        "balances": balances,
        "lookup_error": lookup_error,
        "accounts": accounts,
        "account_error": account_error,
        "publish": answers.publish.clone().unwrap_or(json!("ok")),
    })
}

/// The result part of an outcome, for comparing decisions.
pub fn result_of(decision: &Result<Accepted, Rejection>) -> Value {
    outcome(decision, &[])["result"].clone()
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ShadowStats {
    pub runs: u64,
    pub differences: u64,
    pub failures: u64,
    /// Newest last.
    pub recent_differences: VecDeque<Value>,
}

/// Shadow statistics of this replica, by candidate version.
#[derive(Default)]
pub struct ShadowBook {
    by_version: Mutex<HashMap<String, ShadowStats>>,
}

impl ShadowBook {
    /// Records one shadow run: `candidate` is the candidate's result, or `None` when it failed.
    pub fn record(
        &self,
        version: &str,
        transaction_id: &str,
        active: &Value,
        candidate: Option<&Value>,
    ) {
        let mut book = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stats = book.entry(version.to_string()).or_default();
        stats.runs += 1;
        metrics::counter!(crate::metrics::SHADOW_RUNS, "version" => version.to_owned())
            .increment(1);
        if candidate == Some(active) {
            return;
        }
        metrics::counter!(crate::metrics::SHADOW_DIFFERENCES, "version" => version.to_owned())
            .increment(1);
        match candidate {
            None => stats.failures += 1,
            Some(_) => stats.differences += 1,
        }
        stats.recent_differences.push_back(json!({
            "transaction_id": transaction_id,
            "active": active,
            "candidate": candidate,
        }));
        while stats.recent_differences.len() > RECENT_DIFFERENCES {
            stats.recent_differences.pop_front();
        }
    }

    pub fn stats(&self, version: &str) -> ShadowStats {
        let book = self
            .by_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        book.get(version).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_runs_and_keeps_only_recent_differences() {
        let book = ShadowBook::default();
        let same = json!({"ok": {"amount_minor": 1}});
        let other = json!({"err": "insufficient-funds"});
        book.record("v", "t0", &same, Some(&same));
        for index in 0..(RECENT_DIFFERENCES + 5) {
            book.record("v", &format!("t{index}"), &same, Some(&other));
        }
        book.record("v", "tx", &same, None);
        let stats = book.stats("v");
        assert_eq!(
            (stats.runs, stats.differences, stats.failures),
            (
                RECENT_DIFFERENCES as u64 + 7,
                RECENT_DIFFERENCES as u64 + 5,
                1
            )
        );
        assert_eq!(stats.recent_differences.len(), RECENT_DIFFERENCES);
        assert_eq!(book.stats("unknown").runs, 0);
    }
}
