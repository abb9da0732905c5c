//! The Gemini dialect: `POST /v1beta/models/{model}:generateContent`, and
//! `:streamGenerateContent` which streams server-sent events with `?alt=sse`
//! (events separated by `\r\n\r\n`, as Google sends them) and a JSON array
//! without it; and `:batchEmbedContents`, answered with `{"embeddings":
//! [{"values": [...]}]}` in request order. Requests are checked the way the
//! real API checks them; errors have Google's
//! `{"error":{"code","message","status"}}` shape.

use serde_json::{Value, json};

use super::embed::{Input, Reply, encode};
use super::wire::Request;
use super::{Answer, Call, Events};

const MODELS_PREFIX: &str = "/v1beta/models/";

/// The most requests one `batchEmbedContents` call may hold.
const MAX_BATCH: usize = 100;

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Generate,
    Stream,
    BatchEmbed,
}

/// The model named in a Gemini route and its method; `None` for any other
/// path.
fn parse_route(req: &Request) -> Option<(&str, Method)> {
    let rest = req.route().strip_prefix(MODELS_PREFIX)?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "generateContent" => Some((model, Method::Generate)),
        "streamGenerateContent" => Some((model, Method::Stream)),
        "batchEmbedContents" => Some((model, Method::BatchEmbed)),
        _ => None,
    }
}

/// The model from the path of a Gemini request.
pub(super) fn model(req: &Request) -> Option<String> {
    parse_route(req).map(|(model, _)| model.to_owned())
}

pub(super) fn classify(req: &Request) -> Call {
    let Some((model, method)) = parse_route(req).filter(|_| req.method == "POST") else {
        return Call::Unknown;
    };
    let checked = check_key(req).and_then(|()| match method {
        Method::BatchEmbed => check_embed(req, model),
        Method::Generate | Method::Stream => check(req),
    });
    match (checked, method) {
        (Ok(()), Method::BatchEmbed) => Call::Embed,
        (Ok(()), _) => Call::Scripted {
            stream: method == Method::Stream,
        },
        (Err((code, message)), _) => Call::Rejected { code, message },
    }
}

fn check_key(req: &Request) -> Result<(), (u16, String)> {
    if req.header("x-goog-api-key").is_none() {
        return Err((
            403,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API."
                .to_owned(),
        ));
    }
    Ok(())
}

/// A `BatchEmbedContentsRequest`: 1 to 100 requests, each naming the URL's
/// model as `models/{model}` and holding parts.
fn check_embed(req: &Request, model: &str) -> Result<(), (u16, String)> {
    let bad = |message: String| Err((400, message));
    let Some(body) = req.json.as_object() else {
        return bad("Invalid JSON payload received.".into());
    };
    let requests = match body.get("requests") {
        Some(Value::Array(r)) if !r.is_empty() => r,
        None | Some(Value::Array(_)) => {
            return bad("* BatchEmbedContentsRequest.requests: requests is not specified\n".into());
        }
        Some(_) => {
            return bad("Invalid JSON payload received. Invalid value at 'requests'.".into());
        }
    };
    if requests.len() > MAX_BATCH {
        return bad(format!(
            "* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch\n"
        ));
    }
    let url_model = format!("models/{model}");
    for (i, r) in requests.iter().enumerate() {
        match r.get("model").and_then(Value::as_str) {
            None => {
                return bad(format!(
                    "* BatchEmbedContentsRequest.requests[{i}].model: model is required\n"
                ));
            }
            Some(m) if m != url_model => {
                return bad(format!(
                    "* BatchEmbedContentsRequest.requests[{i}].model: model {m} differs from the batch's model {url_model}\n"
                ));
            }
            Some(_) => {}
        }
        if r.pointer("/content/parts")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return bad(format!(
                "* BatchEmbedContentsRequest.requests[{i}].content.parts: contents.parts must not be empty.\n"
            ));
        }
    }
    Ok(())
}

/// The inputs of a `batchEmbedContents` request (each request's texts
/// joined); `None` for any other request.
pub(super) fn embed_inputs(req: &Request) -> Option<Vec<Input>> {
    if parse_route(req)?.1 != Method::BatchEmbed {
        return None;
    }
    let requests = req.json.get("requests").and_then(Value::as_array);
    Some(
        requests
            .into_iter()
            .flatten()
            .map(|r| Input {
                key: r
                    .pointer("/content/parts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                dimensions: r
                    .get("outputDimensionality")
                    .and_then(Value::as_u64)
                    .and_then(|d| usize::try_from(d).ok()),
            })
            .collect(),
    )
}

/// A `BatchEmbedContentsResponse`: no index, no usage, no model.
pub(super) fn embed_body(r: &Reply<'_>) -> Value {
    let embeddings: Vec<Value> = r
        .items
        .iter()
        .map(|(_, v)| json!({"values": encode(v, false)}))
        .collect();
    json!({ "embeddings": embeddings })
}

fn check(req: &Request) -> Result<(), (u16, String)> {
    let bad = |message: &str| Err((400, message.to_owned()));
    let Some(body) = req.json.as_object() else {
        return bad("Invalid JSON payload received.");
    };
    let contents = match body.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        None | Some(Value::Array(_)) => {
            return bad("* GenerateContentRequest.contents: contents is not specified\n");
        }
        Some(_) => return bad("Invalid JSON payload received. Invalid value at 'contents'."),
    };
    for (i, content) in contents.iter().enumerate() {
        // The role may be left out (it is then "user").
        match content.get("role") {
            None | Some(Value::Null) => {}
            Some(Value::String(role)) if role == "user" || role == "model" => {}
            Some(_) => return bad("Please use a valid role: user, model."),
        }
        if content
            .get("parts")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return bad(&format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            ));
        }
    }
    let config = body
        .get("generationConfig")
        .or_else(|| body.get("generation_config"));
    match config.and_then(|c| c.get("temperature")) {
        None | Some(Value::Null) => {}
        Some(t) if t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => {}
        Some(_) => {
            return bad("* GenerateContentRequest.generation_config.temperature: \
                 temperature must be in the range [0.0, 2.0]\n");
        }
    }
    Ok(())
}

/// `{"error":{"code":...,"message":...,"status":...}}` with Google's status
/// for `code`.
pub(super) fn error_body(code: u16, message: &str) -> Value {
    let status = match code {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        // 400 and any other client error.
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    };
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// Gemini puts the wait in a `RetryInfo` detail.
pub(super) fn rate_limited(retry_after_secs: u64) -> Value {
    let mut body = error_body(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
    );
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": format!("{retry_after_secs}s"),
    }]);
    body
}

/// Gemini answers an overload with a 503.
pub(super) fn overloaded() -> (u16, Value) {
    (
        503,
        error_body(503, "The model is overloaded. Please try again later."),
    )
}

fn response(a: &Answer<'_>, text: &str, finished: bool, candidates_tokens: u32) -> Value {
    let mut candidate = json!({
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    });
    if finished {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": a.prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": a.prompt_tokens + candidates_tokens,
        },
        "modelVersion": a.model,
        "responseId": format!("resp-{}", a.n),
    })
}

/// A `GenerateContentResponse` whose candidate calls one function. Like
/// Gemini's, the `functionCall` has no id.
pub(super) fn tool_call(a: &Answer<'_>, name: &str, args: &Value) -> Value {
    json!({
        "candidates": [{
            "content": {"parts": [{"functionCall": {"name": name, "args": args}}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": a.prompt_tokens,
            "candidatesTokenCount": a.completion_tokens,
            "totalTokenCount": a.prompt_tokens + a.completion_tokens,
        },
        "modelVersion": a.model,
        "responseId": format!("resp-{}", a.n),
    })
}

/// A `GenerateContentResponse`.
pub(super) fn body(a: &Answer<'_>) -> Value {
    response(a, a.text, true, a.completion_tokens)
}

/// One `GenerateContentResponse` per piece of text, the last with
/// `finishReason: "STOP"`. Like Gemini's, every chunk has `usageMetadata`,
/// with the candidate tokens so far (the last has the total). Server-sent
/// events for `alt=sse`, else pieces of one JSON array.
pub(super) fn events(a: &Answer<'_>, req: &Request) -> Events {
    let sse = req.query().any(|(k, v)| k == "alt" && v == "sse");
    let pieces = a.pieces();
    let last = pieces.len() - 1;
    let content = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let so_far = if i == last {
                a.completion_tokens
            } else {
                a.completion_tokens * (i as u32 + 1) / pieces.len() as u32
            };
            let chunk = response(a, piece, i == last, so_far);
            match (sse, i) {
                (true, _) => format!("data: {chunk}\r\n\r\n"),
                (false, 0) => format!("[{chunk}"),
                (false, _) => format!(",\r\n{chunk}"),
            }
        })
        .collect();
    Events {
        content_type: if sse {
            "text/event-stream"
        } else {
            "application/json"
        },
        preamble: Vec::new(),
        content,
        trailer: if sse {
            Vec::new()
        } else {
            vec!["]".to_owned()]
        },
    }
}
