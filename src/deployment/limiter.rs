//! Per-minute budgets for `rpm` and `tpm`, read as users of the providers and of LiteLLM read
//! them: at most `limit` units in ANY 60-second window, bursts allowed.
//!
//! This is a sliding-window log, not a token bucket: a GCRA/token bucket with burst = `rpm`
//! (what `governor` offers) admits the burst and then keeps refilling, so it lets through close
//! to 2 × `rpm` in the first minute, which is exactly what a provider's limit punishes. The log
//! holds one entry per admitted request of the last minute (at most `rpm` entries), so memory is
//! bounded by the limit, and `tpm` reservations can be corrected once real usage is known.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct WindowBudget {
    limit: u64,
    window: Duration,
    /// (admitted at, ticket, amount), oldest first; tickets are consecutive.
    entries: VecDeque<(Instant, u64, u64)>,
    used: u64,
    next_ticket: u64,
}

/// A reservation, to correct with the real amount later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl WindowBudget {
    pub fn per_minute(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window,
            entries: VecDeque::new(),
            used: 0,
            next_ticket: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _, amount)) = self.entries.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.used = self.used.saturating_sub(amount);
            self.entries.pop_front();
        }
    }

    /// Units used in the window ending now.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.used
    }

    /// Takes `amount` if it fits in the window; else says how long until it could.
    pub fn try_take(&mut self, now: Instant, amount: u64) -> Result<Ticket, Duration> {
        self.try_take_under(now, amount, self.limit)
    }

    /// As `try_take`, but only up to `cap` (≤ the limit): lower-priority work (batches) leaves
    /// the rest of the window to live traffic.
    pub fn try_take_under(
        &mut self,
        now: Instant,
        amount: u64,
        cap: u64,
    ) -> Result<Ticket, Duration> {
        self.expire(now);
        if self.used.saturating_add(amount) > cap.min(self.limit) {
            return Err(self.wait_for(now, amount));
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.entries.push_back((now, ticket, amount));
        self.used = self.used.saturating_add(amount);
        Ok(Ticket(ticket))
    }

    /// Replaces a reservation's amount with what was really used (0 to give it back). A ticket
    /// that has already left the window is ignored: it no longer counts anyway.
    pub fn correct(&mut self, ticket: Ticket, actual: u64) {
        let Some(&(_, first, _)) = self.entries.front() else {
            return;
        };
        let Some(index) = ticket.0.checked_sub(first) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(index as usize) {
            self.used = self.used.saturating_sub(entry.2).saturating_add(actual);
            entry.2 = actual;
        }
    }

    fn wait_for(&self, now: Instant, amount: u64) -> Duration {
        if amount > self.limit {
            return self.window;
        }
        // Real usage can exceed what was reserved, so `used` may stand above the limit.
        let mut freed = self.limit.saturating_sub(self.used);
        for &(at, _, a) in &self.entries {
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
    fn never_more_than_the_limit_in_any_window() {
        let t0 = Instant::now();
        let mut b = WindowBudget::per_minute(60);
        // Offer one request every 100 ms for three minutes: 10x the limit.
        let mut admitted = Vec::new();
        for i in 0..1800u64 {
            let now = t0 + Duration::from_millis(100 * i);
            if b.try_take(now, 1).is_ok() {
                admitted.push(now);
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
    fn says_when_room_frees_up() {
        let t0 = Instant::now();
        let mut b = WindowBudget::per_minute(2);
        b.try_take(t0, 1).unwrap();
        b.try_take(t0 + Duration::from_secs(10), 1).unwrap();
        assert_eq!(
            b.try_take(t0 + Duration::from_secs(20), 1),
            Err(Duration::from_secs(40))
        );
        assert!(b.try_take(t0 + Duration::from_secs(60), 1).is_ok());
    }

    #[test]
    fn reservations_are_corrected_with_real_usage() {
        let t0 = Instant::now();
        let mut b = WindowBudget::per_minute(1000);
        let a = b.try_take(t0, 600).unwrap();
        assert!(b.try_take(t0, 600).is_err());
        b.correct(a, 100);
        assert_eq!(b.used(t0), 100);
        let c = b.try_take(t0, 600).unwrap();
        b.correct(c, 0);
        assert_eq!(b.used(t0), 100);
        // A ticket older than the window is ignored.
        assert_eq!(b.used(t0 + Duration::from_secs(61)), 0);
        b.correct(a, 500);
        assert_eq!(b.used(t0 + Duration::from_secs(61)), 0);
        assert!(
            b.try_take(t0, 1001).is_err(),
            "larger than the limit never fits"
        );
    }
}
