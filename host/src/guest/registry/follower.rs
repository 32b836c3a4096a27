//! Keeps this replica serving the registry's active version and candidate: listens for
//! activations and re-reads the registry every few seconds in case one was missed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{
    CHANNEL, Registry, RegistryError, SAFETY_NET_INTERVAL, ServedCandidate, Serving, ServingGuest,
};
use crate::guest::runtime::{Guest, GuestEngine};

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
        // The same row: keep what this replica has seen of it (and whether it tripped).
        Some(started) => match &current.candidate {
            Some(held) if held.started.activation_id == started.activation_id => {
                Some(Arc::clone(held))
            }
            _ => load(registry, engine, &current, &started.version)
                .await
                .map(|guest| Arc::new(ServedCandidate::new(guest, started))),
        },
    };
    let unchanged = Arc::ptr_eq(&active, &current.active)
        && match (&candidate, &current.candidate) {
            (None, None) => true,
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            _ => false,
        };
    if unchanged {
        return;
    }
    tracing::info!(
        active = active.version(),
        candidate = candidate.as_ref().map(|candidate| candidate.guest.version()),
        mode = ?candidate.as_ref().map(|candidate| candidate.started.mode),
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
    let held = std::iter::once(&current.active)
        .chain(current.candidate.as_ref().map(|candidate| &candidate.guest));
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
