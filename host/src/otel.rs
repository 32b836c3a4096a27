//! Optional OpenTelemetry export. With an endpoint set (`TRANSFERD_OTLP_ENDPOINT` or the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, `http://` or
//! `https://`), the request spans and the settlement spans go there over OTLP/HTTP
//! (protobuf), batched on a thread of their own, never on the request path. Unset, nothing is
//! exported and nothing here costs anything.
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

use crate::config::{OTEL_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_ENDPOINT, OTLP_ENDPOINT};

/// Where spans go, by the first of these set and not empty: transferd's own full traces URL,
/// OpenTelemetry's full traces URL, OpenTelemetry's base URL with the traces path appended (as
/// the specification says for OTLP/HTTP). `variable` reads the environment.
pub fn endpoint(variable: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| variable(name).filter(|value| !value.is_empty());
    set(OTLP_ENDPOINT.name)
        .or_else(|| set(OTEL_TRACES_ENDPOINT.name))
        .or_else(|| {
            set(OTEL_ENDPOINT.name).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        })
}

/// The `service.name` of exported spans: `OTEL_SERVICE_NAME`, else `transferd`.
pub fn service_name(variable: impl Fn(&str) -> Option<String>) -> String {
    variable(OTEL_SERVICE_NAME.name)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| OTEL_SERVICE_NAME.default.to_string())
}

fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

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
    let Some(endpoint) = endpoint(environment) else {
        return Ok(None);
    };
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
        .with_resource(
            Resource::builder()
                .with_service_name(service_name(environment))
                .build(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn transferd_s_endpoint_wins_then_the_standard_full_url_then_the_base() {
        let all = [
            ("TRANSFERD_OTLP_ENDPOINT", "https://own:4318/v1/traces"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://full:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://base:4318/"),
        ];
        assert_eq!(
            endpoint(variables(&all)).as_deref(),
            Some("https://own:4318/v1/traces")
        );
        assert_eq!(
            endpoint(variables(&all[1..])).as_deref(),
            Some("https://full:4318/v1/traces")
        );
        assert_eq!(
            endpoint(variables(&all[2..])).as_deref(),
            Some("https://base:4318/v1/traces")
        );
        let empty_own = [("TRANSFERD_OTLP_ENDPOINT", ""), all[2]];
        assert_eq!(
            endpoint(variables(&empty_own)).as_deref(),
            Some("https://base:4318/v1/traces"),
            "an empty setting counts as unset"
        );
        assert_eq!(endpoint(variables(&[])), None);
    }

    #[test]
    fn the_service_name_is_otel_s_else_transferd() {
        assert_eq!(
            service_name(variables(&[("OTEL_SERVICE_NAME", "payments-eu")])),
            "payments-eu"
        );
        assert_eq!(
            service_name(variables(&[("OTEL_SERVICE_NAME", "")])),
            "transferd"
        );
        assert_eq!(service_name(variables(&[])), "transferd");
    }
}
