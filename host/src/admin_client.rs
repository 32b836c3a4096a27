//! `transferd guest …` and `transferd quarantine …`: the admin API's guest and quarantine routes
//! from the command line. A thin client: every check and change happens in the server, so the
//! CLI and curl behave the same.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

/// The replica the CLI talks to, and how.
#[derive(Debug, Args)]
pub struct Target {
    /// Base URL of a transferd replica, `http://` or `https://` (the server's certificate is
    /// checked, against `TRANSFERD_URL_CA_FILE` when set, else the system's roots).
    #[arg(long, env = "TRANSFERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// PEM file of the certificate authority that signed the replica's certificate; when
    /// set, only it is trusted.
    #[arg(long, env = "TRANSFERD_URL_CA_FILE")]
    pub url_ca_file: Option<PathBuf>,

    /// Longest a command waits for the replica's whole answer, in milliseconds (an upload
    /// includes the server's checks of the component).
    #[arg(
        long,
        env = "TRANSFERD_URL_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    pub url_timeout_ms: u64,

    /// The admin bearer token.
    #[arg(long, env = "TRANSFERD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
}

#[derive(Debug, Args)]
pub struct GuestCli {
    #[command(flatten)]
    pub target: Target,

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
    send(&cli.target, call).await
}

impl GuestCommand {
    /// The admin API request that carries out the command.
    fn call(&self) -> anyhow::Result<Call> {
        let (method, path) = match self {
            GuestCommand::Upload { file, note } => {
                let bytes =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                return Ok(Call {
                    method: "PUT",
                    path: "/admin/guest".to_string(),
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
    #[command(flatten)]
    pub target: Target,

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
    send(&cli.target, Call::json(method, path, Vec::new())).await
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

/// The HTTP client for `target`: its CA file alone trusted when given, and its timeout.
fn client(target: &Target) -> anyhow::Result<reqwest::Client> {
    let mut builder =
        reqwest::Client::builder().timeout(Duration::from_millis(target.url_timeout_ms));
    if let Some(file) = &target.url_ca_file {
        let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("reading certificates from {}", file.display()))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().context("building the HTTP client")
}

async fn send(target: &Target, call: Call) -> anyhow::Result<()> {
    let base = target.url.trim_end_matches('/');
    let Call {
        method,
        path,
        body,
        content_type,
        note,
    } = call;
    let method_name = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = client(target)?
        .request(method_name, format!("{base}{path}"))
        .bearer_auth(&target.admin_token)
        .header("content-type", content_type)
        .body(body);
    if let Some(note) = note {
        request = request.header("x-guest-note", note);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading the answer of {base}"))?;
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) => serde_json::to_string_pretty(&json)?,
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    println!("{text}");
    anyhow::ensure!(status.is_success(), "{method} {path} answered {status}");
    Ok(())
}
