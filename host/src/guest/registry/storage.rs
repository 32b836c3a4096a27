//! Versions and activations in PostgreSQL: `guest_versions` holds each version's bytes,
//! `guest_activations` is the append-only history whose latest rows say what is active and
//! what is the candidate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{CHANNEL, RegistryError, STARTUP};
use crate::guest::guardrails::Guardrails;

/// Serialises start-up adoption across replicas (`pg_advisory_xact_lock` key).
const ADOPT_LOCK: i64 = 0x7472_616e_7366_6572; // "transfer"

/// Serialises registry changes, so a guardrail's end of a candidate sees whether it is still
/// the candidate (`pg_advisory_xact_lock` key).
const CHANGE_LOCK: i64 = 0x6775_6172_6472_6169; // "guardrai"

/// What one row of `guest_activations` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryAction {
    Activate,
    Rollback,
    Canary,
    Shadow,
    EndCandidate,
}

impl RegistryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryAction::Activate => "activate",
            RegistryAction::Rollback => "rollback",
            RegistryAction::Canary => "canary",
            RegistryAction::Shadow => "shadow",
            RegistryAction::EndCandidate => "end-candidate",
        }
    }

    /// Whether the row names the active version (canary and shadow rows name candidates).
    pub fn makes_active(self) -> bool {
        matches!(self, RegistryAction::Activate | RegistryAction::Rollback)
    }
}

impl TryFrom<String> for RegistryAction {
    type Error = String;

    fn try_from(action: String) -> Result<Self, Self::Error> {
        [
            RegistryAction::Activate,
            RegistryAction::Rollback,
            RegistryAction::Canary,
            RegistryAction::Shadow,
            RegistryAction::EndCandidate,
        ]
        .into_iter()
        .find(|known| known.as_str() == action)
        .ok_or_else(|| format!("unknown registry action {action:?}"))
    }
}

/// Stores a version's bytes; storing the same bytes again changes nothing but the fuel its
/// invariant cases were last measured to use (`max_vector_fuel`, when measured).
async fn insert_version<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    version: &str,
    bytes: &[u8],
    (uploaded_by, note): (&str, Option<&str>),
    max_vector_fuel: Option<u64>,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO guest_versions (version, bytes, size_bytes, uploaded_by, note, max_vector_fuel)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (version) DO UPDATE SET max_vector_fuel = EXCLUDED.max_vector_fuel
         WHERE EXCLUDED.max_vector_fuel IS NOT NULL",
    )
    .bind(version)
    .bind(bytes)
    .bind(bytes.len() as i64)
    .bind(uploaded_by)
    .bind(note)
    .bind(max_vector_fuel.map(|fuel| i64::try_from(fuel).unwrap_or(i64::MAX)))
    .execute(executor)
    .await?;
    Ok(())
}

/// One row of `guest_activations` to append.
struct Change<'a> {
    version: &'a str,
    action: RegistryAction,
    percent: Option<i16>,
    assign: Option<Assign>,
    guardrails: Option<&'a Guardrails>,
    reason: Option<&'a serde_json::Value>,
    activated_by: &'a str,
}

impl<'a> Change<'a> {
    fn plain(version: &'a str, action: RegistryAction, activated_by: &'a str) -> Change<'a> {
        Change {
            version,
            action,
            percent: None,
            assign: None,
            guardrails: None,
            reason: None,
            activated_by,
        }
    }
}

/// Appends a registry change and announces it. The notification is delivered at commit, so
/// no replica reads the registry before the row is there.
async fn append_activation(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    change: &Change<'_>,
) -> Result<(), RegistryError> {
    let as_text = |value: &serde_json::Value| value.to_string();
    let guardrails = change.guardrails.map(serde_json::to_value).transpose();
    let guardrails = guardrails.map_err(|error| RegistryError::Corrupt(error.to_string()))?;
    sqlx::query(
        "INSERT INTO guest_activations (version, action, percent, assign, guardrails, reason, activated_by)
         VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)",
    )
    .bind(change.version)
    .bind(change.action.as_str())
    .bind(change.percent)
    .bind(change.assign.map(Assign::as_str))
    .bind(guardrails.as_ref().map(as_text))
    .bind(change.reason.map(as_text))
    .bind(change.activated_by)
    .execute(&mut **transaction)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(change.version)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// One uploaded version, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub size_bytes: i64,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
    pub note: Option<String>,
    /// The most fuel one invariant case used at upload; `null` for a version adopted from a
    /// replica's guest file.
    pub max_vector_fuel: Option<i64>,
    /// The fuel budget and the memory cap each call of it runs under on this replica.
    #[sqlx(skip)]
    pub fuel_budget: u64,
    #[sqlx(skip)]
    pub memory_limit_bytes: u64,
    /// The `transferd:transfer` package version it implements ("0.2.0", "0.1.0").
    #[sqlx(skip)]
    pub wit_package: Option<String>,
}

/// How a canary's share of requests is drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Assign {
    /// By transaction id: each transfer is drawn on its own.
    #[default]
    Transaction,
    /// By sender account: an account sees one version for as long as the canary runs.
    Sender,
}

impl Assign {
    pub fn as_str(self) -> &'static str {
        match self {
            Assign::Transaction => "transaction",
            Assign::Sender => "sender",
        }
    }

    pub fn parse(text: &str) -> Option<Assign> {
        [Assign::Transaction, Assign::Sender]
            .into_iter()
            .find(|assign| assign.as_str() == text)
    }
}

/// How a candidate version takes part in serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum CandidateMode {
    /// Serves this share of requests, drawn as `assign` says, instead of the active version.
    Canary { percent: u8, assign: Assign },
    /// Runs on every request beside the active version, publishing nothing; its decisions
    /// are compared with the active version's.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// The row that started it: a new canary of the same version is judged afresh.
    pub activation_id: i64,
    pub version: String,
    #[serde(flatten)]
    pub mode: CandidateMode,
    /// `None`: started without guardrails.
    pub guardrails: Option<Guardrails>,
}

/// One activation.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Activation {
    pub activation_id: i64,
    pub version: String,
    #[sqlx(try_from = "String")]
    pub action: RegistryAction,
    pub percent: Option<i16>,
    /// A canary's draw: `transaction` or `sender`.
    pub assign: Option<String>,
    /// A canary's or shadow's limits.
    #[sqlx(try_from = "Option<String>")]
    pub guardrails: JsonText,
    /// Why a replica ended the candidate: the guardrail it crossed.
    #[sqlx(try_from = "Option<String>")]
    pub reason: JsonText,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
}

/// A JSONB column read as text (`::text`), shown as the JSON it holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(transparent)]
pub struct JsonText(pub Option<serde_json::Value>);

impl TryFrom<Option<String>> for JsonText {
    type Error = serde_json::Error;

    fn try_from(text: Option<String>) -> Result<Self, Self::Error> {
        text.map(|text| serde_json::from_str(&text))
            .transpose()
            .map(JsonText)
    }
}

/// The latest registry row, read to see whether it names a candidate.
#[derive(sqlx::FromRow)]
struct CandidateRow {
    activation_id: i64,
    version: String,
    action: String,
    percent: Option<i16>,
    assign: Option<String>,
    guardrails: Option<String>,
}

impl CandidateRow {
    /// The candidate the row starts, if it starts one; an error when its guardrails cannot be
    /// read (better no candidate than one judged by nothing).
    fn candidate(self) -> Result<Option<Candidate>, RegistryError> {
        let mode = match (RegistryAction::try_from(self.action), self.percent) {
            (Ok(RegistryAction::Canary), Some(percent)) => CandidateMode::Canary {
                percent: u8::try_from(percent).unwrap_or(0),
                assign: self
                    .assign
                    .as_deref()
                    .and_then(Assign::parse)
                    .unwrap_or_default(),
            },
            (Ok(RegistryAction::Shadow), _) => CandidateMode::Shadow,
            _ => return Ok(None),
        };
        let guardrails = self
            .guardrails
            .map(|text| serde_json::from_str::<Guardrails>(&text))
            .transpose()
            .map_err(|error| {
                RegistryError::Corrupt(format!("a candidate's guardrails: {error}"))
            })?;
        Ok(Some(Candidate {
            activation_id: self.activation_id,
            version: self.version,
            mode,
            guardrails,
        }))
    }
}

#[derive(Clone)]
pub struct Registry {
    pub(super) pool: PgPool,
    /// Each version's WIT package, read from its bytes once: a version names its bytes.
    packages: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl Registry {
    pub fn new(pool: PgPool) -> Registry {
        Registry {
            pool,
            packages: Arc::default(),
        }
    }

    /// Stores a checked version with the most fuel one of its invariant cases used.
    pub async fn store(
        &self,
        version: &str,
        bytes: &[u8],
        (uploaded_by, note): (&str, Option<&str>),
        max_vector_fuel: u64,
    ) -> Result<(), RegistryError> {
        let uploaded = (uploaded_by, note);
        insert_version(&self.pool, version, bytes, uploaded, Some(max_vector_fuel)).await
    }

    /// Records the guest a replica started with (from its file), so an operator can always
    /// roll back to it: its bytes join the versions if they are new, and it becomes the
    /// active version if none was ever activated. Returns whether it became active. Replicas
    /// starting together take turns (an advisory lock), so one start-up activation is recorded.
    pub async fn adopt_startup(
        &self,
        version: &str,
        bytes: &[u8],
        file_name: &str,
    ) -> Result<bool, RegistryError> {
        let note: String = format!("the guest file {file_name}")
            .chars()
            .take(200)
            .collect();
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADOPT_LOCK)
            .execute(&mut *transaction)
            .await?;
        let uploaded = (STARTUP, Some(note.as_str()));
        insert_version(&mut *transaction, version, bytes, uploaded, None).await?;
        let active: Option<String> = sqlx::query_scalar(
            "SELECT version FROM guest_activations WHERE action IN ('activate', 'rollback') LIMIT 1",
        )
        .fetch_optional(&mut *transaction)
        .await?;
        if active.is_none() {
            let change = Change::plain(version, RegistryAction::Activate, STARTUP);
            append_activation(&mut transaction, &change).await?;
        }
        transaction.commit().await?;
        Ok(active.is_none())
    }

    /// Makes `version` the active one (which ends any candidate) and tells every replica.
    pub async fn activate(&self, version: &str, activated_by: &str) -> Result<(), RegistryError> {
        let change = Change::plain(version, RegistryAction::Activate, activated_by);
        self.record(&change).await
    }

    /// Serves `version` to a share of requests (canary) or beside the active one (shadow),
    /// judged by `guardrails` on each replica, until the next activation or
    /// [`Registry::end_candidate`].
    pub async fn set_candidate(
        &self,
        version: &str,
        mode: CandidateMode,
        guardrails: Option<&Guardrails>,
        activated_by: &str,
    ) -> Result<(), RegistryError> {
        let (action, percent, assign) = match mode {
            CandidateMode::Canary { percent, assign } => {
                assert!(percent <= 100, "a share of requests");
                let percent = Some(i16::from(percent));
                (RegistryAction::Canary, percent, Some(assign))
            }
            CandidateMode::Shadow => (RegistryAction::Shadow, None, None),
        };
        self.record(&Change {
            percent,
            assign,
            guardrails,
            ..Change::plain(version, action, activated_by)
        })
        .await
    }

    /// Stops serving the current candidate, if there is one.
    pub async fn end_candidate(&self, activated_by: &str) -> Result<(), RegistryError> {
        let Some(candidate) = self.candidate().await? else {
            return Ok(());
        };
        let action = RegistryAction::EndCandidate;
        self.record(&Change::plain(&candidate.version, action, activated_by))
            .await
    }

    /// Ends the candidate started by row `activation_id` for `reason`, unless it has already
    /// ended (another replica's guardrail, an operator): whether this call ended it. Replicas
    /// crossing a guardrail at once take turns, so one row records it.
    pub async fn end_tripped(
        &self,
        activation_id: i64,
        version: &str,
        reason: &serde_json::Value,
        activated_by: &str,
    ) -> Result<bool, RegistryError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *transaction)
            .await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT max(activation_id) FROM guest_activations")
                .fetch_one(&mut *transaction)
                .await?;
        if latest != Some(activation_id) {
            return Ok(false);
        }
        let change = Change {
            reason: Some(reason),
            ..Change::plain(version, RegistryAction::EndCandidate, activated_by)
        };
        append_activation(&mut transaction, &change).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// The candidate, if the latest registry change set one.
    pub async fn candidate(&self) -> Result<Option<Candidate>, RegistryError> {
        let latest: Option<CandidateRow> = sqlx::query_as(
            "SELECT activation_id, version, action, percent, assign, guardrails::text AS guardrails
             FROM guest_activations ORDER BY activation_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        latest
            .map(CandidateRow::candidate)
            .transpose()
            .map(Option::flatten)
    }

    /// Appends a registry change and announces it to every replica.
    async fn record(&self, change: &Change<'_>) -> Result<(), RegistryError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *transaction)
            .await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT version FROM guest_versions WHERE version = $1")
                .bind(change.version)
                .fetch_optional(&mut *transaction)
                .await?;
        if known.is_none() {
            return Err(RegistryError::UnknownVersion(change.version.to_string()));
        }
        append_activation(&mut transaction, change).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Activates the version that was active before the current one.
    pub async fn rollback(&self, activated_by: &str) -> Result<String, RegistryError> {
        let history = self.history(1_000).await?;
        let mut versions = history
            .iter()
            .filter(|activation| activation.action.makes_active())
            .map(|activation| activation.version.as_str());
        let current = versions.next().ok_or(RegistryError::NothingToRollBack)?;
        let previous = versions
            .find(|version| *version != current)
            .ok_or(RegistryError::NothingToRollBack)?
            .to_string();
        let change = Change::plain(&previous, RegistryAction::Rollback, activated_by);
        self.record(&change).await?;
        Ok(previous)
    }

    /// The version named by the latest activation or rollback (canary and shadow rows name
    /// candidates, not the active version).
    pub async fn active(&self) -> Result<Option<String>, RegistryError> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM guest_activations WHERE action IN ('activate', 'rollback')
             ORDER BY activation_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn bytes(&self, version: &str) -> Result<Vec<u8>, RegistryError> {
        sqlx::query_scalar("SELECT bytes FROM guest_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| RegistryError::UnknownVersion(version.to_string()))
    }

    /// The newest activations first, at most `limit`.
    pub async fn history(&self, limit: i64) -> Result<Vec<Activation>, RegistryError> {
        Ok(sqlx::query_as(
            "SELECT activation_id, version, action, percent, assign, guardrails::text AS guardrails,
                    reason::text AS reason, activated_by, activated_at
             FROM guest_activations ORDER BY activation_id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn versions(&self) -> Result<Vec<VersionInfo>, RegistryError> {
        let mut versions: Vec<VersionInfo> = sqlx::query_as(
            "SELECT version, size_bytes, uploaded_by, uploaded_at, note, max_vector_fuel
             FROM guest_versions ORDER BY uploaded_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        for info in &mut versions {
            info.wit_package = self.wit_package(&info.version).await?;
        }
        Ok(versions)
    }

    /// The WIT package `version` implements, read from its bytes the first time it is asked.
    async fn wit_package(&self, version: &str) -> Result<Option<String>, RegistryError> {
        let known = |packages: &Mutex<HashMap<String, Option<String>>>| {
            let packages = packages.lock().unwrap_or_else(PoisonError::into_inner);
            packages.get(version).cloned()
        };
        if let Some(package) = known(&self.packages) {
            return Ok(package);
        }
        let package = crate::bindings::wit_package(&self.bytes(version).await?);
        self.packages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(version.to_string(), package.clone());
        Ok(package)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_as_written_and_serialize_the_same() {
        for action in [
            RegistryAction::Activate,
            RegistryAction::Rollback,
            RegistryAction::Canary,
            RegistryAction::Shadow,
            RegistryAction::EndCandidate,
        ] {
            assert_eq!(
                RegistryAction::try_from(action.as_str().to_string()),
                Ok(action)
            );
            assert_eq!(
                serde_json::to_value(action).expect("serializes"),
                serde_json::json!(action.as_str())
            );
        }
        assert!(RegistryAction::try_from("promote".to_string()).is_err());
        assert!(RegistryAction::Rollback.makes_active() && !RegistryAction::Canary.makes_active());
    }
}
