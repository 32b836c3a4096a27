//! transferd's transfer logic.
//!
//! Built for `wasm32-wasip2` this crate is the component that implements the
//! `transferd:transfer/transfer-logic` world (see `component`). Built natively it is a plain
//! library: the host reuses its money formatting and runs the same logic in benchmarks, and the
//! unit tests run here without any wasm runtime.
//!
//! Nothing here does I/O. Every fact the logic needs arrives as an argument or through
//! [`logic::Imports`], so a decision depends only on its inputs.

mod glue;
pub mod logic;
pub mod message;
pub mod money;
pub mod rules;
pub mod spending;
#[cfg(not(target_arch = "wasm32"))]
pub mod vectors;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
pub mod component;
