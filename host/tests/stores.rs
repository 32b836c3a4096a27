//! The ledger and the cache against real PostgreSQL and Redis: settling is idempotent and
//! serialised, and the cache never goes back to an older balance.

use std::sync::Arc;

use transferd::config::Services;
use transferd::settlement::decide::TransferMessage;
use transferd::settlement::ledger::{Advance, Offsets, SettleError, SettledBatch, Settlements};
use transferd::stores::postgres::Ledger;
use transferd::stores::redis::{BalanceCache, SettledBalance, SettledHold};
use uuid::Uuid;

fn services(database: &str, redis_prefix: &str) -> Services {
    Services {
        database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
        redis_url: "redis://127.0.0.1:6379".into(),
        redis_prefix: redis_prefix.into(),
        kafka_brokers: "127.0.0.1:9092".into(),
        topic_prefix: String::new(),
        topic_partitions: 1,
        kafka_timeout_ms: 5_000,
        database_timeout_ms: 5_000,
        database_connections: 8,
        redis_timeout_ms: 1_000,
        drain_timeout_ms: 10_000,
    }
}

async fn fresh_ledger() -> anyhow::Result<Ledger> {
    let database = format!("transferd_store_test_{}", Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&admin)
        .await?;
    admin.close().await;
    let ledger = Ledger::connect(&services(&database, "")).await?;
    ledger.migrate().await?;
    Ok(ledger)
}

fn message(sender_id: i64, receiver_id: i64, amount_minor: i64) -> TransferMessage {
    TransferMessage {
        transaction_id: Uuid::now_v7(),
        sender_id,
        receiver_id,
        amount_minor,
        currency: "USD".into(),
        description: None,
        created_at_ms: 1_795_960_800_000,
    }
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

    let settled = settlements.apply(&batch, &Advance::none()).await?;
    let statuses: Vec<(&str, bool)> = settled
        .transfers
        .iter()
        .map(|t| (t.outcome.status(), t.newly_applied))
        .collect();
    assert_eq!(
        statuses,
        vec![("completed", true), ("rejected", true), ("completed", true)]
    );
    assert_eq!(
        settled.transfers[1].outcome.reason(),
        Some("insufficient_funds")
    );
    let after_first = (
        ledger.balance(1, "USD").await?,
        ledger.balance(2, "USD").await?,
    );
    assert_eq!(after_first.0.map(|b| b.balance_minor), Some(40));
    assert_eq!(after_first.1.map(|b| b.balance_minor), Some(61));

    let again = settlements.apply(&batch, &Advance::none()).await?;
    assert!(
        again.transfers.iter().all(|t| !t.newly_applied),
        "a redelivery applies nothing"
    );
    assert_eq!(
        again.transfers[1].outcome.status(),
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
    let batch: Vec<TransferMessage> = (0..200)
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
            async move { settlements.apply(&batch, &Advance::none()).await }
        },
        {
            let (settlements, batch) = (Settlements::new(ledger.pool().clone()), batch.clone());
            async move { settlements.apply(&batch, &Advance::none()).await }
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
        from: Offsets::from([(0, from)]),
        to: Offsets::from([(0, to)]),
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
        .apply(&[message(1, 2, 100)], &advance("log", 0, 1))
        .await?;
    assert_eq!(settlements.read_positions("log").await?[&0], 1);

    // A second worker that read from offset 0 too: refused, nothing applied.
    let late = settlements
        .apply(&[message(1, 2, 300)], &advance("log", 0, 1))
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
        first.apply(&ten, &from_zero),
        second.apply(&twenty, &from_zero),
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
    settlements
        .apply(&[paid.clone(), refused.clone()], &Advance::none())
        .await?;

    let (messages, settled) = settlements.outstanding_effects(10).await?;
    assert_eq!(messages, vec![paid.clone(), refused.clone()]);
    let statuses: Vec<&str> = settled
        .transfers
        .iter()
        .map(|t| t.outcome.status())
        .collect();
    assert_eq!(statuses, vec!["completed", "rejected"]);
    assert_eq!(
        settled.accounts[&(1, "USD".to_string())].balance_minor,
        40,
        "the balances the effects put in the cache are the ledger's"
    );
    settlements.effects_done(&[paid.transaction_id]).await?;
    let (left, _) = settlements.outstanding_effects(10).await?;
    assert_eq!(left, vec![refused.clone()]);
    settlements.effects_done(&[refused.transaction_id]).await?;
    assert!(settlements.outstanding_effects(10).await?.0.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_older_balance_never_overwrites_a_newer_one() -> anyhow::Result<()> {
    let prefix = format!("storetest{}:", Uuid::now_v7().simple());
    let cache = BalanceCache::new(&services("postgres", &prefix))?;
    assert!(cache.store_balance(1, "USD", 500, 5).await?);
    assert!(
        !cache.store_balance(1, "USD", 900, 4).await?,
        "version 4 is older than 5"
    );
    assert_eq!(cache.available(1, "USD").await?, Some(500));

    // Settlement's atomic step follows the same rule, and releases holds once.
    let held = cache.reserve_hold("tx-1", 1, "USD", 200, b"{}").await?;
    assert_eq!(held, transferd::stores::redis::HoldOutcome::Reserved);
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
