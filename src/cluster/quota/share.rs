//! This instance's fair share of a limit, for the attempts the bucket does not answer in time.
//!
//! While the bucket's stream has no leader (4–10 s after its leader's node dies) or this
//! instance's node is gone and the client is moving to another, a take retries within its budget
//! (`sync_timeout`); an attempt still unanswered then is judged here, by this instance alone. Not
//! against the whole limit: every instance falls back at once, and the provider's limit is per
//! account, so three instances each allowing the whole limit would send three times it. Each
//! instance allows itself the part of the limit it was using: its own requests (and tokens) in
//! the last minute over the cluster's, as its last take saw them, times the cap — the instances'
//! fractions add up to about one, so together they stay near the limit. An instance that has not
//! seen the cluster's use within the last minute assumes three instances (`UNKNOWN_SHARE`, the
//! smallest NATS cluster that survives a node's loss), which errs on the side of fewer calls.
//!
//! What is admitted here is owed to the bucket: `quota` adds it to the second it was spent in
//! with the next write, so that the leases reserved once the bucket answers again count it.
//! Without NATS at all (the sync task has cleared the bucket handle) none of this runs: each
//! instance keeps its own windows, as `cluster` says.

use std::time::Duration;

use super::{Counters, SPAN_S, retry_in};

/// The share of each limit an instance allows itself when it knows nothing of the cluster's use.
const UNKNOWN_SHARE: f64 = 1.0 / 3.0;

#[derive(Debug, Default)]
pub(super) struct Share {
    /// This instance's admissions (through the bucket or judged here) per unix second, with their
    /// estimated tokens, oldest first.
    own: Counters,
    /// This instance's fraction of the cluster's (requests, tokens) in the window, and when it
    /// was seen (unix ms).
    seen: Option<(f64, f64, u64)>,
}

impl Share {
    /// Counts one admission of `tokens` (estimated) at `now_ms`.
    pub(super) fn admitted(&mut self, tokens: u64, now_ms: u64) {
        let now_s = now_ms / 1000;
        self.forget(now_s);
        super::record(&mut self.own, now_s, 1, tokens);
    }

    /// What a take saw: the cluster's `used` (requests, tokens, reservations included), `ours` of
    /// it the demand the write it made served (not yet in `own`). Leases' prefetch counts in
    /// `used` and not in this instance's part, which errs towards a smaller share.
    pub(super) fn saw(&mut self, used: (u64, u64), ours: (u64, u64), now_ms: u64) {
        self.forget(now_ms / 1000);
        let (r, t) = self.sums();
        let fraction = |own: u64, ours: u64, used: u64| {
            (used > 0).then(|| (own.saturating_add(ours) as f64 / used as f64).min(1.0))
        };
        let Some(fr) = fraction(r, ours.0, used.0) else {
            return;
        };
        let ft = fraction(t, ours.1, used.1).unwrap_or(fr);
        self.seen = Some((fr, ft, now_ms));
    }

    /// Whether one more attempt of `estimate` tokens fits this instance's share of `caps`; else
    /// the limit it would break and when it would fit. Counts it if it fits.
    pub(super) fn judge(
        &mut self,
        caps: (Option<u64>, Option<u64>),
        estimate: u64,
        now_ms: u64,
    ) -> Result<(), (&'static str, Duration)> {
        let now_s = now_ms / 1000;
        self.forget(now_s);
        let (fr, ft) = match self.seen {
            Some((fr, ft, at)) if now_ms.saturating_sub(at) <= SPAN_S.saturating_mul(1000) => {
                (fr, ft)
            }
            _ => (UNKNOWN_SHARE, UNKNOWN_SHARE),
        };
        let (r, t) = self.sums();
        let checks = [
            ("rpm", caps.0, fr, 1, r, 1),
            ("tpm", caps.1, ft, 2, t, estimate),
        ];
        for (name, cap, fraction, column, used, amount) in checks {
            let Some(cap) = cap else { continue };
            let share = (cap as f64 * fraction).floor() as u64;
            if used.saturating_add(amount) > share {
                return Err((
                    name,
                    retry_in(&self.own, column, used, amount, share, now_ms),
                ));
            }
        }
        super::record(&mut self.own, now_s, 1, estimate);
        Ok(())
    }

    fn sums(&self) -> (u64, u64) {
        (
            self.own.iter().map(|c| c.1).fold(0, u64::saturating_add),
            self.own.iter().map(|c| c.2).fold(0, u64::saturating_add),
        )
    }

    fn forget(&mut self, now_s: u64) {
        self.own
            .retain(|&(s, _, _)| s.saturating_add(SPAN_S) >= now_s);
    }
}
