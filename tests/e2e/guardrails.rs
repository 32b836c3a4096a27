//! Guarded canaries: a bad candidate canaried under load on two replicas is ended on both
//! within seconds of a guardrail being crossed, once, with the reason in the history and a
//! metric, having failed no more requests than its guardrail allows; every accepted transfer
//! still settles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{ADMIN_TOKEN, Host, Namespace, guest_file, strict_guest_file};

/// Concurrent clients per replica.
const CLIENTS_PER_REPLICA: usize = 2;
/// Transfers each client sends at most.
const TRANSFERS_PER_CLIENT: usize = 150;
/// Calls a replica's window must hold before the canary's rates are judged.
const MIN_CALLS: usize = 20;
/// The longest the load runs.
const LOAD_LIMIT: Duration = Duration::from_secs(40);

/// Two replicas on one namespace, serving the standard guest, with the strict one stored.
struct Pair {
    namespace: Namespace,
    replicas: [Arc<Host>; 2],
    standard: String,
    strict: String,
}

impl Pair {
    async fn start() -> anyhow::Result<Pair> {
        let namespace = Namespace::new().await?;
        let first = Arc::new(Host::start(&namespace).await?);
        let second = Arc::new(Host::start(&namespace).await?);
        first.deposit(1, "USD", "1000000").await?;
        first.deposit(2, "USD", "1").await?;
        let standard = first.upload_guest(&guest_file()).await?;
        let strict = first.upload_guest(&strict_guest_file()).await?;
        first.activate_guest(&standard).await?;
        let pair = Pair {
            namespace,
            replicas: [first, second],
            standard,
            strict,
        };
        pair.until_both(|status| status["serving"] == pair.standard.as_str())
            .await?;
        Ok(pair)
    }

    /// Polls `GET /admin/guest` on both replicas until `done` holds for each; how long it took.
    async fn until_both(&self, done: impl Fn(&Value) -> bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for replica in &self.replicas {
            while !done(&replica.get_json("/admin/guest").await?) {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(15),
                    "a replica's guest status did not change within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(started.elapsed())
    }

    /// Starts the strict guest as a canary of half the transfers with `guardrails`, and waits
    /// until both replicas serve it.
    async fn canary(&self, guardrails: Value) -> anyhow::Result<()> {
        let response = self.replicas[0]
            .client
            .post(format!(
                "{}/admin/guest/{}/canary",
                self.replicas[0].base_url, self.strict
            ))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"percent": 50, "guardrails": guardrails}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "canary: {}", response.status());
        self.until_both(|status| status["serving_candidate"]["version"] == self.strict.as_str())
            .await?;
        Ok(())
    }
}

/// Every answer the load got: (status, deciding version, transaction id when accepted).
type Answers = Vec<(u16, String, Option<uuid::Uuid>)>;

/// Transfers from account 1 to 2 on both replicas, `body(n)` for the n-th of each client,
/// until `stop` is set or each client has sent its share.
fn load(
    pair: &Pair,
    stop: &Arc<AtomicBool>,
    body: fn(usize) -> Value,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Answers>>> {
    let mut clients = Vec::new();
    for replica in &pair.replicas {
        for _ in 0..CLIENTS_PER_REPLICA {
            let (replica, stop) = (Arc::clone(replica), Arc::clone(stop));
            clients.push(tokio::spawn(async move {
                let mut answers = Answers::new();
                let started = Instant::now();
                for n in 0..TRANSFERS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_LIMIT {
                        break;
                    }
                    let reply = replica.transfer(body(n)).await?;
                    let version = reply
                        .headers
                        .get("x-guest-version")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let id = reply.body["transaction_id"]
                        .as_str()
                        .and_then(|id| id.parse().ok())
                        .filter(|_| reply.status == 200);
                    answers.push((reply.status, version, id));
                }
                Ok(answers)
            }));
        }
    }
    clients
}

/// Waits until both replicas stop serving the canary, lets the load run on a moment, stops
/// it and returns every answer with how long after the registry recorded the end the second
/// replica stopped.
async fn until_ended(
    pair: &Pair,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<Answers>>>,
) -> anyhow::Result<(Answers, Duration)> {
    let deadline = Instant::now() + LOAD_LIMIT;
    while !pair.replicas[0].get_json("/admin/guest").await?["candidate"].is_null() {
        anyhow::ensure!(Instant::now() < deadline, "no guardrail ended the canary");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let both = pair
        .until_both(|status| status["serving_candidate"].is_null())
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Answers::new();
    for client in clients {
        answers.extend(client.await??);
    }
    Ok((answers, both))
}

/// The history's guardrail ends, newest first.
async fn guardrail_ends(host: &Host) -> anyhow::Result<Vec<Value>> {
    let status = host.get_json("/admin/guest").await?;
    Ok(status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["action"] == "end-candidate" && !row["reason"].is_null())
        .cloned()
        .collect())
}

/// The trips both replicas counted for `guardrail`.
async fn trips(pair: &Pair, guardrail: &str) -> anyhow::Result<f64> {
    let label = format!("guardrail=\"{guardrail}\"");
    let mut total = 0.0;
    for replica in &pair.replicas {
        total += replica
            .metric("transferd_guest_guardrail_trips_total", &[&label])
            .await?;
    }
    Ok(total)
}

/// Every accepted transfer settles, and the ledger's invariants hold.
async fn accepted_settle(pair: &Pair, answers: &Answers) -> anyhow::Result<()> {
    let accepted: Vec<uuid::Uuid> = answers.iter().filter_map(|(_, _, id)| *id).collect();
    let settled = pair
        .namespace
        .wait_ids_settled(&accepted, Duration::from_secs(30))
        .await?;
    assert_eq!(
        settled.len(),
        accepted.len(),
        "every accepted transfer settled"
    );
    let check = pair.namespace.check_ledger().await?;
    assert!(check.nonzero_currency_sums.is_empty(), "{check:?}");
    assert_eq!(
        (
            check.negative_accounts,
            check.unbalanced_transfers,
            check.balances_off_journal
        ),
        (0, 0, 0),
        "{check:?}"
    );
    Ok(())
}

/// Checks the one recorded end: its guardrail, its limit and that a replica recorded it.
async fn one_end(pair: &Pair, guardrail: &str, limit: f64) -> anyhow::Result<()> {
    let ends = guardrail_ends(&pair.replicas[1]).await?;
    assert_eq!(ends.len(), 1, "ended once: {ends:?}");
    let end = &ends[0];
    assert_eq!(end["version"], pair.strict.as_str(), "{end}");
    assert_eq!(end["reason"]["guardrail"], guardrail, "{end}");
    assert_eq!(end["reason"]["limit"], limit, "{end}");
    assert!(end["reason"]["observed"].as_f64() > Some(limit), "{end}");
    assert!(
        end["activated_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("guardrail on ")),
        "{end}"
    );
    assert_eq!(trips(pair, guardrail).await?, 1.0, "one trip counted");
    Ok(())
}

#[tokio::test]
async fn a_canary_that_traps_on_some_inputs_is_ended_on_both_replicas() -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let guardrails = json!({"max_trap_rate": 0.1, "min_calls": MIN_CALLS, "window_calls": 100});
    pair.canary(guardrails.clone()).await?;
    for replica in &pair.replicas {
        let status = replica.get_json("/admin/guest").await?;
        assert_eq!(status["candidate"]["guardrails"]["max_trap_rate"], 0.1);
        assert_eq!(
            status["serving_candidate"]["guardrails"]["min_calls"],
            MIN_CALLS
        );
    }
    // Every other transfer names the input the strict guest traps on; the standard accepts it.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&pair, &stop, |n| {
        let description = if n % 2 == 0 { "strict:trap" } else { "fine" };
        json!({"sender_id": 1, "receiver_id": 2, "amount": "0.01", "currency": "USD",
               "description": description})
    });
    let (answers, both) = until_ended(&pair, stop, clients).await?;
    eprintln!("both replicas stopped serving the canary {both:?} after its end was recorded");
    assert!(both < Duration::from_secs(5), "{both:?}");
    one_end(&pair, "trap_rate", 0.1).await?;

    let failed = answers.iter().filter(|(status, ..)| *status == 500).count();
    let allowance = 2 * MIN_CALLS + 2 * CLIENTS_PER_REPLICA;
    eprintln!(
        "{failed} of {} transfers failed (allowance {allowance})",
        answers.len()
    );
    assert!(failed >= 1, "the canary did trap");
    assert!(failed <= allowance, "{failed} failed, over {allowance}");
    assert!(
        answers
            .iter()
            .all(|(status, version, _)| *status == 200 || *status == 500 && *version == pair.strict),
        "only the canary's traps failed"
    );
    let last = &answers.iter().rev().take(4).collect::<Vec<_>>();
    assert!(
        last.iter()
            .all(|(status, version, _)| *status == 200 && *version == pair.standard),
        "after the end the active version decides: {last:?}"
    );
    accepted_settle(&pair, &answers).await
}

#[tokio::test]
async fn a_canary_that_refuses_what_the_active_accepts_is_ended_on_both_replicas()
-> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let guardrails =
        json!({"max_difference_rate": 0.2, "min_calls": MIN_CALLS, "window_calls": 100});
    pair.canary(guardrails).await?;
    // Every other transfer is over the strict guest's limit of 100.00.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&pair, &stop, |n| {
        let amount = if n % 2 == 0 { "150.00" } else { "0.01" };
        json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
    });
    let (answers, both) = until_ended(&pair, stop, clients).await?;
    eprintln!("both replicas stopped serving the canary {both:?} after its end was recorded");
    assert!(both < Duration::from_secs(5), "{both:?}");
    one_end(&pair, "difference_rate", 0.2).await?;

    // A refusal the active version would not have made is this canary's failure.
    let refused = answers.iter().filter(|(status, ..)| *status != 200).count();
    let allowance = 2 * MIN_CALLS + 2 * CLIENTS_PER_REPLICA;
    eprintln!(
        "{refused} of {} transfers refused (allowance {allowance})",
        answers.len()
    );
    assert!(refused >= 1, "the canary did refuse");
    assert!(refused <= allowance, "{refused} refused, over {allowance}");
    assert!(
        answers
            .iter()
            .all(|(status, version, _)| *status == 200 || *status == 422 && *version == pair.strict),
        "only the canary refused, and nothing failed"
    );
    // The comparisons are kept with the shadow report, the canary's refusal beside the active's.
    let report = pair.replicas[0]
        .get_json(&format!("/admin/guest/{}/shadow", pair.strict))
        .await?;
    let difference = &report["replica_stats"]["recent_differences"][0];
    assert_eq!(
        difference["candidate"]["err"]["invalid"][0]["code"], "less_than_equal",
        "{report}"
    );
    accepted_settle(&pair, &answers).await
}

#[tokio::test]
async fn a_canary_by_sender_shows_an_account_one_version_and_no_guardrails_is_allowed()
-> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let first = &pair.replicas[0];
    let response = first
        .client
        .post(format!(
            "{}/admin/guest/{}/canary",
            first.base_url, pair.strict
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"percent": 50, "assign": "sender", "guardrails": null}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    pair.until_both(|status| status["serving_candidate"]["version"] == pair.strict.as_str())
        .await?;
    let status = first.get_json("/admin/guest").await?;
    assert_eq!(status["candidate"]["assign"], "sender", "{status}");
    assert!(status["candidate"]["guardrails"].is_null(), "{status}");
    // Account 1's transfers all go one way on both replicas, whatever their ids.
    let mut versions = std::collections::BTreeSet::new();
    for n in 0..20 {
        let replica = &pair.replicas[n % 2];
        let reply = replica
            .transfer(
                json!({"sender_id": 1, "receiver_id": 2, "amount": "0.01", "currency": "USD"}),
            )
            .await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        versions.insert(reply.headers["x-guest-version"].to_str()?.to_string());
    }
    assert_eq!(versions.len(), 1, "{versions:?}");
    let bad = first
        .client
        .post(format!(
            "{}/admin/guest/{}/canary",
            first.base_url, pair.strict
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"percent": 50, "assign": "account"}))
        .send()
        .await?;
    assert_eq!(bad.status(), 422);
    Ok(())
}
