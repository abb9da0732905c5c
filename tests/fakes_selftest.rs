//! Self-test of the fake providers in `tests/common/fake`: for the OpenAI,
//! Anthropic and Gemini dialects, the exact shape of a success, the requests
//! each rejects like the real API, its error bodies, and its streams (event
//! order, content, terminator, pacing, cut streams, keep-alive), seen through
//! reqwest and through a hand-written HTTP/1.1 client.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::FakeProvider;
use common::Fault;
use common::fake::Dialect;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ANTHROPIC_HEADERS: &[(&str, &str)] = &[
    ("x-api-key", "sk-ant-test"),
    ("anthropic-version", "2023-06-01"),
];
const GEMINI_HEADERS: &[(&str, &str)] = &[("x-goog-api-key", "AIza-test")];

type Headers = &'static [(&'static str, &'static str)];

fn client() -> reqwest::Client {
    switchyard::providers::http::client().expect("reqwest client")
}

/// What a complete (non-streamed) answer came back as.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn request(url: &str, headers: &[(&str, &str)], body: &str) -> reqwest::RequestBuilder {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req
}

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let resp = request(url, headers, body).send().await.expect("an answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("a whole body");
    Got {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A streamed answer: the body pieces as they arrived, and how it ended.
struct Streamed {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// Time from sending the request to the response head.
    head_after: Duration,
    /// Each piece with its arrival time after the request was sent.
    chunks: Vec<(Duration, Bytes)>,
    /// The whole body read, as text.
    text: String,
    /// The error that ended the body early, if any.
    error: Option<reqwest::Error>,
}

impl Streamed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn events(&self) -> Vec<Sse> {
        parse_sse(&self.text)
    }
}

async fn stream(url: &str, headers: &[(&str, &str)], body: &str) -> Streamed {
    let started = Instant::now();
    let mut resp = request(url, headers, body).send().await.expect("a head");
    let head_after = started.elapsed();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut chunks = Vec::new();
    let mut error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => chunks.push((started.elapsed(), chunk)),
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let text = chunks
        .iter()
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .collect();
    Streamed {
        status,
        headers,
        head_after,
        chunks,
        text,
        error,
    }
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: String,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// Splits an event stream (LF or CRLF line ends) into its events.
fn parse_sse(text: &str) -> Vec<Sse> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.trim_start());
                }
            }
            Sse {
                event,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// The prompt token count the fake reports for a default reply to `body`.
fn prompt_tokens(body: &str) -> u64 {
    10 + body.len() as u64 / 4
}

fn openai_url(fake: &FakeProvider) -> String {
    format!("{}/chat/completions", fake.base_url())
}

fn anthropic_url(fake: &FakeProvider) -> String {
    format!("{}/v1/messages", fake.base_url())
}

fn gemini_url(fake: &FakeProvider, model: &str, method: &str) -> String {
    format!("{}/v1beta/models/{model}:{method}", fake.base_url())
}

// ----------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_base_url_and_success_are_unchanged() {
    let fake = FakeProvider::start_named("oa").await;
    assert_eq!(fake.dialect(), Dialect::OpenAi);
    assert_eq!(fake.base_url(), format!("http://{}/v1", fake.addr()));
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = post(&openai_url(&fake), &[], &body).await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert_eq!(b["id"], "chatcmpl-1");
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["model"], "gpt-4o");
    assert_eq!(b["choices"][0]["message"]["content"], "fake reply from oa");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    assert_eq!(b["usage"]["prompt_tokens"], prompt_tokens(&body));
    assert_eq!(b["usage"]["completion_tokens"], 7);
    let rec = &fake.requests()[0];
    assert_eq!(rec.model.as_deref(), Some("gpt-4o"));
    assert!(!rec.stream);
    assert!(rec.rejected.is_none());

    // OpenAI requests are not checked: anything on the route is scripted.
    fake.push(Fault::status(503));
    let r = post(&openai_url(&fake), &[], "{}").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        json!({"error": {"message": "fake error 503", "type": "server_error", "param": null, "code": null}})
    );
    let r = post(&format!("{}/nope", fake.base_url()), &[], "{}").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn openai_error_faults() {
    let fake = FakeProvider::start_named("oa").await;
    let url = openai_url(&fake);
    fake.push(Fault::RateLimited {
        retry_after_secs: 7,
    });
    let r = post(&url, &[], "{}").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    fake.push(Fault::Overloaded);
    let r = post(&url, &[], "{}").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"]["type"], "server_error");
    fake.push(Fault::error(401, "Incorrect API key provided"));
    let r = post(&url, &[], "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["message"], "Incorrect API key provided");
    assert_eq!(r.body["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn openai_stream_is_chunks_then_finish_then_done() {
    let fake = FakeProvider::start_named("oa").await;
    let body =
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let s = stream(&openai_url(&fake), &[], &body).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    assert!(s.header("content-length").is_none());
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(fake.requests()[0].stream);
    let events = s.events();
    assert_eq!(events.len(), 6, "{}", s.text);
    assert!(events.iter().all(|e| e.event.is_none()));
    let chunks: Vec<Value> = events[..5].iter().map(Sse::json).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-1");
        assert_eq!(c["model"], "gpt-4o");
        assert!(c.get("usage").is_none(), "no usage unless asked: {c}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let pieces: Vec<&str> = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, ["fake r", "eply f", "rom oa"]);
    for c in &chunks[..4] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5].data, "[DONE]");
    assert!(s.text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn openai_stream_with_include_usage_ends_with_a_usage_chunk() {
    let fake = FakeProvider::start_named("oa").await;
    fake.push(Fault::Reply {
        text: "abcdefghi".into(),
        prompt_tokens: 11,
        completion_tokens: 3,
    });
    let body = json!({
        "model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let s = stream(&openai_url(&fake), &[], &body).await;
    let events = s.events();
    assert_eq!(events.len(), 7, "{}", s.text);
    let chunks: Vec<Value> = events[..6].iter().map(Sse::json).collect();
    for c in &chunks[..5] {
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
    }
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "abcdefghi");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14})
    );
    assert_eq!(events[6].data, "[DONE]");
}

// -------------------------------------------------------------- Anthropic

fn anthropic_hello() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        ],
        "temperature": 1.0,
    })
}

#[tokio::test]
async fn anthropic_success_is_a_messages_response() {
    let fake = FakeProvider::start_anthropic("claude").await;
    assert_eq!(fake.dialect(), Dialect::Anthropic);
    assert_eq!(fake.base_url(), format!("http://{}", fake.addr()));
    let body = anthropic_hello().to_string();
    let r = post(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        json!({
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "fake reply from claude"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens(&body), "output_tokens": 7},
        })
    );
    fake.push(Fault::Reply {
        text: "scripted".into(),
        prompt_tokens: 5,
        completion_tokens: 2,
    });
    let r = post(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body).await;
    assert_eq!(r.body["id"], "msg_2");
    assert_eq!(r.body["content"][0]["text"], "scripted");
    assert_eq!(
        r.body["usage"],
        json!({"input_tokens": 5, "output_tokens": 2})
    );
    let rec = &fake.requests()[0];
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(rec.model.as_deref(), Some("claude-sonnet-4-5"));
    assert!(rec.rejected.is_none());
}

#[tokio::test]
async fn anthropic_rejects_what_the_real_api_rejects() {
    let fake = FakeProvider::start_anthropic("claude").await;
    let url = anthropic_url(&fake);
    // Rejections leave the script alone.
    fake.push(Fault::status(500));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = anthropic_hello();
        f(&mut body);
        body.to_string()
    };
    let ok = anthropic_hello().to_string();
    let only_key: Headers = &[("x-api-key", "k")];
    let only_version: Headers = &[("anthropic-version", "2023-06-01")];
    let cases: Vec<(&str, Headers, String, &str)> = vec![
        ("no key", only_version, ok.clone(), "x-api-key"),
        ("no version", only_key, ok.clone(), "anthropic-version"),
        (
            "no model",
            ANTHROPIC_HEADERS,
            with(&|b| drop(b.as_object_mut().unwrap().remove("model"))),
            "model: Field required",
        ),
        (
            "no max_tokens",
            ANTHROPIC_HEADERS,
            with(&|b| drop(b.as_object_mut().unwrap().remove("max_tokens"))),
            "max_tokens: Field required",
        ),
        (
            "zero max_tokens",
            ANTHROPIC_HEADERS,
            with(&|b| b["max_tokens"] = json!(0)),
            "max_tokens",
        ),
        (
            "negative max_tokens",
            ANTHROPIC_HEADERS,
            with(&|b| b["max_tokens"] = json!(-5)),
            "max_tokens",
        ),
        (
            "fractional max_tokens",
            ANTHROPIC_HEADERS,
            with(&|b| b["max_tokens"] = json!(1.5)),
            "max_tokens",
        ),
        (
            "string max_tokens",
            ANTHROPIC_HEADERS,
            with(&|b| b["max_tokens"] = json!("64")),
            "max_tokens",
        ),
        (
            "no messages",
            ANTHROPIC_HEADERS,
            with(&|b| drop(b.as_object_mut().unwrap().remove("messages"))),
            "messages: Field required",
        ),
        (
            "empty messages",
            ANTHROPIC_HEADERS,
            with(&|b| b["messages"] = json!([])),
            "messages",
        ),
        (
            "system role inside messages",
            ANTHROPIC_HEADERS,
            with(&|b| {
                b["messages"] = json!([
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello"},
                ]);
            }),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            "two user turns in a row",
            ANTHROPIC_HEADERS,
            with(&|b| {
                b["messages"] = json!([
                    {"role": "user", "content": "Hello"},
                    {"role": "user", "content": "Anyone?"},
                ]);
            }),
            "roles must alternate",
        ),
        (
            "assistant first",
            ANTHROPIC_HEADERS,
            with(&|b| {
                b["messages"] = json!([
                    {"role": "assistant", "content": "Hi."},
                    {"role": "user", "content": "Hello"},
                ]);
            }),
            r#"first message must use the "user" role"#,
        ),
        (
            "temperature above 1",
            ANTHROPIC_HEADERS,
            with(&|b| b["temperature"] = json!(1.5)),
            "temperature",
        ),
        (
            "temperature below 0",
            ANTHROPIC_HEADERS,
            with(&|b| b["temperature"] = json!(-0.1)),
            "temperature",
        ),
        ("not JSON", ANTHROPIC_HEADERS, "{oops".into(), "JSON"),
    ];
    for (i, (what, headers, body, says)) in cases.iter().enumerate() {
        let r = post(&url, headers, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.body["type"], "error", "{what}");
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{what}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        let rec = &fake.requests()[i];
        assert_eq!(rec.rejected.as_deref(), Some(message), "{what}");
        assert_eq!(fake.pending(), 1, "{what} consumed the script");
    }
    // A valid request (an assistant turn in between, temperature 0 or 1,
    // streaming or not) takes the scripted fault.
    let r = post(&url, ANTHROPIC_HEADERS, &ok).await;
    assert_eq!(r.status, 500);
    assert_eq!(fake.pending(), 0);
    let cold = with(&|b| b["temperature"] = json!(0));
    assert_eq!(post(&url, ANTHROPIC_HEADERS, &cold).await.status, 200);
    // A streaming request is checked too, and rejected with a JSON 400.
    let bad_stream = with(&|b| {
        b["stream"] = json!(true);
        b["messages"] = json!([{"role": "system", "content": "x"}]);
    });
    let r = post(&url, ANTHROPIC_HEADERS, &bad_stream).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn anthropic_error_bodies_have_anthropic_types() {
    let fake = FakeProvider::start_anthropic("claude").await;
    let url = anthropic_url(&fake);
    let body = anthropic_hello().to_string();
    for (code, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        fake.push(Fault::status(code));
        let r = post(&url, ANTHROPIC_HEADERS, &body).await;
        assert_eq!(r.status, code);
        assert_eq!(
            r.body,
            json!({"type": "error", "error": {"type": kind, "message": format!("fake error {code}")}})
        );
    }
    fake.push(Fault::Overloaded);
    let r = post(&url, ANTHROPIC_HEADERS, &body).await;
    assert_eq!(r.status, 529);
    assert_eq!(r.body["error"]["type"], "overloaded_error");
    fake.push(Fault::RateLimited {
        retry_after_secs: 12,
    });
    let r = post(&url, ANTHROPIC_HEADERS, &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("12"));
    assert_eq!(r.body["type"], "error");
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    // An OpenAI path on an Anthropic fake is unknown.
    let r = post(
        &format!("{}/v1/chat/completions", fake.base_url()),
        ANTHROPIC_HEADERS,
        &body,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["type"], "not_found_error");
    assert_eq!(fake.pending(), 0);
}

#[tokio::test]
async fn anthropic_stream_is_the_messages_event_sequence() {
    let fake = FakeProvider::start_anthropic("claude").await;
    let mut body = anthropic_hello();
    body["stream"] = json!(true);
    let body = body.to_string();
    let s = stream(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert!(s.error.is_none(), "{:?}", s.error);
    let events = s.events();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let data: Vec<Value> = events.iter().map(Sse::json).collect();
    for (name, d) in names.iter().zip(&data) {
        assert_eq!(d["type"], *name);
    }
    let start = &data[0]["message"];
    assert_eq!(start["id"], "msg_1");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(start["usage"]["input_tokens"], prompt_tokens(&body));
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let pieces: Vec<&str> = data[3..6]
        .iter()
        .map(|d| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(pieces.concat(), "fake reply from claude");
    assert!(pieces.iter().all(|p| !p.is_empty()));
    assert_eq!(data[6]["index"], 0);
    assert_eq!(data[7]["delta"]["stop_reason"], "end_turn");
    assert!(data[7]["delta"]["stop_sequence"].is_null());
    assert_eq!(data[7]["usage"]["output_tokens"], 7);
    assert!(
        s.text
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    );
}

#[tokio::test]
async fn anthropic_cut_stream_stops_after_the_given_deltas() {
    let fake = FakeProvider::start_anthropic("claude").await;
    let mut body = anthropic_hello();
    body["stream"] = json!(true);
    let body = body.to_string();
    fake.push(Fault::CutStream { after: 2 });
    let s = stream(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body).await;
    assert_eq!(s.status, 200);
    assert!(s.error.is_some(), "the body must end in an error");
    let names: Vec<String> = s.events().into_iter().filter_map(|e| e.event).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
        ]
    );
    // The next request is served normally, on a new connection.
    let s = stream(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body).await;
    assert!(s.error.is_none());
    assert_eq!(s.events().len(), 9);
}

// ----------------------------------------------------------------- Gemini

fn gemini_hello() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Hi."}]},
            {"role": "user", "parts": [{"text": "How are you?"}]},
        ],
        "generationConfig": {"temperature": 2.0, "maxOutputTokens": 64},
    })
}

#[tokio::test]
async fn gemini_success_is_a_generate_content_response() {
    let fake = FakeProvider::start_gemini("gem").await;
    assert_eq!(fake.dialect(), Dialect::Gemini);
    assert_eq!(fake.base_url(), format!("http://{}", fake.addr()));
    let body = gemini_hello().to_string();
    let url = gemini_url(&fake, "gemini-2.5-flash", "generateContent");
    let r = post(&url, GEMINI_HEADERS, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = prompt_tokens(&body);
    assert_eq!(
        r.body,
        json!({
            "candidates": [{
                "content": {"parts": [{"text": "fake reply from gem"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": 7, "totalTokenCount": p + 7},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1",
        })
    );
    let rec = &fake.requests()[0];
    assert_eq!(rec.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(rec.model.as_deref(), Some("gemini-2.5-flash"));
    assert!(!rec.stream);
    // A single turn may leave the role out.
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]}).to_string();
    assert_eq!(post(&url, GEMINI_HEADERS, &body).await.status, 200);
}

#[tokio::test]
async fn gemini_rejects_what_the_real_api_rejects() {
    let fake = FakeProvider::start_gemini("gem").await;
    let url = gemini_url(&fake, "gemini-2.5-flash", "generateContent");
    fake.push(Fault::status(500));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = gemini_hello();
        f(&mut body);
        body.to_string()
    };
    let r = post(&url, &[], &gemini_hello().to_string()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], 403);
    assert_eq!(r.body["error"]["status"], "PERMISSION_DENIED");
    assert!(r.body["error"]["message"].is_string());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no contents",
            with(&|b| drop(b.as_object_mut().unwrap().remove("contents"))),
            "contents is not specified",
        ),
        (
            "empty contents",
            with(&|b| b["contents"] = json!([])),
            "contents is not specified",
        ),
        (
            "assistant role",
            with(&|b| b["contents"][1]["role"] = json!("assistant")),
            "Please use a valid role: user, model.",
        ),
        (
            "system role",
            with(&|b| b["contents"][0]["role"] = json!("system")),
            "Please use a valid role: user, model.",
        ),
        (
            "no parts",
            with(&|b| b["contents"][0]["parts"] = json!([])),
            "parts must not be empty",
        ),
        (
            "temperature above 2",
            with(&|b| b["generationConfig"]["temperature"] = json!(2.5)),
            "temperature",
        ),
        (
            "temperature below 0",
            with(&|b| b["generationConfig"]["temperature"] = json!(-1)),
            "temperature",
        ),
        ("not JSON", "{oops".into(), "Invalid JSON payload"),
    ];
    for (what, body, says) in &cases {
        let r = post(&url, GEMINI_HEADERS, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.body["error"]["code"], 400, "{what}");
        assert_eq!(r.body["error"]["status"], "INVALID_ARGUMENT", "{what}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(
            fake.requests().last().unwrap().rejected.as_deref(),
            Some(message)
        );
    }
    // The streaming route is checked the same way.
    let stream_url = format!(
        "{}?alt=sse",
        gemini_url(&fake, "gemini-2.5-flash", "streamGenerateContent")
    );
    let bad = with(&|b| b["contents"][1]["role"] = json!("assistant"));
    let r = post(&stream_url, GEMINI_HEADERS, &bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["error"]["message"],
        "Please use a valid role: user, model."
    );
    assert_eq!(fake.pending(), 1, "rejections leave the script alone");
    let r = post(&url, GEMINI_HEADERS, &gemini_hello().to_string()).await;
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn gemini_error_bodies_have_google_statuses() {
    let fake = FakeProvider::start_gemini("gem").await;
    let url = gemini_url(&fake, "gemini-2.5-pro", "generateContent");
    let body = gemini_hello().to_string();
    for (code, status) in [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        fake.push(Fault::status(code));
        let r = post(&url, GEMINI_HEADERS, &body).await;
        assert_eq!(r.status, code);
        assert_eq!(
            r.body,
            json!({"error": {"code": code, "message": format!("fake error {code}"), "status": status}})
        );
    }
    fake.push(Fault::Overloaded);
    let r = post(&url, GEMINI_HEADERS, &body).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"]["status"], "UNAVAILABLE");
    fake.push(Fault::RateLimited {
        retry_after_secs: 9,
    });
    let r = post(&url, GEMINI_HEADERS, &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("9"));
    assert_eq!(r.body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(r.body["error"]["details"][0]["retryDelay"], "9s");
    for path in ["/v1beta/models/gemini-2.5-pro:countTokens", "/v1/messages"] {
        let r = post(&format!("{}{path}", fake.base_url()), GEMINI_HEADERS, &body).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body["error"]["status"], "NOT_FOUND");
    }
    assert_eq!(fake.pending(), 0);
}

#[tokio::test]
async fn gemini_sse_stream_is_three_responses() {
    let fake = FakeProvider::start_gemini("gem").await;
    let url = format!(
        "{}?alt=sse",
        gemini_url(&fake, "gemini-2.5-flash", "streamGenerateContent")
    );
    let body = gemini_hello().to_string();
    let s = stream(&url, GEMINI_HEADERS, &body).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(s.text.starts_with("data: {"));
    assert!(s.text.ends_with("}\r\n\r\n"), "events end in CRLF CRLF");
    let rec = &fake.requests()[0];
    assert!(rec.stream);
    assert_eq!(rec.model.as_deref(), Some("gemini-2.5-flash"));
    let events = s.events();
    assert_eq!(events.len(), 3, "{}", s.text);
    let data: Vec<Value> = events.iter().map(Sse::json).collect();
    let p = prompt_tokens(&body);
    let mut text = String::new();
    for (i, d) in data.iter().enumerate() {
        let candidate = &d["candidates"][0];
        assert_eq!(candidate["content"]["role"], "model");
        assert_eq!(candidate["content"]["parts"].as_array().unwrap().len(), 1);
        text.push_str(candidate["content"]["parts"][0]["text"].as_str().unwrap());
        assert_eq!(d["modelVersion"], "gemini-2.5-flash");
        assert_eq!(d["responseId"], "resp-1");
        assert_eq!(d["usageMetadata"]["promptTokenCount"], p);
        if i < 2 {
            assert!(candidate.get("finishReason").is_none());
        }
    }
    assert_eq!(text, "fake reply from gem");
    assert_eq!(data[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        data[2]["usageMetadata"],
        json!({"promptTokenCount": p, "candidatesTokenCount": 7, "totalTokenCount": p + 7})
    );
    // Earlier chunks count the candidate tokens so far.
    assert_eq!(data[0]["usageMetadata"]["candidatesTokenCount"], 2);
    assert_eq!(data[1]["usageMetadata"]["candidatesTokenCount"], 4);
}

#[tokio::test]
async fn gemini_stream_without_alt_sse_is_a_json_array() {
    let fake = FakeProvider::start_gemini("gem").await;
    let url = gemini_url(&fake, "gemini-2.5-flash", "streamGenerateContent");
    let s = stream(&url, GEMINI_HEADERS, &gemini_hello().to_string()).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("application/json"));
    let array: Value = serde_json::from_str(&s.text).expect("a JSON array");
    let array = array.as_array().unwrap();
    assert_eq!(array.len(), 3);
    let text: String = array
        .iter()
        .map(|r| {
            r["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "fake reply from gem");
    assert_eq!(array[2]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn gemini_cut_stream_stops_after_the_given_events() {
    let fake = FakeProvider::start_gemini("gem").await;
    let url = format!(
        "{}?alt=sse",
        gemini_url(&fake, "gemini-2.5-flash", "streamGenerateContent")
    );
    fake.push(Fault::CutStream { after: 1 });
    let s = stream(&url, GEMINI_HEADERS, &gemini_hello().to_string()).await;
    assert_eq!(s.status, 200);
    assert!(s.error.is_some(), "the body must end in an error");
    let events = s.events();
    assert_eq!(events.len(), 1);
    assert!(
        events[0].json()["candidates"][0]
            .get("finishReason")
            .is_none()
    );
}

// -------------------------------------------------- streaming, any dialect

#[tokio::test]
async fn events_arrive_one_by_one_at_the_chunk_delay() {
    let fake = FakeProvider::start_anthropic("claude").await;
    fake.set_chunk_delay(Duration::from_millis(60));
    let mut body = anthropic_hello();
    body["stream"] = json!(true);
    let s = stream(&anthropic_url(&fake), ANTHROPIC_HEADERS, &body.to_string()).await;
    assert!(s.error.is_none());
    // Each of the 9 events is its own piece, 60 ms after the one before.
    assert_eq!(s.chunks.len(), 9);
    for pair in s.chunks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(40), "gap {gap:?}");
    }
}

#[tokio::test]
async fn stream_delay_holds_back_the_first_event_not_the_head() {
    let fake = FakeProvider::start_named("oa").await;
    fake.push(Fault::StreamDelay {
        first: Duration::from_millis(400),
    });
    let body = json!({"model": "m", "stream": true, "messages": []}).to_string();
    let s = stream(&openai_url(&fake), &[], &body).await;
    assert!(
        s.head_after < Duration::from_millis(300),
        "{:?}",
        s.head_after
    );
    assert!(
        s.chunks[0].0 >= Duration::from_millis(400),
        "{:?}",
        s.chunks[0].0
    );
    assert!(s.error.is_none());
    assert_eq!(s.events().last().unwrap().data, "[DONE]");

    // Without a stream, it is a late reply.
    fake.push(Fault::StreamDelay {
        first: Duration::from_millis(200),
    });
    let started = Instant::now();
    let r = post(&openai_url(&fake), &[], "{}").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.body["object"], "chat.completion");
}

#[tokio::test]
async fn openai_cut_stream_after_zero_sends_only_the_role_chunk() {
    let fake = FakeProvider::start_named("oa").await;
    fake.push(Fault::CutStream { after: 0 });
    let body = json!({"model": "m", "stream": true, "messages": []}).to_string();
    let s = stream(&openai_url(&fake), &[], &body).await;
    assert!(s.error.is_some());
    let events = s.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].json()["choices"][0]["delta"]["role"], "assistant");
    // Without a stream, a cut stream is a truncated body.
    fake.push(Fault::CutStream { after: 1 });
    let resp = request(&openai_url(&fake), &[], "{}").send().await.unwrap();
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn other_faults_answer_streaming_requests_before_any_event() {
    let fake = FakeProvider::start_anthropic("claude").await;
    let url = anthropic_url(&fake);
    let mut body = anthropic_hello();
    body["stream"] = json!(true);
    let body = body.to_string();

    fake.push(Fault::status(503));
    let r = post(&url, ANTHROPIC_HEADERS, &body).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (503, Some("application/json"))
    );
    assert_eq!(r.body["error"]["type"], "api_error");

    fake.push(Fault::Overloaded);
    assert_eq!(post(&url, ANTHROPIC_HEADERS, &body).await.status, 529);

    fake.push(Fault::Reset);
    assert!(
        request(&url, ANTHROPIC_HEADERS, &body)
            .send()
            .await
            .is_err()
    );

    fake.push(Fault::delay(Duration::from_millis(150), Fault::Ok));
    let s = stream(&url, ANTHROPIC_HEADERS, &body).await;
    assert!(s.head_after >= Duration::from_millis(150));
    assert_eq!(s.events().len(), 9);

    fake.push(Fault::Hang);
    let hung = request(&url, ANTHROPIC_HEADERS, &body)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
}

// ------------------------------------------------ a hand-written client

/// Reads one response to a request on `conn`: its head and its body with the
/// chunk framing removed, and whether the framing ended properly.
async fn read_chunked_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String, bool) {
    async fn more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut tmp = [0u8; 4096];
        match conn.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }
    fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
        buf.windows(needle.len()).position(|w| w == needle)
    }
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos;
        }
        assert!(more(conn, buf).await, "connection closed in the head");
    };
    let head = String::from_utf8(buf.drain(..head_end + 4).collect()).unwrap();
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(pos) = find(buf, b"\r\n") {
                break pos;
            }
            if !more(conn, buf).await {
                return (head, String::from_utf8(body).unwrap(), false);
            }
        };
        let size_line: Vec<u8> = buf.drain(..line_end + 2).collect();
        let size = std::str::from_utf8(&size_line[..line_end]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        while buf.len() < size + 2 {
            if !more(conn, buf).await {
                return (head, String::from_utf8(body).unwrap(), false);
            }
        }
        let chunk: Vec<u8> = buf.drain(..size + 2).collect();
        assert_eq!(&chunk[size..], b"\r\n");
        if size == 0 {
            return (head, String::from_utf8(body).unwrap(), true);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn raw_request(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[tokio::test]
async fn a_connection_carries_several_streams_and_a_cut_one_ends_it() {
    let fake = FakeProvider::start_gemini("gem").await;
    fake.set_chunk_delay(Duration::ZERO);
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let body = gemini_hello().to_string();
    let mut conn = TcpStream::connect(fake.addr()).await.unwrap();
    let mut buf = Vec::new();
    for round in 1..=2 {
        conn.write_all(&raw_request(path, GEMINI_HEADERS, &body))
            .await
            .unwrap();
        let (head, text, complete) = read_chunked_response(&mut conn, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(complete, "round {round}: the last chunk ends the body");
        assert_eq!(parse_sse(&text).len(), 3);
        assert!(text.contains(&format!("\"responseId\":\"resp-{round}\"")));
    }
    // A cut stream on the same connection: two events, then EOF without the
    // last chunk.
    fake.push(Fault::CutStream { after: 2 });
    conn.write_all(&raw_request(path, GEMINI_HEADERS, &body))
        .await
        .unwrap();
    let (_, text, complete) = read_chunked_response(&mut conn, &mut buf).await;
    assert!(!complete);
    assert_eq!(parse_sse(&text).len(), 2);
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).await.unwrap_or(0), 0);
}

// ------------------------------------------------------------- Embeddings

fn base64_vector(s: &Value) -> Vec<f32> {
    switchyard::protocol::embed::decode_base64(s.as_str().expect("a base64 string")).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    let numbers = v.as_array().expect("an array of numbers");
    numbers.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn openai_embeddings_answer_as_the_api_does() {
    use common::fake::embed::{DEFAULT_DIMENSIONS, vector};
    let fake = FakeProvider::start_named("oa").await;
    let url = format!("{}/embeddings", fake.base_url());
    let r = post(
        &url,
        &[],
        &json!({"model": "text-embedding-3-small", "input": ["a", "bb"]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["model"], "text-embedding-3-small");
    assert_eq!(
        r.body["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );
    for (i, text) in ["a", "bb"].iter().enumerate() {
        let item = &r.body["data"][i];
        assert_eq!(
            (&item["object"], &item["index"]),
            (&json!("embedding"), &json!(i))
        );
        assert_eq!(floats(&item["embedding"]), vector(text, DEFAULT_DIMENSIONS));
    }
    let norm: f32 = vector("a", 64).iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-5);

    // base64 and `dimensions` as asked; `data` reversed when asked, each item keeping its index.
    fake.set_embed_shuffle(true);
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b", "c"], "dimensions": 4, "encoding_format": "base64"});
    let r = post(&url, &[], &body.to_string()).await;
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(
        data.iter()
            .map(|d| d["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1, 0]
    );
    assert_eq!(base64_vector(&data[0]["embedding"]), vector("c", 4));
    // Token arrays, one vector per array, hashed as their JSON text; the default length as set.
    fake.set_embed_shuffle(false);
    fake.set_embed_dimensions(3);
    let r = post(
        &url,
        &[],
        &json!({"model": "m", "input": [[1, 2], [3]]}).to_string(),
    )
    .await;
    assert_eq!(floats(&r.body["data"][1]["embedding"]), vector("[3]", 3));
    let r = post(
        &url,
        &[],
        &json!({"model": "m", "input": [1, 2]}).to_string(),
    )
    .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(fake.embed_inputs(), [2, 3, 2, 1]);
    assert_eq!(fake.requests()[1].inputs, Some(3));
}

#[tokio::test]
async fn openai_embeddings_refuse_what_the_api_refuses() {
    let fake = FakeProvider::start_named("oa").await;
    let url = format!("{}/embeddings", fake.base_url());
    fake.push(Fault::status(500));
    let too_many: Vec<String> = (0..2049).map(|i| format!("t{i}")).collect();
    for (body, says) in [
        (
            json!({"model": "m", "input": too_many}),
            "'$.input' is invalid",
        ),
        (
            json!({"model": "m", "input": ["a", ""]}),
            "'$.input' is invalid",
        ),
        (json!({"model": "m", "input": []}), "'$.input' is invalid"),
        (
            json!({"model": "m", "input": ["a", [1]]}),
            "'$.input' is invalid",
        ),
        (json!({"model": "m"}), "'input' is a required property"),
        (json!({"input": "a"}), "you must provide a model parameter"),
        (
            json!({"model": "text-embedding-ada-002", "input": "a", "dimensions": 256}),
            "This model does not support specifying dimensions.",
        ),
        (
            json!({"model": "m", "input": "a", "encoding_format": "int8"}),
            "'int8' is not one of ['float', 'base64'] - 'encoding_format'",
        ),
    ] {
        let r = post(&url, &[], &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(fake.pending(), 1, "refusals leave the script alone");
    assert!(fake.embed_inputs().is_empty());
    assert_eq!(fake.requests()[0].inputs, Some(2049));
    // 2048 is fine.
    fake.clear_script();
    let most: Vec<String> = (0..2048).map(|i| format!("t{i}")).collect();
    let r = post(&url, &[], &json!({"model": "m", "input": most}).to_string()).await;
    assert_eq!(
        (r.status, r.body["data"].as_array().unwrap().len()),
        (200, 2048)
    );
}

#[tokio::test]
async fn gemini_batch_embed_contents_answers_and_refuses_as_the_api_does() {
    use common::fake::embed::vector;
    let fake = FakeProvider::start_gemini("gem").await;
    let url = gemini_url(&fake, "text-embedding-004", "batchEmbedContents");
    let request = |text: &str| json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": text}]}});
    let mut short = request("b");
    short["outputDimensionality"] = json!(5);
    let body = json!({"requests": [request("a"), short]}).to_string();
    let r = post(&url, GEMINI_HEADERS, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_object().unwrap().len(),
        1,
        "no usage, no model: {}",
        r.body
    );
    assert_eq!(floats(&r.body["embeddings"][0]["values"]), vector("a", 16));
    assert_eq!(floats(&r.body["embeddings"][1]["values"]), vector("b", 5));
    assert_eq!(
        fake.requests()[0].model.as_deref(),
        Some("text-embedding-004")
    );

    let r = post(&url, &[], &body).await;
    assert_eq!(
        (r.status, &r.body["error"]["status"]),
        (403, &json!("PERMISSION_DENIED"))
    );
    let other =
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}});
    let many: Vec<Value> = (0..101).map(|i| request(&format!("t{i}"))).collect();
    for (body, says) in [
        (json!({"requests": many}), "at most 100 requests"),
        (
            json!({"requests": [request("a"), other]}),
            "requests[1].model",
        ),
        (json!({"requests": []}), "requests is not specified"),
        (
            json!({"requests": [{"model": "models/text-embedding-004", "content": {"parts": []}}]}),
            "parts must not be empty",
        ),
    ] {
        let r = post(&url, GEMINI_HEADERS, &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.body["error"]["status"], "INVALID_ARGUMENT");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(fake.embed_inputs(), [2]);
}

#[tokio::test]
async fn embeddings_take_the_scripted_faults() {
    let fake = FakeProvider::start_named("oa").await;
    let url = format!("{}/embeddings", fake.base_url());
    let body = json!({"model": "m", "input": ["a", "b"]}).to_string();
    fake.push(Fault::RateLimited {
        retry_after_secs: 3,
    });
    fake.push(Fault::WrongDimensions(3));
    fake.push(Fault::DropVector);
    fake.push(Fault::NotJson);
    fake.push(Fault::delay(Duration::from_millis(100), Fault::Ok));
    let r = post(&url, &[], &body).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("3")));
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    let r = post(&url, &[], &body).await;
    assert_eq!(r.body["data"][1]["embedding"].as_array().unwrap().len(), 3);
    let r = post(&url, &[], &body).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = post(&url, &[], &body).await;
    assert_eq!((r.status, r.body.is_null()), (200, true));
    let started = Instant::now();
    let r = post(&url, &[], &body).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(fake.calls(), 5);
}

/// The adapters and the fakes agree: what `Adapter::embed` sends, the fake takes, and what the
/// fake answers (base64 for OpenAI, floats for Gemini), the adapter reads back exactly.
#[tokio::test]
async fn adapters_read_what_the_fakes_answer() {
    use common::fake::embed::vector;
    use switchyard::protocol::EmbedInput;
    use switchyard::providers::{Adapter, embed::EmbedCall};
    for (fake, provider, model) in [
        (
            FakeProvider::start_named("oa").await,
            "openai",
            "text-embedding-3-small",
        ),
        (
            FakeProvider::start_gemini("gem").await,
            "gemini",
            "text-embedding-004",
        ),
    ] {
        fake.set_embed_shuffle(true);
        let config = format!(
            "[[deployments]]\nname = \"e\"\ngroup = \"embed\"\nprovider = \"{provider}\"\nmodel = \"{model}\"\n\
             api_base = \"{}\"\napi_key_env = \"KEY\"\nmode = \"embedding\"\ndimensions = 16\n",
            fake.base_url()
        );
        let c =
            switchyard::config::Config::parse(&config, "t.toml", &|_| Some("k".into())).unwrap();
        let adapter = Adapter::new(c.deployments[0].clone(), client());
        let inputs: Vec<EmbedInput> = ["x", "y", "z"].map(|t| EmbedInput::Text(t.into())).to_vec();
        let call = EmbedCall {
            inputs: &inputs,
            dimensions: Some(8),
            user: None,
        };
        let e = adapter.embed(&call, None).await.unwrap();
        assert_eq!(
            e.vectors,
            ["x", "y", "z"].map(|t| vector(t, 8)).to_vec(),
            "{provider}"
        );
        assert_eq!(e.model, model);
        assert_eq!(fake.embed_inputs(), [3]);
        assert!(fake.requests()[0].rejected.is_none());
    }
}
