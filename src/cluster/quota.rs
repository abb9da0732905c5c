//! Cluster-wide `rpm`/`tpm` (docs/contract.md §3: up to `rpm` requests and `tpm` tokens in ANY
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

#![warn(clippy::arithmetic_side_effects)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::oneshot;

use super::Write;

/// Seconds counted: the current one and the 60 before it.
const SPAN_S: u64 = 60;
/// CAS rounds before giving up on a busy key (then the attempt is judged locally).
const MAX_ROUNDS: u32 = 64;
/// How long what a take saw of the cluster's window is shown in status.
const SEEN_FRESH: Duration = Duration::from_secs(5);
/// How long a token correction waits for a take to carry it before it is written on its own.
const CORRECTION_DELAY: Duration = Duration::from_secs(1);

/// (unix second, requests, tokens), oldest first.
type Counters = Vec<(u64, u64, u64)>;

pub struct ClusterWindow {
    key: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    /// The value this instance last read or wrote, with its revision (0: the key is absent).
    /// Holding it is the deployment's turn to write.
    last: tokio::sync::Mutex<Option<(Counters, u64)>>,
    /// Attempts waiting for a slot; the next turn serves them all.
    queue: Mutex<Vec<Waiter>>,
    /// The cluster's requests and tokens in the window as this instance last read or wrote them,
    /// and when (unix ms), for status.
    seen_requests: AtomicU64,
    seen_tokens: AtomicU64,
    seen_at_ms: AtomicU64,
    /// Token corrections not written yet: (second, real usage − estimate).
    pending: Mutex<Vec<(u64, i64)>>,
    flush_scheduled: AtomicBool,
}

/// One attempt waiting for its slot.
struct Waiter {
    estimate: u64,
    /// (rpm, tpm) caps for this attempt (batch work: its share).
    caps: (Option<u64>, Option<u64>),
    reply: oneshot::Sender<Take>,
}

/// The answer a turn left for this attempt, if any.
fn answered(answer: &mut oneshot::Receiver<Take>) -> Option<Take> {
    answer.try_recv().ok()
}

/// A slot taken in the cluster window, to correct with real usage later.
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

impl ClusterWindow {
    /// `None` for a deployment without `rpm` or `tpm`: it pays no round trip.
    pub fn new(deployment: &str, rpm: Option<u64>, tpm: Option<u64>) -> Option<Self> {
        (rpm.is_some() || tpm.is_some()).then(|| Self {
            key: super::quota_key(deployment),
            rpm,
            tpm,
            last: tokio::sync::Mutex::new(None),
            queue: Mutex::new(Vec::new()),
            seen_requests: AtomicU64::new(0),
            seen_tokens: AtomicU64::new(0),
            seen_at_ms: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
        })
    }

    /// Takes one request and `estimate` tokens for the cluster, within `share` of each limit
    /// (batch work takes only its share).
    ///
    /// Attempts do not each pay a compare-and-swap of their own: an attempt queues its demand,
    /// and whichever attempt holds the deployment's turn takes the slots of every attempt
    /// queued so far in one write, then hands each its answer. So a deployment serves many
    /// attempts per KV round trip under load, and exactly one slot per attempt that asked.
    pub async fn take(&self, kv: &Store, estimate: u64, share: f64, timeout: Duration) -> Take {
        let cap = |l: u64| (l as f64 * share).floor() as u64;
        let (reply, mut answer) = oneshot::channel();
        if let Ok(mut q) = self.queue.lock() {
            q.push(Waiter {
                estimate,
                caps: (self.rpm.map(cap), self.tpm.map(cap)),
                reply,
            });
        }
        let turn = async {
            let mut last = self.last.lock().await;
            // An earlier turn may have served this attempt already.
            if let Some(t) = answered(&mut answer) {
                return t;
            }
            let batch = self
                .queue
                .lock()
                .map(|mut q| std::mem::take(&mut *q))
                .unwrap_or_default();
            self.serve(kv, batch, &mut last).await;
            answered(&mut answer)
                .unwrap_or_else(|| Take::Unshared("the cluster window lost this attempt".into()))
        };
        match tokio::time::timeout(timeout, turn).await {
            Ok(t) => t,
            Err(_) => Take::Unshared(format!("no answer from the bucket within {timeout:?}")),
        }
    }

    /// One turn: takes what fits of `batch` in one write and answers every waiter.
    async fn serve(&self, kv: &Store, batch: Vec<Waiter>, last: &mut Option<(Counters, u64)>) {
        if batch.is_empty() {
            return;
        }
        let folded = self.take_pending();
        let answers = self.take_rounds(kv, &batch, last, &folded).await;
        if !answers.iter().any(|t| matches!(t, Take::Taken(_))) {
            self.give_back(folded);
        }
        for (w, t) in batch.into_iter().zip(answers) {
            if let (Err(Take::Taken(t)), true) = (w.reply.send(t), self.tpm.is_some()) {
                // Its attempt gave up waiting: the slot goes unused; its tokens come back with
                // the next turn's write.
                if self.correct(t, 0) {
                    self.flush_scheduled.store(false, Relaxed);
                }
            }
        }
    }

    async fn take_rounds(
        &self,
        kv: &Store,
        batch: &[Waiter],
        last: &mut Option<(Counters, u64)>,
        folded: &[(u64, i64)],
    ) -> Vec<Take> {
        let mut fresh = false;
        for round in 0..MAX_ROUNDS {
            let (mut counters, revision) = match last.take() {
                Some(v) => v,
                None => match read(kv, &self.key).await {
                    Ok(v) => {
                        fresh = true;
                        v
                    }
                    Err(e) => return batch.iter().map(|_| Take::Unshared(e.clone())).collect(),
                },
            };
            let now_ms = super::wall_ms();
            let now_s = now_ms / 1000;
            counters.retain(|&(s, _, _)| s.saturating_add(SPAN_S) >= now_s);
            let base = (counters.clone(), revision);
            apply(&mut counters, folded);
            // The counters are what every instance wrote: summed without trusting them to be
            // small.
            let mut used = (
                counters.iter().map(|c| c.1).fold(0, u64::saturating_add),
                counters.iter().map(|c| c.2).fold(0, u64::saturating_add),
            );
            let (mut took, mut tokens) = (0u64, 0u64);
            let answers: Vec<Take> = batch
                .iter()
                .map(|w| {
                    let full = [
                        ("rpm", w.caps.0, 1, 1, used.0),
                        ("tpm", w.caps.1, w.estimate, 2, used.1),
                    ]
                    .into_iter()
                    .find_map(|(name, cap, amount, column, used)| {
                        let cap = cap?;
                        (used.saturating_add(amount) > cap).then(|| Take::Full {
                            limit: name,
                            retry_in: retry_in(&counters, column, used, amount, cap, now_ms),
                        })
                    });
                    full.unwrap_or_else(|| {
                        used = (used.0.saturating_add(1), used.1.saturating_add(w.estimate));
                        took = took.saturating_add(1);
                        tokens = tokens.saturating_add(w.estimate);
                        Take::Taken(Taken {
                            sec: now_s,
                            tokens: w.estimate,
                        })
                    })
                })
                .collect();
            let refused = took < batch.len() as u64;
            if refused && !fresh {
                // What this instance last saw may be old (tokens corrected down since): look
                // again before refusing.
                continue;
            }
            if took == 0 {
                self.saw(used, now_ms);
                *last = Some(base);
                return answers;
            }
            match counters.last_mut() {
                Some(c) if c.0 == now_s => {
                    c.1 = c.1.saturating_add(took);
                    c.2 = c.2.saturating_add(tokens);
                }
                _ => counters.push((now_s, took, tokens)),
            }
            match write(kv, &self.key, &counters, revision).await {
                Ok(revision) => {
                    self.saw(used, now_ms);
                    *last = Some((counters, revision));
                    return answers;
                }
                Err(Write::Conflict) => {
                    fresh = false;
                    if round > 2 {
                        // Another instance is writing too: step aside for a moment.
                        let us = rand::rng().random_range(0..500 * u64::from(round.min(8)));
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                }
                Err(Write::Failed(e)) => {
                    return batch.iter().map(|_| Take::Unshared(e.clone())).collect();
                }
            }
        }
        let why = format!("{} stayed busy for {MAX_ROUNDS} rounds", self.key);
        batch.iter().map(|_| Take::Unshared(why.clone())).collect()
    }

    fn saw(&self, (requests, tokens): (u64, u64), now_ms: u64) {
        self.seen_requests.store(requests, Relaxed);
        self.seen_tokens.store(tokens, Relaxed);
        self.seen_at_ms.store(now_ms, Relaxed);
    }

    /// The cluster's (requests, tokens) in the current window, as this instance saw them at its
    /// last take; `None` if that was more than `SEEN_FRESH` ago (the window has moved on since).
    pub fn seen(&self) -> Option<(u64, u64)> {
        let at = self.seen_at_ms.load(Relaxed);
        (at != 0 && super::wall_ms().saturating_sub(at) <= SEEN_FRESH.as_millis() as u64).then(
            || {
                (
                    self.seen_requests.load(Relaxed),
                    self.seen_tokens.load(Relaxed),
                )
            },
        )
    }

    /// Replaces a slot's token estimate with the real usage: carried by the next take, or
    /// written on its own after `CORRECTION_DELAY`. Returns whether the caller should spawn
    /// `flush_later` (no flush is scheduled yet).
    pub fn correct(&self, taken: Taken, actual: u64) -> bool {
        if self.tpm.is_none() || actual == taken.tokens {
            return false;
        }
        let delta = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(taken.tokens).unwrap_or(i64::MAX));
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
        freed = column_of(c, column).saturating_add(freed);
        if used.saturating_sub(freed).saturating_add(amount) <= cap {
            let leaves_at_ms = c.0.saturating_add(SPAN_S + 1).saturating_mul(1000);
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
