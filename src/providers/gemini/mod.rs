//! Google Gemini API: `POST {api_base}/v1beta/models/{model}:generateContent` with
//! `x-goog-api-key` (`:streamGenerateContent?alt=sse` when streaming). The caller's OpenAI request
//! is translated into a GenerateContentRequest, and the GenerateContentResponse (or each SSE event
//! of a stream, through `StreamState`) back into OpenAI's shapes.
//!
//! What does not translate: images by http(s) URL (Gemini reads remote files only through its own
//! Files API), files by `file_id`, non-function tools, a `tool` message whose `tool_call_id` names
//! no earlier tool call, and any top-level field outside `HANDLED` and `IGNORED`. Such a request
//! fails with `Failure::Untranslatable` before anything is sent.

use serde_json::{Map, Value, json};

use super::stream::{self, PieceStream};
use super::{Answer, CallContext, Failure, chunk, openai::snippet, unix_now, untranslatable};
use crate::config::DeploymentConfig;
use crate::protocol::response::{Choice, Message};
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

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
    let model = model.strip_prefix("models/").unwrap_or(model);
    if stream {
        format!("{api_base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{api_base}/v1beta/models/{model}:generateContent")
    }
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
        build_body(d, req, ctx.include_request_extra)?,
    );
    let bytes = super::send(builder, error_message).await?;
    parse_response(&bytes, &d.model).map(Answer::Built)
}

/// Opens `streamGenerateContent?alt=sse` (`url` is that endpoint); `StreamState` translates it.
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
        build_body(d, req, ctx.include_request_extra)?,
    );
    let response = super::send_stream(builder, error_message).await?;
    Ok(stream::from_sse(
        response,
        stream::Translator::Gemini(StreamState::new(&d.model)),
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
        .body(body);
    match &d.api_key {
        Some(key) => builder.header("x-goog-api-key", key.expose()),
        None => builder,
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
    super::check_fields(req, HANDLED, IGNORED)?;
    let b = &req.body;
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    // Tool call id → function name, for the `tool` messages that answer them.
    let mut calls: Vec<(String, String)> = Vec::new();
    for m in super::messages(req) {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(super::plain_text(m.get("content"), role)?);
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
    if let Some(stop) = super::stop_sequences(req)? {
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
    super::merge_extra(&mut body, d, req, include_request_extra);
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
                match super::part_type(p) {
                    "text" => out.extend(text_part(p["text"].as_str().unwrap_or_default())),
                    "image_url" => {
                        let url = super::image_url(p).unwrap_or_default();
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
    match super::base64_data_url(url) {
        Some((mime, data)) => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
        None => Err(untranslatable(what)),
    }
}

fn model_parts(m: &Value, calls: &mut Vec<(String, String)>) -> Result<Vec<Value>, Failure> {
    let mut out = match m.get("content") {
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for p in items {
                match (super::part_type(p), p.get("text").or(p.get("refusal"))) {
                    ("text" | "refusal", Some(Value::String(t))) => out.extend(text_part(t)),
                    (other, _) => {
                        return Err(untranslatable(format!(
                            "a `{other}` content part in an assistant message"
                        )));
                    }
                }
            }
            out
        }
        other => parts(other)?,
    };
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
        let arguments = arguments.filter(|a| !a.trim().is_empty()).unwrap_or("{}");
        let args: Value = serde_json::from_str(arguments).map_err(|e| {
            untranslatable(format!("arguments of tool call `{name}` are not JSON: {e}"))
        })?;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            calls.push((id.to_string(), name.to_string()));
        }
        out.push(json!({"functionCall": {"name": name, "args": args}}));
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
    let text = super::plain_text(m.get("content"), "tool")?;
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
            super::part_type(t)
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
    let mut next_call = 0;
    for (i, c) in candidates.into_iter().flatten().enumerate() {
        let (text, tool_calls) = read_parts(c, &mut next_call);
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

fn response_id(v: &Value) -> String {
    match v["responseId"].as_str() {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// A candidate's text (thought summaries left out) and its function calls as OpenAI tool calls,
/// numbered `call_<n>` from `next_call` when Gemini gives them no id.
fn read_parts(candidate: &Value, next_call: &mut u64) -> (Option<String>, Vec<Value>) {
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
                None => format!("call_{next_call}"),
            };
            *next_call += 1;
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
fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt = n("promptTokenCount") + n("toolUsePromptTokenCount");
    let completion = n("candidatesTokenCount") + n("thoughtsTokenCount");
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: u
            .get("totalTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(prompt + completion),
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
fn error_text(v: &Value) -> Option<(Option<u64>, String)> {
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

/// Translates a `streamGenerateContent?alt=sse` stream, whose `data:` events are each a whole
/// GenerateContentResponse with the next piece of every candidate, into OpenAI chunks. The stream
/// ends with the HTTP body; it is complete when every candidate has sent its `finishReason`.
#[derive(Debug)]
pub struct StreamState {
    id: Option<String>,
    model: String,
    created: u64,
    usage: Option<Usage>,
    candidates: Vec<Candidate>,
    next_call: u64,
    done: bool,
}

/// What a stream has said so far of one candidate (one OpenAI choice).
#[derive(Debug)]
struct Candidate {
    index: u64,
    tool_calls: u64,
    finished: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        Self {
            id: None,
            model: model.to_string(),
            created: unix_now(),
            usage: None,
            candidates: Vec::new(),
            next_call: 0,
            done: false,
        }
    }

    /// One SSE event → the chunks to send, in order. Gemini names no events; `event` is ignored.
    pub fn on_event(&mut self, _event: Option<&str>, data: &str) -> Result<Vec<Value>, Failure> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            Failure::InvalidBody(format!(
                "stream event is not JSON: {e} ({:?})",
                snippet(data.as_bytes())
            ))
        })?;
        if let Some((code, message)) = error_text(&v) {
            return Err(Failure::Status {
                status: code.and_then(|c| u16::try_from(c).ok()).unwrap_or(500),
                message,
                retry_after: None,
            });
        }
        let id = self.id.get_or_insert_with(|| response_id(&v)).clone();
        if let Some(m) = v["modelVersion"].as_str() {
            self.model = m.to_string();
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = Some(usage_from(u));
        }
        let mut out = Vec::new();
        let candidates = v.get("candidates").and_then(Value::as_array);
        for (i, c) in candidates.into_iter().flatten().enumerate() {
            let index = c["index"].as_u64().unwrap_or(i as u64);
            let mut delta = Map::new();
            let slot = match self.candidates.iter().position(|k| k.index == index) {
                Some(slot) => slot,
                None => {
                    delta.insert("role".into(), json!("assistant"));
                    self.candidates.push(Candidate {
                        index,
                        tool_calls: 0,
                        finished: false,
                    });
                    self.candidates.len() - 1
                }
            };
            let state = &mut self.candidates[slot];
            let (text, calls) = read_parts(c, &mut self.next_call);
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            if !calls.is_empty() {
                let calls = calls.into_iter().map(|mut call| {
                    call["index"] = json!(state.tool_calls);
                    state.tool_calls += 1;
                    call
                });
                delta.insert("tool_calls".into(), Value::Array(calls.collect()));
            }
            let finish = c["finishReason"]
                .as_str()
                .map(|r| finish_reason(r, state.tool_calls > 0));
            state.finished |= finish.is_some();
            let delta = Value::Object(delta);
            out.push(chunk(&id, self.created, &self.model, index, delta, finish));
        }
        if self.candidates.is_empty() && v.pointer("/promptFeedback/blockReason").is_some() {
            self.candidates.push(Candidate {
                index: 0,
                tool_calls: 0,
                finished: true,
            });
            let delta = json!({"role": "assistant"});
            out.push(chunk(
                &id,
                self.created,
                &self.model,
                0,
                delta,
                Some("content_filter"),
            ));
        }
        if !self.done && !self.candidates.is_empty() && self.candidates.iter().all(|c| c.finished) {
            self.done = true;
            let usage = self.usage.unwrap_or_default();
            out.push(super::usage_chunk(&id, self.created, &self.model, usage));
        }
        Ok(out)
    }

    /// Usage from the latest `usageMetadata`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Every candidate has sent its `finishReason`.
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
        d.provider = ProviderKind::Gemini;
        d.model = "gemini-2.0-flash".into();
        d.max_tokens = None;
        d.extra_body = None;
        d
    }

    fn body(d: &DeploymentConfig, req: Value) -> Result<Value, Failure> {
        let req = ChatRequest::parse(req.to_string().as_bytes()).unwrap();
        build_body(d, &req, true).map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn untranslatable_message(req: Value) -> String {
        match body(&deployment(), req) {
            Err(Failure::Untranslatable(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    const WEATHER: &str = r#"{"type": "function", "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "strict": true,
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "strict": {"type": "boolean"},
                "options": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "additionalProperties": false}
            },
            "required": ["location"],
            "additionalProperties": false
        }
    }}"#;

    #[test]
    fn system_instruction_roles_and_generation_config() {
        let b = body(
            &deployment(),
            json!({
                "model": "fast-chat",
                "messages": [
                    {"role": "system", "content": "You are a cat."},
                    {"role": "developer", "content": [{"type": "text", "text": "Your name is Neko."}]},
                    {"role": "user", "content": "Hello"},
                    {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
                    {"role": "assistant", "content": "Meow. I am Neko."},
                    {"role": "user", "content": "How many paws are in my house? I have two dogs."}
                ],
                "temperature": 1.0,
                "top_p": 0.8,
                "n": 2,
                "seed": 42,
                "max_tokens": 800,
                "stop": ["Title"],
                "user": "u-1",
                "parallel_tool_calls": true
            }),
        )
        .unwrap();
        assert_eq!(
            b,
            json!({
                "systemInstruction": {"parts": [{"text": "You are a cat.\n\nYour name is Neko."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Hello"}, {"text": "Who are you?"}]},
                    {"role": "model", "parts": [{"text": "Meow. I am Neko."}]},
                    {"role": "user", "parts": [{"text": "How many paws are in my house? I have two dogs."}]}
                ],
                "generationConfig": {
                    "temperature": 1.0,
                    "topP": 0.8,
                    "candidateCount": 2,
                    "seed": 42,
                    "maxOutputTokens": 800,
                    "stopSequences": ["Title"]
                }
            })
        );
    }

    #[test]
    fn max_output_tokens_from_the_caller_else_the_deployment_else_unset() {
        let mut d = deployment();
        let msgs = json!([{"role": "user", "content": "x"}]);
        assert!(
            body(&d, json!({"messages": msgs}))
                .unwrap()
                .get("generationConfig")
                .is_none()
        );
        d.max_tokens = NonZeroU32::new(2048);
        let b = body(&d, json!({"messages": msgs, "stop": "END"})).unwrap();
        assert_eq!(
            b["generationConfig"],
            json!({"maxOutputTokens": 2048, "stopSequences": ["END"]})
        );
        let b = body(&d, json!({"messages": msgs, "max_completion_tokens": 9})).unwrap();
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 9);
    }

    /// The function-calling flow of the Gemini docs, asked OpenAI-side.
    #[test]
    fn tools_function_calls_and_function_responses() {
        let weather: Value = serde_json::from_str(WEATHER).unwrap();
        let b = body(
            &deployment(),
            json!({
                "messages": [
                    {"role": "user", "content": "What is the weather like in Boston?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_0", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_0", "content": "{\"temperature\": 22, \"unit\": \"celsius\"}"},
                    {"role": "user", "content": "And in Paris?"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
                ],
                "tools": [weather],
                "tool_choice": "required"
            }),
        )
        .unwrap();
        assert_eq!(
            b["contents"],
            json!([
                {"role": "user", "parts": [{"text": "What is the weather like in Boston?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_current_weather", "args": {"location": "Boston, MA"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_current_weather", "response": {"temperature": 22, "unit": "celsius"}}},
                    {"text": "And in Paris?"}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_current_weather", "args": {"location": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_current_weather", "response": {"content": "sunny"}}}]}
            ])
        );
        assert_eq!(
            b["tools"],
            json!([{"functionDeclarations": [{
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                        "strict": {"type": "boolean"},
                        "options": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
                    },
                    "required": ["location"]
                }
            }]}])
        );
        assert_eq!(
            b["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY"}})
        );
        for (choice, expected) in [
            (json!("auto"), json!({"mode": "AUTO"})),
            (json!("none"), json!({"mode": "NONE"})),
            (
                json!({"type": "function", "function": {"name": "get_current_weather"}}),
                json!({"mode": "ANY", "allowedFunctionNames": ["get_current_weather"]}),
            ),
        ] {
            let b = body(
                &deployment(),
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather], "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(b["toolConfig"]["functionCallingConfig"], expected);
        }
    }

    #[test]
    fn json_mode_and_schemas() {
        let msgs = json!([{"role": "user", "content": "List a few popular cookie recipes."}]);
        let b = body(
            &deployment(),
            json!({"messages": msgs, "response_format": {"type": "json_object"}}),
        )
        .unwrap();
        assert_eq!(
            b["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"recipeName": {"type": "string"}, "ingredients": {"type": "array", "items": {"type": "string"}}},
                "required": ["recipeName"],
                "additionalProperties": false
            }
        });
        let b = body(
            &deployment(),
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "recipes", "strict": true, "schema": schema}}}),
        )
        .unwrap();
        assert_eq!(
            b["generationConfig"],
            json!({
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"recipeName": {"type": "string"}, "ingredients": {"type": "array", "items": {"type": "string"}}},
                        "required": ["recipeName"]
                    }
                }
            })
        );
    }

    #[test]
    fn images_audio_and_files_go_inline() {
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "Caption this image."},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
            ]}]}),
        )
        .unwrap();
        assert_eq!(
            b["contents"][0]["parts"],
            json!([
                {"text": "Caption this image."},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}
            ])
        );
    }

    #[test]
    fn what_cannot_be_said_in_gemini_is_untranslatable() {
        let user = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
        let url = untranslatable_message(user(
            json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
        ));
        assert!(url.contains("http(s) URL"), "{url}");
        let file = untranslatable_message(user(
            json!({"type": "file", "file": {"file_id": "file-abc"}}),
        ));
        assert!(file.contains("file_id"), "{file}");
        let orphan = untranslatable_message(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "call_9", "content": "42"}
        ]}));
        assert!(
            orphan.contains("`call_9` matches no earlier tool call"),
            "{orphan}"
        );
        let unknown = untranslatable_message(
            json!({"messages": [{"role": "user", "content": "x"}], "web_search_options": {}}),
        );
        assert!(unknown.contains("`web_search_options`"), "{unknown}");
        let tool = untranslatable_message(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
        );
        assert!(tool.contains("`custom`"), "{tool}");
    }

    #[test]
    fn extra_body_merges_into_the_translated_settings() {
        let mut d = deployment();
        d.extra_body = serde_json::from_value(json!({"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}]})).unwrap();
        let req = ChatRequest::parse(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0.2,
                   "extra_body": {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let b: Value = serde_json::from_slice(&build_body(&d, &req, true).unwrap()).unwrap();
        assert_eq!(
            b["generationConfig"],
            json!({"temperature": 0.2, "thinkingConfig": {"thinkingBudget": 0}})
        );
        assert_eq!(b["safetySettings"][0]["threshold"], "BLOCK_ONLY_HIGH");
        let b: Value = serde_json::from_slice(&build_body(&d, &req, false).unwrap()).unwrap();
        assert_eq!(b["generationConfig"], json!({"temperature": 0.2}));
    }

    fn completion(body: Value) -> Value {
        let c = parse_response(body.to_string().as_bytes(), "gemini-2.0-flash").unwrap();
        let mut v = serde_json::to_value(c).unwrap();
        v.as_object_mut().unwrap().remove("created");
        v
    }

    #[test]
    fn a_text_reply_becomes_a_chat_completion() {
        let reply = json!({
            "candidates": [{
                "content": {"parts": [
                    {"text": "The user asks about AI.", "thought": true},
                    {"text": "AI learns patterns from data."}
                ], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}]
            }],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 10, "thoughtsTokenCount": 5, "totalTokenCount": 23,
                              "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "mcVLaNjNKNyJ1dkP0-v9iAo"
        });
        assert_eq!(
            completion(reply),
            json!({
                "id": "chatcmpl-mcVLaNjNKNyJ1dkP0-v9iAo",
                "object": "chat.completion",
                "model": "gemini-2.5-flash",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "AI learns patterns from data."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 15, "total_tokens": 23}
            })
        );
    }

    #[test]
    fn a_function_call_reply_becomes_tool_calls() {
        let reply = json!({
            "candidates": [{
                "content": {"parts": [
                    {"functionCall": {"name": "get_current_weather", "args": {"location": "Boston, MA"}}},
                    {"functionCall": {"name": "get_current_weather", "args": {"location": "Paris"}}}
                ], "role": "model"},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12, "totalTokenCount": 42}
        });
        let v = completion(reply);
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(
            v["model"], "gemini-2.0-flash",
            "no modelVersion: the deployment's model"
        );
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}},
                {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}
            ]}, "finish_reason": "tool_calls"}])
        );
    }

    #[test]
    fn every_finish_reason_and_a_blocked_prompt() {
        for (reason, finish) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
            ("OTHER", "stop"),
        ] {
            let reply = json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason, "index": 0}]});
            let c = parse_response(reply.to_string().as_bytes(), "m").unwrap();
            assert_eq!(
                c.choices[0].finish_reason.as_deref(),
                Some(finish),
                "{reason}"
            );
        }
        let blocked = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
            "modelVersion": "gemini-2.0-flash"
        });
        let v = completion(blocked);
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "content_filter"}])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7})
        );
        for bad in [&b"<html>502</html>"[..], br#"{"candidates":[]}"#, br#"{}"#] {
            assert!(
                matches!(parse_response(bad, "m"), Err(Failure::InvalidBody(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn documented_error_bodies_name_their_status() {
        for (code, status, message) in [
            (
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
            ),
            (
                400,
                "FAILED_PRECONDITION",
                "User location is not supported for the API use.",
            ),
            (
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
            ),
            (
                404,
                "NOT_FOUND",
                "models/gemini-9 is not found for API version v1beta",
            ),
            (
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            ),
            (500, "INTERNAL", "An internal error has occurred."),
            (
                503,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
            ),
            (
                504,
                "DEADLINE_EXCEEDED",
                "Deadline expired before operation could complete.",
            ),
        ] {
            let body = json!({"error": {"code": code, "message": message, "status": status}});
            assert_eq!(
                error_message(body.to_string().as_bytes()),
                format!("{status}: {message}")
            );
        }
        let wrapped =
            br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(error_message(wrapped), "RESOURCE_EXHAUSTED: Quota exceeded");
        assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
    }

    #[tokio::test]
    async fn a_call_posts_to_generate_content_with_the_key_header() {
        let client = super::super::http::client().unwrap();
        let mut d = deployment();
        d.api_key = Some(crate::config::Secret::new("AIza-test"));
        let req =
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap();
        let ctx = CallContext {
            include_request_extra: true,
            fate: None,
        };

        let reply = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1,"totalTokenCount":3}}"#;
        let (base, seen) = super::super::one_shot::serve(200, "", reply).await;
        let url = reqwest::Url::parse(&endpoint(&base, "models/gemini-2.0-flash", false)).unwrap();
        let answer = call(&client, &url, &d, &req, &ctx).await.unwrap();
        assert!(matches!(answer, Answer::Built(c) if c.text() == Some("Hi")));
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("POST /v1beta/models/gemini-2.0-flash:generateContent HTTP/1.1"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("x-goog-api-key: aiza-test")
        );

        let quota = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        let (base, _) = super::super::one_shot::serve(429, "", quota).await;
        let url = reqwest::Url::parse(&endpoint(&base, "gemini-2.0-flash", false)).unwrap();
        assert_eq!(
            call(&client, &url, &d, &req, &ctx).await.unwrap_err(),
            Failure::Status {
                status: 429,
                message: "RESOURCE_EXHAUSTED: Resource has been exhausted (e.g. check quota)."
                    .into(),
                retry_after: None,
            }
        );
        assert_eq!(
            endpoint(
                "https://generativelanguage.googleapis.com",
                "gemini-2.0-flash",
                true
            ),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
    }

    /// Three `data:` events as `streamGenerateContent?alt=sse` sends them.
    #[test]
    fn a_text_stream_becomes_chunks() {
        let events = [
            r#"{"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 9},"modelVersion": "gemini-2.0-flash","responseId": "a3JfaPHaBvGjnvgP"}"#,
            r#"{"candidates": [{"content": {"parts": [{"text": " old lighthouse keeper"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 9},"modelVersion": "gemini-2.0-flash","responseId": "a3JfaPHaBvGjnvgP"}"#,
            r#"{"candidates": [{"content": {"parts": [{"text": " smiled."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 6,"totalTokenCount": 15},"modelVersion": "gemini-2.0-flash","responseId": "a3JfaPHaBvGjnvgP"}"#,
        ];
        let mut s = StreamState::new("gemini-2.0-flash");
        let mut chunks = Vec::new();
        for data in events {
            assert!(!s.done());
            chunks.extend(s.on_event(None, data).unwrap());
        }
        assert!(s.done());
        let created = chunks[0]["created"].clone();
        let c = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-a3JfaPHaBvGjnvgP", "object": "chat.completion.chunk", "created": created, "model": "gemini-2.0-flash",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        assert_eq!(
            chunks,
            vec![
                c(json!({"role": "assistant", "content": "The"}), Value::Null),
                c(json!({"content": " old lighthouse keeper"}), Value::Null),
                c(json!({"content": " smiled."}), json!("stop")),
                json!({"id": "chatcmpl-a3JfaPHaBvGjnvgP", "object": "chat.completion.chunk", "created": created, "model": "gemini-2.0-flash",
                       "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}),
            ]
        );
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 6,
                total_tokens: 15
            })
        );
    }

    #[test]
    fn a_function_call_stream_and_a_mid_stream_error() {
        let mut s = StreamState::new("gemini-2.0-flash");
        let chunks = s
            .on_event(None, r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_current_weather","args": {"location": "Boston, MA"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 30,"candidatesTokenCount": 8,"totalTokenCount": 38}}"#)
            .unwrap();
        assert_eq!(
            chunks[0]["choices"][0],
            json!({"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}
            ]}, "finish_reason": "tool_calls"})
        );
        assert_eq!(chunks[1]["choices"], json!([]));
        assert!(s.done());

        let mut s = StreamState::new("gemini-2.0-flash");
        s.on_event(None, r#"{"candidates": [{"content": {"parts": [{"text": "Once"}],"role": "model"},"index": 0}]}"#).unwrap();
        let err = s.on_event(None, r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#);
        assert_eq!(
            err.unwrap_err(),
            Failure::Status {
                status: 503,
                message: "UNAVAILABLE: The model is overloaded. Please try again later.".into(),
                retry_after: None
            }
        );
        assert!(!s.done(), "the body ending now is a truncated answer");

        let mut s = StreamState::new("gemini-2.0-flash");
        let blocked = s.on_event(None, r#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 5,"totalTokenCount": 5}}"#).unwrap();
        assert_eq!(blocked[0]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(blocked[1]["usage"]["prompt_tokens"], 5);
        assert!(s.done());
    }
}
