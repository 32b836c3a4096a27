//! The journal's hash chain end to end: `transferd ledger verify` passes a ledger written by
//! deposits and settlement, and names what was changed behind the ledger's back, as a database
//! superuser could (`session_replication_role = replica` skips the triggers that refuse it).

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;
use transferd_e2e::{Host, HostOptions, Namespace, run_command};

const LIMIT: Duration = Duration::from_secs(60);

/// A ledger with deposits and settled transfers, each its own journal batch: 7 batches of 2
/// entries, 6 accounts (the system's in USD and EUR among them).
async fn settled_ledger(namespace: &Namespace) -> anyhow::Result<Host> {
    let host = Host::start(namespace).await?;
    for user in 1..=3 {
        host.deposit(user, "USD", "100.00").await?;
    }
    host.deposit(1, "EUR", "5.00").await?;
    let transfers = [(1, 2, "10.00"), (2, 3, "0.01"), (3, 1, "99.99")];
    for (settled, (sender, receiver, amount)) in (1..).zip(transfers) {
        let body = json!({"sender_id": sender, "receiver_id": receiver, "amount": amount, "currency": "USD"});
        let reply = host.transfer(body).await?;
        anyhow::ensure!(reply.status == 200, "{}", reply.body);
        // One at a time, so each settles in a batch of its own.
        anyhow::ensure!(namespace.wait_settled(settled, LIMIT).await? == settled);
    }
    Ok(host)
}

/// `transferd ledger verify`: its exit code and its output.
async fn verify(namespace: &Namespace) -> anyhow::Result<(Option<i32>, String)> {
    let options = HostOptions::new(namespace);
    let output = run_command(namespace, &options, &["ledger", "verify"], LIMIT).await?;
    Ok((output.status.code(), String::from_utf8(output.stdout)?))
}

/// Runs `statements` in one session that skips the ledger's triggers, as a superuser can.
async fn behind_the_ledgers_back(
    namespace: &Namespace,
    statements: &[String],
) -> anyhow::Result<()> {
    let mut connection = sqlx::PgConnection::connect(&namespace.database_url()).await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut connection)
        .await?;
    for statement in statements {
        sqlx::query(statement).execute(&mut connection).await?;
    }
    connection.close().await?;
    Ok(())
}

async fn count(namespace: &Namespace, sql: &str) -> anyhow::Result<i64> {
    let pool = namespace.ledger().await?;
    let count = sqlx::query_scalar(sql).fetch_one(&pool).await?;
    pool.close().await;
    Ok(count)
}

#[tokio::test]
async fn an_untouched_ledger_verifies() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let _host = settled_ledger(&namespace).await?;
    let batches = count(&namespace, "SELECT count(*) FROM journal_batches").await?;
    let entries = count(&namespace, "SELECT count(*) FROM journal_entries").await?;
    assert_eq!((batches, entries), (7, 14));
    let (code, output) = verify(&namespace).await?;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "the journal is intact: {batches} batches, {entries} entries, 6 accounts checked"
        )),
        "{output}"
    );
    Ok(())
}

#[tokio::test]
async fn a_running_balance_edited_behind_the_ledgers_back_is_named() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let _host = settled_ledger(&namespace).await?;
    let pool = namespace.ledger().await?;
    // User 2's entry of the first transfer: 100.00 + 10.00.
    let (entry, batch, after): (i64, i64, i64) = sqlx::query_as(
        "SELECT e.entry_id, e.journal_batch, e.balance_after_minor FROM journal_entries e
         JOIN transfers t USING (transaction_id)
         WHERE t.kind = 'transfer' AND e.user_id = 2 ORDER BY e.entry_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    assert_eq!(after, 11_000);
    let edit =
        format!("UPDATE journal_entries SET balance_after_minor = 999999 WHERE entry_id = {entry}");
    behind_the_ledgers_back(&namespace, &[edit]).await?;

    let (code, output) = verify(&namespace).await?;
    assert_eq!(code, Some(2), "{output}");
    let named = format!(
        "batch {batch}: entry {entry} (user 2 USD) records a balance after it of 999999, its account's entries make 11000"
    );
    assert!(output.contains(&named), "{output}");
    Ok(())
}

#[tokio::test]
async fn an_entry_edited_behind_the_ledgers_back_is_named() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let _host = settled_ledger(&namespace).await?;
    let pool = namespace.ledger().await?;
    // The sender's entry of the first transfer, and the batch that holds it.
    let (entry, batch): (i64, i64) = sqlx::query_as(
        "SELECT e.entry_id, e.journal_batch FROM journal_entries e
         JOIN transfers t USING (transaction_id)
         WHERE t.kind = 'transfer' AND e.user_id = t.sender_id ORDER BY e.entry_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let edit = format!("UPDATE journal_entries SET amount_minor = -1 WHERE entry_id = {entry}");
    behind_the_ledgers_back(&namespace, &[edit]).await?;

    let (code, output) = verify(&namespace).await?;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains(&format!("batch {batch}: its entries hash to")),
        "{output}"
    );
    assert!(
        output.contains(&format!("changed: entry {entry} ")) && output.contains("moves -1 where"),
        "{output}"
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_deleted_behind_the_ledgers_back_is_named() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let _host = settled_ledger(&namespace).await?;
    let last = count(&namespace, "SELECT max(batch_id) FROM journal_batches").await?;

    // The last batch: the chain is whole up to it, but its head names it.
    behind_the_ledgers_back(
        &namespace,
        &[
            format!("DELETE FROM journal_entries WHERE journal_batch = {last}"),
            format!("DELETE FROM journal_batches WHERE batch_id = {last}"),
        ],
    )
    .await?;
    let (code, output) = verify(&namespace).await?;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains(&format!("the chain's head names batch {last} (",))
            && output.contains(&format!("the chain ends at batch {}", last - 1)),
        "{output}"
    );

    // A batch in the middle: the chain breaks there.
    behind_the_ledgers_back(
        &namespace,
        &[
            "DELETE FROM journal_entries WHERE journal_batch = 2".to_string(),
            "DELETE FROM journal_batches WHERE batch_id = 2".to_string(),
        ],
    )
    .await?;
    let (code, output) = verify(&namespace).await?;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("batch 2 is missing: the chain goes on at batch 3"),
        "{output}"
    );
    Ok(())
}
