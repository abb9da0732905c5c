//! Latency and outcome statistics of one deployment: an EWMA of latency, P50/P95 over the most
//! recent calls, error and timeout rates over a sliding window of calls, and running totals.

pub use crate::observe::alerts::WindowFigures;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Calls kept for percentiles and rates.
const WINDOW: usize = 512;
/// Weight of the newest sample in the EWMA.
const ALPHA: f64 = 0.2;
/// Upper bounds (seconds) of the latency histogram's buckets; one more bucket holds the rest.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Ok,
    /// A failure that is the provider's fault (counts for the breaker).
    Error,
    /// The deployment's own timeout.
    Timeout,
    /// Neither: caller errors, ignored statuses, the caller's deadline.
    Neutral,
}

#[derive(Debug, Default)]
pub struct Stats {
    ewma_ms: Option<f64>,
    /// (when, latency in µs, sample), newest last.
    recent: VecDeque<(Instant, u32, Sample)>,
    pub requests: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Successful calls by latency bucket (`LATENCY_BUCKETS_S`, then the overflow), not
    /// cumulative; and their latency sum in seconds.
    pub histogram: [u64; LATENCY_BUCKETS_S.len() + 1],
    pub latency_sum_s: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub ewma: f64,
}

impl Stats {
    pub fn record(&mut self, at: Instant, latency: Duration, sample: Sample) {
        self.requests += 1;
        if matches!(sample, Sample::Error | Sample::Timeout) {
            self.failures += 1;
        }
        if sample == Sample::Ok {
            let secs = latency.as_secs_f64();
            let bucket = LATENCY_BUCKETS_S.partition_point(|b| *b < secs);
            self.histogram[bucket] += 1;
            self.latency_sum_s += secs;
            let ms = secs * 1000.0;
            self.ewma_ms = Some(self.ewma_ms.map_or(ms, |e| e + ALPHA * (ms - e)));
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.recent.push_back((at, us, sample));
    }

    /// Forgets the latency average; the next success starts it.
    pub fn restart_ewma(&mut self) {
        self.ewma_ms = None;
    }

    pub fn ewma_ms(&self) -> Option<f64> {
        self.ewma_ms
    }

    /// Percentiles over the successful calls of the window, in milliseconds.
    pub fn latency(&self) -> LatencySummary {
        let mut ok: Vec<u32> = self
            .recent
            .iter()
            .filter(|(_, _, s)| *s == Sample::Ok)
            .map(|(_, us, _)| *us)
            .collect();
        LatencySummary {
            p50: percentile(&mut ok, 0.50),
            p95: percentile(&mut ok, 0.95),
            ewma: self.ewma_ms.unwrap_or_default(),
        }
    }

    /// What the alert rules read: the calls of the last `window` (at most the last 512 calls),
    /// or the last `at_least` calls if the window holds fewer — so that a deployment that gets
    /// little traffic (say, because its alert moved traffic away) is judged on its latest calls
    /// rather than not at all.
    pub fn window(&self, now: Instant, window: Duration, at_least: u64) -> WindowFigures {
        let since = now.checked_sub(window);
        let mut f = WindowFigures::default();
        let mut ok = Vec::new();
        for (at, us, s) in self.recent.iter().rev() {
            if f.calls >= at_least && since.is_some_and(|t| *at < t) {
                break;
            }
            f.calls += 1;
            match s {
                Sample::Ok => ok.push(*us),
                Sample::Error => f.errors += 1,
                Sample::Timeout => f.timeouts += 1,
                Sample::Neutral => {}
            }
        }
        f.p95_ms = percentile(&mut ok, 0.95);
        f
    }

    /// (error rate, timeout rate) over the window.
    pub fn rates(&self) -> (f64, f64) {
        if self.recent.is_empty() {
            return (0.0, 0.0);
        }
        let n = self.recent.len() as f64;
        let count = |k: Sample| self.recent.iter().filter(|(_, _, s)| *s == k).count() as f64;
        let timeouts = count(Sample::Timeout);
        ((count(Sample::Error) + timeouts) / n, timeouts / n)
    }
}

/// The `p` percentile of `us` (microseconds) in milliseconds; 0 when empty.
fn percentile(us: &mut [u32], p: f64) -> f64 {
    if us.is_empty() {
        return 0.0;
    }
    us.sort_unstable();
    let i = ((us.len() as f64 * p).ceil() as usize).clamp(1, us.len()) - 1;
    f64::from(us[i]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_ewma_and_rates() {
        let mut s = Stats::default();
        let now = Instant::now();
        for ms in 1..=100 {
            s.record(now, Duration::from_millis(ms), Sample::Ok);
        }
        s.record(now, Duration::from_secs(5), Sample::Timeout);
        s.record(now, Duration::from_millis(3), Sample::Error);
        s.record(now, Duration::from_millis(3), Sample::Neutral);
        let l = s.latency();
        assert_eq!((l.p50, l.p95), (50.0, 95.0));
        assert!(l.ewma > 90.0 && l.ewma < 100.0, "{}", l.ewma);
        let (err, timeout) = s.rates();
        assert!((err - 2.0 / 103.0).abs() < 1e-9);
        assert!((timeout - 1.0 / 103.0).abs() < 1e-9);
        assert_eq!((s.requests, s.failures), (103, 2));
        // 1..=10 ms in the first bucket (le 0.01 s), 11..=25 in the second, and so on.
        assert_eq!(&s.histogram[..4], &[10, 15, 25, 50]);
        assert_eq!(s.histogram.iter().sum::<u64>(), 100);
        assert!((s.latency_sum_s - 5.050).abs() < 1e-9);
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let mut s = Stats::default();
        let now = Instant::now();
        for _ in 0..WINDOW {
            s.record(now, Duration::from_millis(1), Sample::Error);
        }
        for _ in 0..WINDOW {
            s.record(now, Duration::from_millis(1), Sample::Ok);
        }
        assert_eq!(s.rates(), (0.0, 0.0));
    }

    #[test]
    fn the_alert_window_holds_only_recent_calls() {
        let mut s = Stats::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            s.record(t0, Duration::from_millis(900), Sample::Ok);
            s.record(t0, Duration::from_millis(900), Sample::Error);
        }
        let t1 = t0 + Duration::from_secs(90);
        for ms in 1..=20 {
            s.record(t1, Duration::from_millis(ms), Sample::Ok);
        }
        s.record(t1, Duration::from_secs(5), Sample::Timeout);
        let w = s.window(t1, Duration::from_secs(60), 20);
        assert_eq!((w.calls, w.errors, w.timeouts), (21, 0, 1));
        assert_eq!(w.p95_ms, 19.0);
        assert!((w.error_rate() - 1.0 / 21.0).abs() < 1e-9);
        let all = s.window(t1, Duration::from_secs(120), 20);
        assert_eq!((all.calls, all.errors), (41, 10));
        assert_eq!(all.p95_ms, 900.0);
        // Too few calls in the window: the latest `at_least` calls count, however old.
        let later = s.window(t1 + Duration::from_secs(600), Duration::from_secs(60), 25);
        assert_eq!((later.calls, later.errors, later.timeouts), (25, 2, 1));
    }
}
