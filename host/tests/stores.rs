//! The ledger and the cache against real PostgreSQL and Redis: settling is idempotent and
//! serialised, and the cache never goes back to an older balance.

use std::sync::Arc;

use transferd::config::Services;
use transferd::settlement::decide::{Step, Transfer};
use transferd::settlement::ledger::{Advance, Offsets, SettleError, SettledBatch, Settlements};
use transferd::settlement::quarantine::{self, Quarantined};
use transferd::settlement::same_log::{Fingerprints, fingerprint};
use transferd::settlement::topic_recreated::forget_positions;
use transferd::stores::journal_verify::{JournalBreak, VerifyError, verify};
use transferd::stores::postgres::Ledger;
use transferd::stores::redis::{
    BalanceCache, BatchHold, HoldOutcome, HoldRequest, SettledBalance, SettledHold, TrustClaim,
};
use transferd_guest::spending::RecentOutgoing;
use uuid::Uuid;

/// A cache on a fresh prefix whose holds are trusted, as the keeper marks a new Redis whose
/// log is consumed (`settlement::reconcile::restore_trust`).
async fn trusted_cache(prefix: &str) -> anyhow::Result<Arc<BalanceCache>> {
    let cache = BalanceCache::new(&services("postgres", prefix))?;
    let ttl = std::time::Duration::from_secs(60);
    assert_eq!(cache.claim_trust("test", ttl).await?, TrustClaim::Claimed);
    assert!(cache.confirm_trust("test").await?);
    Ok(cache)
}

fn services(database: &str, redis_prefix: &str) -> Services {
    Services {
        database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
        redis_url: "redis://127.0.0.1:6379".into(),
        redis_prefix: redis_prefix.into(),
        kafka_brokers: "127.0.0.1:9092".into(),
        topic_prefix: String::new(),
        topic_partitions: 1,
        kafka_timeout_ms: 5_000,
        kafka_linger_ms: 1,
        database_timeout_ms: 5_000,
        database_connections: 8,
        redis_timeout_ms: 1_000,
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
    }
}

/// A ledger on a database of its own, with no migration applied.
async fn empty_ledger() -> anyhow::Result<Ledger> {
    let database = format!("transferd_store_test_{}", Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(Ledger::connect(&services(&database, "")).await?)
}

/// A ledger on a database of its own, with the migrations before `version` applied: what an
/// earlier version left, for a test of an upgrade.
async fn migrated_before(version: i64) -> anyhow::Result<Ledger> {
    let ledger = empty_ledger().await?;
    let mut before = sqlx::migrate!("../migrations");
    let migrations: Vec<_> = before
        .migrations
        .iter()
        .filter(|migration| migration.version < version)
        .cloned()
        .collect();
    before.migrations = migrations.into();
    before.run(ledger.pool()).await?;
    Ok(ledger)
}

async fn fresh_ledger() -> anyhow::Result<Ledger> {
    let ledger = empty_ledger().await?;
    ledger.migrate().await?;
    Ok(ledger)
}

fn message(sender_id: i64, receiver_id: i64, amount_minor: i64) -> Transfer {
    Transfer {
        transaction_id: Uuid::now_v7(),
        sender_id,
        receiver_id,
        amount_minor,
        currency: "USD".into(),
        description: None,
        created_at_ms: 1_795_960_800_000,
        metadata: None,
        step: Step::Immediate,
        atomic_batch: None,
        trace: None,
    }
}

/// A plan made while the ledger is nearly empty is kept for the connection's life: it must
/// look rows up by key, not hash the whole table (a plan that would still scan all of it
/// once the table holds millions of transfers).
#[tokio::test]
async fn joins_on_a_batch_use_the_index_even_on_a_nearly_empty_table() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    let batch = [message(1, 2, 1)];
    ledger.deposit(Uuid::now_v7(), 1, "USD", 100).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    settlements.apply(&batch, &[], &Advance::none()).await?;
    let plan: (serde_json::Value,) = sqlx::query_as(
        "EXPLAIN (FORMAT JSON)
         SELECT t.transaction_id FROM UNNEST($1::uuid[]) AS i(transaction_id)
         JOIN transfers t USING (transaction_id)",
    )
    .bind(vec![Uuid::now_v7(), Uuid::now_v7()])
    .fetch_one(ledger.pool())
    .await?;
    let plan = plan.0.to_string();
    assert!(plan.contains(r#""Index Name":"transfers_pkey""#), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Hash Join"),
        "{plan}"
    );
    // Where only a scan can serve, the price put on it does not make the plan worth compiling.
    let scanned: (serde_json::Value,) = sqlx::query_as(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT version FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(ledger.pool())
    .await?;
    assert!(!scanned.0.to_string().contains("JIT"), "{}", scanned.0);
    Ok(())
}

/// The SQLSTATE a statement failed with, `None` when it did not fail in the database.
fn sqlstate(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Option<String> {
    let error = result.err()?;
    Some(error.as_database_error()?.code()?.into_owned())
}

/// The journal refers only to what the ledger keeps (checked per statement, migration 0010,
/// where foreign keys checked per row): an INSERT naming a transfer or an account the ledger
/// does not have is refused whole, and no transfer, account, entry or journal batch is
/// deleted, truncated or re-keyed (migration 0014). Settling still writes its entries.
#[tokio::test]
async fn the_journal_refers_only_to_what_the_ledger_keeps() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let pool = ledger.pool();
    let deposit = Uuid::now_v7();
    ledger.deposit(deposit, 1, "USD", 100).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    let entries = || async {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal_entries")
            .fetch_one(pool)
            .await?;
        anyhow::Ok(count)
    };
    assert_eq!(entries().await?, 4, "two deposits, two entries each");
    let insert = |transaction_id: Uuid, user_id: i64, currency: &'static str| {
        sqlx::query(
            "INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor,
                                          balance_after_minor, journal_batch)
             VALUES ($1, 1, 'USD', 1, 0, 1), ($2, $3, $4, -1, 0, 1)",
        )
        .bind(deposit)
        .bind(transaction_id)
        .bind(user_id)
        .bind(currency)
        .execute(pool)
    };
    let foreign_key = Some("23503".to_string());
    assert_eq!(
        sqlstate(insert(Uuid::now_v7(), 1, "USD").await),
        foreign_key,
        "unknown transfer"
    );
    assert_eq!(
        sqlstate(insert(deposit, 3, "USD").await),
        foreign_key,
        "unknown user"
    );
    assert_eq!(
        sqlstate(insert(deposit, 1, "EUR").await),
        foreign_key,
        "unknown currency"
    );
    assert_eq!(entries().await?, 4, "a refused statement adds nothing");

    let restrict = Some("23001".to_string());
    for statement in [
        "DELETE FROM transfers WHERE kind = 'deposit'",
        "UPDATE transfers SET transaction_id = gen_random_uuid()",
        "TRUNCATE transfers CASCADE",
        "DELETE FROM accounts WHERE user_id = 2",
        "UPDATE accounts SET user_id = 7 WHERE user_id = 2",
        "UPDATE accounts SET currency = 'EUR' WHERE user_id = 2",
        "TRUNCATE accounts CASCADE",
        "UPDATE journal_entries SET amount_minor = 1000 WHERE user_id = 1",
        "DELETE FROM journal_entries",
        "TRUNCATE journal_entries",
        "UPDATE journal_batches SET entry_count = 3",
        "DELETE FROM journal_batches WHERE batch_id = 2",
        "TRUNCATE journal_batches",
        "DELETE FROM journal_chain_head",
        "TRUNCATE journal_chain_head",
    ] {
        assert_eq!(
            sqlstate(sqlx::query(statement).execute(pool).await),
            restrict,
            "{statement}"
        );
    }
    assert_eq!(entries().await?, 4);
    assert_eq!(
        ledger.balance(2, "USD").await?.map(|b| b.balance_minor),
        Some(1)
    );

    let settlements = Settlements::new(pool.clone());
    settlements
        .apply(&[message(1, 2, 60)], &[], &Advance::none())
        .await?;
    assert_eq!(
        entries().await?,
        6,
        "a settled transfer writes its two entries"
    );
    assert_eq!(
        ledger.balance(2, "USD").await?.map(|b| b.balance_minor),
        Some(61)
    );
    Ok(())
}

#[tokio::test]
async fn settling_the_same_batch_again_changes_nothing() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 100).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    let first = message(1, 2, 60);
    let overdraft = message(1, 2, 60);
    let batch = vec![first.clone(), overdraft.clone(), first.clone()];

    let settled = settlements.apply(&batch, &[], &Advance::none()).await?;
    let statuses: Vec<(&str, bool)> = settled
        .transfers
        .iter()
        .map(|t| (t.outcome.name(), t.newly_applied))
        .collect();
    assert_eq!(
        statuses,
        vec![("completed", true), ("rejected", true), ("completed", true)]
    );
    assert_eq!(
        settled.transfers[1].outcome.reason().map(|r| r.as_str()),
        Some("insufficient_funds")
    );
    let after_first = (
        ledger.balance(1, "USD").await?,
        ledger.balance(2, "USD").await?,
    );
    assert_eq!(after_first.0.map(|b| b.balance_minor), Some(40));
    assert_eq!(after_first.1.map(|b| b.balance_minor), Some(61));

    let again = settlements.apply(&batch, &[], &Advance::none()).await?;
    assert!(
        again.transfers.iter().all(|t| !t.newly_applied),
        "a redelivery applies nothing"
    );
    assert_eq!(
        again.transfers[1].outcome.name(),
        "rejected",
        "a redelivery reports the first outcome"
    );
    assert_eq!(
        (
            ledger.balance(1, "USD").await?,
            ledger.balance(2, "USD").await?
        ),
        after_first
    );
    Ok(())
}

#[tokio::test]
async fn two_workers_settling_the_same_batch_apply_it_once() -> anyhow::Result<()> {
    let ledger = Arc::new(fresh_ledger().await?);
    ledger.deposit(Uuid::now_v7(), 1, "USD", 1_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1_000).await?;
    let batch: Vec<Transfer> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                message(1, 2, 7)
            } else {
                message(2, 1, 3)
            }
        })
        .collect();
    let (left, right) = tokio::join!(
        {
            let (settlements, batch) = (Settlements::new(ledger.pool().clone()), batch.clone());
            async move { settlements.apply(&batch, &[], &Advance::none()).await }
        },
        {
            let (settlements, batch) = (Settlements::new(ledger.pool().clone()), batch.clone());
            async move { settlements.apply(&batch, &[], &Advance::none()).await }
        },
    );
    let (left, right) = (left?, right?);
    let applied = |batch: &SettledBatch| batch.transfers.iter().filter(|t| t.newly_applied).count();
    assert_eq!(
        applied(&left) + applied(&right),
        200,
        "each transfer applied by exactly one worker"
    );
    assert_eq!(
        ledger.balance(1, "USD").await?.map(|b| b.balance_minor),
        Some(1_000 - 100 * 7 + 100 * 3)
    );
    assert_eq!(
        ledger.balance(2, "USD").await?.map(|b| b.balance_minor),
        Some(1_000 + 100 * 7 - 100 * 3)
    );
    Ok(())
}

/// An advance of partition 0 of `topic` from `from` to `to`.
fn advance(topic: &str, from: i64, to: i64) -> Advance {
    Advance {
        topic: topic.into(),
        generation: 0,
        from: Offsets::from([(0, from)]),
        to: Offsets::from([(0, to)]),
        last_payload: Fingerprints::from([(0, fingerprint(format!("{topic}@{to}").as_bytes()))]),
    }
}

#[tokio::test]
async fn a_batch_read_from_a_stale_position_changes_nothing() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 1_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    assert_eq!(
        settlements.positions("log", &[0, 1]).await?,
        Offsets::from([(0, 0), (1, 0)]),
        "a partition never settled starts at 0"
    );
    settlements
        .apply(&[message(1, 2, 100)], &[], &advance("log", 0, 1))
        .await?;
    assert_eq!(settlements.read_positions("log").await?[&0], 1);
    assert_eq!(
        settlements.fingerprints("log").await?,
        Fingerprints::from([(0, fingerprint(b"log@1"))]),
        "the position keeps the fingerprint of the message before it; partition 1 has none"
    );

    // A second worker that read from offset 0 too: refused, nothing applied.
    let late = settlements
        .apply(&[message(1, 2, 300)], &[], &advance("log", 0, 1))
        .await;
    assert!(
        matches!(late, Err(SettleError::PositionMoved { .. })),
        "{late:?}"
    );
    assert_eq!(
        ledger.balance(1, "USD").await?.map(|b| b.balance_minor),
        Some(900)
    );
    assert_eq!(settlements.read_positions("log").await?[&0], 1);
    Ok(())
}

#[tokio::test]
async fn a_batch_read_before_its_topic_was_created_again_is_refused() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 1_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    settlements.positions("log", &[0]).await?;
    settlements
        .apply(&[message(1, 2, 100)], &[], &advance("log", 0, 5))
        .await?;
    assert_eq!(settlements.generation("log").await?, 0);

    // The topic is created again: positions back to 0, fingerprints gone, next generation.
    assert_eq!(forget_positions(ledger.pool(), "log").await?, 1);
    assert_eq!(
        settlements.read_positions("log").await?,
        Offsets::from([(0, 0)])
    );
    assert_eq!(settlements.fingerprints("log").await?, Fingerprints::new());
    assert_eq!(settlements.generation("log").await?, 1);

    // A worker that read the old log from offset 0 names the old generation: refused, even
    // though its position matches, and nothing is applied.
    let stale = settlements
        .apply(&[message(1, 2, 300)], &[], &advance("log", 0, 1))
        .await;
    assert!(
        matches!(stale, Err(SettleError::PositionMoved { .. })),
        "{stale:?}"
    );
    assert_eq!(
        ledger.balance(1, "USD").await?.map(|b| b.balance_minor),
        Some(900)
    );
    assert_eq!(
        settlements.read_positions("log").await?,
        Offsets::from([(0, 0)])
    );

    // A partition first seen now starts in the topic's generation, so a worker of this
    // generation settles both.
    settlements.positions("log", &[0, 1]).await?;
    let mut both = advance("log", 0, 1);
    both.generation = 1;
    both.from.insert(1, 0);
    both.to.insert(1, 1);
    settlements.apply(&[message(1, 2, 50)], &[], &both).await?;
    assert_eq!(
        settlements.read_positions("log").await?,
        Offsets::from([(0, 1), (1, 1)])
    );
    assert_eq!(
        ledger.balance(1, "USD").await?.map(|b| b.balance_minor),
        Some(850)
    );
    // Another topic's positions are its own.
    assert_eq!(forget_positions(ledger.pool(), "other").await?, 0);
    assert_eq!(settlements.generation("log").await?, 1);
    Ok(())
}

#[tokio::test]
async fn two_workers_reading_from_one_position_apply_the_batch_once() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    ledger.deposit(Uuid::now_v7(), 1, "USD", 1_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    let first = Settlements::new(ledger.pool().clone());
    first.positions("log", &[0]).await?;
    // Different messages at the same offsets: only the position tells them apart.
    let second = Settlements::new(ledger.pool().clone());
    let (ten, twenty) = ([message(1, 2, 10)], [message(1, 2, 20)]);
    let from_zero = advance("log", 0, 1);
    let (left, right) = tokio::join!(
        first.apply(&ten, &[], &from_zero),
        second.apply(&twenty, &[], &from_zero),
    );
    assert!(
        left.is_ok() != right.is_ok(),
        "exactly one commits: {left:?} / {right:?}"
    );
    let balance = ledger.balance(1, "USD").await?.map(|b| b.balance_minor);
    assert!(balance == Some(990) || balance == Some(980), "{balance:?}");
    Ok(())
}

#[tokio::test]
async fn a_settled_batch_s_effects_stay_recorded_until_done() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 100).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    let (paid, refused) = (message(1, 2, 60), message(1, 2, 60));
    // A message read twice in one batch is one transfer with one set of effects.
    let first = settlements
        .apply(
            &[paid.clone(), refused.clone(), paid.clone()],
            &[],
            &Advance::none(),
        )
        .await?;
    let later = message(2, 1, 1);
    let second = settlements
        .apply(std::slice::from_ref(&later), &[], &Advance::none())
        .await?;

    // Oldest batch first, as it was settled.
    let (messages, settled) = settlements.outstanding_effects().await?;
    assert_eq!(messages, vec![paid.clone(), refused.clone()]);
    assert_eq!(settled.effects, first.effects);
    let statuses: Vec<&str> = settled.transfers.iter().map(|t| t.outcome.name()).collect();
    assert_eq!(statuses, vec!["completed", "rejected"]);
    assert_eq!(
        settled.accounts[&(1, "USD".to_string())].balance_minor,
        41,
        "the balances the effects put in the cache are the ledger's now, after the later batch"
    );
    // Until a batch is done, a worker that takes over finds it again.
    let (again, _) = settlements.outstanding_effects().await?;
    assert_eq!(again, messages);

    settlements
        .effects_done(first.effects.expect("a recorded batch"))
        .await?;
    let (left, settled) = settlements.outstanding_effects().await?;
    assert_eq!(left, vec![later]);
    assert_eq!(settled.effects, second.effects);
    settlements
        .effects_done(second.effects.expect("a recorded batch"))
        .await?;
    assert!(settlements.outstanding_effects().await?.0.is_empty());
    Ok(())
}

/// Migration 0014 seals the entries written before it into the chain's first batches, hashing
/// in SQL; `ledger verify` recomputes every hash in Rust and finds them intact, so both encode
/// an entry alike (a currency of several bytes a character, a time before 1970, a negative
/// amount). A batch written after them chains on, and an entry changed is found.
#[tokio::test]
async fn the_first_batches_hashed_in_sql_verify_in_rust() -> anyhow::Result<()> {
    let ledger = migrated_before(14).await?;
    // The account check allows three capital letters; the encoding counts bytes, not letters.
    sqlx::raw_sql(
        "ALTER TABLE accounts DROP CONSTRAINT currency_is_iso_4217_shaped;
         INSERT INTO accounts (user_id, currency, balance_minor)
         VALUES (0, 'USD', -10001), (1, 'USD', 10001), (0, 'ÅØ€', -7), (2, 'ÅØ€', 7);
         INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor,
                                currency, status, created_at)
         SELECT gen_random_uuid(), 'deposit', 0, 1, 1, 'USD', 'completed', now()
         FROM generate_series(1, 10001)
         UNION ALL SELECT gen_random_uuid(), 'deposit', 0, 2, 7, 'ÅØ€', 'completed', now();
         INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor,
                                      balance_after_minor, created_at)
         SELECT transaction_id, user_id, currency, amount,
                SUM(amount) OVER (PARTITION BY user_id, currency ORDER BY n, side), at
         FROM (SELECT t.transaction_id, side.user_id, t.currency, n, side.side,
                      side.sign * t.amount_minor AS amount,
                      timestamptz '1969-12-31 23:59:50.5+00' + n * interval '1.000001 second' AS at
               FROM (SELECT *, row_number() OVER (ORDER BY currency, transaction_id) AS n
                     FROM transfers) t,
                    LATERAL (VALUES (1, 0, -1), (2, t.receiver_id, 1)) AS side(side, user_id, sign)
              ) AS moved
         ORDER BY n, side;",
    )
    .execute(ledger.pool())
    .await?;
    ledger.migrate().await?;

    let intact = verify(ledger.pool()).await?;
    assert_eq!(
        (intact.batches, intact.entries, intact.accounts),
        (3, 20_004, 4)
    );
    ledger.deposit(Uuid::now_v7(), 2, "ÅØ€", 1).await?;
    let intact = verify(ledger.pool()).await?;
    assert_eq!((intact.batches, intact.entries), (4, 20_006));

    let mut connection = ledger.pool().acquire().await?;
    sqlx::raw_sql(
        "SET session_replication_role = replica;
         UPDATE journal_entries SET created_at = created_at + interval '1 microsecond'
         WHERE entry_id = 2;
         RESET session_replication_role;",
    )
    .execute(&mut *connection)
    .await?;
    drop(connection);
    match verify(ledger.pool()).await {
        Err(VerifyError::Broken(JournalBreak::Hash {
            batch: 1,
            changed: None,
            ..
        })) => Ok(()),
        other => anyhow::bail!("an entry's time changed in batch 1, and verify says {other:?}"),
    }
}

/// A worker of the previous version recorded effects one row per transfer; the migration
/// turns what it left into batches, so the next worker still runs them.
#[tokio::test]
async fn effects_a_previous_version_left_are_run_after_the_upgrade() -> anyhow::Result<()> {
    let ledger = migrated_before(9).await?;

    deposit_as_version_8_did(ledger.pool(), 1, 100).await?;
    let (first, second) = (message(1, 2, 10), message(1, 2, 20));
    for (transfer, at) in [
        (&second, "2026-12-01T10:00:01Z"),
        (&first, "2026-12-01T10:00:00Z"),
    ] {
        sqlx::query(
            "INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor,
                                    currency, status, created_at)
             VALUES ($1, 'transfer', $2, $3, $4, $5, 'completed', now())",
        )
        .bind(transfer.transaction_id)
        .bind(transfer.sender_id)
        .bind(transfer.receiver_id)
        .bind(transfer.amount_minor)
        .bind(&transfer.currency)
        .execute(ledger.pool())
        .await?;
        sqlx::query(
            "INSERT INTO settlement_effects (transaction_id, created_at) VALUES ($1, $2::timestamptz)",
        )
        .bind(transfer.transaction_id)
        .bind(at)
        .execute(ledger.pool())
        .await?;
    }

    ledger.migrate().await?;
    assert_eq!(ledger.unapplied_migrations().await?, 0);
    let settlements = Settlements::new(ledger.pool().clone());
    let (messages, settled) = settlements.outstanding_effects().await?;
    let ids: Vec<Uuid> = messages.iter().map(|m| m.transaction_id).collect();
    assert_eq!(
        ids,
        vec![first.transaction_id, second.transaction_id],
        "oldest first"
    );
    settlements
        .effects_done(settled.effects.expect("a recorded batch"))
        .await?;
    assert!(settlements.outstanding_effects().await?.0.is_empty());

    // Migration 0013 gave the older entries their running balances.
    let after: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, balance_after_minor FROM journal_entries ORDER BY entry_id",
    )
    .fetch_all(ledger.pool())
    .await?;
    assert_eq!(after, vec![(0, -100), (1, 100)]);
    Ok(())
}

/// A deposit as versions before migration 0013 wrote it: entries without running balances.
async fn deposit_as_version_8_did(
    pool: &sqlx::PgPool,
    user_id: i64,
    amount_minor: i64,
) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    for statement in [
        "INSERT INTO accounts (user_id, currency, balance_minor, version)
         VALUES (0, 'USD', -$3, 1), ($2, 'USD', $3, 1)",
        "INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor, currency,
                                description, status, created_at)
         VALUES ($1, 'deposit', 0, $2, $3, 'USD', 'deposit', 'completed', now())",
        "INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor)
         VALUES ($1, 0, 'USD', -$3), ($1, $2, 'USD', $3)",
    ] {
        sqlx::query(statement)
            .bind(id)
            .bind(user_id)
            .bind(amount_minor)
            .execute(pool)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_older_balance_never_overwrites_a_newer_one() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 500, 5).await?);
    assert!(
        !cache.store_balance(1, "USD", 900, 4).await?,
        "version 4 is older than 5"
    );
    assert_eq!(cache.available(1, "USD").await?, Some(500));

    // Settlement's atomic step follows the same rule, and releases holds once.
    let held = cache.reserve_hold("tx-1", 1, "USD", 200, b"{}").await?;
    assert_eq!(held, HoldOutcome::Reserved);
    assert_eq!(cache.available(1, "USD").await?, Some(300));
    let stale = SettledBalance {
        user_id: 1,
        currency: "USD".into(),
        balance_minor: 100,
        version: 3,
    };
    let hold = SettledHold {
        transaction_id: "tx-1".into(),
        user_id: 1,
        currency: "USD".into(),
    };
    cache
        .settle(std::slice::from_ref(&stale), std::slice::from_ref(&hold))
        .await?;
    assert_eq!(
        cache.available(1, "USD").await?,
        Some(500),
        "stale balance ignored, hold released"
    );
    let newer = SettledBalance {
        version: 6,
        balance_minor: 300,
        ..stale
    };
    cache.settle(&[newer], &[hold]).await?;
    assert_eq!(
        cache.available(1, "USD").await?,
        Some(300),
        "newer balance stored; hold not released twice"
    );
    assert_eq!(cache.held(1, "USD").await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_names_one_request_and_one_transaction_id() -> anyhow::Result<()> {
    use std::time::Duration;
    use transferd::stores::idempotency::{Answer, Claim, IdempotencyKeys};
    let ledger = fresh_ledger().await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let lease = Duration::from_secs(60);
    let (hash, other_hash) = (vec![1u8; 32], vec![2u8; 32]);
    let first_id = Uuid::now_v7();

    let first = keys.claim("7", "k", &hash, first_id, lease).await?;
    assert_eq!(
        first,
        Claim::Owned {
            transaction_id: first_id,
            retry: false,
            generation: 0
        }
    );
    // While the first is in flight: a repeat waits, a different body is refused.
    assert_eq!(
        keys.claim("7", "k", &hash, Uuid::now_v7(), lease).await?,
        Claim::InFlight
    );
    assert_eq!(
        keys.claim("7", "k", &other_hash, Uuid::now_v7(), lease)
            .await?,
        Claim::Mismatch
    );
    // Another caller's key of the same name is its own.
    let theirs = Uuid::now_v7();
    assert_eq!(
        keys.claim("8", "k", &hash, theirs, lease).await?,
        Claim::Owned {
            transaction_id: theirs,
            retry: false,
            generation: 0
        }
    );

    // Unfinished (an in-doubt 503): the repeat takes it over with the same transaction id.
    keys.abandon("7", "k", 0).await?;
    assert_eq!(
        keys.claim("7", "k", &hash, Uuid::now_v7(), lease).await?,
        Claim::Owned {
            transaction_id: first_id,
            retry: true,
            generation: 1
        }
    );
    // Finished: replayed, whatever comes later.
    let body = serde_json::json!({"transaction_id": first_id, "status": "pending"});
    keys.finish(Answer {
        scope: "7".into(),
        key: "k".into(),
        request_hash: hash.clone(),
        transaction_id: first_id,
        generation: 1,
        status: 200,
        body: body.clone(),
    })
    .await?;
    keys.abandon("7", "k", 1).await?;
    assert_eq!(
        keys.claim("7", "k", &hash, Uuid::now_v7(), lease).await?,
        Claim::Replay {
            status: 200,
            body,
            transaction_id: first_id
        }
    );
    assert_eq!(
        keys.claim("7", "k", &other_hash, Uuid::now_v7(), lease)
            .await?,
        Claim::Mismatch
    );
    assert_eq!(
        transferd::stores::idempotency::purge_older_than(ledger.pool(), Duration::from_secs(3600))
            .await?,
        0
    );
    Ok(())
}

/// A request that outlives its lease loses its key to the retry that takes it over: from then
/// on it cannot renew the key (so it neither publishes nor releases), give it up for the
/// retry, or store its answer over the retry's.
#[tokio::test]
async fn an_attempt_whose_key_was_taken_over_can_no_longer_act_on_it() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use transferd::stores::idempotency::{Answer, Claim, IdempotencyKeys, KeyLease, may_act};
    let ledger = fresh_ledger().await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let hash = vec![3u8; 32];
    let id = Uuid::now_v7();
    // The first attempt's lease is short, and its own clock says it has run out.
    let claimed_at = Instant::now();
    let short = Duration::from_millis(200);
    let first = keys.claim("5", "k", &hash, id, short).await?;
    assert_eq!(
        first,
        Claim::Owned {
            transaction_id: id,
            retry: false,
            generation: 0
        }
    );
    let act_within = Duration::from_secs(1);
    let lease = |generation, claimed_at, lease| {
        KeyLease::new(
            keys.clone(),
            "5".into(),
            "k".into(),
            generation,
            claimed_at,
            lease,
            act_within,
        )
    };
    let stale = lease(0, claimed_at, short);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let long = Duration::from_secs(60);
    let retried_at = Instant::now();
    assert_eq!(
        keys.claim("5", "k", &hash, Uuid::now_v7(), long).await?,
        Claim::Owned {
            transaction_id: id,
            retry: true,
            generation: 1
        }
    );
    let retry = lease(1, retried_at, long);
    assert!(!stale.still_held().await, "the stale attempt may not act");
    assert!(!may_act(Some(&stale)).await);
    assert!(retry.still_held().await, "the retry may");
    // Its 5xx does not free the retry's key.
    stale.abandon().await?;
    assert_eq!(
        keys.claim("5", "k", &hash, Uuid::now_v7(), long).await?,
        Claim::InFlight
    );
    // Its answer does not replace the retry's, in one batch or one after the other.
    let answer = |generation, status| Answer {
        scope: "5".into(),
        key: "k".into(),
        request_hash: hash.clone(),
        transaction_id: id,
        generation,
        status,
        body: serde_json::json!({"status": status}),
    };
    let (stale_answer, retry_answer) =
        tokio::join!(keys.finish(answer(0, 503)), keys.finish(answer(1, 200)));
    stale_answer?;
    retry_answer?;
    keys.finish(answer(0, 422)).await?;
    assert_eq!(
        keys.claim("5", "k", &hash, Uuid::now_v7(), long).await?,
        Claim::Replay {
            status: 200,
            body: serde_json::json!({"status": 200}),
            transaction_id: id
        }
    );
    Ok(())
}

/// An attempt whose own clock says its lease ran out, but whose key nobody took over, renews
/// it and goes on; a retry then finds the key in flight.
#[tokio::test]
async fn a_late_attempt_whose_key_nobody_took_renews_it() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use transferd::stores::idempotency::{Claim, IdempotencyKeys, KeyLease};
    let ledger = fresh_ledger().await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let short = Duration::from_millis(200);
    keys.claim("5", "k", &[4; 32], Uuid::now_v7(), short)
        .await?;
    // Its clock says the lease ended long ago; renewed, it is a minute again.
    let long = Duration::from_secs(60);
    let claimed_at = Instant::now()
        .checked_sub(long)
        .expect("the machine has run for a minute");
    let late = KeyLease::new(
        keys.clone(),
        "5".into(),
        "k".into(),
        0,
        claimed_at,
        long,
        Duration::from_secs(1),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(late.still_held().await);
    assert!(late.until().is_some_and(|until| until > Instant::now()));
    assert_eq!(
        keys.claim("5", "k", &[4; 32], Uuid::now_v7(), short)
            .await?,
        Claim::InFlight
    );
    // Given up, it acts no more.
    late.give_up();
    assert!(!late.still_held().await);
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_of_one_key_give_it_to_one_request() -> anyhow::Result<()> {
    use std::time::Duration;
    use transferd::stores::idempotency::{Claim, IdempotencyKeys};
    let ledger = fresh_ledger().await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let claims = futures::future::join_all((0..16).map(|_| {
        let keys = keys.clone();
        async move {
            keys.claim(
                "1",
                "same",
                &[9u8; 32],
                Uuid::now_v7(),
                Duration::from_secs(60),
            )
            .await
        }
    }))
    .await;
    let owners = claims
        .into_iter()
        .filter(|claim| matches!(claim, Ok(Claim::Owned { .. })))
        .count();
    assert_eq!(owners, 1, "exactly one request holds the key");
    Ok(())
}

#[tokio::test]
async fn expired_keys_are_purged_in_bounded_statements_and_fresh_ones_kept() -> anyhow::Result<()> {
    use std::time::Duration;
    use transferd::stores::idempotency::{Claim, IdempotencyKeys, purge_older_than};
    let ledger = fresh_ledger().await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idempotency_key, request_hash, transaction_id, locked_until, created_at)
         SELECT 'old', 'k' || n, '\\x00', gen_random_uuid(), now(), now() - interval '2 days'
         FROM generate_series(1, 25000) AS n",
    )
    .execute(ledger.pool())
    .await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let fresh = Uuid::now_v7();
    let lease = Duration::from_secs(60);
    keys.claim("new", "k1", &[1; 32], fresh, lease).await?;
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(purge_older_than(ledger.pool(), day).await?, 25_000);
    assert_eq!(purge_older_than(ledger.pool(), day).await?, 0);
    assert_eq!(
        keys.claim("new", "k1", &[1; 32], Uuid::now_v7(), lease)
            .await?,
        Claim::InFlight,
        "the fresh key is still there"
    );
    Ok(())
}

/// Claims and answers of many requests at once go into PostgreSQL a batch at a time: every
/// request still gets its own key, its own transaction id and, replayed, its own answer.
#[tokio::test]
async fn keys_claimed_and_answered_together_each_keep_their_own() -> anyhow::Result<()> {
    use std::time::Duration;
    use transferd::stores::idempotency::Answer;
    use transferd::stores::idempotency::{Claim, IdempotencyKeys};
    const REQUESTS: usize = 300;
    let ledger = fresh_ledger().await?;
    let keys = IdempotencyKeys::new(ledger.pool().clone());
    let lease = Duration::from_secs(60);
    // Scopes and keys interleaved so that a batch holds several of each, out of order.
    let request = |index: usize| {
        (
            format!("{}", index % 7),
            format!("key-{}", REQUESTS - index),
            vec![u8::try_from(index % 251).unwrap_or(0); 32],
            Uuid::now_v7(),
        )
    };
    let requests: Vec<_> = (0..REQUESTS).map(request).collect();
    let claims = futures::future::join_all(requests.iter().map(|(scope, key, hash, id)| {
        let keys = keys.clone();
        async move { keys.claim(scope, key, hash, *id, lease).await }
    }))
    .await;
    for ((_, _, _, id), claim) in requests.iter().zip(claims) {
        assert_eq!(
            claim?,
            Claim::Owned {
                transaction_id: *id,
                retry: false,
                generation: 0
            }
        );
    }
    let answered = futures::future::join_all(requests.iter().enumerate().map(
        |(index, (scope, key, hash, id))| {
            let keys = keys.clone();
            let answer = Answer {
                scope: scope.clone(),
                key: key.clone(),
                request_hash: hash.clone(),
                transaction_id: *id,
                generation: 0,
                status: 200 + (index % 3) as u16,
                body: serde_json::json!({"transaction_id": id, "index": index}),
            };
            async move { keys.finish(answer).await }
        },
    ))
    .await;
    assert!(answered.iter().all(Result::is_ok), "{answered:?}");
    for (index, (scope, key, hash, id)) in requests.iter().enumerate() {
        assert_eq!(
            keys.claim(scope, key, hash, Uuid::now_v7(), lease).await?,
            Claim::Replay {
                status: 200 + (index % 3) as u16,
                body: serde_json::json!({"transaction_id": id, "index": index}),
                transaction_id: *id
            }
        );
    }
    Ok(())
}

#[tokio::test]
async fn several_accounts_are_read_in_one_call_each_with_its_own_holds() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 500, 1).await?);
    assert!(cache.store_balance(3, "USD", -40, 1).await?);
    cache.reserve_hold("t1", 1, "USD", 120, b"{}").await?;
    assert_eq!(
        cache.available_many(&[3, 2, 1], "USD", "").await?,
        vec![Some(-40), None, Some(380)]
    );
    assert_eq!(
        cache.available_many(&[1, 3], "USD", "t1").await?,
        vec![Some(500), Some(-40)],
        "a transaction's own hold does not count against it"
    );
    assert_eq!(cache.available_many(&[1], "EUR", "").await?, vec![None]);
    Ok(())
}

/// A batch's holds in one step (`BalanceCache::reserve_batch`): in order, each against what
/// earlier items hold; a retry's item fits as held; atomic writes all or nothing and counts
/// earlier credits; nothing without `holds_trusted`. Its snapshot leaves the batch's own holds out.
#[tokio::test]
async fn a_batch_holds_in_order_in_one_step_and_atomic_all_or_none() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 500, 1).await?);
    assert!(cache.store_balance(2, "USD", 0, 1).await?);
    let hold = |id: &'static str, user_id, amount_minor, credits| BatchHold {
        transaction_id: id,
        user_id,
        currency: "USD",
        amount_minor,
        record: b"{}",
        credits,
    };
    use HoldOutcome::{Insufficient, Reserved};
    // 300 fits, then 300 more does not (200 left), then 200 does.
    let items = [
        hold("a", 1, 300, None),
        hold("b", 1, 300, None),
        hold("c", 1, 200, None),
    ];
    assert_eq!(
        cache.reserve_batch(&items, false).await?,
        vec![Reserved, Insufficient, Reserved]
    );
    assert_eq!(cache.available(1, "USD").await?, Some(0));
    assert!(cache.pending("a").await?.is_some() && cache.pending("b").await?.is_none());
    // Again (a retry): the held items fit as they are, nothing is held twice.
    assert_eq!(
        cache.reserve_batch(&items, false).await?,
        vec![Reserved, Insufficient, Reserved]
    );
    assert_eq!(cache.held(1, "USD").await?, 500);
    let own = vec!["a".to_string(), "c".to_string()];
    assert_eq!(
        cache
            .available_snapshot(&[(1, "USD", own), (2, "USD", vec![])])
            .await?,
        vec![Some(500), Some(0)]
    );
    // Atomic: 2 spends what 1 credits it; one item that does not fit holds nothing.
    assert!(cache.store_balance(1, "USD", 600, 2).await?);
    let chain = [hold("d", 1, 100, Some(2)), hold("e", 2, 100, Some(1))];
    let broken = [chain[0], chain[1], hold("f", 1, 1_000, Some(2))];
    assert_eq!(
        cache.reserve_batch(&broken, true).await?,
        vec![Reserved, Reserved, Insufficient]
    );
    assert_eq!(
        cache.held(2, "USD").await?,
        0,
        "an atomic batch that does not fit holds nothing"
    );
    assert_eq!(
        cache.reserve_batch(&chain, true).await?,
        vec![Reserved, Reserved]
    );
    assert_eq!(cache.held(2, "USD").await?, 100);
    Ok(())
}

/// The lookup that holds ahead (`capabilities::hold_ahead`), against Redis: it answers the
/// balances as they were before, and holds with the pending record only when every account
/// it reads is cached, the transaction holds nothing there yet (a retry keeps its first
/// attempt's hold and record) and the hold's account has the amount.
#[tokio::test]
async fn a_lookup_holds_ahead_only_what_is_available_among_cached_accounts() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 500, 1).await?);
    assert!(cache.store_balance(2, "USD", 70, 1).await?);
    cache.reserve_hold("other", 1, "USD", 100, b"{}").await?;
    let on_first = |amount_minor, record: &'static [u8]| HoldRequest {
        hold_on: 1,
        amount_minor,
        record,
    };
    // 400 available on account 1: 401 is not held, 400 is.
    assert_eq!(
        cache
            .available_holding(&[2, 1], "USD", "t1", &on_first(401, b"a"))
            .await?,
        (vec![Some(70), Some(400)], false)
    );
    assert_eq!(cache.held(1, "USD").await?, 100);
    assert_eq!(cache.pending("t1").await?, None);
    assert_eq!(
        cache
            .available_holding(&[2, 1], "USD", "t1", &on_first(400, b"a"))
            .await?,
        (vec![Some(70), Some(400)], true),
        "the balances as they were before the hold"
    );
    assert_eq!(cache.held(1, "USD").await?, 500);
    assert_eq!(cache.pending("t1").await?, Some(b"a".to_vec()));
    // Held already (a retry): not taken again, the hold and its record left as they are.
    assert_eq!(
        cache
            .available_holding(&[2, 1], "USD", "t1", &on_first(400, b"b"))
            .await?,
        (vec![Some(70), Some(400)], false),
        "its own hold does not count against it"
    );
    assert_eq!(cache.held(1, "USD").await?, 500);
    assert_eq!(cache.pending("t1").await?, Some(b"a".to_vec()));
    // A publish of another message replaces the record; the hold stays one.
    cache.replace_pending("t1", b"c").await?;
    assert_eq!(cache.pending("t1").await?, Some(b"c".to_vec()));
    assert_eq!(cache.held(1, "USD").await?, 500);
    // A party that is not cached: nothing held.
    assert_eq!(
        cache
            .available_holding(&[3, 1], "USD", "t2", &on_first(1, b"d"))
            .await?,
        (vec![None, Some(0)], false)
    );
    assert_eq!(cache.pending("t2").await?, None);
    cache.release_hold("t1", 1, "USD").await?;
    assert_eq!(cache.held(1, "USD").await?, 100);
    assert_eq!(cache.pending("t1").await?, None);
    Ok(())
}

/// The outgoing counters (`account-info`'s `today`) against Redis: every script that takes a
/// hold counts it once, a released hold is taken back out, a settled one stays, and a
/// transaction is never told about its own hold.
#[tokio::test]
async fn holds_are_counted_once_and_a_released_one_is_taken_back() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 10_000, 1).await?);
    assert!(cache.store_balance(2, "USD", 0, 1).await?);
    let counted = |minor, count, last_minute| RecentOutgoing {
        outgoing_minor: minor,
        outgoing_count: count,
        last_minute_count: last_minute,
    };
    assert_eq!(cache.outgoing("", 1, "USD").await?, counted(0, 0, 0));
    cache.reserve_hold("t1", 1, "USD", 100, b"{}").await?;
    // A retry's hold is not counted twice.
    cache.reserve_hold("t1", 1, "USD", 100, b"{}").await?;
    let ahead = HoldRequest {
        hold_on: 1,
        amount_minor: 200,
        record: b"{}",
    };
    cache
        .available_holding(&[2, 1], "USD", "t2", &ahead)
        .await?;
    let batch = [BatchHold {
        transaction_id: "t3",
        user_id: 1,
        currency: "USD",
        amount_minor: 300,
        record: b"{}",
        credits: None,
    }];
    cache.reserve_batch(&batch, false).await?;
    assert_eq!(cache.outgoing("", 1, "USD").await?, counted(600, 3, 3));
    // A transaction is told the counters without its own hold.
    assert_eq!(cache.outgoing("t2", 1, "USD").await?, counted(400, 2, 2));
    assert_eq!(cache.outgoing("", 2, "USD").await?, counted(0, 0, 0));
    // A released hold did not happen; releasing twice takes it back once.
    cache.release_hold("t2", 1, "USD").await?;
    cache.release_hold("t2", 1, "USD").await?;
    assert_eq!(cache.outgoing("", 1, "USD").await?, counted(400, 2, 2));
    // A settled transfer happened: its hold goes, the counters keep it.
    let settled = SettledHold {
        transaction_id: "t1".into(),
        user_id: 1,
        currency: "USD".into(),
    };
    cache.settle(&[], &[settled]).await?;
    assert_eq!(cache.held(1, "USD").await?, 300);
    assert_eq!(cache.outgoing("", 1, "USD").await?, counted(400, 2, 2));
    Ok(())
}

#[tokio::test]
async fn a_transaction_s_own_hold_does_not_count_against_it() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = trusted_cache(&prefix).await?;
    assert!(cache.store_balance(1, "USD", 500, 1).await?);
    cache.reserve_hold("retried", 1, "USD", 300, b"{}").await?;
    assert_eq!(cache.available(1, "USD").await?, Some(200));
    assert_eq!(
        cache.available_to(1, "USD", "someone-else").await?,
        Some(200)
    );
    // A retry of `retried` (same idempotency key) sees the money its first attempt set aside.
    assert_eq!(cache.available_to(1, "USD", "retried").await?, Some(500));
    Ok(())
}

/// A batch holding transfers the ledger cannot store (settlement's parser would refuse them;
/// here they stand for a defect not yet found): the refused ones are found by bisection, the
/// rest applies with them quarantined, and the position moves past all of them.
#[tokio::test]
async fn transfers_the_ledger_refuses_are_found_and_the_rest_applies() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 1_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 1).await?;
    let mut batch: Vec<Transfer> = (0..7).map(|_| message(1, 2, 10)).collect();
    batch[1].description = Some("a\0b".into());
    batch[4].created_at_ms = i64::MAX;
    settlements.positions("log", &[0]).await?;
    let whole = advance("log", 0, 7);
    match settlements.apply(&batch, &[], &whole).await {
        Err(SettleError::Ledger(error)) => assert!(error.refuses_data(), "{error}"),
        other => panic!("the ledger took a batch it cannot store: {other:?}"),
    }
    let refused = settlements.refused(&batch).await?;
    let indices: Vec<usize> = refused.iter().map(|(index, _)| *index).collect();
    assert_eq!(indices, vec![1, 4]);

    let quarantined: Vec<Quarantined> = refused
        .iter()
        .map(|(index, error)| Quarantined::new(0, *index as i64, b"{}", error))
        .collect();
    let rest: Vec<Transfer> = batch
        .iter()
        .enumerate()
        .filter(|(index, _)| !indices.contains(index))
        .map(|(_, transfer)| transfer.clone())
        .collect();
    let settled = settlements.apply(&rest, &quarantined, &whole).await?;
    assert_eq!(settled.transfers.len(), 5);
    assert_eq!(settlements.read_positions("log").await?[&0], 7);
    assert_eq!(
        ledger.balance(1, "USD").await?.map(|b| b.balance_minor),
        Some(950)
    );
    let rows = quarantine::list(ledger.pool(), 10).await?;
    let mut offsets: Vec<i64> = rows.iter().map(|row| row.log_offset).collect();
    offsets.sort();
    assert_eq!(offsets, vec![1, 4]);
    let errors: Vec<&str> = rows.iter().map(|row| row.error.as_str()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("0x00") && e.contains("SQLSTATE 22021"))
            && errors
                .iter()
                .any(|e| e.contains("out of range") && e.contains("SQLSTATE 22008")),
        "the database's own words: {errors:?}"
    );
    // The batch read again after a crash records nothing twice.
    settlements
        .apply(&rest, &quarantined, &advance("log", 7, 7))
        .await?;
    assert_eq!(quarantine::list(ledger.pool(), 10).await?.len(), 2);
    Ok(())
}

/// One random case of the property below: a message a guest might publish and the request it
/// answers.
#[derive(Debug, Clone)]
struct Case {
    sender_id: i64,
    receiver_id: i64,
    currency: String,
    amount_minor: i64,
    description: Option<String>,
    created_at_ms: i64,
    guest_version: String,
    /// 0: as is; 1: a field left out; 2: a field given twice; 3: an unknown field; 4: another
    /// schema version.
    damage: u8,
}

const RECEIVED_AT_MS: u64 = 1_795_960_800_123;

fn cases() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    // Weighted towards what a faithful guest writes, so that the guard admits enough cases.
    let id = prop_oneof![
        4 => Just(1i64),
        4 => Just(2),
        2 => Just(3),
        1 => Just(0),
        1 => Just(-1),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
    ];
    let currency = prop_oneof![
        4 => Just("USD".to_string()),
        4 => Just("JPY".to_string()),
        1 => Just("usd".to_string()),
        1 => Just("XXX".to_string()),
        1 => Just("U\0D".to_string()),
        1 => Just(String::new()),
    ];
    let amount = prop_oneof![
        4 => Just(1i64),
        4 => Just(1_050),
        2 => Just(i64::MAX),
        1 => Just(0),
        1 => Just(-5),
    ];
    let description = proptest::option::of(prop_oneof![
        3 => "\\PC{0,40}",
        2 => "[\\x00-\\x7f]{0,20}",
        1 => Just("a\0b".to_string()),
        1 => Just("é 日本 😀 \u{a0}\u{2028}".to_string()),
        1 => Just("x".repeat(100_000)),
    ]);
    let created_at = prop_oneof![
        4 => Just(RECEIVED_AT_MS as i64),
        2 => Just(RECEIVED_AT_MS as i64 + 900),
        1 => Just(i64::MAX),
        1 => Just(-1),
        1 => Just(0),
        1 => Just(transferd_message::MAX_CREATED_AT_MS),
    ];
    let version = prop_oneof![
        4 => Just("sha256:v".to_string()),
        1 => Just("sha256:v\0".to_string())
    ];
    let damage =
        prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3), 1 => Just(4)];
    (
        (id.clone(), id, currency, amount),
        (description, created_at, version, damage),
    )
        .prop_map(
            |(
                (sender_id, receiver_id, currency, amount_minor),
                (description, created_at_ms, guest_version, damage),
            )| Case {
                sender_id,
                receiver_id,
                currency,
                amount_minor,
                description,
                created_at_ms,
                guest_version,
                damage,
            },
        )
}

/// The payload a guest publishes for `case`, written by hand (not through the contract's
/// serialiser) so that it can be damaged.
fn payload(case: &Case, amount_text: &str) -> Vec<u8> {
    let created_at = u64::try_from(case.created_at_ms)
        .map(transferd_message::time::rfc3339_from_ms)
        .unwrap_or_default();
    let mut fields = vec![
        ("transaction_id", serde_json::json!(GUARDED_ID).to_string()),
        ("sender_id", case.sender_id.to_string()),
        ("receiver_id", case.receiver_id.to_string()),
        ("amount", amount_text.to_string()),
        ("amount_minor", case.amount_minor.to_string()),
        ("currency", serde_json::json!(case.currency).to_string()),
        (
            "description",
            serde_json::json!(case.description).to_string(),
        ),
        ("created_at", serde_json::json!(created_at).to_string()),
        ("created_at_ms", case.created_at_ms.to_string()),
        (
            "guest_version",
            serde_json::json!(case.guest_version).to_string(),
        ),
        ("schema_version", "1".to_string()),
    ];
    match case.damage {
        1 => {
            fields.remove(7);
        }
        2 => fields.push(("sender_id", "3".into())),
        3 => fields.push(("note", "1".into())),
        4 => fields[10].1 = "2".into(),
        _ => {}
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

const GUARDED_ID: &str = "01a20c00-0000-7000-8000-000000000001";

/// Every message the publish guard admits is one settlement's parser reads and the real ledger
/// applies (completed, or rejected for a business reason): none makes the insert fail. Cases
/// are random messages with unicode, NUL and control characters, extreme integers, missing,
/// duplicated and unknown fields and huge strings, each published for the request it names.
#[tokio::test]
async fn every_message_the_guard_admits_the_ledger_applies() -> anyhow::Result<()> {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    use transferd::capabilities::guard::{Expected, check_publish, requested_minor};
    use transferd_guest::logic::{Hold, Outgoing};
    use transferd_guest::money::{currency_exponent, format_minor};
    use transferd_message::TransferMessage;

    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    for user in [1, 2, 3] {
        ledger.deposit(Uuid::now_v7(), user, "USD", 100_000).await?;
        ledger.deposit(Uuid::now_v7(), user, "JPY", 100_000).await?;
    }
    let mut runner = TestRunner::deterministic();
    let strategy = cases();
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..400 {
        let case = strategy
            .new_tree(&mut runner)
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .current();
        let exponent = currency_exponent(&case.currency).unwrap_or(2);
        let amount_text = format_minor(case.amount_minor, exponent);
        let expected = Expected {
            transaction_id: Uuid::parse_str(GUARDED_ID)?,
            sender_id: case.sender_id,
            receiver_id: case.receiver_id,
            currency: case.currency.clone(),
            amount_minor: requested_minor(&amount_text, &case.currency),
            principal: None,
            description: case.description.clone(),
            guest_version: "sha256:v".into(),
            received_at_ms: RECEIVED_AT_MS,
            metadata: None,
            pending: false,
            expires_in_s: None,
        };
        let outgoing = Outgoing {
            topic: "transfer_topic".into(),
            key: case.sender_id.to_string(),
            payload: payload(&case, &amount_text),
            hold: Some(Hold {
                account_id: case.sender_id,
                currency: case.currency.clone(),
                amount_minor: case.amount_minor,
            }),
        };
        if check_publish(&expected, 0, &outgoing).is_err() {
            refused += 1;
            continue;
        }
        admitted += 1;
        let message = TransferMessage::parse(&outgoing.payload)
            .map_err(|error| anyhow::anyhow!("admitted, unreadable: {error} {case:?}"))?;
        let mut transfer = Transfer::of(message, None);
        // A fresh id per case: the ledger would skip a second one as applied.
        transfer.transaction_id = Uuid::now_v7();
        let applied = settlements.apply(&[transfer], &[], &Advance::none()).await;
        assert!(
            applied.is_ok(),
            "the guard admitted what the ledger refuses: {applied:?} {case:?}"
        );
    }
    // Not a vacuous property: both sides are exercised.
    assert!(
        admitted >= 20 && refused >= 100,
        "{admitted} admitted, {refused} refused"
    );
    Ok(())
}

/// No script takes a hold while `holds_trusted` is missing; it is written only by a claim made
/// in the same data (a Redis that lost its data since the claim loses the claim too); and the
/// time a hold was taken (Redis's clock) is kept with it and goes with it.
#[tokio::test]
async fn holds_are_taken_only_while_trusted_and_keep_the_time_they_were_taken() -> anyhow::Result<()>
{
    use redis::AsyncCommands;
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = BalanceCache::new(&services("postgres", &prefix))?;
    let ttl = std::time::Duration::from_secs(60);
    assert!(cache.store_balance(1, "USD", 500, 1).await?);
    assert!(cache.store_balance(2, "USD", 70, 1).await?);
    let on_first = HoldRequest {
        hold_on: 1,
        amount_minor: 100,
        record: b"a",
    };
    // Not trusted: nothing held, by either script; reads still answer.
    assert_eq!(
        cache.reserve_hold("t1", 1, "USD", 100, b"{}").await?,
        HoldOutcome::Untrusted
    );
    assert_eq!(
        cache
            .available_holding(&[2, 1], "USD", "t1", &on_first)
            .await?,
        (vec![Some(70), Some(500)], false)
    );
    assert_eq!(cache.held(1, "USD").await?, 0);
    assert_eq!(cache.pending("t1").await?, None);

    // A claim that Redis lost (as a restart without its data loses every key) confirms nothing.
    assert_eq!(cache.claim_trust("a", ttl).await?, TrustClaim::Claimed);
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let _: () = redis.del(format!("{prefix}holds_trust_claim:a")).await?;
    assert!(!cache.confirm_trust("a").await?);
    assert_eq!(
        cache.reserve_hold("t1", 1, "USD", 100, b"{}").await?,
        HoldOutcome::Untrusted
    );
    // A claim still there: trusted, for every replica.
    assert_eq!(cache.claim_trust("b", ttl).await?, TrustClaim::Claimed);
    assert!(cache.confirm_trust("b").await?);
    assert_eq!(cache.claim_trust("c", ttl).await?, TrustClaim::Trusted);
    assert!(
        cache.confirm_trust("b").await?,
        "confirming again changes nothing"
    );

    let before = cache.now_ms().await?;
    assert_eq!(
        cache.reserve_hold("t1", 1, "USD", 100, b"{}").await?,
        HoldOutcome::Reserved
    );
    assert_eq!(
        cache
            .available_holding(&[2, 1], "USD", "t2", &on_first)
            .await?,
        (vec![Some(70), Some(400)], true)
    );
    let after = cache.now_ms().await?;
    let mut held = cache.held_transfers(100).await?;
    held.sort_by(|a, b| a.transaction_id.cmp(&b.transaction_id));
    assert_eq!(held.len(), 2, "{held:?}");
    for hold in &held {
        let taken = hold.taken_at_ms.expect("a hold keeps its time");
        assert!(
            (before..=after).contains(&taken),
            "{before} <= {taken} <= {after}"
        );
    }
    cache.release_hold("t1", 1, "USD").await?;
    cache
        .settle(
            &[],
            &[SettledHold {
                transaction_id: "t2".into(),
                user_id: 1,
                currency: "USD".into(),
            }],
        )
        .await?;
    let times: std::collections::HashMap<String, String> =
        redis.hgetall(format!("{prefix}hold_times:1:USD")).await?;
    assert!(times.is_empty(), "the times go with their holds: {times:?}");
    assert!(cache.held_transfers(100).await?.is_empty());
    Ok(())
}

/// Expiry without waiting: a clock past a pending transfer's expiry finds it due, records
/// the expiry as its one action (a post is then refused, and an expiry before its time was),
/// and settling the expiry's message releases the reservation, once.
#[tokio::test]
async fn a_pending_transfer_expires_by_the_clock_it_is_given() -> anyhow::Result<()> {
    use transferd::stores::actions::{NewAction, Refusal};
    use transferd_message::{Action, LogMessage};
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 10_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 100).await?;
    let created_at_ms = chrono::Utc::now().timestamp_millis();
    let expires_at_ms = created_at_ms + 60_000;
    let pending = Transfer {
        created_at_ms,
        step: Step::Pending { expires_at_ms },
        ..message(1, 2, 3_000)
    };
    settlements
        .apply(std::slice::from_ref(&pending), &[], &Advance::none())
        .await?;
    let id = pending.transaction_id;
    let expire_at = |now_ms| NewAction {
        transaction_id: id,
        action_id: Uuid::now_v7(),
        action: Action::Expire,
        amount_minor: None,
        now_ms,
    };
    assert!(ledger.due_for_expiry(created_at_ms, 10).await?.is_empty());
    assert_eq!(
        ledger.accept_action(&expire_at(created_at_ms)).await?,
        Err(Refusal::NotDueYet)
    );
    let later = expires_at_ms + 1;
    assert_eq!(ledger.due_for_expiry(later, 10).await?, vec![id]);
    let expiry = ledger
        .accept_action(&expire_at(later))
        .await?
        .expect("recorded");
    let post = NewAction {
        action: Action::Post,
        now_ms: created_at_ms,
        ..expire_at(created_at_ms)
    };
    assert_eq!(
        ledger.accept_action(&post).await?,
        Err(Refusal::Taken(Action::Expire))
    );
    let LogMessage::Action(read) = LogMessage::parse(&expiry.to_bytes())? else {
        anyhow::bail!("not an action")
    };
    let step = Transfer::of_action(read, None);
    for _ in 0..2 {
        settlements
            .apply(std::slice::from_ref(&step), &[], &Advance::none())
            .await?;
    }
    let record = ledger.transfer(id).await?.expect("in the ledger");
    assert_eq!(record.status.as_str(), "expired");
    let accounts = ledger.balances(1).await?;
    assert_eq!(
        (accounts[0].balance_minor, accounts[0].pending_debits_minor),
        (10_000, 0),
        "released, not moved"
    );
    assert!(ledger.due_for_expiry(later, 10).await?.is_empty());
    Ok(())
}

/// A reservation changed behind the ledger's back (as a superuser could) is named by
/// `ledger verify`: pending amounts are checked against the pending transfers.
#[tokio::test]
async fn verify_names_a_reservation_that_does_not_match_its_transfers() -> anyhow::Result<()> {
    let ledger = fresh_ledger().await?;
    let settlements = Settlements::new(ledger.pool().clone());
    ledger.deposit(Uuid::now_v7(), 1, "USD", 10_000).await?;
    ledger.deposit(Uuid::now_v7(), 2, "USD", 100).await?;
    let pending = Transfer {
        step: Step::Pending {
            expires_at_ms: 1_795_960_900_000,
        },
        ..message(1, 2, 3_000)
    };
    settlements.apply(&[pending], &[], &Advance::none()).await?;
    verify(ledger.pool()).await?;
    sqlx::query("UPDATE accounts SET pending_debits_minor = 0 WHERE user_id = 1")
        .execute(ledger.pool())
        .await?;
    match verify(ledger.pool()).await {
        Err(VerifyError::Broken(JournalBreak::Pending {
            user_id: 1,
            recorded_debits: 0,
            found_debits: 3_000,
            ..
        })) => Ok(()),
        other => anyhow::bail!("verify did not name the reservation: {other:?}"),
    }
}
