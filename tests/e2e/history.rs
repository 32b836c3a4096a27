//! History end to end: `GET /transfers`, `GET /accounts/{id}/entries` and
//! `GET /accounts/{id}/balances?at=`, against transfers the real worker settled.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use transferd_e2e::auth::{admin_token, user_token};
use transferd_e2e::{Host, Namespace};

const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Users 1 and 2 funded in USD, user 3 in EUR; then, one at a time so each has its own
/// millisecond, transfers 1→2 of 1.00 … `count`.00 USD, 2→1 of 0.50 USD and 1→3 nothing
/// (3 has no USD account: refused before the log). Returns the accepted ids in order.
async fn settled_history(count: i64) -> anyhow::Result<(Namespace, Host, Vec<String>)> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "5.00").await?;
    host.deposit(1, "EUR", "7.00").await?;
    let mut ids = Vec::new();
    for amount in 1..=count {
        ids.push(accept(&host, 1, 2, &format!("{amount}.00"), "USD").await?);
    }
    ids.push(accept(&host, 2, 1, "0.50", "USD").await?);
    let transfers = i64::try_from(ids.len())?;
    let settled = namespace.wait_settled(transfers, SETTLE_LIMIT).await?;
    anyhow::ensure!(settled == transfers, "{settled} of {transfers} settled");
    Ok((namespace, host, ids))
}

async fn accept(
    host: &Host,
    sender: i64,
    receiver: i64,
    amount: &str,
    currency: &str,
) -> anyhow::Result<String> {
    let body = json!({"sender_id": sender, "receiver_id": receiver, "amount": amount, "currency": currency});
    let reply = host.transfer(body).await?;
    anyhow::ensure!(reply.status == 200, "{}", reply.body);
    tokio::time::sleep(Duration::from_millis(3)).await;
    Ok(reply.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Every page of `path` (which has a query already) as `token`, following `next_cursor`; the
/// rows under `field`, in order, and how many pages there were.
async fn all_pages(
    host: &Host,
    path: &str,
    field: &str,
    token: &str,
) -> anyhow::Result<(Vec<Value>, usize)> {
    let mut rows = Vec::new();
    let mut pages = 0;
    let mut next = path.to_string();
    loop {
        let reply = host.get_as(&next, token).await?;
        anyhow::ensure!(
            reply.status == 200,
            "{next}: {} {}",
            reply.status,
            reply.body
        );
        pages += 1;
        rows.extend(reply.body[field].as_array().cloned().unwrap_or_default());
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => next = format!("{path}&after={cursor}"),
            None => return Ok((rows, pages)),
        }
        anyhow::ensure!(pages < 100, "{path} does not end");
    }
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            row["transaction_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn an_account_lists_its_transfers_newest_first_page_by_page() -> anyhow::Result<()> {
    let (_namespace, host, accepted) = settled_history(6).await?;
    let (rows, pages) = all_pages(&host, "/transfers?limit=3", "transfers", &user_token(1)).await?;
    // Newest first: the 2→1 transfer, the six 1→2 ones, then the two deposits (USD, EUR).
    let newest_first: Vec<String> = accepted.iter().rev().cloned().collect();
    assert_eq!(ids(&rows[..7]), newest_first, "{rows:#?}");
    assert_eq!(rows.len(), 9, "seven transfers and two deposits: {rows:#?}");
    assert_eq!(
        pages, 3,
        "pages of three, the last one full with no cursor after it"
    );
    assert!(rows[7..].iter().all(|row| row["kind"] == "deposit"));
    assert_eq!(rows[0]["sender_id"], 2);
    assert_eq!(rows[0]["amount"], "0.50");
    assert!(rows[..7].iter().all(|row| row["status"] == "completed"));

    let (usd, _) = all_pages(
        &host,
        "/transfers?currency=USD",
        "transfers",
        &user_token(1),
    )
    .await?;
    assert_eq!(usd.len(), 8, "every row but the EUR deposit");
    let (eur, _) = all_pages(
        &host,
        "/transfers?currency=EUR",
        "transfers",
        &user_token(1),
    )
    .await?;
    assert_eq!(eur.len(), 1);
    assert_eq!(eur[0]["amount"], "7.00");
    let (rejected, _) = all_pages(
        &host,
        "/transfers?status=rejected",
        "transfers",
        &user_token(1),
    )
    .await?;
    assert!(rejected.is_empty(), "{rejected:#?}");

    // The receiver sees the same transfers from its side; nobody else sees them.
    let (received, _) = all_pages(
        &host,
        "/transfers?account=2&limit=200",
        "transfers",
        &user_token(2),
    )
    .await?;
    assert_eq!(received.len(), 8, "six received, one sent, one deposit");
    let (as_admin, _) =
        all_pages(&host, "/transfers?account=2", "transfers", &admin_token()).await?;
    assert_eq!(ids(&as_admin), ids(&received));
    let stranger = host.get_as("/transfers?account=2", &user_token(3)).await?;
    assert_eq!(stranger.status, 404, "{}", stranger.body);
    let nothing_yet = host.get_as("/transfers", &user_token(3)).await?;
    assert_eq!(nothing_yet.status, 200);
    assert_eq!(
        nothing_yet.body,
        json!({"transfers": [], "next_cursor": null})
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_list_request_names_each_problem() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let token = user_token(1);
    let cases = [
        (
            "/transfers?stauts=completed",
            vec![("stauts", "extra_forbidden")],
        ),
        (
            "/transfers?limit=0&limit=5",
            vec![("limit", "greater_than_equal"), ("limit", "repeated")],
        ),
        (
            "/transfers?limit=201&currency=usd",
            vec![
                ("currency", "string_pattern_mismatch"),
                ("limit", "less_than_equal"),
            ],
        ),
        (
            "/transfers?status=done&after=nope",
            vec![("status", "enum"), ("after", "cursor")],
        ),
        (
            "/transfers?account=-1",
            vec![("account", "greater_than_equal")],
        ),
        (
            "/accounts/1/entries?after=AQ&limit=x",
            vec![("after", "cursor"), ("limit", "int_parsing")],
        ),
        (
            "/accounts/1/balances?at=yesterday",
            vec![("at", "datetime_parsing")],
        ),
        (
            "/accounts/1/balances?currency=USD",
            vec![("currency", "extra_forbidden")],
        ),
    ];
    for (path, expected) in cases {
        let reply = host.get_as(path, &token).await?;
        assert_eq!(reply.status, 422, "{path}: {}", reply.body);
        let mut problems = reply.problems();
        problems.sort();
        let mut expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(field, kind)| (field.to_string(), kind.to_string()))
            .collect();
        expected.sort();
        assert_eq!(problems, expected, "{path}");
    }
    // An entries cursor is not a transfers cursor.
    host.deposit(1, "USD", "1.00").await?;
    host.deposit(1, "EUR", "1.00").await?;
    let entries = host.get_as("/accounts/1/entries?limit=1", &token).await?;
    let cursor = entries.body["next_cursor"].as_str().unwrap_or_default();
    assert!(!cursor.is_empty(), "{}", entries.body);
    let crossed = host
        .get_as(&format!("/transfers?after={cursor}"), &token)
        .await?;
    assert_eq!(crossed.status, 422, "{}", crossed.body);
    Ok(())
}

#[tokio::test]
async fn entries_carry_the_running_balance_and_balances_read_back_in_time() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let before_accounts = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    host.deposit(1, "USD", "100.00").await?;
    host.deposit(2, "USD", "5.00").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_deposits = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for amount in ["10.00", "0.25", "3.50"] {
        accept(&host, 1, 2, amount, "USD").await?;
    }
    // Another sender's transfers may settle before these (another partition): wait, so the
    // journal's order is the order written here.
    anyhow::ensure!(
        namespace.wait_settled(3, SETTLE_LIMIT).await? == 3,
        "not settled"
    );
    accept(&host, 2, 1, "1.00", "USD").await?;
    anyhow::ensure!(
        namespace.wait_settled(4, SETTLE_LIMIT).await? == 4,
        "not settled"
    );

    let token = user_token(1);
    let (entries, pages) =
        all_pages(&host, "/accounts/1/entries?limit=2", "entries", &token).await?;
    assert_eq!(pages, 3);
    let amounts: Vec<&str> = entries
        .iter()
        .map(|e| e["amount"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(amounts, ["1.00", "-3.50", "-0.25", "-10.00", "100.00"]);
    let after: Vec<&str> = entries
        .iter()
        .map(|e| e["balance_after"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(after, ["87.25", "86.25", "89.75", "90.00", "100.00"]);
    for pair in entries.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert!(newer["entry_id"].as_i64() > older["entry_id"].as_i64());
        assert_eq!(
            newer["balance_after_minor"].as_i64(),
            Some(
                older["balance_after_minor"].as_i64().unwrap_or(0)
                    + newer["amount_minor"].as_i64().unwrap_or(0)
            ),
        );
    }
    let balances = host.get_as("/accounts/1/balances", &token).await?;
    assert_eq!(
        balances.body["balances"][0]["balance"], "87.25",
        "the newest entry is the balance now"
    );

    let at_deposits = balances_at(&host, &after_deposits, &token).await?;
    assert_eq!(at_deposits.status, 200, "{}", at_deposits.body);
    assert_eq!(
        at_deposits.body["balances"],
        json!([{"currency": "USD", "balance": "100.00", "balance_minor": 10000}])
    );
    let before = balances_at(&host, &before_accounts, &token).await?;
    assert_eq!(before.body["balances"], json!([]), "no account existed yet");
    let now = balances_at(&host, &now_rfc3339(), &token).await?;
    assert_eq!(now.body["balances"][0]["balance"], "87.25");
    let stranger = balances_at(&host, &after_deposits, &user_token(2)).await?;
    assert_eq!(stranger.status, 404);
    let foreign = host.get_as("/accounts/1/entries", &user_token(2)).await?;
    assert_eq!(foreign.status, 404);
    let for_admin = host
        .get_as("/accounts/1/entries?currency=USD&limit=200", &admin_token())
        .await?;
    assert_eq!(for_admin.body["entries"].as_array().map(Vec::len), Some(5));
    assert_eq!(for_admin.body["next_cursor"], Value::Null);
    Ok(())
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn balances_at(host: &Host, at: &str, token: &str) -> anyhow::Result<transferd_e2e::Reply> {
    host.get_as(&format!("/accounts/1/balances?at={at}"), token)
        .await
}
