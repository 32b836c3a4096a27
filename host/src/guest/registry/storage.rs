//! Versions and activations in PostgreSQL: `guest_versions` holds each version's bytes,
//! `guest_activations` is the append-only history whose latest rows say what is active and
//! what is the candidate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{CHANNEL, RegistryError, STARTUP};

/// Serialises start-up adoption across replicas (`pg_advisory_xact_lock` key).
const ADOPT_LOCK: i64 = 0x7472_616e_7366_6572; // "transfer"

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

/// Appends a registry change and announces it. The notification is delivered at commit, so
/// no replica reads the registry before the row is there.
async fn append_activation(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    version: &str,
    action: RegistryAction,
    percent: Option<i16>,
    activated_by: &str,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO guest_activations (version, action, percent, activated_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(version)
    .bind(action.as_str())
    .bind(percent)
    .bind(activated_by)
    .execute(&mut **transaction)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(version)
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

/// How a candidate version takes part in serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum CandidateMode {
    /// Serves this share of requests (by transaction id) instead of the active version.
    Canary { percent: u8 },
    /// Runs on every request beside the active version, publishing nothing; its decisions
    /// are compared with the active version's.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    pub version: String,
    #[serde(flatten)]
    pub mode: CandidateMode,
}

/// One activation.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Activation {
    pub activation_id: i64,
    pub version: String,
    #[sqlx(try_from = "String")]
    pub action: RegistryAction,
    pub percent: Option<i16>,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
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
            let action = RegistryAction::Activate;
            append_activation(&mut transaction, version, action, None, STARTUP).await?;
        }
        transaction.commit().await?;
        Ok(active.is_none())
    }

    /// Makes `version` the active one (which ends any candidate) and tells every replica.
    pub async fn activate(&self, version: &str, activated_by: &str) -> Result<(), RegistryError> {
        self.record(version, RegistryAction::Activate, None, activated_by)
            .await
    }

    /// Serves `version` to a share of requests (canary) or beside the active one (shadow),
    /// until the next activation or [`Registry::end_candidate`].
    pub async fn set_candidate(
        &self,
        version: &str,
        mode: CandidateMode,
        activated_by: &str,
    ) -> Result<(), RegistryError> {
        match mode {
            CandidateMode::Canary { percent } => {
                assert!(percent <= 100, "a share of requests");
                let percent = Some(i16::from(percent));
                self.record(version, RegistryAction::Canary, percent, activated_by)
                    .await
            }
            CandidateMode::Shadow => {
                self.record(version, RegistryAction::Shadow, None, activated_by)
                    .await
            }
        }
    }

    /// Stops serving the current candidate, if there is one.
    pub async fn end_candidate(&self, activated_by: &str) -> Result<(), RegistryError> {
        let Some(candidate) = self.candidate().await? else {
            return Ok(());
        };
        let action = RegistryAction::EndCandidate;
        self.record(&candidate.version, action, None, activated_by)
            .await
    }

    /// The candidate, if the latest registry change set one.
    pub async fn candidate(&self) -> Result<Option<Candidate>, RegistryError> {
        let latest: Option<(String, String, Option<i16>)> = sqlx::query_as(
            "SELECT version, action, percent FROM guest_activations ORDER BY activation_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(latest.and_then(|(version, action, percent)| {
            let mode = match (RegistryAction::try_from(action).ok()?, percent) {
                (RegistryAction::Canary, Some(percent)) => CandidateMode::Canary {
                    percent: u8::try_from(percent).ok()?,
                },
                (RegistryAction::Shadow, _) => CandidateMode::Shadow,
                _ => return None,
            };
            Some(Candidate { version, mode })
        }))
    }

    /// Appends a registry change and announces it to every replica.
    async fn record(
        &self,
        version: &str,
        action: RegistryAction,
        percent: Option<i16>,
        activated_by: &str,
    ) -> Result<(), RegistryError> {
        let mut transaction = self.pool.begin().await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT version FROM guest_versions WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *transaction)
                .await?;
        if known.is_none() {
            return Err(RegistryError::UnknownVersion(version.to_string()));
        }
        append_activation(&mut transaction, version, action, percent, activated_by).await?;
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
        self.record(&previous, RegistryAction::Rollback, None, activated_by)
            .await?;
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
            "SELECT activation_id, version, action, percent, activated_by, activated_at
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
