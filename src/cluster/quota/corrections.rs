//! Corrections to the cluster window: real usage replacing a slot's estimate, leftovers given
//! back when a lease closes, and what an instance admitted alone — carried by the next write, or
//! written on their own a moment later and every second after while the bucket fails, until they
//! leave the window.

#![warn(clippy::arithmetic_side_effects)]

use std::sync::atomic::Ordering::Relaxed;

use super::lease::Correction;
use super::{
    Bucket, CORRECTION_DELAY, ClusterWindow, Counters, SPAN_S, Taken, Write, read, record, write,
};

impl ClusterWindow {
    /// Replaces a slot's token estimate with the real usage. While its lease is open the lease
    /// settles it (no write at all); otherwise it is carried by the next write, or written on its
    /// own after `CORRECTION_DELAY`. Returns whether the caller should spawn `flush_later` (no
    /// flush is scheduled yet).
    pub fn correct(&self, taken: Taken, actual: u64) -> bool {
        if self.tpm.is_none() || actual == taken.tokens {
            return false;
        }
        let delta = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(taken.tokens).unwrap_or(i64::MAX));
        let rest = match &mut self.books()[taken.class.index()].lease {
            Some(lease) if lease.id == taken.lease => lease.settle(delta),
            _ => delta,
        };
        if rest == 0 {
            return false;
        }
        self.give_back(vec![(taken.sec, 0, rest)]);
        !self.flush_scheduled.swap(true, Relaxed)
    }

    /// Writes the corrections no take has carried, a second from now and every second after
    /// while the bucket fails, until they are written or have left the window. What this
    /// instance admitted alone is among them: other instances must count it.
    pub async fn flush_later(&self, kv: &Bucket) {
        loop {
            tokio::time::sleep(CORRECTION_DELAY).await;
            self.flush_scheduled.store(false, Relaxed);
            if self.flush(kv).await {
                return;
            }
            let now_s = crate::cluster::wall_ms() / 1000;
            let owed = self.pending.lock().is_ok_and(|mut p| {
                p.retain(|c| c.0.saturating_add(SPAN_S) >= now_s);
                !p.is_empty()
            });
            // Another task (a take's, or a newer flush) may carry them already.
            if !owed || self.flush_scheduled.swap(true, Relaxed) {
                return;
            }
        }
    }

    /// One try at writing the pending corrections; `false` if they are still owed.
    pub(super) async fn flush(&self, kv: &Bucket) -> bool {
        let mut last = self.last.lock().await;
        let folded = self.take_pending();
        if folded.is_empty() {
            return true;
        }
        for _ in 0..8 {
            let (mut counters, revision) = match last.take() {
                Some(v) => v,
                None => match read(kv, &self.key).await {
                    Ok(v) => v,
                    Err(_) => break,
                },
            };
            apply(&mut counters, &folded, crate::cluster::wall_ms() / 1000);
            match write(kv, &self.key, &counters, revision).await {
                Ok(revision) => {
                    *last = Some((counters, revision));
                    return true;
                }
                Err(Write::Conflict) => continue,
                Err(Write::Failed(_)) => {
                    let mut folded = folded;
                    unsure(&mut folded);
                    self.give_back(folded);
                    return false;
                }
            }
        }
        self.give_back(folded);
        false
    }

    pub(super) fn take_pending(&self) -> Vec<Correction> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    pub(super) fn give_back(&self, folded: Vec<Correction>) {
        if !folded.is_empty()
            && let Ok(mut p) = self.pending.lock()
        {
            p.extend(folded);
        }
    }
}

/// Applies corrections to the seconds still in the window at `now_s` (the others no longer
/// count). A second the key does not hold gets what is added to it: an attempt admitted while the
/// bucket did not answer, or tokens beyond an estimate.
pub(super) fn apply(counters: &mut Counters, corrections: &[Correction], now_s: u64) {
    for &(sec, requests, tokens) in corrections {
        if sec.saturating_add(SPAN_S) < now_s {
            continue;
        }
        if let Some(c) = counters.iter_mut().find(|c| c.0 == sec) {
            c.1 = c.1.saturating_add_signed(requests);
            c.2 = c.2.saturating_add_signed(tokens);
        } else if requests > 0 || tokens > 0 {
            record(
                counters,
                sec,
                requests.max(0).unsigned_abs(),
                tokens.max(0).unsigned_abs(),
            );
        }
    }
}

/// After a write that failed: it may have been applied all the same (its answer lost with a dying
/// node, or timed out while the stream elected a leader). Giving back twice would free room no
/// lease gave back, so what it gave back is dropped, which errs low for at most a minute; what it
/// added (attempts admitted alone, tokens beyond an estimate) stays, as counting it twice errs low
/// too.
pub(super) fn unsure(folded: &mut Vec<Correction>) {
    for c in folded.iter_mut() {
        *c = (c.0, c.1.max(0), c.2.max(0));
    }
    folded.retain(|c| c.1 > 0 || c.2 > 0);
}
