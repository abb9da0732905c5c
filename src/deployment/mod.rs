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
//! on every request (circuit state, in-flight, latency, usage) is published in `Shared` atomics,
//! so the router reads it without a mailbox round trip.
//!
//! In a cluster (`crate::cluster`) the actor hands its breaker's openings and closings and its
//! cool-downs to the cluster link, and is told other instances' as `Msg::Remote`; a deployment
//! with `rpm`/`tpm` also takes its slot in the cluster-wide window, in the request's task, once
//! the actor has admitted the call.

pub mod breaker;
pub mod limiter;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tracing::{Instrument, debug, info, warn};

use self::breaker::{Admission, Breaker, CircuitState, Transition};
use self::limiter::{Ticket, WindowBudget};
use self::stats::{Sample, Stats, WindowFigures};
use crate::cluster::quota::{SharedWindow, Take, Taken};
use crate::cluster::{self, Link, Publish, Remote};
use crate::config::BreakerConfig;
use crate::observe::events::{Event, EventBus, now_rfc3339};
use crate::observe::status::{DeploymentStatus, LatencyMs};
use crate::protocol::{ChatRequest, Usage};
use crate::providers::{
    Adapter, CallContext, Decision, Failure, ProviderReply, classify, simulated,
};

/// How long a latency average is trusted without new samples: after that, routing reads it as
/// unknown (and probes the deployment), and the next sample starts it afresh.
pub const LATENCY_FRESH: Duration = Duration::from_secs(2);

/// What the actor publishes for lock-free reads on the request path.
#[derive(Debug)]
pub struct Shared {
    epoch: Instant,
    circuit: AtomicU8,
    in_flight: AtomicU32,
    ewma_us: AtomicU64,
    /// Milliseconds since `epoch` of the last successful call (what `ewma_us` last learned from).
    ewma_at_ms: AtomicU64,
    /// Milliseconds since `epoch` until which the deployment cools down; 0 for none.
    cool_until_ms: AtomicU64,
    rpm_used: AtomicU64,
    tpm_used: AtomicU64,
    /// A degradation alert is raised on this deployment: routing moves traffic away.
    degraded: AtomicBool,
    /// The alert rules' latency baseline (P95, µs); 0 until learned.
    baseline_us: AtomicU64,
    /// The last circuit and cool-down records another instance shared, kept here (the slot
    /// outlives its actor) so that an actor restarted by the supervisor starts from them.
    remote_circuit: arc_swap::ArcSwapOption<Remote>,
    remote_cooldown: arc_swap::ArcSwapOption<Remote>,
}

impl Shared {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            circuit: AtomicU8::new(CircuitState::Closed.to_u8()),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            cool_until_ms: AtomicU64::new(0),
            rpm_used: AtomicU64::new(0),
            tpm_used: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            baseline_us: AtomicU64::new(0),
            remote_circuit: arc_swap::ArcSwapOption::empty(),
            remote_cooldown: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn circuit(&self) -> CircuitState {
        CircuitState::from_u8(self.circuit.load(Relaxed))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Latency EWMA in ms; `None` before the first success.
    pub fn ewma_ms(&self) -> Option<f64> {
        match self.ewma_us.load(Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        }
    }

    /// The latency EWMA if it was learned within `fresh` of `now`. A deployment that has not
    /// served for a while (new, recovered, or avoided for being slow) reads as unknown, so that
    /// latency-based routing probes it again instead of trusting an old figure forever.
    pub fn recent_ewma_ms(&self, now: Instant, fresh: Duration) -> Option<f64> {
        let at = self.ewma_at_ms.load(Relaxed);
        let age = (now.saturating_duration_since(self.epoch).as_millis() as u64).saturating_sub(at);
        (age <= fresh.as_millis() as u64)
            .then(|| self.ewma_ms())
            .flatten()
    }

    pub fn cooling_down(&self, now: Instant) -> bool {
        let until = self.cool_until_ms.load(Relaxed);
        until != 0 && (now.saturating_duration_since(self.epoch).as_millis() as u64) < until
    }

    pub fn rpm_used(&self) -> u64 {
        self.rpm_used.load(Relaxed)
    }

    pub fn tpm_used(&self) -> u64 {
        self.tpm_used.load(Relaxed)
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    /// Set by the alert rules (`observe::alerts`), with the latency baseline they learned.
    pub fn set_health(&self, degraded: bool, baseline_ms: Option<f64>) {
        self.degraded.store(degraded, Relaxed);
        let us = baseline_ms.map_or(0, |ms| ((ms * 1000.0) as u64).max(1));
        self.baseline_us.store(us, Relaxed);
    }

    /// Keeps what another instance shared, for a restarted actor to start from.
    pub fn remember(&self, r: &Remote) {
        let kept = Some(Arc::new(r.clone()));
        match r {
            Remote::Circuit { .. } => self.remote_circuit.store(kept),
            Remote::CoolDown { .. } => self.remote_cooldown.store(kept),
        }
    }

    /// The P95 latency baseline the alert rules judge this deployment against, in ms.
    pub fn baseline_ms(&self) -> Option<f64> {
        match self.baseline_us.load(Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        }
    }
}

/// Everything a deployment actor is started with; kept by the supervisor to restart it.
#[derive(Clone)]
pub struct Args {
    pub adapter: Arc<Adapter>,
    pub breaker: Arc<BreakerConfig>,
    pub fallback_on_auth: bool,
    pub shared: Arc<Shared>,
    pub events: EventBus,
    pub instance: Arc<str>,
    pub name: Arc<str>,
    /// Share of `rpm`/`tpm` that batch work may use (`1 - batch.live_reserve`).
    pub batch_share: f64,
    /// What this instance shares with the others of its cluster.
    pub cluster: Arc<Link>,
    /// The cluster-wide `rpm`/`tpm` window; `None` without limits.
    pub quota: Option<Arc<SharedWindow>>,
}

/// One try of one request at this deployment.
pub struct CallArgs {
    pub req: Arc<ChatRequest>,
    pub deadline: Option<Instant>,
    pub include_request_extra: bool,
    pub request_id: Arc<str>,
    /// 1-based number of this call within the request.
    pub attempt: u32,
    /// Batch work, which only takes the batch share of the limits.
    pub batch: bool,
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

pub enum Attempt {
    Skipped(Skip),
    Done {
        result: Result<ProviderReply, (Failure, Decision)>,
        latency: Duration,
    },
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
        args.shared
            .circuit
            .store(CircuitState::Closed.to_u8(), Relaxed);
        args.shared.in_flight.store(0, Relaxed);
        let shared = args.shared.clone();
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
            shared.remote_circuit.load_full(),
            shared.remote_cooldown.load_full(),
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
            self.args.shared.cool_until_ms.store(0, Relaxed);
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
                let since = now.saturating_duration_since(self.args.shared.epoch);
                let last = self.args.shared.ewma_at_ms.load(Relaxed);
                if (since.as_millis() as u64).saturating_sub(last)
                    > LATENCY_FRESH.as_millis() as u64
                {
                    // An old figure says nothing about now: start the average afresh.
                    self.stats.restart_ewma();
                }
                self.stats.record(now, f.latency, Sample::Ok);
                self.args
                    .shared
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
                if let Some(d) = decision.cool_down {
                    self.cool_down_until(now + d);
                    self.args.cluster.publish(Publish::CoolDown {
                        deployment: self.args.name.clone(),
                        until_ms: cluster::ms_of(now + d),
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
        let s = &self.args.shared;
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
        let at = until.saturating_duration_since(self.args.shared.epoch);
        self.args
            .shared
            .cool_until_ms
            .store(at.as_millis() as u64 + 1, Relaxed);
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
        self.args.shared.circuit.store(t.to.to_u8(), Relaxed);
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
            rpm_used: self.args.shared.rpm_used(),
            rpm_limit: self.rpm.as_ref().map(WindowBudget::limit),
            tpm_used: self.args.shared.tpm_used(),
            tpm_limit: self.tpm.as_ref().map(WindowBudget::limit),
            latency_ms: LatencyMs {
                p50: latency.p50,
                p95: latency.p95,
                ewma: latency.ewma,
                baseline: self.args.shared.baseline_ms(),
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
            degraded: self.args.shared.degraded(),
            cluster_rpm_used: cluster_seen.filter(|_| c.rpm.is_some()).map(|s| s.0),
            cluster_tpm_used: cluster_seen.filter(|_| c.tpm.is_some()).map(|s| s.1),
            prompt_tokens: self.stats.prompt_tokens,
            completion_tokens: self.stats.completion_tokens,
            latency_histogram: self.stats.histogram.to_vec(),
            latency_sum_s: self.stats.latency_sum_s,
        }
    }
}

/// Asks the actor for a permit, and arms the report that will tell it how the call went.
async fn admit<'a>(
    actor: &'a ActorRef<Msg>,
    args: &Args,
    call: &CallArgs,
) -> Result<(Permit, Report<'a>), Skip> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let estimate = call.req.estimated_total_tokens();
    actor
        .send_message(Msg::Admit {
            estimate,
            batch: call.batch,
            reply: tx.into(),
        })
        .map_err(|_| Skip::Unreachable)?;
    let permit = rx.await.map_err(|_| Skip::Unreachable)??;
    let mut report = Report {
        actor,
        probe: permit.probe,
        rpm_ticket: permit.rpm_ticket,
        tpm_ticket: permit.tpm_ticket,
        shared: None,
        probe_claim: None,
        started: Instant::now(),
        sent: false,
    };
    // A half-open probe is the cluster's one probe, not one per instance.
    if report.probe
        && let Some(kv) = args.cluster.kv()
    {
        let claim = cluster::claim_probe(
            &kv,
            &args.name,
            args.cluster.instance(),
            args.adapter.config.timeout,
        );
        match tokio::time::timeout(args.cluster.sync_timeout(), claim).await {
            Ok(Ok(true)) => report.probe_claim = Some((kv, args.name.clone())),
            Ok(Ok(false)) => {
                report.send(Duration::ZERO, Outcome::Refused);
                return Err(Skip::CircuitOpen);
            }
            Ok(Err(why)) => {
                warn!(deployment = %args.name, %why, "probe claim failed: probing locally");
            }
            Err(_) => {
                warn!(deployment = %args.name, "probe claim timed out: probing locally");
            }
        }
        report.started = Instant::now();
    }
    // The cluster-wide window, after the local one: only deployments with limits pay for it,
    // and only while the bucket is reachable (else the local windows guard alone).
    if let (Some(quota), Some(kv)) = (&args.quota, args.cluster.kv()) {
        let share = if call.batch { args.batch_share } else { 1.0 };
        match quota
            .take(&kv, estimate, share, args.cluster.sync_timeout())
            .await
        {
            Take::Taken(t) => report.shared = Some((quota.clone(), kv, t)),
            Take::Full { limit, retry_in } => {
                report.send(Duration::ZERO, Outcome::Refused);
                return Err(Skip::AtLimit { limit, retry_in });
            }
            Take::Unshared(why) => {
                warn!(deployment = %args.name, %why, "cluster window unreachable: local limits only");
            }
        }
        report.started = Instant::now();
    }
    Ok((permit, report))
}

/// How long a call may take: the deployment's `limit`, or less if the caller's deadline comes
/// first (then running out is the caller's `timeout`, not the deployment's failure).
fn bound(limit: Duration, deadline: Option<Instant>, from: Instant) -> (Duration, Failure) {
    match deadline {
        Some(d) if d.saturating_duration_since(from) < limit => {
            (d.saturating_duration_since(from), Failure::DeadlineSpent)
        }
        _ => (limit, Failure::Timeout),
    }
}

/// One attempt at one deployment, run in the caller's task: asks the actor for a permit, makes
/// the call bounded by the deployment's timeout and the caller's deadline (whichever comes first),
/// logs it, and reports the outcome to the actor.
pub async fn call(actor: &ActorRef<Msg>, args: &Args, call: CallArgs) -> Attempt {
    let span = attempt_span(args, &call);
    call_inner(actor, args, call, &span)
        .instrument(span.clone())
        .await
}

/// A child span of the request's for one attempt, with the OpenTelemetry GenAI attributes.
fn attempt_span(args: &Args, call: &CallArgs) -> tracing::Span {
    let c = &args.adapter.config;
    let span = tracing::info_span!(
        "attempt",
        otel.name = %format_args!("chat {}", c.model),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.system = crate::engine::gen_ai_system(c.provider),
        gen_ai.request.model = %c.model,
        gen_ai.request.max_tokens = tracing::field::Empty,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        server.address = %c.api_base,
        llm.deployment = %args.name,
        llm.attempt = call.attempt,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if let Some(n) = call.req.max_tokens {
        span.record("gen_ai.request.max_tokens", n);
    }
    if let Some(t) = call.req.body.get("temperature").and_then(|t| t.as_f64()) {
        span.record("gen_ai.request.temperature", t);
    }
    span
}

/// What an attempt's span learns when it ends.
fn close_span(span: &tracing::Span, model: &str, usage: Option<&Usage>, failure: Option<&Failure>) {
    match failure {
        None => {
            span.record("gen_ai.response.model", model);
            span.record("http.response.status_code", 200);
            if let Some(u) = usage {
                span.record("gen_ai.usage.input_tokens", u.prompt_tokens);
                span.record("gen_ai.usage.output_tokens", u.completion_tokens);
            }
        }
        Some(f) => {
            if let Some(status) = f.status() {
                span.record("http.response.status_code", status);
            }
            span.record("error.type", f.kind_name());
        }
    }
}

async fn call_inner(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    span: &tracing::Span,
) -> Attempt {
    let (permit, mut report) = match admit(actor, args, &call).await {
        Ok(p) => p,
        Err(skip) => return Attempt::Skipped(skip),
    };
    let ctx = CallContext {
        include_request_extra: call.include_request_extra,
        fate: permit.fate,
    };
    let (limit, expired) = bound(args.adapter.config.timeout, call.deadline, report.started);
    let result = match tokio::time::timeout(limit, args.adapter.call(&call.req, ctx)).await {
        Ok(r) => r,
        Err(_) => Err(expired),
    };
    let latency = report.started.elapsed();
    let result = result.map_err(|f| {
        let d = classify(&f, &args.breaker, args.fallback_on_auth);
        (f, d)
    });
    let model = args.adapter.config.model.as_str();
    match &result {
        Ok(r) => close_span(span, model, Some(&r.usage), None),
        Err((f, _)) => close_span(span, model, None, Some(f)),
    }
    let outcome = match &result {
        Ok(r) => {
            log_success(args, &call, latency, r.usage.total_tokens);
            Outcome::Ok {
                prompt_tokens: r.usage.prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
                cost_usd: r.cost_usd,
            }
        }
        Err((f, d)) => {
            log_failure(args, &call, latency, f, d);
            Outcome::Failed(f.clone(), *d)
        }
    };
    // The actor hears of the outcome before the caller goes on, so that the caller's next
    // request already sees the breaker it caused.
    report.send(latency, outcome);
    Attempt::Done { result, latency }
}

/// How a streamed attempt went.
pub enum StreamAttempt {
    Skipped(Skip),
    /// Failed before its first chunk: nothing was sent, the walk may fall back.
    Failed {
        failure: Failure,
        decision: Decision,
        latency: Duration,
    },
    /// Chunks went out. `broken` says why the stream ended early, if it did.
    Streamed {
        usage: Option<Usage>,
        cost_usd: f64,
        latency: Duration,
        broken: Option<(Failure, Decision)>,
    },
}

/// A streamed attempt: the first chunk must come within `first_token_timeout` (else it is a
/// failure the walk can fall back from); after it, chunks go to `sink` as they come, each within
/// the deployment's `timeout` of the last. `sink` is bounded, so a slow subscriber slows the read
/// from the provider instead of growing memory.
pub async fn call_stream(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    sink: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> StreamAttempt {
    let span = attempt_span(args, &call);
    let attempt = call_stream_inner(actor, args, call, sink)
        .instrument(span.clone())
        .await;
    let model = args.adapter.config.model.as_str();
    match &attempt {
        StreamAttempt::Skipped(_) => {}
        StreamAttempt::Failed { failure, .. } => close_span(&span, model, None, Some(failure)),
        StreamAttempt::Streamed { usage, broken, .. } => {
            close_span(
                &span,
                model,
                usage.as_ref(),
                broken.as_ref().map(|(f, _)| f),
            );
        }
    }
    attempt
}

async fn call_stream_inner(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    sink: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> StreamAttempt {
    use futures::StreamExt;

    let (permit, mut report) = match admit(actor, args, &call).await {
        Ok(p) => p,
        Err(skip) => return StreamAttempt::Skipped(skip),
    };
    let ctx = CallContext {
        include_request_extra: call.include_request_extra,
        fate: permit.fate,
    };
    let c = &args.adapter.config;
    let mut usage = None;
    let (limit, expired) = bound(c.first_token_timeout, call.deadline, report.started);
    let opened = tokio::time::timeout(limit, async {
        let mut stream = args.adapter.open_stream(&call.req, ctx).await?;
        loop {
            match stream.next().await {
                Some(Ok(p)) if !p.chunks.is_empty() => return Ok((stream, p)),
                Some(Ok(p)) => usage = p.usage.or(usage),
                Some(Err(f)) => return Err(f),
                None => {
                    return Err(Failure::InvalidBody(
                        "the stream ended before any chunk".into(),
                    ));
                }
            }
        }
    })
    .await
    .unwrap_or(Err(expired));
    let (mut stream, first) = match opened {
        Ok(x) => x,
        Err(f) => {
            let latency = report.started.elapsed();
            let d = classify(&f, &args.breaker, args.fallback_on_auth);
            log_failure(args, &call, latency, &f, &d);
            report.send(latency, Outcome::Failed(f.clone(), d));
            return StreamAttempt::Failed {
                failure: f,
                decision: d,
                latency,
            };
        }
    };

    let mut pending = first.chunks;
    usage = first.usage.or(usage);
    let broken = loop {
        for chunk in pending.drain(..) {
            if sink.send(chunk).await.is_err() {
                // The caller's side is gone: stop reading; no one to tell.
                report.send(report.started.elapsed(), Outcome::Abandoned);
                return StreamAttempt::Streamed {
                    usage,
                    cost_usd: 0.0,
                    latency: report.started.elapsed(),
                    broken: None,
                };
            }
        }
        let (limit, expired) = bound(c.timeout, call.deadline, Instant::now());
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(Ok(p))) => {
                usage = p.usage.or(usage);
                pending = p.chunks;
            }
            Ok(None) => break None,
            Ok(Some(Err(f))) => break Some(f),
            Err(_) => break Some(expired),
        }
    };
    let latency = report.started.elapsed();
    let cost_usd = usage.map_or(0.0, |u| args.adapter.price(&u));
    let broken = broken.map(|f| {
        let d = classify(&f, &args.breaker, args.fallback_on_auth);
        log_failure(args, &call, latency, &f, &d);
        report.send(latency, Outcome::Failed(f.clone(), d));
        (f, d)
    });
    if broken.is_none() {
        let u = usage.unwrap_or_default();
        log_success(args, &call, latency, u.total_tokens);
        report.send(
            latency,
            Outcome::Ok {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cost_usd,
            },
        );
    }
    StreamAttempt::Streamed {
        usage,
        cost_usd,
        latency,
        broken,
    }
}

fn log_success(args: &Args, call: &CallArgs, latency: Duration, tokens: u64) {
    let c = &args.adapter.config;
    info!(
        request_id = %call.request_id,
        deployment = %args.name,
        provider = c.provider.as_str(),
        model = %c.model,
        attempt = call.attempt,
        status = 200,
        latency_ms = latency.as_millis() as u64,
        tokens,
        "attempt succeeded"
    );
}

fn log_failure(args: &Args, call: &CallArgs, latency: Duration, f: &Failure, d: &Decision) {
    let c = &args.adapter.config;
    warn!(
        request_id = %call.request_id,
        deployment = %args.name,
        provider = c.provider.as_str(),
        model = %c.model,
        attempt = call.attempt,
        status = f.status(),
        latency_ms = latency.as_millis() as u64,
        error = %f.describe(),
        falls_back = d.fall_back,
        "attempt failed"
    );
}

/// Reports the outcome of a permitted call exactly once, also when the caller's task is dropped.
struct Report<'a> {
    actor: &'a ActorRef<Msg>,
    probe: bool,
    rpm_ticket: Option<Ticket>,
    tpm_ticket: Option<Ticket>,
    /// The slot taken in the cluster-wide window, corrected with real usage at the end.
    shared: Option<(
        Arc<SharedWindow>,
        Arc<async_nats::jetstream::kv::Store>,
        Taken,
    )>,
    /// This call is the cluster's half-open probe of this deployment: its claim is released at
    /// the end.
    probe_claim: Option<(Arc<async_nats::jetstream::kv::Store>, Arc<str>)>,
    started: Instant,
    sent: bool,
}

impl Report<'_> {
    fn send(&mut self, latency: Duration, outcome: Outcome) {
        self.sent = true;
        if let Some((kv, name)) = self.probe_claim.take()
            && !matches!(outcome, Outcome::Failed(..))
        {
            // The others learn the probe's outcome from the circuit record. A failed probe keeps
            // its claim until it expires, so that no other instance probes in the moment before
            // the re-opened circuit reaches it; any other outcome gives the claim back.
            tokio::spawn(async move { cluster::release_probe(&kv, &name).await });
        }
        if let (
            Some((quota, kv, taken)),
            Outcome::Ok {
                prompt_tokens,
                completion_tokens,
                ..
            },
        ) = (self.shared.take(), &outcome)
        {
            // The reply does not wait for the bookkeeping: the next take carries it.
            if quota.correct(taken, prompt_tokens + completion_tokens) {
                tokio::spawn(async move { quota.flush_later(&kv).await });
            }
        }
        let finished = Finished {
            probe: self.probe,
            rpm_ticket: self.rpm_ticket,
            tpm_ticket: self.tpm_ticket,
            latency,
            outcome,
        };
        if self
            .actor
            .send_message(Msg::Finished(Box::new(finished)))
            .is_err()
        {
            debug!("deployment actor gone before the call finished");
        }
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.send(self.started.elapsed(), Outcome::Abandoned);
        }
    }
}
