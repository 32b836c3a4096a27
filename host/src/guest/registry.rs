//! The guest registry: versions in PostgreSQL, the upload check, and the follower that keeps
//! this replica serving the active version.
//!
//! Activation is a row plus `NOTIFY transferd_guest`; every replica listens, and also checks
//! every few seconds in case a notification was missed (a dropped connection). A replica
//! compiles the new version off the request path, then swaps it in with one pointer store:
//! requests already running keep the version they started with.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use transferd_guest::vectors::{Vector, check_invariant};

use crate::guest::runtime::{Guest, GuestEngine, LoadError};

/// The channel activations are announced on.
pub const CHANNEL: &str = "transferd_guest";

/// How often a replica re-reads the active version without a notification.
pub const SAFETY_NET_INTERVAL: Duration = Duration::from_secs(5);

/// Who recorded a version a replica started with (`uploaded_by`, `activated_by`).
pub const STARTUP: &str = "replica start-up";

/// Serialises start-up adoption across replicas (`pg_advisory_xact_lock` key).
const ADOPT_LOCK: i64 = 0x7472_616e_7366_6572; // "transfer"

/// Largest component accepted, in bytes.
pub const MAX_GUEST_BYTES: usize = 32 * 1024 * 1024;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/invariant_vectors.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the guest fails invariant case {case}: {reason}")]
    Invariant { case: String, reason: String },
    #[error("no guest version {0}")]
    UnknownVersion(String),
    #[error("there is no earlier active version to roll back to")]
    NothingToRollBack,
    #[error("the registry database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
}

/// The invariant vectors built into this binary.
pub fn invariant_vectors() -> Vec<Vector> {
    embedded::INVARIANT_VECTORS
        .iter()
        .map(|(name, text)| {
            Vector::parse(name, text).expect("embedded vectors are valid JSON vectors")
        })
        .collect()
}

/// Stores a version's bytes; storing the same bytes again changes nothing.
async fn insert_version<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    version: &str,
    bytes: &[u8],
    uploaded_by: &str,
    note: Option<&str>,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO guest_versions (version, bytes, size_bytes, uploaded_by, note)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(bytes)
    .bind(bytes.len() as i64)
    .bind(uploaded_by)
    .bind(note)
    .execute(executor)
    .await?;
    Ok(())
}

/// Appends a registry change and announces it. The notification is delivered at commit, so
/// no replica reads the registry before the row is there.
async fn append_activation(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    version: &str,
    action: &str,
    percent: Option<i16>,
    activated_by: &str,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO guest_activations (version, action, percent, activated_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(version)
    .bind(action)
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

/// Compiles `bytes`, checks them against the world and runs every invariant vector.
pub async fn check(
    engine: &Arc<GuestEngine>,
    bytes: &[u8],
) -> Result<(Guest, usize), RegistryError> {
    let guest = engine.load(bytes)?;
    let vectors = invariant_vectors();
    assert!(!vectors.is_empty(), "the binary carries invariant vectors");
    for vector in &vectors {
        let outcome =
            guest
                .run_vector(vector)
                .await
                .map_err(|failure| RegistryError::Invariant {
                    case: vector.name.clone(),
                    reason: failure.to_string(),
                })?;
        check_invariant(vector, &outcome).map_err(|reason| RegistryError::Invariant {
            case: vector.name.clone(),
            reason,
        })?;
    }
    Ok((guest, vectors.len()))
}

/// One uploaded version, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub size_bytes: i64,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
    pub note: Option<String>,
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
    pub action: String,
    pub percent: Option<i16>,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
}

impl Registry {
    pub fn new(pool: PgPool) -> Registry {
        Registry { pool }
    }

    /// Stores a checked version; storing the same bytes again changes nothing.
    pub async fn store(
        &self,
        version: &str,
        bytes: &[u8],
        uploaded_by: &str,
        note: Option<&str>,
    ) -> Result<(), RegistryError> {
        insert_version(&self.pool, version, bytes, uploaded_by, note).await
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
        insert_version(&mut *transaction, version, bytes, STARTUP, Some(&note)).await?;
        let active: Option<String> = sqlx::query_scalar(
            "SELECT version FROM guest_activations WHERE action IN ('activate', 'rollback') LIMIT 1",
        )
        .fetch_optional(&mut *transaction)
        .await?;
        if active.is_none() {
            append_activation(&mut transaction, version, "activate", None, STARTUP).await?;
        }
        transaction.commit().await?;
        Ok(active.is_none())
    }

    /// Makes `version` the active one (which ends any candidate) and tells every replica.
    pub async fn activate(
        &self,
        version: &str,
        action: &str,
        activated_by: &str,
    ) -> Result<(), RegistryError> {
        self.record(version, action, None, activated_by).await
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
                self.record(version, "canary", Some(i16::from(percent)), activated_by)
                    .await
            }
            CandidateMode::Shadow => self.record(version, "shadow", None, activated_by).await,
        }
    }

    /// Stops serving the current candidate, if there is one.
    pub async fn end_candidate(&self, activated_by: &str) -> Result<(), RegistryError> {
        let Some(candidate) = self.candidate().await? else {
            return Ok(());
        };
        self.record(&candidate.version, "end-candidate", None, activated_by)
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
            let mode = match (action.as_str(), percent) {
                ("canary", Some(percent)) => CandidateMode::Canary {
                    percent: u8::try_from(percent).ok()?,
                },
                ("shadow", _) => CandidateMode::Shadow,
                _ => return None,
            };
            Some(Candidate { version, mode })
        }))
    }

    /// Appends a registry change and announces it to every replica.
    async fn record(
        &self,
        version: &str,
        action: &str,
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
            .filter(|activation| activation.action == "activate" || activation.action == "rollback")
            .map(|activation| activation.version.as_str());
        let current = versions.next().ok_or(RegistryError::NothingToRollBack)?;
        let previous = versions
            .find(|version| *version != current)
            .ok_or(RegistryError::NothingToRollBack)?
            .to_string();
        self.activate(&previous, "rollback", activated_by).await?;
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
        Ok(sqlx::query_as(
            "SELECT version, size_bytes, uploaded_by, uploaded_at, note FROM guest_versions ORDER BY uploaded_at DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// What this replica serves: the active version and, maybe, a candidate. Swapped whole,
/// read once per request, so a request sees one consistent pair.
pub struct Serving {
    pub active: Arc<Guest>,
    pub candidate: Option<(Arc<Guest>, CandidateMode)>,
}

impl Serving {
    /// The guest that decides this request, and the one to shadow it with, if any. A canary
    /// takes the requests whose transaction id falls in its share (ids are random in their
    /// low bits, so the share is even and a retried id lands on the same side).
    pub fn pick(&self, transaction_id: &uuid::Uuid) -> (Arc<Guest>, Option<Arc<Guest>>) {
        match &self.candidate {
            Some((candidate, CandidateMode::Canary { percent })) => {
                let bucket = (transaction_id.as_u128() % 100) as u8;
                if bucket < *percent {
                    (Arc::clone(candidate), None)
                } else {
                    (Arc::clone(&self.active), None)
                }
            }
            Some((candidate, CandidateMode::Shadow)) => {
                (Arc::clone(&self.active), Some(Arc::clone(candidate)))
            }
            None => (Arc::clone(&self.active), None),
        }
    }
}

/// The guests this replica serves new requests with.
pub struct ServingGuest {
    current: RwLock<Arc<Serving>>,
}

impl ServingGuest {
    pub fn new(guest: Guest) -> ServingGuest {
        ServingGuest {
            current: RwLock::new(Arc::new(Serving {
                active: Arc::new(guest),
                candidate: None,
            })),
        }
    }

    pub fn get(&self) -> Arc<Serving> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `guest` alone (no candidate): the `--watch` mode of local development.
    pub fn serve_only(&self, guest: Guest) {
        self.replace(Serving {
            active: Arc::new(guest),
            candidate: None,
        });
    }

    fn replace(&self, serving: Serving) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(serving);
    }
}

/// Keeps `serving` on the registry's active version until the process ends.
pub fn follow(registry: Registry, engine: Arc<GuestEngine>, serving: Arc<ServingGuest>) {
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen(&registry, &engine, &serving).await {
                tracing::warn!(%error, "guest follower lost its connection; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(
    registry: &Registry,
    engine: &Arc<GuestEngine>,
    serving: &ServingGuest,
) -> Result<(), RegistryError> {
    let mut listener = PgListener::connect_with(&registry.pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything activated while we were not listening.
    reconcile(registry, engine, serving).await;
    loop {
        match tokio::time::timeout(SAFETY_NET_INTERVAL, listener.recv()).await {
            Ok(notification) => {
                notification?;
            }
            Err(_quiet) => {}
        }
        reconcile(registry, engine, serving).await;
    }
}

/// Loads the active version and the candidate if this replica serves others. A version that
/// fails to load here leaves the current one serving (it passed the same checks at upload).
pub async fn reconcile(registry: &Registry, engine: &Arc<GuestEngine>, serving: &ServingGuest) {
    let wanted = match (registry.active().await, registry.candidate().await) {
        (Ok(active), Ok(candidate)) => (active, candidate),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cannot read the registry");
            return;
        }
    };
    let current = serving.get();
    let active = match wanted.0 {
        None => Arc::clone(&current.active),
        Some(version) => match load(registry, engine, &current, &version).await {
            Some(guest) => guest,
            None => return,
        },
    };
    let candidate = match wanted.1 {
        None => None,
        Some(candidate) => load(registry, engine, &current, &candidate.version)
            .await
            .map(|guest| (guest, candidate.mode)),
    };
    let unchanged = Arc::ptr_eq(&active, &current.active)
        && match (&candidate, &current.candidate) {
            (None, None) => true,
            (Some((new, new_mode)), Some((old, old_mode))) => {
                Arc::ptr_eq(new, old) && new_mode == old_mode
            }
            _ => false,
        };
    if unchanged {
        return;
    }
    tracing::info!(
        active = active.version(),
        candidate = candidate.as_ref().map(|(guest, _)| guest.version()),
        mode = ?candidate.as_ref().map(|(_, mode)| *mode),
        "now serving"
    );
    serving.replace(Serving { active, candidate });
}

/// The guest of `version`: one this replica already has, or compiled from the registry.
async fn load(
    registry: &Registry,
    engine: &Arc<GuestEngine>,
    current: &Serving,
    version: &str,
) -> Option<Arc<Guest>> {
    let held =
        std::iter::once(&current.active).chain(current.candidate.as_ref().map(|(guest, _)| guest));
    if let Some(guest) = held.into_iter().find(|guest| guest.version() == version) {
        return Some(Arc::clone(guest));
    }
    let loaded = match registry.bytes(version).await {
        Ok(bytes) => engine.load(&bytes).map_err(RegistryError::from),
        Err(error) => Err(error),
    };
    match loaded {
        Ok(guest) => Some(Arc::new(guest)),
        Err(error) => {
            tracing::error!(%error, version, "cannot load a guest version; keeping what is served");
            None
        }
    }
}
