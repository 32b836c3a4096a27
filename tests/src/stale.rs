//! Removes the databases earlier test runs left behind.
//!
//! Every test makes a database of its own and keeps it when it ends, so that a failure can be
//! looked at, and a machine that runs the suite again and again would fill its disk with them.
//! Each database's name carries its creation time (`transferd_test_<id>_at<unix seconds>`: in
//! the name, so no sweep can see a database before its time is known); the first namespace a
//! test process makes drops every test database older than `STALE_AFTER` that nobody is
//! connected to. A test database whose name has no time comes from a run before the times and
//! is treated as stale.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

/// A test database younger than this is kept: a failed run's databases stay to be looked at,
/// and a run still going on beside this one keeps its own.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// Every test database's name begins with this.
pub const PREFIX: &str = "transferd_test_";

/// At most this many databases are dropped by one sweep: the sweep stays short.
const MAX_DROPPED: usize = 500;

static SWEPT: OnceCell<()> = OnceCell::const_new();

pub fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The name of a test database for namespace `id`, made at `created_unix_s`.
pub fn database_name(id: &str, created_unix_s: u64) -> String {
    format!("{PREFIX}{id}_at{created_unix_s}")
}

/// The creation time a test database's name carries, if it has one.
fn created_unix_s(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .rsplit_once("_at")?
        .1
        .parse()
        .ok()
}

/// Whether a test database made at `created_unix_s` (None: its name has no time) is stale at `now`.
fn is_stale(created_unix_s: Option<u64>, now_unix_s: u64, stale_after: Duration) -> bool {
    match created_unix_s {
        None => true,
        Some(created) => now_unix_s.saturating_sub(created) > stale_after.as_secs(),
    }
}

/// Drops the stale test databases nobody is connected to; returns the names it dropped. A
/// database that cannot be dropped (someone connected meanwhile) is left for a later sweep.
pub async fn sweep(
    admin: &sqlx::PgPool,
    now_unix_s: u64,
    stale_after: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    let candidates: Vec<String> = sqlx::query_scalar(
        "SELECT d.datname
         FROM pg_database d
         WHERE starts_with(d.datname, $1)
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)
         ORDER BY d.datname",
    )
    .bind(PREFIX)
    .fetch_all(admin)
    .await?;
    let mut dropped = Vec::new();
    for name in candidates {
        if dropped.len() >= MAX_DROPPED {
            break;
        }
        let created = created_unix_s(&name);
        // Names come from pg_database and begin with PREFIX; quoting keeps them one identifier.
        if is_stale(created, now_unix_s, stale_after)
            && !name.contains('"')
            && sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                .execute(admin)
                .await
                .is_ok()
        {
            dropped.push(name);
        }
    }
    Ok(dropped)
}

/// Sweeps once per test process, before its first namespace; a failed sweep fails no test.
pub async fn sweep_once(admin: &sqlx::PgPool) {
    SWEPT
        .get_or_init(|| async {
            if let Err(error) = sweep(admin, now_unix_s(), STALE_AFTER).await {
                eprintln!("removing earlier runs' test databases: {error}");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::POSTGRES_ADMIN_URL;

    #[test]
    fn a_name_gives_back_its_creation_time_and_an_older_name_none() {
        let name = database_name("0123456789ab", 1_796_000_000);
        assert_eq!(name, "transferd_test_0123456789ab_at1796000000");
        assert!(name.len() <= 63, "PostgreSQL's identifier limit");
        assert_eq!(created_unix_s(&name), Some(1_796_000_000));
        assert_eq!(created_unix_s("transferd_test_0123456789ab"), None);
        assert_eq!(created_unix_s("transferd_test_0123456789ab_atsoon"), None);
        assert_eq!(created_unix_s("transferd"), None);
    }

    #[test]
    fn only_databases_older_than_the_limit_or_without_a_time_are_stale() {
        let hour = Duration::from_secs(3600);
        assert!(!is_stale(Some(1_000), 1_000 + 3600, hour));
        assert!(is_stale(Some(1_000), 1_000 + 3601, hour));
        assert!(is_stale(None, 1_000, hour));
        // A clock that went back keeps the database.
        assert!(!is_stale(Some(5_000), 1_000, hour));
    }

    async fn exists(admin: &sqlx::PgPool, name: &str) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(admin)
            .await
            .expect("pg_database")
            == 1
    }

    /// Real PostgreSQL: an old database and one whose name has no time go; a young one, and an
    /// old one somebody is connected to, stay.
    #[tokio::test]
    async fn a_sweep_drops_old_idle_test_databases_and_keeps_the_rest() {
        let admin = sqlx::PgPool::connect(POSTGRES_ADMIN_URL)
            .await
            .expect("PostgreSQL");
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let now = now_unix_s();
        let day = 24 * 60 * 60;
        let old = database_name(&format!("old{id}"), now - day);
        let untimed = format!("{PREFIX}untimed{id}");
        let young = database_name(&format!("young{id}"), now - 60);
        let busy = database_name(&format!("busy{id}"), now - day);
        for database in [&old, &untimed, &young, &busy] {
            sqlx::query(&format!("CREATE DATABASE \"{database}\""))
                .execute(&admin)
                .await
                .expect("create");
        }
        let connected =
            sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{busy}"))
                .await
                .expect("connect to the busy database");
        sqlx::query("SELECT 1")
            .execute(&connected)
            .await
            .expect("hold a connection");

        let dropped = sweep(&admin, now, STALE_AFTER).await.expect("sweep");

        assert!(dropped.contains(&old), "{dropped:?}");
        assert!(dropped.contains(&untimed), "{dropped:?}");
        assert!(!exists(&admin, &old).await);
        assert!(!exists(&admin, &untimed).await);
        assert!(exists(&admin, &young).await, "a young database stays");
        assert!(exists(&admin, &busy).await, "a database in use stays");

        connected.close().await;
        for database in [&young, &busy] {
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
            ))
            .execute(&admin)
            .await
            .expect("clean up");
        }
    }
}
