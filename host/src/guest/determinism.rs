//! The WASI a guest call sees, made deterministic so a call decides the same way live, in a
//! shadow, in an upload check and in a replay: the wall clock reads the request's
//! `received_at_ms`, the monotonic clock starts at zero and moves one microsecond per read,
//! and every random source is seeded from the transaction id. The random is NOT secure:
//! anyone who knows the transaction id can compute it, so a guest must not make secrets of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::{Infallible, TryRng};
use sha2::{Digest, Sha256};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// How far the monotonic clock moves at each read, in nanoseconds: time passes, by the
/// same amount on every run.
pub const MONOTONIC_STEP_NS: u64 = 1_000;

/// Separates this use of sha256 from any other hash of a transaction id.
const SEED_DOMAIN: &[u8] = b"transferd guest wasi random\0";

/// A call's WASI context: no arguments, environment, files, sockets or inherited stdio, and
/// clocks and random that depend only on the request (`transaction_id`, `received_at_ms`).
pub fn wasi_ctx(transaction_id: &str, received_at_ms: u64) -> WasiCtx {
    let seed = Seed::of(transaction_id);
    WasiCtx::builder()
        .wall_clock(FixedWallClock::at_ms(received_at_ms))
        .monotonic_clock(StepMonotonicClock::default())
        .secure_random(SplitMix64::new(seed.random))
        .insecure_random(SplitMix64::new(seed.insecure_random))
        .insecure_random_seed(seed.insecure_seed)
        .build()
}

/// The three random sources' seeds, from the sha256 of the transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub random: u64,
    pub insecure_random: u64,
    pub insecure_seed: u128,
}

impl Seed {
    pub fn of(transaction_id: &str) -> Seed {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(SEED_DOMAIN)
            .chain_update(transaction_id.as_bytes())
            .finalize()
            .into();
        let [a, b, c, d]: [[u8; 8]; 4] = words_of(digest);
        Seed {
            random: u64::from_le_bytes(a),
            insecure_random: u64::from_le_bytes(b),
            insecure_seed: u128::from(u64::from_le_bytes(c)) << 64
                | u128::from(u64::from_le_bytes(d)),
        }
    }
}

/// A digest as four 8-byte words.
fn words_of(digest: [u8; 32]) -> [[u8; 8]; 4] {
    let mut words = [[0u8; 8]; 4];
    for (word, chunk) in words.iter_mut().zip(digest.chunks_exact(8)) {
        word.copy_from_slice(chunk);
    }
    words
}

/// The wall clock of one call: always the moment the request was received.
pub struct FixedWallClock(Duration);

impl FixedWallClock {
    pub fn at_ms(received_at_ms: u64) -> FixedWallClock {
        FixedWallClock(Duration::from_millis(received_at_ms))
    }
}

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        self.0
    }
}

/// The monotonic clock of one call: zero at the first read, one step later at each next.
#[derive(Default)]
pub struct StepMonotonicClock {
    reads: AtomicU64,
}

impl HostMonotonicClock for StepMonotonicClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NS
    }

    fn now(&self) -> u64 {
        let reads = self.reads.fetch_add(1, Ordering::Relaxed);
        reads.saturating_mul(MONOTONIC_STEP_NS)
    }
}

/// SplitMix64: small, fast, and the same numbers on every platform for one seed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl TryRng for SplitMix64 {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        let mut out = vec![0; len];
        rng.fill_bytes(&mut out);
        out
    }

    #[test]
    fn the_wall_clock_reads_the_requests_received_at() {
        let clock = FixedWallClock::at_ms(1_765_000_000_123);
        assert_eq!(clock.now(), Duration::from_millis(1_765_000_000_123));
        assert_eq!(clock.now(), clock.now());
    }

    #[test]
    fn the_monotonic_clock_starts_at_zero_and_steps() {
        let clock = StepMonotonicClock::default();
        assert_eq!(clock.now(), 0);
        assert_eq!(clock.now(), MONOTONIC_STEP_NS);
        assert_eq!(clock.now(), 2 * MONOTONIC_STEP_NS);
        assert_eq!(StepMonotonicClock::default().now(), 0);
    }

    #[test]
    fn one_transaction_id_gives_the_same_bytes() {
        let seed = Seed::of("5f0c6a1e-2b4d-4c1a-9f3e-8d7c6b5a4f3e");
        assert_eq!(seed, Seed::of("5f0c6a1e-2b4d-4c1a-9f3e-8d7c6b5a4f3e"));
        assert_eq!(bytes(seed.random, 37), bytes(seed.random, 37));
    }

    #[test]
    fn another_transaction_id_gives_other_bytes() {
        let one = Seed::of("txn-1");
        let other = Seed::of("txn-2");
        assert_ne!(one, other);
        assert_ne!(bytes(one.random, 32), bytes(other.random, 32));
        // The streams of one call differ from each other too.
        assert_ne!(one.random, one.insecure_random);
    }

    #[test]
    fn a_partial_word_is_filled_from_the_stream() {
        let whole = bytes(7, 16);
        assert_eq!(bytes(7, 11), whole[..11]);
    }
}
