//! Latency and outcome statistics of one deployment: an EWMA of latency, P50/P95 over the most
//! recent calls, error and timeout rates over a sliding window of calls, and running totals.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

/// Calls kept for percentiles and rates.
const WINDOW: usize = 512;
/// Weight of the newest sample in the EWMA.
const ALPHA: f64 = 0.2;

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
    /// (latency in µs, sample), newest last.
    recent: VecDeque<(u32, Sample)>,
    pub requests: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub ewma: f64,
}

impl Stats {
    pub fn record(&mut self, latency: Duration, sample: Sample) {
        self.requests += 1;
        if matches!(sample, Sample::Error | Sample::Timeout) {
            self.failures += 1;
        }
        if sample == Sample::Ok {
            let ms = latency.as_secs_f64() * 1000.0;
            self.ewma_ms = Some(self.ewma_ms.map_or(ms, |e| e + ALPHA * (ms - e)));
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.recent.push_back((us, sample));
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
            .filter(|(_, s)| *s == Sample::Ok)
            .map(|(us, _)| *us)
            .collect();
        if ok.is_empty() {
            return LatencySummary::default();
        }
        ok.sort_unstable();
        let pct = |p: f64| {
            let i = ((ok.len() as f64 * p).ceil() as usize).clamp(1, ok.len()) - 1;
            f64::from(ok[i]) / 1000.0
        };
        LatencySummary {
            p50: pct(0.50),
            p95: pct(0.95),
            ewma: self.ewma_ms.unwrap_or_default(),
        }
    }

    /// (error rate, timeout rate) over the window.
    pub fn rates(&self) -> (f64, f64) {
        if self.recent.is_empty() {
            return (0.0, 0.0);
        }
        let n = self.recent.len() as f64;
        let count = |k: Sample| self.recent.iter().filter(|(_, s)| *s == k).count() as f64;
        let timeouts = count(Sample::Timeout);
        ((count(Sample::Error) + timeouts) / n, timeouts / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_ewma_and_rates() {
        let mut s = Stats::default();
        for ms in 1..=100 {
            s.record(Duration::from_millis(ms), Sample::Ok);
        }
        s.record(Duration::from_secs(5), Sample::Timeout);
        s.record(Duration::from_millis(3), Sample::Error);
        s.record(Duration::from_millis(3), Sample::Neutral);
        let l = s.latency();
        assert_eq!((l.p50, l.p95), (50.0, 95.0));
        assert!(l.ewma > 90.0 && l.ewma < 100.0, "{}", l.ewma);
        let (err, timeout) = s.rates();
        assert!((err - 2.0 / 103.0).abs() < 1e-9);
        assert!((timeout - 1.0 / 103.0).abs() < 1e-9);
        assert_eq!((s.requests, s.failures), (103, 2));
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let mut s = Stats::default();
        for _ in 0..WINDOW {
            s.record(Duration::from_millis(1), Sample::Error);
        }
        for _ in 0..WINDOW {
            s.record(Duration::from_millis(1), Sample::Ok);
        }
        assert_eq!(s.rates(), (0.0, 0.0));
    }
}
