//! The HTTP API: the server loop and the router. One file per resource; errors become
//! responses in `error.rs` only.

mod admin;
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
use crate::config::Serve;
use crate::guest::runtime::{Guest, GuestEngine, GuestLimits};
use crate::stores::kafka::{GUEST_TOPICS, TransferLog};
use crate::stores::postgres::Ledger;
use crate::stores::redis::BalanceCache;
use error::{ApiError, Reply, json_response};

/// Names the guest version that decided a response.
pub const GUEST_VERSION_HEADER: &str = "x-guest-version";

/// What every request handler shares.
pub struct App {
    pub capabilities: Arc<Capabilities>,
    guest: Arc<Guest>,
    pub admin_token: Option<String>,
}

impl App {
    /// The guest version serving new requests.
    pub fn guest(&self) -> Arc<Guest> {
        Arc::clone(&self.guest)
    }
}

/// Connects the stores, migrates, loads the guest and serves until SIGINT or SIGTERM.
pub async fn serve(settings: Serve) -> anyhow::Result<()> {
    let services = &settings.services;
    let ledger = Ledger::connect(services).await?;
    migrate_with_retry(&ledger).await?;
    let cache = BalanceCache::new(services)?;
    let log = TransferLog::new(services)?;
    ensure_topics_in_background(services.clone());

    let engine = Arc::new(GuestEngine::new(GuestLimits {
        timeout: settings.guest_timeout(),
        memory_bytes: usize::try_from(settings.guest_memory_mib * 1024 * 1024)?,
        concurrency: settings.guest_concurrency,
    })?);
    let guest = engine
        .load_file(&settings.guest_file)
        .with_context(|| format!("loading the guest {}", settings.guest_file.display()))?;
    tracing::info!(version = guest.version(), file = %settings.guest_file.display(), "guest loaded");
    if settings.admin_token.is_none() {
        tracing::warn!("TRANSFERD_ADMIN_TOKEN is not set: the admin API refuses every request");
    }

    let app = Arc::new(App {
        capabilities: Arc::new(Capabilities { ledger, cache, log }),
        guest: Arc::new(guest),
        admin_token: settings.admin_token.clone(),
    });
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving");

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
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
    Ok(())
}

async fn route(app: &App, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let result = match (path, &parts.method) {
        ("/transfers", &Method::POST) => transfers::create(app, &parts.headers, body).await,
        ("/admin/deposits", &Method::POST) => admin::deposit(app, &parts.headers, body).await,
        ("/healthz", &Method::GET) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ("/transfers" | "/admin/deposits" | "/healthz", _) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// The database may still be starting (scripts start it just before us): retry for a while.
async fn migrate_with_retry(ledger: &Ledger) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 30;
    for attempt in 1..=ATTEMPTS {
        match ledger.migrate().await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, attempt, "database not ready; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("migrating the database"),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Creates missing topics, retrying until the broker answers; requests that publish before
/// then fail with 503, as they would with the broker down.
fn ensure_topics_in_background(services: crate::config::Services) {
    tokio::spawn(async move {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            let outcome = match TransferLog::new(&services) {
                Ok(log) => log.ensure_topics(GUEST_TOPICS).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(topics = ?GUEST_TOPICS, prefix = services.topic_prefix, "topics ready");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot create topics yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
