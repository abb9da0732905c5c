//! Google Gemini API: `POST {api_base}/v1beta/models/{model}:generateContent` with
//! `x-goog-api-key` (`:streamGenerateContent?alt=sse` when streaming). The caller's OpenAI request
//! is translated into a GenerateContentRequest, and the GenerateContentResponse (or each SSE event
//! of a stream, through `StreamState`) back into OpenAI's shapes. The `WireFormat` for
//! `provider = "gemini"`.
//!
//! What does not translate: images by http(s) URL (Gemini reads remote files only through its own
//! Files API), files by `file_id`, non-function tools, a `tool` message whose `tool_call_id` names
//! no earlier tool call, and any top-level field outside `HANDLED` and `IGNORED`. Such a request
//! fails with `Failure::Untranslatable` before anything is sent.
//!
//! Embeddings (`embed.rs`): `:batchEmbedContents`, texts only.

mod embed;
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
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "response_format",
];

/// OpenAI-only fields with no Gemini equivalent, dropped without notice: they change how an
/// answer is produced or reported, never what the caller can do with it. Any other unknown field
/// is `Untranslatable`.
pub const IGNORED: &[&str] = &[
    "logprobs",
    "top_logprobs",
    "stream_options",
    "parallel_tool_calls",
    "logit_bias",
    "service_tier",
    "user",
    "store",
    "metadata",
    "reasoning_effort",
    "prompt_cache_key",
    "safety_identifier",
];

/// Schema keywords Gemini's OpenAPI-subset `Schema` refuses.
const SCHEMA_REJECTS: &[&str] = &["additionalProperties", "$schema", "strict"];

pub fn endpoint(api_base: &str, model: &str, stream: bool) -> String {
    if stream {
        model_url(api_base, model, "streamGenerateContent?alt=sse")
    } else {
        model_url(api_base, model, "generateContent")
    }
}

/// A model's name without the `models/` that config may give it.
fn model_id(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

/// `{api_base}/v1beta/models/{model}:{method}`.
fn model_url(api_base: &str, model: &str, method: &str) -> String {
    format!("{api_base}/v1beta/models/{}:{method}", model_id(model))
}

/// The Gemini GenerateContent wire format.
pub struct Gemini;

impl WireFormat for Gemini {
    fn endpoint(&self, d: &DeploymentConfig, stream: bool) -> String {
        endpoint(&d.api_base, &d.model, stream)
    }

    fn auth(&self) -> Auth {
        Auth::Header("x-goog-api-key")
    }

    /// Gemini picks streaming by endpoint, not by a field: one body serves both.
    fn build_body(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
        _stream: bool,
    ) -> Result<Vec<u8>, Failure> {
        build_body(d, req, include_request_extra)
    }

    fn parse_reply(&self, d: &DeploymentConfig, body: Bytes) -> Result<Answer, Failure> {
        parse_response(&body, &d.model).map(Answer::Built)
    }

    fn error_message(&self, body: &[u8]) -> String {
        error_message(body)
    }

    fn stream_translator(&self, d: &DeploymentConfig) -> Box<dyn StreamTranslator> {
        Box::new(StreamState::new(&d.model))
    }
}

/// The GenerateContentRequest for an OpenAI request (the same body serves streaming: Gemini picks
/// streaming by endpoint, not by a field).
///
/// `system` and `developer` messages become `systemInstruction`; `assistant` turns are `model`
/// turns; consecutive turns of one role are merged; `tool` messages become `functionResponse`
/// parts in a `user` turn, named after the earlier tool call their `tool_call_id` points to.
/// JSON schemas (response and tool parameters) lose the keywords in `SCHEMA_REJECTS`.
pub fn build_body(
    d: &DeploymentConfig,
    req: &ChatRequest,
    include_request_extra: bool,
) -> Result<Vec<u8>, Failure> {
    shape::check_fields(req, HANDLED, IGNORED)?;
    let b = req.body();
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    // Tool call id → function name, for the `tool` messages that answer them.
    let mut calls: Vec<(String, String)> = Vec::new();
    for m in shape::messages(req) {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(shape::plain_text(m.get("content"), role)?);
                continue;
            }
            "user" => ("user", parts(m.get("content"))?),
            "assistant" => ("model", model_parts(m, &mut calls)?),
            "tool" => ("user", vec![function_response(m, &calls)?]),
            other => return Err(untranslatable(format!("`{other}` role messages"))),
        };
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(parts),
            _ if parts.is_empty() => {}
            _ => turns.push((role, parts)),
        }
    }
    let mut body = Map::new();
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}));
    body.insert("contents".into(), Value::Array(contents.collect()));
    system.retain(|s| !s.is_empty());
    if !system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }

    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = b.get(from).filter(|v| v.is_number()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(max) = req.max_tokens.or(d.max_tokens.map(|n| n.get())) {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    if let Some(stop) = shape::stop_sequences(req)? {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    response_format(b.get("response_format"), &mut config)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }

    let tools = b.get("tools").and_then(Value::as_array);
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let declarations = tools
            .iter()
            .map(declaration)
            .collect::<Result<Vec<_>, _>>()?;
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        if let Some(c) = tool_config(b.get("tool_choice"))? {
            body.insert("toolConfig".into(), c);
        }
    }
    shape::merge_extra(&mut body, d, req, include_request_extra);
    // Serializing a map of JSON values into memory cannot fail.
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// A user message's content as Gemini parts.
fn parts(content: Option<&Value>) -> Result<Vec<Value>, Failure> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(text_part(s).into_iter().collect()),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for p in items {
                match shape::part_type(p) {
                    "text" => out.extend(text_part(p["text"].as_str().unwrap_or_default())),
                    "image_url" => {
                        let url = shape::image_url(p).unwrap_or_default();
                        out.push(inline_data(
                            url,
                            "an image by http(s) URL (Gemini needs it inline or uploaded)",
                        )?);
                    }
                    "input_audio" => {
                        let a = &p["input_audio"];
                        let format = a["format"].as_str().unwrap_or("wav");
                        out.push(json!({"inlineData": {
                            "mimeType": format!("audio/{format}"),
                            "data": a["data"],
                        }}));
                    }
                    "file" => {
                        let data = p.pointer("/file/file_data").and_then(Value::as_str);
                        out.push(inline_data(
                            data.unwrap_or_default(),
                            "a file by `file_id`",
                        )?);
                    }
                    other => return Err(untranslatable(format!("a `{other}` content part"))),
                }
            }
            Ok(out)
        }
        Some(_) => Err(untranslatable("message content that is not text or parts")),
    }
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

/// A base64 `data:` URL as an `inlineData` part; anything else is `what` Gemini cannot take.
fn inline_data(url: &str, what: &str) -> Result<Value, Failure> {
    match shape::base64_data_url(url) {
        Some((mime, data)) => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
        None => Err(untranslatable(what)),
    }
}

fn model_parts(m: &Value, calls: &mut Vec<(String, String)>) -> Result<Vec<Value>, Failure> {
    let mut out = match shape::assistant_texts(m) {
        Some(texts) => texts?.into_iter().filter_map(text_part).collect(),
        None => parts(m.get("content"))?,
    };
    for call in shape::assistant_tool_calls(m)? {
        if let Some(id) = call.id {
            calls.push((id.to_string(), call.name.to_string()));
        }
        out.push(json!({"functionCall": {"name": call.name, "args": call.arguments}}));
    }
    Ok(out)
}

fn function_response(m: &Value, calls: &[(String, String)]) -> Result<Value, Failure> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some((_, name)) = calls.iter().rev().find(|(c, _)| c == id) else {
        return Err(untranslatable(format!(
            "a `tool` message whose tool_call_id `{id}` matches no earlier tool call"
        )));
    };
    let text = shape::plain_text(m.get("content"), "tool")?;
    // Gemini wants an object; a tool that answered with one keeps it as it is.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

fn response_format(format: Option<&Value>, config: &mut Map<String, Value>) -> Result<(), Failure> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = format.pointer("/json_schema/schema") {
                config.insert("responseSchema".into(), clean_schema(schema));
            }
        }
        _ => return Err(untranslatable(format!("response_format {format}"))),
    }
    Ok(())
}

/// A JSON schema without the keywords Gemini refuses, at every level. Property names are data,
/// not keywords: a property called `strict` stays.
fn clean_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let each = |v: &Value| match v {
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => clean_schema(other),
    };
    let mut out = Map::new();
    for (k, v) in map {
        let v = match (k.as_str(), v) {
            (k, _) if SCHEMA_REJECTS.contains(&k) => continue,
            ("properties" | "$defs" | "definitions", Value::Object(props)) => Value::Object(
                props
                    .iter()
                    .map(|(name, s)| (name.clone(), clean_schema(s)))
                    .collect(),
            ),
            ("items" | "anyOf" | "oneOf" | "allOf" | "not" | "prefixItems", v) => each(v),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn declaration(t: &Value) -> Result<Value, Failure> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(untranslatable(format!(
            "a tool of type `{}`",
            shape::part_type(t)
        )));
    }
    let f = &t["function"];
    let mut out = json!({"name": f["name"]});
    if let Some(d) = f.get("description").filter(|d| d.is_string()) {
        out["description"] = d.clone();
    }
    if let Some(p) = f.get("parameters").filter(|p| p.is_object()) {
        out["parameters"] = clean_schema(p);
    }
    Ok(out)
}

fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, Failure> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "auto" => json!({"mode": "AUTO"}),
        Some(Value::String(s)) if s == "required" => json!({"mode": "ANY"}),
        Some(Value::String(s)) if s == "none" => json!({"mode": "NONE"}),
        Some(c) => match c.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None => return Err(untranslatable(format!("tool_choice {c}"))),
        },
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

/// A GenerateContentResponse as a `chat.completion`, one choice per candidate. `model` names the
/// deployment's model, for replies without `modelVersion`.
pub fn parse_response(bytes: &[u8], model: &str) -> Result<ChatCompletion, Failure> {
    let invalid =
        |what: String| Failure::InvalidBody(format!("{what} (body starts {:?})", snippet(bytes)));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let candidates = v.get("candidates").and_then(Value::as_array);
    let mut choices = Vec::new();
    for (i, c) in candidates.into_iter().flatten().enumerate() {
        let (text, tool_calls) = read_parts(c);
        let mut extra = Map::new();
        if !tool_calls.is_empty() {
            extra.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        let finish = c["finishReason"]
            .as_str()
            .map(|r| finish_reason(r, !extra.is_empty()));
        choices.push(Choice {
            index: c["index"].as_u64().unwrap_or(i as u64) as u32,
            message: Message {
                role: "assistant".into(),
                content: text,
                extra,
            },
            finish_reason: finish.map(str::to_string),
            extra: Map::new(),
        });
    }
    if choices.is_empty() {
        // No candidates means the prompt itself was blocked; anything else is not a reply.
        if v.pointer("/promptFeedback/blockReason").is_none() {
            return Err(invalid(
                "no candidates and no promptFeedback.blockReason".into(),
            ));
        }
        choices.push(Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: None,
                extra: Map::new(),
            },
            finish_reason: Some("content_filter".into()),
            extra: Map::new(),
        });
    }
    Ok(ChatCompletion {
        id: response_id(&v),
        object: "chat.completion".into(),
        created: unix_now(),
        model: v["modelVersion"].as_str().unwrap_or(model).to_string(),
        choices,
        usage: v.get("usageMetadata").map(usage_from),
        extra: Map::new(),
    })
}

pub(super) fn response_id(v: &Value) -> String {
    match v["responseId"].as_str() {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// A candidate's text (thought summaries left out) and its function calls as OpenAI tool calls,
/// with an id made up (`tool_call_id`) when Gemini gives them none.
pub(super) fn read_parts(candidate: &Value) -> (Option<String>, Vec<Value>) {
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    let parts = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array);
    for p in parts.into_iter().flatten() {
        if let Some(t) = p["text"].as_str() {
            if p["thought"].as_bool() != Some(true) {
                text.get_or_insert_default().push_str(t);
            }
        } else if let Some(f) = p.get("functionCall") {
            let id = match f["id"].as_str() {
                Some(id) => id.to_string(),
                None => tool_call_id(),
            };
            let args = f.get("args").cloned().unwrap_or_else(|| json!({}));
            calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": f["name"], "arguments": args.to_string()},
            }));
        }
    }
    (text, calls)
}

/// A tool call id as OpenAI makes them: `call_` and 24 random alphanumerics. Unique across
/// replies, not numbered per reply: a conversation carries every earlier round's calls, and
/// Anthropic refuses one whose `tool_use` ids repeat (a 400 that would not fall back).
pub fn tool_call_id() -> String {
    use rand::Rng;
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{random}")
}

/// OpenAI's finish reason for Gemini's. Gemini ends a turn that calls functions with `STOP`;
/// OpenAI callers look for `tool_calls`.
pub fn finish_reason(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "STOP" if has_tool_calls => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ => "stop",
    }
}

/// OpenAI usage from `usageMetadata`: thinking tokens are billed as output, tool-use prompt tokens
/// as input.
pub(super) fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(shape::MAX_TOKENS)
    };
    let prompt = n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount"));
    let completion = n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount"));
    let sane = shape::sane_usage(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: 0,
    });
    Usage {
        // Gemini's own total where it gives one (it may count what the parts leave out).
        total_tokens: u
            .get("totalTokenCount")
            .and_then(Value::as_u64)
            .map_or(sane.total_tokens, |t| t.min(2 * shape::MAX_TOKENS)),
        ..sane
    }
}

/// `"{error.status}: {error.message}"` of a Google API error body (also when wrapped in an array,
/// as some endpoints send it), else the start of the body.
pub fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| error_text(&v).map(|(_, text)| text))
        .unwrap_or_else(|| snippet(bytes))
}

/// The error code and text of a Google API error body.
pub(super) fn error_text(v: &Value) -> Option<(Option<u64>, String)> {
    let e = match v {
        Value::Array(a) => a.first()?.get("error")?,
        v => v.get("error")?,
    };
    let message = e.get("message")?.as_str()?;
    let text = match e.get("status").and_then(Value::as_str) {
        Some(status) => format!("{status}: {message}"),
        None => message.to_string(),
    };
    Some((e.get("code").and_then(Value::as_u64), text))
}

#[cfg(test)]
mod tests;
