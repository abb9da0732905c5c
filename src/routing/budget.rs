//! Daily budget caps (`[[budgets.caps]]`): before a request is routed, the caps on its task, its
//! group and all traffic are checked against today's spend. A cap that is reached either rejects
//! the request (`budget_exceeded`) or downgrades it to the group the cap names.

use std::sync::Arc;

use super::classify::{RouteTable, Target};
use crate::config::{CapAction, CapScope, Config};
use crate::observe::spend::Spend;

struct Cap {
    scope: Scope,
    daily_usd: f64,
    /// The group to downgrade to; `None` rejects.
    downgrade_to: Option<usize>,
    label: String,
}

enum Scope {
    All,
    Task(usize),
    Group(usize, String),
}

pub struct Budgets {
    caps: Vec<Cap>,
}

pub enum Verdict {
    Go,
    Reject(String),
    /// Route to this group instead, for this reason.
    Downgrade(usize, Arc<str>),
}

impl Budgets {
    pub fn new(config: &Config, table: &RouteTable, spend: &Spend) -> Self {
        let caps = config
            .budgets
            .iter()
            .filter_map(|c| {
                let (scope, label) = match &c.scope {
                    CapScope::All => (Scope::All, "all traffic".to_string()),
                    CapScope::Task(t) => (Scope::Task(spend.task_key(t)), format!("task `{t}`")),
                    CapScope::Group(g) => (
                        Scope::Group(table.group_index(g)?, g.clone()),
                        format!("group `{g}`"),
                    ),
                };
                let downgrade_to = match &c.action {
                    CapAction::Reject => None,
                    CapAction::Downgrade(g) => Some(table.group_index(g)?),
                };
                Some(Cap {
                    scope,
                    daily_usd: c.daily_usd,
                    downgrade_to,
                    label,
                })
            })
            .collect();
        Self { caps }
    }

    pub fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }

    /// Every cap with today's spend against it: (what it covers, spent, cap), for the alerts.
    pub fn levels(&self, spend: &Spend) -> Vec<(String, f64, f64)> {
        self.caps
            .iter()
            .map(|cap| {
                let spent = match &cap.scope {
                    Scope::All => spend.total_usd(),
                    Scope::Task(t) => spend.task_usd(*t),
                    Scope::Group(_, name) => spend.group_usd(name),
                };
                (cap.label.clone(), spent, cap.daily_usd)
            })
            .collect()
    }

    /// The first cap reached by a request of `task` routed to `target`.
    pub fn check(&self, spend: &Spend, task: usize, target: Target) -> Verdict {
        for cap in &self.caps {
            let spent = match &cap.scope {
                Scope::All => spend.total_usd(),
                Scope::Task(t) if *t == task => spend.task_usd(*t),
                Scope::Group(g, name) if target == Target::Group(*g) => spend.group_usd(name),
                Scope::Task(_) | Scope::Group(..) => continue,
            };
            if spent < cap.daily_usd {
                continue;
            }
            let why = format!(
                "daily budget of {} reached: ${spent:.6} of ${}",
                cap.label, cap.daily_usd
            );
            match cap.downgrade_to {
                // Already downgraded: this cap is met.
                Some(g) if target == Target::Group(g) => continue,
                Some(g) => {
                    return Verdict::Downgrade(g, format!("budget: {why}, downgraded").into());
                }
                None => return Verdict::Reject(why),
            }
        }
        Verdict::Go
    }
}
