//! Guardrails of a canary or shadow: the limits an operator starts it with, and each replica's
//! sliding window over what it saw the candidate do, judged after every call so a bad
//! candidate is ended within a few calls of crossing a limit.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Map, Value};

/// Most calls a window may hold: bounds each replica's memory per candidate.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

/// Longest p99 limit accepted, in milliseconds.
const MAX_P99_GUEST_MS: u64 = 600_000;

/// Most violations a limit may allow.
const MAX_VIOLATIONS: u64 = 1_000_000;

/// The limits a candidate is judged against; `None` leaves that guardrail off.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Guardrails {
    /// Most traps (timeouts and fuel exhaustion included) per call, over the window.
    pub max_trap_rate: Option<f64>,
    /// Most host-check violations since the candidate started on a replica.
    pub max_violations: Option<u64>,
    /// Most decisions differing from the active version's per compared call, over the window.
    pub max_difference_rate: Option<f64>,
    /// Longest 99th-percentile guest time over the window, in milliseconds.
    pub max_p99_guest_ms: Option<u64>,
    /// Calls a window must hold before its rates and p99 are judged.
    pub min_calls: u32,
    /// The window: the last this many calls (and, separately, compared calls).
    pub window_calls: u32,
}

/// A canary or shadow started without a `guardrails` object is judged by these: any trap rate
/// over 1% or any host-check violation ends it; differences and guest time are not judged
/// (a new version often means to differ, and guest time depends on the host's load).
pub const DEFAULT: Guardrails = Guardrails {
    max_trap_rate: Some(0.01),
    max_violations: Some(0),
    max_difference_rate: None,
    max_p99_guest_ms: None,
    min_calls: 50,
    window_calls: 500,
};

impl Guardrails {
    /// Reads a `guardrails` object: a field left out takes its [`DEFAULT`], a field given as
    /// `null` turns that guardrail off. Every problem is a sentence naming the field.
    pub fn from_json(object: &Map<String, Value>) -> Result<Guardrails, String> {
        let mut limits = DEFAULT;
        for (name, value) in object {
            match name.as_str() {
                "max_trap_rate" => limits.max_trap_rate = rate(name, value)?,
                "max_difference_rate" => limits.max_difference_rate = rate(name, value)?,
                "max_violations" => {
                    limits.max_violations = count(name, value, 0, MAX_VIOLATIONS)?;
                }
                "max_p99_guest_ms" => {
                    limits.max_p99_guest_ms = count(name, value, 1, MAX_P99_GUEST_MS)?;
                }
                "min_calls" => limits.min_calls = calls(name, value)?,
                "window_calls" => limits.window_calls = calls(name, value)?,
                other => return Err(format!("guardrails has no field {other:?}")),
            }
        }
        if limits.min_calls > limits.window_calls {
            return Err("guardrails.min_calls must be at most window_calls".into());
        }
        Ok(limits)
    }

    fn judged(&self) -> [(Guardrail, Option<f64>); 4] {
        [
            (Guardrail::TrapRate, self.max_trap_rate),
            (Guardrail::Violations, self.max_violations.map(|n| n as f64)),
            (Guardrail::DifferenceRate, self.max_difference_rate),
            (
                Guardrail::P99GuestMs,
                self.max_p99_guest_ms.map(|ms| ms as f64),
            ),
        ]
    }
}

fn rate(name: &str, value: &Value) -> Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) => match number.as_f64() {
            Some(rate) if (0.0..=1.0).contains(&rate) => Ok(Some(rate)),
            _ => Err(format!("guardrails.{name} must be a fraction from 0 to 1")),
        },
        _ => Err(format!("guardrails.{name} must be a number or null")),
    }
}

fn count(name: &str, value: &Value, low: u64, high: u64) -> Result<Option<u64>, String> {
    match value {
        Value::Null => Ok(None),
        _ => match value.as_u64() {
            Some(count) if (low..=high).contains(&count) => Ok(Some(count)),
            _ => Err(format!(
                "guardrails.{name} must be an integer from {low} to {high}, or null"
            )),
        },
    }
}

fn calls(name: &str, value: &Value) -> Result<u32, String> {
    match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
        Some(calls) if (1..=MAX_WINDOW_CALLS).contains(&calls) => Ok(calls),
        _ => Err(format!(
            "guardrails.{name} must be an integer from 1 to {MAX_WINDOW_CALLS}"
        )),
    }
}

/// One guardrail: the name metrics, history and status use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guardrail {
    TrapRate,
    Violations,
    DifferenceRate,
    P99GuestMs,
}

impl Guardrail {
    pub fn as_str(self) -> &'static str {
        match self {
            Guardrail::TrapRate => "trap_rate",
            Guardrail::Violations => "violations",
            Guardrail::DifferenceRate => "difference_rate",
            Guardrail::P99GuestMs => "p99_guest_ms",
        }
    }
}

/// A guardrail crossed: which, what was seen and the limit it went over.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Trip {
    pub guardrail: Guardrail,
    pub observed: f64,
    pub limit: f64,
}

/// How one call of the candidate went, as the guardrails count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It decided (accepted or refused).
    Decided,
    /// It trapped, timed out or ran out of fuel.
    Trapped,
    /// What it published broke a host check.
    Violated,
}

/// What the candidate did on this replica, as the guardrails see it now.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    pub calls: u64,
    pub window_calls: usize,
    pub trap_rate: Option<f64>,
    pub violations: u64,
    pub compared_calls: usize,
    pub difference_rate: Option<f64>,
    pub p99_guest_ms: Option<f64>,
}

/// One replica's observations of one candidate: the last calls and comparisons, bounded by
/// the guardrails' window, and the violations since it started.
#[derive(Debug)]
pub struct Window {
    limits: Guardrails,
    /// Each call's guest time in microseconds and whether it trapped; newest last.
    calls: VecDeque<(u64, bool)>,
    traps: usize,
    /// Whether each compared call decided differently; newest last.
    comparisons: VecDeque<bool>,
    differences: usize,
    violations: u64,
    total_calls: u64,
}

impl Window {
    pub fn new(limits: Guardrails) -> Window {
        let capacity = limits.window_calls.min(MAX_WINDOW_CALLS) as usize;
        Window {
            limits,
            calls: VecDeque::with_capacity(capacity),
            traps: 0,
            comparisons: VecDeque::with_capacity(capacity),
            differences: 0,
            violations: 0,
            total_calls: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.limits.window_calls.clamp(1, MAX_WINDOW_CALLS) as usize
    }

    /// Records one call; the first guardrail it crosses, if any.
    pub fn call(&mut self, outcome: CallOutcome, guest_time: Duration) -> Option<Trip> {
        let trapped = outcome == CallOutcome::Trapped;
        if outcome == CallOutcome::Violated {
            self.violations += 1;
        }
        self.total_calls += 1;
        let micros = u64::try_from(guest_time.as_micros()).unwrap_or(u64::MAX);
        self.calls.push_back((micros, trapped));
        self.traps += usize::from(trapped);
        if self.calls.len() > self.capacity()
            && let Some((_, evicted)) = self.calls.pop_front()
        {
            self.traps -= usize::from(evicted);
        }
        self.judge()
    }

    /// Records whether a compared call decided differently from the active version.
    pub fn comparison(&mut self, differed: bool) -> Option<Trip> {
        self.comparisons.push_back(differed);
        self.differences += usize::from(differed);
        if self.comparisons.len() > self.capacity()
            && let Some(evicted) = self.comparisons.pop_front()
        {
            self.differences -= usize::from(evicted);
        }
        self.judge()
    }

    /// Rates and p99 once the window holds `min_calls` calls; violations at once.
    pub fn figures(&self) -> Figures {
        Figures {
            calls: self.total_calls,
            window_calls: self.calls.len(),
            trap_rate: self.rate(self.traps, self.calls.len()),
            violations: self.violations,
            compared_calls: self.comparisons.len(),
            difference_rate: self.rate(self.differences, self.comparisons.len()),
            p99_guest_ms: self.p99_ms(),
        }
    }

    /// `count` of `len`, once `len` reaches `min_calls`.
    fn rate(&self, count: usize, len: usize) -> Option<f64> {
        (len > 0 && len >= self.limits.min_calls as usize).then(|| count as f64 / len as f64)
    }

    /// The 99th percentile of the window's guest times (nearest rank), once it holds
    /// `min_calls` calls.
    fn p99_ms(&self) -> Option<f64> {
        self.rate(0, self.calls.len())?;
        let mut times: Vec<u64> = self.calls.iter().map(|(micros, _)| *micros).collect();
        let rank = (times.len() * 99).div_ceil(100).saturating_sub(1);
        let (_, p99, _) = times.select_nth_unstable(rank);
        Some(*p99 as f64 / 1000.0)
    }

    fn judge(&self) -> Option<Trip> {
        let observed = [
            self.rate(self.traps, self.calls.len()),
            Some(self.violations as f64),
            self.rate(self.differences, self.comparisons.len()),
            // Only with a limit: it costs a pass over the window.
            self.limits.max_p99_guest_ms.and_then(|_| self.p99_ms()),
        ];
        self.limits
            .judged()
            .into_iter()
            .zip(observed)
            .find_map(|((guardrail, limit), observed)| {
                let (limit, observed) = (limit?, observed?);
                (observed > limit).then_some(Trip {
                    guardrail,
                    observed,
                    limit,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(value: Value) -> Result<Guardrails, String> {
        Guardrails::from_json(value.as_object().expect("an object"))
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn fields_left_out_take_defaults_and_null_turns_one_off() {
        assert_eq!(limits(json!({})), Ok(DEFAULT));
        let read =
            limits(json!({"max_trap_rate": null, "max_difference_rate": 0.2, "min_calls": 10}))
                .expect("valid");
        assert_eq!(read.max_trap_rate, None);
        assert_eq!(read.max_difference_rate, Some(0.2));
        assert_eq!(
            (read.min_calls, read.window_calls),
            (10, DEFAULT.window_calls)
        );
        for bad in [
            json!({"max_trap_rate": 1.5}),
            json!({"max_trap_rate": "0.1"}),
            json!({"max_violations": -1}),
            json!({"min_calls": 0}),
            json!({"window_calls": MAX_WINDOW_CALLS + 1}),
            json!({"min_calls": 20, "window_calls": 10}),
            json!({"max_p99": 5}),
        ] {
            assert!(limits(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rate_is_judged_only_after_min_calls() {
        let mut window = Window::new(Guardrails {
            min_calls: 10,
            ..DEFAULT
        });
        assert_eq!(
            window.call(CallOutcome::Trapped, FAST),
            None,
            "one early trap"
        );
        for _ in 0..8 {
            assert_eq!(window.call(CallOutcome::Decided, FAST), None);
        }
        let trip = window.call(CallOutcome::Decided, FAST).expect("10% > 1%");
        assert_eq!(trip.guardrail, Guardrail::TrapRate);
        assert_eq!((trip.observed, trip.limit), (0.1, 0.01));
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let mut window = Window::new(Guardrails {
            max_trap_rate: Some(0.5),
            min_calls: 4,
            window_calls: 4,
            ..DEFAULT
        });
        for _ in 0..2 {
            window.call(CallOutcome::Trapped, FAST);
        }
        for _ in 0..10 {
            assert_eq!(window.call(CallOutcome::Decided, FAST), None);
        }
        let figures = window.figures();
        assert_eq!((figures.calls, figures.window_calls), (12, 4));
        assert_eq!(figures.trap_rate, Some(0.0));
        window.call(CallOutcome::Trapped, FAST);
        window.call(CallOutcome::Trapped, FAST);
        assert!(window.call(CallOutcome::Trapped, FAST).is_some(), "3 of 4");
    }

    #[test]
    fn a_violation_over_the_allowance_trips_at_once() {
        let mut window = Window::new(Guardrails {
            max_violations: Some(1),
            ..DEFAULT
        });
        assert_eq!(window.call(CallOutcome::Violated, FAST), None);
        let trip = window.call(CallOutcome::Violated, FAST).expect("2 > 1");
        assert_eq!(trip.guardrail, Guardrail::Violations);
    }

    #[test]
    fn differences_and_p99_trip_their_guardrails() {
        let only = Guardrails {
            max_trap_rate: None,
            max_violations: None,
            min_calls: 5,
            ..DEFAULT
        };
        let mut window = Window::new(Guardrails {
            max_difference_rate: Some(0.3),
            ..only
        });
        let tripped: Vec<bool> = [true, false, false, false, false, true]
            .into_iter()
            .map(|differed| window.comparison(differed).is_some())
            .collect();
        assert_eq!(tripped, [false, false, false, false, false, true]);

        let mut window = Window::new(Guardrails {
            max_p99_guest_ms: Some(100),
            ..only
        });
        for _ in 0..100 {
            assert_eq!(window.call(CallOutcome::Decided, FAST), None);
        }
        let figures = window.figures();
        assert_eq!(figures.p99_guest_ms, Some(1.0));
        window.call(CallOutcome::Decided, Duration::from_millis(500));
        let trip = window
            .call(CallOutcome::Decided, Duration::from_millis(500))
            .expect("2 slow of 102 puts p99 at 500 ms");
        assert_eq!((trip.guardrail, trip.limit), (Guardrail::P99GuestMs, 100.0));
    }
}
