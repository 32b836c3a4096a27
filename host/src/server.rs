//! `transferd serve`: the process wiring around the HTTP API. Connects the stores, loads the
//! guest, starts the settlement worker beside the API, accepts connections until a stop
//! signal and drains. What a request meets once accepted is `http`'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::auth::Gate;
use crate::config::Serve;
use crate::guest::registry::{self, Registry, ServingGuest};
use crate::guest::runtime::{Guest, GuestEngine, GuestLimits};
use crate::guest::watch;
use crate::http::{self, App, Parts, Port};
use crate::settlement;
use crate::settlement::reconcile::HoldsTrust;
use crate::shutdown::{self, Signals, StopSignal};
use crate::stores::Stores;

/// How long serve waits at start to learn whether Redis's holds are trusted.
const HOLDS_TRUST_AT_START: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) read, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

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
    let engine = Arc::new(GuestEngine::new(guest_limits(&settings)?)?);
    let (registry, serving) = start_guests(&settings, &engine, &stores).await?;
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
    let parts = Parts {
        stores,
        serving,
        engine,
        registry,
        gate,
        probes,
    };
    let app = Arc::new(App::new(parts, &settings));
    http::status_history::spawn_sampler(Arc::clone(&app.history));
    wait_for_holds_trust(&mut holds_trust).await;
    let listeners = Listeners::bind(&settings).await?;

    let graceful = GracefulShutdown::new();
    let signal = accept_until_stopped(&listeners, &app, &settings, &graceful, &mut signals).await;
    drop(listeners);
    stop_handle.stop();
    drain(&app, graceful, worker, services.drain_timeout(), signal).await;
    Ok(())
}

fn guest_limits(settings: &Serve) -> anyhow::Result<GuestLimits> {
    Ok(GuestLimits {
        timeout: settings.guest_timeout(),
        memory_bytes: usize::try_from(settings.guest_memory_mib * 1024 * 1024)?,
        fuel_budget: settings.guest_fuel_budget,
        concurrency: settings.guest_concurrency,
        reuse_count: settings.guest_reuse_count,
        compiled_cache: settings.compiled_cache(),
    })
}

/// Loads the guest file and starts serving it: the registry's active version, once one was
/// activated, wins over the file, and is followed; with `--watch` the file is, instead.
async fn start_guests(
    settings: &Serve,
    engine: &Arc<GuestEngine>,
    stores: &Stores,
) -> anyhow::Result<(Registry, Arc<ServingGuest>)> {
    let file = &settings.guest_file;
    let guest_bytes =
        std::fs::read(file).with_context(|| format!("reading the guest {}", file.display()))?;
    let guest = engine
        .load(&guest_bytes)
        .with_context(|| format!("loading the guest {}", file.display()))?;
    tracing::info!(version = guest.version(), file = %file.display(), "guest loaded");
    let registry = Registry::new(stores.ledger.pool().clone());
    if !settings.watch {
        adopt_startup_guest(&registry, &guest, &guest_bytes, file).await;
    }
    let serving = Arc::new(ServingGuest::new(guest));
    if settings.watch {
        watch::watch_file(file.clone(), Arc::clone(engine), Arc::clone(&serving));
    } else {
        registry::reconcile(&registry, engine, &serving).await;
        registry::follow(registry.clone(), Arc::clone(engine), Arc::clone(&serving));
    }
    Ok((registry, serving))
}

/// Records the file's guest in the registry (the version to roll back to on a fresh
/// install). A registry that cannot be written is logged, not fatal: the replica still serves.
async fn adopt_startup_guest(
    registry: &Registry,
    guest: &Guest,
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

/// Transfers are refused while the holds are not trusted; on a fresh Redis with a consumed
/// log the first check makes them trusted, so waiting for it (bounded: Redis or the broker
/// may be down) lets the first request be accepted.
async fn wait_for_holds_trust(holds_trust: &mut HoldsTrust) {
    let trusted = settlement::reconcile::first_trust(holds_trust, HOLDS_TRUST_AT_START).await;
    if trusted != Some(true) {
        tracing::warn!(
            ?trusted,
            "starting while Redis's holds are not trusted: transfers are refused (503) until they are"
        );
    }
}

/// The API's address, and the admin address when one is set.
struct Listeners {
    api: TcpListener,
    admin: Option<TcpListener>,
}

impl Listeners {
    async fn bind(settings: &Serve) -> anyhow::Result<Listeners> {
        let bind = |address: std::net::SocketAddr| async move {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?;
            anyhow::Ok(listener)
        };
        let api = bind(settings.listen).await?;
        let admin = match settings.admin_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        tracing::info!(address = %api.local_addr()?, "serving");
        if let Some(admin) = &admin {
            tracing::info!(address = %admin.local_addr()?, "serving /admin and /metrics");
        }
        Ok(Listeners { api, admin })
    }

    /// What the API's address serves: everything, unless an admin address takes its part.
    fn api_port(&self) -> Port {
        if self.admin.is_some() {
            Port::Public
        } else {
            Port::All
        }
    }
}

/// Serves every connection accepted until a stop signal, which it returns. Both addresses
/// share the connection limit.
async fn accept_until_stopped(
    listeners: &Listeners,
    app: &Arc<App>,
    settings: &Serve,
    graceful: &GracefulShutdown,
    signals: &mut Signals,
) -> StopSignal {
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let edge = Edge {
        header_timeout: settings.header_timeout(),
    };
    let api_port = listeners.api_port();
    loop {
        tokio::select! {
            // At the connection limit nothing is accepted: new clients wait in the backlog.
            accepted = accept(Some(&listeners.api), &connections) => {
                let Some((stream, permit)) = accepted else { continue };
                edge.serve(stream, permit, app, graceful, api_port);
            }
            accepted = accept(listeners.admin.as_ref(), &connections) => {
                let Some((stream, permit)) = accepted else { continue };
                edge.serve(stream, permit, app, graceful, Port::Admin);
            }
            signal = signals.recv() => return signal,
        }
    }
}

/// The next connection once there is room for it; `None` when accepting failed. Without a
/// listener, never.
async fn accept(
    listener: Option<&TcpListener>,
    connections: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let permit = Arc::clone(connections).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _peer)) => Some((stream, permit)),
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            None
        }
    }
}

/// The limits every connection is served under.
#[derive(Clone, Copy)]
struct Edge {
    /// A client that has not sent its whole header by then is disconnected.
    header_timeout: Duration,
}

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

    /// Serves one connection as its own task, holding its place under the connection limit
    /// until it ends.
    fn serve(
        &self,
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        app: &Arc<App>,
        graceful: &GracefulShutdown,
        port: Port,
    ) {
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(app);
        let service = service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(http::respond(&app, port, request).await) }
        });
        let connection = self
            .builder()
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Finishes requests in flight, transfer decisions and the settlement worker, then flushes
/// the producer, all within `drain` of now.
async fn drain(
    app: &App,
    graceful: GracefulShutdown,
    worker: Option<JoinHandle<()>>,
    drain: Duration,
    signal: StopSignal,
) {
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
}
