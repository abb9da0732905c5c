//! Which deployments a request may go to: a `model` that names a group or a deployment pins the
//! route; otherwise the subject's `<task>` token maps through `[tasks]`, and an unknown task uses
//! `routing.default_group`.

use std::collections::HashMap;

use crate::config::Config;

/// A group's members and where it falls back to, by index.
#[derive(Debug)]
pub struct GroupRoute {
    pub name: String,
    pub members: Vec<usize>,
    pub chain: Vec<usize>,
}

/// The routing table, built once from the config.
#[derive(Debug)]
pub struct RouteTable {
    pub groups: Vec<GroupRoute>,
    group_by_name: HashMap<String, usize>,
    deployment_by_name: HashMap<String, usize>,
    tasks: HashMap<String, usize>,
    default_group: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A group, then its fallback groups.
    Group(usize),
    /// Exactly this deployment.
    Deployment(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub reason: &'static str,
}

impl RouteTable {
    pub fn new(config: &Config) -> Self {
        let group_by_name: HashMap<String, usize> = config
            .groups
            .keys()
            .enumerate()
            .map(|(i, g)| (g.clone(), i))
            .collect();
        let groups = config
            .groups
            .keys()
            .map(|g| GroupRoute {
                name: g.clone(),
                members: config
                    .deployments
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| &d.group == g)
                    .map(|(i, _)| i)
                    .collect(),
                chain: config
                    .routing
                    .fallbacks
                    .get(g)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| group_by_name.get(f).copied())
                    .collect(),
            })
            .collect();
        Self {
            groups,
            deployment_by_name: config
                .deployments
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name.clone(), i))
                .collect(),
            tasks: config
                .tasks
                .iter()
                .filter_map(|(t, g)| Some((t.clone(), *group_by_name.get(g)?)))
                .collect(),
            default_group: group_by_name
                .get(&config.routing.default_group)
                .copied()
                .unwrap_or(0),
            group_by_name,
        }
    }

    pub fn resolve(&self, task: &str, model: Option<&str>) -> Route {
        if let Some(m) = model {
            if let Some(&g) = self.group_by_name.get(m) {
                return Route {
                    target: Target::Group(g),
                    reason: "model names a group",
                };
            }
            if let Some(&d) = self.deployment_by_name.get(m) {
                return Route {
                    target: Target::Deployment(d),
                    reason: "model names a deployment",
                };
            }
        }
        match self.tasks.get(task) {
            Some(&g) => Route {
                target: Target::Group(g),
                reason: "task table",
            },
            None => Route {
                target: Target::Group(self.default_group),
                reason: "default group",
            },
        }
    }

    /// The groups a request walks, in order: the group, then its fallbacks (each once).
    pub fn chain(&self, group: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(group).chain(
            self.groups[group]
                .chain
                .iter()
                .copied()
                .filter(move |g| *g != group),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_then_task_then_default() {
        let c = Config::demo();
        let t = RouteTable::new(&c);
        let group = |r: Route| match r.target {
            Target::Group(g) => t.groups[g].name.clone(),
            Target::Deployment(d) => c.deployments[d].name.clone(),
        };
        let first_task = c.tasks.keys().next().unwrap().clone();
        assert_eq!(group(t.resolve(&first_task, None)), c.tasks[&first_task]);
        assert_eq!(
            group(t.resolve("no-such-task", Some("gpt-4o"))),
            c.routing.default_group
        );
        let d = &c.deployments[1];
        assert_eq!(t.resolve("x", Some(&d.name)).target, Target::Deployment(1));
        assert_eq!(group(t.resolve("x", Some(&d.group))), d.group);
    }
}
