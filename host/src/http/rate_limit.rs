//! A per-caller rate limit on user routes: each caller (its idempotency scope: `user:<id>`, or
//! `anyone` without authentication) may make `per_second` requests a second on average with
//! bursts of `burst`; beyond that the answer is 429 with `Retry-After`. The limiter is
//! governor's keyed GCRA; callers not seen for a while are forgotten, so its memory is bounded
//! by the callers of the last minute.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Every this many checks, callers whose allowance is full again are forgotten.
const FORGET_EVERY: u64 = 10_000;

pub struct CallerLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl CallerLimit {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<CallerLimit> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Some(CallerLimit {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// `Ok` when `caller` may go ahead; otherwise how long until it may.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&caller.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Whole seconds for `Retry-After`, never 0.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_beyond_its_burst_waits_and_others_do_not() {
        let limit = CallerLimit::new(1, 3).expect("a limit");
        for _ in 0..3 {
            assert!(limit.check("user:1").is_ok());
        }
        let wait = limit
            .check("user:1")
            .expect_err("the fourth in a row waits");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(
            limit.check("user:2").is_ok(),
            "another caller has its own allowance"
        );
    }

    #[test]
    fn zero_means_no_limit_and_retry_after_rounds_up() {
        assert!(CallerLimit::new(0, 10).is_none());
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2_100)), 3);
    }
}
