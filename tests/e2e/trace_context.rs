//! One request followed end to end: its `X-Request-Id` and W3C trace come back on the answer,
//! ride on the transfer's Kafka message and on its settlement event, and appear on the JSON
//! log line that says it settled.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transferd_e2e::{Host, HostOptions, Namespace, auth, consume, consume_transfer_events};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The value of header `name` among a consumed message's headers.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// JSON log lines of the host whose message is `message`.
fn log_lines(host: &Host, message: &str) -> Vec<Value> {
    host.log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .collect()
}

/// Funds two accounts, then sends 1.00 between them with `request_id` and the caller's
/// trace; checks the answer is 200 and echoes the request id; the transaction id.
async fn traced_transfer(host: &Host, request_id: &str) -> anyhow::Result<String> {
    host.deposit(1, "USD", "10.00").await?;
    host.deposit(2, "USD", "1.00").await?;
    let body = json!({"sender_id": 1, "receiver_id": 2, "amount": "1.00", "currency": "USD"});
    let answered = host
        .client
        .post(format!("{}/transfers", host.base_url))
        .bearer_auth(auth::user_token(1))
        .header("x-request-id", request_id)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(answered.status(), 200);
    let echoed = answered
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(echoed.as_deref(), Some(request_id));
    let transaction_id = answered.json::<Value>().await?["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(!transaction_id.is_empty(), "the answer names the transfer");
    Ok(transaction_id)
}

#[tokio::test]
async fn a_request_id_and_trace_follow_a_transfer_to_its_settlement() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.extra_env = vec![
        ("TRANSFERD_LOG_FORMAT".into(), "json".into()),
        ("TRANSFERD_LOG".into(), "info".into()),
    ];
    let host = Host::start_with(&namespace, options).await?;
    let transaction_id = traced_transfer(&host, "e2e-request-1").await?;

    // The transfer's message: the request id, and a traceparent in the caller's trace with
    // this service's span as the parent.
    let topic = namespace.transfer_topic();
    let messages = consume(&host_brokers(), &topic, 1, Duration::from_secs(15)).await?;
    assert_eq!(messages.len(), 1, "one transfer message");
    let sent = &messages[0].headers;
    assert_eq!(
        header(sent, "transaction_id"),
        Some(transaction_id.as_str())
    );
    assert_eq!(header(sent, "request_id"), Some("e2e-request-1"));
    let traceparent = header(sent, "traceparent").unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")) && traceparent.ends_with("-01"),
        "the caller's trace continues: {traceparent}"
    );
    assert!(
        !traceparent.contains(CALLER_SPAN),
        "with a span of its own: {traceparent}"
    );

    // Its entry in the settlement event carries the same request id and trace.
    let events_topic = format!("{}transfer_events", namespace.topic_prefix());
    let events =
        consume_transfer_events(&host_brokers(), &events_topic, 1, Duration::from_secs(15)).await?;
    assert_eq!(events.len(), 1, "one settled transfer reported");
    assert_eq!(events[0]["status"], "completed");
    assert_eq!(events[0]["request_id"], "e2e-request-1");
    assert_eq!(events[0]["traceparent"], traceparent);

    // And the settlement's log line, in JSON.
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let lines = log_lines(&host, "settled");
        if let Some(line) = lines
            .into_iter()
            .find(|line| line["fields"]["transaction_id"] == transaction_id.as_str())
        {
            break line;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no settled line for the transfer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settled["fields"]["request_id"], "e2e-request-1");
    assert_eq!(settled["fields"]["trace_id"], TRACE_ID);
    assert_eq!(settled["level"], "INFO");
    Ok(())
}

#[tokio::test]
async fn a_request_without_ids_gets_minted_ones_and_bad_ones_are_replaced() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let host = Host::start(&namespace).await?;
    let plain = host
        .client
        .get(format!("{}/healthz", host.base_url))
        .send()
        .await?;
    let minted = plain
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(is_trace_id(&minted), "minted from the trace id: {minted:?}");

    let too_long = "r".repeat(129);
    let replaced = host
        .client
        .get(format!("{}/healthz", host.base_url))
        .header("x-request-id", &too_long)
        .header("traceparent", "00-zz-not-a-trace")
        .send()
        .await?;
    assert_eq!(
        replaced.status(),
        200,
        "a bad trace header is never an error"
    );
    let echoed = replaced
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_ne!(echoed, too_long);
    assert!(is_trace_id(echoed), "replaced by the trace id: {echoed:?}");
    Ok(())
}

/// 32 lowercase hex digits, not all zero: a W3C trace id.
fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// The shared broker the harness's hosts use.
fn host_brokers() -> String {
    transferd_e2e::KAFKA_BROKERS.to_string()
}

/// A stand-in OTLP/HTTP collector: answers 200 to every request and keeps the bodies.
struct Collector {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    async fn start() -> anyhow::Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_exports(stream, std::sync::Arc::clone(&kept)));
            }
        });
        Ok(Collector { port, bodies })
    }

    /// Every body received so far, concatenated.
    fn received(&self) -> Vec<u8> {
        self.bodies
            .lock()
            .map(|bodies| bodies.concat())
            .unwrap_or_default()
    }
}

/// Reads HTTP/1.1 requests with a `content-length` off one connection, answering each 200.
async fn serve_exports(
    mut stream: tokio::net::TcpStream,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    loop {
        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buffer.len() < body_start + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        if let Ok(mut kept) = bodies.lock() {
            kept.push(buffer[body_start..body_start + length].to_vec());
        }
        buffer.drain(..body_start + length);
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn with_an_otlp_endpoint_the_request_and_its_settlement_are_exported() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.extra_env = vec![
        (
            "TRANSFERD_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{}/v1/traces", collector.port),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("TRANSFERD_LOG".into(), "info".into()),
    ];
    let host = Host::start_with(&namespace, options).await?;
    let transaction_id = traced_transfer(&host, "e2e-otlp-1").await?;

    // The spans arrive in protobuf: the trace id as 16 raw bytes, strings as they are.
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[i * 2..i * 2 + 2], 16))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let received = collector.received();
        let request_span = contains(&received, b"e2e-otlp-1");
        // Only the settlement's span carries the transaction id.
        let settle_span = contains(&received, transaction_id.as_bytes());
        if request_span && settle_span {
            assert!(
                contains(&received, &trace_id),
                "the exported spans continue the caller's trace"
            );
            assert!(contains(&received, b"transferd"), "the service is named");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no request and settle spans exported within 15 s ({} bytes received)",
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn with_trace_headers_off_a_message_carries_its_transaction_id_alone() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let mut options = HostOptions::new(&namespace);
    options.extra_env = vec![("TRANSFERD_KAFKA_TRACE_HEADERS".into(), "false".into())];
    let host = Host::start_with(&namespace, options).await?;
    let transaction_id = traced_transfer(&host, "e2e-untraced-1").await?;
    let messages = consume(
        &host_brokers(),
        &namespace.transfer_topic(),
        1,
        Duration::from_secs(15),
    )
    .await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].headers,
        vec![("transaction_id".to_string(), transaction_id)],
        "no trace headers"
    );
    assert_eq!(namespace.wait_settled(1, Duration::from_secs(30)).await?, 1);
    Ok(())
}
