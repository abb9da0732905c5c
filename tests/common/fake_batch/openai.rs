//! The OpenAI side of the fake: files, batches, file contents and chat completions.

use serde_json::{Value, json};

use super::{
    Batch, Call, Entry, Fate, Reply, Shared, count, fate, held_download, not_found, prompt_of, raw,
    reply,
};

const ENDPOINT: &str = "/v1/chat/completions";

fn error(status: u16, message: &str) -> Reply {
    reply(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

fn completion(model: &Value, text: &str) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
    })
}

pub(super) async fn handle(shared: &Shared, call: &Call) -> Reply {
    let auth = call
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if !auth.is_some_and(|a| a.starts_with("Bearer ")) {
        return error(401, "missing bearer key");
    }
    let route = call.path.split('?').next().unwrap_or_default().to_string();
    let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    match (call.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "chat", "completions"]) => {
            let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            let mut s = shared.state.lock().unwrap();
            s.sync_prompts.push(prompt_of(&body));
            let label = s.script.label.clone();
            reply(200, &completion(&body["model"], &label))
        }
        ("POST", ["v1", "files"]) => {
            if let Some(code) = count(shared, "upload") {
                return error(code, "scripted failure");
            }
            upload(shared, call)
        }
        ("POST", ["v1", "batches"]) => {
            if let Some(code) = count(shared, "create") {
                return error(code, "scripted failure");
            }
            let out = create(shared, call);
            super::held(shared, |s| s.hold_create).await;
            out
        }
        ("GET", ["v1", "batches"]) => {
            count(shared, "list");
            let s = shared.state.lock().unwrap();
            let data: Vec<Value> = s.batches.iter().rev().map(object).collect();
            reply(
                200,
                &json!({"object": "list", "data": data, "has_more": false}),
            )
        }
        ("GET", ["v1", "batches", id]) => {
            if let Some(code) = count(shared, "get") {
                return error(code, "scripted failure");
            }
            let mut s = shared.state.lock().unwrap();
            let script = s.script.clone();
            let mut files = Vec::new();
            let Some(b) = s.batches.iter_mut().find(|b| b.id == *id) else {
                return not_found("batch");
            };
            advance(b, &script, &mut files);
            let out = object(b);
            for (id, content) in files {
                s.files.insert(id, content);
            }
            reply(200, &out)
        }
        ("POST", ["v1", "batches", id, "cancel"]) => {
            if let Some(code) = count(shared, "cancel") {
                return error(code, "scripted failure");
            }
            let mut s = shared.state.lock().unwrap();
            let Some(b) = s.batches.iter_mut().find(|b| b.id == *id) else {
                return not_found("batch");
            };
            if matches!(
                b.status.as_str(),
                "completed" | "failed" | "expired" | "cancelled"
            ) {
                return error(
                    400,
                    &format!("Cannot cancel a batch with status {}.", b.status),
                );
            }
            b.cancel_asked = true;
            b.status = "cancelling".into();
            reply(200, &object(b))
        }
        ("GET", ["v1", "files", id, "content"]) => {
            if let Some(code) = count(shared, "results") {
                return error(code, "scripted failure");
            }
            held_download(shared).await;
            match shared.state.lock().unwrap().files.get(*id) {
                Some(content) => raw(200, content.clone()),
                None => not_found("file"),
            }
        }
        _ => not_found("route"),
    }
}

fn upload(shared: &Shared, call: &Call) -> Reply {
    let ct = call
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(boundary) = ct.strip_prefix("multipart/form-data; boundary=") else {
        return error(400, "expected multipart/form-data");
    };
    let mut purpose = None;
    let mut file = None;
    let delimiter = format!("--{boundary}");
    let body = String::from_utf8_lossy(&call.body).to_string();
    for part in body.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            return error(400, "malformed multipart part");
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        if head.contains("name=\"purpose\"") {
            purpose = Some(content.to_string());
        } else if head.contains("name=\"file\"") {
            file = Some(content.as_bytes().to_vec());
        }
    }
    if purpose.as_deref() != Some("batch") {
        return error(400, "purpose must be batch");
    }
    let Some(file) = file else {
        return error(400, "no file");
    };
    let mut s = shared.state.lock().unwrap();
    let id = s.id("file-in");
    let bytes = file.len();
    s.files.insert(id.clone(), file);
    reply(
        200,
        &json!({"id": id, "object": "file", "bytes": bytes, "created_at": 1, "filename": "batch.jsonl", "purpose": "batch"}),
    )
}

fn create(shared: &Shared, call: &Call) -> Reply {
    let v: Value = match serde_json::from_slice(&call.body) {
        Ok(v) => v,
        Err(_) => return error(400, "body is not JSON"),
    };
    if v["endpoint"] != ENDPOINT {
        return error(400, "endpoint must be /v1/chat/completions");
    }
    if v["completion_window"] != "24h" {
        return error(400, "completion_window must be 24h");
    }
    let mut s = shared.state.lock().unwrap();
    let Some(content) = v["input_file_id"]
        .as_str()
        .and_then(|f| s.files.get(f))
        .cloned()
    else {
        return error(400, "input_file_id names no file");
    };
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in content.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let Ok(l) = serde_json::from_slice::<Value>(line) else {
            problems.push(format!("line {}: not JSON", i + 1));
            continue;
        };
        let id = l["custom_id"].as_str().unwrap_or_default().to_string();
        if id.is_empty() || !seen.insert(id.clone()) {
            problems.push(format!(
                "line {}: duplicate or missing custom_id {id:?}",
                i + 1
            ));
        }
        if l["method"] != "POST" || l["url"] != ENDPOINT {
            problems.push(format!(
                "line {}: method must be POST and url {ENDPOINT}",
                i + 1
            ));
        }
        if !l["body"]["model"].is_string() {
            problems.push(format!("line {}: body.model is required", i + 1));
        }
        entries.push(Entry {
            custom_id: id,
            body: l["body"].clone(),
        });
    }
    s.refused.extend(problems.iter().cloned());
    s.submitted
        .extend(entries.iter().map(|e| e.custom_id.clone()));
    let id = s.id("batch_");
    let b = Batch {
        id,
        entries,
        status: if problems.is_empty() {
            "validating".into()
        } else {
            "invalid".into()
        },
        metadata: v["metadata"].clone(),
        cancel_asked: false,
        files: Vec::new(),
        counts: (0, 0, 0, 0),
    };
    let out = object(&b);
    s.batches.push(b);
    reply(200, &out)
}

/// One state further, as a poll finds it.
fn advance(b: &mut Batch, script: &super::Script, files: &mut Vec<(String, Vec<u8>)>) {
    match b.status.as_str() {
        "invalid" => b.status = "failed".into(),
        "validating" => b.status = "in_progress".into(),
        "in_progress" if script.hold => {}
        "in_progress" => b.status = "finalizing".into(),
        "finalizing" => end(b, script, false, files),
        "cancelling" => end(b, script, true, files),
        _ => {}
    }
}

fn end(b: &mut Batch, script: &super::Script, cancelled: bool, files: &mut Vec<(String, Vec<u8>)>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut ok, mut failed, mut expired) = (0, 0, 0);
    // Results in reverse order: they come in any order.
    for (i, e) in b.entries.iter().enumerate().rev() {
        let n = i + 1;
        let line = if cancelled && i >= script.answered_while_held {
            failed += 1;
            json!({"id": format!("batch_req_{n}"), "custom_id": e.custom_id, "response": null,
                   "error": {"code": "batch_cancelled", "message": "This request was cancelled."}})
        } else {
            match fate(script, n) {
                Fate::Answer(text) => {
                    ok += 1;
                    let body = completion(&e.body["model"], &text);
                    out.push(json!({"id": format!("batch_req_{n}"), "custom_id": e.custom_id,
                        "response": {"status_code": 200, "request_id": format!("req_{n}"), "body": body},
                        "error": null}));
                    continue;
                }
                Fate::Error => {
                    failed += 1;
                    json!({"id": format!("batch_req_{n}"), "custom_id": e.custom_id,
                        "response": {"status_code": 400, "request_id": format!("req_{n}"),
                                     "body": {"error": {"message": "fake item error", "type": "invalid_request_error"}}},
                        "error": null})
                }
                Fate::Expire => {
                    expired += 1;
                    json!({"id": format!("batch_req_{n}"), "custom_id": e.custom_id, "response": null,
                        "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
                }
            }
        };
        err.push(line);
    }
    let write = |lines: Vec<Value>| {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let out_id = format!("file-out-{}", b.id);
    let err_id = format!("file-err-{}", b.id);
    files.push((out_id.clone(), write(out)));
    b.files = vec![out_id];
    if !err.is_empty() {
        files.push((err_id.clone(), write(err)));
        b.files.push(err_id);
    }
    b.counts = (ok, failed, expired, 0);
    b.status = if cancelled {
        "cancelled".into()
    } else if expired > 0 {
        "expired".into()
    } else {
        "completed".into()
    };
}

pub(super) fn object(b: &Batch) -> Value {
    let ended = !b.files.is_empty();
    let status = if b.status == "invalid" {
        "validating"
    } else {
        b.status.as_str()
    };
    json!({
        "id": b.id, "object": "batch", "endpoint": ENDPOINT, "completion_window": "24h",
        "status": status,
        "errors": if b.status == "failed" { json!({"object": "list", "data": [{"code": "invalid_request", "message": "the input file has invalid lines"}]}) } else { Value::Null },
        "output_file_id": if ended { json!(b.files[0]) } else { Value::Null },
        "error_file_id": b.files.get(1),
        "created_at": 1,
        "request_counts": {"total": b.entries.len(), "completed": b.counts.0, "failed": b.counts.1 + b.counts.2},
        "metadata": b.metadata,
    })
}
