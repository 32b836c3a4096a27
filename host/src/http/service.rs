//! `GET /healthz` and `GET /metrics`: liveness, and Prometheus's text format.

use http::{HeaderValue, StatusCode, header};

use crate::http::api::Health;
use crate::http::error::{Reply, json_response};
use crate::http::routes::ServiceRoute;

/// The process is alive; `/readyz` says whether its dependencies are.
#[utoipa::path(
    get, path = ServiceRoute::Health.path(), operation_id = "health", tag = "service", summary = "Liveness",
    responses((status = 200, body = Health)),
)]
pub fn health() -> Reply {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

/// Every metric this replica (and its settlement worker) records.
#[utoipa::path(
    get, path = ServiceRoute::Metrics.path(), operation_id = "metrics", tag = "service", summary = "Prometheus metrics (text format)",
    description = "Every metric is named and explained in the README's Metrics section.",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")),
)]
pub fn metrics() -> Reply {
    let mut response = Reply::new(http_body_util::Full::new(bytes::Bytes::from(
        crate::metrics::render(),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
