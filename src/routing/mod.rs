//! Routing: from a request to the deployment that serves it. `classify` maps the task (or a pinned
//! model) to a group, `strategy` orders the group's deployments, `budget` applies the daily caps,
//! `fallback` walks the chain over the deployments' `Slot`s, and `policy` decides what a failed
//! call does (fall back or stop, count for the breaker, cool down).

pub mod budget;
pub mod classify;
pub mod embed;
pub mod fallback;
pub mod policy;
pub mod strategy;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::config::{Config, Shift};
use crate::observe::spend::Spend;
use budget::Budgets;
use classify::RouteTable;
use strategy::Strategy;

pub use crate::deployment::Slot;

pub struct Router {
    pub table: RouteTable,
    pub slots: Arc<[Slot]>,
    /// Per group, by the table's group index.
    strategies: Vec<Strategy>,
    pub requests: AtomicU64,
    pub fallbacks: AtomicU64,
    /// Today's spend, for budgets and status.
    pub spend: Arc<Spend>,
    pub budgets: Budgets,
    /// `alerts.shift` and `alerts.probe_share`: where degraded deployments go in the order.
    shift: Shift,
    probe_share: f64,
    /// `breaker.max_retry_after`: the longest wait a refusal tells its caller
    /// (`Failed::retry_after`).
    max_retry_after: std::time::Duration,
}

impl Router {
    pub fn new(config: &Config, slots: Arc<[Slot]>, spend: Arc<Spend>) -> Self {
        let table = RouteTable::new(config);
        let budgets = Budgets::new(config, &table, &spend);
        let strategies = table
            .groups
            .iter()
            .map(|g| config.strategy_of(&g.name))
            .collect();
        Self {
            table,
            slots,
            strategies,
            requests: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            spend,
            budgets,
            shift: if config.alerts.enabled {
                config.alerts.shift
            } else {
                Shift::Off
            },
            probe_share: config.alerts.probe_share,
            max_retry_after: config.breaker.max_retry_after,
        }
    }
}

impl Router {
    /// Every deployment a route may reach: the group's and its fallbacks', or the one pinned.
    fn members(&self, target: classify::Target) -> Vec<usize> {
        match target {
            classify::Target::Group(g) => self
                .table
                .chain(g)
                .filter_map(|g| self.table.groups.get(g))
                .flat_map(|g| g.members.iter().copied())
                .collect(),
            classify::Target::Deployment(d) => vec![d],
        }
    }

    /// The most inputs one provider call takes along `task`'s embeddings route: a batch sends
    /// that many items per request. 1 when the task has no embedding route (its requests fail
    /// with the engine's reason).
    pub fn embed_max_inputs(&self, task: &str) -> usize {
        let Some(route) = self.table.resolve_embed(task, None) else {
            return 1;
        };
        self.members(route.target)
            .iter()
            .filter_map(|&i| self.slots[i].config().embedding.as_ref())
            .map(|e| e.max_inputs)
            .min()
            .unwrap_or(1)
    }

    /// The largest `tpm` reservation batch work may make on any candidate `req` could be routed
    /// to for `task`: each candidate's `tpm × (1 - batch.live_reserve)`, the best of them.
    /// `None` when some candidate has no `tpm` limit (or there is no candidate: the walk reports
    /// that itself). A batch item whose estimate is above this can never be admitted.
    pub fn batch_token_ceiling(
        &self,
        task: &str,
        req: &crate::protocol::ChatRequest,
    ) -> Option<u64> {
        let route = self.table.resolve(task, req);
        let candidates = self.members(route.target);
        let mut best: Option<u64> = None;
        for slot in candidates.iter().filter_map(|&i| self.slots.get(i)) {
            let tpm = slot.config().tpm?.get();
            // As the actor's admission computes a batch's cap.
            let cap = (tpm as f64 * slot.args.batch_share).floor() as u64;
            best = Some(best.map_or(cap, |b| b.max(cap)));
        }
        best
    }
}
