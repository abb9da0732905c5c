//! `[alerts]`: the degradation rules of the article's monitoring table, with their thresholds,
//! how often they are evaluated, how much they must move before they change state (hysteresis),
//! and whether a degraded deployment loses its traffic before its circuit opens.

use std::time::Duration;

use serde::Deserialize;

use super::Validator;

/// What happens to the traffic of a deployment with a degradation alert raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shift {
    /// Tried only after every other candidate of the fallback chain: the article's "enable
    /// fallback".
    Skip,
    /// Last in its own group.
    Deprioritize,
    Off,
}

/// `[alerts]` as written; `validate` checks it and it is used as it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often the rules are evaluated.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The sliding window that rates and P95 are measured over (capped at the last 512 calls).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long the latency baseline takes to follow a lasting change (EWMA time constant).
    #[serde(with = "humantime_serde")]
    pub baseline_window: Duration,
    /// Calls a window needs before its rates and P95 count.
    pub min_samples: u64,
    pub p95_factor: f64,
    /// No latency alert while P95 stays under this, whatever the baseline.
    #[serde(with = "humantime_serde")]
    pub p95_floor: Duration,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub fallback_ratio_warn: f64,
    pub fallback_ratio_critical: f64,
    /// Evaluations in a row over the threshold before an alert is raised.
    pub raise_after: u32,
    /// Evaluations in a row under `clear_below` × threshold before it is cleared.
    pub clear_after: u32,
    pub clear_below: f64,
    pub shift: Shift,
    /// Share of requests that still try a degraded deployment in its normal place, so that its
    /// recovery is seen.
    pub probe_share: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            window: Duration::from_secs(60),
            baseline_window: Duration::from_secs(30 * 60),
            min_samples: 20,
            p95_factor: 2.0,
            p95_floor: Duration::from_millis(100),
            error_rate: 0.02,
            timeout_rate: 0.01,
            fallback_ratio_warn: 0.10,
            fallback_ratio_critical: 0.30,
            raise_after: 2,
            clear_after: 3,
            clear_below: 0.8,
            shift: Shift::Skip,
            probe_share: 0.05,
        }
    }
}

pub(super) fn validate(r: &AlertsConfig, v: &mut Validator) {
    for (key, d) in [
        ("alerts.interval", r.interval),
        ("alerts.window", r.window),
        ("alerts.baseline_window", r.baseline_window),
    ] {
        if d.is_zero() {
            v.problem(key, "must be > 0");
        }
    }
    if r.window < r.interval {
        v.problem("alerts.window", "must be at least alerts.interval");
    }
    if r.min_samples == 0 {
        v.problem("alerts.min_samples", "must be > 0");
    }
    if r.p95_factor.is_nan() || r.p95_factor <= 1.0 {
        v.problem("alerts.p95_factor", "must be > 1");
    }
    for (key, x) in [
        ("alerts.error_rate", r.error_rate),
        ("alerts.timeout_rate", r.timeout_rate),
        ("alerts.fallback_ratio_warn", r.fallback_ratio_warn),
        ("alerts.fallback_ratio_critical", r.fallback_ratio_critical),
    ] {
        if !(x > 0.0 && x <= 1.0) {
            v.problem(key, "must be a share above 0 and at most 1 (0.02 is 2 %)");
        }
    }
    if r.fallback_ratio_critical < r.fallback_ratio_warn {
        v.problem(
            "alerts.fallback_ratio_critical",
            "must be at least alerts.fallback_ratio_warn",
        );
    }
    if r.raise_after == 0 {
        v.problem("alerts.raise_after", "must be > 0");
    }
    if r.clear_after == 0 {
        v.problem("alerts.clear_after", "must be > 0");
    }
    if !(r.clear_below > 0.0 && r.clear_below <= 1.0) {
        v.problem("alerts.clear_below", "must be above 0 and at most 1");
    }
    if !(0.0..=1.0).contains(&r.probe_share) {
        v.problem("alerts.probe_share", "must be between 0 and 1");
    }
}
