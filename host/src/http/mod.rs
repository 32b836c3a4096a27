//! The HTTP API: the server loop and the router. One file per resource; errors become
//! responses in `error.rs` only.
//!
//! Every request goes the same way: the path and method are resolved to a [`Route`] (404, 405),
//! then the route's callers are authenticated in one place (`auth::Gate`: a user for user
//! routes, an admin for every `/admin` route, with what the route accepts decided by
//! [`admin_access`] from its method), then the handler runs with who is calling.

mod accounts;
mod admin;
mod admin_guest;
mod admin_quarantine;
mod api;
mod body;
mod error;
mod idempotency;
mod openapi;
mod rate_limit;
mod ready;
mod status;
mod transfers;

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Admin, AdminAccess, Caller, Gate};
use crate::capabilities::guard::ViolationCounts;
use crate::config::Serve;
use crate::guest::registry::{self, Registry, Serving, ServingGuest};
use crate::guest::runtime::{GuestEngine, GuestLimits};
use crate::guest::shadow::ShadowBook;
use crate::guest::watch;
use crate::settlement;
use crate::shutdown::{self, Signals};
use crate::stores::Stores;
use crate::stores::idempotency::IdempotencyKeys;
use crate::trace::TraceContext;
use error::{ApiError, Reply, json_response};

/// Names the guest version that decided a response.
pub const GUEST_VERSION_HEADER: &str = "x-guest-version";

/// How long serve waits at start to learn whether Redis's holds are trusted.
const HOLDS_TRUST_AT_START: std::time::Duration = std::time::Duration::from_secs(10);

/// What every request handler shares.
pub struct App {
    pub stores: Arc<Stores>,
    serving: Arc<ServingGuest>,
    pub engine: Arc<GuestEngine>,
    pub registry: Registry,
    pub shadow_book: Arc<ShadowBook>,
    /// Host checks the guests broke on this replica, by version.
    pub violations: Arc<ViolationCounts>,
    /// Authenticates callers: bearer JWTs, the static admin token.
    pub gate: Gate,
    /// The dependency probes `/readyz` answers from, shared with the gauges.
    pub probes: Arc<crate::health::Probes>,
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

impl App {
    /// The guests serving new requests; a request keeps what it got to the end.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.get()
    }
}

/// Connects the stores, migrates, loads the guest and serves until a stop signal; runs the
/// settlement worker beside the API, as a supervised child process, unless told not to. Then
/// drains, bounded by the drain time: stops accepting, finishes requests in flight, stops the
/// worker between batches and flushes the producer.
pub async fn serve(settings: Serve, mut signals: Signals) -> anyhow::Result<()> {
    let services = &settings.services;
    crate::metrics::install().context("installing the metrics recorder")?;
    // First: a key that cannot be used stops the start before anything connects.
    let gate = Gate::from_settings(&settings)?;
    let stores =
        Arc::new(Stores::connect(services, settlement::topic_recreated::forget_positions).await?);

    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: settings.guest_timeout(),
        memory_bytes: usize::try_from(settings.guest_memory_mib * 1024 * 1024)?,
        concurrency: settings.guest_concurrency,
        reuse_count: settings.guest_reuse_count,
        compiled_cache: settings.compiled_cache(),
    })?);
    let guest_bytes = std::fs::read(&settings.guest_file)
        .with_context(|| format!("reading the guest {}", settings.guest_file.display()))?;
    let guest = engine
        .load(&guest_bytes)
        .with_context(|| format!("loading the guest {}", settings.guest_file.display()))?;
    tracing::info!(version = guest.version(), file = %settings.guest_file.display(), "guest loaded");
    // The registry's active version, once one was activated, wins over the file.
    let registry = Registry::new(stores.ledger.pool().clone());
    if !settings.watch {
        adopt_startup_guest(&registry, &guest, &guest_bytes, &settings.guest_file).await;
    }
    let serving = Arc::new(ServingGuest::new(guest));
    if settings.watch {
        watch::watch_file(
            settings.guest_file.clone(),
            Arc::clone(&engine),
            Arc::clone(&serving),
        );
    } else {
        registry::reconcile(&registry, &engine, &serving).await;
        registry::follow(registry.clone(), Arc::clone(&engine), Arc::clone(&serving));
    }
    let mut holds_trust = settlement::reconcile::spawn(services, &settings.worker, &stores);
    let probes = Arc::new(crate::health::Probes::new(Arc::clone(&stores)));
    crate::health::spawn_gauges(
        Arc::clone(&probes),
        settlement::reconcile::position(services, &stores)?,
    );

    let (stop_handle, stop) = shutdown::stop_channel();
    let worker = settings
        .run_worker
        .then(|| settlement::process::supervise(services, &settings.worker, stop));

    let ledger_pool = stores.ledger.pool().clone();
    let app = Arc::new(App {
        stores,
        serving,
        engine,
        registry,
        shadow_book: Arc::new(ShadowBook::default()),
        violations: Arc::new(ViolationCounts::default()),
        gate,
        probes,
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
    });
    // Transfers are refused while the holds are not trusted; on a fresh Redis with a consumed
    // log the first check makes them trusted, so waiting for it (bounded: Redis or the broker
    // may be down) lets the first request be accepted.
    let trusted = settlement::reconcile::first_trust(&mut holds_trust, HOLDS_TRUST_AT_START).await;
    if trusted != Some(true) {
        tracing::warn!(
            ?trusted,
            "starting while Redis's holds are not trusted: transfers are refused (503) until they are"
        );
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving");

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let edge = Edge {
        header_timeout: settings.header_timeout(),
    };
    let signal = loop {
        tokio::select! {
            // At the connection limit nothing is accepted: new clients wait in the backlog.
            accepted = accept(&listener, &connections) => {
                let Some((stream, permit)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(route(&app, request).await) }
                });
                let connection = edge.builder().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            signal = signals.recv() => break signal,
        }
    };
    drop(listener);
    stop_handle.stop();
    let drain = services.drain_timeout();
    let deadline = tokio::time::Instant::now() + drain;
    tracing::info!(
        %signal,
        drain_ms = drain.as_millis() as u64,
        "shutting down: no new connections; finishing requests in flight and stopping the worker"
    );
    let worker_stopped = async {
        if let Some(supervisor) = worker
            && let Err(error) = supervisor.await
        {
            tracing::error!(%error, "the settlement worker's supervisor panicked");
        }
    };
    // A decision whose client already left is no connection's any more; wait for it too, so
    // its hold and publish end the way a finished request's would.
    app.decisions.close();
    shutdown::within(
        deadline,
        "requests in flight, transfer decisions and the settlement worker",
        async { tokio::join!(graceful.shutdown(), app.decisions.wait(), worker_stopped) },
    )
    .await;
    let flush_time = deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Some(Err(error)) = shutdown::within(
        deadline,
        "the producer's flush",
        app.stores.log.flush(flush_time),
    )
    .await
    {
        tracing::warn!(%error, "the producer did not flush");
    }
    tracing::info!(%signal, "drained; exiting");
    Ok(())
}

/// Records the file's guest in the registry (the version to roll back to on a fresh
/// install). A registry that cannot be written is logged, not fatal: the replica still serves.
async fn adopt_startup_guest(
    registry: &Registry,
    guest: &crate::guest::runtime::Guest,
    bytes: &[u8],
    file: &std::path::Path,
) {
    let file_name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match registry
        .adopt_startup(guest.version(), bytes, &file_name)
        .await
    {
        Ok(true) => tracing::info!(
            version = guest.version(),
            "no version was active: recorded the guest file as the active version"
        ),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot record the guest file in the registry")
        }
    }
}

/// What a request asks for, once its path and method are known.
enum Route<'a> {
    /// `GET /metrics`: Prometheus's text format.
    Metrics,
    Health,
    /// `GET /openapi.json`: the API's document, for anyone (it holds no secrets).
    OpenApi,
    /// `GET /readyz`: the dependencies, for load balancers.
    Ready,
    User(UserRoute<'a>),
    Admin(AdminRoute<'a>),
}

impl Route<'_> {
    /// A bounded name for metrics: the route, not the raw path.
    fn name(&self) -> &'static str {
        match self {
            Route::Metrics => "metrics",
            Route::Health => "healthz",
            Route::OpenApi => "openapi",
            Route::Ready => "readyz",
            Route::User(UserRoute::CreateTransfer) => "create_transfer",
            Route::User(UserRoute::ShowTransfer(_)) => "show_transfer",
            Route::User(UserRoute::Balances(_)) => "balances",
            Route::Admin(AdminRoute::Deposit) => "deposit",
            Route::Admin(AdminRoute::StatusPage | AdminRoute::StatusScript) => "admin_status",
            Route::Admin(AdminRoute::QuarantineList | AdminRoute::QuarantineRetry(..)) => {
                "admin_quarantine"
            }
            Route::Admin(_) => "admin_guest",
        }
    }
}

/// Counts a refused request by its reason ([`crate::auth::AuthError::code`]).
fn count_refusal(error: &crate::auth::AuthError) {
    metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => error.code()).increment(1);
}

/// `GET /metrics`.
fn metrics_reply() -> Reply {
    let mut response = Reply::new(http_body_util::Full::new(bytes::Bytes::from(
        crate::metrics::render(),
    )));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Routes for a user's own money, behind a bearer token.
enum UserRoute<'a> {
    CreateTransfer,
    ShowTransfer(&'a str),
    Balances(&'a str),
}

/// `/admin` routes, behind the admin role or the static admin token.
enum AdminRoute<'a> {
    GuestUpload,
    GuestStatus,
    GuestRollback,
    GuestActivate(&'a str),
    GuestCanary(&'a str),
    GuestShadow(&'a str),
    GuestShadowStats(&'a str),
    GuestEndCandidate,
    Deposit,
    StatusPage,
    StatusScript,
    QuarantineList,
    QuarantineRetry(&'a str, &'a str),
}

/// What an admin route accepts, from the request's method: every method but GET and HEAD
/// changes state and needs a bearer token from no foreign origin, so a route added to the
/// table is protected without doing anything. HTTP Basic credentials, which a browser resends
/// by itself once an admin has opened the status page, open only the page, its script and the
/// read-only JSON it polls.
fn admin_access(method: &Method, route: &AdminRoute<'_>) -> AdminAccess {
    if method != Method::GET && method != Method::HEAD {
        return AdminAccess::Change;
    }
    match route {
        AdminRoute::StatusPage
        | AdminRoute::StatusScript
        | AdminRoute::GuestStatus
        | AdminRoute::GuestShadowStats(_) => AdminAccess::StatusPage,
        _ => AdminAccess::Read,
    }
}

/// The limits every connection is served under.
#[derive(Clone, Copy)]
struct Edge {
    /// A client that has not sent its whole header by then is disconnected.
    header_timeout: std::time::Duration,
}

/// Largest request head (request line and headers) read, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

impl Edge {
    fn builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            // hyper's header timeout does nothing without a timer.
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
    }
}

/// The next connection once there is room for it; `None` when accepting failed.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, OwnedSemaphorePermit)> {
    let permit = Arc::clone(connections).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _peer)) => Some((stream, permit)),
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            None
        }
    }
}

/// The methods a known path answers, for 405's `Allow` (HEAD wherever GET is).
fn allowed(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["transfers"] | ["admin", "deposits"] => "POST",
        ["transfers", _]
        | ["accounts", _, "balances"]
        | ["healthz"]
        | ["readyz"]
        | ["metrics"]
        | ["openapi.json"] => "GET, HEAD",
        ["admin", "guest"] => "GET, HEAD, PUT",
        ["admin", "status" | "status.js"] => "GET, HEAD",
        ["admin", "guest", "rollback"] => "POST",
        ["admin", "guest", "candidate"] => "DELETE",
        ["admin", "guest", _, "shadow"] => "GET, HEAD, POST",
        ["admin", "guest", _, "activate" | "canary"] => "POST",
        ["admin", "quarantine"] => "GET, HEAD",
        ["admin", "quarantine", _, _, "retry"] => "POST",
        _ => return None,
    })
}

/// The route of a path and method: 404 for an unknown path, 405 for a known path's other
/// methods (before authentication, so they answer the same to everyone). HEAD is GET without
/// the body (hyper sends no body for HEAD).
fn resolve<'a>(method: &Method, segments: &[&'a str]) -> Result<Route<'a>, ApiError> {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let route = match segments {
        ["healthz"] if get => Route::Health,
        ["openapi.json"] if get => Route::OpenApi,
        ["readyz"] if get => Route::Ready,
        ["metrics"] if get => Route::Metrics,
        ["transfers"] if post => Route::User(UserRoute::CreateTransfer),
        ["transfers", id] if get => Route::User(UserRoute::ShowTransfer(id)),
        ["accounts", user_id, "balances"] if get => Route::User(UserRoute::Balances(user_id)),
        ["admin", "guest"] if method == Method::PUT => Route::Admin(AdminRoute::GuestUpload),
        ["admin", "guest"] if get => Route::Admin(AdminRoute::GuestStatus),
        ["admin", "guest", "rollback"] if post => Route::Admin(AdminRoute::GuestRollback),
        ["admin", "guest", version, "activate"] if post => {
            Route::Admin(AdminRoute::GuestActivate(version))
        }
        ["admin", "guest", version, "canary"] if post => {
            Route::Admin(AdminRoute::GuestCanary(version))
        }
        ["admin", "guest", version, "shadow"] if post => {
            Route::Admin(AdminRoute::GuestShadow(version))
        }
        ["admin", "guest", version, "shadow"] if get => {
            Route::Admin(AdminRoute::GuestShadowStats(version))
        }
        ["admin", "guest", "candidate"] if method == Method::DELETE => {
            Route::Admin(AdminRoute::GuestEndCandidate)
        }
        ["admin", "deposits"] if post => Route::Admin(AdminRoute::Deposit),
        ["admin", "status"] if get => Route::Admin(AdminRoute::StatusPage),
        ["admin", "status.js"] if get => Route::Admin(AdminRoute::StatusScript),
        ["admin", "quarantine"] if get => Route::Admin(AdminRoute::QuarantineList),
        ["admin", "quarantine", partition, offset, "retry"] if post => {
            Route::Admin(AdminRoute::QuarantineRetry(partition, offset))
        }
        _ => {
            return Err(match allowed(segments) {
                Some(allow) => ApiError::MethodNotAllowed { allow },
                None => ApiError::NotFound,
            });
        }
    };
    Ok(route)
}

/// Runs the route within the whole-request limit; a transfer runs to its decision's end (the
/// guest and Kafka timeouts bound it), so its answer always says what became of the money.
async fn within_limit(
    app: &Arc<App>,
    route: Route<'_>,
    method: &Method,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    if matches!(route, Route::User(UserRoute::CreateTransfer)) {
        return handle(app, route, method, headers, body).await;
    }
    let limit = app.request_timeout;
    tokio::time::timeout(limit, handle(app, route, method, headers, body))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(format!(
                "the request did not finish within {} ms",
                limit.as_millis()
            )))
        })
}

/// Authenticates the route's caller, then runs its handler.
async fn handle(
    app: &Arc<App>,
    route: Route<'_>,
    method: &Method,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    match route {
        Route::Health => Ok(json_response(
            StatusCode::OK,
            &api::Health {
                status: "ok".into(),
            },
        )),
        Route::OpenApi => Ok(openapi::reply()),
        Route::Ready => Ok(ready::readiness(app).await),
        Route::Metrics => Ok(metrics_reply()),
        Route::User(route) => {
            let caller = app.gate.caller(headers).inspect_err(count_refusal)?;
            if let Some(limit) = &app.caller_limit {
                limit
                    .check(&caller.scope())
                    .map_err(|wait| ApiError::TooManyRequests {
                        retry_after_s: rate_limit::retry_after_seconds(wait),
                    })?;
            }
            user_route(app, &caller, route, headers, body).await
        }
        Route::Admin(route) => {
            let access = admin_access(method, &route);
            let admin = match app.gate.admin(headers, access).inspect_err(count_refusal) {
                Ok(admin) => admin,
                // The status page is opened by a browser: ask it for credentials.
                Err(error) if matches!(route, AdminRoute::StatusPage) => {
                    return Ok(status::refused(error));
                }
                Err(error) => return Err(error.into()),
            };
            admin_route(app, &admin, route, headers, body).await
        }
    }
}

async fn user_route(
    app: &Arc<App>,
    caller: &Caller,
    route: UserRoute<'_>,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    match route {
        UserRoute::CreateTransfer => transfers::create(app, caller, headers, body).await,
        UserRoute::ShowTransfer(id) => transfers::show(app, caller, id).await,
        UserRoute::Balances(user_id) => accounts::balances(app, caller, user_id).await,
    }
}

async fn admin_route(
    app: &Arc<App>,
    admin: &Admin,
    route: AdminRoute<'_>,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Reply, ApiError> {
    match route {
        AdminRoute::GuestUpload => admin_guest::upload(app, admin, headers, body).await,
        AdminRoute::GuestStatus => admin_guest::status(app).await,
        AdminRoute::GuestRollback => admin_guest::rollback(app, admin).await,
        AdminRoute::GuestActivate(version) => admin_guest::activate(app, admin, version).await,
        AdminRoute::GuestCanary(version) => {
            admin_guest::canary(app, admin, headers, version, body).await
        }
        AdminRoute::GuestShadow(version) => admin_guest::shadow(app, admin, version).await,
        AdminRoute::GuestShadowStats(version) => admin_guest::shadow_stats(app, version),
        AdminRoute::GuestEndCandidate => admin_guest::end_candidate(app, admin).await,
        AdminRoute::Deposit => admin::deposit(app, admin, headers, body).await,
        AdminRoute::StatusPage => Ok(status::page()),
        AdminRoute::StatusScript => Ok(status::script()),
        AdminRoute::QuarantineList => admin_quarantine::list(app).await,
        AdminRoute::QuarantineRetry(partition, offset) => {
            admin_quarantine::retry(app, partition, offset).await
        }
    }
}

/// Serves one request under its trace context: the caller's request id and trace, or minted
/// ones, on every log line it writes, on the message it publishes, and (the request id) on
/// the answer.
async fn route(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let mut trace = TraceContext::of_request(request.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %trace.request_id,
        trace_id = tracing::field::Empty,
    );
    crate::otel::adopt(&span, &mut trace);
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    let request_id = http::HeaderValue::from_str(&trace.request_id).ok();
    let served = routed(app, request).instrument(span);
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

async fn routed(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let segments: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
    let (name, result) = match resolve(&parts.method, &segments) {
        Ok(route) => (
            route.name(),
            within_limit(app, route, &parts.method, &parts.headers, body).await,
        ),
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
