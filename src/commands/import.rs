//! `switchyard import litellm FILE.yaml`: a LiteLLM proxy `config.yaml` as Switchyard TOML
//! (docs/contract.md §9, docs/coming-from-litellm.md). `model_list` entries become deployments,
//! grouped by `model_name`; the `provider/` prefix of `litellm_params.model` gives the provider
//! kind and `api_base`; `os.environ/X` becomes `api_key_env = "X"` (a literal key is never
//! copied); `router_settings` and `litellm_settings` become `[routing]` and `[breaker]`. Every key
//! that cannot be carried is named in `notes`, with why.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_yaml_ng::Value;

/// The TOML, and what the caller should be told about it (stderr).
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// Provider prefix → (Switchyard provider, `api_base`, the key variable LiteLLM reads by default).
const PREFIXES: &[(&str, &str, &str, &str)] = &[
    (
        "openai",
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    ),
    (
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    ),
    (
        "gemini",
        "gemini",
        "https://generativelanguage.googleapis.com",
        "GEMINI_API_KEY",
    ),
    (
        "google",
        "gemini",
        "https://generativelanguage.googleapis.com",
        "GOOGLE_API_KEY",
    ),
    (
        "deepseek",
        "openai",
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
    ),
    (
        "groq",
        "openai",
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
    ),
    (
        "together_ai",
        "openai",
        "https://api.together.xyz/v1",
        "TOGETHERAI_API_KEY",
    ),
    (
        "mistral",
        "openai",
        "https://api.mistral.ai/v1",
        "MISTRAL_API_KEY",
    ),
    (
        "fireworks_ai",
        "openai",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_AI_API_KEY",
    ),
    (
        "openrouter",
        "openai",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
    ),
    ("xai", "openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    ("ollama", "openai", "http://127.0.0.1:11434/v1", ""),
    ("ollama_chat", "openai", "http://127.0.0.1:11434/v1", ""),
];

/// `litellm_params` keys carried (the rest are named in the notes).
const CARRIED: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "rpm",
    "tpm",
    "timeout",
    "weight",
    "input_cost_per_token",
    "output_cost_per_token",
];

pub fn litellm(yaml: &str) -> Result<Imported, String> {
    let doc: Value =
        serde_yaml_ng::from_str(yaml).map_err(|e| format!("not a LiteLLM config.yaml: {e}"))?;
    let list = doc
        .get("model_list")
        .and_then(Value::as_sequence)
        .filter(|l| !l.is_empty())
        .ok_or("no `model_list` entries: nothing to import")?;
    let mut notes = Vec::new();
    let mut out = String::from(
        "# Imported from a LiteLLM config.yaml by `switchyard import litellm`.\n\n[http]\nlisten = \"127.0.0.1:4000\"\n",
    );
    let routing = routing_and_breaker(&doc, &mut notes);
    let mut groups: Vec<String> = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut deployments = String::new();
    let router_timeout = doc
        .get("router_settings")
        .and_then(|r| r.get("timeout"))
        .and_then(seconds);
    for (i, entry) in list.iter().enumerate() {
        let at = format!("model_list[{i}]");
        let Some(group) = entry.get("model_name").and_then(Value::as_str) else {
            notes.push(format!("{at}: skipped: no model_name"));
            continue;
        };
        let Some(params) = entry.get("litellm_params") else {
            notes.push(format!("{at}: skipped: no litellm_params"));
            continue;
        };
        let Some(model) = params.get("model").and_then(Value::as_str) else {
            notes.push(format!("{at}: skipped: no litellm_params.model"));
            continue;
        };
        let (prefix, bare) = model.split_once('/').unwrap_or(("", model));
        let known = PREFIXES.iter().find(|p| p.0 == prefix).copied().or_else(|| {
            let guess = if bare.starts_with("claude") {
                "anthropic"
            } else if bare.starts_with("gemini") {
                "gemini"
            } else {
                "openai"
            };
            if !prefix.is_empty() || guess == "openai" && !bare.starts_with("gpt") && !bare.starts_with('o') {
                notes.push(format!(
                    "{at}: provider `{prefix}` of `{model}` is not one Switchyard knows: written as OpenAI-compatible; check api_base"
                ));
            }
            PREFIXES.iter().find(|p| p.0 == guess).copied()
        });
        let (_, provider, default_base, default_env) = known.unwrap_or((
            "openai",
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
        ));
        let bare = if known.is_some_and(|k| k.0 == prefix) {
            bare
        } else {
            model
        };
        let n = names.entry(group.to_string()).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            slug(&format!("{group}-{}", last(bare)))
        } else {
            slug(&format!("{group}-{}-{n}", last(bare)))
        };
        if !groups.iter().any(|g| g == group) {
            groups.push(group.to_string());
        }
        let _ = writeln!(deployments, "\n[[deployments]]");
        let _ = writeln!(deployments, "name = {}", quote(&name));
        let _ = writeln!(deployments, "group = {}", quote(group));
        let _ = writeln!(deployments, "provider = {}", quote(provider));
        let _ = writeln!(deployments, "model = {}", quote(bare));
        let base = params
            .get("api_base")
            .and_then(Value::as_str)
            .unwrap_or(default_base);
        let _ = writeln!(deployments, "api_base = {}", quote(base));
        match params.get("api_key").and_then(Value::as_str) {
            Some(k) if k.starts_with("os.environ/") => {
                let _ = writeln!(
                    deployments,
                    "api_key_env = {}",
                    quote(&k["os.environ/".len()..])
                );
            }
            Some(_) => {
                let var = format!("SWITCHYARD_KEY_{}", env_token(&name));
                notes.push(format!(
                    "{at}: litellm_params.api_key is a literal key: not copied; export it as {var}"
                ));
                let _ = writeln!(deployments, "api_key_env = {}", quote(&var));
            }
            None if !default_env.is_empty() => {
                let _ = writeln!(deployments, "api_key_env = {}", quote(default_env));
            }
            None => {}
        }
        for key in ["rpm", "tpm", "weight"] {
            if let Some(v) = params
                .get(key)
                .or_else(|| entry.get(key))
                .and_then(Value::as_u64)
            {
                let _ = writeln!(deployments, "{key} = {v}");
            }
        }
        if let Some(s) = params.get("timeout").and_then(seconds).or(router_timeout) {
            let _ = writeln!(deployments, "timeout = \"{s}s\"");
        }
        let cost = |k: &str| {
            params
                .get(k)
                .or_else(|| entry.get("model_info").and_then(|m| m.get(k)))
                .and_then(Value::as_f64)
        };
        match (cost("input_cost_per_token"), cost("output_cost_per_token")) {
            (Some(i), Some(o)) => {
                let _ = writeln!(
                    deployments,
                    "price = {{ input_per_mtok = {}, output_per_mtok = {} }}",
                    per_mtok(i),
                    per_mtok(o)
                );
            }
            (None, None) => {}
            _ => notes.push(format!(
                "{at}: only one of input_cost_per_token / output_cost_per_token: both are needed for `price`; the built-in list price is used"
            )),
        }
        if let Some(map) = params.as_mapping() {
            for k in map.keys().filter_map(Value::as_str) {
                if !CARRIED.contains(&k) {
                    notes.push(format!(
                        "{at}: litellm_params.{k} not carried: no Switchyard deployment key for it (extra_body can send provider fields)"
                    ));
                }
            }
        }
    }
    let default = groups.first().cloned().unwrap_or_default();
    let _ = write!(
        out,
        "\n[routing]\ndefault_group = {}\n{routing}",
        quote(&default)
    );
    out.push_str(&deployments);
    Ok(Imported { toml: out, notes })
}

/// `[routing]` lines after `default_group`, and `[breaker]`, from `router_settings` and
/// `litellm_settings` (LiteLLM reads these from either).
fn routing_and_breaker(doc: &Value, notes: &mut Vec<String>) -> String {
    let mut routing = String::new();
    let mut breaker = String::new();
    for section in ["router_settings", "litellm_settings"] {
        let Some(map) = doc.get(section).and_then(Value::as_mapping) else {
            continue;
        };
        for (k, v) in map {
            let Some(k) = k.as_str() else { continue };
            let at = format!("{section}.{k}");
            match k {
                "routing_strategy" => match v.as_str().and_then(strategy) {
                    Some(s) => {
                        let _ = writeln!(routing, "strategy = {}", quote(s));
                    }
                    None => notes.push(format!("{at}: `{v:?}` has no Switchyard strategy: the default (usage-based) is used")),
                },
                "fallbacks" => {
                    let mut chains = Vec::new();
                    for item in v.as_sequence().into_iter().flatten() {
                        for (g, to) in item.as_mapping().into_iter().flatten() {
                            let to: Vec<String> = to
                                .as_sequence()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str)
                                .map(quote)
                                .collect();
                            if let Some(g) = g.as_str() {
                                chains.push(format!("{} = [{}]", quote(g), to.join(", ")));
                            }
                        }
                    }
                    if !chains.is_empty() {
                        let _ = writeln!(routing, "fallbacks = {{ {} }}", chains.join(", "));
                    }
                }
                "allowed_fails" => match v.as_u64() {
                    // LiteLLM cools a deployment down once it fails more than allowed_fails times.
                    Some(n) => {
                        let _ = writeln!(breaker, "failure_threshold = {}", n + 1);
                    }
                    None => notes.push(format!("{at}: not a number: not carried")),
                },
                "cooldown_time" => match seconds(v) {
                    Some(s) => {
                        let _ = writeln!(breaker, "reset_timeout = \"{s}s\"");
                    }
                    None => notes.push(format!("{at}: not a number of seconds: not carried")),
                },
                "num_retries" => notes.push(format!(
                    "{at} not carried: Switchyard does not retry a deployment in place; a failed call falls back to the next candidate of the group and its fallback chain"
                )),
                "timeout" => {}
                "enable_pre_call_checks" => notes.push(format!(
                    "{at}: always on in Switchyard (context window, rpm/tpm, open circuits and cost caps are checked before each call)"
                )),
                other => notes.push(format!("{at} not carried: no Switchyard equivalent of `{other}`")),
            }
        }
    }
    if doc.get("general_settings").is_some() {
        notes.push(
            "general_settings not carried: callers' keys are [[http.keys]] (key_env or key_sha256, models, rpm, max_cost_usd_per_day)".into(),
        );
    }
    if breaker.is_empty() {
        routing
    } else {
        format!("{routing}\n[breaker]\n{breaker}")
    }
}

fn strategy(s: &str) -> Option<&'static str> {
    Some(match s {
        "simple-shuffle" => "simple-shuffle",
        "least-busy" => "least-busy",
        "usage-based-routing" | "usage-based-routing-v2" => "usage-based",
        "latency-based-routing" => "latency-based",
        "cost-based-routing" => "cost-based",
        _ => return None,
    })
}

/// Whole seconds from a number (LiteLLM writes timeouts as seconds).
fn seconds(v: &Value) -> Option<u64> {
    let s = v.as_f64().filter(|s| s.is_finite() && *s > 0.0)?;
    Some((s.ceil() as u64).max(1))
}

fn per_mtok(per_token: f64) -> String {
    let v = per_token * 1e6;
    // Fixed notation TOML reads as a float, without float noise.
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

fn last(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// A deployment name: letters, digits, `-`, `_` and `.` kept, the rest `-`.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn env_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProviderKind};

    fn valid(toml: &str) -> Config {
        Config::parse(toml, "imported.toml", &|_| Some("key".into()))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"))
    }

    #[test]
    fn every_supported_key_is_carried_and_the_rest_named() {
        let yaml = r#"
model_list:
  - model_name: chat
    litellm_params:
      model: groq/llama-3.1-8b-instant
      api_key: os.environ/GROQ_KEY
      rpm: 30
      tpm: 6000
      timeout: 12.5
      weight: 2
      input_cost_per_token: 0.00000005
      output_cost_per_token: 0.00000008
      max_retries: 4
  - model_name: chat
    litellm_params:
      model: ollama/llama3
  - model_name: big
    litellm_params:
      model: together_ai/meta-llama/Llama-3-70b
      api_key: sk-literal-secret
  - model_name: big
    litellm_params:
      model: mistral/mistral-large-latest
      api_base: https://eu.example/v1
router_settings:
  routing_strategy: latency-based-routing
  fallbacks: [{"chat": ["big"]}]
  num_retries: 2
  allowed_fails: 2
  cooldown_time: 30
  redis_host: localhost
general_settings:
  master_key: sk-1234
"#;
        let imported = litellm(yaml).unwrap();
        let c = valid(&imported.toml);
        assert!(
            !imported.toml.contains("sk-literal-secret"),
            "a literal key is never copied"
        );
        assert_eq!(c.deployments.len(), 4);
        let groq = &c.deployments[0];
        assert_eq!(
            (groq.group.as_str(), groq.model.as_str()),
            ("chat", "llama-3.1-8b-instant")
        );
        assert_eq!(groq.provider, ProviderKind::OpenAi);
        assert_eq!(groq.api_base, "https://api.groq.com/openai/v1");
        assert_eq!(groq.rpm.map(|n| n.get()), Some(30));
        assert_eq!(groq.timeout.as_secs(), 13);
        assert_eq!(groq.weight.get(), 2);
        assert!((groq.price.input_per_mtok - 0.05).abs() < 1e-9);
        assert_eq!(c.deployments[1].api_base, "http://127.0.0.1:11434/v1");
        assert_eq!(c.deployments[3].api_base, "https://eu.example/v1");
        assert_eq!(c.routing.fallbacks["chat"], ["big"]);
        assert_eq!(c.breaker.failure_threshold, 3);
        assert_eq!(c.breaker.reset_timeout.as_secs(), 30);
        assert_eq!(c.http.listen.unwrap().to_string(), "127.0.0.1:4000");
        let notes = imported.notes.join("\n");
        for expected in [
            "litellm_params.max_retries not carried",
            "model_list[2]: litellm_params.api_key is a literal key: not copied; export it as SWITCHYARD_KEY_BIG_LLAMA_3_70B",
            "router_settings.num_retries not carried",
            "router_settings.redis_host not carried",
            "general_settings not carried",
        ] {
            assert!(
                notes.contains(expected),
                "missing {expected:?} in:\n{notes}"
            );
        }
    }

    #[test]
    fn yaml_that_is_no_config_is_refused() {
        assert!(litellm("model_list: [").is_err());
        assert!(litellm("general_settings: {}").is_err());
    }
}
