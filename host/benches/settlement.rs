//! Settlement throughput into PostgreSQL: transfers applied per second by the settlement
//! transaction (ledger writes, position, effects record) and the effects' clean-up, for batch
//! sizes 1, 100 and 1000, with the server's durability settings as they are (fsync on,
//! synchronous_commit on by default). Prints the figures; run with
//! `./scripts/bench.sh settlement` (or `cargo bench -p transferd --bench settlement`).

mod local;

use std::time::Instant;

use transferd::settlement::decide::{Step, Transfer};
use transferd::settlement::ledger::{Advance, Offsets, Settlements};
use transferd::stores::postgres::Ledger;
use uuid::Uuid;

const USERS: i64 = 1_000;
const OPENING_MINOR: i64 = 100_000_000;

/// A small deterministic generator (xorshift64*), so every run settles the same transfers.
struct Random(u64);

impl Random {
    fn between(&mut self, low: i64, high: i64) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % ((high - low + 1) as u64)) as i64
    }
}

fn transfers(count: usize, random: &mut Random) -> Vec<Transfer> {
    (0..count)
        .map(|_| {
            let sender_id = random.between(1, USERS);
            let receiver_id = (sender_id + random.between(1, USERS - 1) - 1) % USERS + 1;
            Transfer {
                transaction_id: Uuid::now_v7(),
                sender_id,
                receiver_id,
                amount_minor: random.between(1, 10_000),
                currency: "USD".into(),
                description: Some("benchmark".into()),
                created_at_ms: 1_795_960_800_000,
                metadata: None,
                step: Step::Immediate,
                atomic_batch: None,
                trace: None,
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = format!("transferd_bench_{}", Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&admin)
        .await?;
    if std::env::var_os("BENCH_LOG_SLOW").is_some() {
        sqlx::query(&format!(
            "ALTER DATABASE \"{database}\" SET log_min_duration_statement = 40"
        ))
        .execute(&admin)
        .await?;
    }
    let ledger = Ledger::connect(&local::services(&database, 4)).await?;
    ledger.migrate().await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&admin).await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&admin)
        .await?;
    println!(
        "settlement benchmark: PostgreSQL fsync={fsync} synchronous_commit={synchronous_commit}, {USERS} accounts"
    );

    for user in 1..=USERS {
        ledger
            .deposit(Uuid::now_v7(), user, "USD", OPENING_MINOR)
            .await?;
    }
    let settlements = Settlements::new(ledger.pool().clone());
    let mut position = settlements.positions("bench", &[0]).await?[&0];
    let mut random = Random(0x5EED_1234_ABCD_0001);
    let mut results = Vec::new();
    for (batch_size, count) in [(1usize, 2_000usize), (100, 20_000), (1_000, 50_000)] {
        let messages = transfers(count, &mut random);
        let started = Instant::now();
        let mut completed = 0usize;
        for batch in messages.chunks(batch_size) {
            let next = position + batch.len() as i64;
            let advance = Advance {
                topic: "bench".into(),
                generation: 0,
                from: Offsets::from([(0, position)]),
                to: Offsets::from([(0, next)]),
                last_payload: Default::default(),
            };
            let settled = settlements.apply(batch, &[], &advance).await?;
            if let Some(effects) = settled.effects {
                settlements.effects_done(effects).await?;
            }
            position = next;
            completed += settled
                .transfers
                .iter()
                .filter(|t| t.outcome == transferd::settlement::decide::Outcome::Completed)
                .count();
        }
        let seconds = started.elapsed().as_secs_f64();
        let per_second = count as f64 / seconds;
        println!(
            "batch {batch_size:>5}: {count:>6} transfers in {seconds:>6.2} s = {per_second:>8.0} transfers/s ({completed} completed)"
        );
        results.push(per_second);
    }
    println!("batch 1000 / batch 1 = {:.1}x", results[2] / results[0]);

    let check: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(balance_minor), 0)::bigint FROM accounts),
                (SELECT COUNT(*) FROM accounts WHERE user_id > 0 AND balance_minor < 0)",
    )
    .fetch_one(&sqlx::PgPool::connect(&local::services(&database, 4).database_url).await?)
    .await?;
    assert_eq!(
        check,
        (0, 0),
        "the sum of balances is zero and no user is overdrawn"
    );
    drop(ledger);
    sqlx::query(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
