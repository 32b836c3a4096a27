//! `GET /admin/status/history`: what the status page charts. This process samples its own
//! metrics every [`SAMPLE_INTERVAL`] into a bounded ring covering the last 15 minutes, so a
//! page opened now draws them at once; each answer adds a sample taken as it is asked, and the
//! figures the page shows as they are now (money held, the worker's role, the quarantine's
//! count and latest entries without their payloads).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Serialize;
use transferd_guest::money;
use utoipa::ToSchema;

use crate::http::App;
use crate::http::api::ErrorBody;
use crate::http::error::{Reply, json_response};
use crate::http::routes::AdminRoute;
use crate::metrics;
use crate::settlement::quarantine;

/// How often the ring takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples kept: 15 minutes of them.
const SAMPLES_KEPT: usize = 90;

/// Latest quarantined messages shown.
const QUARANTINE_SHOWN: i64 = 5;

/// The route the request-rate chart counts.
const TRANSFER_ROUTE: &str = "route=\"create_transfer\"";

/// Counters and gauges at one moment; the page charts the counters' rates between samples.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sample {
    /// When it was taken, in milliseconds since the epoch.
    pub at_ms: u64,
    /// `POST /transfers` requests answered.
    pub transfer_requests: f64,
    /// Transfer decisions, and those that accepted (the rest were refused).
    pub decided: f64,
    pub accepted: f64,
    /// Transfers settled into the ledger.
    pub settled: f64,
    /// `transferd_settlement_lag_seconds` and `_messages`.
    pub lag_seconds: f64,
    pub lag_messages: f64,
    /// The guest-call histogram's sum of seconds and count.
    pub guest_seconds_sum: f64,
    pub guest_calls: f64,
}

/// Money held (accepted, not settled yet) in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Held {
    pub currency: String,
    /// A decimal in the currency's units, as the API writes amounts.
    pub amount: String,
    pub amount_minor: i64,
}

/// `GET /admin/status/history`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusHistory {
    /// Seconds between two stored samples.
    pub interval_s: u64,
    /// Oldest first; the last one taken for this answer.
    pub samples: Vec<Sample>,
    pub held: Vec<Held>,
    /// `active` (this process's worker settles), `standby`, or absent (no worker here).
    pub worker: Option<String>,
    /// Absent when the ledger could not be asked.
    pub quarantine: Option<QuarantineSummary>,
}

/// The quarantine at a glance; `GET /admin/quarantine` (bearer only) has the payloads.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineSummary {
    /// Messages waiting for an operator.
    pub open: i64,
    /// The newest messages set aside, newest first.
    pub latest: Vec<QuarantinedAt>,
}

/// Where a quarantined message is, when and why it was set aside.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantinedAt {
    pub partition: i32,
    pub offset: i64,
    /// RFC 3339.
    pub quarantined_at: String,
    pub error: String,
}

/// The ring of samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn all(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().cloned().collect()
    }
}

/// Takes a sample every [`SAMPLE_INTERVAL`] for the life of the process.
pub fn spawn_sampler(history: Arc<History>) {
    tokio::spawn(async move {
        loop {
            history.push(sample(&Metrics::read()));
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    });
}

/// The stored samples, one taken now, the money held and the worker's role.
#[utoipa::path(
    get, path = AdminRoute::StatusHistory.path(), operation_id = "status_history", tag = "admin",
    summary = "The status page's last 15 minutes of samples, and money held now",
    security(("bearer" = [])),
    responses(
        (status = 200, body = StatusHistory),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn reply(app: &App) -> Reply {
    let now = Metrics::read();
    let mut samples = app.history.all();
    samples.push(sample(&now));
    let worker = match now.sum(metrics::WORKER_ACTIVE, None) {
        Some(active) if active > 0.0 => Some("active".to_string()),
        Some(_) => Some("standby".to_string()),
        None => None,
    };
    json_response(
        StatusCode::OK,
        &StatusHistory {
            interval_s: SAMPLE_INTERVAL.as_secs(),
            samples,
            held: held(&now),
            worker,
            quarantine: quarantine_summary(app).await,
        },
    )
}

async fn quarantine_summary(app: &App) -> Option<QuarantineSummary> {
    let pool = app.stores.ledger.pool();
    let open = quarantine::open_count(pool).await.ok()?;
    let entries = quarantine::list(pool, QUARANTINE_SHOWN).await.ok()?;
    let latest = entries
        .into_iter()
        .map(|entry| QuarantinedAt {
            partition: entry.partition,
            offset: entry.log_offset,
            quarantined_at: entry.quarantined_at.to_rfc3339(),
            error: entry.error,
        })
        .collect();
    Some(QuarantineSummary { open, latest })
}

fn sample(metrics: &Metrics) -> Sample {
    let sum = |name: &str| metrics.sum(name, None).unwrap_or(0.0);
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or_default();
    Sample {
        at_ms,
        transfer_requests: metrics
            .sum(metrics::HTTP_REQUESTS, Some(TRANSFER_ROUTE))
            .unwrap_or(0.0),
        decided: sum(metrics::GUEST_CALLS),
        accepted: metrics
            .sum(metrics::GUEST_CALLS, Some("outcome=\"accepted\""))
            .unwrap_or(0.0),
        settled: sum(metrics::SETTLED),
        lag_seconds: sum(metrics::SETTLEMENT_LAG_SECONDS),
        lag_messages: sum(metrics::SETTLEMENT_LAG_MESSAGES),
        guest_seconds_sum: sum(&format!("{}_sum", metrics::GUEST_DURATION)),
        guest_calls: sum(&format!("{}_count", metrics::GUEST_DURATION)),
    }
}

/// Every currency with money held, formatted with its own number of decimals.
fn held(metrics: &Metrics) -> Vec<Held> {
    metrics
        .lines
        .iter()
        .filter(|line| line.name == metrics::HOLDS_OUTSTANDING_MINOR && line.value != 0.0)
        .filter_map(|line| {
            let currency = label(&line.labels, "currency")?;
            let exponent = money::currency_exponent(currency)?;
            let amount_minor = line.value as i64;
            Some(Held {
                currency: currency.to_owned(),
                amount: money::format_minor(amount_minor, exponent),
                amount_minor,
            })
        })
        .collect()
}

/// A label's value in a rendered label set (`a="x",b="y"`); transferd's values hold no quotes.
fn label<'l>(labels: &'l str, key: &str) -> Option<&'l str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// One rendering of this process's metrics, as (name, labels, value) lines.
struct Metrics {
    lines: Vec<Line>,
}

struct Line {
    name: String,
    labels: String,
    value: f64,
}

impl Metrics {
    fn read() -> Metrics {
        Metrics::parse(&metrics::render())
    }

    /// Prometheus's text format: `name{labels} value` or `name value`; comments skipped.
    fn parse(text: &str) -> Metrics {
        let lines = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some(Line {
                    name: name.to_owned(),
                    labels: labels.to_owned(),
                    value: value.parse().ok()?,
                })
            })
            .collect();
        Metrics { lines }
    }

    /// The sum of `name`'s series whose labels include `with`; `None` when it has none.
    fn sum(&self, name: &str, with: Option<&str>) -> Option<f64> {
        self.lines
            .iter()
            .filter(|line| line.name == name)
            .filter(|line| with.is_none_or(|with| line.labels.contains(with)))
            .map(|line| line.value)
            .reduce(|a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE transferd_guest_calls_total counter
transferd_guest_calls_total{version=\"v1\",outcome=\"accepted\"} 7
transferd_guest_calls_total{version=\"v1\",outcome=\"insufficient_funds\"} 2
transferd_holds_outstanding_minor{currency=\"JPY\"} 1500
transferd_holds_outstanding_minor{currency=\"KWD\"} 12345
transferd_holds_outstanding_minor{currency=\"USD\"} 0
transferd_settlement_lag_seconds 0.25
";

    #[test]
    fn samples_sum_series_and_held_money_keeps_each_currency_s_decimals() {
        let metrics = Metrics::parse(TEXT);
        let sample = sample(&metrics);
        assert_eq!(sample.decided, 9.0);
        assert_eq!(sample.accepted, 7.0);
        assert_eq!(sample.lag_seconds, 0.25);
        assert_eq!(sample.settled, 0.0);
        let held: Vec<(String, String)> = held(&metrics)
            .into_iter()
            .map(|held| (held.currency, held.amount))
            .collect();
        assert_eq!(
            held,
            [
                ("JPY".to_string(), "1500".to_string()),
                ("KWD".to_string(), "12.345".to_string())
            ]
        );
    }

    #[test]
    fn the_ring_keeps_the_last_fifteen_minutes() {
        let history = History::default();
        for _ in 0..SAMPLES_KEPT + 5 {
            history.push(sample(&Metrics::parse("")));
        }
        assert_eq!(history.all().len(), SAMPLES_KEPT);
        assert_eq!(
            SAMPLE_INTERVAL.as_secs() * SAMPLES_KEPT as u64,
            15 * 60,
            "the ring spans 15 minutes"
        );
    }
}
