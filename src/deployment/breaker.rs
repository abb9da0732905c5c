//! The circuit breaker of docs/contract.md §2: closed → open after `failure_threshold` consecutive
//! failures (a success resets the count) → half-open after `reset_timeout` → closed after
//! `success_threshold` successful probes, one probe at a time; a failed probe re-opens it.
//! Pure state: the deployment actor feeds it outcomes and the time. In a cluster, what another
//! instance's breaker decided is forced onto this one (`force_open`, `force_closed`).

#![warn(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

pub use crate::protocol::CircuitState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
}

#[derive(Debug)]
pub struct Breaker {
    failure_threshold: u32,
    success_threshold: u32,
    reset_timeout: Duration,
    state: CircuitState,
    failures: u32,
    successes: u32,
    /// While open: when it may go half-open.
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// Whether a call may go through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the one half-open probe.
    Probe,
    Rejected,
}

impl Breaker {
    pub fn new(c: &BreakerConfig) -> Self {
        Self {
            failure_threshold: c.failure_threshold,
            success_threshold: c.success_threshold,
            reset_timeout: c.reset_timeout,
            state: CircuitState::Closed,
            failures: 0,
            successes: 0,
            open_until: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn reset_timeout(&self) -> Duration {
        self.reset_timeout
    }

    /// Moves open → half-open once the reset timeout has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match (self.state, self.open_until) {
            (CircuitState::Open, Some(until)) if now >= until => {
                self.successes = 0;
                self.probe_in_flight = false;
                self.go(CircuitState::HalfOpen)
            }
            _ => None,
        }
    }

    /// Would a call be let through now? Does not take the probe slot: see `admit`.
    pub fn check(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let t = self.poll(now);
        let a = match self.state {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::Open => Admission::Rejected,
            CircuitState::HalfOpen if self.probe_in_flight => Admission::Rejected,
            CircuitState::HalfOpen => Admission::Probe,
        };
        (a, t)
    }

    /// Commits an admission returned by `check`.
    pub fn admit(&mut self, a: Admission) {
        if a == Admission::Probe {
            self.probe_in_flight = true;
        }
    }

    pub fn on_success(&mut self, probe: bool) -> Option<Transition> {
        match self.state {
            CircuitState::Closed => {
                self.failures = 0;
                None
            }
            CircuitState::HalfOpen if probe => {
                self.probe_in_flight = false;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.success_threshold {
                    self.failures = 0;
                    self.go(CircuitState::Closed)
                } else {
                    None
                }
            }
            // A call admitted before the circuit opened: it says nothing about now.
            CircuitState::HalfOpen | CircuitState::Open => None,
        }
    }

    /// When a circuit opened `now` goes half-open. `reset_timeout` is at most ten years (config
    /// validation), so the sum cannot overflow; were it to, the circuit would probe at once.
    fn reopen_at(&self, now: Instant) -> Instant {
        now.checked_add(self.reset_timeout).unwrap_or(now)
    }

    pub fn on_failure(&mut self, now: Instant, probe: bool) -> Option<Transition> {
        match self.state {
            CircuitState::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.failure_threshold {
                    self.open_until = Some(self.reopen_at(now));
                    self.go(CircuitState::Open)
                } else {
                    None
                }
            }
            CircuitState::HalfOpen if probe => {
                self.probe_in_flight = false;
                self.open_until = Some(self.reopen_at(now));
                self.go(CircuitState::Open)
            }
            CircuitState::HalfOpen | CircuitState::Open => None,
        }
    }

    /// Another instance's breaker opened: reject calls until `until` (kept if already later),
    /// then probe as after a local opening.
    pub fn force_open(&mut self, until: Instant) -> Option<Transition> {
        self.open_until = Some(self.open_until.map_or(until, |u| {
            if self.state == CircuitState::Open {
                u.max(until)
            } else {
                until
            }
        }));
        self.probe_in_flight = false;
        (self.state != CircuitState::Open)
            .then(|| self.go(CircuitState::Open))
            .flatten()
    }

    /// Another instance's probe succeeded: the deployment is healthy again.
    pub fn force_closed(&mut self) -> Option<Transition> {
        if self.state == CircuitState::Closed {
            return None;
        }
        self.failures = 0;
        self.successes = 0;
        self.probe_in_flight = false;
        self.open_until = None;
        self.go(CircuitState::Closed)
    }

    /// When an open circuit may go half-open.
    pub fn open_until(&self) -> Option<Instant> {
        (self.state == CircuitState::Open)
            .then_some(self.open_until)
            .flatten()
    }

    /// An outcome that does not count either way (ignored status, caller's deadline, 400).
    pub fn on_neutral(&mut self, probe: bool) {
        if probe {
            self.probe_in_flight = false;
        }
    }

    fn go(&mut self, to: CircuitState) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        Some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CircuitState::*;

    fn breaker(success_threshold: u32) -> Breaker {
        Breaker::new(&BreakerConfig {
            success_threshold,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn opens_after_three_consecutive_failures_and_a_success_resets_the_count() {
        let t = Instant::now();
        let mut b = breaker(1);
        assert_eq!(b.on_failure(t, false), None);
        assert_eq!(b.on_failure(t, false), None);
        assert_eq!(b.on_success(false), None);
        assert_eq!(b.on_failure(t, false), None);
        assert_eq!(b.on_failure(t, false), None);
        assert_eq!(
            b.on_failure(t, false),
            Some(Transition {
                from: Closed,
                to: Open
            })
        );
        assert_eq!(b.check(t + Duration::from_secs(59)).0, Admission::Rejected);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let t = Instant::now();
        let mut b = breaker(1);
        for _ in 0..3 {
            b.on_failure(t, false);
        }
        let later = t + Duration::from_secs(60);
        let (a, tr) = b.check(later);
        assert_eq!(
            tr,
            Some(Transition {
                from: Open,
                to: HalfOpen
            })
        );
        assert_eq!(a, Admission::Probe);
        b.admit(a);
        assert_eq!(b.check(later).0, Admission::Rejected, "one probe at a time");
        assert_eq!(
            b.on_success(true),
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );
        assert_eq!(b.check(later).0, Admission::Allowed);
    }

    #[test]
    fn a_forced_opening_holds_until_its_time_and_a_forced_close_resets() {
        let t = Instant::now();
        let mut b = breaker(1);
        b.on_failure(t, false);
        let until = t + Duration::from_secs(10);
        assert_eq!(
            b.force_open(until),
            Some(Transition {
                from: Closed,
                to: Open
            })
        );
        assert_eq!(b.force_open(t + Duration::from_secs(5)), None, "kept later");
        assert_eq!(b.check(t + Duration::from_secs(9)).0, Admission::Rejected);
        assert_eq!(b.check(until).0, Admission::Probe);
        assert_eq!(
            b.force_closed(),
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );
        assert_eq!(b.force_closed(), None);
        // The failure count started afresh.
        assert_eq!(b.on_failure(until, false), None);
        assert_eq!(b.on_failure(until, false), None);
        assert!(b.on_failure(until, false).is_some());
    }

    #[test]
    fn a_failed_probe_reopens_and_late_results_are_ignored() {
        let t = Instant::now();
        let mut b = breaker(2);
        for _ in 0..3 {
            b.on_failure(t, false);
        }
        assert_eq!(b.on_success(false), None, "a late success while open");
        let later = t + Duration::from_secs(60);
        let (a, _) = b.check(later);
        b.admit(a);
        assert_eq!(b.on_success(true), None, "needs two successes");
        let (a, _) = b.check(later);
        assert_eq!(a, Admission::Probe);
        b.admit(a);
        assert_eq!(
            b.on_failure(later, true),
            Some(Transition {
                from: HalfOpen,
                to: Open
            })
        );
        assert_eq!(
            b.check(later + Duration::from_secs(59)).0,
            Admission::Rejected
        );
        assert_eq!(b.check(later + Duration::from_secs(60)).0, Admission::Probe);
    }
}
