//! The wasm runtime: the engine, the linker and the pre-instantiated guest (runtime), and the
//! bindings generated from `wit/` (bindings).

pub mod bindings;
pub mod registry;
pub mod replay;
pub mod runtime;
