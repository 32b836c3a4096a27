//! The adapters to the service's dependencies, one module each. They speak in the domain's
//! terms (accounts, holds, messages) and hide the client libraries from the rest of the host.

pub mod batch;
pub mod idempotency;
pub mod kafka;
pub mod log_position;
pub mod postgres;
pub mod redis;
