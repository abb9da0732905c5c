//! The Prometheus page (`[metrics] listen`): it parses as Prometheus text and its counters match
//! the requests sent.

mod common;

use std::collections::HashMap;

use common::harness::{HELLO, Running, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};

/// `name{labels} value` lines into a map; panics on a line that is not Prometheus text.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        if name_end < key.len() {
            assert!(key.ends_with('}'), "unclosed labels in {line:?}");
        }
        out.insert(
            key.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_parses_and_counts_the_requests_sent() {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rest = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let sy = Running::start(
        &nats,
        config(
            &nats.url(),
            &rest,
            &openai_deployment("primary", "main", &primary.base_url(), ""),
        ),
    )
    .await;
    primary.push(Fault::status(503));
    for _ in 0..7 {
        sy.ask("chat", HELLO, &[]).await;
    }
    let http = switchyard::providers::http::client().unwrap();
    let resp = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = parse(&resp.text().await.unwrap());
    let l = "deployment=\"primary\",group=\"main\",provider=\"openai\",mode=\"chat\"";
    assert_eq!(m["switchyard_requests_total"], 7.0);
    assert_eq!(
        m["switchyard_cluster_shared"], 1.0,
        "serve shares through the bucket"
    );
    assert_eq!(m[&format!("switchyard_deployment_calls_total{{{l}}}")], 7.0);
    assert_eq!(
        m[&format!("switchyard_deployment_failures_total{{{l}}}")],
        1.0
    );
    assert_eq!(
        m[&format!("switchyard_deployment_circuit{{{l},state=\"closed\"}}")],
        1.0
    );
    assert!(m[&format!("switchyard_deployment_cost_usd_total{{{l}}}")] > 0.0);
    // The first request met the 503 and had nowhere to fall back: one `unavailable`.
    assert_eq!(m["switchyard_errors_total{kind=\"unavailable\"}"], 1.0);
    assert_eq!(m["switchyard_errors_total{kind=\"rate_limited\"}"], 0.0);
    // Six successful calls in the latency histogram, all under a second from the local fake.
    let h = "switchyard_deployment_call_duration_seconds";
    assert_eq!(m[&format!("{h}_count{{{l}}}")], 6.0);
    assert_eq!(m[&format!("{h}_bucket{{{l},le=\"+Inf\"}}")], 6.0);
    assert_eq!(m[&format!("{h}_bucket{{{l},le=\"1\"}}")], 6.0);
    assert!(m[&format!("{h}_sum{{{l}}}")] > 0.0);
    assert!(m[&format!("switchyard_deployment_tokens_total{{{l},kind=\"prompt\"}}")] > 0.0);
    let missing = http
        .get(format!("http://127.0.0.1:{port}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    sy.shutdown().await;
}
