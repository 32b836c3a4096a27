//! The provenance of every transfer the guest decided: the decision recorded as the
//! conformance vector it is (context, request, the answers the imports gave, and the outcome
//! with every import call in order and the exact message bytes), so it can be replayed under
//! the version that made it and a candidate can be backtested on it (`backtest`).
//!
//! The request path only hands a decision to a bounded queue ([`Recorder::record`]); a task
//! turns each batch into vectors and writes it in one statement (`stores::provenance`). A full
//! queue drops the decision and counts it rather than slow a request; decisions queued when
//! the process dies are lost. Another task deletes decisions older than the retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::mpsc;
use transferd_guest::logic::{Accepted, Imports, Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;
use transferd_guest::vectors::{Replay, Vector, VectorError, canonical, outcome};
use uuid::Uuid;

use crate::capabilities::{ImportCall, RecordedAnswers};
use crate::guest::registry::{Registry, RegistryError};
use crate::guest::runtime::{GuestEngine, GuestFailure, GuestLimits, LoadError};
use crate::guest::shadow;
use crate::stores::provenance::{self as store, DELETE_CHUNK_ROWS, StoredDecision};

/// Decisions waiting to be written; past this a decision is dropped (and counted).
pub const QUEUE_DECISIONS: usize = 10_000;

/// Most decisions written in one statement.
const BATCH_ROWS: usize = 500;

/// How often decisions older than the retention are deleted.
const RETENTION_PASS: Duration = Duration::from_secs(60);

/// One decision as the request path hands it over; the writer makes its vector.
#[derive(Debug)]
pub struct Decision {
    pub context: RequestContext,
    pub request: TransferRequest,
    /// The WIT package of the version that decided.
    pub wit_package: &'static str,
    pub result: Result<Accepted, Rejection>,
    pub answers: RecordedAnswers,
    pub decided_at: DateTime<Utc>,
}

impl Decision {
    /// Its row, or `None` when its transaction id is not a UUID (the API mints only UUIDs).
    fn row(&self) -> Option<StoredDecision> {
        Some(StoredDecision {
            transaction_id: Uuid::parse_str(&self.context.transaction_id).ok()?,
            decided_at: self.decided_at,
            guest_version: self.context.guest_version.clone(),
            wit_package: self.wit_package.to_string(),
            vector: vector_text(self).ok()?,
        })
    }
}

/// A vector file (tests/vectors/README.md) whose `expected` is what the live call did.
#[derive(Serialize)]
struct Document<'a> {
    name: &'a str,
    about: &'static str,
    invariant: bool,
    wit_package: &'a str,
    context: Value,
    request: RequestFields<'a>,
    imports: Value,
    expected: Value,
}

/// The request in the vectors' spelling, its metadata entries in the order the guest got them.
#[derive(Serialize)]
struct RequestFields<'a> {
    sender_id: i64,
    receiver_id: i64,
    amount: &'a str,
    currency: &'a str,
    description: Option<&'a str>,
    phase: Option<&'a str>,
    expires_in_s: Option<i64>,
    #[serde(serialize_with = "entries")]
    metadata: &'a [(String, String)],
}

fn entries<S: serde::Serializer>(
    pairs: &&[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}

/// The decision's vector as JSON text.
fn vector_text(decision: &Decision) -> serde_json::Result<String> {
    let (context, request) = (&decision.context, &decision.request);
    let imports = shadow::imports_of(&decision.answers);
    let calls = calls_of(&decision.answers, &imports);
    serde_json::to_string(&Document {
        name: &context.transaction_id,
        about: "a decision recorded by transferd",
        invariant: false,
        wit_package: decision.wit_package,
        context: json!({
            "transaction_id": context.transaction_id,
            "received_at_ms": context.received_at_ms,
            "principal": context.principal,
            "guest_version": context.guest_version,
        }),
        request: RequestFields {
            sender_id: request.sender_id,
            receiver_id: request.receiver_id,
            amount: &request.amount,
            currency: &request.currency,
            description: request.description.as_deref(),
            phase: request.phase.as_deref(),
            expires_in_s: request.expires_in_s,
            metadata: &request.metadata,
        },
        imports,
        expected: outcome(&decision.result, &calls),
    })
}

/// The live call's import calls in the order it made them, in the vectors' spelling: made
/// again on a [`Replay`] of its answers, so they are written exactly as a replay writes them.
fn calls_of(answers: &RecordedAnswers, imports: &Value) -> Vec<Value> {
    let mut replay = Replay::new(imports);
    let (mut lookups, mut accounts) = (answers.lookups.iter(), answers.accounts.iter());
    for call in &answers.order {
        match call {
            ImportCall::Available => {
                if let Some((account_id, currency, _)) = lookups.next() {
                    let _answer = replay.available(*account_id, currency);
                }
            }
            ImportCall::Account => {
                if let Some((account_id, currency, _)) = accounts.next() {
                    let _answer = replay.account(*account_id, currency);
                }
            }
            ImportCall::Send => {
                if let Some(message) = &answers.send {
                    let _answer = replay.send(message.clone());
                }
            }
        }
    }
    replay.calls
}

/// Where the request path hands its decisions; off when the retention is 0.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    queue: Option<mpsc::Sender<Decision>>,
}

impl Recorder {
    /// Records nothing.
    pub fn off() -> Recorder {
        Recorder::default()
    }

    /// Starts the writer and the retention task; `retention` 0 records nothing.
    pub fn start(pool: &PgPool, retention: Duration) -> Recorder {
        if retention.is_zero() {
            return Recorder::off();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_DECISIONS);
        tokio::spawn(write(pool.clone(), receiver));
        tokio::spawn(trim(pool.clone(), retention));
        Recorder {
            queue: Some(sender),
        }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a decision to be written; never waits.
    pub fn record(&self, decision: Decision) {
        if let Some(queue) = &self.queue
            && queue.try_send(decision).is_err()
        {
            dropped("queue_full", 1);
        }
    }
}

/// Counts decisions not recorded, by `reason`.
fn dropped(reason: &'static str, count: usize) {
    metrics::counter!(crate::metrics::PROVENANCE_DROPPED, "reason" => reason)
        .increment(count as u64);
}

/// Writes the queued decisions, a batch per statement, until the queue closes.
async fn write(pool: PgPool, mut queue: mpsc::Receiver<Decision>) {
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while queue.recv_many(&mut batch, BATCH_ROWS).await > 0 {
        let rows: Vec<StoredDecision> = batch.drain(..).filter_map(|d| d.row()).collect();
        if let Err(error) = store::insert(&pool, &rows).await {
            tracing::warn!(%error, decisions = rows.len(), "could not record decisions' provenance");
            dropped("write_failed", rows.len());
        }
    }
}

/// Deletes decisions older than `retention`, a chunk at a time, every [`RETENTION_PASS`].
async fn trim(pool: PgPool, retention: Duration) {
    let mut passes = tokio::time::interval(RETENTION_PASS);
    loop {
        passes.tick().await;
        let Ok(age) = chrono::Duration::from_std(retention) else {
            return;
        };
        let before = Utc::now() - age;
        loop {
            match store::delete_before(&pool, before).await {
                Ok(deleted) if deleted >= DELETE_CHUNK_ROWS as u64 => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "could not delete old decisions' provenance");
                    break;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "no decision is recorded for transaction {0} (never decided, refused before the guest ran, part of a batch, or past the retention)"
    )]
    NotRecorded(Uuid),
    #[error("reading the recorded decision: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the recorded decision is unreadable: {0}")]
    Unreadable(#[from] VectorError),
    #[error("the version that decided: {0}")]
    Registry(#[from] RegistryError),
    #[error("loading the version that decided: {0}")]
    Load(#[from] LoadError),
}

/// A recorded decision and the same decision made again.
#[derive(Debug)]
pub struct Replayed {
    pub stored: StoredDecision,
    pub vector: Vector,
    /// The outcome recorded at the time.
    pub recorded: Value,
    /// The outcome of the replay, or why it has none.
    pub replayed: Result<Value, GuestFailure>,
}

impl Replayed {
    /// Whether the replay made exactly the recorded calls, bytes included, and result.
    pub fn identical(&self) -> bool {
        self.replayed
            .as_ref()
            .is_ok_and(|replayed| canonical(replayed) == canonical(&self.recorded))
    }
}

/// The recorded decision of `transaction_id` and its vector.
pub async fn recorded(
    pool: &PgPool,
    transaction_id: Uuid,
) -> Result<(StoredDecision, Vector), ReplayError> {
    let stored = store::get(pool, transaction_id)
        .await?
        .ok_or(ReplayError::NotRecorded(transaction_id))?;
    let vector = Vector::parse(&transaction_id.to_string(), &stored.vector)?;
    Ok((stored, vector))
}

/// Decides `transaction_id` again under the version that decided it, with the answers its
/// imports gave then.
pub async fn replay(
    pool: &PgPool,
    engine: &Arc<GuestEngine>,
    transaction_id: Uuid,
) -> Result<Replayed, ReplayError> {
    let (stored, vector) = recorded(pool, transaction_id).await?;
    let bytes = Registry::new(pool.clone())
        .bytes(&stored.guest_version)
        .await?;
    let guest = engine.load(&bytes)?;
    let replayed = guest.run_vector(&vector).await;
    Ok(Replayed {
        recorded: vector.expected.clone().unwrap_or(Value::Null),
        stored,
        vector,
        replayed,
    })
}

/// The limits a replay outside serve runs under: serve's defaults, one call at a time.
pub fn replay_limits() -> GuestLimits {
    GuestLimits {
        timeout: Duration::from_secs(15),
        memory_bytes: 64 * 1024 * 1024,
        concurrency: 1,
        reuse_count: 1,
        compiled_cache: None,
        fuel_budget: crate::config::DEFAULT_GUEST_FUEL_BUDGET,
    }
}

/// The message bytes a recorded outcome sent, if it sent one.
pub fn message_of(outcome: &Value) -> Option<&str> {
    outcome["calls"]
        .as_array()?
        .iter()
        .find_map(|call| call["send"]["payload"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use transferd_guest::logic::{Hold, Outgoing};

    fn decision(answers: RecordedAnswers) -> Decision {
        Decision {
            context: RequestContext {
                transaction_id: Uuid::nil().to_string(),
                received_at_ms: 1,
                principal: Some(1),
                guest_version: "v".into(),
            },
            request: TransferRequest {
                sender_id: 1,
                receiver_id: 2,
                amount: "1.00".into(),
                currency: "USD".into(),
                metadata: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
                ..TransferRequest::default()
            },
            wit_package: "0.2.0",
            result: Ok(Accepted {
                transaction_id: Uuid::nil().to_string(),
                amount_minor: 100,
            }),
            answers,
            decided_at: Utc::now(),
        }
    }

    #[test]
    fn a_recorded_decision_is_a_vector_with_its_calls_in_order() {
        let message = Outgoing {
            topic: "t".into(),
            key: "1".into(),
            payload: br#"{"amount_minor":100}"#.to_vec(),
            hold: Some(Hold {
                account_id: 1,
                currency: "USD".into(),
                amount_minor: 100,
            }),
        };
        let account = transferd_guest::spending::Account {
            available: Some(500),
            ..Default::default()
        };
        let answers = RecordedAnswers {
            lookups: vec![
                (2, "USD".into(), Ok(Some(0))),
                (1, "USD".into(), Ok(Some(500))),
            ],
            accounts: vec![(1, "USD".into(), Ok(account))],
            publish: Some(json!("ok")),
            send: Some(message),
            // The send between the lookups, the account after them: the order is the live
            // call's, not each import's calls together.
            order: vec![
                ImportCall::Available,
                ImportCall::Send,
                ImportCall::Available,
                ImportCall::Account,
            ],
        };
        let text = vector_text(&decision(answers)).expect("a vector");
        let vector = Vector::parse("recorded", &text).expect("readable as a vector");
        assert_eq!(
            vector.request.metadata,
            vec![("z".into(), "1".into()), ("a".into(), "2".into())]
        );
        let expected = vector.expected.clone().expect("an outcome");
        let calls: Vec<&str> = expected["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter_map(|call| call.as_object()?.keys().next().map(String::as_str))
            .collect();
        assert_eq!(calls, ["available", "send", "available", "account"]);
        assert_eq!(message_of(&expected), Some(r#"{"amount_minor":100}"#));
        assert_eq!(expected["result"]["ok"]["amount_minor"], json!(100));
        assert_eq!(
            vector.replay().available(1, "USD"),
            Ok(Some(500)),
            "the imports answer as they did"
        );
    }
}
