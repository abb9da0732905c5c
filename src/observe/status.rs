//! The `llm.status` snapshot (docs/contract.md §6): one instance's view of every deployment and of
//! its overall traffic. Built on request from the deployment actors' own state.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p95: f64,
    pub ewma: f64,
    /// The P95 that latency alerts compare against (learned over `alerts.baseline_window`).
    #[serde(default)]
    pub baseline: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub name: String,
    pub group: String,
    pub provider: String,
    pub model: String,
    /// `chat` or `embedding`.
    #[serde(default = "chat_mode")]
    pub mode: String,
    /// `closed` | `open` | `half_open`; `unknown` when the actor did not answer in time.
    pub circuit: String,
    pub in_flight: u32,
    pub rpm_used: u64,
    pub rpm_limit: Option<u64>,
    pub tpm_used: u64,
    pub tpm_limit: Option<u64>,
    pub latency_ms: LatencyMs,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub requests: u64,
    pub failures: u64,
    pub cost_usd: f64,
    /// Seconds left of a `Retry-After` cool-down, if one is running.
    pub cooldown_s: Option<f64>,
    /// A degradation alert is raised: traffic is shifted away (`alerts.shift`).
    #[serde(default)]
    pub degraded: bool,
    /// The whole cluster's `rpm`/`tpm` use of this deployment, as this instance saw it at its
    /// last call there (within 5 s); absent without cluster sharing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_rpm_used: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_tpm_used: Option<u64>,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Successful calls by latency bucket (upper bounds in `latency_buckets_s` of the snapshot,
    /// then the overflow), not cumulative; and the sum of their latencies in seconds.
    #[serde(default)]
    pub latency_histogram: Vec<u64>,
    #[serde(default)]
    pub latency_sum_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub instance: Arc<str>,
    pub uptime_s: u64,
    pub deployments: Vec<DeploymentStatus>,
    pub requests: u64,
    pub fallbacks: u64,
    pub fallback_ratio: f64,
    pub alerts: Vec<super::alerts::Alert>,
    /// Failed requests by error kind (docs/contract.md §1).
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Batch items answered (`ok`) and failed since start.
    #[serde(default)]
    pub batch_items_ok: u64,
    #[serde(default)]
    pub batch_items_failed: u64,
    /// Upper bounds of the deployments' latency histogram buckets, in seconds.
    #[serde(default)]
    pub latency_buckets_s: Vec<f64>,
    /// Today's cost, tokens and requests by task, group and deployment (UTC day).
    #[serde(default)]
    pub spend: super::spend::SpendSnapshot,
    /// Whether this instance shares circuits, cool-downs and limits with the others.
    #[serde(default)]
    pub cluster: ClusterStatus,
    /// `[[http.keys]]`: requests and spend per key of the HTTP door, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<super::keys::KeyStatus>,
}

/// `cluster` in the snapshot: shared state through NATS, or this instance's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `true` while the instance reads and writes the cluster's bucket; `false` when it falls
    /// back to its own windows and breakers (NATS unreachable, or no NATS at all).
    pub shared: bool,
    /// Since when (RFC 3339).
    pub since: String,
    pub detail: String,
}

fn chat_mode() -> String {
    "chat".into()
}
