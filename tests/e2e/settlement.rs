//! Settlement end to end: accepted transfers become ledger entries exactly once, under load,
//! with workers killed mid-batch, with the cache and events following the ledger.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use transferd_e2e::{
    Host, HostOptions, KAFKA_BROKERS, Namespace, Random, WorkerProcess, consume_events_covering,
    consume_transfer_events,
};
use uuid::Uuid;

const SETTLE_LIMIT: Duration = Duration::from_secs(120);

fn transfer(sender_id: i64, receiver_id: i64, amount: &str) -> Value {
    json!({"sender_id": sender_id, "receiver_id": receiver_id, "amount": amount, "currency": "USD"})
}

async fn get(host: &Host, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = host
        .client
        .get(format!("{}{path}", host.base_url))
        .bearer_auth(transferd_e2e::auth::admin_token())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Polls `GET /transfers/{id}` until its status is not `pending`.
async fn settled_transfer(host: &Host, id: &str) -> anyhow::Result<Value> {
    for _ in 0..300 {
        let (status, body) = get(host, &format!("/transfers/{id}")).await?;
        anyhow::ensure!(
            status == 200,
            "GET /transfers/{id} answered {status}: {body}"
        );
        if body["status"] != "pending" {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("transfer {id} still pending")
}

fn api_only(namespace: &Namespace) -> HostOptions {
    let mut options = HostOptions::new(namespace);
    options.run_worker = false;
    options
}

#[tokio::test]
async fn an_accepted_transfer_reads_pending_until_a_worker_settles_it() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let options = api_only(&namespace);
    let host = Host::start_with(&namespace, api_only(&namespace)).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "5.00").await?;
    let reply = host.transfer(transfer(1, 2, "30.25")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.body["transaction_id"]
        .as_str()
        .expect("id")
        .to_string();

    let (status, pending) = get(&host, &format!("/transfers/{id}")).await?;
    assert_eq!(
        status, 200,
        "accepted but unsettled is never 404: {pending}"
    );
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["amount"], "30.25");
    let (_, balances) = get(&host, "/accounts/1/balances").await?;
    assert_eq!(balances["balances"][0]["balance"], "100.00");
    assert_eq!(
        balances["balances"][0]["available"], "69.75",
        "the hold is off the available balance"
    );

    let _worker = WorkerProcess::start(&namespace, &options, "worker")?;
    let settled = settled_transfer(&host, &id).await?;
    assert_eq!(settled["status"], "completed");
    assert_eq!(settled["reason"], Value::Null);
    assert_eq!(
        (
            settled["sender_id"].as_i64(),
            settled["receiver_id"].as_i64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(settled["amount_minor"], 3025);
    assert!(settled["settled_at"].is_string() && settled["created_at"].is_string());

    let (_, sender) = get(&host, "/accounts/1/balances").await?;
    assert_eq!(sender["balances"][0]["balance"], "69.75");
    assert_eq!(
        sender["balances"][0]["available"], "69.75",
        "settling released the hold"
    );
    let (_, receiver) = get(&host, "/accounts/2/balances").await?;
    assert_eq!(receiver["balances"][0]["balance_minor"], 3525);

    let events = consume_transfer_events(
        KAFKA_BROKERS,
        &format!("{}transfer_events", namespace.topic_prefix()),
        1,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["transaction_id"], id.as_str());
    assert_eq!(events[0]["status"], "completed");
    assert_eq!(events[0]["amount_minor"], 3025);

    let check = namespace.check_ledger().await?;
    assert!(check.nonzero_currency_sums.is_empty(), "{check:?}");
    assert_eq!((check.completed_transfers, check.transfer_entries), (1, 2));
    let (status, _) = get(&host, &format!("/transfers/{}", Uuid::new_v4())).await?;
    assert_eq!(status, 404);
    let (status, _) = get(&host, "/transfers/not-a-uuid").await?;
    assert_eq!(status, 422);
    Ok(())
}

#[tokio::test]
async fn the_ledger_rejects_what_a_stale_cache_let_through() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let options = api_only(&namespace);
    let host = Host::start_with(&namespace, api_only(&namespace)).await?;
    host.deposit(1, "USD", "1.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    // The cache claims 1000.00 at the ledger's own version: stale, as after a lost update.
    let mut redis = namespace.redis().await?;
    let () = redis
        .set(namespace.redis_key("balance:1:USD"), 100_000)
        .await?;
    let reply = host.transfer(transfer(1, 2, "50.00")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.body["transaction_id"]
        .as_str()
        .expect("id")
        .to_string();

    let _worker = WorkerProcess::start(&namespace, &options, "worker")?;
    let settled = settled_transfer(&host, &id).await?;
    assert_eq!(settled["status"], "rejected");
    assert_eq!(settled["reason"], "insufficient_funds");
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(100),
        "never applied"
    );
    let check = namespace.check_ledger().await?;
    assert_eq!(
        (check.rejected_transfers, check.transfer_entries),
        (1, 0),
        "{check:?}"
    );

    let events = consume_transfer_events(
        KAFKA_BROKERS,
        &format!("{}transfer_events", namespace.topic_prefix()),
        1,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "rejected");
    assert_eq!(events[0]["reason"], "insufficient_funds");
    assert_eq!(
        redis
            .get::<_, Option<i64>>(namespace.redis_key("balance:1:USD"))
            .await?,
        Some(100),
        "the cache follows the ledger"
    );
    let held: Option<i64> = redis
        .hget(namespace.redis_key("holds:1:USD"), "total")
        .await?;
    assert_eq!(held, Some(0), "the rejected transfer's hold is released");
    Ok(())
}

#[tokio::test]
async fn a_burst_of_100_from_an_account_of_100_settles_exactly_10() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Arc::new(Host::start(&namespace).await?);
    host.deposit(1, "USD", "100").await?;
    host.deposit(2, "USD", "1").await?;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let host = Arc::clone(&host);
        tasks.push(tokio::spawn(async move {
            host.transfer(transfer(1, 2, "10")).await
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        let reply = task.await??;
        match reply.status {
            200 => accepted.push(
                reply.body["transaction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            400 => {}
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(accepted.len(), 10);
    for id in &accepted {
        assert_eq!(settled_transfer(&host, id).await?["status"], "completed");
    }
    assert_eq!(namespace.ledger_balance(1, "USD").await?, Some(0));
    assert_eq!(namespace.ledger_balance(2, "USD").await?, Some(10_100));
    Ok(())
}

#[tokio::test]
async fn deposits_come_from_the_system_account_and_a_deposit_id_applies_once() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let deposit_id = Uuid::new_v4().to_string();
    let body =
        json!({"user_id": 7, "currency": "EUR", "amount": "12.34", "deposit_id": deposit_id});
    let url = format!("{}/admin/deposits", host.base_url);
    let mut replies = Vec::new();
    for _ in 0..3 {
        let response = host
            .client
            .post(&url)
            .bearer_auth(transferd_e2e::ADMIN_TOKEN)
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        replies.push(response.json::<Value>().await?);
    }
    assert_eq!(replies[0]["replayed"], false);
    assert_eq!(replies[1]["replayed"], true);
    assert_eq!(replies[2]["balance_minor"], 1234);
    assert_eq!(namespace.ledger_balance(7, "EUR").await?, Some(1234));
    assert_eq!(
        namespace.ledger_balance(0, "EUR").await?,
        Some(-1234),
        "the system account funds it"
    );

    let different =
        json!({"user_id": 7, "currency": "EUR", "amount": "1.00", "deposit_id": deposit_id});
    let response = host
        .client
        .post(&url)
        .bearer_auth(transferd_e2e::ADMIN_TOKEN)
        .json(&different)
        .send()
        .await?;
    assert_eq!(response.status(), 422, "a deposit id names one deposit");
    assert_eq!(namespace.ledger_balance(7, "EUR").await?, Some(1234));
    let (status, record) = get(&host, &format!("/transfers/{deposit_id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(
        (record["kind"].as_str(), record["status"].as_str()),
        (Some("deposit"), Some("completed"))
    );
    let check = namespace.check_ledger().await?;
    assert!(
        check.nonzero_currency_sums.is_empty() && check.unbalanced_transfers == 0,
        "{check:?}"
    );
    Ok(())
}

/// Random transfers between `users` accounts from `clients` concurrent clients; returns the
/// ids of the accepted ones. Amounts up to 30.00 against balances of 100.00, so accounts run
/// dry and many transfers are overdraft attempts.
async fn random_load(
    host: Arc<Host>,
    users: i64,
    clients: u64,
    per_client: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let host = Arc::clone(&host);
        tasks.push(tokio::spawn(async move {
            let mut random = Random::new(client + 1);
            let mut accepted = Vec::new();
            for _ in 0..per_client {
                let sender = random.between(1, users);
                let receiver = (sender + random.between(1, users - 1) - 1) % users + 1;
                let minor = random.between(1, 3_000);
                let amount = format!("{}.{:02}", minor / 100, minor % 100);
                let reply = host.transfer(transfer(sender, receiver, &amount)).await?;
                match reply.status {
                    200 => accepted.push(Uuid::parse_str(
                        reply.body["transaction_id"].as_str().unwrap_or_default(),
                    )?),
                    400 => {}
                    other => anyhow::bail!("unexpected {other}: {}", reply.body),
                }
            }
            Ok::<_, anyhow::Error>(accepted)
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await??);
    }
    Ok(accepted)
}

async fn fund(host: &Host, users: i64) -> anyhow::Result<()> {
    for user in 1..=users {
        host.deposit(user, "USD", "100.00").await?;
    }
    Ok(())
}

/// Every accepted transfer settled exactly once, money conserved, cache equal to the ledger.
async fn assert_settled_exactly_once(
    namespace: &Namespace,
    accepted: &[Uuid],
    users: i64,
) -> anyhow::Result<()> {
    let settled_count = namespace
        .wait_settled(accepted.len() as i64, SETTLE_LIMIT)
        .await?;
    assert_eq!(
        settled_count,
        accepted.len() as i64,
        "every accepted transfer settled, none twice or extra"
    );
    let settled: HashSet<Uuid> = namespace.settled_ids().await?.into_iter().collect();
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(
        accepted_set.len(),
        accepted.len(),
        "transaction ids are unique"
    );
    assert_eq!(
        settled, accepted_set,
        "the ledger holds exactly the accepted transfers"
    );

    let check = namespace.check_ledger().await?;
    assert!(
        check.nonzero_currency_sums.is_empty(),
        "money created or destroyed: {check:?}"
    );
    assert_eq!(check.negative_accounts, 0, "{check:?}");
    assert_eq!(
        check.completed_transfers + check.rejected_transfers,
        accepted.len() as i64,
        "{check:?}"
    );
    assert_eq!(
        check.transfer_entries,
        2 * check.completed_transfers,
        "{check:?}"
    );
    assert_eq!(check.unbalanced_transfers, 0, "{check:?}");
    assert_eq!(check.balances_off_journal, 0, "{check:?}");

    // The after-commit effects ran: cached balances equal the ledger, no hold is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut redis = namespace.redis().await?;
    for user in 1..=users {
        let ledger = namespace.ledger_balance(user, "USD").await?;
        let cached: Option<i64> = redis
            .get(namespace.redis_key(&format!("balance:{user}:USD")))
            .await?;
        assert_eq!(cached, ledger, "cache of user {user}");
        let held: Option<i64> = redis
            .hget(namespace.redis_key(&format!("holds:{user}:USD")), "total")
            .await?;
        assert_eq!(held.unwrap_or(0), 0, "holds of user {user}");
    }
    Ok(())
}

#[tokio::test]
async fn conservation_under_concurrent_load() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Arc::new(Host::start(&namespace).await?);
    let users = 40;
    fund(&host, users).await?;
    let accepted = random_load(Arc::clone(&host), users, 32, 625).await?;
    eprintln!("20000 transfers posted, {} accepted", accepted.len());
    assert!(
        accepted.len() > 1_000,
        "enough traffic was accepted to mean something"
    );
    assert_settled_exactly_once(&namespace, &accepted, users).await
}

#[tokio::test]
async fn workers_killed_mid_batch_lose_nothing_and_apply_nothing_twice() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let options = api_only(&namespace);
    let host = Arc::new(Host::start_with(&namespace, api_only(&namespace)).await?);
    let users = 40;
    fund(&host, users).await?;
    let mut workers = [
        WorkerProcess::start(&namespace, &options, "worker-a")?,
        WorkerProcess::start(&namespace, &options, "worker-b")?,
    ];
    let load = tokio::spawn(random_load(Arc::clone(&host), users, 32, 625));
    // Kill one worker every 700 ms while the load runs and, at least eight times in all, while
    // the backlog is being settled.
    let mut kills = 0;
    while !load.is_finished() || kills < 8 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let victim = kills % workers.len();
        workers[victim].kill();
        kills += 1;
        workers[victim] = WorkerProcess::start(&namespace, &options, &format!("worker-{kills}"))?;
    }
    let accepted = load.await??;
    eprintln!(
        "20000 transfers posted, {} accepted, {kills} workers killed",
        accepted.len()
    );
    assert!(
        kills >= 8,
        "the workers were killed during the run ({kills})"
    );
    assert_settled_exactly_once(&namespace, &accepted, users).await?;

    // Every settled transfer has its event; a batch redelivered after a kill re-emits some
    // (more than one for each transfer when the kills fall on large batches), so the reading
    // stops once every accepted transfer has one, not at a count.
    let topic = format!("{}transfer_events", namespace.topic_prefix());
    let accepted_ids: HashSet<Uuid> = accepted.iter().copied().collect();
    let events = consume_events_covering(
        KAFKA_BROKERS,
        &topic,
        &accepted_ids,
        Duration::from_secs(20),
    )
    .await?;
    let with_event: HashSet<Uuid> = events
        .iter()
        .filter_map(|event| {
            event["transaction_id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
        })
        .collect();
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    let missing: Vec<&Uuid> = accepted_set.difference(&with_event).collect();
    let foreign: Vec<&Uuid> = with_event.difference(&accepted_set).collect();
    assert!(
        missing.is_empty() && foreign.is_empty(),
        "an event for every accepted transfer and none other: {} of {} without one \
         ({:?}…), {} events of transfers not accepted ({:?}…), {} events read",
        missing.len(),
        accepted_set.len(),
        &missing[..missing.len().min(3)],
        foreign.len(),
        &foreign[..foreign.len().min(3)],
        events.len()
    );
    eprintln!("{} events for {} transfers", events.len(), accepted.len());
    Ok(())
}

#[tokio::test]
async fn bad_ids_and_deposit_ids_get_clear_errors_and_change_nothing() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    for (path, status) in [
        ("/accounts/0/balances", 422),
        ("/accounts/abc/balances", 422),
        ("/accounts/424242/balances", 404),
    ] {
        assert_eq!(get(&host, path).await?.0, status, "{path}");
    }
    let url = format!("{}/admin/deposits", host.base_url);
    let response = host
        .client
        .post(&url)
        .bearer_auth(transferd_e2e::ADMIN_TOKEN)
        .json(&json!({"user_id": 3, "currency": "USD", "amount": "5", "deposit_id": "not-a-uuid"}))
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await?;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "deposit_id"]));
    assert_eq!(
        namespace.ledger_balance(3, "USD").await?,
        None,
        "nothing was deposited"
    );
    Ok(())
}
