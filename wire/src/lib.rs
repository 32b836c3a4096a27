//! Reading a JSON request body into typed fields, as pure functions over bytes.
//!
//! Its own crate, apart from the host's HTTP code, so the fuzz targets (fuzz/) and property
//! tests can drive exactly what the service runs without building hyper, tokio or wasmtime.
//! The host's `http::body` adds the async part: content type, size limit and timeout.

mod batch;
mod fields;
mod problem;
mod transfer;

pub use batch::BatchFields;
pub use fields::Fields;
pub use problem::{BodyError, Invalid};
pub use transfer::TransferFields;
