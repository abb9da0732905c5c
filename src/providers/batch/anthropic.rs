//! Anthropic's Message Batches: `POST {api_base}/v1/messages/batches` with the requests inline
//! (`requests[].custom_id` / `params`, each `params` the sync Messages body), `GET …/{id}`,
//! `POST …/{id}/cancel`, and the results as JSONL from the batch's `results_url`. Limits:
//! 100,000 requests and 256 MB per batch. It keeps no metadata, so a batch created just before a
//! crash cannot be found again (docs/contract.md §11 says what that costs).

use serde_json::Value;

use super::{BatchFormat, Call, ItemAnswer, Page, Phase, RemoteBatch, json, read_answer, text};
use crate::config::DeploymentConfig;
use crate::providers::wire::WireFormat;

pub const MAX_REQUESTS: usize = 100_000;
pub const MAX_BYTES: usize = 256 * 1000 * 1000;

pub struct AnthropicBatch;

fn batches(d: &DeploymentConfig) -> String {
    format!("{}/v1/messages/batches", d.api_base)
}

impl BatchFormat for AnthropicBatch {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn max_requests(&self) -> usize {
        MAX_REQUESTS
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn entry(&self, custom_id: &str, body: &[u8]) -> Vec<u8> {
        let mut e = Vec::with_capacity(body.len() + 40);
        e.extend_from_slice(b"{\"custom_id\":");
        e.extend_from_slice(Value::from(custom_id).to_string().as_bytes());
        e.extend_from_slice(b",\"params\":");
        e.extend_from_slice(body);
        // The comma that separates it from the next one in `requests`.
        e.extend_from_slice(b"},");
        e
    }

    fn upload(&self, _d: &DeploymentConfig, _entries: &[Vec<u8>]) -> Option<Call> {
        None
    }

    fn uploaded(&self, _body: &[u8]) -> Result<String, String> {
        Err("Message Batches take their requests inline: there is no upload".into())
    }

    fn create(
        &self,
        d: &DeploymentConfig,
        _file: Option<&str>,
        entries: &[Vec<u8>],
        _tag: &str,
    ) -> Call {
        let size: usize = entries.iter().map(Vec::len).sum();
        let mut body = Vec::with_capacity(size + 16);
        body.extend_from_slice(b"{\"requests\":[");
        for e in entries {
            body.extend_from_slice(e);
        }
        if body.ends_with(b",") {
            body.pop();
        }
        body.extend_from_slice(b"]}");
        Call::post_json(batches(d), body)
    }

    fn parse_batch(&self, body: &[u8]) -> Result<RemoteBatch, String> {
        let v = json(body)?;
        let id = text(&v, "id").ok_or("a message batch without `id`")?;
        let status = text(&v, "processing_status")
            .ok_or_else(|| format!("batch {id} has no `processing_status`"))?;
        let phase = match status.as_str() {
            "in_progress" => Phase::InProgress,
            "canceling" => Phase::Cancelling,
            "ended" => Phase::Ended,
            other => {
                return Err(format!(
                    "batch {id} has an unknown processing_status {other:?}"
                ));
            }
        };
        let counts = v.get("request_counts");
        let count = |k: &str| {
            counts
                .and_then(|c| c.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let done = ["succeeded", "errored", "canceled", "expired"]
            .map(count)
            .iter()
            .sum();
        let results: Vec<String> = text(&v, "results_url").into_iter().collect();
        if phase == Phase::Ended && results.is_empty() {
            return Err(format!("batch {id} ended without a `results_url`"));
        }
        Ok(RemoteBatch {
            id,
            status,
            phase: Some(phase),
            done,
            total: done + count("processing"),
            failed: None,
            results,
            tag: None,
        })
    }

    fn get(&self, d: &DeploymentConfig, id: &str) -> Call {
        Call::get(format!("{}/{id}", batches(d)))
    }

    fn cancel(&self, d: &DeploymentConfig, id: &str) -> Call {
        Call::post(format!("{}/{id}/cancel", batches(d)), None)
    }

    fn list(&self, _d: &DeploymentConfig, _after: Option<&str>) -> Option<Call> {
        None
    }

    fn parse_list(&self, _body: &[u8]) -> Result<Page, String> {
        Err("Message Batches keep no metadata to find a batch by".into())
    }

    fn results(&self, _d: &DeploymentConfig, at: &str) -> Call {
        Call::get(at.to_string())
    }

    fn parse_result(
        &self,
        d: &DeploymentConfig,
        wire: &dyn WireFormat,
        line: &[u8],
    ) -> Result<(String, ItemAnswer), String> {
        let v = json(line)?;
        let id = text(&v, "custom_id").ok_or("a result line without `custom_id`")?;
        let result = v.get("result").unwrap_or(&Value::Null);
        let answer = match result.get("type").and_then(Value::as_str) {
            Some("succeeded") => {
                read_answer(d, wire, result.get("message").unwrap_or(&Value::Null))
            }
            Some("errored") => {
                let e = result.pointer("/error/error").or(result.get("error"));
                let message = e
                    .and_then(|e| {
                        text(e, "message").map(|m| match text(e, "type") {
                            Some(t) => format!("{t}: {m}"),
                            None => m,
                        })
                    })
                    .unwrap_or_else(|| "errored".into());
                ItemAnswer::Errored(message)
            }
            Some("canceled") => ItemAnswer::Canceled,
            Some("expired") => ItemAnswer::Expired,
            other => return Err(format!("result {id} has an unknown type {other:?}")),
        };
        Ok((id, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::anthropic::Anthropic;

    fn d() -> DeploymentConfig {
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.api_base = "http://h".into();
        d
    }

    #[test]
    fn the_create_body_holds_every_entry_inline() {
        let entries = [
            AnthropicBatch.entry("l1", br#"{"model":"m","max_tokens":8}"#),
            AnthropicBatch.entry("l2", br#"{"model":"m","max_tokens":9}"#),
        ];
        let call = AnthropicBatch.create(&d(), None, &entries, "tag");
        assert_eq!(call.url, "http://h/v1/messages/batches");
        let v: Value = serde_json::from_slice(&call.body.unwrap().1).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requests": [
                {"custom_id": "l1", "params": {"model": "m", "max_tokens": 8}},
                {"custom_id": "l2", "params": {"model": "m", "max_tokens": 9}},
            ]})
        );
    }

    #[test]
    fn batches_and_results_are_read_and_nonsense_refused() {
        let b = AnthropicBatch
            .parse_batch(br#"{"id":"msgbatch_1","type":"message_batch","processing_status":"ended","request_counts":{"processing":0,"succeeded":2,"errored":1,"canceled":0,"expired":1},"results_url":"http://h/r"}"#)
            .unwrap();
        assert_eq!((b.done, b.total, b.phase), (4, 4, Some(Phase::Ended)));
        assert!(
            AnthropicBatch
                .parse_batch(br#"{"id":"x","processing_status":"ended"}"#)
                .is_err()
        );
        assert!(
            AnthropicBatch
                .parse_batch(br#"{"id":"x","processing_status":"napping"}"#)
                .is_err()
        );
        let ok = br#"{"custom_id":"l1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"bug"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}}}"#;
        let (id, a) = AnthropicBatch.parse_result(&d(), &Anthropic, ok).unwrap();
        assert_eq!(id, "l1");
        assert!(matches!(a, ItemAnswer::Answered(_)), "{a:?}");
        let errored = br#"{"custom_id":"l2","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"too long"}}}}"#;
        let (_, a) = AnthropicBatch
            .parse_result(&d(), &Anthropic, errored)
            .unwrap();
        assert!(matches!(a, ItemAnswer::Errored(ref m) if m == "invalid_request_error: too long"));
        let expired = br#"{"custom_id":"l3","result":{"type":"expired"}}"#;
        assert!(matches!(
            AnthropicBatch
                .parse_result(&d(), &Anthropic, expired)
                .unwrap()
                .1,
            ItemAnswer::Expired
        ));
        assert!(
            AnthropicBatch
                .parse_result(
                    &d(),
                    &Anthropic,
                    br#"{"custom_id":"l4","result":{"type":"?"}}"#
                )
                .is_err()
        );
    }
}
