//! The `Llm-*` headers of contract section 1: names, and the request options read from them.

use std::time::Duration;

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
/// Why the route went where it did: `task table`, `classified: <rule>`, `default group`, ...
pub const ROUTE_REASON: &str = "Llm-Route-Reason";
pub const ERROR: &str = "Llm-Error";
/// On the last message of a streamed reply: `end` or `error`.
pub const STREAM: &str = "Llm-Stream";
/// Async jobs (contract section 1b): where the result goes, and which job a result answers.
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
    /// Deployments not to use for this request (not a header: the batch runner retries an
    /// output that failed its rule on another candidate).
    pub exclude: Vec<String>,
    /// Batch work (not a header): admitted only within the batch share of each deployment's
    /// limits, so that live requests keep their headroom.
    pub batch: bool,
}

impl RequestOptions {
    /// Reads the options through `get` (header name → value).
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, String> {
        let deadline = match get(DEADLINE) {
            None => None,
            Some(v) => match humantime::parse_duration(v.trim()) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => return Err(format!("{DEADLINE} must be > 0")),
                Err(e) => {
                    return Err(format!(
                        "{DEADLINE} `{v}` is not a duration like `20s`: {e}"
                    ));
                }
            },
        };
        let max_cost_usd = match get(MAX_COST_USD) {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
                _ => return Err(format!("{MAX_COST_USD} `{v}` is not a number >= 0")),
            },
        };
        Ok(Self {
            request_id: get(REQUEST_ID)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            deadline,
            affinity: get(AFFINITY).map(str::to_string),
            strategy: get(STRATEGY).map(|s| s.trim().to_string()),
            max_cost_usd,
            exclude: Vec::new(),
            batch: false,
        })
    }
}
