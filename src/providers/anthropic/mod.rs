//! Anthropic Messages API: `POST {api_base}/v1/messages` with `x-api-key` and
//! `anthropic-version`. The caller's OpenAI request is translated into a Messages request, and the
//! Messages reply (or its SSE event stream, through `StreamState`) back into OpenAI's shapes. The
//! `WireFormat` for `provider = "anthropic"`.
//!
//! What does not translate: `n` > 1, audio and file content parts, legacy `function` messages and
//! `functions`, and any top-level field outside `HANDLED` and `IGNORED`. Such a request fails with
//! `Failure::Untranslatable` before anything is sent, so the router can try another provider.

mod stream;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::failure::Failure;
use super::shape::{self, snippet, unix_now, untranslatable};
use super::stream::StreamTranslator;
use super::wire::{Answer, Auth, WireFormat};
use crate::config::DeploymentConfig;
use crate::protocol::response::{Choice, Message};
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

pub use stream::StreamState;

/// The API version every request is written against.
pub const VERSION: &str = "2023-06-01";

/// Anthropic requires `max_tokens`; used when neither the caller nor the deployment sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// OpenAI fields that are translated.
const HANDLED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "extra_body",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
];

/// OpenAI-only fields with no Messages API equivalent, dropped without notice: sampling
/// penalties, log probabilities, seeds and service options change how an answer is produced or
/// reported, never what the caller can do with it. Any other unknown field is `Untranslatable`.
pub const IGNORED: &[&str] = &[
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stream_options",
    "logit_bias",
    "service_tier",
    "store",
    "metadata",
    "reasoning_effort",
    "prompt_cache_key",
    "safety_identifier",
];

pub fn endpoint(api_base: &str) -> String {
    format!("{api_base}/v1/messages")
}

/// The Anthropic Messages wire format.
pub struct Anthropic;

impl WireFormat for Anthropic {
    fn endpoint(&self, d: &DeploymentConfig, _stream: bool) -> String {
        endpoint(&d.api_base)
    }

    fn auth(&self) -> Auth {
        Auth::Header("x-api-key")
    }

    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        &[("anthropic-version", VERSION)]
    }

    fn build_body(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
        stream: bool,
    ) -> Result<Vec<u8>, Failure> {
        build_body(d, req, include_request_extra, stream)
    }

    fn parse_reply(&self, _d: &DeploymentConfig, body: Bytes) -> Result<Answer, Failure> {
        parse_response(&body).map(Answer::Built)
    }

    fn error_message(&self, body: &[u8]) -> String {
        error_message(body)
    }

    fn stream_translator(&self, d: &DeploymentConfig) -> Box<dyn StreamTranslator> {
        Box::new(StreamState::new(&d.model))
    }
}

/// The Messages request for an OpenAI request.
///
/// `system` and `developer` messages, wherever they stand, become the top-level `system`;
/// consecutive turns of one role are merged, as Anthropic requires alternation; `tool` messages
/// become `tool_result` blocks in a user turn. Anthropic has no JSON mode: a `response_format` of
/// `json_object` or `json_schema` becomes an instruction at the end of the system prompt to answer
/// with only a JSON object (conforming to the schema, when one is given). `parallel_tool_calls:
/// false` becomes `tool_choice.disable_parallel_tool_use`.
pub fn build_body(
    d: &DeploymentConfig,
    req: &ChatRequest,
    include_request_extra: bool,
    stream: bool,
) -> Result<Vec<u8>, Failure> {
    shape::check_fields(req, HANDLED, IGNORED)?;
    let b = req.body();
    if b.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(untranslatable("`n` > 1 (one answer per request)"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in shape::messages(req) {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(shape::plain_text(m.get("content"), role)?);
                continue;
            }
            "user" => ("user", content_blocks(m.get("content"))?),
            "assistant" => ("assistant", assistant_blocks(m)?),
            "tool" => ("user", vec![tool_result(m)?]),
            other => return Err(untranslatable(format!("`{other}` role messages"))),
        };
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ if blocks.is_empty() => {}
            _ => turns.push((role, blocks)),
        }
    }
    if let Some(instruction) = json_instruction(b.get("response_format"))? {
        system.push(instruction);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(d.model));
    let max_tokens = req
        .max_tokens
        .or(d.max_tokens.map(|n| n.get()))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    system.retain(|s| !s.is_empty());
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}));
    body.insert("messages".into(), Value::Array(messages.collect()));
    if let Some(stop) = shape::stop_sequences(req)? {
        body.insert("stop_sequences".into(), Value::Array(stop));
    }
    if let Some(t) = b.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0–2, Anthropic's 0–1.
        body.insert("temperature".into(), json!(t.min(1.0)));
    }
    if let Some(p) = b.get("top_p").filter(|v| v.is_number()) {
        body.insert("top_p".into(), p.clone());
    }
    let tools = b.get("tools").and_then(Value::as_array);
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        body.insert("tools".into(), Value::Array(tools));
        let parallel = b.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(choice) = tool_choice(b.get("tool_choice"), parallel)? {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = b.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    shape::merge_extra(&mut body, d, req, include_request_extra);
    // Serializing a map of JSON values into memory cannot fail.
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// A user message's content as Messages blocks.
fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, Failure> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(text_block(s).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match shape::part_type(p) {
                    "text" => {
                        let text = p.get("text").and_then(Value::as_str).unwrap_or_default();
                        out.extend(text_block(text).map(|mut block| {
                            // Prompt caching marks, for callers that write them OpenAI-side.
                            if let Some(cc) = p.get("cache_control") {
                                block["cache_control"] = cc.clone();
                            }
                            block
                        }));
                    }
                    "image_url" => out.push(image_block(p)?),
                    other => {
                        return Err(untranslatable(format!("a `{other}` content part")));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(untranslatable("message content that is not text or parts")),
    }
}

/// Anthropic refuses empty text blocks; an empty text adds nothing.
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn image_block(part: &Value) -> Result<Value, Failure> {
    let url = shape::image_url(part).unwrap_or_default();
    if let Some((media_type, data)) = shape::base64_data_url(url) {
        Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    } else {
        Err(untranslatable(
            "an image that is neither a base64 data: URL nor an http(s) URL",
        ))
    }
}

fn assistant_blocks(m: &Value) -> Result<Vec<Value>, Failure> {
    if m.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(untranslatable("legacy `function_call` (use `tool_calls`)"));
    }
    let mut blocks = match shape::assistant_texts(m) {
        Some(texts) => texts?.into_iter().filter_map(text_block).collect(),
        None => content_blocks(m.get("content"))?,
    };
    for call in shape::assistant_tool_calls(m)? {
        blocks.push(json!({
            "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments
        }));
    }
    Ok(blocks)
}

fn tool_result(m: &Value) -> Result<Value, Failure> {
    let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
        return Err(untranslatable("a `tool` message without `tool_call_id`"));
    };
    let content = shape::plain_text(m.get("content"), "tool")?;
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// The system-prompt instruction that stands in for OpenAI's JSON modes.
fn json_instruction(format: Option<&Value>) -> Result<Option<String>, Failure> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            "Respond with only a valid JSON object: no prose and no code fences.".into(),
        )),
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .unwrap_or(&Value::Null);
            Ok(Some(format!(
                "Respond with only a valid JSON object, no prose and no code fences, that \
                 conforms to this JSON schema:\n{schema}"
            )))
        }
        _ => Err(untranslatable(format!("response_format {format}"))),
    }
}

fn tool(t: &Value) -> Result<Value, Failure> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(untranslatable(format!(
            "a tool of type `{}`",
            shape::part_type(t)
        )));
    }
    let f = &t["function"];
    let mut out = json!({
        "name": f["name"],
        "input_schema": f.get("parameters").cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(d) = f.get("description").filter(|d| d.is_string()) {
        out["description"] = d.clone();
    }
    Ok(out)
}

fn tool_choice(choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Value>, Failure> {
    let mut out = match choice {
        None | Some(Value::Null) => json!({"type": "auto"}),
        Some(Value::String(s)) if s == "auto" => json!({"type": "auto"}),
        Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
        Some(Value::String(s)) if s == "none" => return Ok(Some(json!({"type": "none"}))),
        Some(c) => match c.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(untranslatable(format!("tool_choice {c}"))),
        },
    };
    if parallel == Some(false) {
        out["disable_parallel_tool_use"] = json!(true);
    } else if choice.is_none_or(Value::is_null) {
        // Anthropic's own default; nothing to say.
        return Ok(None);
    }
    Ok(Some(out))
}

/// A Messages reply as a `chat.completion`.
pub fn parse_response(bytes: &[u8]) -> Result<ChatCompletion, Failure> {
    let invalid =
        |what: String| Failure::InvalidBody(format!("{what} (body starts {:?})", snippet(bytes)));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if v.get("type").is_some_and(|t| t != "message") {
        return Err(invalid("not a Messages reply".into()));
    }
    let Some(blocks) = v.get("content").and_then(Value::as_array) else {
        return Err(invalid("no `content` array".into()));
    };
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_default()
                .push_str(b["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            // Thinking, redacted thinking and server tool blocks have no OpenAI counterpart.
            _ => {}
        }
    }
    let mut extra = Map::new();
    if !tool_calls.is_empty() {
        extra.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let usage = v.get("usage").map(|u| usage_from(u, None));
    Ok(ChatCompletion {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        object: "chat.completion".into(),
        created: unix_now(),
        model: v["model"].as_str().unwrap_or_default().to_string(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: text,
                extra,
            },
            finish_reason: v["stop_reason"].as_str().map(|r| finish_reason(r).into()),
            extra: Map::new(),
        }],
        usage,
        extra: Map::new(),
    })
}

pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever a later API version adds.
        _ => "stop",
    }
}

/// OpenAI usage from Anthropic's: cache reads and writes are prompt tokens too. `prior` holds the
/// prompt side from `message_start` when a stream's `message_delta` leaves it out.
pub(super) fn usage_from(u: &Value, prior: Option<Usage>) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let input = [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ];
    let prompt = if input.iter().any(|k| n(k).is_some()) {
        input
            .iter()
            .filter_map(|k| n(k))
            .fold(0u64, u64::saturating_add)
    } else {
        prior.map_or(0, |p| p.prompt_tokens)
    };
    shape::sane_usage(Usage {
        prompt_tokens: prompt,
        completion_tokens: n("output_tokens").unwrap_or(0),
        total_tokens: 0,
    })
}

/// `"{error.type}: {error.message}"` of an Anthropic error body, else the start of the body.
pub fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| error_text(&v))
        .unwrap_or_else(|| snippet(bytes))
}

pub(super) fn error_text(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let message = e.get("message")?.as_str()?;
    Some(match e.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_string(),
    })
}

#[cfg(test)]
mod tests;
