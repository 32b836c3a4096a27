//! `GET /readyz`: should this replica take traffic? PostgreSQL (with the migrations applied),
//! Redis and the broker are asked at once, each within [`PROBE_TIMEOUT`]; 503 names what is not
//! ready. `/healthz` stays liveness only: a replica whose Redis is down is alive (it even
//! serves, from PostgreSQL) but a load balancer may prefer another.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;

use crate::http::App;
use crate::http::api::{Check, Readiness, ReadinessChecks};
use crate::http::error::{Reply, json_response};

/// Longest wait for one dependency's answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn readiness(app: &App) -> Reply {
    let capabilities = &app.capabilities;
    let (postgres, redis, broker) = tokio::join!(
        probe(async {
            match capabilities.ledger.unapplied_migrations().await {
                Ok(0) => Ok("migrations applied".to_string()),
                Ok(missing) => Err(format!("{missing} migrations not applied")),
                Err(error) => Err(error.to_string()),
            }
        }),
        probe(async {
            capabilities
                .cache
                .ping()
                .await
                .map(|()| "answers".to_string())
                .map_err(|error| error.to_string())
        }),
        probe(async {
            capabilities
                .log
                .reachable(PROBE_TIMEOUT)
                .await
                .map(|()| "answers, topic present".to_string())
                .map_err(|error| error.to_string())
        }),
    );
    let guest = Check {
        ready: true,
        detail: format!("serving {}", app.serving().active.version()),
    };
    let checks = ReadinessChecks {
        postgres,
        redis,
        broker,
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

/// Runs one probe within [`PROBE_TIMEOUT`].
async fn probe(asked: impl Future<Output = Result<String, String>>) -> Check {
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(Ok(detail)) => Check {
            ready: true,
            detail,
        },
        Ok(Err(reason)) => Check {
            ready: false,
            detail: reason,
        },
        Err(_) => Check {
            ready: false,
            detail: format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()),
        },
    }
}
