//! What the dependencies and the money in flight look like from here: the probes behind
//! `/readyz`, and the gauges that need asking (dependency up/down, holds outstanding,
//! settlement lag, the quarantine), refreshed by one background task every [`GAUGE_INTERVAL`].
//!
//! The probes run through [`Probes`]: one run at a time, whose answers serve every caller (any
//! number of `/readyz` requests, and the gauges) for [`PROBE_REUSE`], so the load the probes
//! put on the dependencies does not grow with the callers.
//!
//! The gauges are read off the stores rather than counted as events, so a replica that
//! restarts, or one that settles nothing itself, reports the same figures as its peers.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::metrics::{
    DEPENDENCY_UP, HOLDS_OUTSTANDING, HOLDS_OUTSTANDING_MINOR, PROBE_RUNS, QUARANTINE_OPEN,
    READY_DEGRADED, SETTLEMENT_LAG_MESSAGES,
};
use crate::settlement::quarantine;
use crate::settlement::reconcile::Position;
use crate::stores::Stores;

/// Longest wait for one dependency's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the broker's blocking metadata request may take: less than [`PROBE_TIMEOUT`], so the
/// blocking thread has ended by itself when the probe stops waiting.
const BROKER_METADATA_TIMEOUT: Duration = Duration::from_millis(400);

/// How long one probe run's answers serve every caller; short, so that readiness still turns
/// within about a second of a dependency going away.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);

/// How often the gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Most holds counted per refresh; past it the gauges say at least this many.
const MAX_HOLDS_COUNTED: usize = 100_000;

/// One dependency's answer to a probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub ready: bool,
    /// What it answered, or why it is not ready.
    pub detail: String,
}

/// The answers of PostgreSQL (with the migrations applied), Redis and the broker.
pub struct Dependencies {
    pub postgres: Probe,
    pub redis: Probe,
    pub broker: Probe,
    /// The quarantine's messages waiting for an operator: detail only, always ready (the rest
    /// settles; a replica is no less fit to serve for them).
    pub quarantine: Probe,
}

impl Dependencies {
    /// Whether the API can still answer safely from here: PostgreSQL (with this binary's
    /// migrations) is the ledger, without which nothing is read, deposited or settled. Redis
    /// and the broker do not gate: without them reads come from PostgreSQL and transfers are
    /// refused with 503 (no hold, or nothing published), which every replica sharing them
    /// would do too, so one cache's outage does not take every replica out of the balancer.
    pub fn serviceable(&self) -> bool {
        self.postgres.ready
    }

    /// Whether a dependency the API serves around (see [`Dependencies::serviceable`]) is down.
    pub fn degraded(&self) -> bool {
        !self.redis.ready || !self.broker.ready
    }

    /// Every dependency unknown, for `reason` (a probe run that ended without answers).
    fn unknown(reason: &str) -> Dependencies {
        let probe = || Probe {
            ready: false,
            detail: reason.to_string(),
        };
        Dependencies {
            postgres: probe(),
            redis: probe(),
            broker: probe(),
            quarantine: Probe {
                ready: true,
                detail: reason.to_string(),
            },
        }
    }
}

/// The dependency probes, run at most once per [`PROBE_REUSE`] whoever asks.
pub struct Probes {
    stores: Arc<Stores>,
    /// Held by the caller that waits for a run; the others wait for the lock, then take that
    /// run's answers.
    state: tokio::sync::Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    /// The last run's answers and when it ended.
    last: Option<(Instant, Arc<Dependencies>)>,
    /// The run in progress: a task of its own, so a caller that stops waiting (a client that
    /// disconnected) neither cancels it nor makes the next caller start another.
    running: Option<JoinHandle<Dependencies>>,
}

impl Probes {
    pub fn new(stores: Arc<Stores>) -> Probes {
        Probes {
            stores,
            state: tokio::sync::Mutex::new(ProbeState::default()),
        }
    }

    /// The dependencies' answers: the last run's while it is fresher than [`PROBE_REUSE`], else
    /// those of the run in progress, or of a new one.
    pub async fn dependencies(&self) -> Arc<Dependencies> {
        let mut state = self.state.lock().await;
        if state.running.is_none()
            && let Some((ended, answers)) = &state.last
            && ended.elapsed() < PROBE_REUSE
        {
            return Arc::clone(answers);
        }
        let run = state.running.get_or_insert_with(|| {
            let stores = Arc::clone(&self.stores);
            tokio::spawn(async move { probe_dependencies(&stores).await })
        });
        let answers = Arc::new(run.await.unwrap_or_else(|error| {
            Dependencies::unknown(&format!("the probe run failed: {error}"))
        }));
        state.running = None;
        state.last = Some((Instant::now(), Arc::clone(&answers)));
        answers
    }
}

/// Asks every dependency at once, each within [`PROBE_TIMEOUT`], and sets their gauges.
async fn probe_dependencies(stores: &Stores) -> Dependencies {
    metrics::counter!(PROBE_RUNS).increment(1);
    let (postgres, redis, broker, quarantine) = tokio::join!(
        probe(async {
            match stores.ledger.unapplied_migrations().await {
                Ok(0) => Ok("migrations applied".to_string()),
                Ok(missing) => Err(format!("{missing} migrations not applied")),
                Err(error) => Err(error.to_string()),
            }
        }),
        probe(async {
            stores
                .cache
                .ping()
                .await
                .map(|()| "answers".to_string())
                .map_err(|error| error.to_string())
        }),
        probe(async {
            stores
                .log
                .reachable(BROKER_METADATA_TIMEOUT)
                .await
                .map(|()| "answers, topic present".to_string())
                .map_err(|error| error.to_string())
        }),
        probe(async {
            quarantine::open_count(stores.ledger.pool())
                .await
                .map(|open| {
                    metrics::gauge!(QUARANTINE_OPEN).set(open as f64);
                    format!("{open} messages waiting (GET /admin/quarantine)")
                })
                .map_err(|error| format!("cannot count: {error}"))
        }),
    );
    // Informs, never gates: see `Dependencies::quarantine`.
    let quarantine = Probe {
        ready: true,
        ..quarantine
    };
    for (name, probe) in [
        ("postgres", &postgres),
        ("redis", &redis),
        ("broker", &broker),
    ] {
        metrics::gauge!(DEPENDENCY_UP, "dependency" => name).set(if probe.ready {
            1.0
        } else {
            0.0
        });
    }
    let dependencies = Dependencies {
        postgres,
        redis,
        broker,
        quarantine,
    };
    metrics::gauge!(READY_DEGRADED).set(if dependencies.degraded() { 1.0 } else { 0.0 });
    dependencies
}

/// Runs one probe within [`PROBE_TIMEOUT`].
async fn probe(asked: impl Future<Output = Result<String, String>>) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(Ok(detail)) => Probe {
            ready: true,
            detail,
        },
        Ok(Err(reason)) => Probe {
            ready: false,
            detail: reason,
        },
        Err(_) => Probe {
            ready: false,
            detail: format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()),
        },
    }
}

/// Refreshes the gauges every [`GAUGE_INTERVAL`] for the life of the process. A gauge whose
/// store cannot be asked keeps its last value (its dependency's gauge says why).
pub fn spawn_gauges(probes: Arc<Probes>, position: Position) {
    tokio::spawn(async move {
        let stores = &probes.stores;
        let mut currencies_held = BTreeSet::new();
        loop {
            probes.dependencies().await;
            gauge_holds(stores, &mut currencies_held).await;
            gauge_lag(&position).await;
            tokio::time::sleep(GAUGE_INTERVAL).await;
        }
    });
}

/// Holds outstanding: how many, and how much per currency (0 for a currency held before and
/// not now, so its gauge does not keep an old figure).
async fn gauge_holds(stores: &Stores, currencies_held: &mut BTreeSet<String>) {
    let Ok(held) = stores.cache.held_transfers(MAX_HOLDS_COUNTED).await else {
        return;
    };
    let mut minor_by_currency: BTreeMap<String, i64> = currencies_held
        .iter()
        .map(|currency| (currency.clone(), 0))
        .collect();
    for hold in &held {
        let total = minor_by_currency.entry(hold.currency.clone()).or_default();
        *total = total.saturating_add(hold.amount_minor);
    }
    metrics::gauge!(HOLDS_OUTSTANDING).set(held.len() as f64);
    for (currency, minor) in minor_by_currency {
        metrics::gauge!(HOLDS_OUTSTANDING_MINOR, "currency" => currency.clone()).set(minor as f64);
        currencies_held.insert(currency);
    }
}

/// Messages written to the transfer log and not settled yet.
async fn gauge_lag(position: &Position) {
    if let Ok(lag) = position.lag_messages().await {
        metrics::gauge!(SETTLEMENT_LAG_MESSAGES).set(lag as f64);
    }
}
