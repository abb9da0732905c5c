//! Anthropic's Messages SSE stream, one event at a time, as OpenAI `chat.completion.chunk` objects.

use serde_json::{Value, json};

use super::{error_text, finish_reason, usage_from};
use crate::protocol::Usage;
use crate::protocol::response::{chunk, usage_chunk};
use crate::providers::failure::Failure;
use crate::providers::shape::{snippet, unix_now};
use crate::providers::stream::{Piece, StreamTranslator};

/// Translates a Messages SSE stream into OpenAI `chat.completion.chunk` objects, one event at a
/// time. Tool calls are numbered in the order their blocks start, as OpenAI numbers them.
#[derive(Debug)]
pub struct StreamState {
    id: String,
    model: String,
    created: u64,
    usage: Option<Usage>,
    /// Content block index → OpenAI tool call index.
    tool_blocks: Vec<(u64, u64)>,
    done: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: model.to_string(),
            created: unix_now(),
            usage: None,
            tool_blocks: Vec::new(),
            done: false,
        }
    }

    /// One SSE event (`event:` name, `data:` payload) → the chunks to send, in order.
    pub fn translate(&mut self, event: Option<&str>, data: &str) -> Result<Vec<Value>, Failure> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            Failure::InvalidBody(format!(
                "stream event is not JSON: {e} ({:?})",
                snippet(data.as_bytes())
            ))
        })?;
        let kind = event.or_else(|| v.get("type").and_then(Value::as_str));
        let delta = |s: &Self, delta: Value, finish: Option<&str>| {
            chunk(&s.id, &s.model, s.created, 0, delta, finish)
        };
        let out = match kind.unwrap_or_default() {
            "message_start" => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str() {
                    self.id = id.to_string();
                }
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_string();
                }
                self.usage = Some(usage_from(&m["usage"], None));
                vec![delta(
                    self,
                    json!({"role": "assistant", "content": ""}),
                    None,
                )]
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tool_blocks.len() as u64;
                        self.tool_blocks
                            .push((v["index"].as_u64().unwrap_or(0), index));
                        let call = json!({
                            "index": index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        });
                        vec![delta(self, json!({"tool_calls": [call]}), None)]
                    }
                    Some("text") => match block["text"].as_str() {
                        Some(t) if !t.is_empty() => vec![delta(self, json!({"content": t}), None)],
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match (
                    d["type"].as_str(),
                    d["text"].as_str(),
                    d["partial_json"].as_str(),
                ) {
                    (Some("text_delta"), Some(t), _) => {
                        vec![delta(self, json!({"content": t}), None)]
                    }
                    (Some("input_json_delta"), _, Some(p)) if !p.is_empty() => {
                        let block = v["index"].as_u64().unwrap_or(0);
                        let index = self
                            .tool_blocks
                            .iter()
                            .find(|(b, _)| *b == block)
                            .map_or(0, |(_, i)| *i);
                        let call = json!({"index": index, "function": {"arguments": p}});
                        vec![delta(self, json!({"tool_calls": [call]}), None)]
                    }
                    // Thinking, signatures, citations: nothing OpenAI-shaped to say.
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.usage = Some(usage_from(&v["usage"], self.usage));
                let finish = v["delta"]["stop_reason"].as_str().map(finish_reason);
                vec![delta(self, json!({}), finish)]
            }
            "message_stop" => {
                self.done = true;
                let usage = self.usage.unwrap_or_default();
                vec![usage_chunk(&self.id, &self.model, self.created, usage)]
            }
            "error" => {
                let status = match v.pointer("/error/type").and_then(Value::as_str) {
                    Some("overloaded_error") => 529,
                    _ => 500,
                };
                return Err(Failure::Status {
                    status,
                    message: error_text(&v).unwrap_or_else(|| snippet(data.as_bytes())),
                    retry_after: None,
                });
            }
            // ping, content_block_stop, and event types added later.
            _ => Vec::new(),
        };
        Ok(out)
    }

    /// Usage so far: the prompt from `message_start`, the completion from `message_delta`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl StreamTranslator for StreamState {
    fn on_event(&mut self, event: Option<&str>, data: &str) -> Result<Piece, Failure> {
        let chunks = self.translate(event, data)?;
        Ok(Piece::of_values(&chunks, self.usage))
    }

    /// `message_stop` was seen: the answer is complete.
    fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event sequence of Anthropic's streaming guide ("Basic streaming request").
    #[test]
    fn a_text_stream_becomes_chunks() {
        let events = [
            (
                "message_start",
                r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type": "content_block_stop", "index": 0}"#,
            ),
            (
                "message_delta",
                r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
            ),
            ("message_stop", r#"{"type": "message_stop"}"#),
        ];
        let mut s = StreamState::new("claude-opus-4-6");
        let mut chunks = Vec::new();
        for (event, data) in events {
            assert!(!s.done());
            chunks.extend(s.translate(Some(event), data).unwrap());
        }
        assert!(s.done());
        let created = chunks[0]["created"].clone();
        let c = |delta: Value, finish: Value| {
            json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk", "created": created, "model": "claude-opus-4-6",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        assert_eq!(
            chunks,
            vec![
                c(json!({"role": "assistant", "content": ""}), Value::Null),
                c(json!({"content": "Hello"}), Value::Null),
                c(json!({"content": "!"}), Value::Null),
                c(json!({}), json!("stop")),
                json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk", "created": created, "model": "claude-opus-4-6",
                       "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}),
            ]
        );
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15,
                total_tokens: 40
            })
        );
    }

    /// The tool-use part of the streaming guide's example: the type comes from `data` alone.
    #[test]
    fn a_tool_use_stream_becomes_tool_call_deltas() {
        let mut s = StreamState::new("claude-opus-4-6");
        let mut chunks = Vec::new();
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather:"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            chunks.extend(s.translate(None, data).unwrap());
        }
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta"))
            .collect();
        assert_eq!(
            deltas[1],
            &json!({"content": "Okay, let's check the weather:"})
        );
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]})
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chunks[6]["usage"],
            json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561})
        );
        assert!(s.done());
    }

    #[test]
    fn an_error_event_fails_the_stream_with_a_status() {
        let mut s = StreamState::new("m");
        let overloaded =
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#;
        assert_eq!(
            s.translate(Some("error"), overloaded).unwrap_err(),
            Failure::Status {
                status: 529,
                message: "overloaded_error: Overloaded".into(),
                retry_after: None
            }
        );
        let api = r#"{"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}"#;
        assert!(matches!(
            s.translate(Some("error"), api),
            Err(Failure::Status { status: 500, .. })
        ));
        assert!(matches!(
            s.translate(Some("message_start"), "{not json"),
            Err(Failure::InvalidBody(_))
        ));
        assert!(!s.done());
    }
}
