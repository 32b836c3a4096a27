//! History queries against a large ledger: `GET /transfers`, `GET /accounts/{id}/entries` and
//! `GET /accounts/{id}/balances?at=` as the handlers run them (the host's own `Ledger`
//! methods, on its pool settings), over a ledger seeded with TRANSFERD_BENCH_HISTORY_TRANSFERS
//! transfers (default 10,000,000) among 100,000 users, one of whom (user 1) is in one transfer
//! in fifty; one transfer in fifty was rejected, none of user 1's. Prints p50, p99 and the
//! slowest time of each query. The seeded database is kept (`transferd_bench_history_<count>`)
//! and reused by the next run; drop it to seed again. Run with `./scripts/bench.sh history`.

mod local;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use transferd::stores::history::{EntryQuery, TransferPosition, TransferQuery};
use transferd::stores::postgres::Ledger;
use transferd::stores::transfer_state::TransferStatus;
use uuid::Uuid;

const USERS: i64 = 100_000;
/// Each user's opening deposit: more than any user can spend in the seeded transfers.
const OPENING_MINOR: i64 = 1_000_000_000_000;
/// Transfers seeded per statement, bounding the seeding session's memory.
const CHUNK: i64 = 500_000;
/// Timed calls per query.
const CALLS: usize = 1_000;
/// Timed calls of the query that reads a whole history.
const SLOW_CALLS: usize = 50;
/// The seeded transfers' times spread over one year from this moment.
const SEED_START: &str = "2025-01-01T00:00:00Z";

/// A small deterministic generator (xorshift64*), so every run asks the same questions.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    fn user(&mut self) -> i64 {
        1 + self.below(USERS as u64) as i64
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let transfers: i64 = match std::env::var("TRANSFERD_BENCH_HISTORY_TRANSFERS") {
        Ok(count) => count.parse()?,
        Err(_) => 10_000_000,
    };
    anyhow::ensure!(transfers >= CHUNK, "seed at least {CHUNK} transfers");
    let database = format!("transferd_bench_history_{transfers}");
    let ledger = seeded(&database, transfers).await?;
    let samples = Samples::read(ledger.pool()).await?;
    println!(
        "{transfers} transfers among {USERS} users; user 1 is in {} of them. {CALLS} calls per query ({SLOW_CALLS} of the one that matches none):",
        samples.hot_transfers
    );
    println!();
    println!("| query | p50 | p99 | slowest |");
    println!("| --- | --- | --- | --- |");
    run_queries(&ledger, &samples).await
}

/// Times each query the API runs, [`CALLS`] times with varied arguments.
async fn run_queries(ledger: &Ledger, samples: &Samples) -> anyhow::Result<()> {
    let page = &|user_id: i64, after: Option<TransferPosition>, status: Option<TransferStatus>| {
        TransferQuery {
            user_id,
            status,
            currency: None,
            metadata: Default::default(),
            after,
            limit: 50,
        }
    };
    let entries = &|user_id: i64, currency: Option<&str>, after: Option<i64>| EntryQuery {
        user_id,
        currency: currency.map(str::to_string),
        after,
        limit: 50,
    };
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    time("transfers, first page, any user", CALLS, || {
        let query = page(random.user(), None, None);
        async move { ledger.transfers_of(&query).await.map(drop) }
    })
    .await?;
    time("transfers, first page, user 1", CALLS, || async move {
        ledger.transfers_of(&page(1, None, None)).await.map(drop)
    })
    .await?;
    time("transfers, a page deep in user 1's history", CALLS, || {
        let query = page(1, samples.hot_position(&mut random), None);
        async move { ledger.transfers_of(&query).await.map(drop) }
    })
    .await?;
    time(
        "transfers, any user, status=rejected (one in fifty)",
        CALLS,
        || {
            let query = page(random.user(), None, Some(TransferStatus::Rejected));
            async move { ledger.transfers_of(&query).await.map(drop) }
        },
    )
    .await?;
    // The worst case: a filter nothing matches reads the whole of the user's history.
    let unmatched = "transfers, user 1, status=rejected (matches none)";
    time(unmatched, SLOW_CALLS, || async move {
        let query = page(1, None, Some(TransferStatus::Rejected));
        ledger.transfers_of(&query).await.map(drop)
    })
    .await?;
    time("entries, first page, any user", CALLS, || {
        let query = entries(random.user(), None, None);
        async move { ledger.entries_of(&query).await.map(drop) }
    })
    .await?;
    time(
        "entries, USD, a page deep in user 1's history",
        CALLS,
        || {
            let query = entries(1, Some("USD"), samples.hot_entry(&mut random));
            async move { ledger.entries_of(&query).await.map(drop) }
        },
    )
    .await?;
    time("balances at a moment, any user", CALLS, || {
        let (user, at) = (random.user(), samples.moment(&mut random));
        async move { ledger.balances_at(user, at).await.map(drop) }
    })
    .await?;
    Ok(())
}

/// Runs `call` `calls` times and prints one row of the table.
async fn time<F, Fut, E>(name: &str, calls: usize, mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        took.push(started.elapsed());
    }
    took.sort();
    let at = |share: f64| took[((took.len() as f64 * share) as usize).min(took.len() - 1)];
    println!(
        "| {name} | {} | {} | {} |",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(took[took.len() - 1])
    );
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1_000.0)
}

/// Positions in user 1's history and moments in the seeded year, to ask about.
struct Samples {
    hot_transfers: i64,
    hot_positions: Vec<TransferPosition>,
    hot_entries: Vec<i64>,
    start: DateTime<Utc>,
}

impl Samples {
    async fn read(pool: &PgPool) -> anyhow::Result<Samples> {
        let hot_transfers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM transfers WHERE sender_id = 1 OR receiver_id = 1",
        )
        .fetch_one(pool)
        .await?;
        let rows: Vec<(DateTime<Utc>, Uuid)> = sqlx::query_as(
            "SELECT created_at, transaction_id FROM transfers
             WHERE sender_id = 1 AND transaction_id::text LIKE '0%' LIMIT 1000",
        )
        .fetch_all(pool)
        .await?;
        let hot_positions = rows
            .into_iter()
            .map(|(created_at, transaction_id)| TransferPosition {
                created_at,
                transaction_id,
            })
            .collect();
        let hot_entries: Vec<i64> = sqlx::query_scalar(
            "SELECT entry_id FROM journal_entries WHERE user_id = 1 AND entry_id % 97 = 0 LIMIT 1000",
        )
        .fetch_all(pool)
        .await?;
        Ok(Samples {
            hot_transfers,
            hot_positions,
            hot_entries,
            start: DateTime::parse_from_rfc3339(SEED_START)?.with_timezone(&Utc),
        })
    }

    fn hot_position(&self, random: &mut Random) -> Option<TransferPosition> {
        let index = random.below(self.hot_positions.len() as u64) as usize;
        self.hot_positions.get(index).copied()
    }

    fn hot_entry(&self, random: &mut Random) -> Option<i64> {
        let index = random.below(self.hot_entries.len() as u64) as usize;
        self.hot_entries.get(index).copied()
    }

    fn moment(&self, random: &mut Random) -> DateTime<Utc> {
        let year_s = 365 * 24 * 3600;
        self.start + chrono::Duration::seconds(random.below(year_s) as i64)
    }
}

/// The benchmark's ledger: migrated and seeded with `transfers`, made once and kept.
async fn seeded(database: &str, transfers: i64) -> anyhow::Result<Ledger> {
    let admin = PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&admin)
            .await?;
    let ledger = if exists {
        Ledger::connect(&local::services(database, 2)).await?
    } else {
        sqlx::query(&format!("CREATE DATABASE \"{database}_seeding\""))
            .execute(&admin)
            .await?;
        let ledger = Ledger::connect(&local::services(&format!("{database}_seeding"), 2)).await?;
        migrate_before(&ledger, CHAIN_MIGRATION).await?;
        seed(&format!("{database}_seeding"), transfers).await?;
        // The chain's migration seals the seeded entries, as it sealed those of a ledger
        // that predates it.
        ledger.migrate().await?;
        ledger.pool().close().await;
        // Renamed once whole, so a seeding cut short is never mistaken for a seeded ledger.
        sqlx::query(&format!(
            "ALTER DATABASE \"{database}_seeding\" RENAME TO \"{database}\""
        ))
        .execute(&admin)
        .await?;
        Ledger::connect(&local::services(database, 2)).await?
    };
    ledger.migrate().await?;
    Ok(ledger)
}

/// The migration that hash-chains the journal: the seeding writes entries as a ledger before
/// it did, and it seals them.
const CHAIN_MIGRATION: i64 = 14;

/// Applies the migrations numbered below `version`.
async fn migrate_before(ledger: &Ledger, version: i64) -> anyhow::Result<()> {
    let mut before = sqlx::migrate!("../migrations");
    let migrations: Vec<_> = before
        .migrations
        .iter()
        .filter(|migration| migration.version < version)
        .cloned()
        .collect();
    before.migrations = migrations.into();
    before.run(ledger.pool()).await?;
    Ok(())
}

/// Deposits for every user, then `transfers` transfers, each chunk written with its journal
/// entries and running balances, as settlement would have left them.
async fn seed(database: &str, transfers: i64) -> anyhow::Result<()> {
    let pool = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{database}")).await?;
    let mut session = pool.acquire().await?;
    // A bulk load by the database owner: no per-statement journal checks, no fsync per chunk.
    for setting in [
        "SET session_replication_role = replica",
        "SET synchronous_commit = off",
        "SET work_mem = '256MB'",
    ] {
        sqlx::query(setting).execute(&mut *session).await?;
    }
    sqlx::query(
        "INSERT INTO accounts (user_id, currency, created_at)
         SELECT u, 'USD', $2::timestamptz FROM generate_series(0, $1::bigint) AS u",
    )
    .bind(USERS)
    .bind(SEED_START)
    .execute(&mut *session)
    .await?;
    let started = Instant::now();
    write_chunk(&mut session, CHUNK_DEPOSITS, 1, USERS, transfers).await?;
    let mut from = 1;
    while from <= transfers {
        let to = (from + CHUNK - 1).min(transfers);
        write_chunk(&mut session, CHUNK_TRANSFERS, from, to, transfers).await?;
        eprintln!(
            "seeded {to} of {transfers} transfers ({} s)",
            started.elapsed().as_secs()
        );
        from = to + 1;
    }
    sqlx::query("ANALYZE").execute(&mut *session).await?;
    Ok(())
}

/// `$1`..`$2` the rows to make, `$3` how many transfers in all, `$4` users, `$5` the deposit,
/// `$6` the year's start: one user's deposit per row.
const CHUNK_DEPOSITS: &str = "
    CREATE TEMPORARY TABLE chunk AS
    SELECT i, gen_random_uuid() AS id, 'deposit'::text AS kind, 0::bigint AS s, i AS r,
           $5::bigint AS amount, false AS rejected, $6::timestamptz AS at
    FROM generate_series($1::bigint, $2::bigint) AS i
    WHERE $3::bigint > 0 AND $4::bigint > 0";

/// The same parameters: transfer `i` at its share of the year; user 1 sends one in a hundred
/// and receives one in a hundred; one in fifty was rejected by settlement, none of user 1's.
const CHUNK_TRANSFERS: &str = "
    CREATE TEMPORARY TABLE chunk AS
    SELECT i, gen_random_uuid() AS id, 'transfer'::text AS kind, s,
           CASE WHEN r = s THEN s % $4::bigint + 1 ELSE r END AS r,
           1 + (hashint8(i * 7) & 2147483647) % 100000 AS amount,
           i % 50 = 7 AS rejected,
           $6::timestamptz + make_interval(secs => i * 31536000.0 / $3::bigint) AS at
    FROM (SELECT i,
                 CASE WHEN i % 100 = 0 THEN 1 ELSE 1 + (hashint8(i) & 2147483647) % $4::bigint END AS s,
                 CASE WHEN i % 100 = 50 THEN 1 ELSE 1 + (hashint8(i + 7919) & 2147483647) % $4::bigint END AS r
          FROM generate_series($1::bigint, $2::bigint) AS i) AS drawn
    WHERE $5::bigint > 0";

/// Writes the rows `make` draws as transfers, their entries (with each account's running
/// balance from its balance before the chunk) and the accounts' new balances.
async fn write_chunk(
    session: &mut sqlx::PgConnection,
    make: &str,
    from: i64,
    to: i64,
    transfers: i64,
) -> anyhow::Result<()> {
    sqlx::query(make)
        .bind(from)
        .bind(to)
        .bind(transfers)
        .bind(USERS)
        .bind(OPENING_MINOR)
        .bind(SEED_START)
        .execute(&mut *session)
        .await?;
    for statement in [
        "INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor, currency,
                                description, status, reason, created_at, settled_at)
         SELECT id, kind, s, r, amount, 'USD', NULL,
                CASE WHEN rejected THEN 'rejected' ELSE 'completed' END,
                CASE WHEN rejected THEN 'insufficient_funds' END, at, at
         FROM chunk",
        "CREATE TEMPORARY TABLE moves AS
         SELECT c.i, m.ord, c.id, m.u, m.a, c.at
         FROM chunk c CROSS JOIN LATERAL (VALUES (1, c.s, -c.amount), (2, c.r, c.amount)) AS m(ord, u, a)
         WHERE NOT c.rejected",
        "INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor, balance_after_minor, created_at)
         SELECT m.id, m.u, 'USD', m.a,
                acc.balance_minor + SUM(m.a) OVER (PARTITION BY m.u ORDER BY m.i, m.ord), m.at
         FROM moves m JOIN accounts acc ON acc.user_id = m.u AND acc.currency = 'USD'
         ORDER BY m.i, m.ord",
        "UPDATE accounts acc SET balance_minor = acc.balance_minor + d.delta, version = acc.version + d.n
         FROM (SELECT u, SUM(a) AS delta, count(*) AS n FROM moves GROUP BY u) AS d
         WHERE acc.user_id = d.u AND acc.currency = 'USD'",
        "DROP TABLE moves",
        "DROP TABLE chunk",
    ] {
        sqlx::query(statement).execute(&mut *session).await?;
    }
    Ok(())
}
