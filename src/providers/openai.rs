//! OpenAI Chat Completions, and every API that speaks it (DeepSeek, Groq, Together, Ollama, vLLM):
//! `POST {api_base}/chat/completions` with `Authorization: Bearer`. The caller's body passes
//! through with `model` replaced by the deployment's model and `extra_body` merged in; a complete
//! reply passes back untouched. The `WireFormat` for `provider = "openai"`.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::failure::Failure;
use super::shape::{sane_usage, snippet};
use super::stream::{Piece, StreamTranslator};
use super::wire::{Answer, Auth, WireFormat};
use crate::config::DeploymentConfig;
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

/// The OpenAI Chat Completions wire format.
pub struct OpenAi;

impl WireFormat for OpenAi {
    fn endpoint(&self, d: &DeploymentConfig, _stream: bool) -> String {
        format!("{}/chat/completions", d.api_base)
    }

    fn auth(&self) -> Auth {
        Auth::Bearer
    }

    /// Nothing is untranslatable: the caller's body passes through, `stream` included (so the
    /// `stream` flag is the caller's, not this argument).
    fn build_body(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
        _stream: bool,
    ) -> Result<Vec<u8>, Failure> {
        Ok(build_body(d, req, include_request_extra))
    }

    fn parse_reply(&self, _d: &DeploymentConfig, body: Bytes) -> Result<Answer, Failure> {
        parse_response(body)
    }

    fn error_message(&self, body: &[u8]) -> String {
        error_message(body)
    }

    /// With usage at the end: `build_body` sets `stream_options.include_usage`.
    fn stream_translator(&self, _d: &DeploymentConfig) -> Box<dyn StreamTranslator> {
        Box::new(StreamState::default())
    }
}

/// Translation of OpenAI's own stream: the chunks pass through as sent; `[DONE]` ends it.
#[derive(Debug, Default)]
pub struct StreamState {
    done: bool,
}

#[derive(Deserialize)]
struct ChunkCheck {
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<Usage>,
    error: Option<Value>,
}

impl StreamTranslator for StreamState {
    fn on_event(&mut self, _event: Option<&str>, data: &str) -> Result<Piece, Failure> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Piece::default());
        }
        let check: ChunkCheck = serde_json::from_str(data)
            .map_err(|e| Failure::InvalidBody(format!("stream event is not JSON: {e}")))?;
        if let Some(e) = check.error {
            return Err(Failure::Status {
                status: 500,
                message: error_message(e.to_string().as_bytes()),
                retry_after: None,
            });
        }
        if check.choices.is_none() {
            return Err(Failure::InvalidBody("stream chunk without choices".into()));
        }
        Ok(Piece {
            chunks: vec![Bytes::copy_from_slice(data.as_bytes())],
            usage: check.usage.map(sane_usage),
        })
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// The request body for this deployment: the caller's fields in their order, `model` set to the
/// deployment's, then the deployment's `extra_body` and (when meant for this provider) the caller's.
pub fn build_body(d: &DeploymentConfig, req: &ChatRequest, include_request_extra: bool) -> Vec<u8> {
    let body = Body {
        req,
        model: &d.model,
        deployment_extra: d.extra_body.as_ref(),
        request_extra: include_request_extra.then(|| req.extra_body()).flatten(),
    };
    let mut out = Vec::with_capacity(req.size_hint + 64);
    // Serializing a map of JSON values into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, &body);
    out
}

struct Body<'a> {
    req: &'a ChatRequest,
    model: &'a str,
    deployment_extra: Option<&'a Map<String, Value>>,
    request_extra: Option<&'a Map<String, Value>>,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let overridden = |k: &str| {
            self.request_extra.is_some_and(|m| m.contains_key(k))
                || self.deployment_extra.is_some_and(|m| m.contains_key(k))
        };
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("model", self.model)?;
        for (k, v) in &self.req.body {
            if k != "model" && k != "extra_body" && k != "stream_options" && !overridden(k) {
                map.serialize_entry(k, v)?;
            }
        }
        if self.req.stream {
            // Usage in the last chunk, so that streamed calls are accounted for like the others.
            map.serialize_entry(
                "stream_options",
                &serde_json::json!({"include_usage": true}),
            )?;
        }
        if let Some(extra) = self.deployment_extra {
            for (k, v) in extra {
                if k != "model" && !self.request_extra.is_some_and(|m| m.contains_key(k)) {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        if let Some(extra) = self.request_extra {
            for (k, v) in extra.iter().filter(|(k, _)| *k != "model") {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// What must hold of a 2xx body, read without building it: choices with an assistant message,
/// and whether it is complete enough (`id`, `model`, `created`, `usage`) to pass through as is.
#[derive(Deserialize)]
struct Essentials {
    id: Option<IgnoredAny>,
    model: Option<IgnoredAny>,
    created: Option<IgnoredAny>,
    choices: Vec<ChoiceCheck>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChoiceCheck {
    #[expect(dead_code, reason = "deserialized to check that it is there")]
    message: MessageCheck,
}

#[derive(Deserialize)]
struct MessageCheck {
    #[expect(dead_code, reason = "deserialized to check that it is there")]
    role: IgnoredAny,
}

/// A 2xx body must be a chat completion with at least one choice. A complete one is passed
/// through as the provider sent it; otherwise it is parsed so that the gaps can be filled.
pub fn parse_response(bytes: Bytes) -> Result<Answer, Failure> {
    let invalid = |e: serde_json::Error| {
        Failure::InvalidBody(format!("{e} (body starts {:?})", snippet(&bytes)))
    };
    let e: Essentials = serde_json::from_slice(&bytes).map_err(invalid)?;
    if e.choices.is_empty() {
        return Err(Failure::InvalidBody("no choices in the reply".into()));
    }
    match e.usage {
        Some(usage)
            if e.id.is_some()
                && e.model.is_some()
                && e.created.is_some()
                && usage.prompt_tokens.saturating_add(usage.completion_tokens) > 0 =>
        {
            Ok(Answer::Wire {
                body: bytes,
                usage: sane_usage(usage),
            })
        }
        _ => {
            let c: ChatCompletion = serde_json::from_slice(&bytes).map_err(invalid)?;
            Ok(Answer::Built(c))
        }
    }
}

/// The `error.message` of an OpenAI error body, else the start of the body.
pub fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| e.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| snippet(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn deployment(extra: Option<&str>) -> DeploymentConfig {
        let mut c = Config::demo().deployments.remove(0);
        c.model = "deepseek-chat".into();
        c.extra_body = extra.map(|e| serde_json::from_str(e).unwrap());
        c
    }

    #[test]
    fn body_replaces_model_and_merges_extra_body() {
        let req = ChatRequest::parse(
            br#"{"model":"fast-chat","messages":[{"role":"user","content":"hi"}],"temperature":0.3,"extra_body":{"reasoning_effort":"low","temperature":0.9}}"#,
        )
        .unwrap();
        let d = deployment(Some(r#"{"top_p":0.5,"reasoning_effort":"high"}"#));
        let body: Value = serde_json::from_slice(&build_body(&d, &req, true)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "deepseek-chat",
                "messages": [{"role":"user","content":"hi"}],
                "temperature": 0.9,
                "top_p": 0.5,
                "reasoning_effort": "low"
            })
        );
        let body: Value = serde_json::from_slice(&build_body(&d, &req, false)).unwrap();
        assert_eq!(body["temperature"], 0.3);
        assert_eq!(body["reasoning_effort"], "high");
        assert!(body.get("extra_body").is_none());
    }

    #[test]
    fn stream_chunks_pass_through_and_done_ends() {
        let mut s = StreamState::default();
        let chunk = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        let p = s.on_event(None, chunk).unwrap();
        assert_eq!(p.chunks, vec![Bytes::from(chunk)]);
        let usage = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        assert_eq!(
            s.on_event(None, usage).unwrap().usage.unwrap().total_tokens,
            7
        );
        assert!(!s.done());
        s.on_event(None, "[DONE]").unwrap();
        assert!(s.done());
        assert!(matches!(
            s.on_event(None, "nonsense"),
            Err(Failure::InvalidBody(_))
        ));
        assert!(matches!(
            s.on_event(None, r#"{"error":{"message":"overloaded"}}"#),
            Err(Failure::Status { status: 500, .. })
        ));
    }

    #[test]
    fn streamed_requests_ask_for_usage() {
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false}}"#,
        )
        .unwrap();
        let body: Value =
            serde_json::from_slice(&build_body(&deployment(None), &req, true)).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["stream_options"],
            serde_json::json!({"include_usage": true})
        );
    }

    #[test]
    fn responses_are_checked() {
        let ok = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#;
        match parse_response(Bytes::from_static(ok)).unwrap() {
            Answer::Wire { body, usage } => {
                assert_eq!(&body[..], &ok[..], "passed through untouched");
                assert_eq!(usage.total_tokens, 12);
            }
            other => panic!("{other:?}"),
        }
        // Without usage (some compatible servers), it is parsed so that usage can be filled in.
        let partial = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}]}"#;
        match parse_response(Bytes::from_static(partial)).unwrap() {
            Answer::Built(c) => assert_eq!(c.text(), Some("Hi!")),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"<html>bad gateway</html>"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"index":0}]}"#,
            br#"{"id":"x","choices":"nope"}"#,
        ] {
            assert!(
                matches!(
                    parse_response(Bytes::from_static(bad)),
                    Err(Failure::InvalidBody(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            error_message(br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#),
            "Rate limit reached"
        );
    }
}
