//! `GET /openapi.json`: the API's OpenAPI 3.1 document, generated (utoipa) from the wire types
//! in `api.rs` that the handlers write. The operations below only describe routes: a test
//! checks that every documented path and method is exactly what the router serves, and the
//! test command runs schemathesis against a live server to check every answer conforms.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::Response;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::api::*;
use crate::http::error::Reply;

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
        create_transfer,
        show_transfer,
        balances,
        health,
        readiness,
        metrics,
        document,
        deposit,
        guest_status,
        guest_upload,
        guest_activate,
        guest_rollback,
        guest_canary,
        guest_shadow,
        guest_shadow_report,
        guest_end_candidate,
        status_page,
        status_script,
        quarantine_list,
        quarantine_retry,
    ),
    components(schemas(ErrorBody, OutcomeUnknown, Problem, ErrorCode)),
    modifiers(&BearerScheme),
    tags(
        (name = "transfers", description = "A user's own money"),
        (name = "admin", description = "Deposits, the guest logic's versions and the settlement quarantine; admin role"),
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

pub fn reply() -> Reply {
    let mut response = Response::new(Full::new(DOCUMENT.clone()));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[utoipa::path(
    post, path = "/transfers", tag = "transfers",
    summary = "Send money to another user",
    description = "Held on the sender's account and published to the transfer log before the \
        answer: a 200 means the transfer will settle exactly once. With an `Idempotency-Key`, \
        a repeat of the same request answers the first response again \
        (`Idempotent-Replayed: true`).",
    request_body = CreateTransfer,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Accepted", body = TransferAccepted,
            headers(("idempotent-replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Insufficient funds", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "`sender_id` is not the caller", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The same key is still in flight", body = ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields, or a key reused with another body", body = ErrorBody),
        (status = 429, description = "Over the caller's rate", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds"))),
        (status = 500, description = "The guest logic failed; nothing was published", body = ErrorBody),
        (status = 503, description = "Not accepted (try again), or accepted in doubt \
            (`status: unknown`: ask `GET /transfers/{transaction_id}`)", body = TransferUnavailable),
    ),
)]
#[allow(dead_code)]
fn create_transfer() {}

#[utoipa::path(
    get, path = "/transfers/{transaction_id}", tag = "transfers",
    summary = "A transfer: pending until settled, then completed or rejected",
    description = "Only for its sender, its receiver or an admin; anyone else hears 404.",
    params(("transaction_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TransferView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Not a UUID", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, description = "A place the transfer could be in did not answer", body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn show_transfer() {}

#[utoipa::path(
    get, path = "/accounts/{user_id}/balances", tag = "transfers",
    summary = "A user's accounts: settled and available balances",
    description = "Only for that user or an admin; anyone else hears 404.",
    params(("user_id" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AccountBalances),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Not a positive integer", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn balances() {}

#[utoipa::path(
    get, path = "/healthz", tag = "service", summary = "Liveness",
    responses((status = 200, body = Health)),
)]
#[allow(dead_code)]
fn health() {}

#[utoipa::path(
    get, path = "/readyz", tag = "service", summary = "Readiness: PostgreSQL (migrated), Redis, the broker, a guest",
    description = "Each dependency is asked at once, within 500 ms. `/healthz` is liveness only.",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the failing checks say why", body = Readiness),
    ),
)]
#[allow(dead_code)]
fn readiness() {}

#[utoipa::path(
    get, path = "/metrics", tag = "service", summary = "Prometheus metrics (text format)",
    description = "Every metric is named and explained in the README's Metrics section.",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")),
)]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(
    get, path = "/openapi.json", tag = "service", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")),
)]
#[allow(dead_code)]
fn document() {}

#[utoipa::path(
    post, path = "/admin/deposits", tag = "admin",
    summary = "Put money into a user's account from the system account",
    request_body = CreateDeposit,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DepositMade),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn deposit() {}

#[utoipa::path(
    get, path = "/admin/status", tag = "admin",
    summary = "The on-call status page (HTML, refreshes itself)",
    description = "Besides a bearer token, takes HTTP Basic credentials whose password is an admin token (any user name), so a browser can open it; a refusal then carries a `Basic` challenge too. Basic credentials open only this page, its script and `GET /admin/guest`.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn status_page() {}

#[utoipa::path(
    get, path = "/admin/status.js", tag = "admin",
    summary = "The status page's script",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "JavaScript", content_type = "text/javascript"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn status_script() {}

#[utoipa::path(
    get, path = "/admin/quarantine", tag = "admin",
    summary = "Transfer-log messages settlement could not apply, newest first",
    security(("bearer" = [])),
    responses(
        (status = 200, body = QuarantineList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn quarantine_list() {}

#[utoipa::path(
    post, path = "/admin/quarantine/{partition}/{offset}/retry", tag = "admin",
    summary = "Re-drive a quarantined message once its cause is fixed",
    description = "Applies the message at that position of the transfer topic to the ledger, exactly once.",
    params(
        ("partition" = i32, Path, minimum = 0),
        ("offset" = i64, Path, minimum = 0),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = QuarantineRetried),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No quarantined message there", body = ErrorBody),
        (status = 409, description = "Re-driven already", body = ErrorBody),
        (status = 422, description = "Settlement still cannot apply it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn quarantine_retry() {}

#[utoipa::path(
    get, path = "/admin/guest", tag = "admin",
    summary = "The guest logic's versions, the active one and the candidate",
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestStatus),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_status() {}

#[utoipa::path(
    put, path = "/admin/guest", tag = "admin",
    summary = "Upload a guest component (checked, stored, not yet serving)",
    description = "The body is the component's bytes (`application/wasm`, or any type), at most 32 MiB.",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("x-guest-note" = Option<String>, Header, max_length = 500)),
    security(("bearer" = [])),
    responses(
        (status = 201, body = GuestUploaded),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Not a component of the world, or an invariant broke", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_upload() {}

#[utoipa::path(
    post, path = "/admin/guest/{version}/activate", tag = "admin",
    summary = "Serve a stored version on every replica",
    params(("version" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestActivated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_activate() {}

#[utoipa::path(
    post, path = "/admin/guest/rollback", tag = "admin",
    summary = "Back to the version active before the current one",
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestActivated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "No earlier version", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_rollback() {}

#[utoipa::path(
    post, path = "/admin/guest/{version}/canary", tag = "admin",
    summary = "Let a stored version decide a share of the transfers",
    params(("version" = String, Path)),
    request_body = CanaryShare,
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_canary() {}

#[utoipa::path(
    post, path = "/admin/guest/{version}/shadow", tag = "admin",
    summary = "Run a stored version beside the active one, deciding nothing",
    params(("version" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_shadow() {}

#[utoipa::path(
    get, path = "/admin/guest/{version}/shadow", tag = "admin",
    summary = "This replica's shadow runs of a version",
    params(("version" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ShadowReport),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_shadow_report() {}

#[utoipa::path(
    delete, path = "/admin/guest/candidate", tag = "admin",
    summary = "Stop the canary or the shadow",
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[allow(dead_code)]
fn guest_end_candidate() {}

/// The `Idempotency-Key` header of the two money-moving POSTs.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyKey {
    /// Up to 255 visible ASCII characters, scoped to the caller; kept at least 24 hours.
    #[param(rename = "Idempotency-Key", max_length = 255)]
    idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AdminAccess;
    use crate::http::{Route, admin_access, allowed, resolve};
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

    /// A path of the document with its parameters filled in.
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
    fn every_documented_operation_is_exactly_what_the_router_serves() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        assert!(paths.len() >= 12, "paths: {:?}", paths.keys());
        for (path, item) in paths {
            let segments = sample(path);
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let mut documented: Vec<String> = item
                .as_object()
                .expect("a path item")
                .keys()
                .filter(|key| ["get", "put", "post", "delete", "patch"].contains(&key.as_str()))
                .map(|method| method.to_uppercase())
                .collect();
            if documented.iter().any(|method| method == "GET") {
                documented.push("HEAD".into());
            }
            documented.sort();
            let mut served: Vec<String> = allowed(&segments)
                .unwrap_or_else(|| panic!("{path} is documented but not routed"))
                .split(", ")
                .map(str::to_string)
                .collect();
            served.sort();
            assert_eq!(documented, served, "{path}");
            for method in &documented {
                let method = Method::from_bytes(method.as_bytes()).expect("a method");
                assert!(resolve(&method, &segments).is_ok(), "{method} {path}");
            }
        }
    }

    #[test]
    fn basic_credentials_open_only_the_status_pages_reads_and_every_change_checks_the_origin() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        let status_page_reads = [
            "/admin/status",
            "/admin/status.js",
            "/admin/guest",
            "/admin/guest/{version}/shadow",
        ];
        for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/admin")) {
            let segments = sample(path);
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let methods = item.as_object().expect("a path item").keys();
            for method in methods
                .filter(|key| ["get", "put", "post", "delete", "patch"].contains(&key.as_str()))
            {
                let method =
                    Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
                let Ok(Route::Admin(route)) = resolve(&method, &segments) else {
                    panic!("{method} {path} is not an admin route");
                };
                let expected = match method {
                    Method::GET if status_page_reads.contains(&path.as_str()) => {
                        AdminAccess::StatusPage
                    }
                    Method::GET => AdminAccess::Read,
                    _ => AdminAccess::Change,
                };
                assert_eq!(admin_access(&method, &route), expected, "{method} {path}");
            }
        }
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
