//! OpenAI's Batch API: the entries are JSONL lines `{"custom_id","method":"POST","url":
//! "/v1/chat/completions","body"}` uploaded with `POST {api_base}/files` (multipart,
//! `purpose=batch`); `POST {api_base}/batches` creates the batch from the file with a 24 h window
//! and `metadata.switchyard_tag`; `GET /batches/{id}`, `POST /batches/{id}/cancel`, `GET /batches`
//! (to find a batch by its tag after a crash); the output and error files are read with
//! `GET /files/{id}/content`. Limits: 50,000 requests and 200 MB per file.

use serde_json::{Value, json};

use super::{BatchFormat, Call, ItemAnswer, Page, RemoteBatch, json, read_answer, text};
use crate::config::DeploymentConfig;
use crate::providers::wire::WireFormat;

/// The endpoint every entry and the batch name; the sync calls' own path.
pub const ENDPOINT: &str = "/v1/chat/completions";
pub const MAX_REQUESTS: usize = 50_000;
pub const MAX_BYTES: usize = 200 * 1000 * 1000;
/// The metadata key that names a batch's Switchyard batch and part.
pub const TAG_KEY: &str = "switchyard_tag";

pub struct OpenAiBatch;

impl BatchFormat for OpenAiBatch {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn max_requests(&self) -> usize {
        MAX_REQUESTS
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn entry(&self, custom_id: &str, body: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(body.len() + 96);
        line.extend_from_slice(b"{\"custom_id\":");
        line.extend_from_slice(Value::from(custom_id).to_string().as_bytes());
        line.extend_from_slice(b",\"method\":\"POST\",\"url\":\"");
        line.extend_from_slice(ENDPOINT.as_bytes());
        line.extend_from_slice(b"\",\"body\":");
        line.extend_from_slice(body);
        line.extend_from_slice(b"}\n");
        line
    }

    fn upload(&self, d: &DeploymentConfig, entries: &[Vec<u8>]) -> Option<Call> {
        let body = super::multipart::form("batch", "switchyard-batch.jsonl", entries);
        Some(Call::post(format!("{}/files", d.api_base), Some(body)))
    }

    fn uploaded(&self, body: &[u8]) -> Result<String, String> {
        let v = json(body)?;
        text(&v, "id").ok_or_else(|| "the upload's reply has no file `id`".into())
    }

    fn create(
        &self,
        d: &DeploymentConfig,
        file: Option<&str>,
        _entries: &[Vec<u8>],
        tag: &str,
    ) -> Call {
        let body = json!({
            "input_file_id": file.unwrap_or_default(),
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {TAG_KEY: tag},
        });
        Call::post_json(
            format!("{}/batches", d.api_base),
            body.to_string().into_bytes(),
        )
    }

    fn parse_batch(&self, body: &[u8]) -> Result<RemoteBatch, String> {
        batch_of(&json(body)?)
    }

    fn get(&self, d: &DeploymentConfig, id: &str) -> Call {
        Call::get(format!("{}/batches/{id}", d.api_base))
    }

    fn cancel(&self, d: &DeploymentConfig, id: &str) -> Call {
        Call::post(format!("{}/batches/{id}/cancel", d.api_base), None)
    }

    fn list(&self, d: &DeploymentConfig, after: Option<&str>) -> Option<Call> {
        let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
        Some(Call::get(format!(
            "{}/batches?limit=100{after}",
            d.api_base
        )))
    }

    fn parse_list(&self, body: &[u8]) -> Result<Page, String> {
        let v = json(body)?;
        let Some(data) = v.get("data").and_then(Value::as_array) else {
            return Err("a list of batches without `data`".into());
        };
        let batches = data.iter().map(batch_of).collect::<Result<Vec<_>, _>>()?;
        let more = v.get("has_more").and_then(Value::as_bool) == Some(true);
        let next = batches.last().filter(|_| more).map(|b| b.id.clone());
        Ok((batches, next))
    }

    fn results(&self, d: &DeploymentConfig, at: &str) -> Call {
        Call::get(format!("{}/files/{at}/content", d.api_base))
    }

    fn parse_result(
        &self,
        d: &DeploymentConfig,
        wire: &dyn WireFormat,
        line: &[u8],
    ) -> Result<(String, ItemAnswer), String> {
        let v = json(line)?;
        let id = text(&v, "custom_id").ok_or("a result line without `custom_id`")?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            let answer = match e.get("code").and_then(Value::as_str) {
                Some("batch_expired") => ItemAnswer::Expired,
                Some("batch_cancelled") => ItemAnswer::Canceled,
                _ => ItemAnswer::Errored(error_text(e)),
            };
            return Ok((id, answer));
        }
        let Some(response) = v.get("response").filter(|r| !r.is_null()) else {
            return Err(format!("result {id} has neither `response` nor `error`"));
        };
        let status = response.get("status_code").and_then(Value::as_u64);
        let body = response.get("body").unwrap_or(&Value::Null);
        let answer = match status {
            Some(200) => read_answer(d, wire, body),
            Some(code) => {
                let message = body
                    .get("error")
                    .map_or_else(|| body.to_string(), error_text);
                ItemAnswer::Errored(format!("HTTP {code}: {message}"))
            }
            None => return Err(format!("result {id} has no `response.status_code`")),
        };
        Ok((id, answer))
    }
}

/// An error object's message (and code), or the object itself.
fn error_text(e: &Value) -> String {
    match (text(e, "code"), text(e, "message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (None, Some(message)) => message,
        _ => e.to_string(),
    }
}

fn batch_of(v: &Value) -> Result<RemoteBatch, String> {
    use super::Phase;
    let id = text(v, "id").ok_or("a batch object without `id`")?;
    let status = text(v, "status").ok_or_else(|| format!("batch {id} has no `status`"))?;
    let phase = match status.as_str() {
        "validating" => Phase::Validating,
        "in_progress" => Phase::InProgress,
        "finalizing" => Phase::Finalizing,
        "cancelling" => Phase::Cancelling,
        "completed" | "expired" | "cancelled" | "failed" => Phase::Ended,
        other => return Err(format!("batch {id} has an unknown status {other:?}")),
    };
    let counts = v.get("request_counts");
    let count = |k: &str| {
        counts
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let failed = (status == "failed").then(|| {
        let errors = v.pointer("/errors/data").and_then(Value::as_array);
        errors
            .map(|e| {
                e.iter()
                    .take(3)
                    .map(error_text)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the batch failed".into())
    });
    let results = ["output_file_id", "error_file_id"]
        .iter()
        .filter_map(|k| text(v, k))
        .collect();
    Ok(RemoteBatch {
        id,
        status,
        phase: Some(phase),
        done: count("completed") + count("failed"),
        total: count("total"),
        failed,
        results,
        tag: v
            .pointer(&format!("/metadata/{TAG_KEY}"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::OpenAi;

    fn d() -> DeploymentConfig {
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.api_base = "http://h/v1".into();
        d
    }

    #[test]
    fn entries_are_jsonl_lines_for_the_chat_endpoint() {
        let line = OpenAiBatch.entry("l7", br#"{"model":"m","messages":[]}"#);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"custom_id": "l7", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": []}})
        );
        assert!(line.ends_with(b"}\n"));
    }

    #[test]
    fn batch_objects_and_states_are_read_and_absurd_ones_refused() {
        let b = OpenAiBatch
            .parse_batch(br#"{"id":"batch_1","object":"batch","status":"completed","output_file_id":"file-o","error_file_id":"file-e","request_counts":{"total":3,"completed":2,"failed":1},"metadata":{"switchyard_tag":"t-1"}}"#)
            .unwrap();
        assert_eq!(b.phase, Some(super::super::Phase::Ended));
        assert_eq!((b.done, b.total), (3, 3));
        assert_eq!(b.results, ["file-o", "file-e"]);
        assert_eq!(b.tag.as_deref(), Some("t-1"));
        let failed = OpenAiBatch
            .parse_batch(br#"{"id":"b","status":"failed","errors":{"data":[{"code":"invalid_json_line","message":"bad line 2"}]}}"#)
            .unwrap();
        assert_eq!(
            failed.failed.as_deref(),
            Some("invalid_json_line: bad line 2")
        );
        for bad in [&br#"{"id":"b","status":"sleeping"}"#[..], b"{}", b"<html>"] {
            assert!(OpenAiBatch.parse_batch(bad).is_err());
        }
    }

    #[test]
    fn result_lines_are_answers_errors_or_expiries() {
        let ok = br#"{"id":"r","custom_id":"l1","response":{"status_code":200,"body":{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"bug"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}},"error":null}"#;
        let (id, a) = OpenAiBatch.parse_result(&d(), &OpenAi, ok).unwrap();
        assert_eq!(id, "l1");
        assert!(matches!(a, ItemAnswer::Answered(_)), "{a:?}");
        let refused = br#"{"custom_id":"l2","response":{"status_code":400,"body":{"error":{"message":"bad","code":null}}},"error":null}"#;
        let (_, a) = OpenAiBatch.parse_result(&d(), &OpenAi, refused).unwrap();
        assert!(
            matches!(a, ItemAnswer::Errored(ref e) if e == "HTTP 400: bad"),
            "{a:?}"
        );
        let expired =
            br#"{"custom_id":"l3","response":null,"error":{"code":"batch_expired","message":"x"}}"#;
        let (_, a) = OpenAiBatch.parse_result(&d(), &OpenAi, expired).unwrap();
        assert!(matches!(a, ItemAnswer::Expired));
        let garbage = br#"{"custom_id":"l4","response":{"status_code":200,"body":{"nope":1}}}"#;
        let (_, a) = OpenAiBatch.parse_result(&d(), &OpenAi, garbage).unwrap();
        assert!(matches!(a, ItemAnswer::Errored(_)));
        assert!(
            OpenAiBatch
                .parse_result(&d(), &OpenAi, br#"{"custom_id":"l5"}"#)
                .is_err()
        );
    }
}
