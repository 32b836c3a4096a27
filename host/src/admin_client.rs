//! `transferd guest …` and `transferd quarantine …`: the admin API's guest and quarantine routes
//! from the command line. A thin client: every check and change happens in the server, so the
//! CLI and curl behave the same.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Args)]
pub struct GuestCli {
    /// Base URL of a transferd replica.
    #[arg(long, env = "TRANSFERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// The admin bearer token.
    #[arg(long, env = "TRANSFERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    #[command(subcommand)]
    pub command: GuestCommand,
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Upload a component; it is checked (world, invariant cases) and stored, not activated.
    Upload {
        file: PathBuf,
        /// A note kept with the version.
        #[arg(long)]
        note: Option<String>,
        /// Backtest it on this many of the newest recorded transfers first; a version that
        /// fails on any of them is not stored.
        #[arg(long)]
        backtest_last: Option<u32>,
    },
    /// Run a stored version over recorded transfers, offline, and report how its decisions
    /// differ from those made then.
    Backtest {
        version: String,
        /// The newest this many recorded transfers.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        last: Option<u32>,
        /// The recorded transfers decided at or after this moment (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Make a version the active one on every replica.
    Activate { version: String },
    /// Go back to the version active before the current one.
    Rollback,
    /// Serve a version to a share of requests.
    Canary { version: String, percent: u8 },
    /// Run a version beside the active one, publishing nothing, and count differences.
    Shadow { version: String },
    /// Stop the canary or shadow.
    EndCandidate,
    /// The active version, candidate, versions and history.
    Status,
}

/// Sends the command's request and prints the answer; fails on any non-2xx status.
pub async fn run(cli: GuestCli) -> anyhow::Result<()> {
    let call = cli.command.call()?;
    send(&cli.url, &cli.admin_token, call).await
}

impl GuestCommand {
    /// The admin API request that carries out the command.
    fn call(&self) -> anyhow::Result<Call> {
        let (method, path) = match self {
            GuestCommand::Upload {
                file,
                note,
                backtest_last,
            } => {
                let bytes =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let query = backtest_last
                    .map(|last| format!("?backtest_last={last}"))
                    .unwrap_or_default();
                return Ok(Call {
                    method: "PUT",
                    path: format!("/admin/guest{query}"),
                    body: bytes,
                    content_type: "application/wasm",
                    note: note.clone(),
                });
            }
            GuestCommand::Canary { version, percent } => {
                let body = serde_json::to_vec(&serde_json::json!({"percent": percent}))?;
                return Ok(Call::json(
                    "POST",
                    format!("/admin/guest/{version}/canary"),
                    body,
                ));
            }
            GuestCommand::Backtest {
                version,
                last,
                since,
            } => {
                let window = match (last, since) {
                    (Some(last), _) => serde_json::json!({"last": last}),
                    (None, since) => serde_json::json!({"since": since}),
                };
                return Ok(Call::json(
                    "POST",
                    format!("/admin/guest/{version}/backtest"),
                    serde_json::to_vec(&window)?,
                ));
            }
            GuestCommand::Activate { version } => {
                ("POST", format!("/admin/guest/{version}/activate"))
            }
            GuestCommand::Rollback => ("POST", "/admin/guest/rollback".to_string()),
            GuestCommand::Shadow { version } => ("POST", format!("/admin/guest/{version}/shadow")),
            GuestCommand::EndCandidate => ("DELETE", "/admin/guest/candidate".to_string()),
            GuestCommand::Status => ("GET", "/admin/guest".to_string()),
        };
        Ok(Call::json(method, path, Vec::new()))
    }
}

#[derive(Debug, Args)]
pub struct QuarantineCli {
    /// Base URL of a transferd replica.
    #[arg(long, env = "TRANSFERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// The admin bearer token.
    #[arg(long, env = "TRANSFERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// The messages settlement set aside, newest first, and how many wait for an operator.
    List,
    /// Apply the message at PARTITION:OFFSET of the transfer topic, once its cause is fixed.
    Retry { position: String },
}

/// Sends the quarantine command's request and prints the answer; fails on any non-2xx status.
pub async fn run_quarantine(cli: QuarantineCli) -> anyhow::Result<()> {
    let (method, path) = match &cli.command {
        QuarantineCommand::List => ("GET", "/admin/quarantine".to_string()),
        QuarantineCommand::Retry { position } => {
            let (partition, offset) = position
                .split_once(':')
                .context("the position is PARTITION:OFFSET, like 0:42")?;
            (
                "POST",
                format!("/admin/quarantine/{partition}/{offset}/retry"),
            )
        }
    };
    send(
        &cli.url,
        &cli.admin_token,
        Call::json(method, path, Vec::new()),
    )
    .await
}

/// One request to the admin API.
struct Call {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    content_type: &'static str,
    note: Option<String>,
}

impl Call {
    /// A request with a JSON body (or none) and no note.
    fn json(method: &'static str, path: String, body: Vec<u8>) -> Call {
        Call {
            method,
            path,
            body,
            content_type: "application/json",
            note: None,
        }
    }
}

async fn send(url: &str, admin_token: &str, call: Call) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let Call {
        method,
        path,
        body,
        content_type,
        note,
    } = call;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {admin_token}"))
        .header("content-type", content_type);
    if let Some(note) = note {
        request = request.header("x-guest-note", note);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) => serde_json::to_string_pretty(&json)?,
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    println!("{text}");
    anyhow::ensure!(status.is_success(), "{method} {path} answered {status}");
    Ok(())
}
