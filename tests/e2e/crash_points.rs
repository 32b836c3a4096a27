//! Deterministic crashes: the host built with the `crash-points` feature SIGKILLs itself at
//! one named step of a transfer's life (see host/src/crash.rs); the release binary then starts
//! on the same namespace, and the invariants must hold as if nothing had happened: every
//! transfer answered 200 settled exactly once, money conserved per currency, no user negative,
//! two journal entries per applied transfer, balances equal to their journals, no hold left on
//! a settled transfer, cached balances equal to the ledger.
//!
//! The timed worker kills in settlement.rs may or may not land between a commit and the
//! offset commit; these always do.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use transferd_e2e::{
    Host, HostOptions, KAFKA_BROKERS, Namespace, WorkerProcess, consume_transfer_events,
    crash_binary, killed_by_sigkill, log_tail, transferd_binary,
};
use uuid::Uuid;

/// Each test's whole run, crash and recovery included.
const TEST_LIMIT: Duration = Duration::from_secs(150);
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const USERS: i64 = 4;

/// How long the hold reconciler (running every second, judging holds older than
/// [`RECONCILE_MIN_AGE_MS`]) may take to release a stranded hold.
const RECONCILER_LIMIT: Duration = Duration::from_secs(60);
const RECONCILE_MIN_AGE_MS: u64 = 6_000;

/// Short timeouts so the reconciler may judge a hold a few seconds old: the minimum age must
/// exceed the guest's timeout, which must exceed two Kafka timeouts and a database one.
fn with_quick_reconciler(mut options: HostOptions) -> HostOptions {
    options.kafka_timeout_ms = 1_000;
    for (name, value) in [
        ("TRANSFERD_GUEST_TIMEOUT_MS", "5000".to_string()),
        ("TRANSFERD_RECONCILE_INTERVAL_MS", "1000".to_string()),
        (
            "TRANSFERD_RECONCILE_MIN_AGE_MS",
            RECONCILE_MIN_AGE_MS.to_string(),
        ),
        ("TRANSFERD_RECONCILE_WAIT_MS", "5000".to_string()),
    ] {
        options.extra_env.push((name.to_string(), value));
    }
    options
}

fn transfer(sender_id: i64, receiver_id: i64, amount: &str) -> Value {
    json!({"sender_id": sender_id, "receiver_id": receiver_id, "amount": amount, "currency": "USD"})
}

/// The n-th transfer of a test: senders in turn, amounts all different; every third one
/// pending (two-phase), so each crash window also holds reservations.
fn nth_transfer(n: i64) -> (i64, i64, Value) {
    let sender = n % USERS + 1;
    let receiver = sender % USERS + 1;
    let minor = 101 + n;
    let amount = format!("{}.{:02}", minor / 100, minor % 100);
    let mut body = transfer(sender, receiver, &amount);
    if n % 3 == 2 {
        body["phase"] = json!("pending");
        body["expires_in_s"] = json!(3_600);
    }
    (sender, minor, body)
}

async fn fund(host: &Host) -> anyhow::Result<()> {
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000.00").await?;
    }
    Ok(())
}

fn transaction_id(body: &Value) -> anyhow::Result<Uuid> {
    let id = body["transaction_id"]
        .as_str()
        .with_context(|| format!("no transaction id in {body}"))?;
    Ok(Uuid::parse_str(id)?)
}

/// The crash-points binary with the point armed: it lets `skip` passes go by, then dies.
fn armed(options: &HostOptions, point: &str, skip: u32) -> HostOptions {
    let mut armed = options.clone();
    armed.binary = crash_binary();
    armed
        .extra_env
        .push(("TRANSFERD_CRASH_AT".to_string(), point.to_string()));
    armed
        .extra_env
        .push(("TRANSFERD_CRASH_SKIP".to_string(), skip.to_string()));
    armed
}

/// The process died by its own SIGKILL at `point`, not of anything else.
fn ensure_crashed_at(
    status: Option<std::process::ExitStatus>,
    log: &std::path::Path,
    point: &str,
) -> anyhow::Result<()> {
    let status = status.with_context(|| {
        format!(
            "transferd never reached crash point {point}; log:\n{}",
            log_tail(log, 30)
        )
    })?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    ensure!(
        killed_by_sigkill(&status) && text.contains(&format!("crash point {point}")),
        "transferd ended with {status}, not at crash point {point}; log:\n{}",
        log_tail(log, 30)
    );
    Ok(())
}

/// Everything a user or an auditor would check once the dust settled, for the transfers
/// answered 200 (`accepted`), with `extra` more that may settle (their answer was lost).
async fn ensure_invariants(
    namespace: &Namespace,
    accepted: &[Uuid],
    extra: usize,
) -> anyhow::Result<()> {
    let settled = namespace.wait_ids_settled(accepted, SETTLE_LIMIT).await?;
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    ensure!(
        settled == accepted_set,
        "{} of {} transfers answered 200 settled within {SETTLE_LIMIT:?}",
        settled.len(),
        accepted.len()
    );
    let all = namespace.settled_ids().await?;
    ensure!(
        all.len() <= accepted.len() + extra,
        "{} transfers settled; only {} were answered 200 and {extra} unanswered",
        all.len(),
        accepted.len()
    );
    let check = namespace.check_ledger().await?;
    ensure!(
        check.nonzero_currency_sums.is_empty(),
        "money created or destroyed: {check:?}"
    );
    ensure!(check.negative_accounts == 0, "negative balances: {check:?}");
    ensure!(
        check.unbalanced_transfers == 0 && check.transfer_entries == 2 * check.completed_transfers,
        "transfers without exactly two journal entries: {check:?}"
    );
    ensure!(
        check.balances_off_journal == 0,
        "balances differ from their journal: {check:?}"
    );
    ensure!(
        check.pending_off == 0,
        "pending amounts differ from the pending transfers: {check:?}"
    );
    let all_settled: HashSet<String> = all.iter().map(Uuid::to_string).collect();
    let holds = namespace.holds().await?;
    let on_settled: Vec<_> = holds
        .iter()
        .filter(|held| all_settled.contains(&held.transaction_id))
        .collect();
    ensure!(
        on_settled.is_empty(),
        "holds remain on settled transfers: {on_settled:?}"
    );
    let off = namespace.cache_off_ledger().await?;
    ensure!(
        off.is_empty(),
        "cached balances differ from the ledger: {off:?}"
    );
    Ok(())
}

/// A crash on the request path (`serve` with its worker): five transfers go through, the
/// sixth kills the process at `point`; the release binary takes over the same namespace.
/// Returns the transfers answered 200 and the unanswered one (sender, minor units).
async fn crash_while_accepting(
    namespace: &Namespace,
    point: &str,
) -> anyhow::Result<(Vec<Uuid>, (i64, i64), Host)> {
    let release = with_quick_reconciler(HostOptions::new(namespace));
    let mut crashing = Host::start_with(namespace, armed(&release, point, 5)).await?;
    fund(&crashing).await?;
    let mut accepted = Vec::new();
    let mut unanswered = None;
    for n in 0..20 {
        let (sender, minor, body) = nth_transfer(n);
        match crashing.transfer(body).await {
            Ok(reply) => {
                ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
                accepted.push(transaction_id(&reply.body)?);
            }
            Err(_) => {
                unanswered = Some((sender, minor));
                break;
            }
        }
    }
    let status = crashing.wait_exit(Duration::from_secs(10)).await;
    ensure_crashed_at(status, &crashing.log_path, point)?;
    ensure!(
        accepted.len() == 5,
        "five transfers pass the point before the crash, not {}",
        accepted.len()
    );
    let unanswered = unanswered.context("a request went unanswered")?;
    let host = Host::start_on(namespace, release, crashing.port).await?;
    Ok((accepted, unanswered, host))
}

async fn bounded(test: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .context("the test exceeded its time limit")?
}

#[tokio::test]
async fn a_crash_after_the_hold_publishes_nothing_and_strands_only_that_hold() -> anyhow::Result<()>
{
    bounded(async {
        let namespace = Namespace::new().await?;
        let (accepted, (sender, minor), _host) =
            crash_while_accepting(&namespace, "after-hold").await?;
        // Never produced, so it must never settle: give settlement time to prove it.
        ensure_invariants(&namespace, &accepted, 0).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settled = namespace.settled_ids().await?;
        ensure!(
            settled.len() == accepted.len(),
            "the transfer that crashed before its produce settled anyway"
        );

        // Its hold stays for now; it is the only one left.
        let holds = namespace.holds().await?;
        ensure!(
            holds.len() <= 1,
            "only the unanswered transfer's hold may remain: {holds:?}"
        );
        if let Some(held) = holds.first() {
            ensure!(
                (held.user_id, held.amount_minor) == (sender, minor),
                "the stranded hold is the unanswered transfer's ({sender}, {minor}): {held:?}"
            );
        }
        // The reconciler releases it: old enough, the log consumed, not in the ledger.
        let deadline = tokio::time::Instant::now() + RECONCILER_LIMIT;
        while !namespace.holds().await?.is_empty() {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the reconciler did not release the stranded hold within {RECONCILER_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_crash_after_the_produce_settles_the_unanswered_transfer_once() -> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let (accepted, _, _host) = crash_while_accepting(&namespace, "after-produce").await?;
        // The broker acknowledged the sixth transfer: it is money in the log and must settle,
        // once, although its sender never heard so.
        ensure_invariants(&namespace, &accepted, 1).await?;
        let total = namespace
            .wait_settled(accepted.len() as i64 + 1, SETTLE_LIMIT)
            .await?;
        ensure!(
            total == accepted.len() as i64 + 1,
            "{total} transfers settled; the acknowledged one must settle too ({} expected)",
            accepted.len() + 1
        );
        ensure_invariants(&namespace, &accepted, 1).await?;
        ensure!(
            namespace.holds().await?.is_empty(),
            "settling the unanswered transfer released its hold"
        );
        Ok(())
    })
    .await
}

/// Messages per settlement batch in these tests: 30 transfers make at least three batches,
/// so the crash (after the first batch) lands midway.
const BATCH: &str = "10";
const QUEUED: i64 = 30;

/// After a crash in settlement: what was accepted, what had settled at the crash, and the
/// processes that carry on (killed when dropped, at the end of the test).
struct AfterCrash {
    accepted: Vec<Uuid>,
    settled_at_crash: HashSet<Uuid>,
    _host: Host,
    _worker: WorkerProcess,
}

/// A crash in the settlement worker: 30 transfers are accepted with no worker running, then
/// a crash-points worker settles the first batch and dies at `point` in the second; a release
/// worker takes over.
async fn crash_while_settling(namespace: &Namespace, point: &str) -> anyhow::Result<AfterCrash> {
    let mut api = HostOptions::new(namespace);
    api.run_worker = false;
    api.extra_env
        .push(("TRANSFERD_SETTLEMENT_BATCH".to_string(), BATCH.to_string()));
    let host = Host::start_with(namespace, api.clone()).await?;
    fund(&host).await?;
    let mut accepted = Vec::new();
    for n in 0..QUEUED {
        let reply = host.transfer(nth_transfer(n).2).await?;
        ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
        accepted.push(transaction_id(&reply.body)?);
    }
    let mut crashing = WorkerProcess::start(namespace, &armed(&api, point, 1), "crashing")?;
    let status = crashing.wait_exit(SETTLE_LIMIT).await;
    ensure_crashed_at(status, &crashing.log_path, point)?;
    let settled_at_crash = namespace.settled_among(&accepted).await?;
    ensure!(
        !settled_at_crash.is_empty() && settled_at_crash.len() < accepted.len(),
        "the crash lands midway: {} of {} settled before it",
        settled_at_crash.len(),
        accepted.len()
    );
    let worker = WorkerProcess::start(namespace, &api, "release")?;
    Ok(AfterCrash {
        accepted,
        settled_at_crash,
        _host: host,
        _worker: worker,
    })
}

/// Holds left right after a crash on transfers the ledger had already settled.
async fn holds_on(namespace: &Namespace, settled: &HashSet<Uuid>) -> anyhow::Result<usize> {
    let ids: HashSet<String> = settled.iter().map(Uuid::to_string).collect();
    Ok(namespace
        .holds()
        .await?
        .iter()
        .filter(|held| ids.contains(&held.transaction_id))
        .count())
}

/// How often `transfer_events` reports each accepted transfer, read until every one is there
/// and at least `at_least` reports were read (or nothing more comes: an error). Events follow
/// the ledger commit by a moment, a redelivered batch is reported twice, and the topic's
/// partitions are read in no set order, so a second report can come after every transfer was
/// seen once: a caller that expects one says how many reports to wait for.
async fn reports(
    namespace: &Namespace,
    accepted: &[Uuid],
    at_least: usize,
) -> anyhow::Result<HashMap<Uuid, usize>> {
    let topic = format!("{}transfer_events", namespace.topic_prefix());
    let accepted: HashSet<Uuid> = accepted.iter().copied().collect();
    let mut wanted = accepted.len().max(at_least);
    loop {
        let events =
            consume_transfer_events(KAFKA_BROKERS, &topic, wanted, Duration::from_secs(20)).await?;
        let mut counts: HashMap<Uuid, usize> = HashMap::new();
        for id in events
            .iter()
            .filter_map(|event| event["transaction_id"].as_str())
            .filter_map(|id| Uuid::parse_str(id).ok())
        {
            *counts.entry(id).or_default() += 1;
        }
        let ids: HashSet<Uuid> = counts.keys().copied().collect();
        if ids == accepted && events.len() >= at_least {
            return Ok(counts);
        }
        ensure!(
            events.len() >= wanted && ids.is_subset(&accepted),
            "events for {} of {} settled transfers ({} reports, {} for unknown transfers, \
             {at_least} awaited)",
            ids.intersection(&accepted).count(),
            accepted.len(),
            events.len(),
            ids.difference(&accepted).count()
        );
        wanted = (events.len() + accepted.difference(&ids).count()).max(at_least);
    }
}

#[tokio::test]
async fn a_crash_after_the_ledger_commit_changes_nothing_twice() -> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let after = crash_while_settling(&namespace, "after-ledger-commit").await?;
        let accepted = &after.accepted;
        // The window was hit: the crashed batch is in the ledger, its holds still in Redis.
        ensure!(
            holds_on(&namespace, &after.settled_at_crash).await? > 0,
            "the crash came after the cache update, not before it"
        );
        ensure_invariants(&namespace, accepted, 0).await?;
        reports(&namespace, accepted, accepted.len()).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_crash_after_the_cache_update_changes_nothing_twice() -> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let after = crash_while_settling(&namespace, "after-cache-update").await?;
        let accepted = &after.accepted;
        ensure!(
            holds_on(&namespace, &after.settled_at_crash).await? == 0,
            "the cache update released the settled transfers' holds before the crash"
        );
        ensure_invariants(&namespace, accepted, 0).await?;
        reports(&namespace, accepted, accepted.len()).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_crash_after_the_events_before_the_offset_commit_changes_nothing_twice()
-> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let after = crash_while_settling(&namespace, "after-events").await?;
        let accepted = &after.accepted;
        ensure!(
            holds_on(&namespace, &after.settled_at_crash).await? == 0,
            "the cache update released the settled transfers' holds before the crash"
        );
        ensure_invariants(&namespace, accepted, 0).await?;
        // The crashed batch's offsets were never committed: it came again, and its events
        // with it (consumers dedupe by transaction id); the ledger applied it once.
        // Wait for one report more than there are transfers: the repeat may be read last.
        let crashed = &after.settled_at_crash;
        let reports = reports(&namespace, accepted, accepted.len() + 1).await?;
        let twice: HashSet<Uuid> = reports
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(id, _)| *id)
            .collect();
        ensure!(
            !twice.is_empty(),
            "no transfer was reported twice: the crashed batch was not redelivered"
        );
        ensure!(
            twice.is_subset(crashed),
            "transfers outside the crashed batch were reported again: {} of {} reported \
             more than once",
            twice.difference(crashed).count(),
            twice.len()
        );
        ensure!(
            reports.values().all(|count| *count <= 2),
            "a transfer was reported more than twice: {reports:?}"
        );
        Ok(())
    })
    .await
}

/// A crash after a post is recorded and before it is published: the client heard nothing,
/// the transfer stays pending, and a later pass publishes the recorded post, which settles
/// once: the posted amount moves and the rest is released.
#[tokio::test]
async fn a_crash_after_a_post_is_recorded_posts_it_once() -> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let release = with_quick_reconciler(HostOptions::new(&namespace));
        let point = "after-action-recorded";
        let mut crashing = Host::start_with(&namespace, armed(&release, point, 0)).await?;
        fund(&crashing).await?;
        let (_, _, body) = nth_transfer(2);
        let reply = crashing.transfer(body).await?;
        ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
        let id = transaction_id(&reply.body)?;
        namespace.wait_ids_settled(&[id], SETTLE_LIMIT).await?;
        let token = transferd_e2e::auth::user_token(3);
        let post = crashing
            .post_as(
                &format!("/transfers/{id}/post"),
                &json!({"amount": "0.50"}),
                &token,
            )
            .await;
        ensure!(post.is_err(), "the post was answered: {post:?}");
        let status = crashing.wait_exit(Duration::from_secs(10)).await;
        ensure_crashed_at(status, &crashing.log_path, point)?;
        let host = Host::start_on(&namespace, release, crashing.port).await?;
        let deadline = std::time::Instant::now() + RECONCILER_LIMIT;
        let shown = loop {
            let shown = host.get_as(&format!("/transfers/{id}"), &token).await?;
            if shown.body["status"] == "posted" || std::time::Instant::now() >= deadline {
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ensure!(
            shown.body["status"] == "posted" && shown.body["posted_amount"] == "0.50",
            "the recorded post settled: {}",
            shown.body
        );
        ensure_invariants(&namespace, &[id], 0).await?;
        let again = host
            .post_as(&format!("/transfers/{id}/void"), &json!({}), &token)
            .await?;
        ensure!(again.status == 409, "{} {}", again.status, again.body);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_release_binary_has_no_crash_points() -> anyhow::Result<()> {
    bounded(async {
        let bytes = std::fs::read(transferd_binary())?;
        let needle = b"TRANSFERD_CRASH_AT";
        ensure!(
            !bytes.windows(needle.len()).any(|window| window == needle),
            "the release binary knows TRANSFERD_CRASH_AT"
        );
        // And armed, it does not crash.
        let namespace = Namespace::new().await?;
        let mut options = HostOptions::new(&namespace);
        options.extra_env.push((
            "TRANSFERD_CRASH_AT".to_string(),
            "after-produce".to_string(),
        ));
        let mut host = Host::start_with(&namespace, options).await?;
        fund(&host).await?;
        for n in 0..3 {
            let reply = host.transfer(nth_transfer(n).2).await?;
            ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
        }
        ensure!(host.is_running(), "the release binary crashed");
        Ok(())
    })
    .await
}

/// A batch of three transfers from user 1, in the order the crash tests send it.
fn three_transfers() -> Value {
    json!({"transfers": [transfer(1, 2, "1.01"), transfer(1, 3, "2.02"), transfer(1, 4, "3.03")]})
}

/// A crash on a batch's path: the crash-points host dies at `point` on the first batch it
/// sends (keyed `key`); the release binary takes over the same namespace.
async fn crash_on_a_batch(namespace: &Namespace, point: &str, key: &str) -> anyhow::Result<Host> {
    let release = with_quick_reconciler(HostOptions::new(namespace));
    let mut crashing = Host::start_with(namespace, armed(&release, point, 0)).await?;
    fund(&crashing).await?;
    let sent = crashing
        .post_with_key("/transfers/batch", &three_transfers(), key)
        .await;
    ensure!(
        sent.is_err(),
        "the batch was answered: {:?}",
        sent.map(|r| r.body)
    );
    let status = crashing.wait_exit(Duration::from_secs(10)).await;
    ensure_crashed_at(status, &crashing.log_path, point)?;
    Host::start_on(namespace, release, crashing.port).await
}

#[tokio::test]
async fn a_crash_after_a_batchs_holds_publishes_nothing_and_its_holds_are_released()
-> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let _host = crash_on_a_batch(&namespace, "after-batch-hold", "batch-crash-1").await?;
        ensure_invariants(&namespace, &[], 0).await?;
        let holds = namespace.holds().await?;
        ensure!(holds.len() <= 3, "only the batch's holds remain: {holds:?}");
        let deadline = tokio::time::Instant::now() + RECONCILER_LIMIT;
        while !namespace.holds().await?.is_empty() {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the reconciler did not release the batch's holds within {RECONCILER_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(
            namespace.settled_ids().await?.is_empty(),
            "a batch never produced settled"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_batch_acknowledged_before_a_crash_settles_once_and_its_retry_says_so()
-> anyhow::Result<()> {
    bounded(async {
        let namespace = Namespace::new().await?;
        let host = crash_on_a_batch(&namespace, "after-produce", "batch-crash-2").await?;
        // The key's claim lapses with its lease; the retry then finds the batch in the ledger.
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        let retried = loop {
            let reply = host
                .post_with_key("/transfers/batch", &three_transfers(), "batch-crash-2")
                .await?;
            if reply.status == 200 && reply.body["results"][2]["status"] == "accepted" {
                break reply;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the retry never answered the batch accepted: {} {}",
                reply.status,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let ids = retried.body["results"]
            .as_array()
            .context("results")?
            .iter()
            .map(transaction_id)
            .collect::<anyhow::Result<Vec<Uuid>>>()?;
        ensure_invariants(&namespace, &ids, 0).await?;
        ensure!(
            namespace.settled_ids().await?.len() == 3,
            "each transfer of the batch settles once"
        );
        ensure!(namespace.holds().await?.is_empty(), "no hold is left");
        Ok(())
    })
    .await
}
