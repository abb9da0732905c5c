//! Routing strategies (docs/contract.md §4): each orders a group's candidates, best first. The
//! fallback walk then tries them in that order, skipping those that cannot take the call. The
//! inputs come from what the deployment actors publish (`Published`), so a decision takes no lock
//! and no mailbox round trip.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use rand::Rng;

pub use crate::config::Strategy;

/// Latency-based: within this share of the fastest counts as equally fast...
const LATENCY_BUFFER: f64 = 0.5;
/// ... plus this many milliseconds, so that sub-millisecond noise does not split hairs.
const LATENCY_SLACK_MS: f64 = 2.0;

/// What a strategy knows of one candidate.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub index: usize,
    pub weight: u32,
    pub in_flight: u32,
    /// Share of the tighter of `rpm`/`tpm` still free this minute (1.0 when unlimited).
    pub headroom: f64,
    /// `None` before the first success: such deployments are tried early so they get measured.
    pub ewma_ms: Option<f64>,
    pub estimated_cost: f64,
}

impl Strategy {
    /// Orders `c` best first.
    pub fn order(self, c: &mut [Candidate], rng: &mut impl Rng) {
        match self {
            Self::SimpleShuffle => weighted_shuffle(c, rng),
            Self::LeastBusy => {
                weighted_shuffle(c, rng);
                c.sort_by_key(|x| x.in_flight);
            }
            Self::UsageBased => {
                weighted_shuffle(c, rng);
                c.sort_by(|a, b| b.headroom.total_cmp(&a.headroom));
            }
            Self::CostBased => {
                weighted_shuffle(c, rng);
                c.sort_by(|a, b| a.estimated_cost.total_cmp(&b.estimated_cost));
            }
            Self::LatencyBased => {
                // Deployments within a buffer of the fastest count as equally fast and share the
                // traffic by weight, so one fast deployment is not flooded and a recovered one
                // wins its share back; unmeasured ones (new, or idle long enough for their figure
                // to go stale) come first so that they get measured. The rest follow by latency.
                let best = c
                    .iter()
                    .filter_map(|x| x.ewma_ms)
                    .min_by(f64::total_cmp)
                    .unwrap_or(0.0);
                let limit = best * (1.0 + LATENCY_BUFFER) + LATENCY_SLACK_MS;
                let tier = |x: &Candidate| match x.ewma_ms {
                    None => (0, 0.0),
                    Some(ms) if ms <= limit => (1, 0.0),
                    Some(ms) => (2, ms),
                };
                weighted_shuffle(c, rng);
                c.sort_by(|a, b| {
                    let (ta, ma) = tier(a);
                    let (tb, mb) = tier(b);
                    ta.cmp(&tb)
                        .then(ma.partial_cmp(&mb).unwrap_or(Ordering::Equal))
                });
            }
        }
    }
}

/// Weighted random order (Efraimidis–Spirakis): each candidate draws `u^(1/w)`, highest first.
fn weighted_shuffle(c: &mut [Candidate], rng: &mut impl Rng) {
    if c.len() < 2 {
        return;
    }
    let mut keyed: Vec<(f64, Candidate)> = c
        .iter()
        .map(|x| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            (u.powf(1.0 / f64::from(x.weight.max(1))), *x)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (slot, (_, x)) in c.iter_mut().zip(keyed) {
        *slot = x;
    }
}

/// Rendezvous hashing for `Llm-Affinity`: every key ranks every deployment the same way on every
/// instance; when the top one is unhealthy the next takes over, and it comes back when it recovers.
pub fn affinity_order(c: &mut [Candidate], key: &str, names: impl Fn(usize) -> u64) {
    let score = |x: &Candidate| {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        names(x.index).hash(&mut h);
        h.finish()
    };
    c.sort_by_key(|x| std::cmp::Reverse(score(x)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn cand(index: usize, weight: u32) -> Candidate {
        Candidate {
            index,
            weight,
            in_flight: 0,
            headroom: 1.0,
            ewma_ms: None,
            estimated_cost: 0.0,
        }
    }

    #[test]
    fn simple_shuffle_follows_the_weights() {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut first = [0usize; 3];
        for _ in 0..30_000 {
            let mut c = [cand(0, 1), cand(1, 2), cand(2, 7)];
            Strategy::SimpleShuffle.order(&mut c, &mut rng);
            first[c[0].index] += 1;
        }
        // Expected 10 % / 20 % / 70 %.
        assert!((2_700..3_300).contains(&first[0]), "{first:?}");
        assert!((5_400..6_600).contains(&first[1]), "{first:?}");
        assert!((20_300..21_700).contains(&first[2]), "{first:?}");
    }

    #[test]
    fn names_parse_and_print() {
        for name in Strategy::NAMES {
            assert_eq!(name.parse::<Strategy>().unwrap().as_str(), name);
        }
        assert!("fastest".parse::<Strategy>().is_err());
    }

    #[test]
    fn least_busy_and_cost_and_usage_order() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = [cand(0, 1), cand(1, 1), cand(2, 1)];
        c[0].in_flight = 5;
        c[1].in_flight = 0;
        c[2].in_flight = 2;
        Strategy::LeastBusy.order(&mut c, &mut rng);
        assert_eq!(c.map(|x| x.index), [1, 2, 0]);
        let mut c = [cand(0, 1), cand(1, 1), cand(2, 1)];
        c[0].estimated_cost = 3.0;
        c[1].estimated_cost = 1.0;
        c[2].estimated_cost = 2.0;
        Strategy::CostBased.order(&mut c, &mut rng);
        assert_eq!(c.map(|x| x.index), [1, 2, 0]);
        let mut c = [cand(0, 1), cand(1, 1)];
        c[0].headroom = 0.1;
        Strategy::UsageBased.order(&mut c, &mut rng);
        assert_eq!(c[0].index, 1);
    }

    #[test]
    fn latency_based_shares_among_the_fast_and_probes_the_unmeasured() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut firsts = [0usize; 4];
        for _ in 0..4_000 {
            let mut c = [cand(0, 1), cand(1, 1), cand(2, 1), cand(3, 1)];
            c[0].ewma_ms = Some(100.0);
            c[1].ewma_ms = Some(10.0);
            c[2].ewma_ms = Some(12.0);
            c[3].ewma_ms = Some(40.0);
            Strategy::LatencyBased.order(&mut c, &mut rng);
            firsts[c[0].index] += 1;
            assert_eq!(
                c[2].index, 3,
                "the slower ones after the fast set, by latency"
            );
            assert_eq!(c[3].index, 0);
        }
        assert_eq!(firsts[0] + firsts[3], 0);
        assert!(firsts[1] > 1_700 && firsts[2] > 1_700, "{firsts:?}");
        let mut c = [cand(0, 1), cand(1, 1)];
        c[0].ewma_ms = Some(5.0);
        Strategy::LatencyBased.order(&mut c, &mut rng);
        assert_eq!(c[0].index, 1, "the unmeasured one is probed first");
    }

    #[test]
    fn affinity_is_stable_per_key() {
        let order = |key: &str| {
            let mut c = [cand(0, 1), cand(1, 1), cand(2, 1), cand(3, 1)];
            affinity_order(&mut c, key, |i| i as u64);
            c.map(|x| x.index)
        };
        assert_eq!(order("user-1"), order("user-1"));
        let firsts: std::collections::HashSet<usize> =
            (0..50).map(|i| order(&format!("user-{i}"))[0]).collect();
        assert!(firsts.len() > 1, "keys spread over deployments");
    }
}
