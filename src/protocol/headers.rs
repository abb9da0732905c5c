//! The `Llm-*` headers of docs/contract.md §1: names, and the request options read from them.

use std::time::Duration;

use super::subjects::Endpoints;

pub const REQUEST_ID: &str = "Llm-Request-Id";
pub const DEADLINE: &str = "Llm-Deadline";
pub const AFFINITY: &str = "Llm-Affinity";
pub const STRATEGY: &str = "Llm-Strategy";
pub const MAX_COST_USD: &str = "Llm-Max-Cost-Usd";

pub const DEPLOYMENT: &str = "Llm-Deployment";
pub const PROVIDER: &str = "Llm-Provider";
pub const ATTEMPTS: &str = "Llm-Attempts";
pub const FALLBACK: &str = "Llm-Fallback";
pub const LATENCY_MS: &str = "Llm-Latency-Ms";
pub const COST_USD: &str = "Llm-Cost-Usd";
/// Embeddings: the vector space the vectors come from (docs/contract.md §10); on a request, the
/// only space that may answer it.
pub const EMBEDDING_SPACE: &str = "Llm-Embedding-Space";
/// Why the route went where it did: `task table`, `classified: <rule>`, `default group`, ...
pub const ROUTE_REASON: &str = "Llm-Route-Reason";
pub const ERROR: &str = "Llm-Error";
/// On the last message of a streamed reply: `end` or `error`.
pub const STREAM: &str = "Llm-Stream";
/// Async jobs (docs/contract.md §1b): where the result goes, and which job a result answers.
pub const RESULT_SUBJECT: &str = "Llm-Result-Subject";
pub const JOB_ID: &str = "Llm-Job-Id";

/// Per-request options from the headers. Parsing never fails as a whole: a bad value is reported
/// as an `invalid_request` by `RequestOptions::from_lookup`.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    pub request_id: Option<String>,
    pub deadline: Option<Duration>,
    pub affinity: Option<String>,
    pub strategy: Option<String>,
    pub max_cost_usd: Option<f64>,
    /// `Llm-Embedding-Space` on an embeddings request: only deployments of this vector space
    /// may serve it (an index built in one space is searched with vectors of that space).
    pub embedding_space: Option<String>,
    /// Deployments not to use for this request (not a header: the batch runner retries an
    /// output that failed its rule on another candidate).
    pub exclude: Vec<String>,
    /// Batch work (not a header): admitted only within the batch share of each deployment's
    /// limits, so that live requests keep their headroom.
    pub batch: bool,
    /// How the request's door names its chat and embeddings entrances (not a header: set by the
    /// door), for an error that sends the caller to the other one.
    pub endpoints: Endpoints,
}

/// A fresh request id: random (v4) from the thread's RNG, so no syscall and no shared
/// generator to contend on.
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// The request id of a request whose headers were read into `options`: the caller's, else a new
/// one written into the options, so that the engine and any reply made outside it (overload, a
/// failed task, shutdown) name the same id. Headers that could not be read get a fresh id.
pub fn settle_request_id(options: &mut Result<RequestOptions, String>) -> std::sync::Arc<str> {
    match options {
        Ok(o) => o
            .request_id
            .get_or_insert_with(new_request_id)
            .as_str()
            .into(),
        Err(_) => new_request_id().into(),
    }
}

/// The longest `Llm-Request-Id` taken: ids are echoed in every reply and log line.
pub const MAX_REQUEST_ID: usize = 256;

impl RequestOptions {
    /// Reads the options through `get` (header name → value). A deadline above `max_deadline` is
    /// clamped to it; any value that cannot be read is the `invalid_request` message returned.
    pub fn from_lookup<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        max_deadline: Duration,
    ) -> Result<Self, String> {
        let deadline = match get(DEADLINE) {
            None => None,
            Some(v) => Some(parse_deadline(v, max_deadline)?),
        };
        let max_cost_usd = match get(MAX_COST_USD) {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
                _ => {
                    return Err(format!(
                        "{MAX_COST_USD} `{}` is not a number >= 0",
                        shorten(v)
                    ));
                }
            },
        };
        let request_id = match get(REQUEST_ID).map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(id) if id.len() <= MAX_REQUEST_ID && !id.chars().any(char::is_control) => {
                Some(id.to_string())
            }
            Some(id) => {
                return Err(format!(
                    "{REQUEST_ID} `{}` is not an id: at most {MAX_REQUEST_ID} bytes, no control characters",
                    shorten(id)
                ));
            }
        };
        Ok(Self {
            request_id,
            deadline,
            affinity: get(AFFINITY).map(str::to_string),
            strategy: get(STRATEGY).map(|s| s.trim().to_string()),
            max_cost_usd,
            embedding_space: get(EMBEDDING_SPACE)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            exclude: Vec::new(),
            batch: false,
            endpoints: Endpoints::default(),
        })
    }
}

/// A humantime duration above zero; above `max` it is `max`.
fn parse_deadline(v: &str, max: Duration) -> Result<Duration, String> {
    match humantime::parse_duration(v.trim()) {
        Ok(d) if d.is_zero() => Err(format!("{DEADLINE} must be > 0")),
        Ok(d) => Ok(d.min(max)),
        // humantime refuses values past `Duration::MAX`; those are longer than any bound too.
        Err(humantime::DurationError::NumberOverflow) => Ok(max),
        Err(e) => Err(format!(
            "{DEADLINE} `{}` is not a duration like `20s`: {e}",
            shorten(v)
        )),
    }
}

/// A caller's value as quoted in an error: at most 64 characters of it.
pub fn shorten(v: &str) -> String {
    const MAX: usize = 64;
    match v.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &v[..cut]),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a caller puts in the headers, reading them returns (never panics), and a
        /// deadline that is taken is above zero and at most the bound.
        #[test]
        fn no_header_value_panics_the_reader(
            name in prop_oneof![
                Just(DEADLINE), Just(MAX_COST_USD), Just(REQUEST_ID), Just(STRATEGY), Just(AFFINITY)
            ],
            value in any::<String>(),
            digits in "[0-9]{1,40}(\\.[0-9]{0,20})?(ns|us|ms|s|m|h|d|w|y|M)?",
        ) {
            for v in [value.as_str(), digits.as_str()] {
                let read = RequestOptions::from_lookup(|n| (n == name).then_some(v), DAY);
                if let Ok(o) = read {
                    prop_assert!(o.deadline.is_none_or(|d| !d.is_zero() && d <= DAY));
                }
            }
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn read(pairs: &[(&str, &str)]) -> Result<RequestOptions, String> {
        RequestOptions::from_lookup(
            |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
            DAY,
        )
    }

    #[test]
    fn absurd_deadlines_are_clamped_and_bad_ones_refused() {
        let d = |v| read(&[(DEADLINE, v)]).map(|o| o.deadline);
        assert_eq!(d("20s"), Ok(Some(Duration::from_secs(20))));
        assert_eq!(d("300000000000y"), Ok(Some(DAY)));
        assert_eq!(d("99999999999999999999999999s"), Ok(Some(DAY)));
        assert_eq!(d("48h"), Ok(Some(DAY)));
        for bad in ["-1s", "garbage", "0s", ""] {
            assert!(d(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn costs_and_ids_are_checked() {
        for bad in ["NaN", "-1", "inf", "1e400", "cheap"] {
            assert!(read(&[(MAX_COST_USD, bad)]).is_err(), "{bad:?} was taken");
        }
        assert_eq!(
            read(&[(MAX_COST_USD, "0.5")]).unwrap().max_cost_usd,
            Some(0.5)
        );
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        let err = read(&[(REQUEST_ID, &long)]).unwrap_err();
        assert!(err.len() < 200, "the whole value was quoted: {err}");
        assert!(read(&[(REQUEST_ID, "a\u{7}b")]).is_err());
        assert_eq!(
            read(&[(REQUEST_ID, " r-1 ")])
                .unwrap()
                .request_id
                .as_deref(),
            Some("r-1")
        );
    }

    #[test]
    fn quoted_values_are_cut_on_a_character_boundary() {
        assert_eq!(shorten("short"), "short");
        let s = "é".repeat(100);
        assert_eq!(shorten(&s).chars().count(), 65);
    }
}
