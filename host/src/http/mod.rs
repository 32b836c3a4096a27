//! The HTTP API: the router and the handlers, one file per resource; the route table is
//! `routes.rs`, and errors become responses in `error.rs` only. The process around it (the
//! accept loop, start and drain) is `crate::server`'s.
//!
//! Every request goes the same way: the path and method are resolved to an [`Endpoint`] (404,
//! 405), then the route's callers are authenticated in one place (`auth::Gate`: a user for
//! user routes, an admin for every `/admin` route, with what the route accepts decided by
//! [`AdminRoute::access`] from its method), then the handler runs with who is calling.

mod accounts;
mod admin;
mod admin_guest;
mod admin_limits;
mod admin_quarantine;
mod api;
mod batches;
mod body;
mod candidate_runs;
mod error;
mod history;
mod idempotency;
mod openapi;
mod query;
mod rate_limit;
mod ready;
mod routes;
mod service;
mod status;
pub mod status_history;
mod transfers;
mod two_phase;
pub mod worker;

use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Admin, Caller, Gate};
use crate::capabilities::guard::ViolationCounts;
use crate::config::Serve;
use crate::guest::provenance::Recorder;
use crate::guest::registry::{Registry, Serving, ServingGuest};
use crate::guest::runtime::GuestEngine;
use crate::guest::shadow::ShadowBook;
use crate::stores::Stores;
use crate::stores::idempotency::IdempotencyKeys;
use crate::trace::TraceContext;
use error::{ApiError, Reply};
pub use routes::Port;
use routes::{AdminRoute, Endpoint, PathParams, ServiceRoute, UserRoute};

/// Names the guest version that decided a response.
pub const GUEST_VERSION_HEADER: &str = "x-guest-version";

/// What every request handler shares.
pub struct App {
    pub stores: Arc<Stores>,
    serving: Arc<ServingGuest>,
    pub engine: Arc<GuestEngine>,
    pub registry: Registry,
    pub shadow_book: Arc<ShadowBook>,
    /// Where each decision's provenance goes to be recorded.
    pub provenance: Recorder,
    /// Host checks the guests broke on this replica, by version.
    pub violations: Arc<ViolationCounts>,
    /// Authenticates callers: bearer JWTs, the static admin token.
    pub gate: Gate,
    /// The dependency probes `/readyz` answers from, shared with the gauges.
    pub probes: Arc<crate::health::Probes>,
    /// The status page's last 15 minutes of samples.
    pub history: Arc<status_history::History>,
    /// Transfer decisions, each its own task: shutdown waits for the ones whose client left.
    pub decisions: TaskTracker,
    /// `Idempotency-Key`s, and how long a request holds one.
    pub idempotency: IdempotencyKeys,
    pub idempotency_lease: std::time::Duration,
    /// The longest a guest call (and the publish it starts) may take.
    pub guest_timeout: std::time::Duration,
    /// A request body that has not arrived by then is answered 408.
    pub body_timeout: std::time::Duration,
    /// Every route but `POST /transfers` answers within this, or 503.
    request_timeout: std::time::Duration,
    /// Whether publishes carry the request's trace context as Kafka headers.
    kafka_trace_headers: bool,
    /// Each caller's request rate on user routes; `None`: unlimited.
    caller_limit: Option<rate_limit::CallerLimit>,
}

/// What `serve` connected and loaded, for the handlers to share.
pub struct Parts {
    pub stores: Arc<Stores>,
    pub serving: Arc<ServingGuest>,
    pub engine: Arc<GuestEngine>,
    pub registry: Registry,
    pub gate: Gate,
    pub probes: Arc<crate::health::Probes>,
}

impl App {
    /// The handlers' shared state: `parts`, and the limits `settings` set.
    pub fn new(parts: Parts, settings: &Serve) -> App {
        let ledger_pool = parts.stores.ledger.pool().clone();
        App {
            stores: parts.stores,
            serving: parts.serving,
            engine: parts.engine,
            registry: parts.registry,
            shadow_book: Arc::new(ShadowBook::default()),
            provenance: Recorder::start(&ledger_pool, settings.provenance_retention()),
            violations: Arc::new(ViolationCounts::default()),
            gate: parts.gate,
            probes: parts.probes,
            history: Arc::default(),
            decisions: TaskTracker::new(),
            idempotency: IdempotencyKeys::new(ledger_pool),
            idempotency_lease: idempotency::lease(
                settings.guest_timeout(),
                settings.services.kafka_timeout(),
            ),
            guest_timeout: settings.guest_timeout(),
            body_timeout: settings.body_timeout(),
            request_timeout: settings.request_timeout(),
            kafka_trace_headers: settings.kafka_trace_headers,
            caller_limit: rate_limit::CallerLimit::new(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
            ),
        }
    }

    /// The guests serving new requests; a request keeps what it got to the end.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.get()
    }
}

/// Counts a refused request by its reason ([`crate::auth::AuthError::code`]).
fn count_refusal(error: &crate::auth::AuthError) {
    metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => error.code()).increment(1);
}

/// Runs the endpoint within the whole-request limit; a transfer runs to its decision's end
/// (the guest and Kafka timeouts bound it), so its answer always says what became of the money.
async fn within_limit(
    app: &Arc<App>,
    endpoint: Endpoint,
    request: RoutedRequest<'_>,
) -> Result<Reply, ApiError> {
    if matches!(
        endpoint,
        Endpoint::User(UserRoute::CreateTransfer | UserRoute::CreateBatch)
    ) {
        return handle(app, endpoint, request).await;
    }
    let limit = app.request_timeout;
    tokio::time::timeout(limit, handle(app, endpoint, request))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(format!(
                "the request did not finish within {} ms",
                limit.as_millis()
            )))
        })
}

/// A request, once routed: what its handler may read.
struct RoutedRequest<'r> {
    params: PathParams<'r, 'r>,
    /// The query string, if the request had one.
    query: Option<&'r str>,
    method: &'r Method,
    headers: &'r http::HeaderMap,
    body: Incoming,
}

/// Authenticates the endpoint's caller, then runs its handler.
async fn handle(
    app: &Arc<App>,
    endpoint: Endpoint,
    request: RoutedRequest<'_>,
) -> Result<Reply, ApiError> {
    match endpoint {
        Endpoint::Service(route) => Ok(service_route(app, route).await),
        Endpoint::User(route) => {
            let caller = app
                .gate
                .caller(request.headers)
                .inspect_err(count_refusal)?;
            if let Some(limit) = &app.caller_limit {
                limit
                    .check(&caller.scope())
                    .map_err(|wait| ApiError::TooManyRequests {
                        retry_after_s: rate_limit::retry_after_seconds(wait),
                    })?;
            }
            user_route(app, &caller, route, request).await
        }
        Endpoint::Admin(route) => {
            let access = route.access(request.method);
            let admin = match app
                .gate
                .admin(request.headers, access)
                .inspect_err(count_refusal)
            {
                Ok(admin) => admin,
                // The status page is opened by a browser: ask it for credentials.
                Err(error) if route == AdminRoute::StatusPage => {
                    return Ok(status::refused(error));
                }
                Err(error) => return Err(error.into()),
            };
            admin_route(app, &admin, route, request).await
        }
    }
}

async fn service_route(app: &App, route: ServiceRoute) -> Reply {
    match route {
        ServiceRoute::Health => service::health(),
        ServiceRoute::Ready => ready::readiness(app).await,
        ServiceRoute::Metrics => service::metrics(),
        ServiceRoute::OpenApi => openapi::reply(),
    }
}

async fn user_route(
    app: &Arc<App>,
    caller: &Caller,
    route: UserRoute,
    request: RoutedRequest<'_>,
) -> Result<Reply, ApiError> {
    let RoutedRequest {
        params,
        query,
        headers,
        body,
        ..
    } = request;
    let user_id = params.get("user_id");
    match route {
        UserRoute::CreateTransfer => transfers::create(app, caller, headers, body).await,
        UserRoute::CreateBatch => batches::create(app, caller, headers, body).await,
        UserRoute::ListTransfers => history::list_transfers(app, caller, query).await,
        UserRoute::ShowTransfer => transfers::show(app, caller, params.get("transaction_id")).await,
        UserRoute::PostTransfer => {
            let id = params.get("transaction_id");
            two_phase::post(app, caller, headers, body, id).await
        }
        UserRoute::VoidTransfer => {
            let id = params.get("transaction_id");
            two_phase::void(app, caller, headers, body, id).await
        }
        UserRoute::Balances => accounts::balances(app, caller, user_id, query).await,
        UserRoute::Entries => history::entries(app, caller, user_id, query).await,
    }
}

async fn admin_route(
    app: &Arc<App>,
    admin: &Admin,
    route: AdminRoute,
    request: RoutedRequest<'_>,
) -> Result<Reply, ApiError> {
    let RoutedRequest {
        params,
        query,
        headers,
        body,
        ..
    } = request;
    let version = params.get("version");
    match route {
        AdminRoute::GuestUpload => admin_guest::upload(app, admin, headers, query, body).await,
        AdminRoute::GuestStatus => admin_guest::status(app).await,
        AdminRoute::GuestRollback => admin_guest::rollback(app, admin).await,
        AdminRoute::GuestActivate => admin_guest::activate(app, admin, version).await,
        AdminRoute::GuestCanary => admin_guest::canary(app, admin, headers, version, body).await,
        AdminRoute::GuestShadow => admin_guest::shadow(app, admin, headers, version, body).await,
        AdminRoute::GuestShadowStats => admin_guest::shadow_stats(app, version),
        AdminRoute::GuestBacktest => admin_guest::backtest(app, headers, version, body).await,
        AdminRoute::GuestEndCandidate => admin_guest::end_candidate(app, admin).await,
        AdminRoute::Deposit => admin::deposit(app, admin, headers, body).await,
        AdminRoute::StatusPage => Ok(status::page()),
        AdminRoute::StatusScript => Ok(status::script()),
        AdminRoute::StatusHistory => Ok(status_history::reply(app).await),
        AdminRoute::QuarantineList => admin_quarantine::list(app).await,
        AdminRoute::QuarantineRetry => {
            admin_quarantine::retry(app, params.get("partition"), params.get("offset")).await
        }
        AdminRoute::AccountLimits => {
            admin_limits::set_limits(app, admin, headers, params.get("user_id"), body).await
        }
    }
}

/// Serves one request under its trace context: the caller's request id and trace, or minted
/// ones, on every log line it writes, on the message it publishes, and (the request id) on
/// the answer. A route `port` does not serve is answered 404.
pub async fn respond(app: &Arc<App>, port: Port, request: Request<Incoming>) -> Reply {
    let mut trace = TraceContext::of_request(request.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %trace.request_id,
        trace_id = tracing::field::Empty,
    );
    crate::otel::adopt(&span, &mut trace);
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    let request_id = http::HeaderValue::from_str(&trace.request_id).ok();
    let served = routed(app, port, request).instrument(span);
    // The task-local is what the publish import reads: without it, no trace headers.
    let mut response = if app.kafka_trace_headers {
        crate::trace::scope(trace, served).await
    } else {
        served.await
    };
    if let Some(request_id) = request_id {
        response
            .headers_mut()
            .insert(crate::trace::REQUEST_ID_HEADER, request_id);
    }
    response
}

async fn routed(app: &Arc<App>, port: Port, request: Request<Incoming>) -> Reply {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let segments: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
    let (name, result) = match routes::resolve(&parts.method, &segments) {
        Ok((endpoint, _)) if !port.serves(endpoint) => ("unrouted", Err(ApiError::NotFound)),
        Ok((endpoint, params)) => {
            let request = RoutedRequest {
                params,
                query: parts.uri.query(),
                method: &parts.method,
                headers: &parts.headers,
                body,
            };
            let result = within_limit(app, endpoint, request).await;
            (endpoint.route().metric, result)
        }
        Err(error) => ("unrouted", Err(error)),
    };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    let status = response.status().as_str().to_owned();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => name, "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => name)
        .record(started.elapsed().as_secs_f64());
    // Every response names a guest version: the one that decided it (set by the transfer
    // handler, a canary perhaps), else the active one.
    if !response.headers().contains_key(GUEST_VERSION_HEADER)
        && let Ok(value) = http::HeaderValue::from_str(app.serving().active.version())
    {
        response.headers_mut().insert(GUEST_VERSION_HEADER, value);
    }
    response
}
