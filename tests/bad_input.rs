//! Hostile and broken input on every subject (docs/contract.md §8): each message gets exactly one
//! reply (or one stored result for a job) of the right kind, nothing panics, and a normal request
//! is served afterwards. The NATS server's `max_payload` is raised so that a 5 MB body reaches
//! the engine, which refuses it by `limits.max_body`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::harness::{self, HELLO, Running, openai_deployment};
use common::jobs::{read_result, wait_jobs_ready};
use common::{FakeProvider, NatsServer};
use serde_json::Value;

/// Panics anywhere in this process, counted by a hook installed before the engine starts.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Served,
    Kind(&'static str),
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    expect: Expect,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        body: body.into(),
        headers: Vec::new(),
        expect,
    }
}

fn header_case(name: &'static str, header: &'static str, value: &str, expect: Expect) -> Case {
    Case {
        name,
        body: HELLO.into(),
        headers: vec![(header, value.to_string())],
        expect,
    }
}

const INVALID: Expect = Expect::Kind("invalid_request");

fn cases() -> Vec<Case> {
    let deep = format!(
        "{{\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let many: Vec<Value> = (0..10_000)
        .map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")}))
        .collect();
    let many = serde_json::json!({"messages": many, "max_tokens": 5}).to_string();
    let big = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(5_000_000)
    );
    vec![
        case("empty body", "", INVALID),
        case(
            "invalid UTF-8",
            b"{\"messages\":\xff\xfe}".to_vec(),
            INVALID,
        ),
        case("a JSON array", "[1,2,3]", INVALID),
        case("messages is a string", r#"{"messages":"hi"}"#, INVALID),
        case(
            "a role that is a number",
            r#"{"messages":[{"role":5}]}"#,
            INVALID,
        ),
        case(
            "max_tokens is text",
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
            INVALID,
        ),
        case(
            "NaN temperature",
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}"#,
            INVALID,
        ),
        case("a 5 MB body", big, INVALID),
        case("100k-deep nesting", deep, INVALID),
        case("10k messages", many, Expect::Served),
        header_case(
            "a deadline of 300000000000y",
            "Llm-Deadline",
            "300000000000y",
            Expect::Served,
        ),
        header_case("a negative deadline", "Llm-Deadline", "-1s", INVALID),
        header_case("a garbage deadline", "Llm-Deadline", "garbage", INVALID),
        header_case("a NaN cost cap", "Llm-Max-Cost-Usd", "NaN", INVALID),
        header_case("a negative cost cap", "Llm-Max-Cost-Usd", "-1", INVALID),
        header_case("an unknown strategy", "Llm-Strategy", "fastest", INVALID),
        header_case(
            "a 10k-character request id",
            "Llm-Request-Id",
            &"x".repeat(10_000),
            INVALID,
        ),
    ]
}

fn headers_of(c: &Case) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &c.headers {
        h.insert(*k, v.as_str());
    }
    h
}

fn outcome(headers: Option<&HeaderMap>, body: &[u8]) -> Expect {
    match headers.and_then(|h| h.get("Llm-Error")) {
        Some(kind) => match kind.as_str() {
            "invalid_request" => INVALID,
            other => panic!(
                "unexpected error kind {other}: {}",
                String::from_utf8_lossy(body)
            ),
        },
        None => {
            let v: Value = serde_json::from_slice(body).expect("a success reply is JSON");
            assert_eq!(v["object"], "chat.completion", "{v}");
            Expect::Served
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_on_every_subject_gets_one_reply_and_nothing_panics() {
    count_panics();
    let nats = NatsServer::start_with_max_payload(8 << 20);
    let upstream = FakeProvider::start().await;
    let config = harness::config(
        &nats.url(),
        "",
        &openai_deployment("primary", "chat", &upstream.base_url(), ""),
    );
    let running = Running::start(&nats, config).await;
    let client = running.client.clone();
    let js = jetstream::new(client.clone());
    wait_jobs_ready(&js).await;

    for c in cases() {
        // llm.chat.<task>, on a known task and on an unknown one (the default group).
        for subject in ["llm.chat.chat", "llm.chat.no-such-task"] {
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                client.request_with_headers(subject, headers_of(&c), c.body.clone().into()),
            )
            .await
            .unwrap_or_else(|_| panic!("{}: no reply on {subject} within 30 s", c.name))
            .unwrap_or_else(|e| panic!("{}: {subject}: {e}", c.name));
            let got = outcome(reply.headers.as_ref(), &reply.payload);
            assert_eq!(got, c.expect, "{} on {subject}", c.name);
            if got != Expect::Served {
                let v: Value = serde_json::from_slice(&reply.payload).expect("error JSON");
                assert!(
                    v["error"]["request_id"]
                        .as_str()
                        .is_some_and(|id| !id.is_empty()),
                    "{}: {v}",
                    c.name
                );
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.len() < 1000),
                    "{}: the error quotes the input at length",
                    c.name
                );
            }
        }

        // llm.submit.<task>: one stored result each, of the same kind.
        let id = format!(
            "bad-{}",
            c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "-")
        );
        let mut h = headers_of(&c);
        h.insert("Nats-Msg-Id", id.as_str());
        js.publish_with_headers("llm.submit.chat", h, c.body.clone().into())
            .await
            .expect("publish a job")
            .await
            .expect("the job is stored");
        let result = read_result(&js, &format!("llm.result.{id}"), Duration::from_secs(30)).await;
        assert_eq!(
            outcome(result.headers.as_ref(), &result.payload),
            c.expect,
            "{} as a job",
            c.name
        );

        // llm.status answers whatever the body says.
        let status = client
            .request_with_headers("llm.status", headers_of(&c), c.body.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{}: status: {e}", c.name));
        let v: Value = serde_json::from_slice(&status.payload).expect("status JSON");
        assert_eq!(v["instance"], "test-1", "{}", c.name);

        // llm.batch.submit refuses every one of these bodies, none of which is a batch.
        let batch = client
            .request("llm.batch.submit", c.body.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{}: batch submit: {e}", c.name));
        let v: Value = serde_json::from_slice(&batch.payload).expect("batch reply JSON");
        assert_eq!(v["error"]["kind"], "invalid_request", "{}: {v}", c.name);
        assert_eq!(
            batch
                .headers
                .as_ref()
                .and_then(|h| h.get("Llm-Error"))
                .map(|v| v.as_str()),
            Some("invalid_request"),
            "{}",
            c.name
        );
    }

    // Batches that no instance holds: `not_found`, after the holders had their chance.
    for subject in ["llm.batch.no-such-batch.status", "llm.batch.x.cancel"] {
        let reply = client
            .request(subject, "garbage".into())
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let kind = reply.headers.as_ref().and_then(|h| h.get("Llm-Error"));
        assert_eq!(kind.map(|k| k.as_str()), Some("not_found"), "{subject}");
    }

    // Still serving, and nothing panicked along the way.
    let reply = running.ask("chat", HELLO, &[]).await;
    assert_eq!(reply.served_by(), "primary");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
    running.shutdown().await;
}
