//! The config file exactly as written (docs/contract.md §3): serde structs that reject unknown
//! keys. Nothing here is trusted yet; `config::validate` turns a `RawConfig` into the `Config` the
//! engine runs on, naming the key path of every problem it finds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub nats: RawNats,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub classify: RawClassify,
    #[serde(default)]
    pub budgets: RawBudgets,
    #[serde(default)]
    pub batch: RawBatch,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub alerts: super::alerts::AlertsConfig,
    #[serde(default)]
    pub cluster: super::cluster::RawCluster,
    #[serde(default)]
    pub jobs: super::jobs::RawJobs,
    #[serde(default)]
    pub limits: super::limits::RawLimits,
    #[serde(default)]
    pub http: super::http::RawHttp,
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
}

/// `[metrics]`: an optional Prometheus listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// `[batch]`: how batches share deployments with live traffic.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// Share of every deployment's `rpm`/`tpm` that batch work leaves to live requests.
    pub live_reserve: Option<f64>,
    /// The only folder `llm.batch.submit` may read job and input files from.
    pub input_dir: Option<PathBuf>,
}

/// `[budgets]`: daily spending caps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    #[serde(default)]
    pub caps: Vec<RawCap>,
}

/// One cap: on a task, a group, or (neither) all traffic; per UTC day.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCap {
    pub task: Option<String>,
    pub group: Option<String>,
    pub daily_usd: f64,
    /// `reject` (default) or `downgrade`.
    pub action: Option<String>,
    /// The group to route to instead, for `downgrade`.
    pub downgrade_to: Option<String>,
}

/// `[[classify.rules]]`: for task `auto` (and unknown tasks with `routing.classify = true`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassify {
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// Every condition given must hold; the first rule that matches picks the group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub group: String,
    pub name: Option<String>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub has_tools: Option<bool>,
    /// `response_format` asks for JSON.
    pub json_output: Option<bool>,
    /// Any of these words in the last user message (case-insensitive).
    #[serde(default)]
    pub keywords: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    #[serde(default = "default_nats_url")]
    pub url: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Queue group shared by every `serve` instance.
    #[serde(default = "default_queue_group")]
    pub queue_group: String,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    /// Environment variable holding the password for `user`.
    pub password_env: Option<String>,
    /// Environment variable holding a NATS token.
    pub token_env: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RawNats {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            prefix: default_prefix(),
            queue_group: default_queue_group(),
            creds_file: None,
            user: None,
            password_env: None,
            token_env: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_prefix() -> String {
    "llm".into()
}
fn default_queue_group() -> String {
    "switchyard".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub strategy: Option<String>,
    pub default_group: Option<String>,
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub fallback_on_auth: bool,
    /// Send unknown task tokens through `[[classify.rules]]` instead of `default_group`.
    #[serde(default)]
    pub classify: bool,
    /// Where `llm.embed.<task>` goes for a task that `[tasks]` does not name.
    pub default_embedding_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub strategy: Option<String>,
    /// Embedding groups: a request may be served from another vector space than its first
    /// candidate's.
    #[serde(default)]
    pub cross_space: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_reset_timeout", with = "humantime_serde")]
    pub reset_timeout: Duration,
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    #[serde(default = "default_ignored_status")]
    pub ignored_status: Vec<u16>,
    /// The longest a provider's `Retry-After` may cool a deployment down.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            reset_timeout: default_reset_timeout(),
            success_threshold: default_success_threshold(),
            ignored_status: default_ignored_status(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

fn default_failure_threshold() -> u32 {
    3
}
fn default_reset_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_success_threshold() -> u32 {
    1
}
fn default_ignored_status() -> Vec<u16> {
    vec![400, 404]
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            path: default_storage_path(),
        }
    }
}

fn default_storage_path() -> PathBuf {
    PathBuf::from("switchyard.db")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub name: String,
    pub group: String,
    pub provider: String,
    pub model: String,
    pub api_base: Option<String>,
    pub api_key_env: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Streaming: the first chunk must come within this, else the call fails (and falls back).
    #[serde(default, with = "humantime_serde")]
    pub first_token_timeout: Option<Duration>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub context_window: Option<u64>,
    pub max_tokens: Option<u32>,
    pub price: Option<RawPrice>,
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    /// `chat` (default) or `embedding`.
    pub mode: Option<String>,
    /// Embedding deployments: the vector size they return.
    pub dimensions: Option<u32>,
    /// Embedding deployments: the vector space (default `<model>@<dimensions>`).
    pub space: Option<String>,
    /// Embedding deployments: the most inputs in one provider call.
    pub max_inputs: Option<u32>,
    /// Deferred batches may go to this deployment's batch API (docs/contract.md §11).
    #[serde(default)]
    pub batch_api: bool,
    /// What a batch call costs as a share of the sync price (default 0.5).
    pub batch_discount: Option<f64>,
    // `simulated` only.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub latency_jitter: Option<Duration>,
    pub error_rate: Option<f64>,
    pub rate_limit_rate: Option<f64>,
    #[serde(default)]
    pub outages: Vec<RawOutage>,
    pub seed: Option<u64>,
    /// Canned answers, one picked per prompt (stable for a prompt and deployment).
    #[serde(default)]
    pub answers: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_mtok: f64,
    /// Not needed for embedding deployments, which have no output tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
}

/// A window, measured from engine start, during which a simulated deployment answers 503.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutage {
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}
