//! Steady transfer load for the fault tests and the soak, and the checks a payments engineer
//! would run afterwards.
//!
//! Clients post small random transfers among funded accounts and record every answer with
//! when it was sent and answered. Faults (a dependency stopped, transferd killed) are recorded
//! as windows; [`verify`] then says which answers fell inside an outage, whether every
//! accepted transfer settled exactly once, and whether the ledger still adds up.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{Namespace, Random};

/// The longest a client waits for one answer: above the host's Kafka and database timeouts,
/// so a slow answer is still an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// After a fault's first accepted transfer, answers still in flight may carry the outage's
/// errors (they were decided before it ended); this much later everything must be normal.
const RECOVERY_SLACK: Duration = Duration::from_secs(2);

pub struct LoadSettings {
    pub base_url: String,
    /// Accounts 1..=users in USD, all funded beforehand.
    pub users: i64,
    pub clients: u64,
    /// Largest amount, in minor units.
    pub max_minor: i64,
    /// Stop after this many requests in all (the soak); none: until stopped.
    pub requests: Option<u64>,
    pub seed: u64,
    /// Mix in two-phase transfers: every fourth transfer pending, each then posted (in part)
    /// or voided by its sender's client, or left to expire within seconds.
    pub two_phase: bool,
    /// Mix in batches: every fifth request a `POST /transfers/batch` of [`BATCH_SIZE`]
    /// transfers from one sender; each transfer it accepts must settle exactly once.
    pub batches: bool,
}

/// Transfers in each batch the load sends.
pub const BATCH_SIZE: usize = 5;

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transfer,
    /// A two-phase transfer, to be posted or voided (`expires` false) or left to expire.
    Pending {
        expires: bool,
    },
    /// A post or void of the pending transfer `of`.
    Act {
        of: Uuid,
        post: bool,
    },
    /// A batch of [`BATCH_SIZE`] transfers.
    Batch,
}

/// What a client got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// The connection was refused: the request never reached transferd.
    Refused,
    /// Sent, but no answer (connection dropped, or no answer within [`REQUEST_TIMEOUT`]): the
    /// transfer may or may not have been accepted.
    Lost(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    pub answered: Instant,
    pub answer: Answer,
    /// From a 200, or from a 503 whose outcome is unknown (`"status":"unknown"`).
    pub transaction_id: Option<Uuid>,
    /// A 503 saying the publish is in doubt: it may settle, at most once.
    pub in_doubt: bool,
    pub kind: Kind,
    /// A batch's transfers accepted (from a 200), or all it may have published (in doubt).
    pub items: Vec<Uuid>,
}

impl Outcome {
    /// Every transfer this request was answered accepted (or in doubt) for.
    pub fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.transaction_id
            .into_iter()
            .chain(self.items.iter().copied())
    }
}

/// Running clients; every outcome is kept in arrival order.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Load {
    pub fn start(settings: LoadSettings) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(AtomicU64::new(0));
        let settings = Arc::new(settings);
        let mut tasks = Vec::new();
        for client in 0..settings.clients {
            let http = reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?;
            let context = ClientContext {
                settings: Arc::clone(&settings),
                stop: Arc::clone(&stop),
                outcomes: Arc::clone(&outcomes),
                issued: Arc::clone(&issued),
                http,
            };
            tasks.push(tokio::spawn(run_client(context, client)));
        }
        Ok(Load {
            stop,
            outcomes,
            tasks,
        })
    }

    /// Whether every client is done (the request count is reached).
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    pub fn answered(&self) -> usize {
        self.lock().len()
    }

    /// Requests answered 200 so far.
    pub fn accepted(&self) -> usize {
        self.lock()
            .iter()
            .filter(|outcome| outcome.answer == Answer::Status(200))
            .count()
    }

    /// Waits until a request sent at or after `since` is answered 200; returns when.
    pub async fn wait_accepted_after(&self, since: Instant, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let first = self
                .lock()
                .iter()
                .rev()
                .filter(|outcome| outcome.sent >= since && outcome.answer == Answer::Status(200))
                .map(|outcome| outcome.answered)
                .min();
            if first.is_some() || Instant::now() >= deadline {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the clients (requests in flight finish) and returns every outcome.
    pub async fn stop(self) -> anyhow::Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await??;
        }
        let outcomes = std::mem::take(&mut *self.outcomes.lock().expect("outcomes lock"));
        Ok(outcomes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Outcome>> {
        self.outcomes.lock().expect("outcomes lock")
    }
}

struct ClientContext {
    settings: Arc<LoadSettings>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    issued: Arc<AtomicU64>,
    http: reqwest::Client,
}

async fn run_client(context: ClientContext, client: u64) -> anyhow::Result<()> {
    let settings = &context.settings;
    let mut random = Random::new(settings.seed * 1_000 + client + 1);
    let url = format!("{}/transfers", settings.base_url);
    let mut next_act: Option<(Kind, Value)> = None;
    while !context.stop.load(Ordering::SeqCst) {
        let number = context.issued.fetch_add(1, Ordering::SeqCst);
        if settings.requests.is_some_and(|requests| number >= requests) {
            break;
        }
        let (kind, body) = match next_act.take() {
            Some(act) => act,
            None if settings.batches && number % 5 == 4 => {
                (Kind::Batch, random_batch(&mut random, settings))
            }
            None => {
                let body = random_transfer(&mut random, settings.users, settings.max_minor);
                two_phase_or_not(&mut random, settings.two_phase && number % 4 == 3, body)
            }
        };
        let target = match kind {
            Kind::Act { of, post } => format!("{url}/{of}/{}", if post { "post" } else { "void" }),
            Kind::Batch => format!("{url}/batch"),
            _ => url.clone(),
        };
        let outcome = post(&context.http, &target, &body, kind).await;
        next_act = follow_up(&outcome, &body);
        let refused = outcome.answer == Answer::Refused;
        context
            .outcomes
            .lock()
            .expect("outcomes lock")
            .push(outcome);
        if refused {
            // transferd is down: do not spin while it starts again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// A transfer between two different funded accounts, 0.01 to `max_minor` minor units.
fn random_transfer(random: &mut Random, users: i64, max_minor: i64) -> Value {
    let sender = random.between(1, users);
    let receiver = (sender + random.between(1, users - 1) - 1) % users + 1;
    let minor = random.between(1, max_minor);
    let amount = format!("{}.{:02}", minor / 100, minor % 100);
    json!({"sender_id": sender, "receiver_id": receiver, "amount": amount, "currency": "USD"})
}

/// A batch of [`BATCH_SIZE`] random transfers from one random sender.
fn random_batch(random: &mut Random, settings: &LoadSettings) -> Value {
    let first = random_transfer(random, settings.users, settings.max_minor);
    let sender = first["sender_id"].as_i64().unwrap_or(1);
    let transfers: Vec<Value> = std::iter::once(first)
        .chain((1..BATCH_SIZE).map(|_| {
            let mut next = random_transfer(random, settings.users, settings.max_minor);
            next["sender_id"] = json!(sender);
            if next["receiver_id"] == sender {
                next["receiver_id"] = json!(sender % settings.users + 1);
            }
            next
        }))
        .collect();
    json!({"transfers": transfers})
}

/// `body` as a pending transfer when `pending`: one in three of them left to expire in a
/// second, the others to be acted on.
fn two_phase_or_not(random: &mut Random, pending: bool, mut body: Value) -> (Kind, Value) {
    if !pending {
        return (Kind::Transfer, body);
    }
    let expires = random.between(1, 3) == 1;
    body["phase"] = json!("pending");
    body["expires_in_s"] = json!(if expires { 1 } else { 3_600 });
    (Kind::Pending { expires }, body)
}

/// After a pending transfer meant to be acted on is accepted, its sender's next request: a
/// post of 0.01 (the rest released) or a void, alternately by its id.
fn follow_up(outcome: &Outcome, body: &Value) -> Option<(Kind, Value)> {
    let (Kind::Pending { expires: false }, Answer::Status(200), Some(of)) =
        (outcome.kind, &outcome.answer, outcome.transaction_id)
    else {
        return None;
    };
    let post = of.as_u128() % 2 == 0;
    let sender = body["sender_id"].clone();
    let action = match post {
        true => json!({"amount": "0.01", "sender_id_for_token": sender}),
        false => json!({"sender_id_for_token": sender}),
    };
    Some((Kind::Act { of, post }, action))
}

async fn post(http: &reqwest::Client, url: &str, body: &Value, kind: Kind) -> Outcome {
    let sent = Instant::now();
    let token = match kind {
        Kind::Act { .. } => {
            crate::auth::user_token(body["sender_id_for_token"].as_i64().unwrap_or(0))
        }
        _ => crate::auth::token_for_body(&body.to_string()),
    };
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.remove("sender_id_for_token");
    }
    let (answer, reply) = match http.post(url).bearer_auth(token).json(&body).send().await {
        Err(error) if error.is_connect() => (Answer::Refused, Value::Null),
        Err(error) => (Answer::Lost(error.to_string()), Value::Null),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(text) => (
                    Answer::Status(status),
                    serde_json::from_str(&text).unwrap_or(Value::Null),
                ),
                Err(error) => (Answer::Lost(error.to_string()), Value::Null),
            }
        }
    };
    let in_doubt = answer == Answer::Status(503) && reply["status"] == "unknown";
    // An action names the transfer it acts on, which its own outcome does not count as.
    let transaction_id = reply["transaction_id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .filter(|_| answer == Answer::Status(200) || in_doubt)
        .filter(|_| !matches!(kind, Kind::Act { .. }));
    Outcome {
        sent,
        answered: Instant::now(),
        items: batch_items(&answer, &reply, in_doubt),
        answer,
        transaction_id,
        in_doubt,
        kind,
    }
}

/// A batch's transfers answered accepted (200), or every one it may have published (503 in
/// doubt); none for any other answer.
fn batch_items(answer: &Answer, reply: &Value, in_doubt: bool) -> Vec<Uuid> {
    let read = |id: &Value| id.as_str().and_then(|id| Uuid::parse_str(id).ok());
    if in_doubt {
        let ids = reply["transaction_ids"].as_array();
        return ids
            .map(|ids| ids.iter().filter_map(read).collect())
            .unwrap_or_default();
    }
    let (Answer::Status(200), Some(results)) = (answer, reply["results"].as_array()) else {
        return Vec::new();
    };
    results
        .iter()
        .filter(|result| result["status"] == "accepted")
        .filter_map(|result| read(&result["transaction_id"]))
        .collect()
}

/// The run in `step`-long slices by send time, one line each: answers, 200s per second, and
/// answer time p50/p99/max. Shows when the rate fell or answers slowed, beside the faults.
pub fn timeline(outcomes: &[Outcome], started: Instant, step: Duration) -> String {
    let mut slices: BTreeMap<u64, Vec<&Outcome>> = BTreeMap::new();
    for outcome in outcomes {
        let slice =
            outcome.sent.saturating_duration_since(started).as_secs() / step.as_secs().max(1);
        slices.entry(slice).or_default().push(outcome);
    }
    let mut lines = String::new();
    for (slice, answers) in slices {
        let mut millis: Vec<u128> = answers
            .iter()
            .map(|outcome| outcome.answered.duration_since(outcome.sent).as_millis())
            .collect();
        millis.sort_unstable();
        let at = |quantile: f64| millis[((millis.len() - 1) as f64 * quantile) as usize];
        let ok = answers
            .iter()
            .filter(|outcome| outcome.answer == Answer::Status(200))
            .count();
        let from = slice * step.as_secs().max(1);
        lines.push_str(&format!(
            "  {from:>5} s: {:>6} answers, {:>5.0} ok/s, answer ms p50 {} p99 {} max {}\n",
            answers.len(),
            ok as f64 / step.as_secs_f64(),
            at(0.5),
            at(0.99),
            at(1.0),
        ));
    }
    lines
}

/// One fault the test caused.
#[derive(Debug, Clone)]
pub struct Fault {
    pub name: String,
    /// transferd itself was killed: refused and lost connections are expected inside.
    pub kills_transferd: bool,
    pub started: Instant,
    /// The service (or transferd) was running again.
    pub restarted: Instant,
    /// The first transfer sent after the restart was accepted (none: it never recovered).
    pub recovered: Option<Instant>,
}

impl Fault {
    /// Answers overlapping this span fell inside the outage.
    fn window(&self, end_of_run: Instant) -> (Instant, Instant) {
        let end = self
            .recovered
            .map_or(end_of_run, |recovered| recovered + RECOVERY_SLACK);
        (self.started, end)
    }

    fn contains(&self, outcome: &Outcome, end_of_run: Instant) -> bool {
        let (start, end) = self.window(end_of_run);
        outcome.sent <= end && outcome.answered >= start
    }
}

/// What the checks found: figures, and every broken invariant in words.
#[derive(Debug, Default)]
pub struct Verdict {
    pub requests: usize,
    pub accepted: usize,
    pub insufficient: usize,
    pub unavailable: usize,
    pub in_doubt: usize,
    pub refused: usize,
    pub lost: usize,
    pub accepted_settled: usize,
    /// Transfers (not posts or voids) answered 200.
    pub accepted_transfers: usize,
    pub in_doubt_settled: usize,
    /// Settled transfers nobody was told about (requests lost in flight).
    pub unattributed_settled: usize,
    pub completed: i64,
    pub rejected: i64,
    /// Holds of transfers that never settled: released later by the reconciler.
    pub stranded_holds: usize,
    /// Two-phase transfers accepted, and their ends: (posted, voided, expired).
    pub pending_accepted: usize,
    pub pending_ends: (usize, usize, usize),
    pub faults: Vec<String>,
    pub violations: Vec<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests {}: accepted (200) {}, insufficient funds (400) {}, 503 {} (in doubt {}), refused {}, lost in flight {}",
            self.requests,
            self.accepted,
            self.insufficient,
            self.unavailable,
            self.in_doubt,
            self.refused,
            self.lost
        )?;
        writeln!(
            f,
            "settled: {} of {} accepted transfers, {} of {} in doubt, {} unattributed; ledger {} completed, {} rejected",
            self.accepted_settled,
            self.accepted_transfers,
            self.in_doubt_settled,
            self.in_doubt,
            self.unattributed_settled,
            self.completed,
            self.rejected
        )?;
        writeln!(
            f,
            "holds of unsettled transfers left for the reconciler: {}",
            self.stranded_holds
        )?;
        let (posted, voided, expired) = self.pending_ends;
        writeln!(
            f,
            "two-phase: {} accepted; posted {posted}, voided {voided}, expired {expired}",
            self.pending_accepted
        )?;
        for fault in &self.faults {
            writeln!(f, "fault: {fault}")?;
        }
        if self.violations.is_empty() {
            writeln!(f, "every invariant holds")
        } else {
            writeln!(f, "{} invariants broken:", self.violations.len())?;
            for violation in &self.violations {
                writeln!(f, "  - {violation}")?;
            }
            Ok(())
        }
    }
}

/// Checks everything after the load stopped and the services run again. `settle_limit`
/// bounds the wait for settlement; `base_url` is a running host, asked about accepted
/// transfers as a client would.
pub async fn verify(
    namespace: &Namespace,
    outcomes: &[Outcome],
    faults: &[Fault],
    settle_limit: Duration,
    base_url: &str,
) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::default();
    count_answers(&mut verdict, outcomes);
    check_answers_against_faults(&mut verdict, outcomes, faults);
    describe_faults(&mut verdict, faults);
    check_settlement(&mut verdict, namespace, outcomes, faults, settle_limit).await?;
    check_two_phase(&mut verdict, namespace, outcomes, settle_limit).await?;
    check_ledger(&mut verdict, namespace).await?;
    check_holds(&mut verdict, namespace).await?;
    check_reads(&mut verdict, outcomes, base_url).await?;
    Ok(verdict)
}

fn count_answers(verdict: &mut Verdict, outcomes: &[Outcome]) {
    verdict.requests = outcomes.len();
    for outcome in outcomes {
        match &outcome.answer {
            Answer::Status(200) => verdict.accepted += 1,
            Answer::Status(400) => verdict.insufficient += 1,
            Answer::Status(503) => verdict.unavailable += 1,
            Answer::Status(_) => {}
            Answer::Refused => verdict.refused += 1,
            Answer::Lost(_) => verdict.lost += 1,
        }
        if outcome.in_doubt {
            verdict.in_doubt += 1;
        }
    }
}

/// Only 503 (or, while transferd is dead, no answer) inside an outage; only 200 and 400
/// outside. Broken answers are grouped by kind, with the first example of each.
fn check_answers_against_faults(verdict: &mut Verdict, outcomes: &[Outcome], faults: &[Fault]) {
    let end_of_run = outcomes
        .iter()
        .map(|outcome| outcome.answered)
        .max()
        .unwrap_or_else(Instant::now);
    let start = outcomes
        .iter()
        .map(|outcome| outcome.sent)
        .min()
        .unwrap_or_else(Instant::now);
    let mut broken: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for outcome in outcomes {
        let inside: Vec<&Fault> = faults
            .iter()
            .filter(|fault| fault.contains(outcome, end_of_run))
            .collect();
        let transferd_dead = inside.iter().any(|fault| fault.kills_transferd);
        let allowed = match &outcome.answer {
            Answer::Status(200 | 400) => true,
            Answer::Status(503) => !inside.is_empty(),
            Answer::Refused | Answer::Lost(_) => transferd_dead,
            Answer::Status(_) => false,
        };
        if !allowed {
            let place = match inside.first() {
                Some(fault) => format!("during {}", fault.name),
                None => "outside every outage".to_string(),
            };
            let answer = match &outcome.answer {
                Answer::Status(status) => status.to_string(),
                Answer::Refused => "refused".to_string(),
                Answer::Lost(_) => "lost".to_string(),
            };
            let example = format!(
                "sent at {:.1}s: {:?}",
                outcome.sent.duration_since(start).as_secs_f64(),
                outcome.answer
            );
            let entry = broken
                .entry(format!("{answer} {place}"))
                .or_insert((0, example));
            entry.0 += 1;
        }
    }
    for (kind, (count, example)) in broken {
        verdict
            .violations
            .push(format!("{count} answers {kind} (first {example})"));
    }
}

fn describe_faults(verdict: &mut Verdict, faults: &[Fault]) {
    for fault in faults {
        let down = fault.restarted.duration_since(fault.started);
        match fault.recovered {
            Some(recovered) => verdict.faults.push(format!(
                "{}: down {:.1}s, first accepted transfer {:.2}s after the restart",
                fault.name,
                down.as_secs_f64(),
                recovered.duration_since(fault.restarted).as_secs_f64()
            )),
            None => {
                verdict.faults.push(format!(
                    "{}: down {:.1}s, never recovered",
                    fault.name,
                    down.as_secs_f64()
                ));
                verdict.violations.push(format!(
                    "transferd accepted no transfer after {} ended",
                    fault.name
                ));
            }
        }
    }
}

/// Every 200 settles exactly once; an in-doubt 503 at most once; nothing settles that no
/// request could have caused.
async fn check_settlement(
    verdict: &mut Verdict,
    namespace: &Namespace,
    outcomes: &[Outcome],
    faults: &[Fault],
    settle_limit: Duration,
) -> anyhow::Result<()> {
    let accepted: Vec<Uuid> = ids(outcomes, |outcome| outcome.answer == Answer::Status(200));
    let in_doubt: Vec<Uuid> = ids(outcomes, |outcome| outcome.in_doubt);
    let unique: HashSet<Uuid> = accepted.iter().copied().collect();
    if unique.len() != accepted.len() {
        verdict.violations.push(format!(
            "{} transaction ids answered 200 more than once",
            accepted.len() - unique.len()
        ));
    }
    let settled = namespace.wait_ids_settled(&accepted, settle_limit).await?;
    verdict.accepted_settled = settled.len();
    verdict.accepted_transfers = accepted.len();
    let missing: Vec<&Outcome> = outcomes
        .iter()
        .filter(|outcome| {
            outcome.answer == Answer::Status(200) && outcome.ids().any(|id| !settled.contains(&id))
        })
        .collect();
    if !missing.is_empty() {
        verdict.violations.push(format!(
            "{} transfers answered 200 never settled (within {settle_limit:?}); {}",
            missing.len(),
            when_relative_to_faults(&missing, faults)
        ));
    }
    verdict.in_doubt_settled = namespace.settled_among(&in_doubt).await?.len();

    let all_settled: HashSet<Uuid> = namespace.settled_ids().await?.into_iter().collect();
    let known: HashSet<Uuid> = accepted.iter().chain(&in_doubt).copied().collect();
    verdict.unattributed_settled = all_settled.difference(&known).count();
    // A lost batch may have published each of its transfers.
    let lost_transfers: usize = outcomes
        .iter()
        .filter(|outcome| matches!(outcome.answer, Answer::Lost(_)))
        .map(|outcome| match outcome.kind {
            Kind::Batch => BATCH_SIZE,
            _ => 1,
        })
        .sum();
    if verdict.unattributed_settled > lost_transfers {
        verdict.violations.push(format!(
            "{} settled transfers were never answered 200 or in doubt, but only {lost_transfers} transfers were lost in flight",
            verdict.unattributed_settled
        ));
    }
    Ok(())
}

/// Every post or void answered 200 ends its transfer posted or voided, every pending transfer
/// left alone ends expired, and none stays pending (within `settle_limit`).
async fn check_two_phase(
    verdict: &mut Verdict,
    namespace: &Namespace,
    outcomes: &[Outcome],
    settle_limit: Duration,
) -> anyhow::Result<()> {
    let mut wanted: BTreeMap<Uuid, &'static str> = BTreeMap::new();
    for outcome in outcomes {
        match (outcome.kind, &outcome.answer, outcome.transaction_id) {
            (Kind::Pending { expires: true }, Answer::Status(200), Some(id)) => {
                wanted.insert(id, "expired");
            }
            (Kind::Act { of, post }, Answer::Status(200), _) => {
                wanted.insert(of, if post { "posted" } else { "voided" });
            }
            _ => {}
        }
    }
    verdict.pending_accepted = outcomes
        .iter()
        .filter(|o| matches!(o.kind, Kind::Pending { .. }) && o.answer == Answer::Status(200))
        .count();
    let ids: Vec<Uuid> = wanted.keys().copied().collect();
    let deadline = Instant::now() + settle_limit;
    let pool = namespace.ledger().await?;
    let statuses = loop {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT transaction_id, status FROM transfers WHERE transaction_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await?;
        let statuses: BTreeMap<Uuid, String> = rows.into_iter().collect();
        let done = wanted
            .iter()
            .all(|(id, want)| statuses.get(id).is_some_and(|s| s == want));
        if done || Instant::now() >= deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ends: Vec<(i64, String)> = sqlx::query_as(
        "SELECT COUNT(*), status FROM transfers WHERE expires_at IS NOT NULL GROUP BY status",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let count = |status: &str| {
        ends.iter()
            .find(|(_, s)| s == status)
            .map_or(0, |(n, _)| *n as usize)
    };
    verdict.pending_ends = (count("posted"), count("voided"), count("expired"));
    let off: Vec<String> = wanted
        .iter()
        .filter(|(id, want)| statuses.get(id).is_none_or(|s| s != *want))
        .map(|(id, want)| format!("{id}: wanted {want}, is {:?}", statuses.get(id)))
        .collect();
    if !off.is_empty() {
        verdict.violations.push(format!(
            "{} two-phase transfers did not end as answered (within {settle_limit:?}), e.g. {}",
            off.len(),
            off[0]
        ));
    }
    Ok(())
}

fn ids(outcomes: &[Outcome], keep: impl Fn(&Outcome) -> bool) -> Vec<Uuid> {
    outcomes
        .iter()
        .filter(|outcome| keep(outcome))
        .flat_map(Outcome::ids)
        .collect()
}

/// For lost transfers: how many were answered within a second before each fault started.
fn when_relative_to_faults(missing: &[&Outcome], faults: &[Fault]) -> String {
    let mut parts = Vec::new();
    for fault in faults {
        let just_before = missing
            .iter()
            .filter(|outcome| {
                outcome.answered <= fault.started
                    && fault.started.duration_since(outcome.answered) <= Duration::from_secs(1)
            })
            .count();
        let during = missing
            .iter()
            .filter(|outcome| outcome.answered > fault.started && outcome.sent <= fault.restarted)
            .count();
        parts.push(format!(
            "{just_before} answered in the second before {}, {during} during it",
            fault.name
        ));
    }
    parts.join("; ")
}

async fn check_ledger(verdict: &mut Verdict, namespace: &Namespace) -> anyhow::Result<()> {
    let check = namespace.check_ledger().await?;
    verdict.completed = check.completed_transfers;
    verdict.rejected = check.rejected_transfers;
    if !check.nonzero_currency_sums.is_empty() {
        verdict.violations.push(format!(
            "money created or destroyed: balances sum to {:?}",
            check.nonzero_currency_sums
        ));
    }
    if check.negative_accounts != 0 {
        verdict.violations.push(format!(
            "{} user balances are negative",
            check.negative_accounts
        ));
    }
    if check.unbalanced_transfers != 0 || check.transfer_entries != 2 * check.completed_transfers {
        verdict.violations.push(format!(
            "{} transfers without exactly two balancing journal entries ({} entries for {} completed)",
            check.unbalanced_transfers, check.transfer_entries, check.completed_transfers
        ));
    }
    if check.balances_off_journal != 0 {
        verdict.violations.push(format!(
            "{} balances differ from the sum of their journal entries",
            check.balances_off_journal
        ));
    }
    if check.pending_off != 0 {
        verdict.violations.push(format!(
            "{} accounts' pending amounts differ from their pending transfers",
            check.pending_off
        ));
    }
    let off = namespace.cache_off_ledger().await?;
    if !off.is_empty() {
        verdict.violations.push(format!(
            "{} cached balances differ from the ledger, e.g. {:?}",
            off.len(),
            off.first()
        ));
    }
    Ok(())
}

/// No hold may remain on a settled transfer. Holds of transfers that never settled (a crash
/// after the hold, a publish in doubt) are stranded until the reconciler releases them: they
/// are counted, not failed, until it exists.
async fn check_holds(verdict: &mut Verdict, namespace: &Namespace) -> anyhow::Result<()> {
    let holds = namespace.holds().await?;
    let ids: Vec<Uuid> = holds
        .iter()
        .filter_map(|held| Uuid::parse_str(&held.transaction_id).ok())
        .collect();
    let settled = namespace.settled_among(&ids).await?;
    let on_settled = ids.iter().filter(|id| settled.contains(id)).count();
    if on_settled > 0 {
        verdict
            .violations
            .push(format!("{on_settled} holds remain on settled transfers"));
    }
    verdict.stranded_holds = holds.len() - on_settled;
    Ok(())
}

/// `GET /transfers/{id}` of accepted transfers, as an admin would ask: never 404. A sample of
/// at most 200, spread over the run.
async fn check_reads(
    verdict: &mut Verdict,
    outcomes: &[Outcome],
    base_url: &str,
) -> anyhow::Result<()> {
    let accepted = ids(outcomes, |outcome| outcome.answer == Answer::Status(200));
    let step = (accepted.len() / 200).max(1);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let mut not_found = 0;
    let mut asked = 0;
    for id in accepted.iter().step_by(step) {
        let response = client
            .get(format!("{base_url}/transfers/{id}"))
            .bearer_auth(crate::auth::admin_token())
            .send()
            .await?;
        asked += 1;
        if response.status() == 404 {
            not_found += 1;
        }
    }
    if not_found > 0 {
        verdict.violations.push(format!(
            "GET /transfers/{{id}} answered 404 for {not_found} of {asked} accepted transfers"
        ));
    }
    Ok(())
}
