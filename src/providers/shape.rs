//! The OpenAI shape every wire format reads from and writes to: the pieces of an OpenAI request
//! that read the same whichever format they are translated to (messages, content parts, tool
//! calls, `stop`, `extra_body`), and the pieces of a reply every format fills in the same way
//! (clamped usage, timestamps, a body quoted in an error). The translating formats (anthropic,
//! gemini) share these instead of borrowing them from each other or from `openai.rs`, so that no
//! format file names another.

use serde_json::{Map, Value};

use super::failure::Failure;
use crate::config::DeploymentConfig;
use crate::protocol::{ChatRequest, Usage};

/// More tokens than any model serves in a call: a provider's number above it is clamped, so that
/// the sums kept by limits, stats and the ledger cannot overflow.
pub const MAX_TOKENS: u64 = u32::MAX as u64;

/// Usage with each count clamped to `MAX_TOKENS` and `total_tokens` their sum.
pub fn sane_usage(u: Usage) -> Usage {
    let prompt_tokens = u.prompt_tokens.min(MAX_TOKENS);
    let completion_tokens = u.completion_tokens.min(MAX_TOKENS);
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The start of a body, for an error text that shows what came back.
pub fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes.get(..120).unwrap_or(bytes));
    s.trim().to_string()
}

pub(super) fn untranslatable(what: impl Into<String>) -> Failure {
    Failure::Untranslatable(what.into())
}

/// The texts of an assistant message whose `content` is an array of parts: only `text` and
/// `refusal` parts have an equivalent at other providers. `None` when `content` is not an array.
pub(super) fn assistant_texts(m: &Value) -> Option<Result<Vec<&str>, Failure>> {
    let Some(Value::Array(parts)) = m.get("content") else {
        return None;
    };
    Some(
        parts
            .iter()
            .map(
                |p| match (part_type(p), p.get("text").or(p.get("refusal"))) {
                    ("text" | "refusal", Some(Value::String(t))) => Ok(t.as_str()),
                    (other, _) => Err(untranslatable(format!(
                        "a `{other}` content part in an assistant message"
                    ))),
                },
            )
            .collect(),
    )
}

/// One tool call of an assistant message, its arguments parsed.
pub(super) struct ToolCall<'a> {
    pub(super) id: Option<&'a str>,
    pub(super) name: &'a str,
    pub(super) arguments: Value,
}

/// An assistant message's `tool_calls`; empty arguments read as `{}`.
pub(super) fn assistant_tool_calls(m: &Value) -> Result<Vec<ToolCall<'_>>, Failure> {
    m.get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
            let arguments = arguments.filter(|a| !a.trim().is_empty()).unwrap_or("{}");
            let arguments = serde_json::from_str(arguments).map_err(|e| {
                untranslatable(format!("arguments of tool call `{name}` are not JSON: {e}"))
            })?;
            Ok(ToolCall {
                id: call.get("id").and_then(Value::as_str),
                name,
                arguments,
            })
        })
        .collect()
}

/// The caller's `messages` (validated as a non-empty array of objects at parse time).
pub(super) fn messages(req: &ChatRequest) -> &[Value] {
    req.body()
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Fails on the first top-level field that is neither translated (`handled`) nor safe to drop
/// (`ignored`): a field we do not know may ask for something the provider cannot give.
pub(super) fn check_fields(
    req: &ChatRequest,
    handled: &[&str],
    ignored: &[&str],
) -> Result<(), Failure> {
    match req.body().iter().find(|(k, v)| {
        !v.is_null() && !handled.contains(&k.as_str()) && !ignored.contains(&k.as_str())
    }) {
        Some((k, _)) => Err(untranslatable(format!(
            "field `{k}` has no equivalent (provider-specific fields go in `extra_body`)"
        ))),
        None => Ok(()),
    }
}

/// Text of a `system`, `developer` or `tool` message: a string or an array of text parts.
pub(super) fn plain_text(content: Option<&Value>, role: &str) -> Result<String, Failure> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (part_type(p), p.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => out.push_str(t),
                    (other, _) => {
                        return Err(untranslatable(format!(
                            "a `{other}` content part in a `{role}` message"
                        )));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(untranslatable(format!("`{role}` message content"))),
    }
}

pub(super) fn part_type(part: &Value) -> &str {
    part.get("type")
        .and_then(Value::as_str)
        .unwrap_or("untyped")
}

/// The URL of an `image_url` part (`{"url": ...}`, or a bare string as some clients send).
pub(super) fn image_url(part: &Value) -> Option<&str> {
    let u = part.get("image_url")?;
    u.get("url").and_then(Value::as_str).or_else(|| u.as_str())
}

/// `data:<mime>;base64,<data>` split into its media type and data.
pub(super) fn base64_data_url(url: &str) -> Option<(&str, &str)> {
    let (head, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = head.strip_suffix(";base64")?;
    Some((mime, data))
}

/// `stop` as a list: a string, or an array of strings.
pub(super) fn stop_sequences(req: &ChatRequest) -> Result<Option<Vec<Value>>, Failure> {
    match req.body().get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![Value::String(s.clone())])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(untranslatable(
            "`stop` must be a string or an array of strings",
        )),
    }
}

/// Merges the deployment's `extra_body`, then (when meant for this provider) the caller's, into a
/// translated body. Objects merge key by key, so that `{"generationConfig": {"seed": 1}}` adds to
/// the translated settings instead of replacing them; any other value replaces. `model` is the
/// deployment's and is never overridden.
pub(super) fn merge_extra(
    body: &mut Map<String, Value>,
    d: &DeploymentConfig,
    req: &ChatRequest,
    include_request_extra: bool,
) {
    fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
        for (k, v) in from {
            match (into.get_mut(k), v) {
                (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
                _ => {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let request_extra = include_request_extra.then(|| req.extra_body()).flatten();
    for extra in [d.extra_body.as_ref(), request_extra].into_iter().flatten() {
        let model = body.get("model").cloned();
        merge(body, extra);
        if let Some(m) = model {
            body.insert("model".into(), m);
        }
    }
}
