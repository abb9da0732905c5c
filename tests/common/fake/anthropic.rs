//! The Anthropic Messages dialect: `POST /v1/messages`, checked the way the
//! real API checks it (unique `tool_use` ids included), answered with a `message` or, for `"stream": true`,
//! with the Messages event sequence (`message_start` … `message_stop`).

use serde_json::{Map, Value, json};

use super::wire::Request;
use super::{Answer, Call, Events};

const MESSAGES_PATH: &str = "/v1/messages";

pub(super) fn classify(req: &Request) -> Call {
    if req.method != "POST" || req.route() != MESSAGES_PATH {
        return Call::Unknown;
    }
    match check(req) {
        Ok(stream) => Call::Scripted { stream },
        Err(message) => Call::Rejected { code: 400, message },
    }
}

/// The checks of the real API that matter to an adapter; `Ok(stream)` if the
/// request passes, else the message of the 400.
fn check(req: &Request) -> Result<bool, String> {
    if req.header("x-api-key").is_none() {
        return Err("x-api-key: header is required".into());
    }
    if req.header("anthropic-version").is_none() {
        return Err("anthropic-version: header is required".into());
    }
    let Some(body) = req.json.as_object() else {
        return Err("The request body is not valid JSON.".into());
    };
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        None => return Err("model: Field required".into()),
        Some(_) => return Err("model: Input should be a valid string".into()),
    }
    match body.get("max_tokens") {
        None => return Err("max_tokens: Field required".into()),
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
        Some(v) if v.is_i64() || v.is_u64() => {
            return Err("max_tokens: Input should be greater than or equal to 1".into());
        }
        Some(_) => return Err("max_tokens: Input should be a valid integer".into()),
    }
    check_messages(body)?;
    match body.get("temperature") {
        None | Some(Value::Null) => {}
        Some(t) => match t.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            Some(t) if t < 0.0 => {
                return Err("temperature: Input should be greater than or equal to 0".into());
            }
            Some(_) => return Err("temperature: Input should be less than or equal to 1".into()),
            None => return Err("temperature: Input should be a valid number".into()),
        },
    }
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(stream)) => Ok(*stream),
        Some(_) => Err("stream: Input should be a valid boolean".into()),
    }
}

fn check_messages(body: &Map<String, Value>) -> Result<(), String> {
    let messages = match body.get("messages") {
        None => return Err("messages: Field required".into()),
        Some(Value::Array(m)) => m,
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut previous: Option<&str> = None;
    // The real API refuses a conversation in which two `tool_use` blocks share an id.
    let mut tool_use_ids: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
        };
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            None => return Err(format!("messages.{i}.content: Field required")),
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a valid list"
                ));
            }
        }
        let blocks = m.get("content").and_then(Value::as_array);
        for (j, block) in blocks.into_iter().flatten().enumerate() {
            if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                continue;
            }
            let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
            if tool_use_ids.contains(&id) {
                return Err(format!(
                    "messages.{i}.content.{j}: `tool_use` ids must be unique"
                ));
            }
            tool_use_ids.push(id);
        }
        if previous.is_none() && role != "user" {
            return Err(r#"messages: first message must use the "user" role"#.into());
        }
        if previous == Some(role) {
            return Err(format!(
                r#"messages: roles must alternate between "user" and "assistant", but found multiple "{role}" roles in a row"#
            ));
        }
        previous = Some(role);
    }
    Ok(())
}

/// `{"type":"error","error":{"type":...,"message":...}}` with Anthropic's
/// error type for `code`.
pub(super) fn error_body(code: u16, message: &str) -> Value {
    let kind = match code {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        // 400 and any other client error.
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

pub(super) fn rate_limited(retry_after_secs: u64) -> Value {
    error_body(
        429,
        &format!(
            "This request would exceed the rate limit for your organization. Please try again in {retry_after_secs}s."
        ),
    )
}

pub(super) fn overloaded() -> (u16, Value) {
    (529, error_body(529, "Overloaded"))
}

/// A Messages `message`.
pub(super) fn body(a: &Answer<'_>) -> Value {
    json!({
        "id": format!("msg_{}", a.n),
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": [{"type": "text", "text": a.text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens},
    })
}

/// A Messages `message` that asks for one tool call.
pub(super) fn tool_call(a: &Answer<'_>, name: &str, args: &Value) -> Value {
    json!({
        "id": format!("msg_{}", a.n),
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": [{"type": "tool_use", "id": format!("toolu_fake{}", a.n), "name": name, "input": args}],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens},
    })
}

/// `message_start`, `content_block_start`, `ping`; a `content_block_delta`
/// per piece of text; `content_block_stop`, `message_delta`, `message_stop`.
pub(super) fn events(a: &Answer<'_>) -> Events {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let start = json!({
        "type": "message_start",
        "message": {
            "id": format!("msg_{}", a.n),
            "type": "message",
            "role": "assistant",
            "model": a.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": a.prompt_tokens, "output_tokens": 1},
        },
    });
    Events {
        content_type: "text/event-stream",
        preamble: vec![
            event("message_start", start),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", json!({"type": "ping"})),
        ],
        content: a
            .pieces()
            .iter()
            .map(|p| {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
                )
            })
            .collect(),
        trailer: vec![
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": a.completion_tokens},
                }),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
    }
}
