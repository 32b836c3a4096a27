//! The end-to-end harness: a private database, Redis key prefix and topic prefix per test,
//! the real `transferd` binary started as a child process, a Kafka consumer to read back what
//! it produced, and a TCP proxy that can cut a dependency off and bring it back.
//!
//! Every test makes its own names, so tests run in parallel and never depend on leftovers.
//!
//! One job per module: `artifacts` (the files under test), `namespace` (a test's private
//! names), `host` (the transferd process), `client` (HTTP to it), `process` (child-process
//! plumbing), `consumers` (reading the log), `broker` (private brokers and topics), `ledger` and
//! `redis_state` (what a test's stores hold), `random` (reproducible load), `tls_services`
//! (a private PostgreSQL and Redis that speak only TLS).

pub mod auth;
pub mod load;
pub mod proxy;
pub mod services;
pub mod stale;
pub mod tls_services;

mod artifacts;
mod broker;
mod client;
mod consumers;
mod host;
mod ledger;
mod namespace;
mod process;
mod random;
mod redis_state;

pub use artifacts::{
    clock_guest_file, crash_binary, guest_file, hostile_guest_file, panicking_guest_file,
    strict_guest_file, transferd_binary, v0_1_guest_file, velocity_guest_file,
};
pub use broker::{
    Broker, BrokerStorage, TansuProcess, delete_topics, produce_raw, spawn_tansu, tansu_binary,
};
pub use client::Reply;
pub use consumers::{Consumed, consume, consume_events_covering, consume_transfer_events};
pub use host::{Host, HostOptions, WorkerProcess, run_command, run_to_end};
pub use ledger::LedgerCheck;
pub use namespace::Namespace;
pub use process::{child_pids, killed_by_sigkill, log_tail, process_figures};
pub use random::Random;
pub use redis_state::Held;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
