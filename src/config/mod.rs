//! Configuration: one TOML file (docs/contract.md §3) read into `raw` serde structs, then validated
//! into the `Config` the engine runs on. Every problem is reported with the file and the key path
//! (`deployments[2].rpm: must be > 0`), all of them at once, before anything starts.

mod alerts;
mod cluster;
mod deployment;
mod http;
mod jobs;
mod limits;
pub mod prices;
mod raw;
mod secret;
mod strategy;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use alerts::{AlertsConfig, Shift};
pub use cluster::ClusterConfig;
pub use deployment::{DeploymentConfig, EmbeddingSpec, Outage, Price, ProviderKind, SimulatedSpec};
pub use http::{HttpConfig, HttpKey, key_digest};
pub use jobs::JobsConfig;
pub use limits::LimitsConfig;
pub use secret::Secret;
pub use strategy::Strategy;

/// The demo config, embedded so that `switchyard demo` runs on a fresh machine with no files.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");
pub const DEFAULT_PATH: &str = "config/switchyard.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    pub nats: NatsConfig,
    pub routing: RoutingConfig,
    /// `<task>` subject token → model group.
    pub tasks: BTreeMap<String, String>,
    /// Every group that a deployment names, with its strategy.
    pub groups: BTreeMap<String, GroupConfig>,
    pub breaker: BreakerConfig,
    pub storage: StorageConfig,
    /// `[[classify.rules]]`, in order.
    pub classify_rules: Vec<ClassifyRule>,
    /// `[[budgets.caps]]`.
    pub budgets: Vec<BudgetCap>,
    /// Share of each deployment's `rpm`/`tpm` kept for live requests when batches run
    /// (`[batch] live_reserve`, default 0.2).
    pub batch_live_reserve: f64,
    /// `[metrics] listen`: where `serve` offers Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[alerts]`: degradation rules, hysteresis and traffic shift.
    pub alerts: AlertsConfig,
    /// `[cluster]`: state shared between `serve` instances.
    pub cluster: ClusterConfig,
    /// `[jobs]`: durable async jobs over JetStream.
    pub jobs: JobsConfig,
    /// `[limits]`: bounds on what callers and providers send, in flight, and shutdown.
    pub limits: LimitsConfig,
    /// `[http]`: the OpenAI-compatible HTTP door of `serve`, and who may use it.
    pub http: HttpConfig,
    /// `[batch] input_dir`, canonicalised: the only folder `llm.batch.submit` reads files from.
    /// `None`: only inline jobs and items are taken.
    pub batch_input_dir: Option<PathBuf>,
    pub deployments: Vec<DeploymentConfig>,
}

/// What a daily budget cap applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapScope {
    All,
    Task(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapAction {
    /// Refuse with `budget_exceeded`.
    Reject,
    /// Route to this group instead.
    Downgrade(String),
}

/// A daily spending cap (UTC day) and what happens once it is reached.
#[derive(Debug, Clone)]
pub struct BudgetCap {
    pub scope: CapScope,
    pub daily_usd: f64,
    pub action: CapAction,
}

/// One classification rule: every condition given must hold.
#[derive(Debug, Clone)]
pub struct ClassifyRule {
    pub name: String,
    pub group: String,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub has_tools: Option<bool>,
    pub json_output: Option<bool>,
    /// Lower-case.
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub prefix: String,
    pub queue_group: String,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub strategy: Strategy,
    pub default_group: String,
    /// Group → fallback groups, tried in order once the group's own deployments are spent.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    pub fallback_on_auth: bool,
    /// Unknown task tokens go through the classifier.
    pub classify: bool,
    /// Where `llm.embed.<task>` goes for an unknown task: the first group of embedding
    /// deployments unless set; `None` when no deployment embeds.
    pub default_embedding_group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub strategy: Strategy,
    /// Its deployments are `mode = "embedding"` (a group holds one mode).
    pub embedding: bool,
    /// Embedding groups: a request may be served from another vector space than its first.
    pub cross_space: bool,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
    pub success_threshold: u32,
    pub ignored_status: Vec<u16>,
    /// A `Retry-After` longer than this cools the deployment down for this long only.
    pub max_retry_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let raw = raw::RawBreaker::default();
        Self {
            failure_threshold: raw.failure_threshold,
            reset_timeout: raw.reset_timeout,
            success_threshold: raw.success_threshold,
            ignored_status: raw.ignored_status,
            max_retry_after: raw.max_retry_after,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", Problems(.file, .problems))]
    Invalid {
        file: String,
        problems: Vec<(String, String)>,
    },
}

/// A list of `file: key: reason` lines, one per problem (also used for job files).
pub(crate) struct Problems<'a>(pub &'a str, pub &'a [(String, String)]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, reason)) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {key}: {reason}", self.0)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file. Secrets come from the process environment, and
    /// `SWITCHYARD_NATS_URL` overrides `nats.url` (one file for every host of a deployment).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Self::parse(&text, &file, &|name| std::env::var(name).ok())?;
        if let Some(url) = std::env::var("SWITCHYARD_NATS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            config.nats.url = url;
        }
        Ok(config)
    }

    /// Parses and validates config text; `env` looks up environment variables (a seam for tests
    /// only in the sense that the environment is an input, like the text).
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut v = Validator::default();
        let config = validate(raw, file, env, &mut v);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                problems: v.problems,
            })
        }
    }

    /// The embedded demo config (simulated deployments only; no key, no network).
    pub fn demo() -> Self {
        Self::parse(DEMO_TOML, "config/demo.toml (embedded)", &|_| None)
            .unwrap_or_else(|e| panic!("the embedded demo config is invalid: {e}"))
    }

    /// The strategy of a group: its own, else the routing default.
    pub fn strategy_of(&self, group: &str) -> Strategy {
        self.groups
            .get(group)
            .map_or(self.routing.strategy, |g| g.strategy)
    }
}

#[derive(Default)]
pub(crate) struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    pub(crate) fn problem(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push((key.into(), reason.into()));
    }

    pub(crate) fn strategy(&mut self, key: &str, text: &str) -> Strategy {
        text.parse().unwrap_or_else(|e: String| {
            self.problem(key, e);
            Strategy::default()
        })
    }

    fn env_secret(
        &mut self,
        key: &str,
        var: &Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let var = var.as_ref()?;
        match env(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                self.problem(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }
}

/// FNV-1a: a hash that is the same in every process and version, for seeds and affinity.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A subject token: what may stand between two dots of a NATS subject.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

fn validate(
    raw: raw::RawConfig,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    v: &mut Validator,
) -> Config {
    let deployments: Vec<DeploymentConfig> = raw
        .deployments
        .into_iter()
        .enumerate()
        .map(|(i, d)| deployment::validate(i, d, env, v))
        .collect();
    if deployments.is_empty() {
        v.problem(
            "deployments",
            "at least one [[deployments]] entry is required",
        );
    }
    let mut seen = BTreeMap::new();
    for (i, d) in deployments.iter().enumerate() {
        if let Some(first) = seen.insert(d.name.as_str(), i) {
            v.problem(
                format!("deployments[{i}].name"),
                format!("`{}` is already the name of deployments[{first}]", d.name),
            );
        }
    }

    let strategy = raw
        .routing
        .strategy
        .as_deref()
        .map_or_else(Strategy::default, |s| v.strategy("routing.strategy", s));
    let mut groups: BTreeMap<String, GroupConfig> = BTreeMap::new();
    let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, d) in deployments.iter().enumerate() {
        let first = *first_of.entry(d.group.as_str()).or_insert(i);
        if deployments[first].is_embedding() != d.is_embedding() {
            v.problem(
                format!("deployments[{i}].mode"),
                format!(
                    "group `{}` holds {} deployments (deployments[{first}]): a group holds one mode",
                    d.group,
                    deployments[first].mode()
                ),
            );
        }
        groups.entry(d.group.clone()).or_insert(GroupConfig {
            strategy,
            embedding: d.is_embedding(),
            cross_space: false,
        });
    }
    for (name, g) in &raw.groups {
        let key = format!("groups.{name}");
        let Some(group) = groups.get_mut(name) else {
            v.problem(&key, "no deployment is in this group");
            continue;
        };
        if let Some(s) = &g.strategy {
            group.strategy = v.strategy(&format!("{key}.strategy"), s);
        }
        if g.cross_space && !group.embedding {
            v.problem(
                format!("{key}.cross_space"),
                "only for groups of embedding deployments",
            );
        }
        group.cross_space = g.cross_space;
    }
    let known = |v: &mut Validator, key: &str, group: &str| {
        if !groups.contains_key(group) && !deployments.is_empty() {
            v.problem(key, format!("`{group}` is not the group of any deployment"));
        }
    };
    let embeds = |group: &str| groups.get(group).map(|g| g.embedding);
    // Routing never crosses modes: a chat group's chain holds chat groups, and so on.
    let same_mode = |v: &mut Validator, key: &str, from: &str, to: &str| {
        if let (Some(a), Some(b)) = (embeds(from), embeds(to))
            && a != b
        {
            let mode = |e: bool| if e { "embedding" } else { "chat" };
            v.problem(
                key,
                format!(
                    "`{to}` is a group of {} deployments, `{from}` of {}",
                    mode(b),
                    mode(a)
                ),
            );
        }
    };

    let default_group = match raw.routing.default_group {
        Some(g) => {
            known(v, "routing.default_group", &g);
            if embeds(&g) == Some(true) {
                v.problem(
                    "routing.default_group",
                    format!("`{g}` is a group of embedding deployments: set it as routing.default_embedding_group"),
                );
            }
            g
        }
        None => deployments
            .iter()
            .find(|d| !d.is_embedding())
            .or(deployments.first())
            .map(|d| d.group.clone())
            .unwrap_or_default(),
    };
    let default_embedding_group = match raw.routing.default_embedding_group {
        Some(g) => {
            known(v, "routing.default_embedding_group", &g);
            if embeds(&g) == Some(false) {
                v.problem(
                    "routing.default_embedding_group",
                    format!("`{g}` is a group of chat deployments"),
                );
            }
            Some(g)
        }
        None => deployments
            .iter()
            .find(|d| d.is_embedding())
            .map(|d| d.group.clone()),
    };
    for (group, chain) in &raw.routing.fallbacks {
        known(v, &format!("routing.fallbacks.{group}"), group);
        for (i, fb) in chain.iter().enumerate() {
            let key = format!("routing.fallbacks.{group}[{i}]");
            known(v, &key, fb);
            same_mode(v, &key, group, fb);
            if fb == group {
                v.problem(key, "a group cannot fall back to itself");
            }
        }
    }
    for (task, group) in &raw.tasks {
        if !is_token(task) {
            v.problem(
                format!("tasks.{task}"),
                "a task name is one subject token: no '.', '*', '>' or spaces",
            );
        }
        known(v, &format!("tasks.{task}"), group);
    }

    let classify_rules = raw
        .classify
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("classify.rules[{i}]");
            known(v, &format!("{key}.group"), &r.group);
            if let (Some(lo), Some(hi)) = (r.min_prompt_tokens, r.max_prompt_tokens)
                && lo > hi
            {
                v.problem(
                    format!("{key}.min_prompt_tokens"),
                    "is above max_prompt_tokens",
                );
            }
            if r.keywords.iter().any(|k| k.trim().is_empty()) {
                v.problem(format!("{key}.keywords"), "a keyword must not be empty");
            }
            ClassifyRule {
                name: r.name.unwrap_or_else(|| format!("rule {}", i + 1)),
                group: r.group,
                min_prompt_tokens: r.min_prompt_tokens,
                max_prompt_tokens: r.max_prompt_tokens,
                has_tools: r.has_tools,
                json_output: r.json_output,
                keywords: r.keywords.iter().map(|k| k.trim().to_lowercase()).collect(),
            }
        })
        .collect();

    let budgets = raw
        .budgets
        .caps
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let key = format!("budgets.caps[{i}]");
            let scope = match (c.task, c.group) {
                (None, None) => CapScope::All,
                (Some(t), None) => CapScope::Task(t),
                (None, Some(g)) => {
                    known(v, &format!("{key}.group"), &g);
                    CapScope::Group(g)
                }
                (Some(t), Some(_)) => {
                    v.problem(&key, "a cap is on a task or on a group, not both");
                    CapScope::Task(t)
                }
            };
            if !(c.daily_usd.is_finite() && c.daily_usd >= 0.0) {
                v.problem(format!("{key}.daily_usd"), "must be a number >= 0");
            }
            let action = match (c.action.as_deref().unwrap_or("reject"), c.downgrade_to) {
                ("reject", None) => CapAction::Reject,
                ("downgrade", Some(g)) => {
                    known(v, &format!("{key}.downgrade_to"), &g);
                    CapAction::Downgrade(g)
                }
                ("downgrade", None) => {
                    v.problem(
                        format!("{key}.downgrade_to"),
                        "`downgrade` needs the group to downgrade to",
                    );
                    CapAction::Reject
                }
                ("reject", Some(_)) => {
                    v.problem(
                        format!("{key}.downgrade_to"),
                        "only with action = \"downgrade\"",
                    );
                    CapAction::Reject
                }
                (other, _) => {
                    v.problem(
                        format!("{key}.action"),
                        format!("`{other}` is not reject | downgrade"),
                    );
                    CapAction::Reject
                }
            };
            BudgetCap {
                scope,
                daily_usd: c.daily_usd,
                action,
            }
        })
        .collect();

    let batch_live_reserve = raw.batch.live_reserve.unwrap_or(0.2);
    if !(0.0..1.0).contains(&batch_live_reserve) {
        v.problem("batch.live_reserve", "must be at least 0 and below 1");
    }
    let batch_input_dir = raw
        .batch
        .input_dir
        .and_then(|dir| match std::fs::canonicalize(&dir) {
            Ok(path) if path.is_dir() => Some(path),
            Ok(_) => {
                v.problem(
                    "batch.input_dir",
                    format!("`{}` is not a folder", dir.display()),
                );
                None
            }
            Err(e) => {
                v.problem("batch.input_dir", format!("`{}`: {e}", dir.display()));
                None
            }
        });
    let limits = limits::validate(raw.limits, v);
    let mut deployments = deployments;
    for d in &mut deployments {
        d.max_reply_body = limits.max_provider_body;
        d.max_stream_duration = limits.max_stream_duration;
    }

    let metrics_listen = raw.metrics.listen.as_deref().and_then(|l| {
        l.parse()
            .map_err(|_| {
                v.problem(
                    "metrics.listen",
                    format!("`{l}` is not an address like 127.0.0.1:9464"),
                )
            })
            .ok()
    });

    alerts::validate(&raw.alerts, v);
    let alerts = raw.alerts;
    let cluster = cluster::validate(raw.cluster, v);
    let http = http::validate(raw.http, &deployments, &raw.tasks, env, v);

    let b = raw.breaker;
    if b.failure_threshold == 0 {
        v.problem("breaker.failure_threshold", "must be > 0");
    }
    if b.success_threshold == 0 {
        v.problem("breaker.success_threshold", "must be > 0");
    }
    if b.reset_timeout.is_zero() {
        v.problem("breaker.reset_timeout", "must be > 0");
    }
    for (key, d) in [
        ("breaker.reset_timeout", b.reset_timeout),
        ("breaker.max_retry_after", b.max_retry_after),
    ] {
        if d > limits::LONGEST {
            v.problem(key, "must be at most ten years");
        }
    }
    for (i, s) in b.ignored_status.iter().enumerate() {
        if !(100..=599).contains(s) {
            v.problem(
                format!("breaker.ignored_status[{i}]"),
                "must be an HTTP status (100-599)",
            );
        }
    }

    let n = raw.nats;
    if n.prefix.is_empty() || n.prefix.split('.').any(|t| !is_token(t)) {
        v.problem(
            "nats.prefix",
            "must be one or more subject tokens separated by '.'",
        );
    }
    if n.queue_group.is_empty() || n.queue_group.contains(char::is_whitespace) {
        v.problem(
            "nats.queue_group",
            "must be a non-empty name without spaces",
        );
    }
    let tls_client_cert = match (n.tls_cert_file, n.tls_key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            v.problem(
                "nats.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
            None
        }
    };
    let password = v.env_secret("nats.password_env", &n.password_env, env);
    if password.is_some() && n.user.is_none() {
        v.problem("nats.password_env", "a password needs `user`");
    }
    let nats = NatsConfig {
        url: n.url,
        prefix: n.prefix,
        queue_group: n.queue_group,
        creds_file: n.creds_file,
        user: n.user,
        password,
        token: v.env_secret("nats.token_env", &n.token_env, env),
        tls_required: n.tls_required,
        tls_ca_file: n.tls_ca_file,
        tls_client_cert,
    };

    Config {
        source: file.to_string(),
        nats,
        routing: RoutingConfig {
            strategy,
            default_group,
            fallbacks: raw.routing.fallbacks,
            fallback_on_auth: raw.routing.fallback_on_auth,
            classify: raw.routing.classify,
            default_embedding_group,
        },
        classify_rules,
        budgets,
        batch_live_reserve,
        metrics_listen,
        alerts,
        cluster,
        jobs: jobs::validate(raw.jobs, v),
        limits,
        http,
        batch_input_dir,
        tasks: raw.tasks,
        groups,
        breaker: BreakerConfig {
            failure_threshold: b.failure_threshold,
            reset_timeout: b.reset_timeout,
            success_threshold: b.success_threshold,
            ignored_status: b.ignored_status,
            max_retry_after: b.max_retry_after,
        },
        storage: StorageConfig {
            path: raw.storage.path,
        },
        deployments,
    }
}

#[cfg(test)]
mod tests;
