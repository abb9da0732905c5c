//! The Anthropic side of the fake: Message Batches (create, get, cancel, results) and Messages.

use serde_json::{Value, json};

use super::{
    Batch, Call, Entry, Fate, Reply, Shared, count, fate, held_download, not_found, prompt_of, raw,
    reply, valid_custom_id,
};

fn error(status: u16, message: &str) -> Reply {
    reply(
        status,
        &json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
    )
}

fn message(model: &Value, text: &str) -> Value {
    json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 1},
    })
}

/// What the Messages API refuses in a request body.
fn check_params(p: &Value) -> Option<String> {
    if !p["model"].is_string() {
        return Some("model: Field required".into());
    }
    if !p["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    if p["messages"].as_array().is_none_or(|m| m.is_empty()) {
        return Some("messages: at least one message is required".into());
    }
    None
}

pub(super) async fn handle(shared: &Shared, call: &Call) -> Reply {
    let key = call.headers.get("x-api-key").is_some();
    let version = call
        .headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok());
    if !key {
        return reply(
            401,
            &json!({"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}}),
        );
    }
    if version != Some("2023-06-01") {
        return error(400, "anthropic-version header is required");
    }
    let route = call.path.split('?').next().unwrap_or_default().to_string();
    let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    let base = format!("http://{}", shared.addr);
    match (call.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "messages"]) => {
            let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            if let Some(why) = check_params(&body) {
                return error(400, &why);
            }
            let mut s = shared.state.lock().unwrap();
            s.sync_prompts.push(prompt_of(&body));
            let label = s.script.label.clone();
            reply(200, &message(&body["model"], &label))
        }
        ("POST", ["v1", "messages", "batches"]) => {
            if let Some(code) = count(shared, "create") {
                return error(code, "scripted failure");
            }
            let out = create(shared, call, &base);
            super::held(shared, |s| s.hold_create).await;
            out
        }
        ("GET", ["v1", "messages", "batches", id]) => {
            if let Some(code) = count(shared, "get") {
                return error(code, "scripted failure");
            }
            let mut s = shared.state.lock().unwrap();
            let script = s.script.clone();
            let Some(b) = s.batches.iter_mut().find(|b| b.id == *id) else {
                return not_found("message batch");
            };
            let mut results = None;
            match b.status.as_str() {
                "in_progress" if b.cancel_asked => results = Some(end(b, &script, true)),
                "in_progress" if script.hold => {}
                "in_progress" => results = Some(end(b, &script, false)),
                "canceling" => results = Some(end(b, &script, true)),
                _ => {}
            }
            let out = object(b, &base);
            let bid = b.id.clone();
            if let Some(r) = results {
                s.files.insert(bid, r);
            }
            reply(200, &out)
        }
        ("POST", ["v1", "messages", "batches", id, "cancel"]) => {
            if let Some(code) = count(shared, "cancel") {
                return error(code, "scripted failure");
            }
            let mut s = shared.state.lock().unwrap();
            let Some(b) = s.batches.iter_mut().find(|b| b.id == *id) else {
                return not_found("message batch");
            };
            if b.status == "in_progress" {
                b.cancel_asked = true;
                b.status = "canceling".into();
            }
            reply(200, &object(b, &base))
        }
        ("GET", ["v1", "messages", "batches", id, "results"]) => {
            if let Some(code) = count(shared, "results") {
                return error(code, "scripted failure");
            }
            held_download(shared).await;
            match shared.state.lock().unwrap().files.get(*id) {
                Some(r) => raw(200, r.clone()),
                None => not_found("results"),
            }
        }
        _ => not_found("route"),
    }
}

fn create(shared: &Shared, call: &Call, base: &str) -> Reply {
    let v: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    let Some(requests) = v["requests"].as_array() else {
        return error(400, "requests: Field required");
    };
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::new();
    let mut s = shared.state.lock().unwrap();
    for (i, r) in requests.iter().enumerate() {
        let id = r["custom_id"].as_str().unwrap_or_default();
        let problem = if !valid_custom_id(id) {
            Some(format!(
                "requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
            ))
        } else if !seen.insert(id.to_string()) {
            Some(format!("requests.{i}: duplicate custom_id {id}"))
        } else {
            check_params(&r["params"]).map(|w| format!("requests.{i}.params.{w}"))
        };
        if let Some(p) = problem {
            s.refused.push(p.clone());
            return error(400, &p);
        }
        entries.push(Entry {
            custom_id: id.to_string(),
            body: r["params"].clone(),
        });
    }
    s.submitted
        .extend(entries.iter().map(|e| e.custom_id.clone()));
    let id = s.id("msgbatch_");
    let b = Batch {
        id,
        entries,
        status: "in_progress".into(),
        metadata: Value::Null,
        cancel_asked: false,
        files: Vec::new(),
        counts: (0, 0, 0, 0),
    };
    let out = object(&b, base);
    s.batches.push(b);
    reply(200, &out)
}

/// Ends a batch: its results file, in reverse order.
fn end(b: &mut Batch, script: &super::Script, cancelled: bool) -> Vec<u8> {
    let mut lines = String::new();
    let (mut ok, mut errored, mut expired, mut canceled) = (0, 0, 0, 0);
    for (i, e) in b.entries.iter().enumerate().rev() {
        let n = i + 1;
        let result = if cancelled && i >= script.answered_while_held {
            canceled += 1;
            json!({"type": "canceled"})
        } else {
            match fate(script, n) {
                Fate::Answer(text) => {
                    ok += 1;
                    json!({"type": "succeeded", "message": message(&e.body["model"], &text)})
                }
                Fate::Error => {
                    errored += 1;
                    json!({"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "fake item error"}}})
                }
                Fate::Expire => {
                    expired += 1;
                    json!({"type": "expired"})
                }
            }
        };
        lines.push_str(&json!({"custom_id": e.custom_id, "result": result}).to_string());
        lines.push('\n');
    }
    b.counts = (ok, errored, expired, canceled);
    b.status = "ended".into();
    b.files = vec![b.id.clone()];
    lines.into_bytes()
}

fn object(b: &Batch, base: &str) -> Value {
    let ended = b.status == "ended";
    let n = b.entries.len();
    let (ok, errored, expired, canceled) = b.counts;
    json!({
        "id": b.id, "type": "message_batch", "processing_status": b.status,
        "request_counts": {
            "processing": if ended { 0 } else { n },
            "succeeded": ok, "errored": errored, "canceled": canceled, "expired": expired,
        },
        "ended_at": null, "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
        "cancel_initiated_at": null,
        "results_url": if ended { json!(format!("{base}/v1/messages/batches/{}/results", b.id)) } else { Value::Null },
    })
}
