//! OpenAI Chat Completions, and every API that speaks it (DeepSeek, Groq, Together, Ollama, vLLM):
//! `POST {api_base}/chat/completions` with `Authorization: Bearer`. The caller's body passes
//! through with `model` replaced by the deployment's model and `extra_body` merged in; a complete
//! reply passes back untouched. The `WireFormat` for `provider = "openai"`, and its `EmbedFormat`:
//! `POST {api_base}/embeddings`, asking for base64 vectors (a third of the size, and exact) while
//! reading float arrays too, since many compatible servers (Ollama, TEI, older vLLM) ignore
//! `encoding_format`.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::embed::{self, EmbedCall, EmbedFormat, Vector, Vectors};
use super::failure::Failure;
use super::shape::{sane_usage, snippet};
use super::stream::{Piece, StreamTranslator};
use super::wire::{Answer, Auth, WireFormat};
use crate::config::DeploymentConfig;
use crate::protocol::request::Member;
use crate::protocol::{ChatCompletion, ChatRequest, EmbedInput, Usage};

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

impl EmbedFormat for OpenAi {
    fn embed_endpoint(&self, d: &DeploymentConfig) -> String {
        format!("{}/embeddings", d.api_base)
    }

    /// `model`, the inputs as one array (of strings, or of token arrays), `encoding_format:
    /// "base64"`, `dimensions` and `user` when given, then the deployment's `extra_body`, which
    /// may replace any of them but `model` and `input` (`"encoding_format": "float"` for a server
    /// that refuses base64). OpenAI takes no mix of texts and token arrays.
    fn build_embed_body(
        &self,
        d: &DeploymentConfig,
        call: &EmbedCall<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let tokens = call
            .inputs
            .iter()
            .filter(|i| matches!(i, EmbedInput::Tokens(_)))
            .count();
        if tokens != 0 && tokens != call.inputs.len() {
            return Err(Failure::Untranslatable(
                "texts and token arrays in one call (OpenAI takes one or the other)".into(),
            ));
        }
        let size: usize = call
            .inputs
            .iter()
            .map(|i| match i {
                EmbedInput::Text(t) => t.len() + 8,
                EmbedInput::Tokens(t) => t.len() * 7 + 2,
            })
            .sum();
        let mut out = Vec::with_capacity(size + 128);
        // Serializing strings, numbers and JSON values into memory cannot fail.
        let _ = serde_json::to_writer(&mut out, &EmbedBody { d, call });
        Ok(out)
    }

    /// A `list` of `embedding` objects, each put in place by its `index` (servers need not send
    /// them in order; an item without one takes its position), either encoding.
    fn parse_embed_reply(&self, body: &[u8]) -> Result<Vectors, Failure> {
        let list: EmbedList = serde_json::from_slice(body)
            .map_err(|e| Failure::InvalidBody(format!("{e} (body starts {:?})", snippet(body))))?;
        let n = list.data.len();
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; n];
        for (at, item) in list.data.into_iter().enumerate() {
            let i = item.index.unwrap_or(at);
            let slot = slots.get_mut(i).ok_or_else(|| {
                Failure::InvalidBody(format!("embedding index {i} out of range for {n} items"))
            })?;
            if slot.replace(item.embedding.0).is_some() {
                return Err(Failure::InvalidBody(format!("embedding index {i} twice")));
            }
        }
        Ok(Vectors {
            // Every slot is filled: n items went into n slots, none twice.
            vectors: slots.into_iter().map(Option::unwrap_or_default).collect(),
            prompt_tokens: list.usage.and_then(|u| u.prompt_tokens),
            model: list.model,
        })
    }
}

/// Fields of an embeddings body that `extra_body` never replaces.
const EMBED_KEPT: &[&str] = &["model", "input"];

struct EmbedBody<'a> {
    d: &'a DeploymentConfig,
    call: &'a EmbedCall<'a>,
}

impl Serialize for EmbedBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (d, call) = (self.d, self.call);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("model", &d.model)?;
        map.serialize_entry("input", &Inputs(call.inputs))?;
        let ours = [
            ("encoding_format", Some(Value::from("base64"))),
            ("dimensions", call.dimensions.map(Value::from)),
            ("user", call.user.map(Value::from)),
        ];
        for (k, v) in ours {
            if let Some(v) = v.filter(|_| !embed::overridden(d, k)) {
                map.serialize_entry(k, &v)?;
            }
        }
        for (k, v) in embed::extra(d, EMBED_KEPT) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct Inputs<'a>(&'a [EmbedInput]);

impl Serialize for Inputs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Input))
    }
}

struct Input<'a>(&'a EmbedInput);

impl Serialize for Input<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            EmbedInput::Text(t) => s.serialize_str(t),
            EmbedInput::Tokens(t) => t.serialize(s),
        }
    }
}

#[derive(Deserialize)]
struct EmbedList {
    data: Vec<EmbedItem>,
    model: Option<String>,
    usage: Option<EmbedUsage>,
}

#[derive(Deserialize)]
struct EmbedItem {
    index: Option<usize>,
    embedding: Vector,
}

#[derive(Deserialize)]
struct EmbedUsage {
    prompt_tokens: Option<u64>,
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

/// The request body for this deployment: the caller's members in their order, each written as
/// the caller wrote it (the messages are not built or written again), `model` set to the
/// deployment's, then the deployment's `extra_body` and (when meant for this provider) the
/// caller's; a member either of those sets is left for it.
pub fn build_body(d: &DeploymentConfig, req: &ChatRequest, include_request_extra: bool) -> Vec<u8> {
    let request_extra = include_request_extra.then(|| req.extra_body()).flatten();
    let deployment_extra = d.extra_body.as_ref();
    let overridden = |k: &str| {
        request_extra.is_some_and(|m| m.contains_key(k))
            || deployment_extra.is_some_and(|m| m.contains_key(k))
    };
    let mut out = Vec::with_capacity(req.size_hint + 64);
    out.push(b'{');
    entry(&mut out, "model", &d.model);
    for (k, v) in req.members() {
        if k != "model" && k != "extra_body" && k != "stream_options" && !overridden(k) {
            match v {
                Member::Raw(bytes) => {
                    key(&mut out, k);
                    out.extend_from_slice(bytes);
                }
                Member::Parsed(v) => entry(&mut out, k, v),
            }
        }
    }
    if req.stream {
        // Usage in the last chunk, so that streamed calls are accounted for like the others.
        entry(
            &mut out,
            "stream_options",
            &serde_json::json!({"include_usage": true}),
        );
    }
    for (k, v) in deployment_extra.into_iter().flatten() {
        if k != "model" && !request_extra.is_some_and(|m| m.contains_key(k)) {
            entry(&mut out, k, v);
        }
    }
    for (k, v) in request_extra.into_iter().flatten() {
        if k != "model" {
            entry(&mut out, k, v);
        }
    }
    out.push(b'}');
    out
}

/// `"k":` after a comma unless it is the object's first member.
fn key(out: &mut Vec<u8>, k: &str) {
    if out.len() > 1 {
        out.push(b',');
    }
    // Writing a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, k);
    out.push(b':');
}

fn entry(out: &mut Vec<u8>, k: &str, v: &(impl Serialize + ?Sized)) {
    key(out, k);
    // Writing JSON values into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
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
    use crate::config::{Config, ProviderKind};

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

    /// A body read plainly is passed on as the caller wrote it, member by member; one parsed
    /// whole (here because of a surrogate pair's escapes) is written from the parsed map: both
    /// reach the provider as the same JSON.
    #[test]
    fn body_is_the_same_json_however_the_request_was_read() {
        let d = deployment(Some(r#"{"top_p":0.5}"#));
        let body = |text: &str| {
            let req = ChatRequest::parse(text.as_bytes()).unwrap();
            let out = build_body(&d, &req, true);
            (
                String::from_utf8(out.clone()).unwrap(),
                serde_json::from_slice::<Value>(&out).unwrap(),
            )
        };
        let rest = r#""messages": [ {"role":"user","content":"hi"} ],"stream":true,"stream_options":{"include_usage":false},"top_p":0.1,"zeta":{"k" : [1, 2]},"extra_body":{"seed":7}}"#;
        let (plain, plain_json) = body(&format!(r#"{{"model":"x","user":"😀",{rest}"#));
        let (whole, whole_json) = body(&format!(r#"{{"model":"x","user":"\ud83d\ude00",{rest}"#));
        assert_eq!(plain_json, whole_json);
        assert_eq!(
            plain_json,
            serde_json::json!({
                "model": "deepseek-chat",
                "user": "😀",
                "messages": [{"role":"user","content":"hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "zeta": {"k": [1, 2]},
                "top_p": 0.5,
                "seed": 7
            })
        );
        // The caller's own bytes and order for what passes through.
        assert!(
            plain.starts_with(r#"{"model":"deepseek-chat","user":"😀","messages":[ {"role":"user","content":"hi"} ],"stream":true,"zeta":{"k" : [1, 2]},"#),
            "{plain}"
        );
        assert!(!whole.contains("\\ud83d"), "{whole}");
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

    fn embed_deployment(extra: Option<&str>) -> DeploymentConfig {
        let mut d = embed::test_deployment(ProviderKind::OpenAi, "text-embedding-3-small", 3);
        d.extra_body = extra.map(|e| serde_json::from_str(e).unwrap());
        d
    }

    fn embed_body(d: &DeploymentConfig, call: &EmbedCall<'_>) -> Result<Value, Failure> {
        OpenAi
            .build_embed_body(d, call)
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn embeddings_body_asks_for_base64_and_passes_dimensions_user_and_extra_body() {
        let inputs = [
            EmbedInput::Text("a".into()),
            EmbedInput::Text("b\"c".into()),
        ];
        let plain = EmbedCall {
            inputs: &inputs,
            dimensions: None,
            user: None,
        };
        let d = embed_deployment(None);
        assert_eq!(
            String::from_utf8(OpenAi.build_embed_body(&d, &plain).unwrap()).unwrap(),
            r#"{"model":"text-embedding-3-small","input":["a","b\"c"],"encoding_format":"base64"}"#
        );
        let full = EmbedCall {
            dimensions: Some(256),
            user: Some("u-1"),
            ..plain
        };
        let d = embed_deployment(Some(
            r#"{"model":"other","input":["x"],"encoding_format":"float","truncate":"END"}"#,
        ));
        assert_eq!(
            embed_body(&d, &full).unwrap(),
            serde_json::json!({
                "model": "text-embedding-3-small",
                "input": ["a", "b\"c"],
                "dimensions": 256,
                "user": "u-1",
                "encoding_format": "float",
                "truncate": "END"
            })
        );
        let tokens = [EmbedInput::Tokens(vec![1, 2]), EmbedInput::Tokens(vec![3])];
        let call = EmbedCall {
            inputs: &tokens,
            dimensions: None,
            user: None,
        };
        assert_eq!(
            embed_body(&embed_deployment(None), &call).unwrap()["input"],
            serde_json::json!([[1, 2], [3]])
        );
        let mixed = [EmbedInput::Tokens(vec![1]), EmbedInput::Text("a".into())];
        let call = EmbedCall {
            inputs: &mixed,
            ..call
        };
        assert!(matches!(
            OpenAi.build_embed_body(&embed_deployment(None), &call),
            Err(Failure::Untranslatable(_))
        ));
    }

    #[test]
    fn embeddings_replies_in_either_encoding_and_any_order() {
        let b64 = |v: &[f32]| {
            use base64::Engine as _;
            let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(raw)
        };
        let base64 = format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":1,"embedding":"{}"}},{{"object":"embedding","index":0,"embedding":"{}"}}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":4,"total_tokens":4}}}}"#,
            b64(&[0.25, -0.5, 1e-7]),
            b64(&[1.0, 0.0, -0.0])
        );
        let v = OpenAi.parse_embed_reply(base64.as_bytes()).unwrap();
        assert_eq!(
            v.vectors,
            vec![vec![1.0, 0.0, -0.0], vec![0.25, -0.5, 1e-7]]
        );
        assert_eq!(v.prompt_tokens, Some(4));
        assert_eq!(v.model.as_deref(), Some("text-embedding-3-small"));
        // Ollama, TEI and older vLLM answer floats whatever was asked, some without `usage`.
        let floats = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1,3e-8]}],"model":"nomic-embed-text"}"#;
        let v = OpenAi.parse_embed_reply(floats).unwrap();
        assert_eq!(v.vectors, vec![vec![0.5, -1.0, 3e-8]]);
        assert_eq!(v.prompt_tokens, None);
        for (bad, says) in [
            (&b"<html>502</html>"[..], "body starts"),
            (br#"{"data":[{"index":0,"embedding":"@@"}]}"#, "bad base64"),
            (br#"{"data":[{"index":0,"embedding":"AAA="}]}"#, "float32"),
            (
                br#"{"data":[{"index":0,"embedding":["x"]}]}"#,
                "invalid type",
            ),
            (br#"{"data":[{"index":0,"embedding":{}}]}"#, "invalid type"),
            (
                br#"{"data":[{"index":1,"embedding":[1]},{"index":1,"embedding":[2]}]}"#,
                "index 1 twice",
            ),
            (br#"{"data":[{"index":2,"embedding":[1]}]}"#, "out of range"),
            (br#"{"object":"list"}"#, "missing field `data`"),
        ] {
            match OpenAi.parse_embed_reply(bad) {
                Err(Failure::InvalidBody(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }
}
