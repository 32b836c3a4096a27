//! `/admin/guest`: upload, activate, roll back, backtest and inspect guest versions. The router lets
//! only admins reach these; the registry's history names which admin did what.

use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};

use crate::auth::Admin;
use serde_json::value::RawValue;

use crate::guest::backtest;
use crate::guest::guardrails::{self, Guardrails};
use crate::guest::registry::{self, Assign, CandidateMode, MAX_GUEST_BYTES};
use crate::guest::runtime::Guest;
use crate::http::App;
use crate::http::api::{
    BacktestWindow, CanaryShare, CandidateModeName, CandidateSet, ErrorBody, GuestActivated,
    GuestBacktest, GuestStatus, GuestUploaded, ShadowReport, ShadowStart,
};
use crate::http::body::{Fields, read_json_body};
use crate::http::error::{ApiError, Invalid, Reply, json_response};
use crate::http::query::Params;
use crate::http::routes::AdminRoute;
use crate::stores::provenance::Selection;

/// Longest note kept with an upload (`x-guest-note` header), in characters.
const MAX_NOTE_CHARS: usize = 500;

/// `PUT /admin/guest` with the component's bytes: compile, check against the world, run the
/// invariant vectors within the fuel budget (measuring each), store. Nothing is stored when any check fails.
#[utoipa::path(
    put, path = AdminRoute::GuestUpload.path(), operation_id = "guest_upload", tag = "admin",
    summary = "Upload a guest component (checked, stored, not yet serving)",
    description = "The body is the component's bytes (`application/wasm`, or any type), at most 32 MiB.",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(
        ("x-guest-note" = Option<String>, Header, max_length = 500),
        ("backtest_last" = Option<i64>, Query, minimum = 1, maximum = 100_000,
            description = "Backtest the version on this many of the newest recorded transfers \
            before storing it; a version that fails on any of them is refused (422)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, body = GuestUploaded),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Not a component of the world, an invariant broke, an \
            invariant case needs more fuel than the budget, or the version failed on a recorded \
            transfer", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn upload(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let mut params = Params::read(query, &["backtest_last"]);
    let backtest_last = params.integer("backtest_last", 1..=backtest::MAX_CASES);
    params.finish()?;
    // A component is up to 32 MiB, not a JSON body: six body timeouts to arrive.
    let reading = Limited::new(body, MAX_GUEST_BYTES).collect();
    let Ok(read) = tokio::time::timeout(app.body_timeout * 6, reading).await else {
        return Err(ApiError::RequestTimeout);
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge {
                limit_bytes: MAX_GUEST_BYTES,
            });
        }
        Err(error) => {
            return Err(ApiError::BadRequest(format!(
                "could not read the component: {error}"
            )));
        }
    };
    let note = headers
        .get("x-guest-note")
        .and_then(|value| value.to_str().ok());
    if note.is_some_and(|note| note.chars().count() > MAX_NOTE_CHARS) {
        return Err(ApiError::BadRequest(format!(
            "x-guest-note must be at most {MAX_NOTE_CHARS} characters"
        )));
    }
    let checked = registry::check(&app.engine, &bytes).await?;
    let backtest = match backtest_last {
        Some(last) => Some(backtest_before_upload(app, &checked.guest, last).await?),
        None => None,
    };
    let version = checked.guest.version();
    let actor = admin.actor();
    app.registry
        .store(version, &bytes, (&actor, note), checked.max_vector_fuel)
        .await?;
    tracing::info!(
        version,
        size_bytes = bytes.len(),
        max_vector_fuel = checked.max_vector_fuel,
        "guest version uploaded"
    );
    Ok(json_response(
        StatusCode::CREATED,
        &GuestUploaded {
            version: version.to_string(),
            size_bytes: bytes.len() as u64,
            invariant_cases_passed: checked.invariant_cases as u64,
            max_vector_fuel: checked.max_vector_fuel,
            fuel_budget: app.engine.limits().fuel_budget,
            backtest,
        },
    ))
}

/// The backtest an upload asked for: its report, or a 422 when the version failed (trapped,
/// ran out of time, broke a host check) on any recorded transfer.
async fn backtest_before_upload(
    app: &App,
    guest: &Guest,
    last: i64,
) -> Result<serde_json::Value, ApiError> {
    let report = backtest::backtest(app.stores.ledger.pool(), guest, Selection::Last(last))
        .await
        .map_err(unreadable_decisions)?;
    if report.failures > 0 {
        let example = report
            .samples
            .iter()
            .find(|sample| report.failures_by_kind.contains_key(&sample.kind))
            .map(|sample| {
                format!(
                    "; transaction {}: {}",
                    sample.transaction_id, sample.candidate
                )
            })
            .unwrap_or_default();
        return Err(ApiError::Unprocessable(format!(
            "the version failed on {} of {} recorded transfers ({}){example}; not stored",
            report.failures,
            report.cases,
            to_json(&report.failures_by_kind)?,
        )));
    }
    to_json(&report)
}

fn unreadable_decisions(error: sqlx::Error) -> ApiError {
    ApiError::Unavailable(format!("cannot read the recorded decisions: {error}"))
}

/// `POST /admin/guest/{version}/backtest` `{"last": N}` or `{"since": T}`: the version decides
/// recorded transfers again, offline, and the report says how it decides differently.
#[utoipa::path(
    post, path = AdminRoute::GuestBacktest.path(), operation_id = "guest_backtest", tag = "admin",
    summary = "Run a stored version over recorded transfers and report its differences",
    description = "Each recorded decision is made again by the version with the answers its \
        imports gave at the time: nothing is held, published or settled. At most 100,000 \
        decisions, within the request time limit.",
    params(("version" = String, Path)),
    request_body = BacktestWindow,
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestBacktest),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn backtest(
    app: &App,
    headers: &HeaderMap,
    version: &str,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    let selection = backtest_window(&bytes)?;
    let stored = app.registry.bytes(version).await?;
    let guest = app.engine.load(&stored).map_err(|error| {
        ApiError::Internal(format!(
            "the stored version {version} does not load: {error}"
        ))
    })?;
    let report = backtest::backtest(app.stores.ledger.pool(), &guest, selection)
        .await
        .map_err(unreadable_decisions)?;
    Ok(json_response(
        StatusCode::OK,
        &GuestBacktest {
            version: version.to_string(),
            report: to_json(&report)?,
        },
    ))
}

/// The recorded decisions a backtest's body names: exactly one of `last` and `since`.
fn backtest_window(bytes: &[u8]) -> Result<Selection, ApiError> {
    let mut fields = Fields::parse(bytes)?;
    let last = fields.optional_integer("last");
    let since = fields.optional_string("since");
    fields.finish()?;
    let refused = |field: &str, kind: &str, message: &str| {
        ApiError::Validation(vec![Invalid::body_field(field, kind, message)])
    };
    match (last, since) {
        (Some(last), None) if (1..=backtest::MAX_CASES).contains(&last) => {
            Ok(Selection::Last(last))
        }
        (Some(_), None) => Err(refused(
            "last",
            "less_than_equal",
            "last must be an integer from 1 to 100000",
        )),
        (None, Some(since)) => match chrono::DateTime::parse_from_rfc3339(&since) {
            Ok(at) => Ok(Selection::Since {
                at: at.with_timezone(&chrono::Utc),
                limit: backtest::MAX_CASES,
            }),
            Err(_) => Err(refused(
                "since",
                "datetime_parsing",
                "since must be an RFC 3339 date and time",
            )),
        },
        _ => Err(refused(
            "last",
            "missing",
            "give exactly one of last and since",
        )),
    }
}

/// `POST /admin/guest/{version}/activate`.
#[utoipa::path(
    post, path = AdminRoute::GuestActivate.path(), operation_id = "guest_activate", tag = "admin",
    summary = "Serve a stored version on every replica",
    params(("version" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestActivated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn activate(app: &App, admin: &Admin, version: &str) -> Result<Reply, ApiError> {
    app.registry.activate(version, &admin.actor()).await?;
    Ok(json_response(
        StatusCode::OK,
        &GuestActivated {
            active: version.to_string(),
        },
    ))
}

/// `POST /admin/guest/rollback`: back to the version active before the current one.
#[utoipa::path(
    post, path = AdminRoute::GuestRollback.path(), operation_id = "guest_rollback", tag = "admin",
    summary = "Back to the version active before the current one",
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestActivated),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "No earlier version", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn rollback(app: &App, admin: &Admin) -> Result<Reply, ApiError> {
    let version = app.registry.rollback(&admin.actor()).await?;
    Ok(json_response(
        StatusCode::OK,
        &GuestActivated { active: version },
    ))
}

/// `GET /admin/guest`: the active version, what this replica serves, versions, history, and
/// how often each version broke a host check on this replica.
#[utoipa::path(
    get, path = AdminRoute::GuestStatus.path(), operation_id = "guest_status", tag = "admin",
    summary = "The guest logic's versions, the active one and the candidate",
    security(("bearer" = [])),
    responses(
        (status = 200, body = GuestStatus),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn status(app: &App) -> Result<Reply, ApiError> {
    let active = app.registry.active().await?;
    let mut versions = app.registry.versions().await?;
    let limits = app.engine.limits();
    for info in &mut versions {
        info.fuel_budget = limits.fuel_budget;
        info.memory_limit_bytes = limits.memory_bytes as u64;
    }
    let history = app.registry.history(100).await?;
    Ok(json_response(
        StatusCode::OK,
        &GuestStatus {
            active,
            serving: app.serving().active.version().to_string(),
            serving_wit_package: app.serving().active.package().version().to_string(),
            candidate: to_json(&app.registry.candidate().await?)?,
            serving_candidate: serving_candidate(app)?,
            versions: to_json(&versions)?,
            history: to_json(&history)?,
            replica_guard_violations: to_json(&app.violations.snapshot())?,
        },
    ))
}

/// `POST /admin/guest/{version}/canary` `{"percent": 0..=100, "assign"?, "guardrails"?}`: that
/// share of requests is served by `version` until the next activation, `DELETE
/// /admin/guest/candidate`, or a replica seeing one of its guardrails crossed.
#[utoipa::path(
    post, path = AdminRoute::GuestCanary.path(), operation_id = "guest_canary", tag = "admin",
    summary = "Let a stored version decide a share of the transfers",
    params(("version" = String, Path)),
    request_body = CanaryShare,
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn canary(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    version: &str,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    let mut fields = Fields::parse(&bytes)?;
    let percent = fields.integer("percent");
    let assign = fields.optional_string("assign");
    let guardrails = fields.optional_raw("guardrails");
    fields.finish()?;
    let guardrails = read_guardrails(guardrails)?;
    let assign = match assign.as_deref() {
        None => Assign::Transaction,
        Some(text) => Assign::parse(text).ok_or_else(|| {
            ApiError::Validation(vec![Invalid::body_field(
                "assign",
                "enum",
                "assign must be \"transaction\" or \"sender\"",
            )])
        })?,
    };
    let percent = match percent.map(u8::try_from) {
        Some(Ok(percent)) if percent <= 100 => percent,
        _ => {
            return Err(ApiError::Validation(vec![Invalid::body_field(
                "percent",
                "less_than_equal",
                "percent must be an integer from 0 to 100",
            )]));
        }
    };
    let mode = CandidateMode::Canary { percent, assign };
    app.registry
        .set_candidate(version, mode, guardrails.as_ref(), &admin.actor())
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &CandidateSet {
            candidate: Some(version.to_string()),
            mode: Some(CandidateModeName::Canary),
            percent: Some(percent),
            assign: Some(assign.as_str()),
            guardrails: to_json(&guardrails)?,
        },
    ))
}

/// A start's `guardrails`: left out, the defaults; `null`, none; else an object of limits.
fn read_guardrails(raw: Option<&RawValue>) -> Result<Option<Guardrails>, ApiError> {
    let invalid = |message: String| {
        ApiError::Validation(vec![Invalid::body_field(
            "guardrails",
            "guardrails",
            message,
        )])
    };
    let Some(raw) = raw else {
        return Ok(Some(guardrails::DEFAULT));
    };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(serde_json::Value::Object(object)) => {
            Guardrails::from_json(&object).map(Some).map_err(invalid)
        }
        _ => Err(invalid("guardrails must be an object or null".into())),
    }
}

/// `POST /admin/guest/{version}/shadow` (`{"guardrails"?}`, or no body): `version` runs beside
/// the active one on every request, publishing nothing, until the next activation, `DELETE
/// /admin/guest/candidate`, or a replica seeing one of its guardrails crossed.
#[utoipa::path(
    post, path = AdminRoute::GuestShadow.path(), operation_id = "guest_shadow", tag = "admin",
    summary = "Run a stored version beside the active one, deciding nothing",
    params(("version" = String, Path)),
    request_body(content = ShadowStart, content_type = "application/json",
        description = "Optional: a request without a body starts the shadow with the default guardrails."),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn shadow(
    app: &App,
    admin: &Admin,
    headers: &HeaderMap,
    version: &str,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let guardrails = match optional_json_body(app, headers, body).await? {
        None => Some(guardrails::DEFAULT),
        Some(bytes) => {
            let mut fields = Fields::parse(&bytes)?;
            let guardrails = fields.optional_raw("guardrails");
            fields.finish()?;
            read_guardrails(guardrails)?
        }
    };
    app.registry
        .set_candidate(
            version,
            CandidateMode::Shadow,
            guardrails.as_ref(),
            &admin.actor(),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &CandidateSet {
            candidate: Some(version.to_string()),
            mode: Some(CandidateModeName::Shadow),
            percent: None,
            assign: None,
            guardrails: to_json(&guardrails)?,
        },
    ))
}

/// A JSON body, or `None` when the request has none (no content type, nothing in it).
async fn optional_json_body(
    app: &App,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Option<bytes::Bytes>, ApiError> {
    let untyped = headers.get(http::header::CONTENT_TYPE).is_none();
    if untyped && body.is_end_stream() {
        return Ok(None);
    }
    let bytes = read_json_body(headers, body, app.body_timeout).await?;
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// `GET /admin/guest/{version}/shadow`: this replica's shadow runs of `version`.
#[utoipa::path(
    get, path = AdminRoute::GuestShadowStats.path(), operation_id = "guest_shadow_report", tag = "admin",
    summary = "This replica's shadow runs of a version",
    params(("version" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ShadowReport),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
)]
pub fn shadow_stats(app: &App, version: &str) -> Result<Reply, ApiError> {
    let stats = app.shadow_book.stats(version);
    Ok(json_response(
        StatusCode::OK,
        &ShadowReport {
            version: version.to_string(),
            replica_stats: to_json(&stats)?,
        },
    ))
}

/// `DELETE /admin/guest/candidate`: stop the canary or shadow.
#[utoipa::path(
    delete, path = AdminRoute::GuestEndCandidate.path(), operation_id = "guest_end_candidate", tag = "admin",
    summary = "Stop the canary or the shadow",
    security(("bearer" = [])),
    responses(
        (status = 200, body = CandidateSet),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub async fn end_candidate(app: &App, admin: &Admin) -> Result<Reply, ApiError> {
    app.registry.end_candidate(&admin.actor()).await?;
    Ok(json_response(
        StatusCode::OK,
        &CandidateSet {
            candidate: None,
            mode: None,
            percent: None,
            assign: None,
            guardrails: serde_json::Value::Null,
        },
    ))
}

/// The candidate this replica serves, its guardrails and what it has seen of it.
fn serving_candidate(app: &App) -> Result<serde_json::Value, ApiError> {
    let Some(candidate) = app.serving().candidate.clone() else {
        return Ok(serde_json::Value::Null);
    };
    to_json(&serde_json::json!({
        "version": candidate.guest.version(),
        "activation_id": candidate.started.activation_id,
        "guardrails": candidate.guardrails(),
        "observed": candidate.figures(),
        "tripped": candidate.is_tripped(),
    }))
}

/// A registry record as JSON for the admin views.
fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|error| ApiError::Internal(error.to_string()))
}
