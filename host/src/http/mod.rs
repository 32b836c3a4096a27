//! The HTTP API: the server loop and the router. One file per resource; errors become
//! responses in `error.rs` only.

mod accounts;
mod admin;
mod admin_guest;
mod body;
mod error;
mod transfers;

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::capabilities::Capabilities;
use crate::capabilities::guard::ViolationCounts;
use crate::config::Serve;
use crate::guest::registry::{self, Registry, Serving, ServingGuest};
use crate::guest::runtime::{GuestEngine, GuestLimits};
use crate::guest::shadow::ShadowBook;
use crate::guest::watch;
use crate::{settlement, shutdown};
use error::{ApiError, Reply, json_response};

/// Names the guest version that decided a response.
pub const GUEST_VERSION_HEADER: &str = "x-guest-version";

/// What every request handler shares.
pub struct App {
    pub capabilities: Arc<Capabilities>,
    serving: Arc<ServingGuest>,
    pub engine: Arc<GuestEngine>,
    pub registry: Registry,
    pub shadow_book: Arc<ShadowBook>,
    /// Host checks the guests broke on this replica, by version.
    pub violations: Arc<ViolationCounts>,
    pub admin_token: Option<String>,
}

impl App {
    /// The guests serving new requests; a request keeps what it got to the end.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.get()
    }
}

/// Connects the stores, migrates, loads the guest and serves until SIGINT or SIGTERM; runs
/// the settlement worker beside the API unless told not to.
pub async fn serve(settings: Serve) -> anyhow::Result<()> {
    let services = &settings.services;
    let capabilities = Arc::new(Capabilities::connect(services).await?);

    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: settings.guest_timeout(),
        memory_bytes: usize::try_from(settings.guest_memory_mib * 1024 * 1024)?,
        concurrency: settings.guest_concurrency,
        compiled_cache: settings.compiled_cache(),
    })?);
    let guest = engine
        .load_file(&settings.guest_file)
        .with_context(|| format!("loading the guest {}", settings.guest_file.display()))?;
    tracing::info!(version = guest.version(), file = %settings.guest_file.display(), "guest loaded");
    // The registry's active version, once one was activated, wins over the file.
    let registry = Registry::new(capabilities.ledger.pool().clone());
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
    if settings.admin_token.is_none() {
        tracing::warn!("TRANSFERD_ADMIN_TOKEN is not set: the admin API refuses every request");
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = settings.run_worker.then(|| {
        let (services, worker, capabilities) = (
            services.clone(),
            settings.worker.clone(),
            Arc::clone(&capabilities),
        );
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            settlement::run(&services, &worker, capabilities, shutdown).await
        })
    });

    let app = Arc::new(App {
        capabilities,
        serving,
        engine,
        registry,
        shadow_book: Arc::new(ShadowBook::default()),
        violations: Arc::new(ViolationCounts::default()),
        admin_token: settings.admin_token.clone(),
    });
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving");

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown::signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(route(&app, request).await) }
                });
                let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    graceful.shutdown().await;
    let _ = stop.send(true);
    if let Some(worker) = worker {
        worker.await??;
    }
    Ok(())
}

async fn route(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let segments: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
    let method = &parts.method;
    let result = match segments.as_slice() {
        ["transfers"] if method == Method::POST => {
            transfers::create(app, &parts.headers, body).await
        }
        ["transfers", id] if method == Method::GET => transfers::show(app, id).await,
        ["accounts", user_id, "balances"] if method == Method::GET => {
            accounts::balances(app, user_id).await
        }
        ["admin", "guest"] if method == Method::PUT => {
            admin_guest::upload(app, &parts.headers, body).await
        }
        ["admin", "guest"] if method == Method::GET => {
            admin_guest::status(app, &parts.headers).await
        }
        ["admin", "guest", "rollback"] if method == Method::POST => {
            admin_guest::rollback(app, &parts.headers).await
        }
        ["admin", "guest", version, "activate"] if method == Method::POST => {
            admin_guest::activate(app, &parts.headers, version).await
        }
        ["admin", "guest", version, "canary"] if method == Method::POST => {
            admin_guest::canary(app, &parts.headers, version, body).await
        }
        ["admin", "guest", version, "shadow"] if method == Method::POST => {
            admin_guest::shadow(app, &parts.headers, version).await
        }
        ["admin", "guest", version, "shadow"] if method == Method::GET => {
            admin_guest::shadow_stats(app, &parts.headers, version).await
        }
        ["admin", "guest", "candidate"] if method == Method::DELETE => {
            admin_guest::end_candidate(app, &parts.headers).await
        }
        ["admin", "deposits"] if method == Method::POST => {
            admin::deposit(app, &parts.headers, body).await
        }
        ["healthz"] if method == Method::GET => {
            Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        ["transfers"]
        | ["transfers", _]
        | ["accounts", _, "balances"]
        | ["admin", "deposits"]
        | ["admin", "guest", ..]
        | ["healthz"] => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    // Every response names a guest version: the one that decided it (set by the transfer
    // handler, a canary perhaps), else the active one.
    if !response.headers().contains_key(GUEST_VERSION_HEADER)
        && let Ok(value) = http::HeaderValue::from_str(app.serving().active.version())
    {
        response.headers_mut().insert(GUEST_VERSION_HEADER, value);
    }
    response
}
