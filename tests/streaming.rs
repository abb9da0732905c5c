//! Streaming over NATS (docs/contract.md §1): chunks on the reply subject, the closing message,
//! fallback only before the first chunk, first-token timeouts, and cut streams.

mod common;

use std::time::Duration;

use common::harness::{HELLO_STREAM, Running, ask_stream, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};

async fn setup(primary_extra: &str) -> (NatsServer, FakeProvider, FakeProvider, Running) {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let secondary = FakeProvider::start_named("secondary").await;
    let rest = "[routing]\ndefault_group = \"main\"\nfallbacks = { main = [\"backup\"] }\n";
    let deployments = format!(
        "{}{}",
        openai_deployment("primary", "main", &primary.base_url(), primary_extra),
        openai_deployment("secondary", "backup", &secondary.base_url(), "")
    );
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    (nats, primary, secondary, sy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_then_an_end_message_with_the_success_headers() {
    let (_nats, primary, secondary, sy) = setup("").await;
    let s = ask_stream(
        &sy.client,
        "chat",
        HELLO_STREAM,
        &[("Llm-Request-Id", "s-1")],
    )
    .await;
    assert_eq!(s.text(), "fake reply from primary");
    assert!(
        s.chunks.len() >= 4,
        "role, three pieces, finish: {:?}",
        s.chunks
    );
    assert!(
        s.chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let usage = &s.chunks.last().unwrap()["usage"];
    assert!(
        usage["total_tokens"].as_u64().unwrap() > 0,
        "the last chunk carries usage"
    );
    let end = &s.last;
    assert_eq!(end.header("Llm-Stream"), Some("end"));
    assert_eq!(end.header("Llm-Request-Id"), Some("s-1"));
    assert_eq!(end.served_by(), "primary");
    assert_eq!(end.attempts(), 1);
    assert!(end.header("Llm-Cost-Usd").unwrap().parse::<f64>().unwrap() > 0.0);
    assert!(end.body.is_null(), "the end message has an empty body");
    let sent = &primary.requests()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(secondary.calls(), 0);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_first_chunk_fall_back() {
    let (_nats, primary, secondary, sy) = setup("first_token_timeout = \"300ms\"").await;
    for fault in [
        Fault::status(503),
        Fault::Reset,
        Fault::StreamDelay {
            first: Duration::from_secs(3),
        },
    ] {
        primary.push(fault.clone());
        let s = ask_stream(&sy.client, "chat", HELLO_STREAM, &[]).await;
        assert_eq!(s.last.header("Llm-Stream"), Some("end"), "{fault:?}");
        assert_eq!(s.last.served_by(), "secondary", "{fault:?}");
        assert!(s.last.fallback(), "{fault:?}");
        assert_eq!(
            s.text(),
            "fake reply from secondary",
            "no chunk of the failed attempt: {fault:?}"
        );
    }
    assert_eq!(primary.calls(), 3);
    assert_eq!(secondary.calls(), 3);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_the_first_chunk_ends_in_error_without_fallback() {
    let (_nats, primary, secondary, sy) = setup("").await;
    primary.push(Fault::CutStream { after: 1 });
    let s = ask_stream(&sy.client, "chat", HELLO_STREAM, &[]).await;
    assert!(
        !s.chunks.is_empty(),
        "the chunks before the cut were delivered"
    );
    assert_eq!(s.last.header("Llm-Stream"), Some("error"));
    assert_eq!(s.last.error_kind(), "unavailable");
    assert!(
        s.last.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream broken after the first chunk"),
        "{}",
        s.last.body
    );
    assert_eq!(secondary.calls(), 0, "no fallback once chunks went out");
    let status = sy.status().await;
    assert_eq!(
        status["deployments"][0]["failures"], 1,
        "a cut stream counts for the breaker"
    );
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_candidate_fails_the_stream_closes_with_the_error() {
    let (_nats, primary, secondary, sy) = setup("").await;
    primary.push(Fault::status(500));
    secondary.push(Fault::status(502));
    let s = ask_stream(&sy.client, "chat", HELLO_STREAM, &[]).await;
    assert!(s.chunks.is_empty());
    assert_eq!(s.last.header("Llm-Stream"), Some("error"));
    assert_eq!(s.last.error_kind(), "unavailable");
    assert_eq!(
        s.last.body["error"]["attempts"].as_array().unwrap().len(),
        2
    );
    sy.shutdown().await;
}

/// The caller going away mid-stream stops the provider read: whether its side of the channel
/// closes (the sink) or its whole task is dropped, the engine hangs up on the provider, and the
/// attempt is not held against the deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_mid_stream_stops_the_provider_read() {
    use switchyard::protocol::RequestOptions;

    let (_nats, primary, secondary, sy) = setup("").await;
    for drop_task in [false, true] {
        primary.push(Fault::Trickle {
            every: Duration::from_millis(20),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let engine = sy.engine.clone();
        let task = tokio::spawn(async move {
            let body = HELLO_STREAM.as_bytes();
            engine
                .chat("chat", RequestOptions::default(), body, Some(&tx))
                .await
        });
        for _ in 0..3 {
            let chunk = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a chunk within 10 s")
                .expect("the stream is open");
            assert!(!chunk.is_empty());
        }
        if drop_task {
            task.abort();
        } else {
            drop(rx);
        }
        let hangups = if drop_task { 2 } else { 1 };
        assert!(
            primary.wait_hangups(hangups, Duration::from_secs(10)).await,
            "the provider read stopped (task dropped: {drop_task})"
        );
    }
    assert_eq!(secondary.calls(), 0);
    let status = sy.status().await;
    assert_eq!(status["deployments"][0]["failures"], 0);
    sy.shutdown().await;
}
