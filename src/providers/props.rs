//! Property tests: nothing a provider sends makes a reply parser (embeddings replies included), a
//! stream translator or the SSE framing panic (`Retry-After` is checked with the failure policy that caps it,
//! `crate::routing::policy`). Inputs are raw bytes, and JSON built from the words the
//! parsers look for (random bytes alone seldom get past the first `serde_json` check).

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::embed::EmbedFormat;
use super::stream::{StreamTranslator, from_chunks};
use super::{Failure, anthropic, gemini, openai};

/// Few enough cases that the suite stays fast; each run draws new ones.
fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Keys and string values the three wire formats give meaning to.
const WORDS: &[&str] = &[
    "id",
    "type",
    "object",
    "model",
    "created",
    "choices",
    "message",
    "role",
    "assistant",
    "content",
    "text",
    "refusal",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "error",
    "code",
    "status",
    "candidates",
    "index",
    "parts",
    "thought",
    "functionCall",
    "args",
    "finishReason",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "totalTokenCount",
    "promptFeedback",
    "blockReason",
    "modelVersion",
    "responseId",
    "stop_reason",
    "tool_use",
    "input",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "delta",
    "text_delta",
    "input_json_delta",
    "partial_json",
    "content_block",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "message_delta",
    "message_stop",
    "overloaded_error",
    "[DONE]",
    "data",
    "embedding",
    "embeddings",
    "values",
    "list",
    "AACAPwAAAAA=",
    "AADAfw==",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(1u64 << 63)].prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Bytes a provider might send as a body: random, or JSON (whole or cut short).
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let mut b = v.to_string().into_bytes();
            b.truncate(cut.index(b.len() + 1));
            b
        }),
    ]
}

/// Embeddings replies of the right shape around arbitrary items: indices, vectors (numbers, huge
/// numbers, base64 or not, anything) and usage.
fn embed_body() -> impl Strategy<Value = Vec<u8>> {
    let vector = prop_oneof![
        prop::collection::vec(any::<f64>().prop_map(|f| json!(f)), 0..8).prop_map(Value::Array),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| {
            use base64::Engine as _;
            json!(base64::engine::general_purpose::STANDARD.encode(b))
        }),
        "[A-Za-z0-9+/=]{0,16}".prop_map(Value::String),
        json_value(),
    ];
    let item = (json_value(), any::<u8>(), vector.clone()).prop_map(|(junk, i, v)| {
        let index = if i % 5 == 0 { junk } else { json!(i % 8) };
        json!({"object": "embedding", "index": index, "embedding": v})
    });
    prop_oneof![
        (prop::collection::vec(item, 0..6), json_value()).prop_map(|(data, usage)| {
            json!({"object": "list", "data": data, "model": "m", "usage": usage})
                .to_string()
                .into_bytes()
        }),
        prop::collection::vec(vector, 0..6).prop_map(|vs| {
            let embeddings: Vec<Value> = vs.into_iter().map(|v| json!({"values": v})).collect();
            json!({"embeddings": embeddings}).to_string().into_bytes()
        }),
    ]
}

fn event_name() -> impl Strategy<Value = Option<String>> {
    prop::option::of(word())
}

/// A sequence of SSE events, as (`event:` name, `data:` text).
fn events() -> impl Strategy<Value = Vec<(Option<String>, String)>> {
    let data = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        "\\PC{0,40}",
        Just("[DONE]".to_string()),
    ];
    prop::collection::vec((event_name(), data), 0..12)
}

fn translators() -> [Box<dyn StreamTranslator>; 3] {
    [
        Box::new(openai::StreamState::default()),
        Box::new(anthropic::StreamState::new("m")),
        Box::new(gemini::StreamState::new("m")),
    ]
}

/// Reads a whole translated stream of `chunks`, bounded by `limit`.
fn drain(
    chunks: Vec<Vec<u8>>,
    limit: usize,
    translator: Box<dyn StreamTranslator>,
) -> Vec<Result<(), Failure>> {
    let chunks = futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, reqwest::Error>(Bytes::from(c))),
    );
    let stream = from_chunks(chunks, limit, translator);
    futures::executor::block_on(stream.map(|p| p.map(|_| ())).collect())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn reply_parsers_take_any_body(b in body()) {
        let _ = openai::parse_response(Bytes::from(b.clone()));
        let _ = anthropic::parse_response(&b);
        let _ = gemini::parse_response(&b, "m");
        let _ = openai::error_message(&b);
        let _ = anthropic::error_message(&b);
        let _ = gemini::error_message(&b);
    }

    #[test]
    fn embeddings_reply_parsers_take_any_body(b in prop_oneof![body(), embed_body()]) {
        let _ = openai::OpenAi.parse_embed_reply(&b);
        let _ = gemini::Gemini.parse_embed_reply(&b);
    }

    #[test]
    fn stream_translators_take_any_events(events in events()) {
        let mut o = openai::StreamState::default();
        let mut a = anthropic::StreamState::new("m");
        let mut g = gemini::StreamState::new("m");
        // Past an error too: the plumbing stops there, but the translators must not care.
        for (name, data) in &events {
            let _ = o.on_event(name.as_deref(), data);
            let _ = a.on_event(name.as_deref(), data);
            let _ = g.on_event(name.as_deref(), data);
        }
    }

    #[test]
    fn sse_framing_takes_any_bytes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        limit in 0usize..512,
    ) {
        for t in translators() {
            let seen = drain(chunks.clone(), limit, t);
            // It ends, and after at most one error.
            prop_assert!(seen.iter().filter(|r| r.is_err()).count() <= 1);
            if let Some(i) = seen.iter().position(Result::is_err) {
                prop_assert_eq!(i + 1, seen.len());
            }
        }
    }

    #[test]
    fn sse_framing_takes_any_split_of_well_formed_events(
        events in events(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        crlf in any::<bool>(),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        for (name, data) in &events {
            if let Some(name) = name {
                text.push_str(&format!("event: {}{nl}", name.replace(['\r', '\n'], " ")));
            }
            text.push_str(&format!("data: {}{nl}{nl}", data.replace(['\r', '\n'], " ")));
        }
        let bytes = text.into_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([bytes.len()]) {
            chunks.push(bytes[from..to].to_vec());
            from = to;
        }
        for t in translators() {
            let _ = drain(chunks.clone(), usize::MAX, t);
        }
    }
}
