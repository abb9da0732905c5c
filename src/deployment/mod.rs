//! The deployment actor: one per `[[deployments]]` entry. It owns that deployment's limits
//! (`rpm`/`tpm` windows and `Retry-After` cool-down), circuit breaker and latency stats.
//!
//! The request path does not ask it for leave. The actor publishes what admission needs in
//! `Published` atomics — circuit state and until when, cool-down, the half-open probe flag, and
//! `rpm`/`tpm` permits it refills from its windows — and a request admits itself there
//! (`gate.rs`), then calls its provider in its own task. How the call went reaches the actor as
//! `Finished` — a message when a failure or a probe waits for the actor
//! to have applied it (so that the caller's next request sees the breaker it caused), else
//! queued for it and drained with the others (`reports.rs`), so that it is not woken once per
//! call. A guard reports even if the request's task is dropped mid-call, so in-flight counts and
//! half-open probes are never leaked. The handler never awaits I/O.
//!
//! In a cluster (`crate::cluster`) the actor hands its breaker's openings and closings and its
//! cool-downs to the cluster link, and is told other instances' as `Msg::Remote`; a deployment
//! with `rpm`/`tpm` also takes its slot in the cluster-wide window (leased in blocks), in the
//! request's task, once it has admitted itself locally.
//!
//! The mailbox is ractor's, which has no bound; it cannot grow without one here because every
//! message has a bounded source: each attempt sends one `Finished` or queues its report (and
//! at a limit one `Recheck`, waited for), and attempts in flight are bounded by `limits.max_in_flight`
//! (synchronous requests), `[jobs] concurrency` and each batch's `concurrency`; `Remote` comes
//! from the one cluster sync task per record it reads, `Snapshot` and `Window` from status and
//! the alert task, which wait for each answer before asking again, `Tick` is one timer per
//! breaker opening, `Refresh` one timer at a time, and `Drain` one timer at a time or the one
//! message of the report that found no drain due.

pub mod breaker;
mod call;
mod decision;
pub mod embed;
pub mod gate;
pub mod limiter;
pub mod opened;
mod published;
mod reports;
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

use self::breaker::{Breaker, CircuitState, Transition};
use self::limiter::WindowBudget;
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
    /// The simulated provider's dice; `None` for a real provider.
    pub fates: Option<Arc<Fates>>,
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

    /// How long until this deployment takes a call again, when that is known: the end of its
    /// cool-down, or when its `rpm`/`tpm` window frees room. A whole window is the limiters' word
    /// for "not known" (`limiter::MINUTE`), and an open circuit may stay open.
    pub fn known_wait(&self) -> Option<Duration> {
        match self {
            Self::CoolingDown(left) => Some(*left),
            Self::AtLimit { retry_in, .. } if *retry_in < limiter::MINUTE => Some(*retry_in),
            Self::AtLimit { .. } | Self::CircuitOpen | Self::Unreachable => None,
        }
    }
}

/// The simulated provider's dice (`[deployments.simulated]`): thrown on the request path when a
/// call is admitted, from one seeded generator per deployment, so that a seed replays the same
/// outcomes in the same order.
pub struct Fates {
    spec: crate::config::SimulatedSpec,
    rng: std::sync::Mutex<SmallRng>,
    started: Instant,
}

impl Fates {
    /// `None` for a deployment that is not simulated.
    pub fn of(config: &crate::config::DeploymentConfig) -> Option<Arc<Self>> {
        config.simulated.as_ref().map(|spec| {
            Arc::new(Self {
                spec: spec.clone(),
                rng: std::sync::Mutex::new(SmallRng::seed_from_u64(spec.seed)),
                started: Instant::now(),
            })
        })
    }

    fn throw(&self, now: Instant) -> Option<simulated::Fate> {
        let mut rng = self.rng.lock().ok()?;
        Some(simulated::decide(
            &self.spec,
            &mut rng,
            now.saturating_duration_since(self.started),
        ))
    }
}

/// How long until each limit has room for a call, as the actor sees its windows (`Recheck`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Room {
    pub rpm: Duration,
    pub tpm: Duration,
}

pub enum Msg {
    /// The request path found a limit without room as published: refill from the window (old
    /// calls may have left it) and say when there will be room for `estimate` tokens.
    Recheck {
        estimate: u64,
        reply: RpcReplyPort<Room>,
    },
    Finished(Box<Finished>),
    /// Reports are queued (`reports.rs`): drain them, and look again soon if there were some.
    Drain,
    /// The breaker's reset timeout may have passed.
    Tick,
    /// Old calls may have left the windows: publish the room they leave.
    Refresh,
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

/// How an admitted call went, as its request reports it.
pub struct Finished {
    admitted: gate::Admitted,
    latency: Duration,
    outcome: Outcome,
    /// Answered once the actor has applied the outcome to its breaker and cool-down: a request
    /// whose call failed waits for it, so that its caller's next request sees the breaker it
    /// caused.
    ack: Option<tokio::sync::oneshot::Sender<()>>,
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
}

pub struct DeploymentActor;

pub struct State {
    args: Args,
    breaker: Breaker,
    rpm: Option<WindowBudget>,
    tpm: Option<WindowBudget>,
    /// Units the actor has heard of in all, in the request path's currency (1 per call for
    /// `rpm`, the estimate for `tpm`): `gate.rs`'s R.
    rpm_recorded: u64,
    tpm_recorded: u64,
    /// A `Refresh` is due.
    refresh_armed: bool,
    cool_until: Option<Instant>,
    stats: Stats,
}

/// The soonest a `Refresh` follows another: old calls leave the window continuously under load,
/// and one refresh a quarter second publishes their room soon enough for routing.
const REFRESH_SPACING: Duration = Duration::from_millis(250);

impl Actor for DeploymentActor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, me: ActorRef<Msg>, args: Args) -> Result<State, ActorProcessingErr> {
        let c = &args.adapter.config;
        // A restarted actor starts afresh; what it publishes must say so.
        let p = &args.published;
        p.publish_circuit(CircuitState::Closed, None);
        p.release_probe();
        p.in_flight.store(0, Relaxed);
        for permits in [&p.rpm, &p.tpm].into_iter().flatten() {
            permits.reset();
        }
        // Reports queued for the actor that died are dropped with its windows, as messages sent
        // to it were; a drain is due again with the next report.
        p.reports.drain(drop);
        if p.reports.settle() {
            // One came meanwhile: it is this actor's to drain.
            let _ = me.send_message(Msg::Drain);
        }
        let published = args.published.clone();
        let mut state = State {
            breaker: Breaker::new(&args.breaker),
            rpm: c.rpm.map(|n| WindowBudget::per_minute(u64::from(n.get()))),
            tpm: c.tpm.map(|n| WindowBudget::per_minute(n.get())),
            rpm_recorded: 0,
            tpm_recorded: 0,
            refresh_armed: false,
            cool_until: None,
            stats: Stats::default(),
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
        // What was queued came before this message: applied first, in order.
        let published = state.args.published.clone();
        let drained = published.reports.drain(|f| state.finished(&me, f));
        match msg {
            Msg::Drain => {
                if drained > 0 || published.reports.settle() {
                    ractor::time::send_after(reports::SPACING, me.get_cell(), || Msg::Drain);
                }
            }
            Msg::Recheck { estimate, reply } => {
                let _ = reply.send(state.recheck(&me, estimate));
            }
            Msg::Finished(f) => state.finished(&me, *f),
            Msg::Tick => {
                if let Some(t) = state.breaker.poll(Instant::now()) {
                    state.transition(t, None);
                }
            }
            Msg::Refresh => {
                state.refresh_armed = false;
                state.refill(&me, Instant::now());
            }
            Msg::Remote(r) => state.remote(&me, r),
            Msg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot(&me));
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
    /// Publishes the room the windows leave (`gate.rs`: A = R + limit − used), and arms a
    /// `Refresh` for when the oldest call leaves them.
    fn refill(&mut self, me: &ActorRef<Msg>, now: Instant) {
        let p = &self.args.published;
        let mut next: Option<Instant> = None;
        for (window, permits, recorded) in [
            (&mut self.rpm, &p.rpm, self.rpm_recorded),
            (&mut self.tpm, &p.tpm, self.tpm_recorded),
        ] {
            if let (Some(w), Some(permits)) = (window.as_mut(), permits) {
                permits.refill(recorded, w.used(now));
                next = match (next, w.next_expiry()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        if let (Some(at), false) = (next, self.refresh_armed) {
            self.refresh_armed = true;
            let wait = at.saturating_duration_since(now).max(REFRESH_SPACING);
            ractor::time::send_after(wait, me.get_cell(), || Msg::Refresh);
        }
    }

    fn recheck(&mut self, me: &ActorRef<Msg>, estimate: u64) -> Room {
        let now = Instant::now();
        self.refill(me, now);
        let p = &self.args.published;
        let mut room = Room::default();
        if let (Some(w), Some(permits)) = (self.rpm.as_mut(), &p.rpm) {
            room.rpm = w.wait_for(now, 1, permits.in_flight(self.rpm_recorded));
        }
        if let (Some(w), Some(permits)) = (self.tpm.as_mut(), &p.tpm) {
            room.tpm = w.wait_for(now, estimate, permits.in_flight(self.tpm_recorded));
        }
        room
    }

    fn finished(&mut self, me: &ActorRef<Msg>, f: Finished) {
        let now = Instant::now();
        let a = f.admitted;
        // The call's units move from "in flight" to the window, at what it really used.
        if let (Some(w), true) = (self.rpm.as_mut(), a.rpm > 0) {
            self.rpm_recorded = self.rpm_recorded.saturating_add(a.rpm);
            w.record(now, a.at, a.rpm);
        }
        if let (Some(w), true) = (self.tpm.as_mut(), a.tpm > 0) {
            self.tpm_recorded = self.tpm_recorded.saturating_add(a.tpm);
            let used = match &f.outcome {
                Outcome::Ok {
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => prompt_tokens.saturating_add(*completion_tokens),
                _ => a.tpm,
            };
            w.record(now, a.at, used);
        }
        if a.probe
            && let Some(t) = self.breaker.poll(now)
        {
            // The probe went out on the published time, before this actor's timer moved it.
            self.transition(t, None);
        }
        let transition = match &f.outcome {
            Outcome::Ok {
                prompt_tokens,
                completion_tokens,
                cost_usd,
            } => {
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
                self.breaker.on_success(a.probe)
            }
            Outcome::Abandoned => {
                self.breaker.on_neutral(a.probe);
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
                    self.breaker.on_failure(now, a.probe)
                } else {
                    self.breaker.on_neutral(a.probe);
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
        if a.probe {
            // Its outcome is published: the next probe (if still half-open) may go.
            self.args.published.release_probe();
        }
        self.publish_usage();
        self.refill(me, now);
        if let Some(ack) = f.ack {
            let _ = ack.send(());
        }
    }

    fn publish_usage(&mut self) {
        if let Some(ms) = self.stats.ewma_ms() {
            let s = &self.args.published;
            s.ewma_us.store(((ms * 1000.0) as u64).max(1), Relaxed);
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
                match self.breaker.force_open(until) {
                    Some(t) => self.transition(t, Some(&instance)),
                    // Open already: only its time moved.
                    None => self
                        .args
                        .published
                        .publish_circuit(CircuitState::Open, self.breaker.open_until()),
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
        self.args
            .published
            .publish_circuit(t.to, self.breaker.open_until());
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

    fn snapshot(&mut self, me: &ActorRef<Msg>) -> DeploymentStatus {
        let now = Instant::now();
        self.refill(me, now);
        let c = &self.args.adapter.config;
        let latency = self.stats.latency();
        let (error_rate, timeout_rate) = self.stats.rates();
        let cluster_seen = self.args.quota.as_ref().and_then(|q| q.seen());
        DeploymentStatus {
            name: c.name.clone(),
            group: c.group.clone(),
            provider: c.provider.as_str().into(),
            model: c.model.clone(),
            mode: c.mode().into(),
            circuit: self.breaker.state().as_str().into(),
            in_flight: self.args.published.in_flight(),
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
