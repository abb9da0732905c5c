//! One `[[deployments]]` entry, validated: a model at a provider with its limits, price, timeout
//! and key. Each becomes one deployment actor.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use super::Validator;
use super::raw::RawDeployment;
use super::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible API (DeepSeek, Groq, Ollama, vLLM, ...).
    OpenAi,
    Anthropic,
    Gemini,
    /// Answers in-process with scripted latency and faults: demos, experiments, benchmarks.
    Simulated,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Simulated => "simulated",
        }
    }

    /// The OpenTelemetry GenAI name of the provider (`gen_ai.system` on trace spans).
    pub fn gen_ai_system(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gcp.gemini",
            Self::Simulated => "switchyard.simulated",
        }
    }

    fn default_api_base(self) -> &'static str {
        match self {
            Self::OpenAi => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Gemini => "https://generativelanguage.googleapis.com",
            Self::Simulated => "",
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub start: Duration,
    pub duration: Duration,
}

/// How a `simulated` deployment behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedSpec {
    pub latency: Duration,
    pub latency_jitter: Duration,
    /// Share of calls answered with a 503.
    pub error_rate: f64,
    /// Share of calls answered with a 429.
    pub rate_limit_rate: f64,
    pub outages: Vec<Outage>,
    pub seed: u64,
    /// Canned answers; empty: echo the prompt.
    pub answers: Vec<String>,
}

/// What an embedding deployment (`mode = "embedding"`) returns, and how its calls are cut.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    /// The vector size it returns when a request names none.
    pub dimensions: u32,
    /// The vector space (default `<model>@<dimensions>`): vectors of two spaces never mix.
    pub space: String,
    /// The most inputs in one provider call.
    pub max_inputs: usize,
}

/// Vector sizes of well-known embedding models, for deployments that do not give `dimensions`.
const KNOWN_DIMENSIONS: &[(&str, u32)] = &[
    ("text-embedding-3-small", 1536),
    ("text-embedding-3-large", 3072),
    ("text-embedding-ada-002", 1536),
    ("text-embedding-004", 768),
    ("text-embedding-005", 768),
    ("gemini-embedding-001", 3072),
    ("embedding-001", 768),
];

/// The most inputs one call of each provider's embeddings API takes (OpenAI documents 2,048;
/// Gemini's `batchEmbedContents` 100).
fn max_inputs_allowed(provider: ProviderKind) -> usize {
    match provider {
        ProviderKind::Gemini => 100,
        _ => 2048,
    }
}

#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    pub name: String,
    pub group: String,
    pub provider: ProviderKind,
    pub model: String,
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub rpm: Option<NonZeroU32>,
    pub tpm: Option<NonZeroU64>,
    pub timeout: Duration,
    /// Streaming only: time allowed until the first chunk (default: `timeout`).
    pub first_token_timeout: Duration,
    pub weight: NonZeroU32,
    pub context_window: Option<NonZeroU64>,
    /// Default `max_tokens` for providers that require one.
    pub max_tokens: Option<NonZeroU32>,
    pub price: Price,
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    pub simulated: Option<SimulatedSpec>,
    /// `[limits] max_provider_body`: the largest reply body read from this deployment.
    pub max_reply_body: usize,
    /// `[limits] max_stream_duration`: the longest a streamed reply may run in all.
    pub max_stream_duration: Duration,
    /// `Some` for `mode = "embedding"`: this deployment serves `llm.embed.*`, not chat.
    pub embedding: Option<EmbeddingSpec>,
    /// `batch_api = true`: deferred batches may use the provider's batch API (openai, anthropic).
    pub batch_api: bool,
    /// `batch_discount` (default 0.5): a batch call's price as a share of the sync price.
    pub batch_discount: f64,
}

/// Batch calls cost half the sync price at OpenAI and Anthropic.
const DEFAULT_BATCH_DISCOUNT: f64 = 0.5;

impl DeploymentConfig {
    pub fn is_embedding(&self) -> bool {
        self.embedding.is_some()
    }

    /// `"chat"` or `"embedding"`, as the config writes it.
    pub fn mode(&self) -> &'static str {
        if self.is_embedding() {
            "embedding"
        } else {
            "chat"
        }
    }
}

pub(super) fn validate(
    i: usize,
    d: RawDeployment,
    env: &dyn Fn(&str) -> Option<String>,
    v: &mut Validator,
) -> DeploymentConfig {
    let key = |field: &str| format!("deployments[{i}].{field}");
    if d.name.trim().is_empty() {
        v.problem(key("name"), "must not be empty");
    }
    if d.group.trim().is_empty() {
        v.problem(key("group"), "must not be empty");
    }
    if d.model.trim().is_empty() {
        v.problem(key("model"), "must not be empty");
    }
    let provider = match d.provider.as_str() {
        "openai" => ProviderKind::OpenAi,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "simulated" => ProviderKind::Simulated,
        other => {
            v.problem(
                key("provider"),
                format!("unknown provider `{other}` (openai | anthropic | gemini | simulated)"),
            );
            ProviderKind::OpenAi
        }
    };

    let api_base = d
        .api_base
        .unwrap_or_else(|| provider.default_api_base().to_string())
        .trim_end_matches('/')
        .to_string();
    if provider != ProviderKind::Simulated {
        match reqwest::Url::parse(&api_base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => v.problem(key("api_base"), "must be an http:// or https:// URL"),
            Err(e) => v.problem(key("api_base"), format!("not a URL: {e}")),
        }
    }
    let api_key = match &d.api_key_env {
        Some(var) => match env(var).filter(|value| !value.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                v.problem(
                    key("api_key_env"),
                    format!(
                        "deployment `{}`: environment variable {var} is not set",
                        d.name
                    ),
                );
                None
            }
        },
        None => None,
    };

    let rpm = d.rpm.map(|n| {
        NonZeroU32::new(n).unwrap_or_else(|| {
            v.problem(key("rpm"), "must be > 0");
            NonZeroU32::MIN
        })
    });
    let tpm = d.tpm.map(|n| {
        NonZeroU64::new(n).unwrap_or_else(|| {
            v.problem(key("tpm"), "must be > 0");
            NonZeroU64::MIN
        })
    });
    let context_window = d.context_window.map(|n| {
        NonZeroU64::new(n).unwrap_or_else(|| {
            v.problem(key("context_window"), "must be > 0");
            NonZeroU64::MIN
        })
    });
    let max_tokens = d.max_tokens.map(|n| {
        NonZeroU32::new(n).unwrap_or_else(|| {
            v.problem(key("max_tokens"), "must be > 0");
            NonZeroU32::MIN
        })
    });
    let weight = NonZeroU32::new(d.weight).unwrap_or_else(|| {
        v.problem(key("weight"), "must be > 0");
        NonZeroU32::MIN
    });
    let timeout = d.timeout.unwrap_or(Duration::from_secs(60));
    if timeout.is_zero() {
        v.problem(key("timeout"), "must be > 0");
    }
    let first_token_timeout = d.first_token_timeout.unwrap_or(timeout);
    if first_token_timeout.is_zero() {
        v.problem(key("first_token_timeout"), "must be > 0");
    }
    for (field, t) in [
        ("timeout", timeout),
        ("first_token_timeout", first_token_timeout),
    ] {
        if t > super::limits::LONGEST {
            v.problem(key(field), "must be at most ten years");
        }
    }
    // No price given: the built-in list price of the model, if known (simulated ones included, so
    // a demo deployment named after a real model costs what it would).
    let builtin = || super::prices::lookup(&d.model).unwrap_or_default();
    let price = d.price.map_or_else(builtin, |p| {
        for (field, value) in [
            ("price.input_per_mtok", p.input_per_mtok),
            ("price.output_per_mtok", p.output_per_mtok),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                v.problem(key(field), "must be a number >= 0");
            }
        }
        Price {
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
        }
    });

    let sim_fields = d.latency.is_some()
        || d.latency_jitter.is_some()
        || d.error_rate.is_some()
        || d.rate_limit_rate.is_some()
        || !d.outages.is_empty()
        || !d.answers.is_empty()
        || d.seed.is_some();
    let simulated = if provider == ProviderKind::Simulated {
        let mut rate = |field: &str, value: Option<f64>| {
            let value = value.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&value) {
                v.problem(key(field), "must be between 0 and 1");
            }
            value
        };
        let error_rate = rate("error_rate", d.error_rate);
        let rate_limit_rate = rate("rate_limit_rate", d.rate_limit_rate);
        Some(SimulatedSpec {
            latency: d.latency.unwrap_or(Duration::from_millis(20)),
            latency_jitter: d.latency_jitter.unwrap_or_default(),
            error_rate,
            rate_limit_rate,
            outages: d
                .outages
                .iter()
                .map(|o| Outage {
                    start: o.start,
                    duration: o.duration,
                })
                .collect(),
            seed: d
                .seed
                .unwrap_or_else(|| super::stable_hash(d.name.as_bytes())),
            answers: d.answers.clone(),
        })
    } else {
        if sim_fields {
            v.problem(
                key("provider"),
                "latency, latency_jitter, error_rate, rate_limit_rate, outages, answers and seed are for `simulated` deployments only",
            );
        }
        None
    };

    let embedding = match d.mode.as_deref().unwrap_or("chat") {
        "chat" => {
            for (field, given) in [
                ("dimensions", d.dimensions.is_some()),
                ("space", d.space.is_some()),
                ("max_inputs", d.max_inputs.is_some()),
            ] {
                if given {
                    v.problem(key(field), "only for mode = \"embedding\"");
                }
            }
            None
        }
        "embedding" => {
            if provider == ProviderKind::Anthropic {
                v.problem(
                    key("mode"),
                    "Anthropic has no embeddings API: use an openai, gemini or simulated deployment",
                );
            }
            let known = KNOWN_DIMENSIONS
                .iter()
                .find(|(m, _)| d.model.rsplit('/').next() == Some(*m))
                .map(|&(_, n)| n);
            let dimensions = match d.dimensions.or(known) {
                Some(0) => {
                    v.problem(key("dimensions"), "must be > 0");
                    1
                }
                Some(n) => n,
                None => {
                    v.problem(
                        key("dimensions"),
                        format!(
                            "an embedding deployment says the vector size `{}` returns",
                            d.model
                        ),
                    );
                    1
                }
            };
            let default_max = if provider == ProviderKind::Gemini {
                100
            } else {
                256
            };
            let max_inputs = match d.max_inputs {
                None => default_max,
                Some(0) => {
                    v.problem(key("max_inputs"), "must be > 0");
                    1
                }
                Some(n) if n as usize > max_inputs_allowed(provider) => {
                    v.problem(
                        key("max_inputs"),
                        format!(
                            "{} takes at most {} inputs per call",
                            provider.as_str(),
                            max_inputs_allowed(provider)
                        ),
                    );
                    1
                }
                Some(n) => n as usize,
            };
            let space = match d.space {
                Some(s) if s.trim().is_empty() => {
                    v.problem(key("space"), "must not be empty");
                    s
                }
                Some(s) => s,
                None => format!("{}@{dimensions}", d.model),
            };
            Some(EmbeddingSpec {
                dimensions,
                space,
                max_inputs,
            })
        }
        other => {
            v.problem(
                key("mode"),
                format!("unknown mode `{other}` (chat | embedding)"),
            );
            None
        }
    };

    if d.batch_api && !matches!(provider, ProviderKind::OpenAi | ProviderKind::Anthropic) {
        v.problem(
            key("batch_api"),
            format!(
                "{} has no batch API Switchyard speaks (openai | anthropic)",
                provider.as_str()
            ),
        );
    }
    if d.batch_api && embedding.is_some() {
        v.problem(
            key("batch_api"),
            "deferred batches are chat jobs: not for mode = \"embedding\"",
        );
    }
    let batch_discount = d.batch_discount.unwrap_or(DEFAULT_BATCH_DISCOUNT);
    if !(batch_discount.is_finite() && batch_discount > 0.0 && batch_discount <= 1.0) {
        v.problem(
            key("batch_discount"),
            "must be a number above 0 and at most 1",
        );
    }
    if d.batch_discount.is_some() && !d.batch_api {
        v.problem(key("batch_discount"), "only with batch_api = true");
    }

    DeploymentConfig {
        name: d.name,
        group: d.group,
        provider,
        model: d.model,
        api_base,
        api_key,
        rpm,
        tpm,
        timeout,
        first_token_timeout,
        weight,
        context_window,
        max_tokens,
        price,
        extra_body: d.extra_body,
        simulated,
        // Set from `[limits]` once the whole file is read.
        max_reply_body: super::LimitsConfig::default().max_provider_body,
        max_stream_duration: super::LimitsConfig::default().max_stream_duration,
        embedding,
        batch_api: d.batch_api,
        batch_discount,
    }
}
