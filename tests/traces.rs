//! Trace export (feature `otlp`) as a collector receives it: the real `switchyard serve`, built
//! with the feature, sends its spans over OTLP/HTTP to a receiver in this test, which decodes them
//! with the official protobuf definitions. Three requests — served at once, served after a
//! fallback, served by nobody — are checked for span names and kinds, parent links, attribute
//! types and values, and status; and nothing but our spans may arrive.
//!
//! Run with `cargo test --features otlp --test traces -- --nocapture` to see the traces printed
//! the way the README shows them.
#![cfg(feature = "otlp")]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as Code;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

use common::harness::{ask, ask_stream, openai_deployment, request};
use common::{FakeProvider, Fault, NatsServer};

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello there"}],"max_tokens":32,"temperature":0.5}"#;

/// What the receiver got: every span, with its resource's `service.name` and its scope's name.
#[derive(Default)]
struct Received {
    spans: Vec<(String, String, Span)>,
    /// Requests that were not an OTLP/HTTP protobuf trace export.
    refused: Vec<String>,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1:0: `POST /v1/traces` with
/// `application/x-protobuf`, answered with an empty `ExportTraceServiceResponse`.
async fn receiver() -> (u16, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let handle = move |req: Request<Incoming>| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(export(req, &store).await) }
                };
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    (port, received)
}

async fn export(req: Request<Incoming>, store: &Mutex<Received>) -> Response<Full<Bytes>> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let head = format!("{} {} ({content_type})", req.method(), req.uri().path());
    let ok = req.method() == hyper::Method::POST
        && req.uri().path() == "/v1/traces"
        && content_type == "application/x-protobuf";
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = match body {
        Ok(b) if ok => ExportTraceServiceRequest::decode(b).map_err(|e| e.to_string()),
        Ok(_) => Err("not an OTLP/HTTP protobuf trace export".into()),
        Err(e) => Err(e.to_string()),
    };
    let mut store = store.lock().unwrap();
    match decoded {
        Ok(export) => {
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| show(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                    for span in ss.spans {
                        store.spans.push((service.clone(), scope.clone(), span));
                    }
                }
            }
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-protobuf"),
            );
            r
        }
        Err(e) => {
            store.refused.push(format!("{head}: {e}"));
            let mut r = Response::new(Full::new(Bytes::from(e)));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    }
}

/// An attribute value as a collector shows it, with its OTLP type.
fn show(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => format!("{s:?}"),
        Some(Value::IntValue(i)) => format!("Int({i})"),
        Some(Value::DoubleValue(d)) => format!("Double({d})"),
        Some(Value::BoolValue(b)) => format!("Bool({b})"),
        other => format!("{other:?}"),
    }
}

/// What the README's Traces section lists: on the request span, on attempt spans, and what the
/// tracing bridge adds to every span. Nothing else may arrive.
const REQUEST_KEYS: &[&str] = &[
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.system",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "llm.request_id",
    "llm.task",
    "llm.deployment",
    "llm.attempts",
    "llm.fallback",
    "llm.cost_usd",
    "error.type",
];
const ATTEMPT_KEYS: &[&str] = &[
    "gen_ai.operation.name",
    "gen_ai.system",
    "gen_ai.request.model",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "server.address",
    "server.port",
    "llm.deployment",
    "llm.attempt",
    "llm.inputs",
    "http.response.status_code",
    "error.type",
];
const BRIDGE_KEYS: &[&str] = &[
    "code.file.path",
    "code.line.number",
    "code.module.name",
    "target",
    "thread.id",
    "thread.name",
    "busy_ns",
    "idle_ns",
];

fn check_keys(span: &Span, ours: &[&str]) {
    for key in attrs(span).keys() {
        assert!(
            ours.contains(key) || BRIDGE_KEYS.contains(key),
            "{}: {key} is not in the README",
            span.name
        );
    }
}

fn attrs(span: &Span) -> BTreeMap<&str, Option<&Value>> {
    span.attributes
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
            )
        })
        .collect()
}

fn int(span: &Span, key: &str) -> i64 {
    match attrs(span).get(key) {
        Some(Some(Value::IntValue(i))) => *i,
        other => panic!("{} {key}: want an Int, got {other:?}", span.name),
    }
}

fn string<'a>(span: &'a Span, key: &str) -> &'a str {
    let found = span.attributes.iter().find(|kv| kv.key == key);
    match found.and_then(|kv| kv.value.as_ref()?.value.as_ref()) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{} {key}: want a string, got {other:?}", span.name),
    }
}

fn status(span: &Span) -> (Code, &str) {
    let s = span.status.as_ref();
    let code = s.map_or(0, |s| s.code);
    (
        Code::try_from(code).unwrap(),
        s.map_or("", |s| s.message.as_str()),
    )
}

/// One trace: the request's span and its attempts' spans, in start order.
struct Trace<'a> {
    request: &'a Span,
    attempts: Vec<&'a Span>,
}

impl Trace<'_> {
    /// The trace as a collector lists it: each span with its kind, status and typed attributes.
    fn print(&self) {
        for (depth, span) in std::iter::once(self.request)
            .chain(self.attempts.iter().copied())
            .enumerate()
        {
            let indent = if depth == 0 { "" } else { "  └ " };
            let kind = SpanKind::try_from(span.kind).unwrap().as_str_name();
            let (code, message) = status(span);
            let ms = span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano)
                / 1_000_000;
            let message = if message.is_empty() {
                String::new()
            } else {
                format!(" {message:?}")
            };
            println!(
                "{indent}{} [{}] status={}{message} ({ms} ms)",
                span.name,
                kind.trim_start_matches("SPAN_KIND_"),
                code.as_str_name().trim_start_matches("STATUS_CODE_"),
            );
            let pad = if depth == 0 { "    " } else { "        " };
            for (key, value) in attrs(span) {
                println!("{pad}{key} = {}", show(value));
            }
        }
    }
}

/// The request spans with llm.request_id `id` and its attempts; checks the links and kinds.
fn trace<'a>(spans: &'a [&'a Span], id: &str) -> Trace<'a> {
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.parent_span_id.is_empty()
                && s.attributes.iter().any(|kv| {
                    kv.key == "llm.request_id"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(Value::StringValue(v)) if v == id)
                })
        })
        .collect();
    assert_eq!(roots.len(), 1, "one request span for {id}");
    let request = *roots[0];
    // `chat`, or `embeddings` for llm.embed.* requests: the operation names the span.
    let operation = string(request, "gen_ai.operation.name");
    assert_eq!(request.name, operation);
    assert_eq!(request.kind, SpanKind::Server as i32);
    check_keys(request, REQUEST_KEYS);
    let mut attempts: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.trace_id == request.trace_id && s.span_id != request.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    for a in &attempts {
        assert_eq!(
            a.parent_span_id, request.span_id,
            "{id}: {} is a child",
            a.name
        );
        assert_eq!(a.kind, SpanKind::Client as i32);
        check_keys(a, ATTEMPT_KEYS);
        assert_eq!(
            a.name,
            format!("{operation} {}", string(a, "gen_ai.request.model"))
        );
        assert_eq!(string(a, "gen_ai.operation.name"), operation);
    }
    Trace { request, attempts }
}

/// The attributes every attempt span carries, whatever its outcome.
fn check_attempt(span: &Span, deployment: &str, attempt: i64, fake: &FakeProvider) {
    assert_eq!(span.name, format!("chat {deployment}-model"));
    assert_eq!(string(span, "gen_ai.operation.name"), "chat");
    assert_eq!(string(span, "gen_ai.system"), "openai");
    assert_eq!(string(span, "llm.deployment"), deployment);
    assert_eq!(int(span, "llm.attempt"), attempt);
    assert_eq!(int(span, "gen_ai.request.max_tokens"), 32);
    assert!(matches!(
        attrs(span).get("gen_ai.request.temperature"),
        Some(Some(Value::DoubleValue(t))) if *t == 0.5
    ));
    assert_eq!(string(span, "server.address"), "127.0.0.1");
    assert_eq!(int(span, "server.port"), i64::from(fake.addr().port()));
}

fn check_answered(span: &Span) {
    assert_eq!(int(span, "http.response.status_code"), 200);
    assert!(int(span, "gen_ai.usage.input_tokens") > 0);
    assert!(int(span, "gen_ai.usage.output_tokens") > 0);
    assert!(!attrs(span).contains_key("error.type"), "{span:?}");
    assert_ne!(status(span).0, Code::Error, "{span:?}");
}

fn check_failed(span: &Span, code: i64) {
    assert_eq!(int(span, "http.response.status_code"), code);
    assert_eq!(string(span, "error.type"), "http_status");
    let (status, message) = status(span);
    assert_eq!(status, Code::Error);
    assert!(message.starts_with(&format!("HTTP {code}")), "{message}");
}

struct Serve {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_gets_typed_genai_spans_with_error_status_and_nothing_else() {
    let (port, received) = receiver().await;
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let secondary = FakeProvider::start_named("secondary").await;
    // `primary` alone in `main`, which falls back to `backup` holding `secondary`: attempts come
    // in a fixed order. A breaker that stays closed through the two failures scripted below.
    let text = format!(
        "[nats]\nurl = \"{}\"\n[storage]\npath = \":memory:\"\n[routing]\ndefault_group = \"main\"\nfallbacks = {{ main = [\"backup\"] }}\n[tasks]\nchat = \"main\"\nembed = \"embed\"\n[breaker]\nfailure_threshold = 10\n{}{}{}",
        nats.url(),
        openai_deployment("primary", "main", &primary.base_url(), ""),
        openai_deployment("secondary", "backup", &secondary.base_url(), ""),
        // The embeddings endpoint of the same fake, for an `embeddings` trace.
        openai_deployment(
            "embedder",
            "embed",
            &secondary.base_url(),
            "mode = \"embedding\"\ndimensions = 16\n"
        ),
    )
    .replace("TEST_KEY_ENV", "TRACES_TEST_KEY");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("TRACES_TEST_KEY", common::harness::TEST_KEY)
        // Info lets ractor's `Actor` spans through the global filter: only the OTLP layer's own
        // filter may keep them out.
        .env("RUST_LOG", "info")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve { child, _dir: dir };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut ready = false;
    for _ in 0..250 {
        let status = client.request("llm.status", "".into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), status).await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "switchyard serve did not come up");

    let r = ask(&client, "chat", BODY, &[("Llm-Request-Id", "plain")]).await;
    assert_eq!(r.served_by(), "primary", "{}", r.body);
    primary.push(Fault::status(503));
    let r = ask(&client, "chat", BODY, &[("Llm-Request-Id", "fallback")]).await;
    assert_eq!(r.served_by(), "secondary", "{}", r.body);
    primary.push(Fault::status(503));
    secondary.push(Fault::status(502));
    let r = ask(&client, "chat", BODY, &[("Llm-Request-Id", "down")]).await;
    assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    let streamed_body = BODY.replacen('{', r#"{"stream":true,"#, 1);
    let s = ask_stream(
        &client,
        "chat",
        &streamed_body,
        &[("Llm-Request-Id", "streamed")],
    )
    .await;
    assert!(!s.chunks.is_empty(), "no chunk streamed");
    assert_eq!(s.last.header("Llm-Stream"), Some("end"), "{}", s.last.body);
    let e = request(
        &client,
        "llm.embed.embed",
        r#"{"input":["one text","another"]}"#,
        &[("Llm-Request-Id", "embedded")],
    )
    .await;
    assert_eq!(e.served_by(), "embedder", "{}", e.body);

    // SIGTERM: the exporter's guard flushes the batched spans before the process exits.
    let ok = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let exit = tokio::task::spawn_blocking(move || serve.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");

    let received = received.lock().unwrap();
    assert!(received.refused.is_empty(), "{:?}", received.refused);
    for (service, scope, span) in &received.spans {
        assert_eq!(service, "\"switchyard\"");
        assert_eq!(scope, "switchyard");
        assert!(
            ["chat", "embeddings"]
                .iter()
                .any(|op| span.name == *op || span.name.starts_with(&format!("{op} "))),
            "only our spans are exported, got {:?} {:?}",
            span.name,
            attrs(span)
        );
    }
    let spans: Vec<&Span> = received.spans.iter().map(|(_, _, s)| s).collect();
    // One request span each, with one attempt (plain, streamed, embedded) and two (fallback,
    // down): nothing else.
    assert_eq!(
        spans.len(),
        5 + 1 + 2 + 2 + 1 + 1,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // Served at once.
    let plain = trace(&spans, "plain");
    println!("plain request:");
    plain.print();
    let req = plain.request;
    assert_eq!(string(req, "gen_ai.operation.name"), "chat");
    assert_eq!(string(req, "llm.task"), "chat");
    assert_eq!(string(req, "gen_ai.request.model"), "gpt-4o");
    assert_eq!(string(req, "gen_ai.response.model"), "primary-model");
    assert_eq!(string(req, "gen_ai.system"), "openai");
    assert_eq!(string(req, "llm.deployment"), "primary");
    assert_eq!(int(req, "llm.attempts"), 1);
    assert!(matches!(
        attrs(req).get("llm.fallback"),
        Some(Some(Value::BoolValue(false)))
    ));
    assert!(matches!(
        attrs(req).get("llm.cost_usd"),
        Some(Some(Value::DoubleValue(_)))
    ));
    assert!(!attrs(req).contains_key("error.type"));
    assert_ne!(status(req).0, Code::Error);
    let [attempt] = plain.attempts[..] else {
        panic!("one attempt: {:?}", plain.attempts);
    };
    check_attempt(attempt, "primary", 1, &primary);
    check_answered(attempt);
    assert_eq!(string(attempt, "gen_ai.response.model"), "primary-model");
    // The request's tokens are its attempt's.
    for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        assert_eq!(int(req, key), int(attempt, key), "{key}");
    }

    // Served after a fallback: the failed attempt is an error, the request is not.
    let fallback = trace(&spans, "fallback");
    println!("\nfallback (primary answers 503, secondary serves):");
    fallback.print();
    let req = fallback.request;
    assert_eq!(string(req, "llm.deployment"), "secondary");
    assert_eq!(int(req, "llm.attempts"), 2);
    assert!(matches!(
        attrs(req).get("llm.fallback"),
        Some(Some(Value::BoolValue(true)))
    ));
    assert!(int(req, "gen_ai.usage.input_tokens") > 0);
    assert!(!attrs(req).contains_key("error.type"));
    assert_ne!(status(req).0, Code::Error);
    let [first, second] = fallback.attempts[..] else {
        panic!("two attempts: {:?}", fallback.attempts);
    };
    check_attempt(first, "primary", 1, &primary);
    check_failed(first, 503);
    check_attempt(second, "secondary", 2, &secondary);
    check_answered(second);

    // Served by nobody: every span an error.
    let down = trace(&spans, "down");
    println!("\ntotal failure (primary 503, secondary 502):");
    down.print();
    let req = down.request;
    assert_eq!(string(req, "error.type"), "unavailable");
    assert_eq!(int(req, "llm.attempts"), 2);
    assert_eq!(status(req).0, Code::Error);
    assert!(!status(req).1.is_empty());
    assert!(!attrs(req).contains_key("gen_ai.usage.input_tokens"));
    let [first, second] = down.attempts[..] else {
        panic!("two attempts: {:?}", down.attempts);
    };
    check_attempt(first, "primary", 1, &primary);
    check_failed(first, 503);
    check_attempt(second, "secondary", 2, &secondary);
    check_failed(second, 502);

    // Streamed: the same types on the streaming path, tokens from the stream's usage.
    let streamed = trace(&spans, "streamed");
    println!("\nstreamed request:");
    streamed.print();
    let req = streamed.request;
    assert_eq!(string(req, "llm.deployment"), "primary");
    assert_eq!(int(req, "llm.attempts"), 1);
    assert!(int(req, "gen_ai.usage.input_tokens") > 0);
    assert!(int(req, "gen_ai.usage.output_tokens") > 0);
    assert_ne!(status(req).0, Code::Error);
    let [attempt] = streamed.attempts[..] else {
        panic!("one attempt: {:?}", streamed.attempts);
    };
    check_attempt(attempt, "primary", 1, &primary);
    check_answered(attempt);

    // Embeddings: the same two spans, named by their operation; no output tokens.
    let embedded = trace(&spans, "embedded");
    println!("\nembeddings request:");
    embedded.print();
    let req = embedded.request;
    assert_eq!(string(req, "llm.task"), "embed");
    assert_eq!(string(req, "llm.deployment"), "embedder");
    assert_eq!(string(req, "gen_ai.response.model"), "embedder-model");
    assert!(int(req, "gen_ai.usage.input_tokens") > 0);
    assert_eq!(int(req, "gen_ai.usage.output_tokens"), 0);
    assert_ne!(status(req).0, Code::Error);
    let [attempt] = embedded.attempts[..] else {
        panic!("one attempt: {:?}", embedded.attempts);
    };
    assert_eq!(string(attempt, "llm.deployment"), "embedder");
    assert_eq!(int(attempt, "llm.inputs"), 2);
    assert_eq!(int(attempt, "http.response.status_code"), 200);
    assert_eq!(string(attempt, "server.address"), "127.0.0.1");
    assert!(int(attempt, "gen_ai.usage.input_tokens") > 0);
    assert!(!attrs(attempt).contains_key("error.type"));
}
