//! Alert rules (docs/contract.md §6, the article's monitoring table): per deployment P95 latency
//! over twice its own baseline, error rate over 2 %, timeout rate over 1 %; overall fallback ratio
//! over 10 % (warning) and 30 % (critical: time to pick a new primary); spend over a daily budget.
//!
//! `Rules::evaluate` is called every `alerts.interval` with what was measured over the last
//! `alerts.window`, and answers which alerts were raised or cleared. Hysteresis keeps an alert from
//! flapping at its threshold: it is raised after `raise_after` evaluations in a row over the
//! threshold, and cleared only after `clear_after` evaluations in a row under `clear_below` times
//! the threshold; values in between change nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::events::{Event, now_rfc3339};
use crate::config::AlertsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    P95Latency,
    ErrorRate,
    TimeoutRate,
    FallbackRatio,
    FallbackRatioCritical,
    CostOverBudget,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P95Latency => "p95_latency",
            Self::ErrorRate => "error_rate",
            Self::TimeoutRate => "timeout_rate",
            Self::FallbackRatio => "fallback_ratio",
            Self::FallbackRatioCritical => "fallback_ratio_critical",
            Self::CostOverBudget => "cost_over_budget",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            Self::FallbackRatioCritical => "critical",
            _ => "warning",
        }
    }

    /// A rule about one deployment's health: raising it shifts traffic away.
    pub fn degrades(self) -> bool {
        matches!(self, Self::P95Latency | Self::ErrorRate | Self::TimeoutRate)
    }
}

/// An alert as status shows it and events carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub severity: String,
    /// The deployment, for the per-deployment rules.
    pub deployment: Option<String>,
    /// What a budget alert covers (`task \`extract\``, `all traffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub value: f64,
    pub threshold: f64,
    /// When it was raised (RFC 3339).
    pub since: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raised(Alert),
    /// The alert as it was raised, with the value that cleared it.
    Cleared(Alert),
}

/// What one evaluation reads.
pub struct Inputs<'a> {
    pub now: Instant,
    /// Every deployment by config position: its name and its window (`None`: no answer).
    pub deployments: &'a [(Arc<str>, Option<WindowFigures>)],
    /// Requests and fallbacks since start (the router's counters).
    pub requests: u64,
    pub fallbacks: u64,
    /// Every budget cap: (what it covers, spent today, cap).
    pub budgets: &'a [(String, f64, f64)],
}

#[derive(Debug, Default)]
struct Tracker {
    over: u32,
    under: u32,
    raised: Option<Alert>,
}

/// The rules' memory: hysteresis counters, latency baselines, the traffic counters' history.
pub struct Rules {
    cfg: AlertsConfig,
    /// (rule, deployment index or budget index, 0 for overall) → its state.
    trackers: BTreeMap<(Rule, usize), Tracker>,
    /// Per deployment: an exponential average of its window P95 (ms), learned over
    /// `baseline_window`.
    baselines: Vec<Option<f64>>,
    /// (when, requests, fallbacks) at each evaluation within the last window.
    traffic: VecDeque<(Instant, u64, u64)>,
    last: Option<Instant>,
}

impl Rules {
    pub fn new(cfg: AlertsConfig, deployments: usize) -> Self {
        Self {
            cfg,
            trackers: BTreeMap::new(),
            baselines: vec![None; deployments],
            traffic: VecDeque::new(),
            last: None,
        }
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.cfg
    }

    /// The latency baseline of deployment `i`, once learned.
    pub fn baseline(&self, i: usize) -> Option<f64> {
        self.baselines.get(i).copied().flatten()
    }

    /// Is a degradation alert raised on deployment `i`?
    pub fn degraded(&self, i: usize) -> bool {
        self.trackers
            .iter()
            .any(|((rule, k), t)| rule.degrades() && *k == i && t.raised.is_some())
    }

    pub fn active(&self) -> Vec<Alert> {
        self.trackers
            .values()
            .filter_map(|t| t.raised.clone())
            .collect()
    }

    pub fn evaluate(&mut self, inp: &Inputs<'_>) -> Vec<Change> {
        let mut changes = Vec::new();
        let elapsed = self
            .last
            .replace(inp.now)
            .map(|t| inp.now.saturating_duration_since(t));
        let min = self.cfg.min_samples;
        for (i, (name, figures)) in inp.deployments.iter().enumerate() {
            let w = figures.filter(|w| w.calls >= min);
            let name = Some(name.to_string());
            let p95 = w.filter(|w| w.p95_ms > 0.0).and_then(|w| {
                let base = self.baselines[i]?;
                let threshold =
                    (base * self.cfg.p95_factor).max(self.cfg.p95_floor.as_secs_f64() * 1000.0);
                Some((w.p95_ms, threshold))
            });
            self.step(Rule::P95Latency, i, &name, None, p95, None, &mut changes);
            let errors = w.map(|w| (w.error_rate(), self.cfg.error_rate));
            self.step(Rule::ErrorRate, i, &name, None, errors, None, &mut changes);
            let timeouts = w.map(|w| (w.timeout_rate(), self.cfg.timeout_rate));
            self.step(
                Rule::TimeoutRate,
                i,
                &name,
                None,
                timeouts,
                None,
                &mut changes,
            );
            // The baseline learns after the check, so a step up is judged against the past.
            if let Some(w) = w.filter(|w| w.p95_ms > 0.0) {
                let b = &mut self.baselines[i];
                *b = Some(match (*b, elapsed) {
                    (Some(b), Some(dt)) => {
                        let k = 1.0
                            - (-dt.as_secs_f64() / self.cfg.baseline_window.as_secs_f64()).exp();
                        b + k * (w.p95_ms - b)
                    }
                    (Some(b), None) => b,
                    (None, _) => w.p95_ms,
                });
            }
        }

        let ratio = self.fallback_ratio(inp);
        let warn = ratio.map(|r| (r, self.cfg.fallback_ratio_warn));
        self.step(
            Rule::FallbackRatio,
            0,
            &None,
            None,
            warn,
            None,
            &mut changes,
        );
        let critical = ratio.map(|r| (r, self.cfg.fallback_ratio_critical));
        self.step(
            Rule::FallbackRatioCritical,
            0,
            &None,
            None,
            critical,
            None,
            &mut changes,
        );

        for (i, (label, spent, cap)) in inp.budgets.iter().enumerate() {
            // Reaching the cap counts as over it.
            let value = Some((*spent, cap - f64::EPSILON.max(cap * 1e-12)));
            let scope = Some(label.clone());
            self.step(
                Rule::CostOverBudget,
                i,
                &None,
                scope,
                value,
                Some(*cap),
                &mut changes,
            );
        }
        changes
    }

    /// Fallbacks per request over the last window; `None` with fewer than `min_samples` requests.
    fn fallback_ratio(&mut self, inp: &Inputs<'_>) -> Option<f64> {
        self.traffic
            .push_back((inp.now, inp.requests, inp.fallbacks));
        // Keep one sample at or before the window's start, as the base to count from.
        while self.traffic.len() > 1
            && inp.now.saturating_duration_since(self.traffic[1].0) >= self.cfg.window
        {
            self.traffic.pop_front();
        }
        let (_, r0, f0) = *self.traffic.front()?;
        let requests = inp.requests.saturating_sub(r0);
        let fallbacks = inp.fallbacks.saturating_sub(f0);
        (requests >= self.cfg.min_samples).then(|| fallbacks as f64 / requests as f64)
    }

    /// One rule for one subject: `measured` is (value, threshold), `None` when there is too
    /// little data to judge (then nothing changes); `shown` is the threshold events report, when
    /// it is not the one compared against.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        rule: Rule,
        key: usize,
        deployment: &Option<String>,
        scope: Option<String>,
        measured: Option<(f64, f64)>,
        shown: Option<f64>,
        changes: &mut Vec<Change>,
    ) {
        let Some((value, threshold)) = measured else {
            return;
        };
        let shown = shown.unwrap_or(threshold);
        let (raise_after, clear_after) = (self.cfg.raise_after, self.cfg.clear_after);
        let clear_at = threshold * self.cfg.clear_below;
        let t = self.trackers.entry((rule, key)).or_default();
        if value > threshold {
            t.over += 1;
            t.under = 0;
            if let Some(a) = &mut t.raised {
                a.value = value;
                a.threshold = shown;
            } else if t.over >= raise_after {
                let alert = Alert {
                    rule: rule.as_str().into(),
                    severity: rule.severity().into(),
                    deployment: deployment.clone(),
                    scope,
                    value,
                    threshold: shown,
                    since: now_rfc3339(),
                };
                t.raised = Some(alert.clone());
                changes.push(Change::Raised(alert));
            }
        } else if value < clear_at {
            t.under += 1;
            t.over = 0;
            if t.under >= clear_after
                && let Some(mut a) = t.raised.take()
            {
                a.value = value;
                a.threshold = shown;
                changes.push(Change::Cleared(a));
            }
        } else {
            // Between the clear line and the threshold: hold whatever state it is in.
            t.over = 0;
            t.under = 0;
            if let Some(a) = &mut t.raised {
                a.value = value;
            }
        }
    }
}

/// One deployment's calls over the alert window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowFigures {
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// P95 of the successful calls, in ms (0 when there were none).
    pub p95_ms: f64,
}

impl WindowFigures {
    /// Errors of every kind (timeouts included) per call.
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            (self.errors + self.timeouts) as f64 / self.calls as f64
        }
    }

    pub fn timeout_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.timeouts as f64 / self.calls as f64
        }
    }
}

impl Change {
    /// The `llm.status.events` message for this change.
    pub fn into_event(self, instance: Arc<str>) -> Event {
        let (state, a) = match self {
            Change::Raised(a) => ("raised", a),
            Change::Cleared(a) => ("cleared", a),
        };
        Event::Alert {
            state,
            rule: a.rule,
            severity: a.severity,
            deployment: a.deployment,
            scope: a.scope,
            value: a.value,
            threshold: a.threshold,
            at: now_rfc3339(),
            instance,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> AlertsConfig {
        AlertsConfig {
            raise_after: 2,
            clear_after: 3,
            min_samples: 20,
            ..AlertsConfig::default()
        }
    }

    fn window(calls: u64, errors: u64, timeouts: u64, p95_ms: f64) -> Option<WindowFigures> {
        Some(WindowFigures {
            calls,
            errors,
            timeouts,
            p95_ms,
        })
    }

    struct Run {
        rules: Rules,
        now: Instant,
        requests: u64,
        fallbacks: u64,
    }

    impl Run {
        fn new() -> Self {
            Self {
                rules: Rules::new(cfg(), 1),
                now: Instant::now(),
                requests: 0,
                fallbacks: 0,
            }
        }

        fn tick(&mut self, w: Option<WindowFigures>) -> Vec<(String, &'static str)> {
            self.now += Duration::from_secs(10);
            let deployments = [("d".into(), w)];
            self.rules
                .evaluate(&Inputs {
                    now: self.now,
                    deployments: &deployments,
                    requests: self.requests,
                    fallbacks: self.fallbacks,
                    budgets: &[],
                })
                .into_iter()
                .map(|c| match c {
                    Change::Raised(a) => (a.rule, "raised"),
                    Change::Cleared(a) => (a.rule, "cleared"),
                })
                .collect()
        }
    }

    fn rc(rule: &str, s: &'static str) -> Vec<(String, &'static str)> {
        vec![(rule.to_string(), s)]
    }

    #[test]
    fn error_rate_is_raised_after_two_evaluations_and_cleared_after_three() {
        let mut r = Run::new();
        assert!(r.tick(window(100, 1, 0, 200.0)).is_empty());
        assert!(
            r.tick(window(100, 3, 0, 200.0)).is_empty(),
            "one reading over"
        );
        assert_eq!(r.tick(window(100, 3, 0, 200.0)), rc("error_rate", "raised"));
        assert!(r.rules.degraded(0));
        assert_eq!(r.rules.active().len(), 1);
        assert!(r.tick(window(100, 1, 0, 200.0)).is_empty());
        assert!(r.tick(window(100, 1, 0, 200.0)).is_empty());
        assert_eq!(
            r.tick(window(100, 1, 0, 200.0)),
            rc("error_rate", "cleared")
        );
        assert!(!r.rules.degraded(0));
        assert!(r.rules.active().is_empty());
    }

    #[test]
    fn a_rate_hovering_at_the_threshold_does_not_flap() {
        let mut r = Run::new();
        let mut changes = Vec::new();
        // 1.9 %, 2.1 %, 1.9 %, 2.1 % ... then it stays over for a while, then it hovers again.
        for i in 0..40 {
            let errors = if i % 2 == 0 { 19 } else { 21 };
            changes.extend(r.tick(window(1000, errors, 0, 200.0)));
        }
        assert!(
            changes.is_empty(),
            "alternating readings raised: {changes:?}"
        );
        for _ in 0..3 {
            changes.extend(r.tick(window(1000, 30, 0, 200.0)));
        }
        for i in 0..40 {
            let errors = if i % 2 == 0 { 19 } else { 21 };
            changes.extend(r.tick(window(1000, errors, 0, 200.0)));
        }
        assert_eq!(
            changes,
            rc("error_rate", "raised"),
            "one raise, no flapping"
        );
        for _ in 0..3 {
            changes.extend(r.tick(window(1000, 10, 0, 200.0)));
        }
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1], ("error_rate".to_string(), "cleared"));
    }

    #[test]
    fn p95_is_judged_against_the_deployments_own_baseline() {
        let mut r = Run::new();
        for _ in 0..10 {
            assert!(r.tick(window(100, 0, 0, 200.0)).is_empty());
        }
        assert_eq!(r.rules.baseline(0), Some(200.0));
        // 1.9x the baseline is not an alert; 2.5x is, on the second reading.
        assert!(r.tick(window(100, 0, 0, 380.0)).is_empty());
        assert!(r.tick(window(100, 0, 0, 500.0)).is_empty());
        let raised = r.tick(window(100, 0, 0, 500.0));
        assert_eq!(raised, rc("p95_latency", "raised"));
        let a = &r.rules.active()[0];
        assert_eq!(a.deployment.as_deref(), Some("d"));
        // Twice the baseline, which has learned a little of the new latency meanwhile.
        assert!(a.threshold > 399.0 && a.threshold < 410.0, "{a:?}");
        for _ in 0..2 {
            assert!(r.tick(window(100, 0, 0, 210.0)).is_empty());
        }
        assert_eq!(
            r.tick(window(100, 0, 0, 210.0)),
            rc("p95_latency", "cleared")
        );
    }

    #[test]
    fn too_few_calls_change_nothing() {
        let mut r = Run::new();
        for _ in 0..5 {
            assert!(r.tick(window(10, 5, 5, 200.0)).is_empty());
        }
        assert!(r.tick(None).is_empty());
    }

    #[test]
    fn fallback_ratio_warns_over_10_and_is_critical_over_30_percent() {
        let mut r = Run::new();
        let mut seen = Vec::new();
        // 100 requests per evaluation: 5 %, then 20 %, then 40 % falling back.
        for (share, ticks) in [(5, 8), (20, 8), (40, 8), (0, 12)] {
            for _ in 0..ticks {
                r.requests += 100;
                r.fallbacks += share;
                seen.extend(r.tick(window(100, 0, 0, 200.0)));
            }
        }
        let rules: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        assert_eq!(
            rules,
            [
                ("fallback_ratio", "raised"),
                ("fallback_ratio_critical", "raised"),
                ("fallback_ratio_critical", "cleared"),
                ("fallback_ratio", "cleared"),
            ]
        );
    }

    #[test]
    fn spend_at_a_cap_raises_cost_over_budget() {
        let mut rules = Rules::new(cfg(), 0);
        let now = Instant::now();
        let eval = |rules: &mut Rules, spent: f64, at: u64| {
            rules.evaluate(&Inputs {
                now: now + Duration::from_secs(at),
                deployments: &[],
                requests: 0,
                fallbacks: 0,
                budgets: &[("task `extract`".into(), spent, 1.0)],
            })
        };
        assert!(eval(&mut rules, 0.5, 10).is_empty());
        assert!(eval(&mut rules, 1.0, 20).is_empty());
        let raised = eval(&mut rules, 1.0, 30);
        let Change::Raised(a) = &raised[0] else {
            panic!("{raised:?}")
        };
        assert_eq!(a.rule, "cost_over_budget");
        assert_eq!(a.scope.as_deref(), Some("task `extract`"));
        assert_eq!((a.value, a.threshold), (1.0, 1.0));
    }
}
