//! Cluster-wide `rpm`/`tpm` (docs/contract.md §3: up to `rpm` requests and `tpm` tokens in ANY
//! minute, bursts allowed — for the whole cluster, not per instance, which is how LiteLLM's
//! replicas end up multiplying a provider's limit).
//!
//! Each deployment with a limit has one key, `quota.<deployment>`, holding request and token
//! counts per wall-clock second for the last minute. An instance does not write there for every
//! attempt: it takes capacity in leases (as Google's Doorman and Envoy's RLQS hand out quota). One
//! compare-and-swap on the key (`Bucket::cas` on the revision read, retried on conflict) reserves a
//! block of requests and tokens; the attempts of this instance spend it locally, under a std mutex
//! per deployment that is never held across an await, until the block runs out or `LEASE_LIFE`
//! has passed. Whatever a lease did not spend goes back to the key as a negative correction.
//!
//! Why no 60 s window ever holds more than the limit: a lease reserved at wall time `r` may be
//! spent only until `r + LEASE_LIFE` and is recorded at the second it expires in,
//! `⌊r + LEASE_LIFE⌋` — never earlier than a second it is spent in. A reservation sees every
//! second from 60 before its own onwards (later ones included), and fits under the cap with all of
//! them. Among the leases spent within any 60 s window, the last one written was reserved before
//! its own spending, so less than 60 s after every other lease's spending in the window, and so
//! not more than 60 s after the second any of them is recorded at: it saw them all, and together
//! they reserve at most the cap. A lease gives back only what it did not spend, once it is closed
//! and can no longer be spent.
//!
//! Sizing (`lease.rs`, with the lease itself): a lease is the demand queued right now plus a
//! prefetch of about twice what the previous lease spent (none after a quiet `LEASE_LIFE`), so it
//! grows with demand and shrinks when idle. The prefetch takes at most a quarter of the room left,
//! and none once less than a quarter of the cap is left: near the limit every lease is exactly its
//! demand, as exact as one write per attempt, and far from it one write serves many attempts.
//! What one instance holds and does not spend goes back when its lease closes, so a quiet instance
//! does not starve a busy one for longer than a lease's life and a correction's delay.
//!
//! Within one instance the attempts that find no lease take their turn (an async mutex per
//! deployment, not a global lock): whichever holds the turn serves every attempt queued so far in
//! one write, and the last value written is kept so that the usual case costs one round trip (the
//! CAS) instead of two. Corrections — what a closed lease gives back, real token usage replacing
//! an estimate — ride on the next write, or are written on their own a second later.
//!
//! When the bucket fails (no leader while its stream elects one, a timeout, no responders while
//! the client moves to another node) a turn reads and writes again, backing off from
//! `FIRST_PAUSE` to `LAST_PAUSE`, for as long as the attempt's budget (`sync_timeout`) allows:
//! an election usually ends within it, and the count stays exact. An attempt still unanswered
//! then is judged by this instance alone within its fair share of each limit (`share.rs`), and
//! what that admits is added to the bucket once it answers. The attempt never waits longer than
//! `sync_timeout` for the bucket, and never goes on against the whole limit while the bucket
//! handle is set; only without NATS (no handle at all) does each instance keep its own windows.

#![warn(clippy::arithmetic_side_effects)]

mod corrections;
mod lease;
mod share;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::oneshot;

use super::{Bucket, Write};
use corrections::{apply, unsure};
use lease::{
    Book, CLASSES, Class, Correction, LEASE_LIFE, Lease, lease_second, negative, prefetch,
};
use share::Share;

/// Seconds counted: the current one and the 60 before it.
const SPAN_S: u64 = 60;
/// CAS rounds before giving up on a busy key (then the attempt is judged locally).
const MAX_ROUNDS: u32 = 64;
/// How long what a take saw of the cluster's window is shown in status.
const SEEN_FRESH: Duration = Duration::from_secs(5);
/// How long a correction waits for a take to carry it before it is written on its own.
const CORRECTION_DELAY: Duration = Duration::from_secs(1);
/// The first and the longest pause before asking a failing bucket again.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const LAST_PAUSE: Duration = Duration::from_millis(400);
/// The longest `retry_in` of an attempt refused by its instance alone: about an election's length.
const ALONE_RETRY: Duration = Duration::from_secs(5);

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
    /// This instance's open lease and sizing memory, per class.
    books: Mutex<[Book; 2]>,
    next_lease: AtomicU64,
    /// The cluster's requests and tokens in the window as this instance last read or wrote them
    /// (reservations included, spent or not), and when (unix ms), for status.
    seen_requests: AtomicU64,
    seen_tokens: AtomicU64,
    seen_at_ms: AtomicU64,
    /// Corrections not written yet.
    pending: Mutex<Vec<Correction>>,
    flush_scheduled: AtomicBool,
    /// What this instance admitted, and its share of the limits when the bucket does not answer.
    share: Mutex<Share>,
}

/// What one attempt asks of the window.
#[derive(Debug, Clone, Copy)]
struct Ask {
    class: Class,
    estimate: u64,
    /// (rpm, tpm) caps for this attempt (batch work: its share).
    caps: (Option<u64>, Option<u64>),
}

/// One attempt waiting for its slot.
struct Waiter {
    ask: Ask,
    reply: oneshot::Sender<Take>,
}

/// The answer a turn left for this attempt, if any.
fn answered(answer: &mut oneshot::Receiver<Take>) -> Option<Take> {
    answer.try_recv().ok()
}

/// A slot taken in the cluster window, to correct with real usage later.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// The second its lease is recorded at.
    sec: u64,
    tokens: u64,
    class: Class,
    lease: u64,
}

#[derive(Debug)]
pub enum Take {
    Taken(Taken),
    /// The cluster has spent this limit for the current minute.
    Full {
        limit: &'static str,
        retry_in: Duration,
    },
    /// The bucket did not answer in time (or at all). `take` does not answer this: it judges the
    /// attempt within this instance's fair share instead (`share.rs`), and answers `Taken` or
    /// `Full`.
    Unshared(String),
}

/// What one round reserves, decided from the counters it read.
#[derive(Debug)]
struct Plan {
    /// Per ask: `None` if it fits, else the limit it would break and when it would fit.
    refusals: Vec<Option<(&'static str, Duration)>>,
    /// Per class: the demand that fits and the prefetch, each (requests, tokens).
    leases: [Option<Reserve>; 2],
    /// The cluster's use once this is written.
    used: (u64, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reserve {
    demand: (u64, u64),
    prefetch: (u64, u64),
}

impl Reserve {
    fn total(&self) -> (u64, u64) {
        (
            self.demand.0.saturating_add(self.prefetch.0),
            self.demand.1.saturating_add(self.prefetch.1),
        )
    }
}

/// Decides one round: each ask in turn takes its slot if it fits under its caps with everything
/// counted so far, then each class that took any gets a prefetch — none for a class that had to
/// refuse one, which is at its limit.
fn plan(counters: &Counters, now_ms: u64, asks: &[Ask], wanted: [(u64, u64); 2]) -> Plan {
    // The counters are what every instance wrote: summed without trusting them to be small.
    let mut used = (
        counters.iter().map(|c| c.1).fold(0, u64::saturating_add),
        counters.iter().map(|c| c.2).fold(0, u64::saturating_add),
    );
    let mut demand = [(0u64, 0u64); 2];
    let mut refused = [false; 2];
    let mut caps = [None; 2];
    let mut refusals = Vec::with_capacity(asks.len());
    for a in asks {
        let i = a.class.index();
        caps[i].get_or_insert(a.caps);
        let full = [
            ("rpm", a.caps.0, 1, 1, used.0),
            ("tpm", a.caps.1, a.estimate, 2, used.1),
        ]
        .into_iter()
        .find_map(|(name, cap, amount, column, used)| {
            let cap = cap?;
            (used.saturating_add(amount) > cap)
                .then(|| (name, retry_in(counters, column, used, amount, cap, now_ms)))
        });
        if full.is_some() {
            refused[i] = true;
        } else {
            used = (used.0.saturating_add(1), used.1.saturating_add(a.estimate));
            demand[i] = (
                demand[i].0.saturating_add(1),
                demand[i].1.saturating_add(a.estimate),
            );
        }
        refusals.push(full);
    }
    let mut leases = [None, None];
    for class in CLASSES {
        let i = class.index();
        let Some(caps) = caps[i].filter(|_| demand[i].0 > 0) else {
            continue;
        };
        let extra = if refused[i] {
            (0, 0)
        } else {
            prefetch(wanted[i].0, wanted[i].1, used, caps)
        };
        used = (
            used.0.saturating_add(extra.0),
            used.1.saturating_add(extra.1),
        );
        leases[i] = Some(Reserve {
            demand: demand[i],
            prefetch: extra,
        });
    }
    Plan {
        refusals,
        leases,
        used,
    }
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
            books: Mutex::new(Default::default()),
            next_lease: AtomicU64::new(1),
            seen_requests: AtomicU64::new(0),
            seen_tokens: AtomicU64::new(0),
            seen_at_ms: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
            share: Mutex::new(Share::default()),
        })
    }

    /// Takes one request and `estimate` tokens for the cluster, within `share` of each limit
    /// (batch work takes only its share).
    ///
    /// The usual case spends this instance's lease and answers without waiting. An attempt that
    /// finds none valid and big enough queues its demand, and whichever attempt holds the
    /// deployment's turn serves every attempt queued so far: from a lease made meanwhile, or with
    /// a new lease for all of them (and the prefetch) in one write. Each lease spawns one task
    /// that gives back what it left when it expires.
    pub async fn take(
        self: &Arc<Self>,
        kv: &Arc<Bucket>,
        estimate: u64,
        share: f64,
        timeout: Duration,
    ) -> Take {
        let class = Class::of(share);
        if let Some(t) = self.spend(class, estimate) {
            self.share().admitted(estimate, super::wall_ms());
            return Take::Taken(t);
        }
        // On the heap: the bucket's round trip is a large future, and held inline it would make
        // every attempt's future (and each one that awaits it, up to the request's task) as
        // large, copied whole at each level on every request, lease or not.
        Box::pin(self.take_from_bucket(kv, class, estimate, share, timeout)).await
    }

    /// `take` when the lease has no room: a turn at the bucket, shared with the attempts queued.
    async fn take_from_bucket(
        self: &Arc<Self>,
        kv: &Arc<Bucket>,
        class: Class,
        estimate: u64,
        share: f64,
        timeout: Duration,
    ) -> Take {
        let cap = |l: u64| (l as f64 * share).floor() as u64;
        let ask = Ask {
            class,
            estimate,
            caps: (self.rpm.map(cap), self.tpm.map(cap)),
        };
        let deadline = Instant::now().checked_add(timeout);
        let (reply, mut answer) = oneshot::channel();
        if let Ok(mut q) = self.queue.lock() {
            q.push(Waiter { ask, reply });
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
            self.serve(kv, batch, &mut last, deadline).await;
            answered(&mut answer)
                .unwrap_or_else(|| Take::Unshared("the cluster window lost this attempt".into()))
        };
        let take = match tokio::time::timeout(timeout, turn).await {
            Ok(t) => t,
            Err(_) => Take::Unshared(format!("no answer from the bucket within {timeout:?}")),
        };
        match take {
            Take::Taken(t) => {
                self.share().admitted(estimate, super::wall_ms());
                Take::Taken(t)
            }
            Take::Full { limit, retry_in } => Take::Full { limit, retry_in },
            Take::Unshared(why) => self.alone(kv, ask, &why),
        }
    }

    /// Judges an attempt the bucket did not answer within this instance's share of the limits,
    /// and owes what it admits to the bucket.
    fn alone(self: &Arc<Self>, kv: &Arc<Bucket>, ask: Ask, why: &str) -> Take {
        let now_ms = super::wall_ms();
        let judged = self.share().judge(ask.caps, ask.estimate, now_ms);
        match judged {
            Ok(()) => {
                tracing::warn!(key = %self.key, %why, "bucket unanswered: judged within this instance's share");
                let sec = now_ms / 1000;
                self.give_back(vec![(
                    sec,
                    1,
                    i64::try_from(ask.estimate).unwrap_or(i64::MAX),
                )]);
                self.flush_soon(kv);
                Take::Taken(Taken {
                    sec,
                    tokens: ask.estimate,
                    class: ask.class,
                    // No lease has id 0: a correction of its tokens is written, not settled.
                    lease: 0,
                })
            }
            Err((limit, retry_in)) => {
                tracing::warn!(key = %self.key, %why, limit, "bucket unanswered: this instance's share is spent");
                // The bucket, likely back by then, may well have room sooner than this
                // instance's share does.
                Take::Full {
                    limit,
                    retry_in: retry_in.min(ALONE_RETRY),
                }
            }
        }
    }

    fn share(&self) -> MutexGuard<'_, Share> {
        // Its counts change by saturating arithmetic alone: a poisoned lock is a consistent one.
        self.share.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The leases of every class. A panic cannot leave one half-updated (its fields change by
    /// saturating arithmetic alone), so a poisoned lock is still a consistent one.
    fn books(&self) -> MutexGuard<'_, [Book; 2]> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fast path: one slot from this instance's lease, if it holds one.
    fn spend(&self, class: Class, estimate: u64) -> Option<Taken> {
        let now = Instant::now();
        let mut books = self.books();
        let lease = books[class.index()].lease.as_mut()?;
        lease
            .spend(estimate, self.tpm.is_some(), now)
            .then_some(Taken {
                sec: lease.sec,
                tokens: estimate,
                class,
                lease: lease.id,
            })
    }

    /// One turn: serves `batch` from the open leases where they suffice, and the rest with a new
    /// lease per class in one write, then answers every waiter.
    async fn serve(
        self: &Arc<Self>,
        kv: &Arc<Bucket>,
        batch: Vec<Waiter>,
        last: &mut Option<(Counters, u64)>,
        deadline: Option<Instant>,
    ) {
        // A lease made since these attempts queued may cover them. One that stopped waiting (past
        // its `sync_timeout`) is still reserved: it was judged alone, and the bucket counting it
        // now, before its own correction lands, keeps the other instances from spending it (an
        // attempt refused alone is counted too, which errs low after a long election).
        let mut rest = Vec::new();
        for w in batch {
            match self.spend(w.ask.class, w.ask.estimate) {
                // A waiter gone meanwhile timed out and goes on under the local limits alone (or
                // its request was dropped): its slot stays spent, which errs on the safe side (so
                // in every send below).
                Some(t) => {
                    let _ = w.reply.send(Take::Taken(t));
                }
                None => rest.push(w),
            }
        }
        if rest.is_empty() {
            return;
        }
        // The classes that need a new lease close theirs first, so that what it left rides on the
        // write and nothing spends it after.
        let now = Instant::now();
        let mut folded = self.take_pending();
        let mut wanted = [(0, 0); 2];
        {
            let mut books = self.books();
            for class in CLASSES {
                if !rest.iter().any(|w| w.ask.class == class) {
                    continue;
                }
                let book = &mut books[class.index()];
                if let Some(lease) = book.lease.take() {
                    let (back, spent) = lease.close(now);
                    folded.extend(back);
                    book.last = spent;
                }
                wanted[class.index()] = book.last.wanted(now);
            }
        }
        let asks: Vec<Ask> = rest.iter().map(|w| w.ask).collect();
        let (answers, leases) = self
            .take_rounds(kv, &asks, wanted, last, &mut folded, deadline)
            .await;
        if !folded.is_empty() {
            self.give_back(folded);
            self.flush_soon(kv);
        }
        for (class, lease) in leases {
            self.open(kv, class, lease);
        }
        for (w, t) in rest.into_iter().zip(answers) {
            let _ = w.reply.send(t);
        }
    }

    /// Rounds of read, plan and compare-and-swap until one is written. `folded` holds the
    /// corrections to write with it; what is left there on return was not written. A failed read
    /// or write is tried again after a pause while `deadline` allows.
    async fn take_rounds(
        &self,
        kv: &Bucket,
        asks: &[Ask],
        wanted: [(u64, u64); 2],
        last: &mut Option<(Counters, u64)>,
        folded: &mut Vec<Correction>,
        deadline: Option<Instant>,
    ) -> (Vec<Take>, Vec<(Class, Lease)>) {
        let unshared = |why: &str| asks.iter().map(|_| Take::Unshared(why.into())).collect();
        let mut fresh = false;
        let mut pause = FIRST_PAUSE;
        for round in 0..MAX_ROUNDS {
            let (mut counters, revision) = match last.take() {
                Some(v) => v,
                None => match read(kv, &self.key).await {
                    Ok(v) => {
                        fresh = true;
                        v
                    }
                    Err(e) => {
                        if again(&mut pause, deadline).await {
                            continue;
                        }
                        return (unshared(&e), Vec::new());
                    }
                },
            };
            let now_ms = super::wall_ms();
            let until = Instant::now().checked_add(LEASE_LIFE);
            let now_s = now_ms / 1000;
            // Seconds ahead of now are leases still being spent: they stay and count.
            counters.retain(|&(s, _, _)| s.saturating_add(SPAN_S) >= now_s);
            let base = (counters.clone(), revision);
            apply(&mut counters, folded, now_s);
            let plan = plan(&counters, now_ms, asks, wanted);
            if plan.refusals.iter().any(Option::is_some) && !fresh {
                // What this instance last saw may be old (leases given back since): look again
                // before refusing.
                continue;
            }
            let (requests, tokens) = plan
                .leases
                .iter()
                .flatten()
                .map(Reserve::total)
                .fold((0u64, 0u64), |a, t| {
                    (a.0.saturating_add(t.0), a.1.saturating_add(t.1))
                });
            let sec = lease_second(now_ms);
            if requests == 0 {
                // Every ask was refused: nothing to write.
                self.saw(plan.used, (0, 0), now_ms);
                *last = Some(base);
                return (answers(asks, &plan, sec, [0; 2]), Vec::new());
            }
            let Some(until) = until else {
                return (unshared("no lease can end that late"), Vec::new());
            };
            record(&mut counters, sec, requests, tokens);
            match write(kv, &self.key, &counters, revision).await {
                Ok(revision) => {
                    folded.clear();
                    *last = Some((counters, revision));
                    if Instant::now() >= until {
                        // The write took longer than a lease's life: spending it now would be
                        // after the second it is recorded at. Give it back and reserve again.
                        folded.push((sec, negative(requests), negative(tokens)));
                        continue;
                    }
                    // This instance's part of what it saw: the demand it served now, not the
                    // prefetch it may give back (which would overstate its fair share).
                    let demand = plan.leases.iter().flatten().fold((0u64, 0u64), |a, r| {
                        (
                            a.0.saturating_add(r.demand.0),
                            a.1.saturating_add(r.demand.1),
                        )
                    });
                    self.saw(plan.used, demand, now_ms);
                    let mut ids = [0; 2];
                    let mut leases = Vec::new();
                    for class in CLASSES {
                        if let Some(r) = plan.leases[class.index()] {
                            let id = self.next_lease.fetch_add(1, Relaxed);
                            ids[class.index()] = id;
                            leases.push((
                                class,
                                Lease {
                                    id,
                                    sec,
                                    until,
                                    requests: r.prefetch.0,
                                    tokens: r.prefetch.1,
                                    spent: r.demand,
                                },
                            ));
                        }
                    }
                    return (answers(asks, &plan, sec, ids), leases);
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
                    unsure(folded);
                    if !again(&mut pause, deadline).await {
                        return (unshared(&e), Vec::new());
                    }
                }
            }
        }
        let why = format!("{} stayed busy for {MAX_ROUNDS} rounds", self.key);
        (unshared(&why), Vec::new())
    }

    /// Makes `lease` the class's open lease, and has what it leaves given back when it expires.
    fn open(self: &Arc<Self>, kv: &Arc<Bucket>, class: Class, lease: Lease) {
        let (id, until) = (lease.id, lease.until);
        let replaced = self.books()[class.index()].lease.replace(lease);
        // Only a turn opens leases and it closed this class's first; were one there, its leftovers
        // would still be owed back.
        if let Some(old) = replaced {
            let (back, _) = old.close(Instant::now());
            self.give_back(back.into_iter().collect());
            self.flush_soon(kv);
        }
        let (window, kv) = (self.clone(), kv.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            if window.expire(class, id) {
                window.flush_later(&kv).await;
            }
        });
    }

    /// Closes the class's lease if it is still lease `id`; returns whether a flush should be
    /// spawned for what it left (something is owed back and no flush is scheduled yet).
    fn expire(&self, class: Class, id: u64) -> bool {
        let back = {
            let mut books = self.books();
            let book = &mut books[class.index()];
            // A turn may have closed it already and opened another.
            let Some(lease) = book.lease.take_if(|l| l.id == id) else {
                return false;
            };
            let (back, spent) = lease.close(Instant::now());
            book.last = spent;
            back
        };
        match back {
            Some(c) => {
                self.give_back(vec![c]);
                !self.flush_scheduled.swap(true, Relaxed)
            }
            None => false,
        }
    }

    fn flush_soon(self: &Arc<Self>, kv: &Arc<Bucket>) {
        if !self.flush_scheduled.swap(true, Relaxed) {
            let (window, kv) = (self.clone(), kv.clone());
            tokio::spawn(async move { window.flush_later(&kv).await });
        }
    }

    /// What a take saw of the cluster's window, `ours` of it the demand its own write served.
    fn saw(&self, (requests, tokens): (u64, u64), ours: (u64, u64), now_ms: u64) {
        self.share().saw((requests, tokens), ours, now_ms);
        self.seen_requests.store(requests, Relaxed);
        self.seen_tokens.store(tokens, Relaxed);
        self.seen_at_ms.store(now_ms, Relaxed);
    }

    /// The cluster's (requests, tokens) in the current window, as this instance saw them at its
    /// last write (or refused take): reservations count in full, spent or not, until they are
    /// given back. `None` if that was more than `SEEN_FRESH` ago (the window has moved on since).
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
}

/// Each ask's answer from `plan`: its refusal, or its slot in its class's lease (`ids`), recorded
/// at `sec`.
fn answers(asks: &[Ask], plan: &Plan, sec: u64, ids: [u64; 2]) -> Vec<Take> {
    asks.iter()
        .zip(&plan.refusals)
        .map(|(a, refusal)| match *refusal {
            Some((limit, retry_in)) => Take::Full { limit, retry_in },
            None => Take::Taken(Taken {
                sec,
                tokens: a.estimate,
                class: a.class,
                lease: ids[a.class.index()],
            }),
        })
        .collect()
}

/// Sleeps `pause` (doubled for next time, up to `LAST_PAUSE`) if asking again after it is still
/// within `deadline`; `false` if not.
async fn again(pause: &mut Duration, deadline: Option<Instant>) -> bool {
    let jitter = Duration::from_millis(rand::rng().random_range(0..=pause.as_millis() as u64 / 2));
    let wait = pause.saturating_add(jitter);
    let fits = deadline
        .and_then(|d| Instant::now().checked_add(wait).map(|at| at < d))
        .unwrap_or(false);
    if fits {
        tokio::time::sleep(wait).await;
        *pause = pause.saturating_mul(2).min(LAST_PAUSE);
    }
    fits
}

/// Adds a reservation to its second, keeping the seconds in order (another instance's clock may
/// have written a later one already).
fn record(counters: &mut Counters, sec: u64, requests: u64, tokens: u64) {
    match counters.iter().position(|c| c.0 >= sec) {
        Some(i) if counters[i].0 == sec => {
            let c = &mut counters[i];
            c.1 = c.1.saturating_add(requests);
            c.2 = c.2.saturating_add(tokens);
        }
        Some(i) => counters.insert(i, (sec, requests, tokens)),
        None => counters.push((sec, requests, tokens)),
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

async fn read(kv: &Bucket, key: &str) -> Result<(Counters, u64), String> {
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

async fn write(kv: &Bucket, key: &str, counters: &Counters, revision: u64) -> Result<u64, Write> {
    let value = Bytes::from(serde_json::to_vec(counters).unwrap_or_default());
    kv.cas(key, value, revision).await
}

#[cfg(test)]
mod tests;
