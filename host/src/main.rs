//! `transferd`: the command line. Parses settings and hands over; nothing else lives here,
//! except making sure every exit says why (a log line) and happens when decided (an explicit
//! `process::exit`, so no destructor of a client library can hold the process past its
//! drain time).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

use transferd::guest::provenance;
use transferd::guest::registry::Registry;
use transferd::guest::runtime::GuestEngine;
use transferd::shutdown::{self, Signals};
use transferd::stores::Stores;
use transferd::{admin_client, auth, config, server, settlement, stores};
use transferd_guest::vectors::canonical;

/// mimalloc instead of glibc's malloc: under load, glibc's malloc, free and their arena work
/// (tasks and buffers freed on another thread than the one that allocated them, aligned task
/// cells) took a large share of serve's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "transferd",
    version,
    about = "A money-transfer service with hot-swappable WebAssembly rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve the HTTP API.
    Serve(Box<config::Serve>),
    /// Run only the settlement worker.
    Worker(config::WorkerCommand),
    /// Run one pass of the hold reconciler, print what it did, and exit.
    Reconcile(config::WorkerOnly),
    /// Apply the database migrations and exit.
    Migrate(config::Services),
    /// Check the ledger's journal.
    Ledger(LedgerCli),
    /// Decide a recorded transfer again under the guest version that decided it, with the
    /// answers its imports gave then; print both outcomes and the message bytes, and exit 0
    /// when they are identical.
    Replay(ReplayCli),
    /// Manage guest versions through a replica's admin API.
    Guest(admin_client::GuestCli),
    /// Look at and re-drive the transfer-log messages settlement could not apply.
    Quarantine(admin_client::QuarantineCli),
    /// Print a bearer token for the configured key (development, tests, examples).
    Token(config::Token),
}

#[derive(clap::Args)]
struct LedgerCli {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Walk the journal's hash chain and recompute every balance from its entries; print a
    /// summary and exit 0 when all holds, or print the first break and exit 2.
    Verify(config::Services),
}

#[derive(clap::Args)]
struct ReplayCli {
    #[command(flatten)]
    services: config::Services,
    /// The transfer's transaction id.
    transaction_id: uuid::Uuid,
    /// Print the recorded decision as a conformance vector file (tests/vectors/README.md),
    /// `expected` being the recorded outcome, instead of replaying it.
    #[arg(long)]
    vector: bool,
    /// Also write the component of the version that decided to this file.
    #[arg(long)]
    guest_out: Option<std::path::PathBuf>,
}

/// The exit status of a check that found the ledger broken (1: it could not check).
const LEDGER_BROKEN: i32 = 2;

fn main() -> ExitCode {
    // Every TLS client of the process (PostgreSQL, Redis, OTLP, the admin CLI) uses rustls
    // with ring; reqwest needs it installed before the exporter in `init_logging` is built.
    // rustls deprecates ring's provider for lacking post-quantum key exchange; aws-lc-rs,
    // which has it, would add a second C crypto library to the build beside OpenSSL's.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging();
    log_panics();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime; exiting");
            return ExitCode::FAILURE;
        }
    };
    let is_service = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    let outcome = runtime.block_on(run(cli.command));
    let code = match &outcome {
        Ok(()) => 0,
        Err(error) if is_break(error) => {
            // The break's own words: its source is already part of them.
            println!("{error}");
            LEDGER_BROKEN
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "transferd is exiting with an error"
            );
            eprintln!("Error: {error:#}");
            1
        }
    };
    if is_service {
        tracing::info!(code, "transferd exits");
    }
    transferd::otel::flush();
    // Not `return`: dropping the runtime would wait for blocking tasks (a librdkafka commit or
    // close against an unreachable broker) with no bound.
    std::process::exit(code)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => {
            let signals = Signals::register()?;
            settings.validate()?;
            server::serve(*settings, signals).await
        }
        Command::Worker(command) => {
            let signals = Signals::register()?;
            let settings = &command.settings;
            settings.services.validate()?;
            settings.worker.validate_with(&settings.services)?;
            worker(command, signals).await
        }
        Command::Guest(cli) => admin_client::run(cli).await,
        Command::Quarantine(cli) => admin_client::run_quarantine(cli).await,
        Command::Token(settings) => {
            settings.validate()?;
            let now_s = epoch_now_s()?;
            println!("{}", auth::jwt::mint(&settings, now_s)?);
            Ok(())
        }
        Command::Reconcile(settings) => {
            settings.services.validate()?;
            settings.worker.validate_with(&settings.services)?;
            let stores = Stores::connect(
                &settings.services,
                settlement::topic_recreated::forget_positions,
            )
            .await?;
            let position = settlement::reconcile::position(&settings.services, &stores)?;
            let report = settlement::reconcile::pass(&stores, &position, &settings.worker).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Migrate(services) => {
            services.validate()?;
            let ledger = stores::postgres::Ledger::connect(&services).await?;
            ledger.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Ledger(LedgerCli {
            command: LedgerCommand::Verify(services),
        }) => ledger_verify(services).await,
        Command::Replay(cli) => replay(cli).await,
    }
}

/// `transferd replay`: reads the database, writes nothing to it.
async fn replay(cli: ReplayCli) -> anyhow::Result<()> {
    cli.services.validate()?;
    let ledger = stores::postgres::Ledger::connect(&cli.services).await?;
    let pool = ledger.pool();
    let (stored, _) = provenance::recorded(pool, cli.transaction_id).await?;
    if let Some(path) = &cli.guest_out {
        let bytes = Registry::new(pool.clone())
            .bytes(&stored.guest_version)
            .await?;
        std::fs::write(path, bytes)?;
    }
    if cli.vector {
        println!("{}", stored.vector);
        return Ok(());
    }
    let engine = Arc::new(GuestEngine::new(provenance::replay_limits())?);
    let replayed = provenance::replay(pool, &engine, cli.transaction_id).await?;
    println!("transaction {}", stored.transaction_id);
    println!(
        "decided at {} by guest version {} (WIT {})",
        stored.decided_at.to_rfc3339(),
        stored.guest_version,
        stored.wit_package
    );
    println!("recorded: {}", canonical(&replayed.recorded));
    match &replayed.replayed {
        Ok(outcome) => println!("replayed: {}", canonical(outcome)),
        Err(failure) => println!("replayed: failed: {failure}"),
    }
    match provenance::message_of(&replayed.recorded) {
        Some(message) => println!("message: {message}"),
        None => println!("message: none"),
    }
    anyhow::ensure!(
        replayed.identical(),
        "different: the replay does not match the recorded decision"
    );
    println!("identical");
    Ok(())
}

/// `transferd ledger verify`: a read-only check; it applies no migration, so it refuses a
/// database that lacks some (the chain may not be there yet).
async fn ledger_verify(services: config::Services) -> anyhow::Result<()> {
    services.validate()?;
    let ledger = stores::postgres::Ledger::connect(&services).await?;
    let unapplied = ledger.unapplied_migrations().await?;
    anyhow::ensure!(
        unapplied == 0,
        "the ledger lacks {unapplied} of this version's migrations; run `transferd migrate` first"
    );
    let intact = stores::journal_verify::verify(ledger.pool()).await?;
    println!("{intact}");
    Ok(())
}

/// Whether the command ended by finding the ledger broken rather than failing to check it.
fn is_break(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<stores::journal_verify::VerifyError>(),
        Some(stores::journal_verify::VerifyError::Broken(_))
    )
}

/// Log lines to stdout, as `config::LOG_FILTER` and `config::LOG_FORMAT` say. Read before the
/// command line, so even a bad argument is logged in the chosen format.
fn init_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_env(config::LOG_FILTER.name)
        .unwrap_or_else(|_| EnvFilter::new(config::LOG_FILTER.default));
    let format = std::env::var(config::LOG_FORMAT.name).unwrap_or_default();
    let lines = match format.as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        _ => tracing_subscriber::fmt::layer().boxed(),
    };
    let (export, export_error) = match transferd::otel::layer() {
        Ok(layer) => (layer, None),
        Err(error) => (None, Some(error)),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(export)
        .with(filter)
        .init();
    if let Some(error) = export_error {
        tracing::warn!(%error, "not exporting traces");
    }
    if !matches!(format.as_str(), "" | "json" | "pretty") {
        tracing::warn!(
            format,
            "{} must be pretty or json; logging pretty",
            config::LOG_FORMAT.name
        );
    }
}

/// Seconds since the epoch, as JWT claims count time.
fn epoch_now_s() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

/// `transferd worker`: the settlement worker until a stop signal, then at most the drain time.
/// Started by `serve` (`--supervised`), it also stops when serve closes its standard input
/// (serve stopping, or gone), sends its metrics to serve, and leaves the hold reconciler to it.
/// Started by hand with `TRANSFERD_WORKER_LISTEN`, it serves its probes and metrics there.
async fn worker(command: config::WorkerCommand, mut signals: Signals) -> anyhow::Result<()> {
    let listener = match command.worker_listen.filter(|_| !command.supervised) {
        Some(address) => Some(worker_listener(address).await?),
        None => None,
    };
    let settings = command.settings;
    let parent_gone = if command.supervised {
        futures::future::Either::Left(settlement::process::attach_to_parent()?)
    } else {
        futures::future::Either::Right(std::future::pending())
    };
    let stores = Arc::new(
        Stores::connect(
            &settings.services,
            settlement::topic_recreated::forget_positions,
        )
        .await?,
    );
    if !command.supervised {
        let _holds_trust =
            settlement::reconcile::spawn(&settings.services, &settings.worker, &stores);
    }
    if let Some(listener) = listener {
        let probes = Arc::new(transferd::health::Probes::new(Arc::clone(&stores)));
        tokio::spawn(transferd::http::worker::serve(listener, probes));
    }
    let (stop_handle, stop) = shutdown::stop_channel();
    let mut worker = Some(settlement::spawn(
        settings.services.clone(),
        settings.worker.clone(),
        stores,
        stop,
    ));
    tokio::select! {
        signal = signals.recv() => {
            tracing::info!(%signal, "stopping the settlement worker");
        }
        () = parent_gone => {
            tracing::info!("serve stopped or is gone; stopping the settlement worker");
        }
        why = settlement::ended(&mut worker) => {
            anyhow::bail!("the settlement worker stopped unexpectedly: {why}");
        }
    }
    stop_handle.stop();
    let deadline = tokio::time::Instant::now() + settings.services.drain_timeout();
    if let Some(task) = worker
        && let Some(outcome) = shutdown::within(deadline, "the settlement worker", task).await
    {
        settlement::log_end(outcome);
    }
    Ok(())
}

/// The worker's own listener, with its metrics recorder installed: bound before the stores
/// connect, so a taken address stops the start at once.
async fn worker_listener(address: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    transferd::metrics::install().context("installing the metrics recorder")?;
    transferd::metrics::build_info("none", None);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "the worker serves /healthz, /readyz and /metrics");
    Ok(listener)
}

/// Panics anywhere (a spawned task included) go to the log as errors, then to the default
/// hook; a panic in a task would otherwise only end that task, quietly.
fn log_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panic"
        );
        default_hook(info);
    }));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;
    use transferd::config;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// docs/configuration.md is what the command line's definitions make of it; with
    /// TRANSFERD_WRITE_DOCS set, this writes it instead.
    #[test]
    fn configuration_page_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let page = config::configuration_page(&Cli::command());
        if std::env::var_os("TRANSFERD_WRITE_DOCS").is_some() {
            std::fs::write(&path, &page).expect("writing docs/configuration.md");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == page,
            "docs/configuration.md differs from what the code generates; regenerate it with `{}`",
            config::WRITE_PAGE_COMMAND
        );
    }
}
