//! Gemini's `streamGenerateContent?alt=sse` stream, one event at a time, as OpenAI
//! `chat.completion.chunk` objects.

use serde_json::{Map, Value, json};

use super::{error_text, finish_reason, read_parts, response_id, usage_from};
use crate::protocol::Usage;
use crate::protocol::response::{chunk, usage_chunk};
use crate::providers::failure::Failure;
use crate::providers::shape::{snippet, unix_now};
use crate::providers::stream::{Piece, StreamTranslator};

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
            done: false,
        }
    }

    /// One SSE event → the chunks to send, in order. Gemini names no events; `event` is ignored.
    pub fn translate(&mut self, _event: Option<&str>, data: &str) -> Result<Vec<Value>, Failure> {
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
            if !self.candidates.iter().any(|k| k.index == index) {
                delta.insert("role".into(), json!("assistant"));
                self.candidates.push(Candidate {
                    index,
                    tool_calls: 0,
                    finished: false,
                });
            }
            let Some(state) = self.candidates.iter_mut().find(|k| k.index == index) else {
                continue;
            };
            let (text, calls) = read_parts(c);
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            if !calls.is_empty() {
                let calls = calls.into_iter().map(|mut call| {
                    call["index"] = json!(state.tool_calls);
                    state.tool_calls = state.tool_calls.saturating_add(1);
                    call
                });
                delta.insert("tool_calls".into(), Value::Array(calls.collect()));
            }
            let finish = c["finishReason"]
                .as_str()
                .map(|r| finish_reason(r, state.tool_calls > 0));
            state.finished |= finish.is_some();
            let delta = Value::Object(delta);
            out.push(chunk(&id, &self.model, self.created, index, delta, finish));
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
                &self.model,
                self.created,
                0,
                delta,
                Some("content_filter"),
            ));
        }
        if !self.done && !self.candidates.is_empty() && self.candidates.iter().all(|c| c.finished) {
            self.done = true;
            let usage = self.usage.unwrap_or_default();
            out.push(usage_chunk(&id, &self.model, self.created, usage));
        }
        Ok(out)
    }

    /// Usage from the latest `usageMetadata`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl StreamTranslator for StreamState {
    fn on_event(&mut self, event: Option<&str>, data: &str) -> Result<Piece, Failure> {
        let chunks = self.translate(event, data)?;
        Ok(Piece::of_values(&chunks, self.usage))
    }

    /// Every candidate has sent its `finishReason`.
    fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            chunks.extend(s.translate(None, data).unwrap());
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
            .translate(None, r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_current_weather","args": {"location": "Boston, MA"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 30,"candidatesTokenCount": 8,"totalTokenCount": 38}}"#)
            .unwrap();
        let mut choice = chunks[0]["choices"][0].clone();
        let id = choice["delta"]["tool_calls"][0]["id"].as_str().unwrap();
        super::super::tests::assert_made_up_id(id);
        choice["delta"]["tool_calls"][0]["id"] = json!("ID");
        assert_eq!(
            choice,
            json!({"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "ID", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}
            ]}, "finish_reason": "tool_calls"})
        );
        assert_eq!(chunks[1]["choices"], json!([]));
        assert!(s.done());

        let mut s = StreamState::new("gemini-2.0-flash");
        s.translate(None, r#"{"candidates": [{"content": {"parts": [{"text": "Once"}],"role": "model"},"index": 0}]}"#).unwrap();
        let err = s.translate(None, r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#);
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
        let blocked = s.translate(None, r#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 5,"totalTokenCount": 5}}"#).unwrap();
        assert_eq!(blocked[0]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(blocked[1]["usage"]["prompt_tokens"], 5);
        assert!(s.done());
    }
}
