//! Admission on the request path, without waiting on the actor's mailbox.
//!
//! The deployment actor owns its breaker, `rpm`/`tpm` windows and cool-down, and publishes what
//! admission needs in atomics (`Published`): the circuit state and until when an open circuit
//! rejects, the cool-down, a half-open probe flag, and for each limit a pair of counters:
//!
//! - `granted` (G): units the request path has taken since the actor started, counted up here
//!   with compare-and-swap, so that two requests never take the same unit;
//! - `allowed` (A): set only by the actor, to the units it has recorded in all (R, the calls it
//!   heard finish) plus the room its window leaves (`limit − used`).
//!
//! So `A − G = limit − used − (G − R)`: the room left once the calls still in flight (taken,
//! not yet recorded) are counted too. A request takes a unit only while `G + amount ≤ A`, which
//! keeps every minute within the limit whatever the interleaving; the actor raises A as calls
//! finish below their estimate and as old calls leave the window. A refusal is checked once
//! more with the actor (`Msg::Recheck`), which may have room it has not published yet — that is
//! a mailbox round trip, but only at the limit, where the request is about to be refused anyway.
//!
//! A call counts against the window from the moment it was admitted until a minute after that,
//! and while it is in flight: a call longer than a minute (a long stream) holds its unit until it
//! ends. That errs on the side of the provider's limit.
//!
//! The half-open probe is a flag taken with compare-and-swap: exactly one request wins it; the
//! actor clears it once it has applied the probe's outcome to its breaker and published the
//! result.

#![warn(clippy::arithmetic_side_effects)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::breaker::CircuitState;
use super::{Published, Skip};

/// One limit's units as the request path spends them and the actor refills them.
#[derive(Debug)]
pub struct Permits {
    limit: u64,
    granted: AtomicU64,
    allowed: AtomicU64,
}

impl Permits {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            granted: AtomicU64::new(0),
            allowed: AtomicU64::new(limit),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `amount` units if they fit under `cap` (≤ the limit: batch work leaves the rest to
    /// live traffic).
    fn try_take(&self, amount: u64, cap: u64) -> bool {
        let reserve = self.limit.saturating_sub(cap);
        let allowed = self.allowed.load(Ordering::Acquire);
        self.granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                (g.saturating_add(amount).saturating_add(reserve) <= allowed)
                    .then(|| g.saturating_add(amount))
            })
            .is_ok()
    }

    /// Gives back units taken for a call that was never made.
    pub(super) fn give_back(&self, amount: u64) {
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                Some(g.saturating_sub(amount))
            });
    }

    /// Units taken by calls the actor has not recorded yet, given what it has recorded.
    pub(super) fn in_flight(&self, recorded: u64) -> u64 {
        self.granted
            .load(Ordering::Acquire)
            .saturating_sub(recorded)
    }

    /// The actor's refill: `recorded` units heard of in all, `window_used` of them (or of what
    /// they really used) still in the window.
    pub(super) fn refill(&self, recorded: u64, window_used: u64) {
        let room = self.limit.saturating_sub(window_used);
        self.allowed
            .store(recorded.saturating_add(room), Ordering::Release);
    }

    /// A restarted actor starts with an empty window.
    pub(super) fn reset(&self) {
        self.granted.store(0, Ordering::Release);
        self.allowed.store(self.limit, Ordering::Release);
    }

    /// Units used in the window, calls in flight included, as of the actor's last refill.
    pub fn used(&self) -> u64 {
        let g = self.granted.load(Ordering::Acquire);
        let a = self.allowed.load(Ordering::Acquire);
        self.limit.saturating_add(g).saturating_sub(a)
    }
}

/// What admission took for one call: to give back if the call is not made, and to report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    pub probe: bool,
    /// Units taken from `rpm` (1) and `tpm` (the estimate); 0 without the limit.
    pub rpm: u64,
    pub tpm: u64,
    pub at: Instant,
}

/// Why admission said no.
#[derive(Debug, PartialEq)]
pub enum Refused {
    Skip(Skip),
    /// This limit has no room as published; the actor may know better (`Msg::Recheck`).
    Limit(&'static str),
}

impl Published {
    /// Lets a call through if the cool-down, circuit and limits allow, taking its units and,
    /// for a half-open circuit, the probe. `share` is the part of each limit this call may use.
    pub fn admit(&self, now: Instant, estimate: u64, share: f64) -> Result<Admitted, Refused> {
        if let Some(left) = self.cool_down_left(now) {
            return Err(Refused::Skip(Skip::CoolingDown(left)));
        }
        let probe = match self.circuit() {
            CircuitState::Closed => false,
            CircuitState::Open if self.ms_since_epoch(now) < self.open_until_ms() => {
                return Err(Refused::Skip(Skip::CircuitOpen));
            }
            // Open past its time (the actor's timer has not moved it yet) or half-open.
            CircuitState::Open | CircuitState::HalfOpen => true,
        };
        let cap = |p: &Permits| {
            if share >= 1.0 {
                p.limit
            } else {
                (p.limit as f64 * share).floor() as u64
            }
        };
        let rpm = match &self.rpm {
            Some(p) if !p.try_take(1, cap(p)) => return Err(Refused::Limit("rpm")),
            Some(_) => 1,
            None => 0,
        };
        let tpm = match &self.tpm {
            Some(p) if !p.try_take(estimate, cap(p)) => {
                self.give_back(rpm, 0);
                return Err(Refused::Limit("tpm"));
            }
            Some(_) => estimate,
            None => 0,
        };
        if probe && !self.take_probe() {
            self.give_back(rpm, tpm);
            return Err(Refused::Skip(Skip::CircuitOpen));
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            probe,
            rpm,
            tpm,
            at: now,
        })
    }

    /// Gives back the units of a call that was never made.
    pub(super) fn give_back(&self, rpm: u64, tpm: u64) {
        if let (Some(p), true) = (&self.rpm, rpm > 0) {
            p.give_back(rpm);
        }
        if let (Some(p), true) = (&self.tpm, tpm > 0) {
            p.give_back(tpm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::limiter::WindowBudget;
    use super::*;
    use std::time::Duration;

    /// The request path and the actor's refill together: one request every 100 ms for three
    /// minutes at `rpm = 60`, each finishing at once.
    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let t0 = Instant::now();
        let p = Published::new(t0, Some(60), None);
        let mut window = WindowBudget::per_minute(60);
        let mut recorded = 0u64;
        let mut admitted = Vec::new();
        for i in 0..1800u64 {
            let now = t0 + Duration::from_millis(100 * i);
            // The actor refills when it handles a message (here: before each request).
            p.rpm.as_ref().unwrap().refill(recorded, window.used(now));
            if let Ok(a) = p.admit(now, 1, 1.0) {
                admitted.push(now);
                recorded += a.rpm;
                window.record(now, a.at, a.rpm);
            }
        }
        for (i, at) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|t| t.duration_since(*at) < Duration::from_secs(60))
                .count();
            assert!(in_window <= 60, "{in_window} in the minute from {i}");
        }
        // Bursts are allowed: the first 60 went at once, in the first 6 seconds.
        assert_eq!(admitted[59], t0 + Duration::from_millis(5900));
        assert_eq!(admitted.len(), 180);
    }

    #[test]
    fn calls_in_flight_hold_their_units_and_batch_work_keeps_to_its_share() {
        let t0 = Instant::now();
        let p = Published::new(t0, Some(100), Some(1000));
        let mut taken = Vec::new();
        while let Ok(a) = p.admit(t0, 100, 0.5) {
            taken.push(a);
        }
        assert_eq!(taken.len(), 5, "batch work takes half of tpm");
        assert_eq!(p.admit(t0, 100, 0.5), Err(Refused::Limit("tpm")));
        // tpm refused: the rpm unit taken first was given back.
        assert_eq!(p.rpm.as_ref().unwrap().used(), 5);
        assert!(p.admit(t0, 500, 1.0).is_ok(), "live traffic has the rest");
        assert_eq!(p.admit(t0, 1, 1.0), Err(Refused::Limit("tpm")));
        assert_eq!(p.in_flight(), 6);
        // The actor records the first call at its real usage (10 tokens): 90 come back.
        let tpm = p.tpm.as_ref().unwrap();
        tpm.refill(100, 10);
        assert_eq!(tpm.used(), 1000 - 90);
        assert!(p.admit(t0, 90, 1.0).is_ok());
        assert_eq!(p.admit(t0, 1, 1.0), Err(Refused::Limit("tpm")));
    }

    #[test]
    fn a_half_open_circuit_lets_exactly_one_probe_through() {
        let t0 = Instant::now();
        let p = Published::new(t0, Some(10), None);
        p.publish_circuit(CircuitState::Open, Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            p.admit(t0, 1, 1.0).unwrap_err(),
            Refused::Skip(Skip::CircuitOpen)
        );
        // Past its time, before the actor's timer moved it to half-open: one probe.
        let later = t0 + Duration::from_secs(6);
        let probe = p.admit(later, 1, 1.0).unwrap();
        assert!(probe.probe);
        assert_eq!(
            p.admit(later, 1, 1.0).unwrap_err(),
            Refused::Skip(Skip::CircuitOpen)
        );
        assert_eq!(
            p.rpm.as_ref().unwrap().used(),
            1,
            "the refused one gave its unit back"
        );
        // The actor applied the outcome and kept the circuit half-open: the next probe may go.
        p.publish_circuit(CircuitState::HalfOpen, None);
        p.release_probe();
        assert!(p.admit(later, 1, 1.0).unwrap().probe);
    }
}
