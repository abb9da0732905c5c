//! `[http]`: the OpenAI-compatible HTTP door (docs/contract.md §9). `listen` turns it on; `[[http.keys]]`
//! say who may call it (each key by the SHA-256 of its value: a key read from the environment is
//! hashed at start and the value itself is not kept), which models each may use, at what rate and
//! for how much a day. A listener that is not on a loopback address must have keys, or say
//! `allow_unauthenticated = true`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{DeploymentConfig, Validator};

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `"127.0.0.1:4000"`, `"[::1]:4000"`, `"localhost:4000"`, `"0.0.0.0:4000"`.
    pub listen: Option<String>,
    /// Idle keep-alive connections are closed after this (default `60s`).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// One `[[http.keys]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    /// The environment variable holding the key.
    pub key_env: Option<String>,
    /// The key's SHA-256, lowercase hex (`printf %s "$KEY" | sha256sum`).
    pub key_sha256: Option<String>,
    /// Groups, tasks or deployments this key may use; absent: all.
    pub models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub max_cost_usd_per_day: Option<f64>,
}

/// `[http]` validated.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: Option<SocketAddr>,
    pub idle_timeout: Duration,
    pub allow_unauthenticated: bool,
    pub keys: Vec<HttpKey>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            allow_unauthenticated: false,
            keys: Vec::new(),
        }
    }
}

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A caller's key: its name (what status and metrics show) and the SHA-256 of its value.
#[derive(Clone)]
pub struct HttpKey {
    pub name: String,
    pub sha256: [u8; 32],
    /// Every model name (deployment, group or task) this key may ask for; `None`: all. A group
    /// written in `models` brings its deployments and the tasks that map to it.
    pub allowed: Option<BTreeSet<String>>,
    pub rpm: Option<NonZeroU32>,
    pub max_cost_usd_per_day: Option<f64>,
}

impl std::fmt::Debug for HttpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpKey")
            .field("name", &self.name)
            .field("allowed", &self.allowed)
            .field("rpm", &self.rpm)
            .field("max_cost_usd_per_day", &self.max_cost_usd_per_day)
            .finish_non_exhaustive()
    }
}

impl HttpKey {
    /// Whether this key may ask for `model` (a deployment, group or task name).
    pub fn allows(&self, model: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(model))
    }
}

/// The SHA-256 of a key as presented, to compare with `HttpKey::sha256`.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(super) fn validate(
    raw: RawHttp,
    deployments: &[DeploymentConfig],
    tasks: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
    v: &mut Validator,
) -> HttpConfig {
    let listen = raw.listen.as_deref().and_then(|l| match listen_addr(l) {
        Some(a) => Some(a),
        None => {
            v.problem(
                "http.listen",
                format!("`{l}` is not an address like 127.0.0.1:4000 or localhost:4000"),
            );
            None
        }
    });
    let idle_timeout = raw.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if idle_timeout.is_zero() || idle_timeout > super::limits::LONGEST {
        v.problem("http.idle_timeout", "must be > 0 and at most ten years");
    }
    let mut names = BTreeSet::new();
    let keys: Vec<HttpKey> = raw
        .keys
        .into_iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let key = format!("http.keys[{i}]");
            if k.name.trim().is_empty() {
                v.problem(format!("{key}.name"), "must not be empty");
            } else if !names.insert(k.name.clone()) {
                v.problem(
                    format!("{key}.name"),
                    format!("`{}` is named twice", k.name),
                );
            }
            let sha256 = match (&k.key_env, &k.key_sha256) {
                (Some(_), None) => v
                    .env_secret(&format!("{key}.key_env"), &k.key_env, env)
                    .map(|s| key_digest(s.expose())),
                (None, Some(hex)) => match parse_sha256(hex) {
                    Some(d) => Some(d),
                    None => {
                        v.problem(
                            format!("{key}.key_sha256"),
                            "must be 64 lowercase hex digits (the key's SHA-256)",
                        );
                        None
                    }
                },
                _ => {
                    v.problem(&key, "needs exactly one of key_env or key_sha256");
                    None
                }
            };
            if k.rpm == Some(0) {
                v.problem(format!("{key}.rpm"), "must be > 0");
            }
            if let Some(c) = k.max_cost_usd_per_day
                && !(c.is_finite() && c >= 0.0)
            {
                v.problem(
                    format!("{key}.max_cost_usd_per_day"),
                    "must be a number >= 0",
                );
            }
            let allowed = k.models.map(|models| {
                let mut set = BTreeSet::new();
                for (j, m) in models.iter().enumerate() {
                    let is_deployment = deployments.iter().any(|d| &d.name == m);
                    // A name that is also a deployment's means the deployment, as `model` does
                    // (docs/contract.md §9): it brings no group members or tasks.
                    let members: Vec<&DeploymentConfig> = deployments
                        .iter()
                        .filter(|d| !is_deployment && &d.group == m)
                        .collect();
                    let is_task = tasks.contains_key(m);
                    if members.is_empty() && !is_task && !is_deployment {
                        v.problem(
                            format!("{key}.models[{j}]"),
                            format!("`{m}` is not a deployment, group or task"),
                        );
                    }
                    set.insert(m.clone());
                    for d in members {
                        set.insert(d.name.clone());
                    }
                    set.extend(
                        tasks
                            .iter()
                            .filter(|(_, g)| !is_deployment && *g == m)
                            .map(|(t, _)| t.clone()),
                    );
                }
                set
            });
            Some(HttpKey {
                name: k.name,
                sha256: sha256?,
                allowed,
                rpm: k.rpm.and_then(NonZeroU32::new),
                max_cost_usd_per_day: k.max_cost_usd_per_day,
            })
        })
        .collect();
    if let Some(addr) = listen
        && !addr.ip().is_loopback()
        && keys.is_empty()
        && !raw.allow_unauthenticated
    {
        v.problem(
            "http",
            format!(
                "listen = \"{addr}\" is not a loopback address: add [[http.keys]], or set allow_unauthenticated = true to serve anyone who can reach it"
            ),
        );
    }
    HttpConfig {
        listen,
        idle_timeout,
        allow_unauthenticated: raw.allow_unauthenticated,
        keys,
    }
}

/// `host:port` with an IP address or `localhost` (loopback).
fn listen_addr(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    let port = text.strip_prefix("localhost:")?.parse::<u16>().ok()?;
    Some(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port))
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
        [tasks]
        summarize = "fast"
        [[deployments]]
        name = "a"
        group = "fast"
        provider = "simulated"
        model = "m"
        [[deployments]]
        name = "b"
        group = "deep"
        provider = "simulated"
        model = "m"
    "#;

    fn parse(http: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}\n[http]\n{http}"), "t.toml", &|n| {
            (n == "KEY_A").then(|| "sk-a".to_string())
        })
    }

    #[test]
    fn a_public_listener_needs_keys_or_says_it_is_open() {
        let err = parse("listen = \"0.0.0.0:4000\"").unwrap_err().to_string();
        assert!(
            err.contains("t.toml: http: listen = \"0.0.0.0:4000\" is not a loopback"),
            "{err}"
        );
        assert!(parse("listen = \"0.0.0.0:4000\"\nallow_unauthenticated = true").is_ok());
        let c = parse("listen = \"localhost:4000\"").unwrap();
        assert_eq!(c.http.listen.unwrap().to_string(), "127.0.0.1:4000");
        assert_eq!(c.http.idle_timeout.as_secs(), 60);
        let keyed = "listen = \"0.0.0.0:4000\"\n[[http.keys]]\nname = \"k\"\nkey_env = \"KEY_A\"";
        assert!(parse(keyed).is_ok());
    }

    #[test]
    fn keys_are_checked_with_their_key_paths() {
        let text = r#"
            listen = "127.0.0.1:4000"
            [[http.keys]]
            name = "k"
            key_env = "ABSENT"
            [[http.keys]]
            name = "k"
            key_sha256 = "ABC"
            rpm = 0
            max_cost_usd_per_day = -1
            models = ["ghost"]
            [[http.keys]]
            name = "both"
        "#;
        let err = parse(text).unwrap_err().to_string();
        for expected in [
            "http.keys[0].key_env: environment variable ABSENT is not set",
            "http.keys[1].name: `k` is named twice",
            "http.keys[1].key_sha256: must be 64 lowercase hex digits",
            "http.keys[1].rpm: must be > 0",
            "http.keys[1].max_cost_usd_per_day: must be a number >= 0",
            "http.keys[1].models[0]: `ghost` is not a deployment, group or task",
            "http.keys[2]: needs exactly one of key_env or key_sha256",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn a_group_allows_its_deployments_and_its_tasks() {
        let sha = super::key_digest("sk-b")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let text =
            format!("[[http.keys]]\nname = \"k\"\nkey_sha256 = \"{sha}\"\nmodels = [\"fast\"]\n");
        let c = parse(&text).unwrap();
        let k = &c.http.keys[0];
        assert_eq!(k.sha256, super::key_digest("sk-b"));
        for ok in ["fast", "a", "summarize"] {
            assert!(k.allows(ok), "{ok}");
        }
        assert!(!k.allows("b") && !k.allows("deep"));
        assert!(
            !format!("{k:?}").contains(&sha[..8]),
            "the digest is not printed"
        );
    }
}
