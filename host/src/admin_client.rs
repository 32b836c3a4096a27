//! `transferd guest …` and `transferd quarantine …`: the admin API's guest and quarantine routes
//! from the command line. A thin client: every check and change happens in the server, so the
//! CLI and curl behave the same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

/// The replica the CLI talks to, and how.
#[derive(Debug, Args)]
pub struct Target {
    /// Base URL of a transferd replica, `http://` or `https://`: its admin address when it sets
    /// `TRANSFERD_ADMIN_LISTEN`, else its API address (the server's certificate is checked,
    /// against `TRANSFERD_URL_CA_FILE` when set, else the system's roots).
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
    Canary {
        version: String,
        percent: u8,
        /// Draw the share by `transaction` (default) or by `sender` account (an account sees
        /// one version while the canary runs).
        #[arg(long, value_parser = ["transaction", "sender"])]
        assign: Option<String>,
        #[command(flatten)]
        guardrails: GuardrailArgs,
    },
    /// Run a version beside the active one, publishing nothing, and count differences.
    Shadow {
        version: String,
        #[command(flatten)]
        guardrails: GuardrailArgs,
    },
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
            GuestCommand::Upload {
                file,
                note,
                backtest_last,
            } => return upload_call(file, note.clone(), *backtest_last),
            GuestCommand::Canary {
                version,
                percent,
                assign,
                guardrails,
            } => return canary_call(version, *percent, assign.as_deref(), guardrails),
            GuestCommand::Shadow {
                version,
                guardrails,
            } => {
                let body = serde_json::to_vec(&guardrails.body())?;
                return Ok(Call::json(
                    "POST",
                    format!("/admin/guest/{version}/shadow"),
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
            GuestCommand::EndCandidate => ("DELETE", "/admin/guest/candidate".to_string()),
            GuestCommand::Status => ("GET", "/admin/guest".to_string()),
        };
        Ok(Call::json(method, path, Vec::new()))
    }
}

/// `guest upload`: the component's bytes, with the backtest to run first when asked.
fn upload_call(
    file: &Path,
    note: Option<String>,
    backtest_last: Option<u32>,
) -> anyhow::Result<Call> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let query = backtest_last
        .map(|last| format!("?backtest_last={last}"))
        .unwrap_or_default();
    Ok(Call {
        method: "PUT",
        path: format!("/admin/guest{query}"),
        body: bytes,
        content_type: "application/wasm",
        note,
    })
}

/// `guest canary`: the share, how it is drawn, and the guardrails.
fn canary_call(
    version: &str,
    percent: u8,
    assign: Option<&str>,
    guardrails: &GuardrailArgs,
) -> anyhow::Result<Call> {
    let mut body = guardrails.body();
    body.insert("percent".into(), percent.into());
    if let Some(assign) = assign {
        body.insert("assign".into(), assign.into());
    }
    Ok(Call::json(
        "POST",
        format!("/admin/guest/{version}/canary"),
        serde_json::to_vec(&body)?,
    ))
}

/// A canary's or shadow's guardrails. Without any of these flags the server's defaults apply;
/// a flag sets that limit and leaves the others at their defaults.
#[derive(Debug, Args)]
pub struct GuardrailArgs {
    /// End it when more than this fraction of its calls trap (timeouts, fuel included).
    #[arg(long)]
    max_trap_rate: Option<f64>,
    /// End it when it breaks host checks more than this many times.
    #[arg(long)]
    max_violations: Option<u64>,
    /// End it when more than this fraction of compared calls decide otherwise than the
    /// active version.
    #[arg(long)]
    max_difference_rate: Option<f64>,
    /// End it when its 99th-percentile guest time exceeds this many milliseconds.
    #[arg(long)]
    max_p99_guest_ms: Option<u64>,
    /// Calls each replica must see before judging rates and the p99.
    #[arg(long)]
    min_calls: Option<u32>,
    /// The window each replica judges: its last this many calls.
    #[arg(long)]
    window_calls: Option<u32>,
    /// Start it without guardrails.
    #[arg(long, conflicts_with_all = [
        "max_trap_rate", "max_violations", "max_difference_rate", "max_p99_guest_ms",
        "min_calls", "window_calls",
    ])]
    no_guardrails: bool,
}

impl GuardrailArgs {
    /// The start's body with its `guardrails` field, if the flags give one.
    fn body(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        if self.no_guardrails {
            body.insert("guardrails".into(), serde_json::Value::Null);
            return body;
        }
        let given = [
            (
                "max_trap_rate",
                self.max_trap_rate.map(serde_json::Value::from),
            ),
            ("max_violations", self.max_violations.map(Into::into)),
            (
                "max_difference_rate",
                self.max_difference_rate.map(Into::into),
            ),
            ("max_p99_guest_ms", self.max_p99_guest_ms.map(Into::into)),
            ("min_calls", self.min_calls.map(Into::into)),
            ("window_calls", self.window_calls.map(Into::into)),
        ];
        let limits: serde_json::Map<String, serde_json::Value> = given
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_string(), value?)))
            .collect();
        if !limits.is_empty() {
            body.insert("guardrails".into(), limits.into());
        }
        body
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
