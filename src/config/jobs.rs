//! `[jobs]`: durable async jobs over JetStream (docs/contract.md §1b). `serve` creates the two
//! streams when they are missing and shares one durable pull consumer between its instances;
//! these keys name them and set how long jobs and results are kept, how long a job may go
//! unacknowledged before another instance gets it, and how many run at once on one instance.

use std::time::Duration;

use serde::Deserialize;

use super::Validator;

/// `[jobs]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobs {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_results_stream")]
    pub results_stream: String,
    #[serde(default = "default_consumer")]
    pub consumer: String,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub jobs_max_age: Duration,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub results_max_age: Duration,
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for RawJobs {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            stream: default_stream(),
            results_stream: default_results_stream(),
            consumer: default_consumer(),
            jobs_max_age: default_max_age(),
            results_max_age: default_max_age(),
            duplicate_window: default_duplicate_window(),
            ack_wait: default_ack_wait(),
            max_deliver: default_max_deliver(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_stream() -> String {
    "LLM_JOBS".into()
}
fn default_results_stream() -> String {
    "LLM_RESULTS".into()
}
fn default_consumer() -> String {
    "switchyard".into()
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_deliver() -> i64 {
    5
}
fn default_concurrency() -> usize {
    64
}

/// The validated `[jobs]` section.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub enabled: bool,
    /// Captures `<prefix>.submit.>`.
    pub stream: String,
    /// Captures `<prefix>.result.>`.
    pub results_stream: String,
    /// The durable pull consumer every instance shares.
    pub consumer: String,
    pub jobs_max_age: Duration,
    pub results_max_age: Duration,
    /// Both streams drop a second message with the same `Nats-Msg-Id` within this window.
    pub duplicate_window: Duration,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    /// Jobs in flight on one instance.
    pub concurrency: usize,
}

/// A JetStream stream or consumer name: no '.', wildcards, path separators or spaces.
fn is_js_name(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
}

pub(crate) fn validate(raw: RawJobs, v: &mut Validator) -> JobsConfig {
    for (key, name) in [
        ("jobs.stream", &raw.stream),
        ("jobs.results_stream", &raw.results_stream),
        ("jobs.consumer", &raw.consumer),
    ] {
        if !is_js_name(name) {
            v.problem(
                key,
                "must be a non-empty JetStream name: no '.', '*', '>', '/', '\\' or spaces",
            );
        }
    }
    if raw.stream == raw.results_stream {
        v.problem(
            "jobs.results_stream",
            "must differ from jobs.stream: jobs and results are two streams",
        );
    }
    for (key, d) in [
        ("jobs.jobs_max_age", raw.jobs_max_age),
        ("jobs.results_max_age", raw.results_max_age),
        ("jobs.duplicate_window", raw.duplicate_window),
        ("jobs.ack_wait", raw.ack_wait),
    ] {
        if d.is_zero() {
            v.problem(key, "must be > 0");
        }
    }
    for (key, age) in [
        ("jobs.jobs_max_age", raw.jobs_max_age),
        ("jobs.results_max_age", raw.results_max_age),
    ] {
        if !age.is_zero() && raw.duplicate_window > age {
            v.problem(
                key,
                "must be at least jobs.duplicate_window (JetStream refuses a dedupe window longer than the stream keeps messages)",
            );
        }
    }
    if raw.ack_wait < Duration::from_secs(1) && !raw.ack_wait.is_zero() {
        v.problem(
            "jobs.ack_wait",
            "must be at least 1s: jobs in flight send progress every ack_wait / 2",
        );
    }
    if raw.max_deliver < 1 {
        v.problem(
            "jobs.max_deliver",
            "must be >= 1 (a job is redelivered at most this many times in all)",
        );
    }
    if raw.concurrency == 0 {
        v.problem("jobs.concurrency", "must be > 0");
    }
    JobsConfig {
        enabled: raw.enabled,
        stream: raw.stream,
        results_stream: raw.results_stream,
        consumer: raw.consumer,
        jobs_max_age: raw.jobs_max_age,
        results_max_age: raw.results_max_age,
        duplicate_window: raw.duplicate_window,
        ack_wait: raw.ack_wait,
        max_deliver: raw.max_deliver,
        concurrency: raw.concurrency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (JobsConfig, Vec<(String, String)>) {
        let raw: RawJobs = toml::from_str(text).unwrap();
        let mut v = Validator::default();
        let c = validate(raw, &mut v);
        (c, v.problems)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let (c, problems) = check("");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(c.enabled);
        assert_eq!(c.stream, "LLM_JOBS");
        assert_eq!(c.results_stream, "LLM_RESULTS");
        assert_eq!(c.consumer, "switchyard");
        assert_eq!(c.jobs_max_age, Duration::from_secs(86_400));
        assert_eq!(c.results_max_age, Duration::from_secs(86_400));
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.max_deliver, 5);
        assert_eq!(c.concurrency, 64);
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, problems) = check(
            "stream = \"LLM.JOBS\"\nresults_stream = \"\"\nack_wait = \"0s\"\nmax_deliver = 0\nconcurrency = 0\nduplicate_window = \"2h\"\nresults_max_age = \"1h\"\n",
        );
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "jobs.stream",
            "jobs.results_stream",
            "jobs.ack_wait",
            "jobs.max_deliver",
            "jobs.concurrency",
            "jobs.results_max_age",
        ] {
            assert!(keys.contains(&key), "{key} not in {problems:?}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        assert!(toml::from_str::<RawJobs>("ack_weight = \"30s\"").is_err());
        assert!(toml::from_str::<RawJobs>("ack_wait = \"soon\"").is_err());
    }
}
