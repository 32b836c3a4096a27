//! The standard transfer logic, except that it tells an upload check from live traffic the way
//! a guest given real clocks could: it refuses (`forbidden`) every request whose wall clock is
//! not the request's `received_at_ms`. Under the host's deterministic WASI it decides like
//! the standard guest, live and in the invariant cases alike.
//!
//! - `clock:random`: refuses with `"random <n>"`, `<n>` a number drawn from the guest's WASI
//!   random sources (std's hash-map keys), so a test can compare two runs;
//! - `clock:burn`: loops without end, so the call runs out of its fuel budget;
//! - anything else: the standard logic.
#![cfg(target_arch = "wasm32")]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use transferd_guest::component::{Guest, handle, types};
use transferd_guest::rules::STANDARD;

struct Clock;

impl Guest for Clock {
    fn initiate_transfer(
        ctx: types::RequestContext,
        request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis())
            .ok();
        if now_ms != Some(u128::from(ctx.received_at_ms)) {
            return Err(types::Rejection::Forbidden(format!(
                "the wall clock reads {now_ms:?}, not the request's {}",
                ctx.received_at_ms
            )));
        }
        match request.description.as_deref() {
            Some("clock:random") => {
                let drawn = RandomState::new().hash_one(0_u8);
                Err(types::Rejection::Forbidden(format!("random {drawn}")))
            }
            Some("clock:burn") => {
                let mut count: u64 = 0;
                loop {
                    count = std::hint::black_box(count.wrapping_add(1));
                }
            }
            _ => handle(&STANDARD, ctx, request),
        }
    }
}

transferd_guest::component::export_transfer_logic!(Clock with_types_in transferd_guest::component);
