//! `GET /readyz`: should this replica take traffic? PostgreSQL (with the migrations applied),
//! Redis and the broker, from the last probe run (`health::Probes`: one run at a time, its
//! answers shared by every caller for `health::PROBE_REUSE`), and the serving guest; 503 names
//! what is not ready. A replica whose Redis or broker is down is still ready, `degraded`: it
//! serves reads and refuses transfers with 503, as every replica sharing them would
//! (`health::Dependencies::serviceable` says which dependency gates). `/healthz` stays
//! liveness only.

use http::StatusCode;

use crate::health::Probe;
use crate::http::App;
use crate::http::api::{Check, Readiness, ReadinessChecks, ReadyStatus};
use crate::http::error::{Reply, json_response};
use crate::http::routes::ServiceRoute;

/// 200 when the replica can answer safely (`status` `ok`, or `degraded` with Redis or the
/// broker down), else 503; each check says what it found.
#[utoipa::path(
    get, path = ServiceRoute::Ready.path(), operation_id = "readiness", tag = "service", summary = "Readiness: PostgreSQL (migrated), Redis, the broker, a guest",
    description = "Each dependency is asked at once, within 500 ms. PostgreSQL gates readiness; with Redis or the broker down the replica stays ready, `degraded` (reads served, transfers refused with 503). `/healthz` is liveness only.",
    responses(
        (status = 200, description = "Ready, perhaps degraded", body = Readiness),
        (status = 503, description = "Not ready: the failing checks say why", body = Readiness),
    ),
)]
pub async fn readiness(app: &App) -> Reply {
    let dependencies = app.probes.dependencies().await;
    let checks = ReadinessChecks {
        postgres: check(&dependencies.postgres),
        redis: check(&dependencies.redis),
        broker: check(&dependencies.broker),
        guest: Check {
            ready: true,
            detail: format!("serving {}", app.serving().active.version()),
        },
        quarantine: check(&dependencies.quarantine),
    };
    let ready = dependencies.serviceable() && checks.guest.ready;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = ReadyStatus::of(ready, dependencies.degraded());
    json_response(
        code,
        &Readiness {
            ready,
            status,
            checks,
        },
    )
}

pub fn check(probe: &Probe) -> Check {
    Check {
        ready: probe.ready,
        detail: probe.detail.clone(),
    }
}
