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

use transferd::transfer::publish;

/// The WIT message as the guest crate's plain type, which the guard and the vectors read.
impl From<publish::Outgoing> for transferd_guest::logic::Outgoing {
    fn from(message: publish::Outgoing) -> Self {
        transferd_guest::logic::Outgoing {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            hold: message.hold.map(|hold| transferd_guest::logic::Hold {
                account_id: hold.account_id,
                currency: hold.currency,
                amount_minor: hold.amount_minor,
            }),
        }
    }
}
