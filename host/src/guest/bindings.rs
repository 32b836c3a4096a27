//! Host-side bindings for the `transfer-logic` world, generated from `wit/`.
//!
//! Imports are async (they wait on Redis, PostgreSQL and Kafka) and trappable: a host error
//! that is the guest's fault (publishing to a topic it may not use) traps the guest instead of
//! being reported to it as an ordinary answer.

wasmtime::component::bindgen!({
    world: "transfer-logic",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});
