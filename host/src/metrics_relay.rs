//! Carries a child process's metrics to its parent. `serve` runs its settlement worker as a
//! child process (`settlement/process.rs`); the child records through a [`Forwarder`], which
//! turns each update into one JSON line for the socket the two share, and `serve` applies each
//! line to its own recorder with [`apply`]. So `GET /metrics` shows settlement's figures as it
//! did when the worker was a task, and counters stay monotonic across worker restarts: the
//! parent keeps the totals.

use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Label, Metadata,
    Recorder, SharedString, Unit,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Longest update line [`apply`] accepts.
pub const MAX_LINE_BYTES: usize = 4_096;

/// Updates waiting to be written to the parent. When the queue is full an update is dropped:
/// a metric is never worth holding settlement back.
const QUEUE_UPDATES: usize = 16_384;

/// What one update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    CounterIncrement,
    CounterAbsolute,
    GaugeIncrement,
    GaugeDecrement,
    GaugeSet,
    HistogramRecord,
}

/// One metric update, as one line on the socket.
#[derive(Debug, Serialize, Deserialize)]
struct Update {
    op: Op,
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("an update line of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("not an update line: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("metric {0:?} is not one of transferd's")]
    ForeignName(String),
    #[error("metric {name:?} got a value that is not a finite number or not a count: {value}")]
    BadValue { name: String, value: f64 },
}

/// The child's recorder: every update becomes a line in the queue that [`Forwarder::new`]
/// hands out.
pub struct Forwarder {
    lines: mpsc::Sender<String>,
}

impl Forwarder {
    /// The recorder, and the lines it produces, for a task to write to the parent.
    pub fn new() -> (Forwarder, mpsc::Receiver<String>) {
        let (lines, receiver) = mpsc::channel(QUEUE_UPDATES);
        (Forwarder { lines }, receiver)
    }

    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            lines: self.lines.clone(),
            name: key.name().to_owned(),
            labels: key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect(),
        })
    }
}

/// One registered metric of the child.
struct Handle {
    lines: mpsc::Sender<String>,
    name: String,
    labels: Vec<(String, String)>,
}

impl Handle {
    fn send(&self, op: Op, value: f64) {
        let update = Update {
            op,
            name: self.name.clone(),
            labels: self.labels.clone(),
            value,
        };
        if let Ok(line) = serde_json::to_string(&update) {
            // Full or closed: dropped, see QUEUE_UPDATES.
            let _ = self.lines.try_send(line);
        }
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.send(Op::CounterIncrement, value as f64);
    }
    fn absolute(&self, value: u64) {
        self.send(Op::CounterAbsolute, value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.send(Op::GaugeIncrement, value);
    }
    fn decrement(&self, value: f64) {
        self.send(Op::GaugeDecrement, value);
    }
    fn set(&self, value: f64) {
        self.send(Op::GaugeSet, value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.send(Op::HistogramRecord, value);
    }
}

impl Recorder for Forwarder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

/// Applies one line from the child to this process's recorder. Only transferd's own metrics
/// with finite values are taken; a counter's value must be a whole, non-negative count.
pub fn apply(line: &str) -> Result<(), RelayError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(RelayError::TooLong(line.len()));
    }
    let update: Update = serde_json::from_str(line)?;
    if !update.name.starts_with("transferd_") {
        return Err(RelayError::ForeignName(update.name));
    }
    let is_count = matches!(update.op, Op::CounterIncrement | Op::CounterAbsolute);
    let value = update.value;
    if !value.is_finite() || (is_count && (value < 0.0 || value.fract() != 0.0)) {
        return Err(RelayError::BadValue {
            name: update.name,
            value,
        });
    }
    let labels: Vec<Label> = update
        .labels
        .into_iter()
        .map(|(key, value)| Label::new(key, value))
        .collect();
    let name = update.name;
    match update.op {
        Op::CounterIncrement => metrics::counter!(name, labels).increment(value as u64),
        Op::CounterAbsolute => metrics::counter!(name, labels).absolute(value as u64),
        Op::GaugeIncrement => metrics::gauge!(name, labels).increment(value),
        Op::GaugeDecrement => metrics::gauge!(name, labels).decrement(value),
        Op::GaugeSet => metrics::gauge!(name, labels).set(value),
        Op::HistogramRecord => metrics::histogram!(name, labels).record(value),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// What the child records, as lines.
    fn recorded(record: impl FnOnce()) -> Vec<String> {
        let (forwarder, mut lines) = Forwarder::new();
        metrics::with_local_recorder(&forwarder, record);
        let mut out = Vec::new();
        while let Ok(line) = lines.try_recv() {
            out.push(line);
        }
        out
    }

    #[test]
    fn what_the_child_records_the_parent_renders() {
        let lines = recorded(|| {
            metrics::counter!("transferd_settled_transfers_total", "status" => "completed")
                .increment(3);
            metrics::counter!("transferd_settled_transfers_total", "status" => "completed")
                .increment(2);
            metrics::counter!("transferd_settled_transfers_total", "status" => "failed")
                .increment(1);
            metrics::gauge!("transferd_settlement_lag_seconds").set(0.25);
            metrics::histogram!("transferd_settlement_batch_transfers").record(7.0);
        });
        assert_eq!(lines.len(), 5);

        let parent = PrometheusBuilder::new().build_recorder();
        let handle = parent.handle();
        metrics::with_local_recorder(&parent, || {
            for line in &lines {
                apply(line).expect("a line the forwarder wrote applies");
            }
        });
        let text = handle.render();
        assert!(
            text.contains(r#"transferd_settled_transfers_total{status="completed"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"transferd_settled_transfers_total{status="failed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("transferd_settlement_lag_seconds 0.25"),
            "{text}"
        );
        assert!(
            text.contains("transferd_settlement_batch_transfers_count 1"),
            "{text}"
        );
    }

    #[test]
    fn the_parent_refuses_what_is_not_a_transferd_update() {
        let refused = [
            "not json".to_string(),
            r#"{"op":"gauge_set","name":"other_metric","labels":[],"value":1.0}"#.to_string(),
            r#"{"op":"counter_increment","name":"transferd_x","labels":[],"value":-1.0}"#
                .to_string(),
            r#"{"op":"counter_increment","name":"transferd_x","labels":[],"value":1.5}"#
                .to_string(),
            r#"{"op":"explode","name":"transferd_x","labels":[],"value":1.0}"#.to_string(),
            format!(
                r#"{{"op":"gauge_set","name":"transferd_{}","labels":[],"value":1.0}}"#,
                "x".repeat(MAX_LINE_BYTES)
            ),
        ];
        let parent = PrometheusBuilder::new().build_recorder();
        let handle = parent.handle();
        metrics::with_local_recorder(&parent, || {
            for line in &refused {
                assert!(apply(line).is_err(), "{line} was applied");
            }
        });
        assert!(!handle.render().contains("transferd_x"));
    }

    #[test]
    fn a_full_queue_drops_updates_instead_of_blocking() {
        let lines = recorded(|| {
            for _ in 0..QUEUE_UPDATES + 10 {
                metrics::counter!("transferd_settled_transfers_total").increment(1);
            }
        });
        assert_eq!(lines.len(), QUEUE_UPDATES);
    }
}
