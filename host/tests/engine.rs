//! The guest engine's instance pool is one budget shared by every guest loaded on it: the
//! active version, a canary or shadow, vector runs and an old version finishing during a swap.
//! With one semaphore per guest, two versions could together ask the pool for more instances
//! than it has, and the extra call would fail instead of waiting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use transferd::config::Services;
use transferd::guest::runtime::{GuestEngine, GuestFailure, GuestLimits};
use transferd::settlement::topic_recreated::forget_positions;
use transferd::stores::Stores;
use transferd::stores::kafka::{KeptPositions, TransferLog};
use transferd::stores::postgres::Ledger;
use transferd::stores::redis::BalanceCache;
use transferd_guest::logic::{Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;

fn guest_file() -> PathBuf {
    if let Ok(path) = std::env::var("TRANSFERD_GUEST") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("wasm32-wasip2/release/transferd_guest.wasm")
}

/// Stores that make a balance lookup wait `database_timeout_ms`: Redis refuses connections
/// (a port nobody listens on) and PostgreSQL accepts them and never answers.
async fn slow_stores(database_timeout_ms: u64) -> anyhow::Result<Arc<Stores>> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_port = silent.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let services = Services {
        database_url: format!("postgres://postgres@127.0.0.1:{silent_port}/none"),
        redis_url: format!("redis://127.0.0.1:{closed_port}"),
        redis_prefix: String::new(),
        kafka_brokers: format!("127.0.0.1:{closed_port}"),
        topic_prefix: String::new(),
        topic_partitions: 1,
        kafka_timeout_ms: 1_000,
        kafka_linger_ms: 1,
        database_timeout_ms,
        database_connections: 4,
        redis_timeout_ms: 100,
        drain_timeout_ms: 10_000,
        redis_ca_file: None,
        redis_client_cert_file: None,
        redis_client_key_file: None,
        kafka_properties_file: None,
        // The local broker (Tansu) takes neither an idempotent producer nor a replication
        // factor of -1 (docs/operations.md).
        kafka_idempotence: false,
        create_topics: true,
        topic_replication_factor: 1,
        topic_min_insync_replicas: None,
    };
    let ledger = Ledger::connect(&services).await?;
    let positions = KeptPositions {
        ledger: ledger.pool().clone(),
        forget: forget_positions,
    };
    let log = TransferLog::new(&services, positions)?;
    Ok(Arc::new(Stores {
        ledger,
        cache: BalanceCache::new(&services)?,
        log,
    }))
}

/// A call for transaction `id`, which is a UUID as every id the host mints (the host refuses
/// any other before the guest runs).
fn call(id: &str) -> (RequestContext, TransferRequest) {
    (
        RequestContext {
            transaction_id: id.into(),
            received_at_ms: 0,
            principal: None,
            guest_version: "test".into(),
        },
        TransferRequest {
            sender_id: 1,
            receiver_id: 2,
            amount: "1.00".into(),
            currency: "USD".into(),
            ..TransferRequest::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_on_one_engine_share_its_instance_pool() -> anyhow::Result<()> {
    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        fuel_budget: transferd::config::DEFAULT_GUEST_FUEL_BUDGET,
        concurrency: 1,
        reuse_count: 1,
        compiled_cache: None,
    })?);
    // Two versions in service at once, as during a canary or a swap.
    let active = Arc::new(engine.load_file(&guest_file())?);
    let candidate = Arc::new(engine.load_file(&guest_file())?);
    let stores = slow_stores(1_000).await?;

    let first = {
        let (active, stores) = (Arc::clone(&active), Arc::clone(&stores));
        tokio::spawn(async move {
            let (context, request) = call("019ae000-0000-7000-8000-000000000001");
            active
                .initiate_transfer(stores, &context, &request, None)
                .await
        })
    };
    // The first call now holds the only instance while its lookup waits for the database.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (context, request) = call("019ae000-0000-7000-8000-000000000002");
    let second = candidate
        .initiate_transfer(stores, &context, &request, None)
        .await;
    let first = first.await?;

    for decided in [&first, &second] {
        assert!(
            matches!(&decided.decision, Ok(Err(Rejection::Unavailable(_)))),
            "each call waits its turn and decides (the database is unreachable): {:?}",
            decided.decision
        );
        assert!(!matches!(decided.decision, Err(GuestFailure::Trap(_))));
    }
    Ok(())
}
