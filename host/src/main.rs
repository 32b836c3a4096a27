//! `transferd`: the command line. Parses settings and hands over; nothing else lives here.

use clap::{Parser, Subcommand};
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

use transferd::capabilities::Capabilities;
use transferd::{admin_client, config, http, settlement, shutdown, stores};

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
    Serve(config::Serve),
    /// Run only the settlement worker.
    Worker(config::WorkerOnly),
    /// Run one pass of the hold reconciler, print what it did, and exit.
    Reconcile(config::WorkerOnly),
    /// Apply the database migrations and exit.
    Migrate(config::Services),
    /// Manage guest versions through a replica's admin API.
    Guest(admin_client::GuestCli),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TRANSFERD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(settings) => {
            settings.validate()?;
            http::serve(settings).await
        }
        Command::Worker(settings) => {
            settings.services.validate()?;
            settings.worker.validate_with(&settings.services)?;
            let capabilities = Arc::new(Capabilities::connect(&settings.services).await?);
            settlement::reconcile::spawn(&settings.services, &settings.worker, &capabilities);
            settlement::run(
                &settings.services,
                &settings.worker,
                capabilities,
                shutdown::signal(),
            )
            .await?;
            Ok(())
        }
        Command::Guest(cli) => admin_client::run(cli).await,
        Command::Reconcile(settings) => {
            settings.services.validate()?;
            settings.worker.validate_with(&settings.services)?;
            let capabilities = Capabilities::connect(&settings.services).await?;
            let position = settlement::reconcile::position(
                &settings.services,
                &settings.worker,
                &capabilities,
            )?;
            let report =
                settlement::reconcile::pass(&capabilities, &position, &settings.worker).await?;
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
    }
}
