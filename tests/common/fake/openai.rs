//! The OpenAI dialect: `POST /v1/chat/completions`, answered with a
//! `chat.completion` or, for `"stream": true`, with `chat.completion.chunk`
//! server-sent events ending in `data: [DONE]` (requests are not validated);
//! and `POST /v1/embeddings`, answered with a `list` of `embedding` objects
//! after the checks the real API makes.

use serde_json::{Value, json};

use super::embed::{Input, Reply, encode};
use super::wire::Request;
use super::{Answer, Call, Events};

/// The scripted routes.
const CHAT_PATH: &str = "/v1/chat/completions";
const EMBED_PATH: &str = "/v1/embeddings";

/// The most inputs one embeddings request may hold.
const MAX_INPUTS: usize = 2048;

/// What OpenAI answers for an `input` it cannot take (empty, too many items,
/// an empty string, a mix of kinds).
const INVALID_INPUT: &str = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";

pub(super) fn classify(req: &Request) -> Call {
    if req.method != "POST" {
        return Call::Unknown;
    }
    match req.route() {
        CHAT_PATH => Call::Scripted {
            stream: req.json.get("stream") == Some(&Value::Bool(true)),
        },
        EMBED_PATH => match check_embed(&req.json) {
            Ok(()) => Call::Embed,
            Err(message) => Call::Rejected { code: 400, message },
        },
        _ => Call::Unknown,
    }
}

fn check_embed(body: &Value) -> Result<(), String> {
    let Some(body) = body.as_object() else {
        return Err("We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.".into());
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err("you must provide a model parameter".into()),
    };
    let Some(input) = body.get("input") else {
        return Err("'input' is a required property".into());
    };
    let tokens = |v: &Value| {
        v.as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_u64))
    };
    let valid = match input {
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => {
            !items.is_empty()
                && items.len() <= MAX_INPUTS
                && (items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                    || items.iter().all(Value::is_u64)
                    || items.iter().all(tokens))
        }
        _ => false,
    };
    if !valid {
        return Err(INVALID_INPUT.into());
    }
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(Value::String(f)) => {
            return Err(format!(
                "'{f}' is not one of ['float', 'base64'] - 'encoding_format'"
            ));
        }
        Some(other) => {
            return Err(format!(
                "{other} is not of type 'string' - 'encoding_format'"
            ));
        }
    }
    match body.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(_) if model == "text-embedding-ada-002" => {
            Err("This model does not support specifying dimensions.".into())
        }
        Some(d) if d.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(d) => Err(format!(
            "Invalid value for 'dimensions' = {d}. Must be an integer greater than or equal to 1."
        )),
    }
}

/// The inputs of an embeddings request (each text, or each token array as
/// its JSON text); `None` for any other request.
pub(super) fn embed_inputs(req: &Request) -> Option<Vec<Input>> {
    if req.method != "POST" || req.route() != EMBED_PATH {
        return None;
    }
    let dimensions = req
        .json
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok());
    let key = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let keys = match req.json.get("input") {
        None => Vec::new(),
        Some(Value::Array(items)) if !items.iter().all(Value::is_u64) => {
            items.iter().map(key).collect()
        }
        Some(one) => vec![key(one)],
    };
    Some(
        keys.into_iter()
            .map(|key| Input { key, dimensions })
            .collect(),
    )
}

/// A `list` of `embedding` objects with `model` and `usage`.
pub(super) fn embed_body(r: &Reply<'_>) -> Value {
    let data: Vec<Value> = r
        .items
        .iter()
        .map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": encode(v, r.base64)}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": r.model,
        "usage": {"prompt_tokens": r.prompt_tokens, "total_tokens": r.prompt_tokens},
    })
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
