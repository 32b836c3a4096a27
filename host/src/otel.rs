//! Optional OpenTelemetry export. With `TRANSFERD_OTLP_ENDPOINT` set (the collector's full
//! traces URL, e.g. `http://collector:4318/v1/traces`), the request spans and the settlement
//! spans go there over OTLP/HTTP (protobuf), batched on a thread of their own, never on the
//! request path. Unset, nothing is exported and nothing here costs anything.
//!
//! A request's span continues the caller's `traceparent` when it sent one; the ids the span
//! gets are the ones the request's Kafka message carries (`trace::TraceContext`), so a
//! settlement span joins the same trace.

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use crate::trace::TraceContext;

/// The setting that turns export on.
pub const ENDPOINT_SETTING: &str = crate::config::OTLP_ENDPOINT.name;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

/// The tracing layer that exports spans, when an endpoint is configured.
pub fn layer<S>() -> Result<Option<impl tracing_subscriber::Layer<S>>, ExportError>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let endpoint = std::env::var(ENDPOINT_SETTING).unwrap_or_default();
    if endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|error| ExportError {
            endpoint,
            reason: error.to_string(),
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("transferd").build())
        .build();
    let tracer = provider.tracer("transferd");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends what is batched; called once, as the process exits.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        eprintln!("exporting the last spans failed: {error}");
    }
}

/// With export on: makes `span` continue the caller's trace (when `trace` came with one) and
/// takes the ids the exported span got, so what the request publishes names that span.
pub fn adopt(span: &Span, trace: &mut TraceContext) {
    if !enabled() {
        return;
    }
    if let Some(parent) = trace.parent_span_id {
        let _ = span.set_parent(remote(trace.trace_id, parent, trace.flags));
    }
    let context = span.context();
    let exported = context.span().span_context().clone();
    if exported.is_valid() {
        trace.adopt_ids(
            exported.trace_id().to_bytes(),
            exported.span_id().to_bytes(),
        );
    }
}

/// A span for work done on behalf of a traced request elsewhere (settling its transfer),
/// joined to that request's trace when export is on.
pub fn follow(span: &Span, trace: &TraceContext) {
    if enabled() {
        let _ = span.set_parent(remote(trace.trace_id, trace.span_id, trace.flags));
    }
}

fn remote(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}
