//! Anthropic Messages API: `POST {api_base}/v1/messages` with `x-api-key` and
//! `anthropic-version`. The caller's OpenAI request is translated into a Messages request, and the
//! Messages reply (or its SSE event stream, through `StreamState`) back into OpenAI's shapes.
//!
//! What does not translate: `n` > 1, audio and file content parts, legacy `function` messages and
//! `functions`, and any top-level field outside `HANDLED` and `IGNORED`. Such a request fails with
//! `Failure::Untranslatable` before anything is sent, so the router can try another provider.

use serde_json::{Map, Value, json};

use super::stream::{self, PieceStream};
use super::{Answer, CallContext, Failure, chunk, openai::snippet, unix_now, untranslatable};
use crate::config::DeploymentConfig;
use crate::protocol::response::{Choice, Message};
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

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

pub async fn call(
    client: &reqwest::Client,
    url: &reqwest::Url,
    d: &DeploymentConfig,
    req: &ChatRequest,
    ctx: &CallContext,
) -> Result<Answer, Failure> {
    let builder = request(
        client,
        url,
        d,
        build_body(d, req, ctx.include_request_extra, false)?,
    );
    let bytes = super::send(builder, error_message).await?;
    parse_response(&bytes).map(Answer::Built)
}

/// Opens a streamed Messages call; its events are translated by `StreamState`.
pub async fn open_stream(
    client: &reqwest::Client,
    url: &reqwest::Url,
    d: &DeploymentConfig,
    req: &ChatRequest,
    ctx: &CallContext,
) -> Result<PieceStream, Failure> {
    let builder = request(
        client,
        url,
        d,
        build_body(d, req, ctx.include_request_extra, true)?,
    );
    let response = super::send_stream(builder, error_message).await?;
    Ok(stream::from_sse(
        response,
        stream::Translator::Anthropic(StreamState::new(&d.model)),
    ))
}

fn request(
    client: &reqwest::Client,
    url: &reqwest::Url,
    d: &DeploymentConfig,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let builder = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", VERSION)
        .body(body);
    match &d.api_key {
        Some(key) => builder.header("x-api-key", key.expose()),
        None => builder,
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
    super::check_fields(req, HANDLED, IGNORED)?;
    let b = &req.body;
    if b.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(untranslatable("`n` > 1 (one answer per request)"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in super::messages(req) {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(super::plain_text(m.get("content"), role)?);
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
    if let Some(stop) = super::stop_sequences(req)? {
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
    super::merge_extra(&mut body, d, req, include_request_extra);
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
                match super::part_type(p) {
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
    let url = super::image_url(part).unwrap_or_default();
    if let Some((media_type, data)) = super::base64_data_url(url) {
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
    let mut blocks = match m.get("content") {
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match (super::part_type(p), p.get("text").or(p.get("refusal"))) {
                    ("text" | "refusal", Some(Value::String(t))) => out.extend(text_block(t)),
                    (other, _) => {
                        return Err(untranslatable(format!(
                            "a `{other}` content part in an assistant message"
                        )));
                    }
                }
            }
            out
        }
        other => content_blocks(other)?,
    };
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = &call["function"];
        let name = f["name"].as_str().unwrap_or_default();
        let arguments = f["arguments"].as_str().unwrap_or("{}");
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let input: Value = serde_json::from_str(arguments).map_err(|e| {
            untranslatable(format!("arguments of tool call `{name}` are not JSON: {e}"))
        })?;
        blocks.push(json!({"type": "tool_use", "id": call["id"], "name": name, "input": input}));
    }
    Ok(blocks)
}

fn tool_result(m: &Value) -> Result<Value, Failure> {
    let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
        return Err(untranslatable("a `tool` message without `tool_call_id`"));
    };
    let content = super::plain_text(m.get("content"), "tool")?;
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
            super::part_type(t)
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
fn usage_from(u: &Value, prior: Option<Usage>) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let input = [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ];
    let prompt = if input.iter().any(|k| n(k).is_some()) {
        input.iter().filter_map(|k| n(k)).sum()
    } else {
        prior.map_or(0, |p| p.prompt_tokens)
    };
    let completion = n("output_tokens").unwrap_or(0);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// `"{error.type}: {error.message}"` of an Anthropic error body, else the start of the body.
pub fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| error_text(&v))
        .unwrap_or_else(|| snippet(bytes))
}

fn error_text(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let message = e.get("message")?.as_str()?;
    Some(match e.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_string(),
    })
}

/// Translates a Messages SSE stream into OpenAI `chat.completion.chunk` objects, one event at a
/// time. Tool calls are numbered in the order their blocks start, as OpenAI numbers them.
#[derive(Debug)]
pub struct StreamState {
    id: String,
    model: String,
    created: u64,
    usage: Option<Usage>,
    /// Content block index → OpenAI tool call index.
    tool_blocks: Vec<(u64, u64)>,
    done: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: model.to_string(),
            created: unix_now(),
            usage: None,
            tool_blocks: Vec::new(),
            done: false,
        }
    }

    /// One SSE event (`event:` name, `data:` payload) → the chunks to send, in order.
    pub fn on_event(&mut self, event: Option<&str>, data: &str) -> Result<Vec<Value>, Failure> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            Failure::InvalidBody(format!(
                "stream event is not JSON: {e} ({:?})",
                snippet(data.as_bytes())
            ))
        })?;
        let kind = event.or_else(|| v.get("type").and_then(Value::as_str));
        let delta = |s: &Self, delta: Value, finish: Option<&str>| {
            chunk(&s.id, s.created, &s.model, 0, delta, finish)
        };
        let out = match kind.unwrap_or_default() {
            "message_start" => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str() {
                    self.id = id.to_string();
                }
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_string();
                }
                self.usage = Some(usage_from(&m["usage"], None));
                vec![delta(
                    self,
                    json!({"role": "assistant", "content": ""}),
                    None,
                )]
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tool_blocks.len() as u64;
                        self.tool_blocks
                            .push((v["index"].as_u64().unwrap_or(0), index));
                        let call = json!({
                            "index": index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        });
                        vec![delta(self, json!({"tool_calls": [call]}), None)]
                    }
                    Some("text") => match block["text"].as_str() {
                        Some(t) if !t.is_empty() => vec![delta(self, json!({"content": t}), None)],
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match (
                    d["type"].as_str(),
                    d["text"].as_str(),
                    d["partial_json"].as_str(),
                ) {
                    (Some("text_delta"), Some(t), _) => {
                        vec![delta(self, json!({"content": t}), None)]
                    }
                    (Some("input_json_delta"), _, Some(p)) if !p.is_empty() => {
                        let block = v["index"].as_u64().unwrap_or(0);
                        let index = self
                            .tool_blocks
                            .iter()
                            .find(|(b, _)| *b == block)
                            .map_or(0, |(_, i)| *i);
                        let call = json!({"index": index, "function": {"arguments": p}});
                        vec![delta(self, json!({"tool_calls": [call]}), None)]
                    }
                    // Thinking, signatures, citations: nothing OpenAI-shaped to say.
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.usage = Some(usage_from(&v["usage"], self.usage));
                let finish = v["delta"]["stop_reason"].as_str().map(finish_reason);
                vec![delta(self, json!({}), finish)]
            }
            "message_stop" => {
                self.done = true;
                let usage = self.usage.unwrap_or_default();
                vec![super::usage_chunk(
                    &self.id,
                    self.created,
                    &self.model,
                    usage,
                )]
            }
            "error" => {
                let status = match v.pointer("/error/type").and_then(Value::as_str) {
                    Some("overloaded_error") => 529,
                    _ => 500,
                };
                return Err(Failure::Status {
                    status,
                    message: error_text(&v).unwrap_or_else(|| snippet(data.as_bytes())),
                    retry_after: None,
                });
            }
            // ping, content_block_stop, and event types added later.
            _ => Vec::new(),
        };
        Ok(out)
    }

    /// Usage so far: the prompt from `message_start`, the completion from `message_delta`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// `message_stop` was seen: the answer is complete.
    pub fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::config::{Config, ProviderKind};

    fn deployment() -> DeploymentConfig {
        let mut d = Config::demo().deployments.remove(0);
        d.provider = ProviderKind::Anthropic;
        d.model = "claude-sonnet-4-5".into();
        d.max_tokens = None;
        d.extra_body = None;
        d
    }

    fn body(d: &DeploymentConfig, req: Value) -> Result<Value, Failure> {
        let req = ChatRequest::parse(req.to_string().as_bytes()).unwrap();
        build_body(d, &req, true, false).map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn untranslatable_message(req: Value) -> String {
        match body(&deployment(), req) {
            Err(Failure::Untranslatable(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn system_prompts_are_lifted_and_turns_merged() {
        let b = body(
            &deployment(),
            json!({
                "model": "fast-chat",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Hello there."},
                    {"role": "user", "content": [{"type": "text", "text": "Can you explain LLMs?"}]},
                    {"role": "assistant", "content": "Hi, I'm Claude."},
                    {"role": "developer", "content": [{"type": "text", "text": "Answer in one line."}]},
                    {"role": "user", "content": "In plain English."}
                ],
                "temperature": 1.5,
                "top_p": 0.9,
                "stop": "\n\nHuman:",
                "user": "user-42",
                "seed": 7,
                "logprobs": false
            }),
        )
        .unwrap();
        assert_eq!(
            b,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "system": "You are a helpful assistant.\n\nAnswer in one line.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Hello there."},
                        {"type": "text", "text": "Can you explain LLMs?"}
                    ]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Hi, I'm Claude."}]},
                    {"role": "user", "content": [{"type": "text", "text": "In plain English."}]}
                ],
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["\n\nHuman:"],
                "metadata": {"user_id": "user-42"}
            })
        );
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": "x"}], "stop": ["END", "STOP"], "stream": true}),
        )
        .unwrap();
        assert_eq!(b["stop_sequences"], json!(["END", "STOP"]));
        assert!(
            b.get("stream").is_none(),
            "streaming is chosen by the caller of build_body"
        );
    }

    #[test]
    fn max_tokens_comes_from_the_caller_then_the_deployment_then_the_default() {
        let mut d = deployment();
        let msg = json!([{"role": "user", "content": "x"}]);
        let b = body(&d, json!({"messages": msg})).unwrap();
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
        d.max_tokens = NonZeroU32::new(1000);
        assert_eq!(
            body(&d, json!({"messages": msg})).unwrap()["max_tokens"],
            1000
        );
        let b = body(&d, json!({"messages": msg, "max_tokens": 50})).unwrap();
        assert_eq!(b["max_tokens"], 50);
        let b = body(&d, json!({"messages": msg, "max_completion_tokens": 60})).unwrap();
        assert_eq!(b["max_tokens"], 60);
    }

    /// The weather example of Anthropic's tool-use guide, asked OpenAI-side.
    #[test]
    fn tools_tool_calls_and_tool_results() {
        let weather = json!({
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
                    "required": ["location"]
                }
            }
        });
        let b = body(
            &deployment(),
            json!({
                "messages": [
                    {"role": "user", "content": "What's the weather like in San Francisco and Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}},
                        {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "15 degrees"},
                    {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "20 degrees"}]},
                    {"role": "user", "content": "Which is warmer?"}
                ],
                "tools": [weather],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false
            }),
        )
        .unwrap();
        assert_eq!(
            b["tools"],
            json!([{
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": weather["function"]["parameters"]
            }])
        );
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "What's the weather like in San Francisco and Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"location": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "20 degrees"},
                    {"type": "text", "text": "Which is warmer?"}
                ]}
            ])
        );
        for (choice, expected) in [
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
        ] {
            let b = body(
                &deployment(),
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather], "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(b["tool_choice"], expected);
        }
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather]}),
        )
        .unwrap();
        assert!(
            b.get("tool_choice").is_none(),
            "Anthropic's default is auto"
        );
    }

    #[test]
    fn json_mode_is_an_instruction_in_the_system_prompt() {
        let msgs = json!([{"role": "system", "content": "Extract the fields."}, {"role": "user", "content": "Ann, 31"}]);
        let b = body(
            &deployment(),
            json!({"messages": msgs, "response_format": {"type": "json_object"}}),
        )
        .unwrap();
        assert_eq!(
            b["system"],
            "Extract the fields.\n\nRespond with only a valid JSON object: no prose and no code fences."
        );
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let b = body(
            &deployment(),
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}}}),
        )
        .unwrap();
        let system = b["system"].as_str().unwrap();
        assert!(system.starts_with("Extract the fields.\n\nRespond with only a valid JSON object"));
        assert!(
            system.ends_with(&format!("JSON schema:\n{schema}")),
            "{system}"
        );
    }

    #[test]
    fn images_by_data_url_and_by_url() {
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/ant.jpg", "detail": "high"}},
                {"type": "text", "text": "Describe these images.", "cache_control": {"type": "ephemeral"}}
            ]}]}),
        )
        .unwrap();
        assert_eq!(
            b["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/ant.jpg"}},
                {"type": "text", "text": "Describe these images.", "cache_control": {"type": "ephemeral"}}
            ])
        );
    }

    #[test]
    fn what_cannot_be_said_in_the_messages_api_is_untranslatable() {
        let user = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
        let audio = untranslatable_message(user(
            json!({"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}),
        ));
        assert_eq!(audio, "a `input_audio` content part");
        let file =
            untranslatable_message(user(json!({"type": "file", "file": {"file_id": "file-1"}})));
        assert!(file.contains("`file`"), "{file}");
        let n =
            untranslatable_message(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}));
        assert!(n.contains("`n`"), "{n}");
        let unknown = untranslatable_message(
            json!({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}),
        );
        assert!(unknown.contains("`modalities`"), "{unknown}");
        let bad_args = untranslatable_message(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        assert!(bad_args.contains("tool call `f`"), "{bad_args}");
        let legacy = untranslatable_message(
            json!({"messages": [{"role": "function", "name": "f", "content": "1"}]}),
        );
        assert!(legacy.contains("`function` role"), "{legacy}");
    }

    #[test]
    fn extra_body_is_merged_last_and_the_callers_only_when_meant_for_this_provider() {
        let mut d = deployment();
        d.extra_body = serde_json::from_value(
            json!({"top_k": 5, "thinking": {"type": "disabled"}, "model": "x"}),
        )
        .unwrap();
        let req = ChatRequest::parse(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0.2,
                   "extra_body": {"thinking": {"type": "enabled", "budget_tokens": 2048}, "temperature": 1}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let b: Value = serde_json::from_slice(&build_body(&d, &req, true, true).unwrap()).unwrap();
        assert_eq!(b["model"], "claude-sonnet-4-5");
        assert_eq!(b["top_k"], 5);
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(b["temperature"], 1);
        assert_eq!(b["stream"], true);
        let b: Value =
            serde_json::from_slice(&build_body(&d, &req, false, false).unwrap()).unwrap();
        assert_eq!(b["thinking"], json!({"type": "disabled"}));
        assert_eq!(b["temperature"], 0.2);
        assert!(b.get("extra_body").is_none());
    }

    fn completion(body: Value) -> Value {
        let c = parse_response(body.to_string().as_bytes()).unwrap();
        assert!(c.created > 0);
        let mut v = serde_json::to_value(c).unwrap();
        v.as_object_mut().unwrap().remove("created");
        v
    }

    #[test]
    fn a_text_reply_becomes_a_chat_completion() {
        let reply = json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "A greeting.", "signature": "EqQB"},
                {"type": "text", "text": "Hi! My name is Claude."}
            ],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
        });
        assert_eq!(
            completion(reply),
            json!({
                "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
                "object": "chat.completion",
                "model": "claude-sonnet-4-5-20250929",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2200, "completion_tokens": 503, "total_tokens": 2703}
            })
        );
    }

    #[test]
    fn a_tool_use_reply_becomes_tool_calls() {
        // Anthropic's tool-use guide example.
        let reply = json!({
            "id": "msg_01Aq9w938a90dw8q",
            "model": "claude-opus-4-6",
            "stop_reason": "tool_use",
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
            ]
        });
        assert_eq!(
            completion(reply),
            json!({
                "id": "msg_01Aq9w938a90dw8q",
                "object": "chat.completion",
                "model": "claude-opus-4-6",
                "choices": [{"index": 0, "message": {
                    "role": "assistant",
                    "content": "I'll check the current weather in San Francisco for you.",
                    "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                        "name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"
                    }}]
                }, "finish_reason": "tool_calls"}],
                "usage": null
            })
        );
    }

    #[test]
    fn every_stop_reason_has_a_finish_reason_and_bad_bodies_are_invalid() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let reply = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
            let c = parse_response(reply.to_string().as_bytes()).unwrap();
            assert_eq!(
                c.choices[0].finish_reason.as_deref(),
                Some(finish),
                "{stop}"
            );
            assert_eq!(c.text(), None, "no text blocks: null content");
        }
        for bad in [
            &b"<html>502</html>"[..],
            br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
            br#"{"id":"msg_1","type":"message","content":"hi"}"#,
        ] {
            assert!(
                matches!(parse_response(bad), Err(Failure::InvalidBody(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn documented_error_bodies_name_their_type() {
        for (kind, message) in [
            ("invalid_request_error", "max_tokens: Field required"),
            ("authentication_error", "invalid x-api-key"),
            ("billing_error", "Your credit balance is too low."),
            (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            (
                "not_found_error",
                "The requested resource could not be found.",
            ),
            (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
            ),
            (
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
            (
                "api_error",
                "An unexpected error has occurred internal to Anthropic's systems.",
            ),
            ("overloaded_error", "Overloaded"),
        ] {
            let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"});
            assert_eq!(
                error_message(body.to_string().as_bytes()),
                format!("{kind}: {message}")
            );
        }
        assert_eq!(
            error_message(b"upstream connect error"),
            "upstream connect error"
        );
    }

    #[tokio::test]
    async fn a_call_sends_the_anthropic_headers_and_reads_errors() {
        let client = super::super::http::client().unwrap();
        let mut d = deployment();
        d.api_key = Some(crate::config::Secret::new("sk-ant-test"));
        let req =
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap();
        let ctx = CallContext {
            include_request_extra: true,
            fate: None,
        };

        let reply = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":8,"output_tokens":2}}"#;
        let (base, seen) = super::super::one_shot::serve(200, "", reply).await;
        let url = reqwest::Url::parse(&endpoint(&base)).unwrap();
        let answer = call(&client, &url, &d, &req, &ctx).await.unwrap();
        assert!(matches!(answer, Answer::Built(c) if c.text() == Some("Hi")));
        let request = seen.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("post /v1/messages http/1.1"),
            "{request}"
        );
        assert!(request.contains("x-api-key: sk-ant-test"));
        assert!(request.contains("anthropic-version: 2023-06-01"));
        assert!(request.contains("content-type: application/json"));

        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let (base, _) = super::super::one_shot::serve(529, "retry-after: 3\r\n", overloaded).await;
        let url = reqwest::Url::parse(&endpoint(&base)).unwrap();
        assert_eq!(
            call(&client, &url, &d, &req, &ctx).await.unwrap_err(),
            Failure::Status {
                status: 529,
                message: "overloaded_error: Overloaded".into(),
                retry_after: Some(std::time::Duration::from_secs(3)),
            }
        );
    }

    /// The event sequence of Anthropic's streaming guide ("Basic streaming request").
    #[test]
    fn a_text_stream_becomes_chunks() {
        let events = [
            (
                "message_start",
                r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type": "content_block_stop", "index": 0}"#,
            ),
            (
                "message_delta",
                r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
            ),
            ("message_stop", r#"{"type": "message_stop"}"#),
        ];
        let mut s = StreamState::new("claude-opus-4-6");
        let mut chunks = Vec::new();
        for (event, data) in events {
            assert!(!s.done());
            chunks.extend(s.on_event(Some(event), data).unwrap());
        }
        assert!(s.done());
        let created = chunks[0]["created"].clone();
        let c = |delta: Value, finish: Value| {
            json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk", "created": created, "model": "claude-opus-4-6",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        assert_eq!(
            chunks,
            vec![
                c(json!({"role": "assistant", "content": ""}), Value::Null),
                c(json!({"content": "Hello"}), Value::Null),
                c(json!({"content": "!"}), Value::Null),
                c(json!({}), json!("stop")),
                json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk", "created": created, "model": "claude-opus-4-6",
                       "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}),
            ]
        );
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15,
                total_tokens: 40
            })
        );
    }

    /// The tool-use part of the streaming guide's example: the type comes from `data` alone.
    #[test]
    fn a_tool_use_stream_becomes_tool_call_deltas() {
        let mut s = StreamState::new("claude-opus-4-6");
        let mut chunks = Vec::new();
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather:"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            chunks.extend(s.on_event(None, data).unwrap());
        }
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta"))
            .collect();
        assert_eq!(
            deltas[1],
            &json!({"content": "Okay, let's check the weather:"})
        );
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]})
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chunks[6]["usage"],
            json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561})
        );
        assert!(s.done());
    }

    #[test]
    fn an_error_event_fails_the_stream_with_a_status() {
        let mut s = StreamState::new("m");
        let overloaded =
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#;
        assert_eq!(
            s.on_event(Some("error"), overloaded).unwrap_err(),
            Failure::Status {
                status: 529,
                message: "overloaded_error: Overloaded".into(),
                retry_after: None
            }
        );
        let api = r#"{"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}"#;
        assert!(matches!(
            s.on_event(Some("error"), api),
            Err(Failure::Status { status: 500, .. })
        ));
        assert!(matches!(
            s.on_event(Some("message_start"), "{not json"),
            Err(Failure::InvalidBody(_))
        ));
        assert!(!s.done());
    }
}
