//! What a deployment actor publishes for the request path to read without a mailbox round trip:
//! circuit state, in-flight count, latency, usage, cool-down and health, all in atomics; and,
//! the other way, the queue of reports the request path leaves for it (`reports.rs`).

#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

use super::breaker::CircuitState;
use super::gate::Permits;
use crate::cluster::Remote;

/// How long a latency average is trusted without new samples: after that, routing reads it as
/// unknown (and probes the deployment), and the next sample starts it afresh.
pub const LATENCY_FRESH: Duration = Duration::from_secs(2);

/// What the actor publishes for lock-free reads on the request path.
#[derive(Debug)]
pub struct Published {
    pub(super) epoch: Instant,
    pub(super) circuit: AtomicU8,
    pub(super) in_flight: AtomicU32,
    pub(super) ewma_us: AtomicU64,
    /// Milliseconds since `epoch` of the last successful call (what `ewma_us` last learned from).
    pub(super) ewma_at_ms: AtomicU64,
    /// Milliseconds since `epoch` until which the deployment cools down; 0 for none.
    pub(super) cool_until_ms: AtomicU64,
    /// Milliseconds since `epoch` until which an open circuit rejects calls (`u64::MAX`: until
    /// told otherwise).
    pub(super) open_until_ms: AtomicU64,
    /// A half-open probe is out (`gate.rs`).
    pub(super) probe: AtomicBool,
    /// The `rpm` and `tpm` units the request path spends and the actor refills (`gate.rs`).
    pub(super) rpm: Option<Permits>,
    pub(super) tpm: Option<Permits>,
    /// A degradation alert is raised on this deployment: routing moves traffic away.
    pub(super) degraded: AtomicBool,
    /// The alert rules' latency baseline (P95, µs); 0 until learned.
    pub(super) baseline_us: AtomicU64,
    /// The last circuit and cool-down records another instance shared, kept here (the slot
    /// outlives its actor) so that an actor restarted by the supervisor starts from them.
    pub(super) remote_circuit: arc_swap::ArcSwapOption<Remote>,
    pub(super) remote_cooldown: arc_swap::ArcSwapOption<Remote>,
    /// Calls nobody waits for, reported to the actor without waking it for each.
    pub(super) reports: super::reports::Reports,
}

impl Published {
    pub fn new(epoch: Instant, rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Self {
            epoch,
            circuit: AtomicU8::new(CircuitState::Closed.to_u8()),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            cool_until_ms: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            probe: AtomicBool::new(false),
            rpm: rpm.map(Permits::new),
            tpm: tpm.map(Permits::new),
            degraded: AtomicBool::new(false),
            baseline_us: AtomicU64::new(0),
            remote_circuit: arc_swap::ArcSwapOption::empty(),
            remote_cooldown: arc_swap::ArcSwapOption::empty(),
            reports: super::reports::Reports::default(),
        }
    }

    pub fn circuit(&self) -> CircuitState {
        CircuitState::from_u8(self.circuit.load(Acquire))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// An admitted call ended. Saturating: an actor restarted meanwhile counted from 0 again.
    pub(super) fn call_ended(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
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
        self.cool_down_left(now).is_some()
    }

    /// How much of a cool-down is left, if one holds.
    pub(super) fn cool_down_left(&self, now: Instant) -> Option<Duration> {
        let until = self.cool_until_ms.load(Relaxed);
        let now = self.ms_since_epoch(now);
        (until != 0 && now < until).then(|| Duration::from_millis(until.saturating_sub(now)))
    }

    pub(super) fn ms_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn open_until_ms(&self) -> u64 {
        self.open_until_ms.load(Acquire)
    }

    /// The actor's breaker moved: what admission reads. The time is stored first, so that a
    /// request that sees `Open` also sees until when.
    pub(super) fn publish_circuit(&self, state: CircuitState, open_until: Option<Instant>) {
        let until = open_until.map_or(u64::MAX, |u| self.ms_since_epoch(u));
        self.open_until_ms.store(until, Release);
        self.circuit.store(state.to_u8(), Release);
    }

    /// Takes the half-open probe: true for exactly one caller until `release_probe`.
    pub(super) fn take_probe(&self) -> bool {
        self.probe
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_ok()
    }

    pub(super) fn release_probe(&self) {
        self.probe.store(false, Release);
    }

    /// Requests in the `rpm` window, those in flight included (0 without the limit).
    pub fn rpm_used(&self) -> u64 {
        self.rpm.as_ref().map_or(0, Permits::used)
    }

    /// Tokens in the `tpm` window, estimates of calls in flight included (0 without the limit).
    pub fn tpm_used(&self) -> u64 {
        self.tpm.as_ref().map_or(0, Permits::used)
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
