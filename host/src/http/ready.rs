//! `GET /readyz`: should this replica take traffic? PostgreSQL (with the migrations applied),
//! Redis and the broker are asked at once, each within `health::PROBE_TIMEOUT`; 503 names what is not
//! ready. `/healthz` stays liveness only: a replica whose Redis is down is alive (it serves
//! reads, and refuses transfers with 503) but a load balancer may prefer another.

use http::StatusCode;

use crate::health::{self, Probe};
use crate::http::App;
use crate::http::api::{Check, Readiness, ReadinessChecks};
use crate::http::error::{Reply, json_response};

pub async fn readiness(app: &App) -> Reply {
    let dependencies = health::probe_dependencies(&app.capabilities).await;
    let guest = Check {
        ready: true,
        detail: format!("serving {}", app.serving().active.version()),
    };
    let checks = ReadinessChecks {
        postgres: check(dependencies.postgres),
        redis: check(dependencies.redis),
        broker: check(dependencies.broker),
        guest,
    };
    let ready = [
        &checks.postgres,
        &checks.redis,
        &checks.broker,
        &checks.guest,
    ]
    .iter()
    .all(|check| check.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &Readiness { ready, checks })
}

fn check(probe: Probe) -> Check {
    Check {
        ready: probe.ready,
        detail: probe.detail,
    }
}
