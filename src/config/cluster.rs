//! `[cluster]`: several `serve` instances on one NATS act as one. They share what they learn —
//! open circuits, `Retry-After` cool-downs, `rpm`/`tpm` usage, batch ownership — through one
//! JetStream key-value bucket. Only `serve` has NATS: `demo` and `batch run` keep local state.

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
    /// The longest a request waits on the bucket for its `rpm`/`tpm` slot; past it the attempt
    /// is judged by this instance's own windows.
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// A batch whose owner has not renewed its lease for this long is taken over.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            bucket: default_bucket(),
            sync_timeout: default_sync_timeout(),
            lease_ttl: default_lease_ttl(),
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

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// The JetStream KV bucket (stream `KV_<bucket>`).
    pub bucket: String,
    pub sync_timeout: Duration,
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let raw = RawCluster::default();
        Self {
            enabled: raw.enabled,
            bucket: raw.bucket,
            sync_timeout: raw.sync_timeout,
            lease_ttl: raw.lease_ttl,
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
    ClusterConfig {
        enabled: raw.enabled,
        bucket: raw.bucket,
        sync_timeout: raw.sync_timeout,
        lease_ttl: raw.lease_ttl,
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
}
