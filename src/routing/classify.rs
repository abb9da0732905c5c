//! Which deployments a request may go to: a `model` that names a deployment or a group (in that
//! order) pins the route; otherwise the subject's `<task>` token maps through `[tasks]`. Task
//! `auto` (and any unknown task when `routing.classify = true`) goes through the classifier:
//! `[[classify.rules]]` in order, each matching on prompt size, tools, JSON output and keywords,
//! first match wins. Anything else uses `routing.default_group`. Every route says why
//! (`Llm-Route-Reason`).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{ClassifyRule, Config};
use crate::protocol::ChatRequest;

pub use crate::protocol::subjects::AUTO_TASK as AUTO;

/// A group's members and where it falls back to, by index.
#[derive(Debug)]
pub struct GroupRoute {
    pub name: String,
    /// Its deployments serve embeddings (`mode = "embedding"`).
    pub embedding: bool,
    /// Embeddings may come from another vector space than the first candidate's.
    pub cross_space: bool,
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
    /// `routing.default_embedding_group`, if any deployment embeds.
    default_embedding_group: Option<usize>,
    classify_unknown: bool,
    rules: Vec<(ClassifyRule, usize, Arc<str>)>,
    /// The fixed reasons, allocated once.
    because: [Arc<str>; 6],
}

const MODEL_GROUP: usize = 0;
const MODEL_DEPLOYMENT: usize = 1;
const TASK_TABLE: usize = 2;
const DEFAULT_GROUP: usize = 3;
const NO_RULE: usize = 4;
const DEFAULT_EMBEDDING_GROUP: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A group, then its fallback groups.
    Group(usize),
    /// Exactly this deployment.
    Deployment(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    /// Why this route, for `Llm-Route-Reason`.
    pub reason: Arc<str>,
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
            .iter()
            .map(|(g, c)| GroupRoute {
                name: g.clone(),
                embedding: c.embedding,
                cross_space: c.cross_space,
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
            default_embedding_group: config
                .routing
                .default_embedding_group
                .as_ref()
                .and_then(|g| group_by_name.get(g).copied()),
            classify_unknown: config.routing.classify,
            rules: config
                .classify_rules
                .iter()
                .filter_map(|r| {
                    let g = *group_by_name.get(&r.group)?;
                    Some((r.clone(), g, format!("classified: {}", r.name).into()))
                })
                .collect(),
            because: [
                "model names a group".into(),
                "model names a deployment".into(),
                "task table".into(),
                "default group".into(),
                "classified: no rule matched, default group".into(),
                "default embedding group".into(),
            ],
            group_by_name,
        }
    }

    pub fn resolve(&self, task: &str, req: &ChatRequest) -> Route {
        let route = |target, reason: &Arc<str>| Route {
            target,
            reason: reason.clone(),
        };
        if let Some(r) = self.pinned(task, req.model.as_deref()) {
            return r;
        }
        if task == AUTO || self.classify_unknown {
            let features = Features::of(req);
            if let Some((_, g, reason)) = self.rules.iter().find(|(r, _, _)| features.matches(r)) {
                return route(Target::Group(*g), reason);
            }
            return route(Target::Group(self.default_group), &self.because[NO_RULE]);
        }
        route(
            Target::Group(self.default_group),
            &self.because[DEFAULT_GROUP],
        )
    }

    /// The route of an embeddings request: `model` naming a deployment or a group, else the task
    /// table, else `routing.default_embedding_group`; `None` when no deployment embeds.
    pub fn resolve_embed(&self, task: &str, model: Option<&str>) -> Option<Route> {
        self.pinned(task, model).or_else(|| {
            Some(Route {
                target: Target::Group(self.default_embedding_group?),
                reason: self.because[DEFAULT_EMBEDDING_GROUP].clone(),
            })
        })
    }

    /// The route that `model` (naming a deployment or a group) or else the task table pins.
    fn pinned(&self, task: &str, model: Option<&str>) -> Option<Route> {
        let route = |target, reason: &Arc<str>| Route {
            target,
            reason: reason.clone(),
        };
        if let Some(m) = model {
            // A name that is both is the deployment (docs/contract.md §9), on every door.
            if let Some(&d) = self.deployment_by_name.get(m) {
                return Some(route(
                    Target::Deployment(d),
                    &self.because[MODEL_DEPLOYMENT],
                ));
            }
            if let Some(&g) = self.group_by_name.get(m) {
                return Some(route(Target::Group(g), &self.because[MODEL_GROUP]));
            }
        }
        let g = *self.tasks.get(task)?;
        Some(route(Target::Group(g), &self.because[TASK_TABLE]))
    }

    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.group_by_name.get(name).copied()
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

/// What the rules look at, read from the request once.
struct Features {
    prompt_tokens: u64,
    has_tools: bool,
    json_output: bool,
    /// The last user message, lower-case (only when some rule has keywords).
    text: String,
}

impl Features {
    fn of(req: &ChatRequest) -> Self {
        let b = req.body();
        let json_output = b
            .get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "json_object" || t == "json_schema");
        let last_user = b
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"));
        let text = match last_user {
            Some(Value::String(s)) => s.to_lowercase(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase(),
            _ => String::new(),
        };
        Self {
            prompt_tokens: req.estimated_prompt_tokens,
            has_tools: b
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty()),
            json_output,
            text,
        }
    }

    fn matches(&self, r: &ClassifyRule) -> bool {
        r.min_prompt_tokens.is_none_or(|n| self.prompt_tokens >= n)
            && r.max_prompt_tokens.is_none_or(|n| self.prompt_tokens <= n)
            && r.has_tools.is_none_or(|t| t == self.has_tools)
            && r.json_output.is_none_or(|j| j == self.json_output)
            && (r.keywords.is_empty() || r.keywords.iter().any(|k| self.text.contains(k.as_str())))
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
        let req = |model: &str| {
            ChatRequest::parse(
                format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let first_task = c.tasks.keys().next().unwrap().clone();
        assert_eq!(
            group(t.resolve(&first_task, &req("gpt-4o"))),
            c.tasks[&first_task]
        );
        let r = t.resolve("no-such-task", &req("gpt-4o"));
        assert_eq!(&*r.reason, "default group");
        assert_eq!(group(r), c.routing.default_group);
        let d = &c.deployments[1];
        assert_eq!(t.resolve("x", &req(&d.name)).target, Target::Deployment(1));
        assert_eq!(group(t.resolve("x", &req(&d.group))), d.group);
    }

    #[test]
    fn the_classifier_applies_rules_in_order() {
        let text = format!(
            "{}\n[[classify.rules]]\nname = \"tools\"\ngroup = \"backup-chat\"\nhas_tools = true\n[[classify.rules]]\nname = \"structured\"\ngroup = \"cheap-structured\"\njson_output = true\n[[classify.rules]]\nname = \"long or deep\"\ngroup = \"backup-chat\"\nkeywords = [\"Itinerary\", \"analyse\"]\n[[classify.rules]]\nname = \"big\"\ngroup = \"backup-chat\"\nmin_prompt_tokens = 1000\n",
            crate::config::DEMO_TOML
        );
        let c = Config::parse(&text, "t.toml", &|_| None).unwrap();
        let t = RouteTable::new(&c);
        let route = |task: &str, body: &str| {
            let r = t.resolve(task, &ChatRequest::parse(body.as_bytes()).unwrap());
            let Target::Group(g) = r.target else { panic!() };
            (t.groups[g].name.clone(), r.reason.to_string())
        };
        let msg = |text: &str, extra: &str| {
            format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]{extra}}}"#)
        };
        assert_eq!(
            route(
                "auto",
                &msg(
                    "hi",
                    r#","tools":[{"type":"function","function":{"name":"f"}}]"#
                )
            ),
            ("backup-chat".into(), "classified: tools".into())
        );
        assert_eq!(
            route(
                "auto",
                &msg("hi", r#","response_format":{"type":"json_object"}"#)
            )
            .0,
            "cheap-structured"
        );
        assert_eq!(
            route("auto", &msg("Plan an ITINERARY for Porto", "")),
            ("backup-chat".into(), "classified: long or deep".into())
        );
        let long = "word ".repeat(1000);
        assert_eq!(route("auto", &msg(&long, "")).1, "classified: big");
        assert_eq!(
            route("auto", &msg("hi", "")),
            (
                "fast-chat".into(),
                "classified: no rule matched, default group".into()
            )
        );
        // Unknown tasks skip the classifier unless routing.classify is on; known tasks always do.
        assert_eq!(route("unknown", &msg("itinerary", "")).1, "default group");
        assert_eq!(route("extract", &msg("itinerary", "")).1, "task table");
    }
}
