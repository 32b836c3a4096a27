//! Every accepted transfer reaches a definite, findable outcome: a client that hangs up does
//! not strand its transfer halfway; while Redis is down nothing is accepted (503), and a
//! pending row an older version wrote in PostgreSQL for a transfer it accepted without Redis
//! still shows that transfer `pending` (never 404) until it settles; when neither store can be
//! asked, 503.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use transferd_e2e::proxy::Proxy;
use transferd_e2e::{Host, HostOptions, KAFKA_BROKERS, Namespace, WorkerProcess, consume};

fn transfer(amount: &str) -> Value {
    json!({"sender_id": 1, "receiver_id": 2, "amount": amount, "currency": "USD"})
}

async fn show(host: &Host, transaction_id: &str) -> anyhow::Result<(u16, Value)> {
    let response = host
        .client
        .get(format!("{}/transfers/{transaction_id}", host.base_url))
        .bearer_auth(transferd_e2e::auth::user_token(1))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_strand_its_transfer() -> anyhow::Result<()> {
    const CLIENTS: usize = 20;
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let address = host.base_url.trim_start_matches("http://").to_string();
    let body = transfer("1.00").to_string();
    for _ in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        let request = format!(
            "POST /transfers HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        // Gone before the answer: hyper drops the connection's futures on EOF.
        stream.shutdown().await?;
        drop(stream);
    }
    // Whatever each decision came to, it came to it whole: what reached the log settles once,
    // and no hold or pending record is left behind.
    let published = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        CLIENTS,
        Duration::from_secs(5),
    )
    .await?;
    let settled = namespace
        .wait_settled(published.len() as i64, Duration::from_secs(20))
        .await?;
    assert_eq!(
        settled,
        published.len() as i64,
        "each published transfer settles once"
    );
    let mut redis = namespace.redis().await?;
    let mut held = -1;
    for _ in 0..50 {
        let total: Option<i64> = redis
            .hget(namespace.redis_key("holds:1:USD"), "total")
            .await?;
        held = total.unwrap_or(0);
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, 0, "no hold stranded");
    let pending: Vec<String> = redis.keys(namespace.redis_key("pending:*")).await?;
    assert!(
        pending.is_empty(),
        "no pending record stranded: {pending:?}"
    );
    assert_eq!(
        namespace.ledger_balance(1, "USD").await?,
        Some(10_000 - 100 * settled),
        "the ledger moved each settled transfer once"
    );
    Ok(())
}

#[tokio::test]
async fn a_pending_row_shows_its_transfer_without_redis_never_404() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut redis_proxy = Proxy::start(6379).await?;
    let mut postgres_proxy = Proxy::start(5432).await?;
    let mut options = HostOptions::new(&namespace);
    options.redis_url = format!("redis://127.0.0.1:{}", redis_proxy.port);
    options.database_url = namespace.database_url_via(postgres_proxy.port);
    options
        .extra_env
        .push(("TRANSFERD_DATABASE_TIMEOUT_MS".into(), "1000".into()));
    options.run_worker = false; // settled later by a worker of its own
    let host = Host::start_with(&namespace, options).await?;
    host.deposit(1, "USD", "50.00").await?;
    host.deposit(2, "USD", "1.00").await?;

    // Accepted with its hold; its pending record then lives only in PostgreSQL, as an older
    // version left a transfer it accepted while Redis was down.
    let reply = host.transfer(transfer("5.00")).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let transaction_id = reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut redis = namespace.redis().await?;
    let record_key = namespace.redis_key(&format!("pending:{transaction_id}"));
    let message: Vec<u8> = redis.get(&record_key).await?;
    let () = redis.del(&record_key).await?;
    let ledger = namespace.ledger().await?;
    sqlx::query(
        "INSERT INTO pending_transfers (transaction_id, sender_id, currency, amount_minor, message)
         VALUES ($1, 1, 'USD', 500, $2)",
    )
    .bind(uuid::Uuid::parse_str(&transaction_id)?)
    .bind(&message)
    .execute(&ledger)
    .await?;

    redis_proxy.cut().await;
    let refused = host.transfer(transfer("1.00")).await?;
    assert_eq!(
        refused.status, 503,
        "no hold, not accepted: {}",
        refused.body
    );
    let (status, shown) = show(&host, &transaction_id).await?;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (shown["status"].as_str(), shown["amount_minor"].as_i64()),
        (Some("pending"), Some(500)),
        "{shown}"
    );

    // Neither Redis nor PostgreSQL can say: 503, not 404.
    postgres_proxy.cut().await;
    let (status, shown) = show(&host, &transaction_id).await?;
    assert_eq!(status, 503, "{shown}");

    postgres_proxy.restore().await?;
    redis_proxy.restore().await?;
    let _worker = WorkerProcess::start(&namespace, &HostOptions::new(&namespace), "worker")?;
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(30)).await?, 1);
    let (status, shown) = show(&host, &transaction_id).await?;
    assert_eq!(
        (status, shown["status"].as_str()),
        (200, Some("completed")),
        "{shown}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_transfers")
        .fetch_one(&ledger)
        .await?;
    assert_eq!(rows, 0, "settlement deleted the pending row");
    let published = consume(
        KAFKA_BROKERS,
        &namespace.transfer_topic(),
        2,
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(published.len(), 1, "the refused transfer was not published");
    Ok(())
}
