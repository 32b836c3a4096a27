//! The transferd host as a library: the binary (`main.rs`) is a thin command line over it,
//! and benchmarks reach the same code.

pub mod admin_client;
pub mod auth;
pub mod bindings;
pub mod capabilities;
pub mod config;
pub mod crash;
pub mod guest;
pub mod health;
pub mod http;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod metrics_relay;
pub mod otel;
pub mod server;
pub mod settlement;
pub mod shutdown;
pub mod stores;
pub mod trace;
