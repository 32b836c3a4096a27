//! The end-to-end tests: the transferd binary against real PostgreSQL, Redis and Tansu.
//!
//! One test binary, a module per subject: every test binary links rdkafka, sqlx, reqwest and
//! tokio by itself, so a binary per subject made a cold run compile and link them nineteen
//! times. Select a subject's tests by its module path: `cargo test --test e2e -- guard::`.
//! The fault test stops and starts the shared services, so it stays a binary of its own, which
//! `cargo test` runs alone (`e2e/faults.rs`).

mod auth;
mod batches;
mod broker;
mod crash_points;
mod dependencies;
mod edge;
mod guard;
mod guardrails;
mod guest_reuse;
mod history;
mod holds_trust;
mod hot_swap;
mod idempotency;
mod journal_chain;
mod limits;
mod metrics;
mod outcomes;
mod provenance;
mod quarantine;
mod reconcile;
mod request_fields;
mod settlement;
mod shutdown;
mod soak;
mod status_page;
mod tls;
mod trace_context;
mod transfers;
mod two_phase;
mod worker_process;
