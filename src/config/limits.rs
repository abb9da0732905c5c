//! `[limits]`: the bounds that keep one instance standing whatever its callers and providers send
//! (docs/contract.md §8). Every size is an integer (bytes) or a string such as `"4 MiB"`; every
//! duration is humantime. Each bound is checked at the edge where the input arrives: request
//! headers and bodies in `protocol`, provider bodies and streams in `providers`/`deployment`,
//! requests in flight and shutdown in `ingress`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::Validator;

/// `[limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_max_body", deserialize_with = "size")]
    pub max_body: u64,
    #[serde(default = "default_max_deadline", with = "humantime_serde")]
    pub max_deadline: Duration,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_max_provider_body", deserialize_with = "size")]
    pub max_provider_body: u64,
    #[serde(default = "default_max_stream_duration", with = "humantime_serde")]
    pub max_stream_duration: Duration,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            max_body: default_max_body(),
            max_deadline: default_max_deadline(),
            shutdown_timeout: default_shutdown_timeout(),
            max_provider_body: default_max_provider_body(),
            max_stream_duration: default_max_stream_duration(),
        }
    }
}

fn default_max_in_flight() -> usize {
    4096
}
fn default_max_body() -> u64 {
    4 << 20
}
fn default_max_deadline() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_provider_body() -> u64 {
    32 << 20
}
fn default_max_stream_duration() -> Duration {
    Duration::from_secs(600)
}

/// The longest any configured duration may be: ten years. Instants and deadlines computed from
/// configured durations then stay far from overflow on every platform.
pub const LONGEST: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A size: `4194304` or `"4 MiB"` (also `"4MB"`, `"512 KiB"`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a size like \"4 MiB\" or a number of bytes: {e}"
                ))
            }),
    }
}

/// The validated `[limits]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Synchronous chat requests (streams included) held at once by one instance; beyond it the
    /// answer is `overloaded` at once.
    pub max_in_flight: usize,
    /// The largest request body taken, in bytes.
    pub max_body: usize,
    /// `Llm-Deadline` values above this are clamped to it.
    pub max_deadline: Duration,
    /// How long SIGTERM drains before answering what is left with `unavailable`.
    pub shutdown_timeout: Duration,
    /// The largest provider reply body read, in bytes; beyond it the attempt fails and falls back.
    pub max_provider_body: usize,
    /// The longest a streamed reply may run in all, besides its idle timeout.
    pub max_stream_duration: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let mut v = Validator::default();
        validate(RawLimits::default(), &mut v)
    }
}

pub(crate) fn validate(raw: RawLimits, v: &mut Validator) -> LimitsConfig {
    if raw.max_in_flight == 0 {
        v.problem("limits.max_in_flight", "must be > 0");
    }
    for (key, n) in [
        ("limits.max_body", raw.max_body),
        ("limits.max_provider_body", raw.max_provider_body),
    ] {
        if n == 0 {
            v.problem(key, "must be > 0");
        }
    }
    for (key, d) in [
        ("limits.max_deadline", raw.max_deadline),
        ("limits.max_stream_duration", raw.max_stream_duration),
    ] {
        if d.is_zero() {
            v.problem(key, "must be > 0");
        }
    }
    for (key, d) in [
        ("limits.max_deadline", raw.max_deadline),
        ("limits.shutdown_timeout", raw.shutdown_timeout),
        ("limits.max_stream_duration", raw.max_stream_duration),
    ] {
        if d > LONGEST {
            v.problem(key, "must be at most ten years");
        }
    }
    let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    LimitsConfig {
        max_in_flight: raw.max_in_flight,
        max_body: bytes(raw.max_body),
        max_deadline: raw.max_deadline.min(LONGEST),
        shutdown_timeout: raw.shutdown_timeout.min(LONGEST),
        max_provider_body: bytes(raw.max_provider_body),
        max_stream_duration: raw.max_stream_duration.min(LONGEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (LimitsConfig, Vec<(String, String)>) {
        let raw: RawLimits = toml::from_str(text).unwrap();
        let mut v = Validator::default();
        let c = validate(raw, &mut v);
        (c, v.problems)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let (c, problems) = check("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.max_in_flight, 4096);
        assert_eq!(c.max_body, 4 * 1024 * 1024);
        assert_eq!(c.max_deadline, Duration::from_secs(86_400));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.max_provider_body, 32 * 1024 * 1024);
        assert_eq!(c.max_stream_duration, Duration::from_secs(600));
        assert_eq!(c, LimitsConfig::default());
    }

    #[test]
    fn sizes_are_bytes_or_text() {
        let (c, problems) = check("max_body = \"512 KiB\"\nmax_provider_body = 1000\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.max_body, 512 * 1024);
        assert_eq!(c.max_provider_body, 1000);
        let err = toml::from_str::<RawLimits>("max_body = \"lots\"").unwrap_err();
        assert!(err.to_string().contains("is not a size"), "{err}");
    }

    #[test]
    fn zero_and_absurd_values_name_their_key() {
        let (_, problems) = check(
            "max_in_flight = 0\nmax_body = 0\nmax_deadline = \"0s\"\nshutdown_timeout = \"300000y\"\n",
        );
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "limits.max_in_flight",
            "limits.max_body",
            "limits.max_deadline",
            "limits.shutdown_timeout",
        ] {
            assert!(keys.contains(&key), "{key} not in {problems:?}");
        }
    }
}
