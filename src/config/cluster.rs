//! `[cluster]`: several `serve` instances on one NATS act as one. They share what they learn —
//! open circuits, `Retry-After` cool-downs, `rpm`/`tpm` usage, batch ownership — through one
//! JetStream key-value bucket. Only `serve` has NATS: `demo` and `batch run` keep local state.
//! `replicas` is how many NATS servers hold a copy of each stream `serve` creates: the bucket's
//! and the async jobs' (`LLM_JOBS`, `LLM_RESULTS`), whether or not the state is shared.

use std::time::Duration;

use serde::Deserialize;

use super::Validator;

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// The longest a request waits on the bucket for its `rpm`/`tpm` slot (retrying with
    /// backoff); past it the attempt is judged by this instance alone, within its fair share of
    /// the limit (`cluster::quota::share`). Longer than a JetStream leader election (4–10 s)
    /// keeps the limits exact when a NATS node dies.
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// A batch whose owner has not renewed its lease for this long is taken over.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// JetStream replicas of the streams `serve` creates (a NATS cluster of at least as many
    /// servers is needed); streams that already exist keep theirs.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            bucket: default_bucket(),
            sync_timeout: default_sync_timeout(),
            lease_ttl: default_lease_ttl(),
            replicas: default_replicas(),
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_bucket() -> String {
    "switchyard_state".into()
}
fn default_sync_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}
fn default_replicas() -> usize {
    1
}

/// JetStream keeps at most five copies of a stream.
const MAX_REPLICAS: usize = 5;

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// The JetStream KV bucket (stream `KV_<bucket>`).
    pub bucket: String,
    pub sync_timeout: Duration,
    pub lease_ttl: Duration,
    /// `num_replicas` of `KV_<bucket>`, `LLM_JOBS` and `LLM_RESULTS` when `serve` creates them.
    pub replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let raw = RawCluster::default();
        Self {
            enabled: raw.enabled,
            bucket: raw.bucket,
            sync_timeout: raw.sync_timeout,
            lease_ttl: raw.lease_ttl,
            replicas: raw.replicas,
        }
    }
}

pub(super) fn validate(raw: RawCluster, v: &mut Validator) -> ClusterConfig {
    let valid_bucket = !raw.bucket.is_empty()
        && raw
            .bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_bucket {
        v.problem(
            "cluster.bucket",
            "must be letters, digits, '_' or '-' (a JetStream bucket name)",
        );
    }
    if raw.sync_timeout.is_zero() {
        v.problem("cluster.sync_timeout", "must be > 0");
    }
    if raw.lease_ttl < Duration::from_secs(3) {
        v.problem(
            "cluster.lease_ttl",
            "must be at least 3s (leases are renewed every ttl / 3)",
        );
    }
    if !(1..=MAX_REPLICAS).contains(&raw.replicas) {
        v.problem(
            "cluster.replicas",
            format!(
                "must be 1 to {MAX_REPLICAS} (JetStream copies of each stream; more than 1 needs a NATS cluster of at least that many servers)"
            ),
        );
    }
    ClusterConfig {
        enabled: raw.enabled,
        bucket: raw.bucket,
        sync_timeout: raw.sync_timeout,
        lease_ttl: raw.lease_ttl,
        replicas: raw.replicas,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const MINIMAL: &str = r#"
        [[deployments]]
        name = "a"
        group = "chat"
        provider = "simulated"
        model = "m"
    "#;

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::parse(MINIMAL, "t.toml", &|_| None).unwrap();
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.bucket, "switchyard_state");
        assert_eq!(c.cluster.replicas, 1);
        let text = format!(
            "[cluster]\nbucket = \"a.b\"\nsync_timeout = \"0s\"\nlease_ttl = \"1s\"\n{MINIMAL}"
        );
        let err = Config::parse(&text, "t.toml", &|_| None)
            .unwrap_err()
            .to_string();
        for key in [
            "cluster.bucket",
            "cluster.sync_timeout",
            "cluster.lease_ttl",
        ] {
            assert!(err.contains(&format!("t.toml: {key}: ")), "{key} in {err}");
        }
    }

    #[test]
    fn replicas_are_one_to_five() {
        for n in [1, 3, 5] {
            let text = format!("[cluster]\nreplicas = {n}\n{MINIMAL}");
            let c = Config::parse(&text, "t.toml", &|_| None).unwrap();
            assert_eq!(c.cluster.replicas, n);
        }
        for n in [0, 6] {
            let text = format!("[cluster]\nreplicas = {n}\n{MINIMAL}");
            let err = Config::parse(&text, "t.toml", &|_| None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("t.toml: cluster.replicas: must be 1 to 5"),
                "{n}: {err}"
            );
        }
        let text = format!("[cluster]\nreplicas = -1\n{MINIMAL}");
        assert!(Config::parse(&text, "t.toml", &|_| None).is_err());
    }
}
