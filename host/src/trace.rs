//! Request ids and W3C trace context: what lets an operator follow one request from its HTTP
//! answer through the transfer log to its settlement.
//!
//! Every request gets a [`TraceContext`]: a trace id (the caller's `traceparent`'s, else
//! minted) with a span id of its own, and a request id (the caller's `X-Request-Id` when it
//! sent a usable one, else the trace id in hex). The request's log lines carry both (a tracing
//! span), the answer echoes `X-Request-Id`, and a published transfer carries them as Kafka
//! headers, which settlement copies onto its log line and onto the transfer's event:
//! `traceparent` always, `request_id` only when it is not the trace id. Each header costs the
//! broker: Tansu's SQLite engine writes every header as a row of its own and reads it back
//! with a join per record, so a header that says nothing new is not sent.
//!
//! The context reaches the publish import as a task-local (see [`scope`]): the guest's call
//! runs inside the decision's task, and the imports' signatures are the WIT's, not ours.

use std::fmt::Write as _;
use std::future::Future;

use http::HeaderMap;

/// The request-id header, read and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context's header; also the Kafka header's name.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The Kafka header carrying the request id.
pub const REQUEST_ID_KAFKA_HEADER: &str = "request_id";

/// Longest request id kept from a caller; a longer one is replaced by a minted id.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The caller's `X-Request-Id`, or the trace id in hex.
    pub request_id: String,
    /// Whether the request id is the trace id's (the caller sent none).
    pub request_id_minted: bool,
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// This request's span: 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The caller's trace flags (01: sampled), or sampled when minted.
    pub flags: u8,
    /// The caller's span, when it sent a `traceparent`: the parent of this request's span.
    pub parent_span_id: Option<[u8; 8]>,
}

impl TraceContext {
    /// The context of an HTTP request: the caller's request id and trace when usable, minted
    /// otherwise (a malformed header is ignored, never an error).
    pub fn of_request(headers: &HeaderMap) -> TraceContext {
        let parent = headers
            .get(TRACEPARENT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_traceparent);
        let (trace_id, flags) = parent.map_or_else(|| (random_trace_id(), 1), |p| (p.0, p.2));
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| usable_request_id(value))
            .map(str::to_owned);
        TraceContext {
            request_id: request_id.clone().unwrap_or_else(|| hex(&trace_id)),
            request_id_minted: request_id.is_none(),
            trace_id,
            span_id: random_span_id(),
            flags,
            parent_span_id: parent.map(|p| p.1),
        }
    }

    /// The context a Kafka message carries, when it carries one (a message published before
    /// trace headers existed, or by another producer, does not). Without a `request_id`
    /// header the request id is the trace id.
    pub fn of_message(request_id: Option<&str>, traceparent: Option<&str>) -> Option<TraceContext> {
        let (trace_id, span_id, flags) = traceparent.and_then(parse_traceparent)?;
        let request_id = request_id.filter(|id| usable_request_id(id));
        Some(TraceContext {
            request_id: request_id.map_or_else(|| hex(&trace_id), str::to_owned),
            request_id_minted: request_id.is_none(),
            trace_id,
            span_id,
            flags,
            parent_span_id: None,
        })
    }

    /// Takes the trace ids an exported span got; a minted request id follows the trace id.
    pub fn adopt_ids(&mut self, trace_id: [u8; 16], span_id: [u8; 8]) {
        self.trace_id = trace_id;
        self.span_id = span_id;
        if self.request_id_minted {
            self.request_id = hex(&trace_id);
        }
    }

    /// The Kafka headers that carry this context beside `transaction_id`: `traceparent`, and
    /// `request_id` when the caller named the request itself.
    pub fn kafka_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(TRACEPARENT_HEADER, self.traceparent())];
        if let Some(request_id) = self.callers_request_id() {
            headers.push((REQUEST_ID_KAFKA_HEADER, request_id.to_string()));
        }
        headers
    }

    /// The request id the caller chose, `None` when the host minted it: only a caller's own
    /// id travels with the transfer.
    pub fn callers_request_id(&self) -> Option<&str> {
        (!self.request_id_minted).then_some(self.request_id.as_str())
    }

    /// `00-{trace id}-{span id}-{flags}`, this request's span as the parent of what follows.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `future` with `trace` as the current request's context (see [`current`]).
pub async fn scope<F: Future>(trace: TraceContext, future: F) -> F::Output {
    CURRENT.scope(trace, future).await
}

/// The context of the request this task serves, if it runs under [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// `future` with this task's request context and tracing span, to run as a task of its own
/// (a spawned task starts with neither).
pub fn carried<F: Future>(future: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let span = tracing::Span::current();
    let trace = current();
    async move {
        match trace {
            Some(trace) => scope(trace, future).await,
            None => future.await,
        }
    }
    .instrument(span)
}

/// Printable ASCII without spaces, 1 to [`MAX_REQUEST_ID_CHARS`] long: safe in a header, a log
/// line and a Kafka header.
fn usable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_CHARS).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `(trace id, parent span id, flags)` of a W3C `traceparent`: version `00` exactly, a later
/// version by its first four fields; lowercase hex; neither id all zero; version `ff` invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = value.trim();
    if !value.is_ascii() {
        return None;
    }
    let version = value.get(0..2)?;
    let valid_length = match version {
        "00" => value.len() == 55,
        "ff" => false,
        _ => value.len() == 55 || (value.len() > 55 && value.as_bytes()[55] == b'-'),
    };
    if !valid_length || !is_lower_hex(version) {
        return None;
    }
    let bytes = value.as_bytes();
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = unhex(&value[3..35])?;
    let span_id: [u8; 8] = unhex(&value[36..52])?;
    let [flags]: [u8; 1] = unhex(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// 16 random bytes (a v4 UUID's), never all zero.
fn random_trace_id() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// 8 random bytes, never all zero.
fn random_span_id() -> [u8; 8] {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut span = [0u8; 8];
    span.copy_from_slice(&bytes[8..16]);
    if span == [0; 8] {
        span[7] = 1;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                http::HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn a_message_carries_the_request_id_only_when_the_caller_named_it() {
        let minted = TraceContext::of_request(&HeaderMap::new());
        assert_eq!(minted.request_id, minted.trace_id_hex());
        let sent = minted.kafka_headers();
        assert_eq!(sent, vec![("traceparent", minted.traceparent())]);
        let read = TraceContext::of_message(None, Some(&sent[0].1)).expect("a trace");
        assert_eq!(read.request_id, minted.request_id);

        let named = TraceContext::of_request(&headers(&[("x-request-id", "req-9")]));
        let sent = named.kafka_headers();
        assert_eq!(sent[1], ("request_id", "req-9".to_string()));
        let read = TraceContext::of_message(Some(&sent[1].1), Some(&sent[0].1)).expect("a trace");
        assert_eq!(
            (read.request_id.as_str(), read.trace_id),
            ("req-9", named.trace_id)
        );
    }

    #[test]
    fn a_minted_request_id_follows_the_exported_trace_id() {
        let mut minted = TraceContext::of_request(&HeaderMap::new());
        minted.adopt_ids([7; 16], [8; 8]);
        assert_eq!(minted.request_id, "07".repeat(16));
        let mut named = TraceContext::of_request(&headers(&[("x-request-id", "mine")]));
        named.adopt_ids([7; 16], [8; 8]);
        assert_eq!(named.request_id, "mine");
    }

    #[test]
    fn a_callers_trace_continues_with_a_new_span() {
        let trace = TraceContext::of_request(&headers(&[
            ("traceparent", EXAMPLE),
            ("x-request-id", "req-42"),
        ]));
        assert_eq!(trace.request_id, "req-42");
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            trace.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        let ours = trace.traceparent();
        assert!(ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(ours.ends_with("-01"));
        assert_eq!(parse_traceparent(&ours).map(|p| p.0), Some(trace.trace_id));
    }

    #[test]
    fn unusable_headers_are_replaced_not_refused() {
        for (traceparent, request_id) in [
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "has space",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                &"x".repeat(129),
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "ok",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "ok",
            ),
            ("garbage", "ok"),
        ] {
            let trace = TraceContext::of_request(&headers(&[
                ("traceparent", traceparent),
                ("x-request-id", request_id),
            ]));
            assert_ne!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(trace.trace_id, [0; 16]);
            assert!(usable_request_id(&trace.request_id));
            assert_eq!(trace.request_id == "ok", request_id == "ok");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(parse_traceparent(later).is_some());
    }

    #[tokio::test]
    async fn the_context_is_current_only_inside_its_scope() {
        let trace = TraceContext::of_request(&HeaderMap::new());
        let inside = scope(trace.clone(), async { current() }).await;
        assert_eq!(inside, Some(trace));
        assert_eq!(current(), None);
    }

    proptest! {
        #[test]
        fn any_header_value_gives_a_usable_context(traceparent in "\\PC{0,80}", request_id in "\\PC{0,140}") {
            let mut map = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                map.insert("traceparent", value);
            }
            if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                map.insert("x-request-id", value);
            }
            let trace = TraceContext::of_request(&map);
            prop_assert!(usable_request_id(&trace.request_id));
            prop_assert!(parse_traceparent(&trace.traceparent()).is_some());
        }
    }
}
