//! Cluster-wide `rpm`/`tpm` (contract section 3: up to `rpm` requests and `tpm` tokens in ANY
//! minute, bursts allowed — for the whole cluster, not per instance, which is how LiteLLM's
//! replicas end up multiplying a provider's limit).
//!
//! Each deployment with a limit has one key, `quota.<deployment>`, holding request and token
//! counts per wall-clock second for the last 61 seconds. An attempt, once its local actor has
//! admitted it, reads the key, checks that the sum of those 61 seconds leaves room, adds itself
//! to the current second and writes the key back with compare-and-swap on the revision it read
//! (`kv.update`), retrying on conflict. Counting the whole second of 60 s ago is what makes it
//! exact: an attempt at second `s` sees every attempt of seconds `s-60..=s`, which covers every
//! attempt less than 60 s before it, so no 60 s window ever holds more than the limit.
//!
//! Within one instance the attempts on one deployment take their turn (an async mutex per
//! deployment, not a global lock), so that conflicts only arise between instances, and the last
//! value written is kept so that the usual case costs one round trip (the CAS) instead of two.
//! Token corrections (real usage replacing the estimate) ride on the next take's write, or are
//! written on their own a second later when no take comes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use rand::Rng;

use super::Write;

/// Seconds counted: the current one and the 60 before it.
const SPAN_S: u64 = 60;
/// CAS rounds before giving up on a busy key (then the attempt is judged locally).
const MAX_ROUNDS: u32 = 64;
/// How long a token correction waits for a take to carry it before it is written on its own.
const CORRECTION_DELAY: Duration = Duration::from_secs(1);

/// (unix second, requests, tokens), oldest first.
type Counters = Vec<(u64, u64, u64)>;

pub struct SharedWindow {
    key: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    /// The value this instance last read or wrote, with its revision (0: the key is absent).
    last: tokio::sync::Mutex<Option<(Counters, u64)>>,
    /// Token corrections not written yet: (second, real usage − estimate).
    pending: Mutex<Vec<(u64, i64)>>,
    flush_scheduled: AtomicBool,
}

/// A slot taken in the shared window, to correct with real usage later.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    sec: u64,
    tokens: u64,
}

#[derive(Debug)]
pub enum Take {
    Taken(Taken),
    /// The cluster has spent this limit for the current minute.
    Full {
        limit: &'static str,
        retry_in: Duration,
    },
    /// The bucket did not answer in time (or at all): the attempt is judged by the local windows.
    Unshared(String),
}

impl SharedWindow {
    /// `None` for a deployment without `rpm` or `tpm`: it pays no round trip.
    pub fn new(deployment: &str, rpm: Option<u64>, tpm: Option<u64>) -> Option<Self> {
        (rpm.is_some() || tpm.is_some()).then(|| Self {
            key: super::quota_key(deployment),
            rpm,
            tpm,
            last: tokio::sync::Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
        })
    }

    /// Takes one request and `estimate` tokens for the cluster, within `share` of each limit
    /// (batch work takes only its share).
    pub async fn take(&self, kv: &Store, estimate: u64, share: f64, timeout: Duration) -> Take {
        let cap = |l: u64| (l as f64 * share).floor() as u64;
        let caps = (self.rpm.map(cap), self.tpm.map(cap));
        match tokio::time::timeout(timeout, self.take_inner(kv, estimate, caps)).await {
            Ok(t) => t,
            Err(_) => Take::Unshared(format!("no answer from the bucket within {timeout:?}")),
        }
    }

    async fn take_inner(
        &self,
        kv: &Store,
        estimate: u64,
        (rpm, tpm): (Option<u64>, Option<u64>),
    ) -> Take {
        let mut last = self.last.lock().await;
        let folded = self.take_pending();
        let taken = self
            .take_rounds(kv, estimate, (rpm, tpm), &mut last, &folded)
            .await;
        if !matches!(taken, Take::Taken(_)) {
            self.give_back(folded);
        }
        taken
    }

    async fn take_rounds(
        &self,
        kv: &Store,
        estimate: u64,
        (rpm, tpm): (Option<u64>, Option<u64>),
        last: &mut Option<(Counters, u64)>,
        folded: &[(u64, i64)],
    ) -> Take {
        let mut fresh = false;
        for round in 0..MAX_ROUNDS {
            let (mut counters, revision) = match last.take() {
                Some(v) => v,
                None => match read(kv, &self.key).await {
                    Ok(v) => {
                        fresh = true;
                        v
                    }
                    Err(e) => return Take::Unshared(e),
                },
            };
            let now_ms = super::wall_ms();
            let now_s = now_ms / 1000;
            counters.retain(|&(s, _, _)| s + SPAN_S >= now_s);
            let base = (counters.clone(), revision);
            apply(&mut counters, folded);
            let full = [("rpm", rpm, 1, 1usize), ("tpm", tpm, estimate, 2usize)]
                .into_iter()
                .find_map(|(name, cap, amount, column)| {
                    let cap = cap?;
                    let used: u64 = counters.iter().map(|c| column_of(c, column)).sum();
                    (used + amount > cap)
                        .then(|| (name, retry_in(&counters, column, used, amount, cap, now_ms)))
                });
            if let Some((limit, retry_in)) = full {
                if !fresh {
                    // What this instance last saw may be old (tokens corrected down since):
                    // look again before refusing.
                    continue;
                }
                *last = Some(base);
                return Take::Full { limit, retry_in };
            }
            match counters.last_mut() {
                Some(c) if c.0 == now_s => {
                    c.1 += 1;
                    c.2 += estimate;
                }
                _ => counters.push((now_s, 1, estimate)),
            }
            match write(kv, &self.key, &counters, revision).await {
                Ok(revision) => {
                    *last = Some((counters, revision));
                    return Take::Taken(Taken {
                        sec: now_s,
                        tokens: estimate,
                    });
                }
                Err(Write::Conflict) => {
                    fresh = false;
                    if round > 2 {
                        // Another instance is writing too: step aside for a moment.
                        let us = rand::rng().random_range(0..500 * u64::from(round.min(8)));
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                }
                Err(Write::Failed(e)) => return Take::Unshared(e),
            }
        }
        Take::Unshared(format!("{} stayed busy for {MAX_ROUNDS} rounds", self.key))
    }

    /// Replaces a slot's token estimate with the real usage: carried by the next take, or
    /// written on its own after `CORRECTION_DELAY`. Returns whether the caller should spawn
    /// `flush_later` (no flush is scheduled yet).
    pub fn correct(&self, taken: Taken, actual: u64) -> bool {
        if self.tpm.is_none() || actual == taken.tokens {
            return false;
        }
        let delta = actual as i64 - taken.tokens as i64;
        if let Ok(mut p) = self.pending.lock() {
            p.push((taken.sec, delta));
        }
        !self.flush_scheduled.swap(true, Relaxed)
    }

    /// Writes the corrections no take has carried. Best effort: a failure leaves the estimates,
    /// which err on the safe side when they were high.
    pub async fn flush_later(&self, kv: &Store) {
        tokio::time::sleep(CORRECTION_DELAY).await;
        self.flush_scheduled.store(false, Relaxed);
        let mut last = self.last.lock().await;
        let folded = self.take_pending();
        if folded.is_empty() {
            return;
        }
        for _ in 0..8 {
            let (mut counters, revision) = match last.take() {
                Some(v) => v,
                None => match read(kv, &self.key).await {
                    Ok(v) => v,
                    Err(_) => return,
                },
            };
            apply(&mut counters, &folded);
            match write(kv, &self.key, &counters, revision).await {
                Ok(revision) => {
                    *last = Some((counters, revision));
                    return;
                }
                Err(Write::Conflict) => continue,
                Err(Write::Failed(_)) => return,
            }
        }
    }

    fn take_pending(&self) -> Vec<(u64, i64)> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    fn give_back(&self, folded: Vec<(u64, i64)>) {
        if !folded.is_empty()
            && let Ok(mut p) = self.pending.lock()
        {
            p.extend(folded);
        }
    }
}

/// Applies token corrections to the seconds still in the window (the others no longer count).
fn apply(counters: &mut Counters, corrections: &[(u64, i64)]) {
    for &(sec, delta) in corrections {
        if let Some(c) = counters.iter_mut().find(|c| c.0 == sec) {
            c.2 = c.2.saturating_add_signed(delta);
        }
    }
}

fn column_of(c: &(u64, u64, u64), column: usize) -> u64 {
    if column == 1 { c.1 } else { c.2 }
}

/// How long until enough old seconds leave the window for `amount` to fit under `cap`.
fn retry_in(
    counters: &Counters,
    column: usize,
    used: u64,
    amount: u64,
    cap: u64,
    now_ms: u64,
) -> Duration {
    if amount > cap {
        return Duration::from_secs(SPAN_S);
    }
    let mut freed = 0;
    for c in counters {
        freed += column_of(c, column);
        if used - freed + amount <= cap {
            let leaves_at_ms = (c.0 + SPAN_S + 1) * 1000;
            return Duration::from_millis(leaves_at_ms.saturating_sub(now_ms));
        }
    }
    Duration::from_secs(SPAN_S)
}

async fn read(kv: &Store, key: &str) -> Result<(Counters, u64), String> {
    match kv.entry(key).await {
        Ok(Some(e)) if !e.value.is_empty() => {
            let counters = serde_json::from_slice(&e.value).unwrap_or_default();
            Ok((counters, e.revision))
        }
        // Absent, or deleted/purged: start afresh on the revision that removed it.
        Ok(Some(e)) => Ok((Vec::new(), e.revision)),
        Ok(None) => Ok((Vec::new(), 0)),
        Err(e) => Err(format!("cannot read {key}: {e}")),
    }
}

async fn write(kv: &Store, key: &str, counters: &Counters, revision: u64) -> Result<u64, Write> {
    let value = Bytes::from(serde_json::to_vec(counters).unwrap_or_default());
    super::cas(kv, key, value, revision).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_apply_to_seconds_still_counted() {
        let mut counters = vec![(100, 2, 500), (101, 1, 300)];
        apply(
            &mut counters,
            &[(100, -200), (101, 50), (99, -1000), (101, -1000)],
        );
        assert_eq!(counters, vec![(100, 2, 300), (101, 1, 0)]);
    }

    #[test]
    fn room_comes_back_when_the_oldest_seconds_leave() {
        let counters = vec![(100, 30, 0), (130, 30, 0)];
        // At 150.5 s, 60 used of 60: the second 100 stops counting at 161 s.
        assert_eq!(
            retry_in(&counters, 1, 60, 1, 60, 150_500),
            Duration::from_millis(10_500)
        );
        assert_eq!(
            retry_in(&counters, 1, 60, 31, 60, 150_500),
            Duration::from_millis(40_500)
        );
        assert_eq!(
            retry_in(&counters, 1, 60, 61, 60, 150_500),
            Duration::from_secs(60)
        );
    }
}
