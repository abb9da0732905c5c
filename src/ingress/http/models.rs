//! What `model` may name on the HTTP door: a deployment, a group or a `[tasks]` key, in that
//! order (absent: `routing.default_group`), and `GET /v1/models`, OpenAI's list of them filtered
//! to what the caller's key allows; and the health endpoints.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::Serialize;

use crate::config::{Config, HttpKey};
use crate::engine::Engine;
use crate::protocol::CircuitState;

/// Where a request's `model` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// A deployment or else a group, which the engine's router reads from the body.
    Named(String),
    /// A `[tasks]` key: sent as the request's task.
    Task(String),
    /// No `model`: the default group (or the classifier, with `routing.classify = true`).
    Default,
}

pub struct Models {
    /// Deployment → (provider, group).
    deployments: HashMap<String, (&'static str, String)>,
    groups: Vec<String>,
    tasks: BTreeMap<String, String>,
    default_group: String,
    /// `routing.default_embedding_group`: where `/v1/embeddings` without `model` goes.
    default_embedding_group: String,
    classify: bool,
    /// `GET /v1/models` entries, in order: groups, tasks, deployments; each name once.
    listed: Vec<(String, String)>,
    created: u64,
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

impl Models {
    pub fn new(config: &Config) -> Self {
        let deployments: HashMap<String, (&'static str, String)> = config
            .deployments
            .iter()
            .map(|d| (d.name.clone(), (d.provider.as_str(), d.group.clone())))
            .collect();
        let groups: Vec<String> = config.groups.keys().cloned().collect();
        let mut listed: Vec<(String, String)> = Vec::new();
        let names = groups
            .iter()
            .chain(config.tasks.keys())
            .chain(config.deployments.iter().map(|d| &d.name));
        for name in names {
            if !listed.iter().any(|(n, _)| n == name) {
                // A name that is a deployment's means the deployment, whatever else it names.
                let owner = deployments.get(name).map_or("switchyard", |(p, _)| p);
                listed.push((name.clone(), owner.to_string()));
            }
        }
        Self {
            deployments,
            groups,
            tasks: config.tasks.clone(),
            default_group: config.routing.default_group.clone(),
            default_embedding_group: config
                .routing
                .default_embedding_group
                .clone()
                .unwrap_or_default(),
            classify: config.routing.classify,
            listed,
            created: crate::cluster::wall_ms() / 1000,
        }
    }

    /// Where `model` goes, or `None` when it names nothing (404 `model_not_found`).
    pub fn pick(&self, model: Option<&str>) -> Option<Pick> {
        let Some(m) = model else {
            return Some(Pick::Default);
        };
        if self.deployments.contains_key(m) || self.groups.iter().any(|g| g == m) {
            Some(Pick::Named(m.to_string()))
        } else if self.tasks.contains_key(m) {
            Some(Pick::Task(m.to_string()))
        } else {
            None
        }
    }

    /// The name a key's `models` is checked against.
    pub fn asked<'a>(&'a self, pick: &'a Pick) -> &'a str {
        match pick {
            Pick::Named(n) | Pick::Task(n) => n,
            Pick::Default => &self.default_group,
        }
    }

    /// `asked` for an embeddings request, whose default is the default embedding group.
    pub fn asked_embed<'a>(&'a self, pick: &'a Pick) -> &'a str {
        match pick {
            Pick::Default => &self.default_embedding_group,
            other => self.asked(other),
        }
    }

    /// The group a request starts in, if known before routing: a stream served from another
    /// group (or after a failed call) says `Llm-Fallback: true`.
    pub fn first_group<'a>(&'a self, pick: &'a Pick) -> Option<&'a str> {
        match pick {
            // A deployment's own group: a name that is both is the deployment, as the router
            // reads it.
            Pick::Named(n) => Some(self.deployments.get(n).map_or(n, |(_, group)| group)),
            Pick::Task(t) => self.tasks.get(t).map(String::as_str),
            Pick::Default if self.classify => None,
            Pick::Default => Some(&self.default_group),
        }
    }

    /// OpenAI's model list, of what `key` may use.
    pub fn list(&self, key: Option<&HttpKey>) -> Bytes {
        let data = self
            .listed
            .iter()
            .filter(|(name, _)| key.is_none_or(|k| k.allows(name)))
            .map(|(id, owned_by)| Entry {
                id,
                object: "model",
                created: self.created,
                owned_by,
            })
            .collect();
        let list = List {
            object: "list",
            data,
        };
        serde_json::to_vec(&list).unwrap_or_default().into()
    }
}

/// At least one deployment can take a call now: circuit not open, not cooling down.
pub fn ready(engine: &Engine) -> bool {
    let now = std::time::Instant::now();
    engine
        .slots()
        .iter()
        .any(|s| s.published.circuit() != CircuitState::Open && !s.published.cooling_down(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_a_deployment_a_group_or_a_task() {
        let config = Config::demo();
        let models = Models::new(&config);
        let d = &config.deployments[0];
        assert_eq!(
            models.pick(Some(&d.name)),
            Some(Pick::Named(d.name.clone()))
        );
        assert_eq!(
            models.pick(Some(&d.group)),
            Some(Pick::Named(d.group.clone()))
        );
        if let Some(t) = config
            .tasks
            .keys()
            .find(|t| !config.groups.contains_key(*t))
        {
            assert_eq!(models.pick(Some(t)), Some(Pick::Task(t.clone())));
        }
        assert_eq!(models.pick(Some("gpt-17")), None);
        assert_eq!(models.pick(None), Some(Pick::Default));
        let list: serde_json::Value = serde_json::from_slice(&models.list(None)).unwrap();
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&d.name.as_str()) && ids.contains(&d.group.as_str()));
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "each name once");
    }
}
