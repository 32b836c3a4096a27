//! The wasm runtime: the engine, the linkers and the pre-instantiated guest (runtime),
//! replayed imports (replay), the version registry and hot swap (registry), shadow runs of a
//! candidate (shadow), the limits that end a bad canary or shadow (guardrails), the host's
//! answer to a call from what it published (verdict), each decision's recorded provenance
//! (provenance) and a candidate run over those (backtest). The bindings generated from `wit/`
//! are `crate::bindings`, below both this and the imports (`capabilities`) that implement them.

pub mod backtest;
pub mod determinism;
pub mod guardrails;
pub mod provenance;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod shadow;
pub mod verdict;
pub mod watch;
