//! A lease: capacity reserved in the cluster window for this instance alone, spent locally until
//! it runs out or expires, then closed, giving back what it did not spend; and how big the next
//! one is. No I/O and no locks here: `quota` holds the leases under its mutex and writes what they
//! reserve and give back.

use std::time::{Duration, Instant};

/// How long a lease may be spent. Longer would serve a steady stream with fewer writes, but
/// holds what an instance does not spend away from the others for longer.
pub(super) const LEASE_LIFE: Duration = Duration::from_secs(1);

/// A change to one second's counts not written yet: (second, requests, tokens).
pub(super) type Correction = (u64, i64, i64);

/// Which caps a lease was checked against. Batch work may take only its share of each limit, so
/// it has a lease of its own: live work's lease was checked against the whole limit, and batch
/// work spending it could go past its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Live,
    Batch,
}

impl Class {
    pub(super) fn of(share: f64) -> Self {
        if share < 1.0 {
            Class::Batch
        } else {
            Class::Live
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Class::Live => 0,
            Class::Batch => 1,
        }
    }
}

pub(super) const CLASSES: [Class; 2] = [Class::Live, Class::Batch];

/// Capacity reserved in the cluster window for this instance alone.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) id: u64,
    /// The second it is recorded at: the one it expires in.
    pub(super) sec: u64,
    /// It is spent only before this.
    pub(super) until: Instant,
    /// What is left to spend.
    pub(super) requests: u64,
    pub(super) tokens: u64,
    /// What it has served: requests and their estimated tokens, which size the next lease.
    pub(super) spent: (u64, u64),
}

/// What a closed lease spent, and when it closed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Spent {
    pub(super) requests: u64,
    pub(super) estimates: u64,
    pub(super) closed: Option<Instant>,
}

/// One class's lease, if open, and what the one before it spent.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) lease: Option<Lease>,
    pub(super) last: Spent,
}

impl Lease {
    /// Spends one request and `estimate` tokens if the lease is still valid and holds them
    /// (tokens only count when `tpm` is set).
    pub(super) fn spend(&mut self, estimate: u64, tokens_limited: bool, now: Instant) -> bool {
        let fits =
            now < self.until && self.requests > 0 && (!tokens_limited || self.tokens >= estimate);
        if fits {
            self.requests = self.requests.saturating_sub(1);
            self.tokens = self.tokens.saturating_sub(estimate);
            self.spent = (
                self.spent.0.saturating_add(1),
                self.spent.1.saturating_add(estimate),
            );
        }
        fits
    }

    /// Settles an attempt's real usage (`delta`: real − estimate) within the lease that served it:
    /// tokens it did not use can be spent again, tokens it used beyond its estimate come out of
    /// what is left. Returns what the lease could not cover.
    pub(super) fn settle(&mut self, delta: i64) -> i64 {
        if delta <= 0 {
            self.tokens = self.tokens.saturating_add(delta.unsigned_abs());
            return 0;
        }
        let covered = self.tokens.min(delta.unsigned_abs());
        self.tokens = self.tokens.saturating_sub(covered);
        delta.saturating_sub_unsigned(covered)
    }

    /// Ends the lease (it is consumed: nothing can spend it after): what it did not spend goes
    /// back to its second, what it spent sizes the next lease.
    pub(super) fn close(self, now: Instant) -> (Option<Correction>, Spent) {
        let back = (self.requests > 0 || self.tokens > 0)
            .then(|| (self.sec, negative(self.requests), negative(self.tokens)));
        let spent = Spent {
            requests: self.spent.0,
            estimates: self.spent.1,
            closed: Some(now),
        };
        (back, spent)
    }
}

pub(super) fn negative(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX).saturating_neg()
}

impl Spent {
    /// The prefetch the next lease aims for, in requests, and their average estimate: twice what
    /// the last lease spent, or nothing if it closed more than a lease's life ago (the demand
    /// went quiet).
    pub(super) fn wanted(&self, now: Instant) -> (u64, u64) {
        match self.closed {
            Some(at) if now.saturating_duration_since(at) <= LEASE_LIFE => (
                self.requests.saturating_mul(2),
                self.estimates.checked_div(self.requests).unwrap_or(0),
            ),
            _ => (0, 0),
        }
    }
}

/// The requests and tokens a lease reserves beyond its demand: up to `wanted` requests of `avg`
/// tokens each, taking at most a quarter of the room each cap leaves after `used` (the demand
/// included), and nothing under a cap with less than a quarter of it left.
pub(super) fn prefetch(
    wanted: u64,
    avg: u64,
    used: (u64, u64),
    caps: (Option<u64>, Option<u64>),
) -> (u64, u64) {
    let bound = |used: u64, cap: Option<u64>| {
        cap.map_or(u64::MAX, |cap| {
            let room = cap.saturating_sub(used);
            if room < cap / 4 { 0 } else { room / 4 }
        })
    };
    let mut requests = wanted.min(bound(used.0, caps.0));
    if let Some(fit) = bound(used.1, caps.1).checked_div(avg) {
        requests = requests.min(fit);
    }
    (requests, requests.saturating_mul(avg))
}

/// The second a lease reserved at `now_ms` is recorded at: the one it expires in, never earlier
/// than a second it is spent in.
pub(super) fn lease_second(now_ms: u64) -> u64 {
    now_ms.saturating_add(LEASE_LIFE.as_millis() as u64) / 1000
}
