//! `transferd`: the command line. Parses settings and hands over; nothing else lives here.

mod capabilities;
mod config;
mod guest;
mod http;
mod stores;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    /// Apply the database migrations and exit.
    Migrate(config::Services),
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
        Command::Migrate(services) => {
            services.validate()?;
            let ledger = stores::postgres::Ledger::connect(&services).await?;
            ledger.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}
