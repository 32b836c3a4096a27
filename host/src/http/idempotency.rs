//! `Idempotency-Key` on `POST /transfers` and `POST /admin/deposits`.
//!
//! A handler asks [`start`] before it acts: without a key it gets a fresh transaction id; with
//! one it gets the key's transaction id (the same for every repeat, so a retry after an
//! unknown outcome republishes the same id and settlement applies it once), or an answer to
//! give instead: the first request's answer replayed (`Idempotent-Replayed: true`), 422 when
//! the key was used with another body, 409 while the first request is still in flight. After
//! acting, [`finish`] records a final answer (2xx or 4xx: it changed what it changed, or
//! nothing); a 5xx leaves the key to the next retry. Keys are scoped to the caller and kept in
//! PostgreSQL (`stores::idempotency`).
//!
//! A request acts on its key only while its claim stands ([`KeyLease`]): its answer is stored,
//! and its 5xx frees the key, only for the claim generation it took, and the decision gets
//! the lease to fence its guest slot, its publish and its releases with.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use uuid::Uuid;

use crate::http::App;
use crate::http::error::{ApiError, Reply, json_response};
use crate::stores::idempotency::{Answer, Claim, KeyLease, parse_key, request_hash};

pub const KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A key this request holds; its answer is recorded against it.
pub struct HeldKey {
    scope: String,
    key: String,
    request_hash: Vec<u8>,
    transaction_id: Uuid,
    /// An earlier attempt with this key did not record an answer.
    retry: bool,
    lease: KeyLease,
}

impl HeldKey {
    /// True when an earlier attempt with this key ran and recorded no answer: it may have
    /// done what it was asked all the same.
    pub fn is_retry(&self) -> bool {
        self.retry
    }

    /// This request's claim on the key.
    pub fn lease(&self) -> &KeyLease {
        &self.lease
    }
}

/// What the handler does next.
pub enum Start {
    /// Act with this transaction id, then [`finish`] with `held`.
    Proceed {
        transaction_id: Uuid,
        held: Option<HeldKey>,
    },
    /// Answer this instead: the first request's answer, replayed.
    Replay(Reply),
}

/// Claims the request's key, if it has one. `scope` names the caller; `route` and the JSON
/// `body` are what the key is bound to.
pub async fn start(
    app: &App,
    headers: &HeaderMap,
    scope: String,
    route: &str,
    body: &[u8],
) -> Result<Start, ApiError> {
    let Some(raw) = headers.get(KEY_HEADER) else {
        return Ok(Start::Proceed {
            transaction_id: Uuid::now_v7(),
            held: None,
        });
    };
    let key = parse_key(raw.as_bytes())?;
    // The body was read and checked as JSON already; a body that is not JSON never gets here.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let hash = request_hash(route, &value);
    // Before the statement: the lease PostgreSQL counts starts after this.
    let claimed_at = Instant::now();
    let claim = app
        .idempotency
        .claim(&scope, key, &hash, Uuid::now_v7(), app.idempotency_lease)
        .await?;
    let claimed = Claimed {
        scope,
        key: key.to_string(),
        request_hash: hash,
        at: claimed_at,
    };
    claimed.start(app, claim)
}

/// A key this request claimed, before it knows what the claim found.
struct Claimed {
    scope: String,
    key: String,
    request_hash: Vec<u8>,
    at: Instant,
}

impl Claimed {
    /// What the handler does next, from what the claim found.
    fn start(self, app: &App, claim: Claim) -> Result<Start, ApiError> {
        match claim {
            Claim::Owned {
                transaction_id,
                retry,
                generation,
            } => {
                if retry {
                    tracing::info!(%transaction_id, "retrying an unfinished request under its idempotency key");
                }
                let lease = KeyLease::new(
                    app.idempotency.clone(),
                    self.scope.clone(),
                    self.key.clone(),
                    generation,
                    self.at,
                    app.idempotency_lease,
                    app.guest_timeout,
                );
                let held = HeldKey {
                    scope: self.scope,
                    key: self.key,
                    request_hash: self.request_hash,
                    transaction_id,
                    retry,
                    lease,
                };
                Ok(Start::Proceed {
                    transaction_id,
                    held: Some(held),
                })
            }
            Claim::Replay { status, body, .. } => Ok(Start::Replay(replayed(status, &body))),
            Claim::Mismatch => Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used with a different request".into(),
            )),
            Claim::InFlight => Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still being processed; retry later".into(),
            )),
        }
    }
}

/// The first request's answer, again.
fn replayed(status: u16, body: &serde_json::Value) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut reply = json_response(status, body);
    reply
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    metrics::counter!(crate::metrics::IDEMPOTENT_REPLAYS).increment(1);
    reply
}

/// Records `reply` against the held key and gives it back: a final answer is kept and
/// replayed to repeats; a 5xx frees the key for the next retry (same transaction id).
pub async fn finish(app: &App, held: Option<HeldKey>, reply: Reply) -> Reply {
    let Some(held) = held else {
        return reply;
    };
    if reply.status().is_server_error() {
        if let Err(error) = held.lease.abandon().await {
            // The key frees itself when its lease ends.
            tracing::warn!(%error, "could not free an idempotency key after a 5xx");
        }
        return reply;
    }
    let (parts, body) = reply.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let stored = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let answer = Answer {
        scope: held.scope,
        key: held.key,
        request_hash: held.request_hash,
        transaction_id: held.transaction_id,
        generation: held.lease.generation(),
        status: parts.status.as_u16(),
        body: stored,
    };
    if let Err(error) = app.idempotency.finish(answer).await {
        // Not recorded: a repeat after the lease runs the request again with the same
        // transaction id, which settles once.
        tracing::warn!(%error, "could not record an idempotent answer");
    }
    http::Response::from_parts(parts, Full::new(bytes))
}

/// How long a request holds its key: longer than any request can take once it has a guest
/// slot (a decision that waits for one longer than `lease - guest_timeout` gives up, see
/// `guest::runtime`).
pub fn lease(guest_timeout: Duration, kafka_timeout: Duration) -> Duration {
    guest_timeout + kafka_timeout + Duration::from_secs(5)
}
