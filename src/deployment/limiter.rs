//! Per-minute budgets for `rpm` and `tpm`, read as users of the providers and of LiteLLM read
//! them: at most `limit` units in ANY 60-second window, bursts allowed.
//!
//! This is a sliding-window log, not a token bucket: a GCRA/token bucket with burst = `rpm`
//! (what `governor` offers) admits the burst and then keeps refilling, so it lets through close
//! to 2 × `rpm` in the first minute, which is exactly what a provider's limit punishes. The log
//! holds one entry per finished call of the last minute (at most `rpm` entries), so memory is
//! bounded by the limit. The deployment actor owns it and records each call when it hears how it
//! went (with the time it was admitted and what it really used); calls still in flight are
//! counted by the permits of `gate.rs`, which the actor refills from this log.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window of `rpm` and `tpm`. `WindowBudget::wait_for` answers it whole when it knows no
/// sooner time: the amount can never fit, or calls still in flight hold the room.
pub const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct WindowBudget {
    limit: u64,
    window: Duration,
    /// (admitted at, amount), oldest first.
    entries: VecDeque<(Instant, u64)>,
    used: u64,
}

impl WindowBudget {
    pub fn per_minute(limit: u64) -> Self {
        Self::new(limit, MINUTE)
    }

    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window,
            entries: VecDeque::new(),
            used: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, amount)) = self.entries.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.used = self.used.saturating_sub(amount);
            self.entries.pop_front();
        }
    }

    /// Units used in the window ending now by the calls recorded so far.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.used
    }

    /// Records a call admitted `at` that used `amount`. Calls finish out of order: the entry goes
    /// where its time puts it (near the back, usually), so that it leaves the window exactly a
    /// window after it was admitted. One older than the window no longer counts.
    pub fn record(&mut self, now: Instant, at: Instant, amount: u64) {
        self.expire(now);
        if now.saturating_duration_since(at) >= self.window || amount == 0 {
            return;
        }
        let index = self
            .entries
            .iter()
            .rposition(|&(t, _)| t <= at)
            .map_or(0, |i| i.saturating_add(1));
        self.entries.insert(index, (at, amount));
        self.used = self.used.saturating_add(amount);
    }

    /// When the oldest entry leaves the window (and room may come back), if there is one.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .front()
            .and_then(|&(at, _)| at.checked_add(self.window))
    }

    /// How long until `amount` more units fit, with `in_flight` units taken by calls not recorded
    /// yet (which leave no sooner than the oldest entry).
    pub fn wait_for(&mut self, now: Instant, amount: u64, in_flight: u64) -> Duration {
        self.expire(now);
        let amount = amount.saturating_add(in_flight);
        if amount > self.limit {
            return self.window;
        }
        // Real usage can exceed what was reserved, so `used` may stand above the limit.
        let mut freed = self.limit.saturating_sub(self.used);
        if freed >= amount {
            return Duration::ZERO;
        }
        for &(at, a) in &self.entries {
            freed = freed.saturating_add(a);
            if freed >= amount {
                return self
                    .window
                    .saturating_sub(now.saturating_duration_since(at));
            }
        }
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_leave_the_window_a_minute_after_they_were_admitted_in_any_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = WindowBudget::per_minute(100);
        b.record(t0 + s(20), t0 + s(10), 5);
        // Admitted earlier, finished later.
        b.record(t0 + s(30), t0, 7);
        assert_eq!(b.used(t0 + s(30)), 12);
        assert_eq!(b.next_expiry(), Some(t0 + s(60)));
        assert_eq!(b.used(t0 + s(60)), 5);
        assert_eq!(b.used(t0 + s(70)), 0);
        // A call admitted more than a minute ago no longer counts when it finishes.
        b.record(t0 + s(200), t0 + s(100), 9);
        assert_eq!(b.used(t0 + s(200)), 0);
    }

    #[test]
    fn says_when_room_frees_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = WindowBudget::per_minute(2);
        b.record(t0, t0, 1);
        b.record(t0 + s(10), t0 + s(10), 1);
        assert_eq!(b.wait_for(t0 + s(20), 1, 0), s(40));
        assert_eq!(b.wait_for(t0 + s(20), 2, 0), s(50));
        assert_eq!(b.wait_for(t0 + s(60), 1, 0), Duration::ZERO);
        // A call in flight holds its unit too.
        assert_eq!(b.wait_for(t0 + s(60), 1, 1), s(10));
        assert_eq!(
            b.wait_for(t0 + s(60), 3, 0),
            s(60),
            "larger than the limit never fits"
        );
    }
}
