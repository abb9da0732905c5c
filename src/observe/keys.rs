//! Per-key usage of the HTTP door (`[[http.keys]]`): requests and spend of the current UTC day,
//! counted with atomics, shown by key name (never the key) in status and Prometheus. A key's daily
//! cap is checked against what the whole cluster spent: this instance adds what it spent to the
//! key's total in the cluster bucket (`cluster::key_spend`, driven by the HTTP door) and keeps the
//! last total it read; until a spend is written it counts here as `unflushed`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use super::spend::{UNIT, day_name, today};
use crate::config::HttpKey;

/// One key's counters.
#[derive(Default)]
struct Cell {
    requests: AtomicU64,
    /// What this instance spent today, in 1e-10 USD.
    spent: AtomicU64,
    /// The key's total for the day in the cluster bucket, as last read or written.
    shared: AtomicU64,
    /// Spent here, not yet added to the bucket.
    unflushed: AtomicU64,
}

pub struct KeyUsage {
    names: Vec<String>,
    caps: Vec<Option<f64>>,
    cells: Vec<Cell>,
    day: AtomicU64,
}

/// One key in the status snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    pub name: String,
    /// Requests this instance took with the key today.
    pub requests: u64,
    /// What this instance spent for the key today, USD.
    pub spend_usd: f64,
    /// The key's spend today across the cluster, as this instance last knew it.
    pub cluster_spend_usd: f64,
    #[serde(default)]
    pub max_cost_usd_per_day: Option<f64>,
}

impl KeyUsage {
    pub fn new(keys: &[HttpKey]) -> Self {
        Self {
            names: keys.iter().map(|k| k.name.clone()).collect(),
            caps: keys.iter().map(|k| k.max_cost_usd_per_day).collect(),
            cells: keys.iter().map(|_| Cell::default()).collect(),
            day: AtomicU64::new(today()),
        }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn name(&self, key: usize) -> &str {
        self.names.get(key).map_or("", String::as_str)
    }

    /// The UTC day the counters are for, `YYYY-MM-DD`, after starting a new one if the date
    /// changed.
    pub fn day(&self) -> String {
        self.roll_over();
        day_name(self.day.load(Relaxed))
    }

    pub fn count_request(&self, key: usize) {
        self.roll_over();
        if let Some(c) = self.cells.get(key) {
            c.requests.fetch_add(1, Relaxed);
        }
    }

    pub fn record_cost(&self, key: usize, cost_usd: f64) {
        let units = to_units(cost_usd);
        if let Some(c) = self.cells.get(key).filter(|_| units > 0) {
            c.spent.fetch_add(units, Relaxed);
            c.unflushed.fetch_add(units, Relaxed);
        }
    }

    /// The key's spend today as far as this instance knows: the cluster's total plus what it has
    /// not written there yet; and its cap.
    pub fn spent_and_cap(&self, key: usize) -> (f64, Option<f64>) {
        self.roll_over();
        let Some(c) = self.cells.get(key) else {
            return (0.0, None);
        };
        let units = c.shared.load(Relaxed) + c.unflushed.load(Relaxed);
        (units as f64 / UNIT, self.caps.get(key).copied().flatten())
    }

    /// What is to be added to the bucket for `key` (taken: give it back with `unflush` if the
    /// write fails).
    pub fn take_unflushed(&self, key: usize) -> u64 {
        self.cells
            .get(key)
            .map_or(0, |c| c.unflushed.swap(0, Relaxed))
    }

    pub fn unflush(&self, key: usize, units: u64) {
        if let Some(c) = self.cells.get(key) {
            c.unflushed.fetch_add(units, Relaxed);
        }
    }

    /// The key's total in the bucket, as just read or written.
    pub fn set_shared(&self, key: usize, units: u64) {
        if let Some(c) = self.cells.get(key) {
            c.shared.store(units, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<KeyStatus> {
        self.roll_over();
        self.cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (cluster, cap) = self.spent_and_cap(i);
                KeyStatus {
                    name: self.names[i].clone(),
                    requests: c.requests.load(Relaxed),
                    spend_usd: c.spent.load(Relaxed) as f64 / UNIT,
                    cluster_spend_usd: cluster,
                    max_cost_usd_per_day: cap,
                }
            })
            .collect()
    }

    fn roll_over(&self) {
        let now = today();
        if self.day.swap(now, Relaxed) == now {
            return;
        }
        for c in &self.cells {
            for n in [&c.requests, &c.spent, &c.shared, &c.unflushed] {
                n.store(0, Relaxed);
            }
        }
    }
}

/// USD to 1e-10 units; any cost above zero counts at least one unit, so that a cap is never
/// missed by rounding.
fn to_units(usd: f64) -> u64 {
    if !(usd.is_finite() && usd > 0.0) {
        return 0;
    }
    ((usd * UNIT).round() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::key_digest;

    fn key(name: &str, cap: Option<f64>) -> HttpKey {
        HttpKey {
            name: name.into(),
            sha256: key_digest(name),
            allowed: None,
            rpm: None,
            max_cost_usd_per_day: cap,
        }
    }

    #[test]
    fn spend_counts_here_until_written_then_from_the_shared_total() {
        let u = KeyUsage::new(&[key("a", Some(1.0)), key("b", None)]);
        u.count_request(0);
        u.record_cost(0, 0.25);
        u.record_cost(0, f64::NAN);
        u.record_cost(0, 1e-15);
        assert_eq!(u.spent_and_cap(0).1, Some(1.0));
        assert!((u.spent_and_cap(0).0 - 0.25).abs() < 1e-9);
        let taken = u.take_unflushed(0);
        // Another instance spent 0.5: the bucket says 0.75 after our write.
        u.set_shared(0, taken + to_units(0.5));
        assert!((u.spent_and_cap(0).0 - 0.75).abs() < 1e-9);
        let s = u.snapshot();
        assert_eq!(s[0].requests, 1);
        assert!(
            (s[0].spend_usd - 0.25).abs() < 1e-9,
            "this instance's own spend"
        );
        assert_eq!(s[1].spend_usd, 0.0);
    }
}
