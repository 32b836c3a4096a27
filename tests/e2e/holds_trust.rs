//! A 200 promises that the transfer settles, and only the holds serialise concurrent spends
//! from one account. While Redis is down no hold can be taken, and after it comes back empty
//! its holds are not trusted until settlement has consumed the log (`holds_trusted`): in both
//! cases transfers are refused (503) and reads are served. Each test runs a private
//! `redis-server` of its own that it really stops and starts (the shared one is never touched).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use transferd_e2e::{Host, HostOptions, Namespace, WorkerProcess, free_port};
use uuid::Uuid;

const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long the service may take to accept again by itself once it can.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
const CONCURRENT: usize = 12;

/// A `redis-server` without persistence on a free port, as the compose file's Redis: a
/// restart brings it back empty.
struct PrivateRedis {
    port: u16,
    server: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> anyhow::Result<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port(),
            server: None,
        };
        redis.start_again().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty) on its port.
    async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.server.is_none(), "already running");
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.server = Some(server);
        self.wait_listening(true).await
    }

    /// SIGKILL: gone at once with everything it held.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill()?;
            server.wait()?;
        }
        self.wait_listening(false).await
    }

    async fn wait_listening(&self, listening: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let open = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok();
            if open == listening {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("redis-server on {} never became {listening}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn transfer(amount: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
}

/// `CONCURRENT` transfers of `amount` from user 1 at once: the ids answered 200. Every other
/// answer must be 503 (not accepted) or 400 (the ledger's balance does not cover it).
async fn at_once(host: &Host, amount: &str) -> anyhow::Result<Vec<Uuid>> {
    let replies =
        futures::future::join_all((0..CONCURRENT).map(|_| host.transfer(transfer(amount)))).await;
    let mut accepted = Vec::new();
    for reply in replies {
        let reply = reply?;
        match reply.status {
            200 => accepted.push(Uuid::parse_str(
                reply.body["transaction_id"].as_str().unwrap_or_default(),
            )?),
            400 | 503 => {}
            other => anyhow::bail!("unexpected {other}: {}", reply.body),
        }
    }
    Ok(accepted)
}

/// Waits until every one of `ids` is settled and checks each completed (none was rejected by
/// settlement for want of funds).
async fn all_complete(namespace: &Namespace, ids: &[Uuid]) -> anyhow::Result<()> {
    let settled = namespace.wait_ids_settled(ids, SETTLE_LIMIT).await?;
    anyhow::ensure!(
        settled.len() == ids.len(),
        "{} of {} accepted transfers settled within {SETTLE_LIMIT:?}",
        settled.len(),
        ids.len()
    );
    let ledger = namespace.ledger().await?;
    let statuses: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT transaction_id, status, reason FROM transfers WHERE transaction_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&ledger)
    .await?;
    let failed: Vec<_> = statuses
        .iter()
        .filter(|(_, status, _)| status != "completed")
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "answered 200, then not completed: {failed:?}"
    );
    Ok(())
}

/// Posts one transfer of `amount` until it is accepted (503 meanwhile); its id.
async fn accepted_again(host: &Host, amount: &str) -> anyhow::Result<Uuid> {
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        let reply = host.transfer(transfer(amount)).await?;
        match reply.status {
            200 => {
                return Ok(Uuid::parse_str(
                    reply.body["transaction_id"].as_str().unwrap_or_default(),
                )?);
            }
            503 => {}
            other => anyhow::bail!("unexpected {other}: {}", reply.body),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not accepting again within {RECOVERY_LIMIT:?}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn with_redis_stopped_no_more_is_accepted_than_the_balance_and_every_200_settles()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis = PrivateRedis::start().await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = redis.url();
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;

    redis.stop().await?;
    let accepted = at_once(&host, "2.00").await?;
    assert!(
        accepted.len() <= 5,
        "{} transfers of 2.00 accepted from 10.00",
        accepted.len()
    );
    // Reads are still served, from the ledger.
    let balances = host.get_json("/accounts/1/balances").await?;
    assert_eq!(
        balances["balances"][0]["balance_minor"], 1_000,
        "{balances}"
    );

    // Back, and empty: every 200 settles, and the service accepts again by itself.
    redis.start_again().await?;
    all_complete(&namespace, &accepted).await?;
    let later = accepted_again(&host, "1.00").await?;
    all_complete(&namespace, &[later]).await?;
    Ok(())
}

#[tokio::test]
async fn redis_back_empty_with_unsettled_transfers_accepts_nothing_until_settlement_caught_up()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis = PrivateRedis::start().await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = redis.url();
    options.run_worker = false; // accepted transfers stay unsettled until a worker starts
    let host = Host::start_with(&namespace, options.clone()).await?;
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let reply = host.transfer(transfer("2.00")).await?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        accepted.push(Uuid::parse_str(
            reply.body["transaction_id"].as_str().unwrap_or_default(),
        )?);
    }

    // Redis restarts without its data: the holds of 8.00 are gone, the ledger still says 10.00.
    redis.stop().await?;
    redis.start_again().await?;
    let during = at_once(&host, "2.00").await?;
    assert!(
        during.len() <= 1,
        "{} transfers of 2.00 accepted with 2.00 left",
        during.len()
    );
    accepted.extend(&during);

    // Settlement catches up; the service then accepts again by itself, never beyond 10.00.
    let _worker = WorkerProcess::start(&namespace, &options, "worker")?;
    all_complete(&namespace, &accepted).await?;
    let again = accepted_again(&host, "0.01").await?;
    let minor_left = 1_000 - 200 * accepted.len() as i64 - 1;
    accepted.push(again);
    let after = at_once(&host, "0.50").await?;
    assert!(
        50 * after.len() as i64 <= minor_left,
        "{} transfers of 0.50 accepted with {minor_left} minor units left",
        after.len()
    );
    accepted.extend(&after);
    all_complete(&namespace, &accepted).await?;
    let distinct: HashSet<&Uuid> = accepted.iter().collect();
    assert_eq!(distinct.len(), accepted.len());
    Ok(())
}
