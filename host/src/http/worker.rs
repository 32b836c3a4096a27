//! A `transferd worker`'s own listener (`TRANSFERD_WORKER_LISTEN`): `/healthz`, `/readyz` and
//! `/metrics` of the route table, every other path 404, no authentication (nothing here names
//! a user or moves money). A worker `serve` started has none: serve's port shows its metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::health::Probes;
use crate::http::api::{Check, ReadyStatus};
use crate::http::error::{ApiError, Reply, json_response};
use crate::http::ready::check;
use crate::http::routes::{self, Endpoint, ServiceRoute};
use crate::http::service;
use crate::settlement::ownership::{self, Role};

/// Most connections served at once (probes and a scraper need few).
const MAX_CONNECTIONS: usize = 64;

/// A client that has not sent its whole header by then is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker's `GET /readyz`: its dependencies, and whether it settles or stands by.
#[derive(Debug, Serialize)]
pub struct WorkerReadiness {
    pub ready: bool,
    pub status: ReadyStatus,
    pub checks: WorkerChecks,
}

#[derive(Debug, Serialize)]
pub struct WorkerChecks {
    /// The ledger it settles into and takes the settlement lock from: gates.
    pub postgres: Check,
    /// The transfer log it reads: gates.
    pub broker: Check,
    /// The balance cache settlement's effects update: down, the worker is degraded (the
    /// effects wait for it).
    pub redis: Check,
    /// `active` (holds the settlement lock) or `standby` (waits for it): both ready.
    pub worker: Check,
}

/// Serves the listener's connections for the life of the process.
pub async fn serve(listener: TcpListener, probes: Arc<Probes>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "the worker's listener failed to accept");
                continue;
            }
        };
        let probes = Arc::clone(&probes);
        let service = service_fn(move |request| {
            let probes = Arc::clone(&probes);
            async move { Ok::<_, Infallible>(respond(&probes, request).await) }
        });
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "a worker connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Whether the worker's listener answers `endpoint`.
fn served(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Service(ServiceRoute::Health | ServiceRoute::Ready | ServiceRoute::Metrics)
    )
}

async fn respond(probes: &Probes, request: Request<Incoming>) -> Reply {
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match routes::resolve(request.method(), &segments) {
        Ok((Endpoint::Service(ServiceRoute::Health), _)) => service::health(),
        Ok((Endpoint::Service(ServiceRoute::Ready), _)) => readiness(probes).await,
        Ok((Endpoint::Service(ServiceRoute::Metrics), _)) => service::metrics(),
        // Another method of a path served here: its 405, `Allow` included.
        Err(error @ ApiError::MethodNotAllowed { .. })
            if routes::resolve(&Method::GET, &segments).is_ok_and(|(e, _)| served(e)) =>
        {
            error.into_response()
        }
        _ => ApiError::NotFound.into_response(),
    }
}

async fn readiness(probes: &Probes) -> Reply {
    let dependencies = probes.dependencies().await;
    let role = ownership::role();
    let worker = Check {
        ready: role != Role::Starting,
        detail: match role {
            Role::Active => "active: holds the settlement lock and settles".to_string(),
            Role::Standby => {
                "standby: healthy, waiting for the settlement lock another worker holds".to_string()
            }
            Role::Starting => "starting".to_string(),
        },
    };
    let checks = WorkerChecks {
        postgres: check(&dependencies.postgres),
        broker: check(&dependencies.broker),
        redis: check(&dependencies.redis),
        worker,
    };
    let ready = checks.postgres.ready && checks.broker.ready && checks.worker.ready;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = ReadyStatus::of(ready, !checks.redis.ready);
    json_response(
        code,
        &WorkerReadiness {
            ready,
            status,
            checks,
        },
    )
}
