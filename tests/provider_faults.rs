//! What a provider sends cannot hurt us (docs/contract.md §8): absurd `Retry-After` values, bodies
//! far over `limits.max_provider_body`, bodies and streams that never end, and (section 2) a
//! conversation whose tool rounds ran on Gemini falling over to Anthropic. Each against fake
//! providers behind the real engine and NATS ingress.

mod common;

use std::time::{Duration, Instant};

use common::harness::{
    HELLO, HELLO_STREAM, Running, ask_stream, config, deployment, openai_deployment,
};
use common::{FakeProvider, Fault, NatsServer};
use serde_json::{Value, json};

/// A `Retry-After` longer than this is capped to it.
const MAX_RETRY_AFTER_S: f64 = 2.0;

struct Chain {
    _nats: NatsServer,
    primary: FakeProvider,
    secondary: FakeProvider,
    sy: Running,
}

/// `primary` (group `main`) falls back to `secondary` (group `backup`). Small limits so the tests
/// are fast: `max_retry_after = "2s"`, `max_provider_body = "1 MiB"`, `max_stream_duration =
/// "1s"`, and a primary `timeout` of 500 ms. The breaker never opens, so that every request
/// tries the primary unless it is cooling down.
async fn chain() -> Chain {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let secondary = FakeProvider::start_named("secondary").await;
    let rest = "[routing]\ndefault_group = \"main\"\nfallbacks = { main = [\"backup\"] }\n\
        [breaker]\nmax_retry_after = \"2s\"\nfailure_threshold = 1000\n\
        [limits]\nmax_provider_body = \"1 MiB\"\nmax_stream_duration = \"1s\"\n";
    let deployments = format!(
        "{}{}",
        openai_deployment(
            "primary",
            "main",
            &primary.base_url(),
            "rpm = 100000\ntimeout = \"500ms\""
        ),
        openai_deployment("secondary", "backup", &secondary.base_url(), "")
    );
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    Chain {
        _nats: nats,
        primary,
        secondary,
        sy,
    }
}

fn deployment_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in status: {status}"))
}

/// Asks for the status until `primary` is not cooling down (at most `MAX_RETRY_AFTER_S` and a
/// margin); panics if it still is then.
async fn until_not_cooling(sy: &Running) {
    let deadline = Instant::now() + Duration::from_secs_f64(MAX_RETRY_AFTER_S + 3.0);
    loop {
        let status = sy.status().await;
        let cooldown = &deployment_status(&status, "primary")["cooldown_s"];
        if cooldown.is_null() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still cooling down past max_retry_after: {cooldown}"
        );
        // Polling the status, not sleeping for an outcome: the loop ends on what status says.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_fall_back_and_cool_down_at_most_max_retry_after() {
    let c = chain().await;
    // (header, value, whether it cools the primary down: the others count as absent).
    let cases = [
        ("retry-after", "1e20", true),
        ("retry-after", "1e19", true),
        ("retry-after", "31536000", true),
        ("retry-after-ms", "1e30", true),
        ("retry-after", "-5", false),
        ("retry-after", "NaN", false),
        ("retry-after", "inf", false),
        ("retry-after", "soon", false),
        ("retry-after-ms", "-1", false),
    ];
    for (i, (header, value, cools)) in cases.into_iter().enumerate() {
        until_not_cooling(&c.sy).await;
        c.primary.push(Fault::RateLimitedRaw {
            header: header.into(),
            value: value.into(),
        });
        let r = c.sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary", "{header}: {value}: {}", r.body);
        assert!(r.fallback());
        assert_eq!(
            c.primary.calls(),
            i + 1,
            "{header}: {value}: the primary was tried"
        );
        let status = c.sy.status().await;
        let cooldown = deployment_status(&status, "primary")["cooldown_s"].as_f64();
        if cools {
            let s = cooldown.unwrap_or_else(|| panic!("{header}: {value}: no cool-down"));
            assert!(s > 0.0 && s <= MAX_RETRY_AFTER_S, "{header}: {value}: {s}");
        } else {
            assert_eq!(cooldown, None, "{header}: {value}: ignored as if absent");
        }
    }
    // The primary's actor kept its state all along: it was never restarted by a panic.
    let status = c.sy.status().await;
    let p = deployment_status(&status, "primary");
    assert_eq!(p["requests"], cases.len(), "{p}");
    assert_eq!(p["failures"], cases.len(), "{p}");
    assert_eq!(p["rpm_used"], cases.len(), "{p}");
    assert_eq!(c.secondary.calls(), cases.len());
    // And it serves again.
    until_not_cooling(&c.sy).await;
    assert_eq!(c.sy.ask("chat", HELLO, &[]).await.served_by(), "primary");
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_provider_body_falls_back_and_counts() {
    let c = chain().await;
    for chunked in [false, true] {
        c.primary.push(Fault::HugeBody {
            bytes: 40 << 20,
            chunked,
        });
        let started = Instant::now();
        let r = c.sy.ask("chat", HELLO, &[]).await;
        assert_eq!(r.served_by(), "secondary", "chunked {chunked}: {}", r.body);
        assert!(r.fallback());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not read in full"
        );
    }
    let status = c.sy.status().await;
    assert_eq!(
        deployment_status(&status, "primary")["failures"],
        2,
        "counts for the breaker"
    );
    // Pinned to the primary, the request fails and says why.
    c.primary.push(Fault::HugeBody {
        bytes: 40 << 20,
        chunked: true,
    });
    let pinned = HELLO.replace(r#""model":"gpt-4o""#, r#""model":"primary""#);
    let r = c.sy.ask("chat", &pinned, &[]).await;
    assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    let error = r.body["error"]["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("reply body over 1048576 bytes"), "{error}");
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_body_that_never_ends_falls_back_after_the_timeout() {
    let c = chain().await;
    c.primary.push(Fault::Trickle {
        every: Duration::from_millis(50),
    });
    let started = Instant::now();
    let r = c.sy.ask("chat", HELLO, &[]).await;
    let took = started.elapsed();
    assert_eq!(r.served_by(), "secondary", "{}", r.body);
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        c.primary.wait_hangups(1, Duration::from_secs(5)).await,
        "the engine stopped reading the endless body"
    );
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_ends_is_cut_at_max_stream_duration_as_a_timeout() {
    let c = chain().await;
    c.primary.push(Fault::Trickle {
        every: Duration::from_millis(50),
    });
    let started = Instant::now();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        ask_stream(&c.sy.client, "chat", HELLO_STREAM, &[]),
    )
    .await
    .expect("the stream ended within 10 s");
    let took = started.elapsed();
    assert!(
        s.chunks.len() > 5,
        "chunks went out first: {}",
        s.chunks.len()
    );
    assert_eq!(
        s.last.header("Llm-Stream"),
        Some("error"),
        "{:?}",
        s.last.body
    );
    assert_eq!(s.last.error_kind(), "timeout", "{}", s.last.body);
    let message = s.last.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_stream_duration"), "{message}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(c.secondary.calls(), 0, "no fallback once chunks went out");
    assert!(
        c.primary.wait_hangups(1, Duration::from_secs(5)).await,
        "the provider read stopped with the stream"
    );
    let status = c.sy.status().await;
    assert_eq!(
        deployment_status(&status, "primary")["failures"],
        0,
        "our bound, not the provider failing"
    );
    c.sy.shutdown().await;
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"The weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;

/// The engine with one deployment, in group `main`.
async fn alone(nats: &NatsServer, provider: &str, name: &str, fake: &FakeProvider) -> Running {
    let deployments = deployment(provider, name, "main", &fake.base_url(), "");
    let rest = "[routing]\ndefault_group = \"main\"\n";
    Running::start(nats, config(&nats.url(), rest, &deployments)).await
}

fn turn(messages: &[Value]) -> String {
    let tools: Value = serde_json::from_str(TOOLS).unwrap();
    json!({"model": "gpt-4o", "messages": messages, "tools": tools, "max_tokens": 100}).to_string()
}

/// Gemini sends function calls without ids; the ids we make up must not repeat across rounds,
/// or a later turn that falls over to Anthropic is refused (`tool_use` ids must be unique: a 400,
/// which never falls back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_rounds_on_gemini_then_a_turn_on_anthropic() {
    let nats = NatsServer::start();
    let gemini = FakeProvider::start_gemini("gemini").await;
    let claude = FakeProvider::start_anthropic("claude").await;
    let rest = "[routing]\ndefault_group = \"main\"\nfallbacks = { main = [\"backup\"] }\n";
    let deployments = format!(
        "{}{}",
        deployment("gemini", "gemini-flash", "main", &gemini.base_url(), ""),
        deployment(
            "anthropic",
            "claude-haiku",
            "backup",
            &claude.base_url(),
            ""
        ),
    );
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;

    let mut messages = vec![json!({"role": "user", "content": "Weather in Porto, then Lisbon?"})];
    let mut ids = Vec::new();
    for city in ["Porto", "Lisbon"] {
        gemini.push(Fault::ToolCall {
            name: "get_weather".into(),
            args: json!({"city": city}),
        });
        let r = sy.ask("chat", &turn(&messages), &[]).await;
        assert_eq!(r.served_by(), "gemini-flash", "{}", r.body);
        let message = r.body["choices"][0]["message"].clone();
        assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
        let call = &message["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        let id = call["id"].as_str().unwrap().to_string();
        messages.push(message);
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": format!("{{\"city\":\"{city}\",\"sky\":\"clear\"}}")}));
        ids.push(id);
    }
    assert!(
        gemini.requests().iter().all(|r| r.rejected.is_none()),
        "Gemini took both rounds"
    );

    // The third turn carries both tool rounds; Gemini is down, Anthropic takes it.
    gemini.push(Fault::status(503));
    messages.push(json!({"role": "user", "content": "Which is warmer?"}));
    let r = sy.ask("chat", &turn(&messages), &[]).await;
    let sent = &claude.requests()[0];
    assert_eq!(sent.rejected, None, "{:?}", sent.rejected);
    assert_eq!(r.served_by(), "claude-haiku", "{}", r.body);
    assert!(r.fallback());
    let tool_uses: Vec<&str> = sent.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(tool_uses, ids, "both rounds' calls, with their ids");
    assert_ne!(ids[0], ids[1], "made-up ids repeat across replies");
    for id in &ids {
        let random = id.strip_prefix("call_").unwrap_or_default();
        assert!(
            random.len() == 24 && random.bytes().all(|b| b.is_ascii_alphanumeric()),
            "an OpenAI-like id: {id}"
        );
    }
    sy.shutdown().await;
}

/// The fake refuses what the real API refuses: two `tool_use` blocks with one id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_fake_refuses_repeated_tool_use_ids() {
    let nats = NatsServer::start();
    let claude = FakeProvider::start_anthropic("claude").await;
    let sy = alone(&nats, "anthropic", "claude-haiku", &claude).await;
    let call = |city: &str| json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": format!("{{\"city\":\"{city}\"}}")}}]});
    let messages = [
        json!({"role": "user", "content": "Weather in Porto, then Lisbon?"}),
        call("Porto"),
        json!({"role": "tool", "tool_call_id": "call_0", "content": "clear"}),
        call("Lisbon"),
        json!({"role": "tool", "tool_call_id": "call_0", "content": "clear"}),
    ];
    let r = sy.ask("chat", &turn(&messages), &[]).await;
    assert_eq!(r.error_kind(), "invalid_request", "{}", r.body);
    assert_eq!(r.body["error"]["status"], 400);
    let rejected = claude.requests()[0].rejected.clone().unwrap_or_default();
    assert!(
        rejected.contains("`tool_use` ids must be unique"),
        "{rejected}"
    );
    sy.shutdown().await;
}

/// Streamed Gemini function calls get made-up ids too, different in every stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_gemini_tool_calls_get_unique_ids() {
    let nats = NatsServer::start();
    let gemini = FakeProvider::start_gemini("gemini").await;
    let sy = alone(&nats, "gemini", "gemini-flash", &gemini).await;
    let messages = [json!({"role": "user", "content": "Weather in Porto?"})];
    let body = turn(&messages).replacen('{', r#"{"stream":true,"#, 1);
    let mut ids = Vec::new();
    for _ in 0..2 {
        gemini.push(Fault::ToolCall {
            name: "get_weather".into(),
            args: json!({"city": "Porto"}),
        });
        let s = ask_stream(&sy.client, "chat", &body, &[]).await;
        assert_eq!(
            s.last.header("Llm-Stream"),
            Some("end"),
            "{:?}",
            s.last.body
        );
        let call = s
            .chunks
            .iter()
            .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object())
            .unwrap_or_else(|| panic!("no tool call in {:?}", s.chunks));
        assert_eq!(call["function"]["name"], "get_weather");
        ids.push(call["id"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        let random = id.strip_prefix("call_").unwrap_or_default();
        assert!(random.len() == 24, "{id}");
    }
    sy.shutdown().await;
}
