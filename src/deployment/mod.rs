//! The deployment actor: one per `[[deployments]]` entry. It owns that deployment's limits
//! (`rpm`/`tpm` windows and `Retry-After` cool-down), circuit breaker, in-flight count and latency
//! stats, and decides whether a call may go out.
//!
//! Its handler never awaits a provider. `Admit` checks the cool-down, breaker and limits, takes
//! the reservation and answers at once with a `Permit` (or why the call is skipped). The call
//! itself runs in the request's own task — already spawned by the ingress, so no second task and
//! no extra wake-up per attempt — and `call` reports the outcome back as `Finished`, which
//! updates the breaker, limits and stats. A guard sends `Finished` even if the request's task is
//! dropped mid-call, so in-flight counts and half-open probes are never leaked. What routing needs
//! on every request (circuit state, in-flight, latency, usage) is published in `Published` atomics,
//! so the router reads it without a mailbox round trip.
//!
//! In a cluster (`crate::cluster`) the actor hands its breaker's openings and closings and its
//! cool-downs to the cluster link, and is told other instances' as `Msg::Remote`; a deployment
//! with `rpm`/`tpm` also takes its slot in the cluster-wide window, in the request's task, once
//! the actor has admitted the call.
//!
//! The mailbox is ractor's, which has no bound; it cannot grow without one here because every
//! message has a bounded source: each attempt sends one `Admit` and one `Finished`, and attempts
//! in flight are bounded by `limits.max_in_flight` (synchronous requests), `[jobs] concurrency`
//! and each batch's `concurrency`; `Remote` comes from the one cluster sync task per record it
//! reads, `Snapshot` and `Window` from status and the alert task, which wait for each answer
//! before asking again, and `Tick` is one timer per breaker opening.

pub mod breaker;
mod call;
mod decision;
pub mod limiter;
mod published;
mod slot;
pub mod stats;
pub mod supervisor;

pub use call::{Attempt, CallArgs, call, call_stream};
pub use decision::{Decision, FailurePolicy};
pub use published::{LATENCY_FRESH, Published};
pub use slot::Slot;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tracing::{info, warn};

use self::breaker::{Admission, Breaker, CircuitState, Transition};
use self::limiter::{Ticket, WindowBudget};
use self::stats::{Sample, Stats, WindowFigures};
use crate::cluster::quota::ClusterWindow;
use crate::cluster::{self, Link, Publish, Remote};
use crate::config::BreakerConfig;
use crate::observe::events::{Event, EventBus, now_rfc3339};
use crate::observe::status::{DeploymentStatus, LatencyMs};
use crate::providers::{Adapter, Failure, simulated};

/// Everything a deployment actor is started with; kept by the supervisor to restart it.
#[derive(Clone)]
pub struct Args {
    pub adapter: Arc<Adapter>,
    pub breaker: Arc<BreakerConfig>,
    /// What a failed call means: fall back or stop, count for the breaker, cool down.
    pub policy: Arc<dyn FailurePolicy>,
    pub published: Arc<Published>,
    pub events: EventBus,
    pub instance: Arc<str>,
    pub name: Arc<str>,
    /// Share of `rpm`/`tpm` that batch work may use (`1 - batch.live_reserve`).
    pub batch_share: f64,
    /// What this instance shares with the others of its cluster.
    pub cluster: Arc<Link>,
    /// The cluster-wide `rpm`/`tpm` window; `None` without limits.
    pub quota: Option<Arc<ClusterWindow>>,
}

/// Why the actor did not call its provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    CircuitOpen,
    CoolingDown(Duration),
    /// `rpm` or `tpm` is spent for the current minute.
    AtLimit {
        limit: &'static str,
        retry_in: Duration,
    },
    /// The actor is gone (being restarted by the supervisor).
    Unreachable,
}

impl Skip {
    pub fn describe(&self) -> String {
        match self {
            Self::CircuitOpen => "skipped: circuit open".into(),
            Self::CoolingDown(d) => format!("skipped: cooling down for {} ms", d.as_millis()),
            Self::AtLimit { limit, retry_in } => {
                format!(
                    "skipped: {limit} limit reached, room in {} ms",
                    retry_in.as_millis()
                )
            }
            Self::Unreachable => "skipped: deployment restarting".into(),
        }
    }
}

/// Leave to make one call: what the actor reserved for it.
pub struct Permit {
    probe: bool,
    rpm_ticket: Option<Ticket>,
    tpm_ticket: Option<Ticket>,
    fate: Option<simulated::Fate>,
}

pub enum Msg {
    /// May a call go out now? `estimate` is the tokens to reserve against `tpm`.
    Admit {
        estimate: u64,
        /// Batch work: admitted only within the batch share of `rpm`/`tpm`.
        batch: bool,
        reply: RpcReplyPort<Result<Permit, Skip>>,
    },
    Finished(Box<Finished>),
    /// The breaker's reset timeout may have passed.
    Tick,
    /// What another instance of the cluster decided.
    Remote(Remote),
    Snapshot(RpcReplyPort<DeploymentStatus>),
    /// The calls of the last `window`, for the alert rules.
    Window {
        window: Duration,
        at_least: u64,
        reply: RpcReplyPort<WindowFigures>,
    },
}

pub struct Finished {
    probe: bool,
    rpm_ticket: Option<Ticket>,
    tpm_ticket: Option<Ticket>,
    latency: Duration,
    outcome: Outcome,
}

enum Outcome {
    Ok {
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_usd: f64,
    },
    Failed(Failure, Decision),
    /// The request's task went away mid-call: counts neither way.
    Abandoned,
    /// The cluster's window was full: no call was made, the reservation is given back.
    Refused,
}

pub struct DeploymentActor;

pub struct State {
    args: Args,
    breaker: Breaker,
    rpm: Option<WindowBudget>,
    tpm: Option<WindowBudget>,
    cool_until: Option<Instant>,
    in_flight: u32,
    stats: Stats,
    rng: SmallRng,
    started: Instant,
}

impl Actor for DeploymentActor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, me: ActorRef<Msg>, args: Args) -> Result<State, ActorProcessingErr> {
        let c = &args.adapter.config;
        let seed = c.simulated.as_ref().map_or(0, |s| s.seed);
        // A restarted actor starts afresh; what it publishes must say so.
        args.published
            .circuit
            .store(CircuitState::Closed.to_u8(), Relaxed);
        args.published.in_flight.store(0, Relaxed);
        let published = args.published.clone();
        let mut state = State {
            breaker: Breaker::new(&args.breaker),
            rpm: c.rpm.map(|n| WindowBudget::per_minute(u64::from(n.get()))),
            tpm: c.tpm.map(|n| WindowBudget::per_minute(n.get())),
            cool_until: None,
            in_flight: 0,
            stats: Stats::default(),
            rng: SmallRng::seed_from_u64(seed),
            started: Instant::now(),
            args,
        };
        // What the cluster decided still holds for a restarted actor (expired records do
        // nothing).
        let kept = [
            published.remote_circuit.load_full(),
            published.remote_cooldown.load_full(),
        ];
        for r in kept.into_iter().flatten() {
            state.remote(&me, (*r).clone());
        }
        Ok(state)
    }

    async fn handle(
        &self,
        me: ActorRef<Msg>,
        msg: Msg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Admit {
                estimate,
                batch,
                reply,
            } => {
                let _ = reply.send(state.admit(estimate, batch));
            }
            Msg::Finished(f) => state.finished(&me, *f),
            Msg::Tick => {
                if let Some(t) = state.breaker.poll(Instant::now()) {
                    state.transition(t, None);
                }
            }
            Msg::Remote(r) => state.remote(&me, r),
            Msg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot());
            }
            Msg::Window {
                window,
                at_least,
                reply,
            } => {
                let _ = reply.send(state.stats.window(Instant::now(), window, at_least));
            }
        }
        Ok(())
    }
}

impl State {
    fn admit(&mut self, estimate: u64, batch: bool) -> Result<Permit, Skip> {
        let share = self.args.batch_share;
        let cap = |limit: u64| {
            if batch {
                (limit as f64 * share).floor() as u64
            } else {
                limit
            }
        };
        let now = Instant::now();
        if let Some(until) = self.cool_until {
            if now < until {
                return Err(Skip::CoolingDown(until - now));
            }
            self.cool_until = None;
            self.args.published.cool_until_ms.store(0, Relaxed);
        }
        let (admission, transition) = self.breaker.check(now);
        if let Some(t) = transition {
            self.transition(t, None);
        }
        if admission == Admission::Rejected {
            return Err(Skip::CircuitOpen);
        }
        let rpm_ticket = match self
            .rpm
            .as_mut()
            .map(|b| b.try_take_under(now, 1, cap(b.limit())))
        {
            Some(Err(retry_in)) => {
                return Err(Skip::AtLimit {
                    limit: "rpm",
                    retry_in,
                });
            }
            Some(Ok(t)) => Some(t),
            None => None,
        };
        let tpm_ticket = match self
            .tpm
            .as_mut()
            .map(|b| b.try_take_under(now, estimate, cap(b.limit())))
        {
            Some(Err(retry_in)) => {
                if let (Some(b), Some(t)) = (self.rpm.as_mut(), rpm_ticket) {
                    b.correct(t, 0);
                }
                return Err(Skip::AtLimit {
                    limit: "tpm",
                    retry_in,
                });
            }
            Some(Ok(t)) => Some(t),
            None => None,
        };
        self.breaker.admit(admission);
        self.in_flight += 1;
        self.publish_usage(now);
        let fate = self.args.adapter.config.simulated.as_ref().map(|spec| {
            simulated::decide(
                spec,
                &mut self.rng,
                now.saturating_duration_since(self.started),
            )
        });
        Ok(Permit {
            probe: admission == Admission::Probe,
            rpm_ticket,
            tpm_ticket,
            fate,
        })
    }

    fn finished(&mut self, me: &ActorRef<Msg>, f: Finished) {
        let now = Instant::now();
        self.in_flight = self.in_flight.saturating_sub(1);
        let transition = match &f.outcome {
            Outcome::Ok {
                prompt_tokens,
                completion_tokens,
                cost_usd,
            } => {
                if let (Some(b), Some(t)) = (self.tpm.as_mut(), f.tpm_ticket) {
                    b.correct(t, prompt_tokens + completion_tokens);
                }
                let since = now.saturating_duration_since(self.args.published.epoch);
                let last = self.args.published.ewma_at_ms.load(Relaxed);
                if (since.as_millis() as u64).saturating_sub(last)
                    > LATENCY_FRESH.as_millis() as u64
                {
                    // An old figure says nothing about now: start the average afresh.
                    self.stats.restart_ewma();
                }
                self.stats.record(now, f.latency, Sample::Ok);
                self.args
                    .published
                    .ewma_at_ms
                    .store(since.as_millis() as u64, Relaxed);
                self.stats.cost_usd += cost_usd;
                self.stats.prompt_tokens += prompt_tokens;
                self.stats.completion_tokens += completion_tokens;
                self.breaker.on_success(f.probe)
            }
            Outcome::Abandoned => {
                self.breaker.on_neutral(f.probe);
                None
            }
            Outcome::Refused => {
                if let (Some(b), Some(t)) = (self.rpm.as_mut(), f.rpm_ticket) {
                    b.correct(t, 0);
                }
                if let (Some(b), Some(t)) = (self.tpm.as_mut(), f.tpm_ticket) {
                    b.correct(t, 0);
                }
                self.breaker.on_neutral(f.probe);
                None
            }
            Outcome::Failed(failure, decision) => {
                let sample = match (failure, decision.count) {
                    (Failure::Timeout, true) => Sample::Timeout,
                    (_, true) => Sample::Error,
                    (_, false) => Sample::Neutral,
                };
                self.stats.record(now, f.latency, sample);
                // The policy capped the cool-down at `breaker.max_retry_after`; the sum is still
                // checked, so no provider header can make this actor panic.
                if let Some(until) = decision.cool_down.and_then(|d| now.checked_add(d)) {
                    self.cool_down_until(until);
                    self.args.cluster.publish(Publish::CoolDown {
                        deployment: self.args.name.clone(),
                        until_ms: cluster::ms_of(until),
                    });
                }
                if decision.count {
                    self.breaker.on_failure(now, f.probe)
                } else {
                    self.breaker.on_neutral(f.probe);
                    None
                }
            }
        };
        if let Some(t) = transition {
            self.transition(t, None);
            if t.to == CircuitState::Open {
                ractor::time::send_after(self.breaker.reset_timeout(), me.get_cell(), || Msg::Tick);
            }
        }
        self.publish_usage(now);
    }

    fn publish_usage(&mut self, now: Instant) {
        let s = &self.args.published;
        s.in_flight.store(self.in_flight, Relaxed);
        if let Some(ms) = self.stats.ewma_ms() {
            s.ewma_us.store(((ms * 1000.0) as u64).max(1), Relaxed);
        }
        if let Some(b) = self.rpm.as_mut() {
            s.rpm_used.store(b.used(now), Relaxed);
        }
        if let Some(b) = self.tpm.as_mut() {
            s.tpm_used.store(b.used(now), Relaxed);
        }
    }

    fn cool_down_until(&mut self, until: Instant) {
        self.cool_until = Some(until);
        let at = until.saturating_duration_since(self.args.published.epoch);
        self.args.published.cool_until_ms.store(
            u64::try_from(at.as_millis()).unwrap_or(u64::MAX - 1) + 1,
            Relaxed,
        );
    }

    /// Another instance's breaker opened or closed, or it saw a `Retry-After`.
    fn remote(&mut self, me: &ActorRef<Msg>, r: Remote) {
        let now = Instant::now();
        match r {
            Remote::Circuit {
                state: CircuitState::Open,
                until,
                instance,
            } => {
                if until <= now {
                    return;
                }
                if let Some(t) = self.breaker.force_open(until) {
                    self.transition(t, Some(&instance));
                }
                ractor::time::send_after(until - now, me.get_cell(), || Msg::Tick);
            }
            Remote::Circuit {
                state: CircuitState::Closed,
                instance,
                ..
            } => {
                if let Some(t) = self.breaker.force_closed() {
                    self.transition(t, Some(&instance));
                }
            }
            // Every instance goes half-open on its own clock; not shared.
            Remote::Circuit {
                state: CircuitState::HalfOpen,
                ..
            } => {}
            Remote::CoolDown { until } => {
                if until > now && self.cool_until.is_none_or(|u| u < until) {
                    self.cool_down_until(until);
                }
            }
        }
    }

    /// Publishes a breaker transition: `origin` is the instance that forced it, `None` when this
    /// instance's own breaker decided (then it is announced on the event bus and shared).
    fn transition(&mut self, t: Transition, origin: Option<&Arc<str>>) {
        self.args.published.circuit.store(t.to.to_u8(), Relaxed);
        if let Some(origin) = origin {
            info!(
                deployment = %self.args.name,
                from = t.from.as_str(),
                to = t.to.as_str(),
                origin = %origin,
                "circuit transition decided by another instance"
            );
            return;
        }
        // Half-open is each instance's own business (its own probe); opening and closing are
        // shared.
        let until_ms = match t.to {
            CircuitState::Open => Some(self.breaker.open_until().map_or(0, cluster::ms_of)),
            CircuitState::Closed => Some(0),
            CircuitState::HalfOpen => None,
        };
        if let Some(until_ms) = until_ms {
            self.args.cluster.publish(Publish::Circuit {
                deployment: self.args.name.clone(),
                state: t.to,
                until_ms,
            });
        }
        warn!(
            deployment = %self.args.name,
            from = t.from.as_str(),
            to = t.to.as_str(),
            "circuit transition"
        );
        let _ = self.args.events.send(Event::Circuit {
            deployment: self.args.name.clone(),
            from: t.from,
            to: t.to,
            at: now_rfc3339(),
            instance: self.args.instance.clone(),
        });
    }

    fn snapshot(&mut self) -> DeploymentStatus {
        let now = Instant::now();
        self.publish_usage(now);
        let c = &self.args.adapter.config;
        let latency = self.stats.latency();
        let (error_rate, timeout_rate) = self.stats.rates();
        let cluster_seen = self.args.quota.as_ref().and_then(|q| q.seen());
        DeploymentStatus {
            name: c.name.clone(),
            group: c.group.clone(),
            provider: c.provider.as_str().into(),
            model: c.model.clone(),
            circuit: self.breaker.state().as_str().into(),
            in_flight: self.in_flight,
            rpm_used: self.args.published.rpm_used(),
            rpm_limit: self.rpm.as_ref().map(WindowBudget::limit),
            tpm_used: self.args.published.tpm_used(),
            tpm_limit: self.tpm.as_ref().map(WindowBudget::limit),
            latency_ms: LatencyMs {
                p50: latency.p50,
                p95: latency.p95,
                ewma: latency.ewma,
                baseline: self.args.published.baseline_ms(),
            },
            error_rate,
            timeout_rate,
            requests: self.stats.requests,
            failures: self.stats.failures,
            cost_usd: self.stats.cost_usd,
            cooldown_s: self
                .cool_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs_f64()),
            degraded: self.args.published.degraded(),
            cluster_rpm_used: cluster_seen.filter(|_| c.rpm.is_some()).map(|s| s.0),
            cluster_tpm_used: cluster_seen.filter(|_| c.tpm.is_some()).map(|s| s.1),
            prompt_tokens: self.stats.prompt_tokens,
            completion_tokens: self.stats.completion_tokens,
            latency_histogram: self.stats.histogram.to_vec(),
            latency_sum_s: self.stats.latency_sum_s,
        }
    }
}
