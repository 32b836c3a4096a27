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

/// One activation.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Activation {
    pub activation_id: i64,
    pub version: String,
    pub action: String,
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
        sqlx::query(
            "INSERT INTO guest_versions (version, bytes, size_bytes, uploaded_by, note)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .bind(uploaded_by)
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `version` the active one and tells every replica.
    pub async fn activate(
        &self,
        version: &str,
        action: &str,
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
        sqlx::query(
            "INSERT INTO guest_activations (version, action, activated_by) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(action)
        .bind(activated_by)
        .execute(&mut *transaction)
        .await?;
        // Delivered at commit, so no replica reads the registry before the row is there.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(version)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Activates the version that was active before the current one.
    pub async fn rollback(&self, activated_by: &str) -> Result<String, RegistryError> {
        let history = self.history(1_000).await?;
        let mut versions = history.iter().map(|activation| activation.version.as_str());
        let current = versions.next().ok_or(RegistryError::NothingToRollBack)?;
        let previous = versions
            .find(|version| *version != current)
            .ok_or(RegistryError::NothingToRollBack)?
            .to_string();
        self.activate(&previous, "rollback", activated_by).await?;
        Ok(previous)
    }

    pub async fn active(&self) -> Result<Option<String>, RegistryError> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM guest_activations ORDER BY activation_id DESC LIMIT 1",
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
            "SELECT activation_id, version, action, activated_by, activated_at
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

/// The guest this replica serves new requests with; swapped whole, read per request.
pub struct ServingGuest {
    current: RwLock<Arc<Guest>>,
}

impl ServingGuest {
    pub fn new(guest: Guest) -> ServingGuest {
        ServingGuest {
            current: RwLock::new(Arc::new(guest)),
        }
    }

    pub fn get(&self) -> Arc<Guest> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, guest: Guest) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(guest);
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

/// Loads the active version if this replica serves another one. A version that fails to
/// compile here leaves the current one serving (it passed the same checks at upload).
pub async fn reconcile(registry: &Registry, engine: &Arc<GuestEngine>, serving: &ServingGuest) {
    let active = match registry.active().await {
        Ok(Some(active)) => active,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot read the active guest version");
            return;
        }
    };
    if serving.get().version() == active {
        return;
    }
    let loaded = match registry.bytes(&active).await {
        Ok(bytes) => engine.load(&bytes).map_err(RegistryError::from),
        Err(error) => Err(error),
    };
    match loaded {
        Ok(guest) => {
            serving.replace(guest);
            tracing::info!(version = active, "now serving guest version");
        }
        Err(error) => {
            tracing::error!(%error, version = active, "cannot load the active guest; keeping the current one")
        }
    }
}
