//! The OpenAI-compatible HTTP door, driven with reqwest against the real engine behind
//! `ingress::run_with` (a real nats-server, fake providers speaking OpenAI's wire format): what a
//! client of `POST /v1/chat/completions`, `GET /v1/models` and the health endpoints sees.

mod common;

use std::time::Duration;

use common::harness::{Running, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HI: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

fn body(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

async fn post(base: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("response")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON body")
}

/// `GET /v1/models` as the holder of `authorization` sees it.
async fn models(base: &str, authorization: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/models"))
        .header("authorization", authorization)
        .send()
        .await
        .expect("response");
    json_of(r).await
}

/// The SSE `data:` payloads of a whole stream.
async fn events(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.expect("stream");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

type Door = (NatsServer, FakeProvider, FakeProvider, Running, String);

/// The door in front of two fakes, `a` and `b`: `deployments` is given their base URLs, `rest`
/// is the config's other sections.
async fn with_fakes(rest: &str, deployments: impl FnOnce(&str, &str) -> String) -> Door {
    let nats = NatsServer::start();
    let (a, b) = (
        FakeProvider::start_named("a").await,
        FakeProvider::start_named("b").await,
    );
    let deployments = deployments(&a.base_url(), &b.base_url());
    let c = config(&nats.url(), rest, &deployments);
    let (running, base) = Running::start_http(&nats, c, "http-1").await;
    (nats, a, b, running, base)
}

async fn two_deployments(rest: &str) -> Door {
    let rest = format!(
        "[routing]\nfallbacks = {{ chat = [\"spare\"] }}\n[tasks]\nsummary = \"spare\"\n{rest}"
    );
    with_fakes(&rest, |a, b| {
        openai_deployment("primary", "chat", a, "") + &openai_deployment("backup", "spare", b, "")
    })
    .await
}

#[tokio::test]
async fn a_completion_carries_the_llm_headers_and_model_picks_deployment_group_or_task() {
    let (_nats, a, b, running, base) = two_deployments("").await;
    let r = post(&base, &body("chat", false), &[("Llm-Request-Id", "r-1")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "llm-request-id"), Some("r-1"));
    assert_eq!(header(&r, "llm-deployment"), Some("primary"));
    assert_eq!(header(&r, "llm-provider"), Some("openai"));
    assert_eq!(header(&r, "llm-attempts"), Some("1"));
    assert_eq!(header(&r, "llm-fallback"), Some("false"));
    assert!(
        header(&r, "llm-cost-usd").is_some_and(|c| c != "0"),
        "a paid call costs"
    );
    assert!(header(&r, "llm-latency-ms").is_some());
    let reply = json_of(r).await;
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "fake reply from a"
    );

    // A deployment, a task, no model at all, and a name that is none of them.
    let r = post(&base, &body("backup", false), &[]).await;
    assert_eq!(header(&r, "llm-deployment"), Some("backup"));
    let r = post(&base, &body("summary", false), &[]).await;
    assert_eq!(
        header(&r, "llm-deployment"),
        Some("backup"),
        "task summary → group spare"
    );
    let r = post(&base, HI, &[]).await;
    assert_eq!(
        header(&r, "llm-deployment"),
        Some("primary"),
        "the default group"
    );
    let r = post(&base, &body("gpt-17", false), &[]).await;
    assert_eq!(r.status(), 404);
    let e = json_of(r).await;
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["type"], "not_found_error");
    assert_eq!(e["error"]["param"], "model");
    assert_eq!(
        (a.calls(), b.calls()),
        (2, 2),
        "the 404 reached no provider"
    );

    // Bad input is the engine's invalid_request, as on NATS: 400 in OpenAI's shape.
    let r = post(&base, "{not json", &[]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "llm-error"), Some("invalid_request"));
    assert_eq!(json_of(r).await["error"]["type"], "invalid_request_error");
    let r = post(&base, &body("chat", false), &[("Llm-Deadline", "garbage")]).await;
    assert_eq!(r.status(), 400);
    running.shutdown().await;
}

#[tokio::test]
async fn a_failed_provider_falls_back_and_the_reply_says_so() {
    let (_nats, a, _b, running, base) = two_deployments("").await;
    a.push(Fault::status(503));
    let r = post(&base, &body("chat", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "llm-fallback"), Some("true"));
    assert_eq!(header(&r, "llm-deployment"), Some("backup"));
    assert_eq!(header(&r, "llm-attempts"), Some("2"));

    // Every candidate failing: 503 with each attempt listed.
    a.push(Fault::status(503));
    _b.push(Fault::status(500));
    let r = post(&base, &body("chat", false), &[]).await;
    assert_eq!(r.status(), 503);
    let e = json_of(r).await;
    assert_eq!(e["error"]["kind"], "unavailable");
    assert_eq!(e["error"]["attempts"].as_array().unwrap().len(), 2);
    assert!(e["error"]["request_id"].is_string());
    running.shutdown().await;
}

#[tokio::test]
async fn a_stream_is_server_sent_events_that_fall_back_only_before_the_first() {
    let (_nats, a, b, running, base) = two_deployments("").await;
    let r = post(&base, &body("chat", true), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&r, "llm-deployment"), Some("primary"));
    assert_eq!(header(&r, "llm-fallback"), Some("false"));
    assert!(
        header(&r, "llm-cost-usd").is_none(),
        "not known when the stream starts"
    );
    let ev = events(r).await;
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "fake reply from a");
    assert!(
        chunks
            .iter()
            .any(|c| c["usage"]["total_tokens"].as_u64() > Some(0)),
        "usage at the end"
    );

    // A refusal before the first event falls back; the headers say where it went.
    a.push(Fault::status(503));
    let r = post(&base, &body("chat", true), &[]).await;
    assert_eq!(header(&r, "llm-deployment"), Some("backup"));
    assert_eq!(header(&r, "llm-fallback"), Some("true"));
    assert_eq!(events(r).await.last().map(String::as_str), Some("[DONE]"));

    // Every candidate failing before the first event: a plain JSON error with its status.
    a.push(Fault::status(503));
    b.push(Fault::status(503));
    let r = post(&base, &body("chat", true), &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "content-type"), Some("application/json"));

    // Cut after its first text event: one error event, no [DONE], no fallback.
    a.push(Fault::CutStream { after: 1 });
    let calls_b = b.calls();
    let r = post(&base, &body("chat", true), &[]).await;
    assert_eq!(r.status(), 200);
    let ev = events(r).await;
    let last: Value = serde_json::from_str(ev.last().unwrap()).expect("error event");
    assert!(last["error"]["kind"].is_string(), "{last}");
    assert!(!ev.iter().any(|e| e == "[DONE]"));
    assert_eq!(b.calls(), calls_b, "no fallback after the first event");
    running.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_provider_call_streaming_or_not() {
    let (_nats, a, _b, running, base) = two_deployments("").await;
    a.push(Fault::Trickle {
        every: Duration::from_millis(20),
    });
    let mut r = post(&base, &body("chat", true), &[]).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.expect("read").expect("a first event");
    assert!(first.starts_with(b"data: "));
    drop(r);
    assert!(
        a.wait_hangups(1, Duration::from_secs(5)).await,
        "the provider call went on"
    );

    a.push(Fault::Trickle {
        every: Duration::from_millis(20),
    });
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{base}/v1/chat/completions"))
        .body(body("chat", false))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    assert!(
        a.wait_hangups(2, Duration::from_secs(5)).await,
        "the provider call went on"
    );
    // The instance holds nothing for them any more.
    let r = post(&base, &body("chat", false), &[]).await;
    assert_eq!(r.status(), 200);
    running.shutdown().await;
}

#[tokio::test]
async fn limits_answer_413_503_and_504() {
    let rest = "[limits]\nmax_in_flight = 1\nmax_body = 2048\n";
    let (_nats, a, _b, running, base) = two_deployments(rest).await;
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(4096)}]}).to_string();
    let r = post(&base, &big, &[]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(json_of(r).await["error"]["code"], "body_too_large");

    // One request holds the only place: the next is 503 overloaded with Retry-After.
    a.push(Fault::delay(Duration::from_secs(2), Fault::Ok));
    let held = tokio::spawn({
        let base = base.clone();
        async move { post(&base, &body("primary", false), &[]).await.status() }
    });
    assert!(a.wait_calls(1, Duration::from_secs(5)).await);
    let r = post(&base, &body("chat", false), &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(json_of(r).await["error"]["kind"], "overloaded");
    assert_eq!(held.await.unwrap(), 200);

    a.push(Fault::Hang);
    let r = post(&base, &body("primary", false), &[("Llm-Deadline", "300ms")]).await;
    assert_eq!(r.status(), 504);
    assert_eq!(json_of(r).await["error"]["type"], "timeout_error");
    running.shutdown().await;
}

const KEYS: &str = r#"
[[http.keys]]
name = "team-a"
key_env = "TEST_KEY_ENV"
models = ["spare"]
rpm = 2
[[http.keys]]
name = "team-b"
key_sha256 = "5d4b1d0f0da1ae1fdbd3b45d50c5e4f5cf1b4a7ae44e8c6ac5b7e3a0b4a52f5e"
"#;

#[tokio::test]
async fn keys_are_checked_limited_and_counted_by_name() {
    let (_nats, _a, _b, running, base) = two_deployments(KEYS).await;
    let key = common::harness::TEST_KEY;
    let bearer = format!("Bearer {key}");
    let r = post(&base, &body("spare", false), &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"]["type"], "authentication_error");
    let r = post(
        &base,
        &body("spare", false),
        &[("authorization", "Bearer sk-wrong")],
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = post(&base, &body("chat", false), &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"]["type"], "permission_error");
    // rpm = 2: two go through (by either header), the third is 429 with Retry-After.
    assert_eq!(
        post(&base, &body("spare", false), &[("authorization", &bearer)])
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&base, &body("backup", false), &[("x-api-key", key)])
            .await
            .status(),
        200
    );
    let r = post(&base, &body("spare", false), &[("api-key", key)]).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    assert_eq!(json_of(r).await["error"]["type"], "rate_limit_error");

    // The model list is what the key may use.
    let list = models(&base, &bearer).await;
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["backup", "spare", "summary"]);
    // Health needs no key.
    let live = reqwest::get(format!("{base}/health/live")).await.unwrap();
    assert_eq!(live.status(), 200);

    let status = running.status().await;
    let keys = status["keys"].as_array().expect("keys in status");
    let a = keys.iter().find(|k| k["name"] == "team-a").unwrap();
    assert_eq!(a["requests"], 2);
    assert!(a["spend_usd"].as_f64().unwrap() > 0.0);
    assert!(
        !status.to_string().contains(key),
        "the key itself is never shown"
    );
    let text = switchyard::ingress::metrics::render(&running.engine.status().await);
    assert!(
        text.contains("switchyard_http_key_requests_total{key=\"team-a\"} 2"),
        "{text}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_keys_daily_cap_holds_across_instances_through_the_cluster_bucket() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("a").await;
    let keys = "[[http.keys]]\nname = \"capped\"\nkey_env = \"TEST_KEY_ENV\"\nmax_cost_usd_per_day = 0.000001\n";
    let deployments = openai_deployment("primary", "chat", &fake.base_url(), "");
    let c = config(&nats.url(), keys, &deployments);
    let (one, base_one) = Running::start_http(&nats, c.clone(), "http-1").await;
    let (two, base_two) = Running::start_http(&nats, c, "http-2").await;
    let auth = format!("Bearer {}", common::harness::TEST_KEY);
    // One request on the first instance spends more than the cap (fake usage × test prices).
    let r = post(&base_one, &body("chat", false), &[("authorization", &auth)]).await;
    assert_eq!(r.status(), 200);
    // The second instance learns it from the bucket and refuses the key.
    let refused = common::cluster::eventually(Duration::from_secs(10), || async {
        post(&base_two, &body("chat", false), &[("authorization", &auth)])
            .await
            .status()
            == 429
    })
    .await;
    assert!(refused, "the other instance never saw the key's spend");
    let r = post(&base_two, &body("chat", false), &[("authorization", &auth)]).await;
    assert_eq!(json_of(r).await["error"]["kind"], "budget_exceeded");
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test]
async fn health_ready_follows_the_circuits_and_h2c_and_keep_alive_work() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("a").await;
    let deployments = openai_deployment("primary", "chat", &fake.base_url(), "");
    let rest = "[breaker]\nfailure_threshold = 1\n[http]\nidle_timeout = \"300ms\"\n";
    let (running, base) =
        Running::start_http(&nats, config(&nats.url(), rest, &deployments), "h").await;
    assert_eq!(
        reqwest::get(format!("{base}/health/ready"))
            .await
            .unwrap()
            .status(),
        200
    );

    // HTTP/2 without TLS.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{base}/v1/chat/completions"))
        .body(body("chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    assert_eq!(header(&r, "llm-deployment"), Some("primary"));

    // HTTP/1.1 keep-alive: two requests on one connection, then closed once idle.
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let get = "GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        conn.write_all(get.as_bytes()).await.unwrap();
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection stayed open: {closed:?}"
    );

    // Its only deployment's circuit opens: not ready.
    fake.push(Fault::status(503));
    let r = post(&base, &body("chat", false), &[]).await;
    assert_eq!(r.status(), 503);
    let r = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        reqwest::get(format!("{base}/health/live"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/v2/nothing"))
            .await
            .unwrap()
            .status(),
        404
    );
    running.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_http_requests_in_flight() {
    let (_nats, a, _b, mut running, base) = two_deployments("").await;
    a.push(Fault::delay(Duration::from_millis(500), Fault::Ok));
    let slow = tokio::spawn({
        let base = base.clone();
        async move {
            let r = post(&base, &body("primary", false), &[]).await;
            (r.status(), json_of(r).await)
        }
    });
    assert!(a.wait_calls(1, Duration::from_secs(5)).await);
    running.begin_shutdown();
    let (status, reply) = slow.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "fake reply from a"
    );
    running.shutdown().await;
    let after = reqwest::Client::new()
        .get(format!("{base}/health/live"))
        .send()
        .await;
    assert!(after.is_err(), "the listener is closed after shutdown");
}

/// `chat` is both a group (of `primary`) and a deployment (in group `spare`): `model` names a
/// deployment, a group or a task, in that order (docs/contract.md §9), on either door; a key's
/// `models` and a stream's first group read it the same way.
#[tokio::test]
async fn a_name_that_is_a_deployment_and_a_group_is_the_deployment() {
    let keys =
        "[[http.keys]]\nname = \"pinned\"\nkey_env = \"TEST_KEY_ENV\"\nmodels = [\"chat\"]\n";
    let (_nats, a, b, running, base) = with_fakes(keys, |a, b| {
        openai_deployment("primary", "chat", a, "") + &openai_deployment("chat", "spare", b, "")
    })
    .await;
    let auth = format!("Bearer {}", common::harness::TEST_KEY);
    let key = [("authorization", auth.as_str())];

    let r = post(&base, &body("chat", false), &key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "llm-deployment"), Some("chat"));
    assert_eq!(
        header(&r, "llm-route-reason"),
        Some("model names a deployment")
    );
    // Streamed, it starts in the deployment's own group: no fallback.
    let r = post(&base, &body("chat", true), &key).await;
    assert_eq!(header(&r, "llm-deployment"), Some("chat"));
    assert_eq!(header(&r, "llm-fallback"), Some("false"));
    assert_eq!(events(r).await.last().map(String::as_str), Some("[DONE]"));
    // Pinned to the deployment: its failure is the answer, not a fallback into group `chat`.
    b.push(Fault::status(503));
    let r = post(&base, &body("chat", false), &key).await;
    assert_eq!(r.status(), 503);

    // The key's `models = ["chat"]` is that deployment, not the group of the same name.
    let r = post(&base, &body("primary", false), &key).await;
    assert_eq!(r.status(), 403);
    let list = models(&base, &auth).await;
    let entries: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
        .collect();
    assert_eq!(entries, [("chat", "openai")]);

    // NATS reads `model` in the same order.
    let reply = running.ask("anything", &body("chat", false), &[]).await;
    assert_eq!(reply.served_by(), "chat");
    assert_eq!(a.calls(), 0, "group `chat` was never used");
    running.shutdown().await;
}

/// `Retry-After` of a 429, in whole seconds.
fn retry_after(r: &reqwest::Response) -> Option<u64> {
    header(r, "retry-after").map(|s| s.parse().expect("Retry-After in seconds"))
}

/// The engine's own 429s say when to retry when it knows: the soonest a candidate has room again
/// (a provider's `Retry-After`, a cool-down's end, a slot of the rpm window, the daily budget's
/// reset at midnight UTC, capped by `breaker.max_retry_after`), and nothing when it does not.
#[tokio::test]
async fn rate_limited_and_budget_exceeded_say_when_to_retry_when_it_is_known() {
    let rest = "[routing]\nfallbacks = { chat = [\"spare\"] }\n[[budgets.caps]]\ngroup = \"paid\"\ndaily_usd = 0.000001\n";
    let (_nats, _a, b, running, base) = with_fakes(rest, |a, b| {
        openai_deployment("primary", "chat", a, "rpm = 1\n")
            + &openai_deployment("backup", "spare", b, "")
            + &openai_deployment("capped", "paid", a, "")
    })
    .await;
    let rate_limited = |r: &reqwest::Response| {
        assert_eq!(r.status(), 429);
        assert_eq!(header(r, "llm-error"), Some("rate_limited"));
    };

    // A provider's 429 without Retry-After: the wait is not known, so none is said.
    b.push(Fault::status(429));
    let r = post(&base, &body("backup", false), &[]).await;
    rate_limited(&r);
    assert_eq!(retry_after(&r), None);
    // With `retry-after: 7`: that, and then the cool-down it started, rounded up.
    b.push(Fault::RateLimited {
        retry_after_secs: 7,
    });
    let r = post(&base, &body("backup", false), &[]).await;
    rate_limited(&r);
    assert_eq!(retry_after(&r), Some(7));
    let r = post(&base, &body("backup", false), &[]).await;
    rate_limited(&r);
    assert!(retry_after(&r).is_some_and(|s| (1..=7).contains(&s)));
    let b_calls = b.calls();

    // rpm = 1 spent: room when the call leaves the minute's window.
    assert_eq!(
        post(&base, &body("primary", false), &[]).await.status(),
        200
    );
    let r = post(&base, &body("primary", false), &[]).await;
    rate_limited(&r);
    assert!(retry_after(&r).is_some_and(|s| (50..=60).contains(&s)));
    // The group at its limit, its fallback cooling down: the soonest of the two.
    let r = post(&base, &body("chat", false), &[]).await;
    rate_limited(&r);
    assert!(retry_after(&r).is_some_and(|s| (1..=7).contains(&s)));
    assert_eq!(b.calls(), b_calls, "skipped while cooling down");

    // A daily cap that is reached: until midnight UTC, at most breaker.max_retry_after (5m).
    assert_eq!(post(&base, &body("paid", false), &[]).await.status(), 200);
    let r = post(&base, &body("paid", false), &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "llm-error"), Some("budget_exceeded"));
    assert!(retry_after(&r).is_some_and(|s| (1..=300).contains(&s)));
    // Over the caller's own Llm-Max-Cost-Usd: no wait makes it cheaper.
    let r = post(&base, &body("capped", false), &[("Llm-Max-Cost-Usd", "0")]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "llm-error"), Some("budget_exceeded"));
    assert_eq!(retry_after(&r), None);
    running.shutdown().await;
}

/// A chat request sent to an embeddings route (or the reverse) is told where to go in the words
/// of the door it came in by: HTTP paths over HTTP, subjects over NATS.
#[tokio::test]
async fn the_wrong_kind_of_request_is_sent_to_the_door_it_came_by() {
    let (_nats, a, _b, running, base) = with_fakes("", |a, _| {
        let embedding = "mode = \"embedding\"\ndimensions = 16\n";
        openai_deployment("primary", "chat", a, "")
            + &openai_deployment("vectors", "embed", a, embedding)
    })
    .await;
    let embed = |body: String| {
        reqwest::Client::new()
            .post(format!("{base}/v1/embeddings"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let refused = |status: reqwest::StatusCode, e: &Value, to: &str| {
        assert_eq!(status, 400, "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(to), "{message}");
        assert!(!message.contains("llm."), "{message}");
    };

    let r = post(&base, &body("embed", false), &[]).await;
    refused(r.status(), &json_of(r).await, "POST /v1/embeddings");
    let r = embed(json!({"model": "chat", "input": "hi"}).to_string())
        .await
        .unwrap();
    refused(r.status(), &json_of(r).await, "POST /v1/chat/completions");
    let r = embed(body("vectors", false)).await.unwrap();
    refused(r.status(), &json_of(r).await, "POST /v1/chat/completions");
    let r = reqwest::get(format!("{base}/v2/nothing")).await.unwrap();
    let e = json_of(r).await;
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("POST /v1/embeddings"), "{message}");

    // NATS callers still read subjects.
    let reply = running.ask("x", &body("embed", false), &[]).await;
    assert_eq!(reply.error_kind(), "invalid_request");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("llm.embed.<task>"), "{message}");
    let reply = running.embed("x", &body("vectors", false), &[]).await;
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("llm.chat.<task>"), "{message}");
    assert_eq!(a.calls(), 0);
    running.shutdown().await;
}

/// The door checks a key against the `model` the engine routes, reading the body as the engine
/// does: a key given twice counts its last value (for `model` and for `stream`), escapes decoded.
#[tokio::test]
async fn a_key_is_checked_against_the_model_the_engine_routes() {
    let keys = "[[http.keys]]\nname = \"k\"\nkey_env = \"TEST_KEY_ENV\"\nmodels = [\"chat\"]\n";
    let (_nats, _a, b, running, base) = two_deployments(keys).await;
    let auth = format!("Bearer {}", common::harness::TEST_KEY);
    let key = [("authorization", auth.as_str())];
    let hi = r#""messages":[{"role":"user","content":"hi"}]"#;

    let twice = format!(r#"{{"model":"backup","model":"backup",{hi}}}"#);
    assert_eq!(post(&base, &twice, &key).await.status(), 403);
    let escaped = format!(r#"{{"mod\u0065l":"backup",{hi}}}"#);
    assert_eq!(post(&base, &escaped, &key).await.status(), 403);
    let last = format!(r#"{{"model":"backup","model":"primary",{hi}}}"#);
    let r = post(&base, &last, &key).await;
    assert_eq!(header(&r, "llm-deployment"), Some("primary"));
    let stream = format!(r#"{{"model":"chat","stream":false,"stream":true,{hi}}}"#);
    let r = post(&base, &stream, &key).await;
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    assert_eq!(events(r).await.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(b.calls(), 0, "`backup` is not the key's");
    running.shutdown().await;
}
