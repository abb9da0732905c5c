//! The OpenAI Chat Completions dialect: `POST /v1/chat/completions`, answered
//! with a `chat.completion` or, for `"stream": true`, with
//! `chat.completion.chunk` server-sent events ending in `data: [DONE]`.
//! Requests are not validated.

use serde_json::{Value, json};

use super::wire::Request;
use super::{Answer, Call, Events};

/// The only route that is scripted.
const CHAT_PATH: &str = "/v1/chat/completions";

pub(super) fn classify(req: &Request) -> Call {
    if req.method == "POST" && req.route() == CHAT_PATH {
        Call::Scripted {
            stream: req.json.get("stream") == Some(&Value::Bool(true)),
        }
    } else {
        Call::Unknown
    }
}

/// `{"error":{...}}` as OpenAI sends it, with the error type for `code`.
pub(super) fn error_body(code: u16, message: &str) -> Value {
    let (kind, error_code) = match code {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        // 400 and any other client error.
        400..=499 => ("invalid_request_error", None),
        500..=599 => ("server_error", None),
        _ => ("api_error", None),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": error_code}})
}

pub(super) fn rate_limited(retry_after_secs: u64) -> Value {
    error_body(
        429,
        &format!("Rate limit reached for requests. Please try again in {retry_after_secs}s."),
    )
}

/// OpenAI answers an overload with a 503.
pub(super) fn overloaded() -> (u16, Value) {
    (
        503,
        error_body(503, "The server is overloaded or not ready yet."),
    )
}

/// A `chat.completion`.
pub(super) fn body(a: &Answer<'_>) -> Value {
    json!({
        "id": format!("chatcmpl-{}", a.n),
        "object": "chat.completion",
        "created": a.created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": a.text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage(a),
        "system_fingerprint": "fp_fake",
    })
}

/// A `chat.completion` whose message asks for one tool call.
pub(super) fn tool_call(a: &Answer<'_>, name: &str, args: &Value) -> Value {
    json!({
        "id": format!("chatcmpl-{}", a.n),
        "object": "chat.completion",
        "created": a.created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_fake{}", a.n),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            }]},
            "logprobs": null,
            "finish_reason": "tool_calls",
        }],
        "usage": usage(a),
    })
}

fn usage(a: &Answer<'_>) -> Value {
    json!({
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
    })
}

/// A role chunk, one chunk per piece of text, a chunk with `finish_reason`,
/// the usage chunk if `stream_options.include_usage` asks for it (every other
/// chunk then has `"usage": null`, as OpenAI does), and `[DONE]`.
pub(super) fn events(a: &Answer<'_>, req: &Request) -> Events {
    let include_usage =
        req.json.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    let chunk = |choices: Value, usage: Value| {
        let mut c = json!({
            "id": format!("chatcmpl-{}", a.n),
            "object": "chat.completion.chunk",
            "created": a.created,
            "model": a.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage;
        }
        format!("data: {c}\n\n")
    };
    let choice = |delta: Value, finish: Value| {
        chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            Value::Null,
        )
    };
    let mut trailer = vec![choice(json!({}), json!("stop"))];
    if include_usage {
        trailer.push(chunk(json!([]), usage(a)));
    }
    trailer.push("data: [DONE]\n\n".to_owned());
    Events {
        content_type: "text/event-stream",
        preamble: vec![choice(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        )],
        content: a
            .pieces()
            .iter()
            .map(|p| choice(json!({"content": p}), Value::Null))
            .collect(),
        trailer,
    }
}
