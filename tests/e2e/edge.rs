//! The HTTP edge: a client that stalls in its headers or its body is cut off in time while
//! others are served; oversized heads are refused; 405 says what is allowed; HEAD works where
//! GET does.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transferd_e2e::{Host, HostOptions, Namespace};

async fn host_with_short_timeouts(namespace: &Namespace) -> anyhow::Result<Host> {
    let mut options = HostOptions::new(namespace);
    options
        .extra_env
        .push(("TRANSFERD_HEADER_TIMEOUT_MS".into(), "1000".into()));
    options
        .extra_env
        .push(("TRANSFERD_BODY_TIMEOUT_MS".into(), "1000".into()));
    Host::start_with(namespace, options).await
}

/// Everything the server sends until it closes, or until `limit`.
async fn read_until_closed(
    stream: &mut TcpStream,
    limit: Duration,
) -> anyhow::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((received, started.elapsed())),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => anyhow::bail!(
                "still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

#[tokio::test]
async fn a_client_stalled_in_its_headers_is_cut_off_while_others_are_served() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = host_with_short_timeouts(&namespace).await?;
    let mut slow = TcpStream::connect(("127.0.0.1", host.port)).await?;
    slow.write_all(b"POST /transfers HTTP/1.1\r\nHost: transferd\r\nContent-")
        .await?;
    // Others are served meanwhile.
    for _ in 0..5 {
        let reply = host
            .client
            .get(format!("{}/healthz", host.base_url))
            .send()
            .await?;
        assert_eq!(reply.status().as_u16(), 200);
    }
    let (_, after) = read_until_closed(&mut slow, Duration::from_secs(5)).await?;
    assert!(
        after < Duration::from_secs(4),
        "closed {after:?} after the stall began"
    );
    Ok(())
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_answered_408() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = host_with_short_timeouts(&namespace).await?;
    let token = transferd_e2e::auth::user_token(1);
    let mut slow = TcpStream::connect(("127.0.0.1", host.port)).await?;
    let head = format!(
        "POST /transfers HTTP/1.1\r\nHost: transferd\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sender_id\""
    );
    slow.write_all(head.as_bytes()).await?;
    let (received, after) = read_until_closed(&mut slow, Duration::from_secs(5)).await?;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(after < Duration::from_secs(4), "answered after {after:?}");
    Ok(())
}

#[tokio::test]
async fn an_oversized_head_is_refused() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let reply = host
        .client
        .get(format!("{}/healthz", host.base_url))
        .header("x-padding", "p".repeat(32 * 1024))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 431);
    Ok(())
}

#[tokio::test]
async fn a_wrong_method_hears_what_is_allowed_and_head_works_where_get_does() -> anyhow::Result<()>
{
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let reply = host
        .client
        .delete(format!("{}/transfers", host.base_url))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 405);
    assert_eq!(reply.headers()["allow"], "GET, HEAD, POST");
    let reply = host
        .client
        .post(format!("{}/healthz", host.base_url))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 405);
    assert_eq!(reply.headers()["allow"], "GET, HEAD");
    let reply = host
        .client
        .head(format!("{}/healthz", host.base_url))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 200);
    assert!(reply.bytes().await?.is_empty(), "HEAD has no body");
    Ok(())
}

#[tokio::test]
async fn a_caller_over_its_rate_hears_429_with_retry_after_and_others_are_served()
-> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    for (name, value) in [
        ("TRANSFERD_RATE_LIMIT_PER_SECOND", "1"),
        ("TRANSFERD_RATE_LIMIT_BURST", "3"),
    ] {
        options.extra_env.push((name.into(), value.into()));
    }
    let host = Host::start_with(&namespace, options).await?;
    let balances = |user: i64| {
        host.client
            .get(format!("{}/accounts/{user}/balances", host.base_url))
            .bearer_auth(transferd_e2e::auth::user_token(user))
            .send()
    };
    for _ in 0..3 {
        assert_ne!(balances(1).await?.status().as_u16(), 429);
    }
    let refused = balances(1).await?;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_ne!(
        balances(2).await?.status().as_u16(),
        429,
        "another caller is served"
    );
    Ok(())
}

#[tokio::test]
async fn the_whole_request_limit_cuts_slow_requests_but_not_a_transfer() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options
        .extra_env
        .push(("TRANSFERD_REQUEST_TIMEOUT_MS".into(), "500".into()));
    options
        .extra_env
        .push(("TRANSFERD_BODY_TIMEOUT_MS".into(), "2000".into()));
    let host = Host::start_with(&namespace, options).await?;
    let stalled = |path: &str, token: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: transferd\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user_id\""
        )
    };

    let mut deposit = TcpStream::connect(("127.0.0.1", host.port)).await?;
    let head = stalled("/admin/deposits", transferd_e2e::ADMIN_TOKEN);
    deposit.write_all(head.as_bytes()).await?;
    let (received, after) = read_until_closed(&mut deposit, Duration::from_secs(5)).await?;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("did not finish within 500 ms"), "{text}");
    assert!(
        after < Duration::from_millis(1_800),
        "answered after {after:?}"
    );

    // A transfer is held to its own limits only (here the body's): its answer must say what
    // became of the money, so the whole-request limit never cuts it short.
    let mut transfer = TcpStream::connect(("127.0.0.1", host.port)).await?;
    let head = stalled("/transfers", &transferd_e2e::auth::user_token(1));
    transfer.write_all(head.as_bytes()).await?;
    let (received, after) = read_until_closed(&mut transfer, Duration::from_secs(5)).await?;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        after >= Duration::from_millis(1_800),
        "answered after {after:?}"
    );
    Ok(())
}
