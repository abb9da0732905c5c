//! Requests through a real nats-server into the engine, against fake OpenAI-compatible providers
//! on 127.0.0.1 with scripted faults: the behaviour of docs/contract.md §1, §2 and §6.

mod common;

use std::time::Duration;

use common::harness::{HELLO, Running, TEST_KEY, config, next_circuit_event, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;

/// `primary` alone in group `main`, which falls back to group `backup` holding `secondary`, so the
/// order of attempts is fixed.
fn chain_config(
    nats: &NatsServer,
    primary: &FakeProvider,
    secondary: &FakeProvider,
    breaker: &str,
    primary_extra: &str,
) -> switchyard::config::Config {
    let rest = format!(
        "[routing]\ndefault_group = \"main\"\nfallbacks = {{ main = [\"backup\"] }}\n[tasks]\nchat = \"main\"\n[breaker]\n{breaker}\n"
    );
    let deployments = format!(
        "{}{}",
        openai_deployment("primary", "main", &primary.base_url(), primary_extra),
        openai_deployment("secondary", "backup", &secondary.base_url(), "")
    );
    config(&nats.url(), &rest, &deployments)
}

async fn setup(
    breaker: &str,
    primary_extra: &str,
) -> (NatsServer, FakeProvider, FakeProvider, Running) {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let secondary = FakeProvider::start_named("secondary").await;
    let cfg = chain_config(&nats, &primary, &secondary, breaker, primary_extra);
    let running = Running::start(&nats, cfg).await;
    (nats, primary, secondary, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_reply_is_a_chat_completion_with_the_contract_headers() {
    let (_nats, primary, secondary, sy) = setup("", "").await;
    let r = sy.ask("chat", HELLO, &[("Llm-Request-Id", "req-42")]).await;
    assert_eq!(r.header("Llm-Request-Id"), Some("req-42"));
    assert_eq!(r.served_by(), "primary");
    assert_eq!(r.header("Llm-Provider"), Some("openai"));
    assert_eq!(r.attempts(), 1);
    assert!(!r.fallback());
    assert!(r.header("Llm-Latency-Ms").unwrap().parse::<u64>().is_ok());
    let cost: f64 = r.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    let usage = &r.body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 1.0
        + usage["completion_tokens"].as_f64().unwrap() * 2.0)
        / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(r.body["model"], "primary-model");
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "fake reply from primary"
    );
    assert!(r.header("Llm-Error").is_none());

    // The provider got the deployment's model and key, and the caller's other fields.
    let sent = &primary.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    assert_eq!(sent.body["model"], "primary-model");
    assert_eq!(sent.body["max_tokens"], 20);
    assert_eq!(secondary.calls(), 0);

    // A request id is generated when the caller gives none.
    let r = sy.ask("chat", HELLO, &[]).await;
    assert!(r.header("Llm-Request-Id").is_some_and(|id| id.len() >= 16));
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_broken_connections_and_garbage_fall_back() {
    // A high threshold keeps the circuit closed through the whole list.
    let (_nats, primary, secondary, sy) =
        setup("failure_threshold = 100", "timeout = \"500ms\"").await;
    let faults = [
        Fault::status(500),
        Fault::status(502),
        Fault::status(503),
        Fault::status(504),
        Fault::status(529),
        Fault::NotJson,
        Fault::Reset,
        Fault::TruncatedBody,
        Fault::delay(Duration::from_secs(5), Fault::Ok),
    ];
    for (i, fault) in faults.iter().enumerate() {
        primary.push(fault.clone());
        let r = sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary", "{fault:?}: {:?}", r.body);
        assert_eq!(r.attempts(), 2, "{fault:?}");
        assert!(r.fallback(), "{fault:?}");
        assert_eq!(primary.calls(), i + 1, "{fault:?}");
        assert_eq!(secondary.calls(), i + 1, "{fault:?}");
    }
    let status = sy.status().await;
    let p = &status["deployments"][0];
    assert_eq!(p["name"], "primary");
    assert_eq!(p["failures"], faults.len());
    assert!(p["timeout_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(status["fallbacks"], faults.len());
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_auth_errors_return_at_once() {
    let (_nats, primary, secondary, sy) = setup("", "").await;
    for (code, kind) in [(400, "invalid_request"), (401, "auth"), (403, "auth")] {
        primary.push(Fault::status(code));
        let r = sy.ask("chat", HELLO, &[("Llm-Request-Id", "r1")]).await;
        assert_eq!(r.error_kind(), kind);
        let e = &r.body["error"];
        assert_eq!(e["kind"], kind);
        assert_eq!(e["status"], code);
        assert_eq!(e["request_id"], "r1");
        assert_eq!(e["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(e["attempts"][0]["deployment"], "primary");
        assert_eq!(e["attempts"][0]["status"], code);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("fake error {code}"))
        );
    }
    assert_eq!(secondary.calls(), 0, "no fallback on 400/401/403");
    // Caller errors never open the circuit: the primary still serves.
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "primary");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_fall_back_when_configured() {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let secondary = FakeProvider::start_named("secondary").await;
    let mut cfg = chain_config(&nats, &primary, &secondary, "", "");
    cfg.routing.fallback_on_auth = true;
    let sy = Running::start(&nats, cfg).await;
    primary.push(Fault::status(401));
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "secondary");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_falls_back_without_counting_for_the_breaker() {
    let (_nats, primary, secondary, sy) = setup("failure_threshold = 1", "").await;
    primary.set_default(Fault::status(404));
    for i in 1..=3 {
        let r = sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary");
        assert_eq!(
            primary.calls(),
            i,
            "the circuit stays closed: the primary is still called"
        );
    }
    assert_eq!(sy.status().await["deployments"][0]["circuit"], "closed");
    // When every candidate says 404, the kind is not_found.
    secondary.set_default(Fault::status(404));
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.error_kind(), "not_found");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_cools_the_deployment_down() {
    let (_nats, primary, secondary, sy) = setup("", "").await;
    primary.push(Fault::RateLimited {
        retry_after_secs: 30,
    });
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "secondary");
    assert!(r.fallback());
    for _ in 0..3 {
        let r = sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary");
        assert!(r.fallback(), "the request left its first group");
        assert_eq!(
            r.attempts(),
            1,
            "the cooling primary was skipped, not called"
        );
    }
    assert_eq!(primary.calls(), 1);
    let cooldown = sy.status().await["deployments"][0]["cooldown_s"]
        .as_f64()
        .unwrap();
    assert!(cooldown > 25.0 && cooldown <= 30.0, "{cooldown}");

    // Every candidate limited: rate_limited, with the last status seen.
    secondary.push(Fault::RateLimited {
        retry_after_secs: 30,
    });
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.error_kind(), "rate_limited");
    assert_eq!(r.body["error"]["status"], 429);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_opens_after_three_failures_and_recovers_through_half_open() {
    let (nats, primary, secondary, sy) = setup("reset_timeout = \"1s\"", "").await;
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut events = watcher.subscribe("llm.status.events").await.unwrap();
    watcher.flush().await.unwrap();

    primary.set_default(Fault::status(503));
    for _ in 0..3 {
        assert_eq!(sy.ask("chat", HELLO, &[]).await.served_by(), "secondary");
    }
    assert_eq!(
        next_circuit_event(&mut events, "primary", Duration::from_secs(5)).await,
        Some(("closed".into(), "open".into()))
    );
    for _ in 0..5 {
        let r = sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary");
        assert_eq!(r.attempts(), 1);
    }
    assert_eq!(primary.calls(), 3, "no calls while the circuit is open");
    assert_eq!(sy.status().await["deployments"][0]["circuit"], "open");

    primary.set_default(Fault::Ok);
    assert_eq!(
        next_circuit_event(&mut events, "primary", Duration::from_secs(5)).await,
        Some(("open".into(), "half_open".into()))
    );
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "primary", "the half-open probe");
    assert_eq!(
        next_circuit_event(&mut events, "primary", Duration::from_secs(5)).await,
        Some(("half_open".into(), "closed".into()))
    );
    assert_eq!(primary.calls(), 4);
    assert_eq!(secondary.calls(), 8);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens_the_circuit() {
    let (nats, primary, _secondary, sy) = setup("reset_timeout = \"500ms\"", "").await;
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut events = watcher.subscribe("llm.status.events").await.unwrap();
    watcher.flush().await.unwrap();
    primary.set_default(Fault::status(500));
    for _ in 0..3 {
        sy.ask("chat", HELLO, &[]).await;
    }
    let mut next =
        async || next_circuit_event(&mut events, "primary", Duration::from_secs(5)).await;
    assert_eq!(next().await, Some(("closed".into(), "open".into())));
    assert_eq!(next().await, Some(("open".into(), "half_open".into())));
    assert_eq!(sy.ask("chat", HELLO, &[]).await.served_by(), "secondary");
    assert_eq!(next().await, Some(("half_open".into(), "open".into())));
    assert_eq!(primary.calls(), 4);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_its_rpm_limit_is_skipped_not_called() {
    let (_nats, primary, secondary, sy) = setup("", "rpm = 3").await;
    let mut served = Vec::new();
    for _ in 0..8 {
        served.push(sy.ask("chat", HELLO, &[]).await.served_by().to_string());
    }
    assert_eq!(primary.calls(), 3);
    assert_eq!(secondary.calls(), 5);
    assert_eq!(&served[..3], ["primary", "primary", "primary"]);
    let p = &sy.status().await["deployments"][0];
    assert_eq!(
        (p["rpm_used"].as_u64(), p["rpm_limit"].as_u64()),
        (Some(3), Some(3))
    );
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_the_whole_request_and_is_no_breaker_failure() {
    let (_nats, primary, secondary, sy) = setup("failure_threshold = 1", "").await;
    primary.set_default(Fault::delay(Duration::from_secs(10), Fault::Ok));
    let started = std::time::Instant::now();
    let r = sy.ask("chat", HELLO, &[("Llm-Deadline", "400ms")]).await;
    let took = started.elapsed();
    assert_eq!(r.error_kind(), "timeout");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(r.body["error"]["attempts"][0]["deployment"], "primary");
    assert_eq!(secondary.calls(), 0);
    let p = &sy.status().await["deployments"][0];
    assert_eq!(p["circuit"], "closed");
    assert_eq!(p["failures"], 0);
    // A bad deadline is the caller's error.
    let r = sy.ask("chat", HELLO, &[("Llm-Deadline", "soonish")]).await;
    assert_eq!(r.error_kind(), "invalid_request");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_invalid_request_and_the_engine_keeps_serving() {
    let (_nats, primary, _secondary, sy) = setup("", "").await;
    for body in [
        "",
        "{not json",
        "[1,2,3]",
        r#"{"messages":[]}"#,
        r#"{"messages":[{"role":"user"}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":"warm"}"#,
    ] {
        let r = sy.ask("chat", body, &[("Llm-Request-Id", "bad-1")]).await;
        assert_eq!(r.error_kind(), "invalid_request", "{body:?}");
        assert_eq!(r.body["error"]["kind"], "invalid_request");
        assert_eq!(r.body["error"]["request_id"], "bad-1");
        assert!(r.body["error"]["status"].is_null());
    }
    let r = sy.ask("chat", HELLO, &[("Llm-Strategy", "fastest")]).await;
    assert_eq!(r.error_kind(), "invalid_request");
    assert_eq!(primary.calls(), 0, "nothing invalid reached a provider");
    assert_eq!(sy.ask("chat", HELLO, &[]).await.served_by(), "primary");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_candidate_fails_the_error_lists_each_attempt() {
    let (_nats, primary, secondary, sy) = setup("", "").await;
    primary.push(Fault::status(503));
    secondary.push(Fault::status(502));
    let r = sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.error_kind(), "unavailable");
    let e = &r.body["error"];
    assert_eq!(e["status"], 502, "the last status seen");
    let attempts = e["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["deployment"], "primary");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[1]["deployment"], "secondary");
    assert!(attempts[1]["latency_ms"].as_u64().unwrap() >= 1);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_task_model_and_default_group() {
    let (_nats, _primary, _secondary, sy) = setup("", "").await;
    // `model` naming a group pins the route.
    let body = r#"{"model":"backup","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(sy.ask("chat", body, &[]).await.served_by(), "secondary");
    // ... and naming a deployment pins that deployment.
    let body = r#"{"model":"secondary","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(sy.ask("whatever", body, &[]).await.served_by(), "secondary");
    // An unknown task uses the default group.
    assert_eq!(
        sy.ask("unknown-task", HELLO, &[]).await.served_by(),
        "primary"
    );
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_the_snapshot_of_every_deployment() {
    let (_nats, _primary, _secondary, sy) = setup("", "rpm = 100\ntpm = 50000").await;
    for _ in 0..3 {
        sy.ask("chat", HELLO, &[]).await;
    }
    let s = sy.status().await;
    assert_eq!(s["instance"], "test-1");
    assert!(s["uptime_s"].is_u64());
    assert_eq!(s["requests"], 3);
    assert_eq!(s["fallbacks"], 0);
    assert_eq!(s["fallback_ratio"], 0.0);
    assert!(s["alerts"].is_array());
    let p = &s["deployments"][0];
    for key in [
        "name",
        "group",
        "provider",
        "model",
        "circuit",
        "in_flight",
        "rpm_used",
        "rpm_limit",
        "tpm_used",
        "tpm_limit",
        "latency_ms",
        "error_rate",
        "timeout_rate",
        "requests",
        "failures",
        "cost_usd",
    ] {
        assert!(!p[key].is_null(), "{key} missing in {p}");
    }
    assert_eq!(p["requests"], 3);
    assert_eq!(p["rpm_used"], 3);
    assert_eq!(p["rpm_limit"], 100);
    assert!(p["tpm_used"].as_u64().unwrap() > 0);
    assert!(p["latency_ms"]["p95"].as_f64().unwrap() >= p["latency_ms"]["p50"].as_f64().unwrap());
    assert!(p["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(s["deployments"][1]["requests"], 0);

    // Every instance answers: the status subject has no queue group.
    let second = Running::start_second(&sy, "test-2").await;
    let inbox = sy.client.new_inbox();
    let mut sub = sy.client.subscribe(inbox.clone()).await.unwrap();
    sy.client
        .publish_with_reply("llm.status", inbox, "".into())
        .await
        .unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        instances.push(v["instance"].as_str().unwrap().to_string());
    }
    instances.sort();
    assert_eq!(instances, ["test-1", "test-2"]);
    second.shutdown().await;
    sy.shutdown().await;
}
