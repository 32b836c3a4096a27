//! `GET /openapi.json`: the API's OpenAPI 3.1 document, generated (utoipa) from the wire types
//! in `api.rs` that the handlers write and from each handler's `#[utoipa::path]`, whose path
//! is the route table's (`routes.rs`). utoipa wants the method as a keyword and the handlers
//! listed below, so a test checks that the document's operations are exactly the table's
//! routes, and the test command runs schemathesis against a live server to check every answer
//! conforms.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::Response;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::api::*;
use crate::http::error::Reply;
// The messages on `transfer_events`: not an HTTP answer, documented here for their consumers.
use crate::http::routes::ServiceRoute;
use crate::http::{
    accounts, admin, admin_guest, admin_limits, admin_quarantine, batches, history, ready, service,
    status, status_history, transfers, two_phase,
};
use crate::settlement::events::{TransferEvent, TransferEvents};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "transferd",
        description = "Money transfers between users' accounts, settled exactly once into a \
            double-entry ledger. Amounts are exact decimals; every refusal has FastAPI's error \
            shape. Authenticate with a bearer JWT (`sub` is the user id; `roles` holding \
            `admin` opens `/admin`).",
    ),
    paths(
        transfers::create,
        batches::create,
        history::list_transfers,
        transfers::show,
        two_phase::post,
        two_phase::void,
        accounts::balances,
        history::entries,
        service::health,
        ready::readiness,
        service::metrics,
        reply,
        admin::deposit,
        admin_guest::status,
        admin_guest::upload,
        admin_guest::activate,
        admin_guest::rollback,
        admin_guest::canary,
        admin_guest::shadow,
        admin_guest::shadow_stats,
        admin_guest::backtest,
        admin_guest::end_candidate,
        status::page,
        status::script,
        status_history::reply,
        admin_quarantine::list,
        admin_quarantine::retry,
        admin_limits::set_limits,
    ),
    components(schemas(ErrorBody, OutcomeUnknown, Problem, ErrorCode, TransferEvents, TransferEvent)),
    modifiers(&BearerScheme),
    tags(
        (name = "transfers", description = "A user's own money"),
        (name = "admin", description = "Deposits, account limits, the guest logic's versions and the settlement quarantine; admin role"),
        (name = "service", description = "Liveness and this document"),
    ),
)]
struct ApiDoc;

/// The `bearer` security scheme every authenticated operation names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        scheme.description = Some(
            "A JWT (HS256, RS256 or EdDSA, as configured). `sub`: the user id; `roles`: \
             `[\"admin\"]` for `/admin`. The static admin token also opens `/admin`. An \
             `/admin` operation that changes state (any method but GET and HEAD) refuses a \
             request whose `Origin` is not the service's own (`http` or `https` with the \
             request's `Host`) with 403."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as JSON, built once.
static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    let json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    Bytes::from(json)
});

#[utoipa::path(
    get, path = ServiceRoute::OpenApi.path(), operation_id = "document", tag = "service", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")),
)]
/// The document, the same bytes every time.
pub fn reply() -> Reply {
    let mut response = Response::new(Full::new(DOCUMENT.clone()));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AdminAccess;
    use crate::http::routes::{Endpoint, Verb, resolve};
    use http::Method;

    fn document() -> serde_json::Value {
        serde_json::from_slice(&DOCUMENT).expect("the document is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(
            document["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// Every operation of the document, as (method, path).
    fn operations(document: &serde_json::Value) -> Vec<(String, String)> {
        let paths = document["paths"].as_object().expect("paths");
        let mut operations: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item").keys();
                methods
                    .filter(|key| ["get", "put", "post", "delete", "patch"].contains(&key.as_str()))
                    .map(|method| (method.clone(), path.clone()))
            })
            .collect();
        operations.sort();
        operations
    }

    fn openapi_method(verb: Verb) -> &'static str {
        match verb {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Delete => "delete",
        }
    }

    /// A route's path with each `{name}` filled in, split at `/`.
    fn sample(path: &str) -> Vec<String> {
        path.trim_matches('/')
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x".to_string()
                } else {
                    segment.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn every_route_resolves_has_a_metric_name_and_is_documented_and_nothing_else_is() {
        let documented = operations(&document());
        for endpoint in Endpoint::ALL {
            let route = endpoint.route();
            let segments = sample(route.path);
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let method = Method::from_bytes(openapi_method(route.verb).to_uppercase().as_bytes())
                .expect("a method");
            let resolved = resolve(&method, &segments).map(|(found, _)| found);
            assert_eq!(resolved.ok(), Some(endpoint), "{method} {}", route.path);
            if route.verb == Verb::Get {
                let head = resolve(&Method::HEAD, &segments).map(|(found, _)| found);
                assert_eq!(head.ok(), Some(endpoint), "HEAD {}", route.path);
            }
            assert!(
                !route.metric.is_empty()
                    && route
                        .metric
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_'),
                "{method} {}: metric name {:?}",
                route.path,
                route.metric
            );
            let operation = (
                openapi_method(route.verb).to_string(),
                route.path.to_string(),
            );
            assert!(
                documented.contains(&operation),
                "{operation:?} is not documented"
            );
        }
        assert_eq!(
            documented.len(),
            Endpoint::ALL.len(),
            "the document has operations the router does not serve: {documented:?}"
        );
    }

    #[test]
    fn basic_credentials_open_only_the_status_pages_reads_and_every_change_checks_the_origin() {
        let status_page_reads = [
            "/admin/status",
            "/admin/status.js",
            "/admin/status/history",
            "/admin/guest",
            "/admin/guest/{version}/shadow",
        ];
        for (method, path) in operations(&document()) {
            if !path.starts_with("/admin") {
                continue;
            }
            let segments = sample(&path);
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let Ok((Endpoint::Admin(route), _)) = resolve(&method, &segments) else {
                panic!("{method} {path} is not an admin route");
            };
            let expected = match method {
                Method::GET if status_page_reads.contains(&path.as_str()) => {
                    AdminAccess::StatusPage
                }
                Method::GET => AdminAccess::Read,
                _ => AdminAccess::Change,
            };
            assert_eq!(route.access(&method), expected, "{method} {path}");
        }
    }

    /// The reader refuses a key no field has (`extra_forbidden`), so every JSON body a change
    /// takes says so; read from the route table, so a new write route is checked too.
    /// A guarantee made once holds for every route added after it: each JSON body refuses
    /// other keys, and each documents what the body reader may answer.
    #[test]
    fn every_write_routes_json_body_forbids_other_properties() {
        let document = document();
        let mut checked = Vec::new();
        for endpoint in Endpoint::ALL {
            let route = endpoint.route();
            if route.verb == Verb::Get {
                continue;
            }
            let operation = &document["paths"][route.path][openapi_method(route.verb)];
            let Some(content) = operation["requestBody"]["content"].as_object() else {
                continue;
            };
            for (media_type, body) in content {
                if media_type != "application/json" {
                    continue;
                }
                let mut schema = &body["schema"];
                if let Some(reference) = schema["$ref"].as_str() {
                    let name = reference.trim_start_matches("#/components/schemas/");
                    schema = &document["components"]["schemas"][name];
                }
                assert_eq!(schema["type"], "object", "{} {}", route.path, media_type);
                assert_eq!(
                    schema["additionalProperties"],
                    serde_json::Value::Bool(false),
                    "{:?} {}: {schema}",
                    route.verb,
                    route.path
                );
                // What the shared body reader answers before the handler sees a field.
                for status in ["413", "415"] {
                    assert!(
                        operation["responses"].get(status).is_some(),
                        "{:?} {} does not document {status}",
                        route.verb,
                        route.path
                    );
                }
                checked.push(route.path);
            }
        }
        for path in [
            "/transfers",
            "/admin/deposits",
            "/admin/guest/{version}/canary",
        ] {
            assert!(
                checked.contains(&path),
                "{path} has no JSON body: {checked:?}"
            );
        }
    }

    /// The fields 0.2.0 added, as the reader takes them: a metadata object of strings (its
    /// bounds stated), a phase of two values and a bounded expiry, none of them required.
    #[test]
    fn the_transfer_schema_states_phase_expiry_and_metadata() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let properties = &schemas["CreateTransfer"]["properties"];
        let metadata = &properties["metadata"];
        assert_eq!(
            metadata["type"],
            serde_json::json!(["object", "null"]),
            "{metadata}"
        );
        assert_eq!(metadata["additionalProperties"]["type"], "string");
        assert_eq!(metadata["additionalProperties"]["maxLength"], 512);
        assert_eq!(metadata["maxProperties"], 16);
        assert_eq!(
            metadata["propertyNames"]["pattern"],
            "^[A-Za-z0-9_.-]{1,64}$"
        );
        assert_eq!(properties["expires_in_s"]["minimum"], 1);
        assert_eq!(properties["expires_in_s"]["maximum"], 604_800);
        let phase = serde_json::to_string(&properties["phase"]).expect("json");
        assert!(
            phase.contains("#/components/schemas/TransferPhase"),
            "{phase}"
        );
        assert_eq!(
            schemas["TransferPhase"]["enum"],
            serde_json::json!(["immediate", "pending"])
        );
    }

    #[test]
    fn the_transfer_schema_requires_what_the_handler_finds_missing() {
        let document = document();
        let mut required: Vec<String> =
            document["components"]["schemas"]["CreateTransfer"]["required"]
                .as_array()
                .expect("required fields")
                .iter()
                .filter_map(|field| field.as_str().map(str::to_string))
                .collect();
        required.sort();
        let Err(crate::http::error::ApiError::Validation(problems)) =
            crate::http::transfers::parse_request(b"{}")
        else {
            panic!("an empty object is refused");
        };
        let mut missing: Vec<String> = problems
            .into_iter()
            .filter(|problem| problem.kind == "missing")
            .map(|problem| problem.location[1].clone())
            .collect();
        missing.sort();
        assert_eq!(required, missing);
    }
}
