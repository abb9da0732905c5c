//! Anthropic and Gemini behind the same NATS interface as OpenAI: a mixed fallback chain whose
//! reply is still a clean `chat.completion`, streaming from each, the fakes checking headers and
//! body shape as the real APIs do (a `system` role inside Anthropic `messages`, or an `assistant`
//! role in Gemini `contents`, is a 400 there, so it would be here).

mod common;

use common::harness::{Running, TEST_KEY, ask_stream, config, deployment};
use common::{FakeProvider, Fault, NatsServer};

struct Chain {
    _nats: NatsServer,
    gemini: FakeProvider,
    openai: FakeProvider,
    claude: FakeProvider,
    sy: Running,
}

/// Gemini Flash → DeepSeek (OpenAI-compatible) → Claude Haiku, the textbook chain.
async fn chain() -> Chain {
    let nats = NatsServer::start();
    let gemini = FakeProvider::start_gemini("gemini").await;
    let openai = FakeProvider::start_named("deepseek").await;
    let claude = FakeProvider::start_anthropic("claude").await;
    let rest = "[routing]\ndefault_group = \"primary\"\nfallbacks = { primary = [\"secondary\", \"emergency\"] }\n";
    let deployments = format!(
        "{}{}{}",
        deployment("gemini", "gemini-flash", "primary", &gemini.base_url(), ""),
        deployment("openai", "deepseek", "secondary", &openai.base_url(), ""),
        deployment(
            "anthropic",
            "claude-haiku",
            "emergency",
            &claude.base_url(),
            "max_tokens = 512"
        ),
    );
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    Chain {
        _nats: nats,
        gemini,
        openai,
        claude,
        sy,
    }
}

/// A conversation with what each API is strict about: system prompts, consecutive user turns.
const CONVERSATION: &str = r#"{"model":"gpt-4o","messages":[
  {"role":"system","content":"You are a travel assistant."},
  {"role":"user","content":"I am going to Porto."},
  {"role":"user","content":"What should I eat?"},
  {"role":"assistant","content":"Francesinha."},
  {"role":"user","content":"And to drink?"}],
  "temperature":0.4,"stop":["\n\n"],
  "extra_body":{"safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_chain_where_the_first_two_fail_still_answers_a_clean_chat_completion() {
    let c = chain().await;
    c.gemini.push(Fault::status(503));
    c.openai.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let r = c.sy.ask("chat", CONVERSATION, &[]).await;
    assert_eq!(r.served_by(), "claude-haiku", "{}", r.body);
    assert_eq!(r.header("Llm-Provider"), Some("anthropic"));
    assert_eq!(r.attempts(), 3);
    assert!(r.fallback());
    let b = &r.body;
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "fake reply from claude"
    );
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    let u = &b["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    // Each provider got its own wire format, accepted by the fake's API checks.
    let g = &c.gemini.requests()[0];
    assert_eq!(g.rejected, None);
    assert_eq!(g.header("x-goog-api-key"), Some(TEST_KEY));
    assert!(
        g.path
            .ends_with("/models/gemini-flash-model:generateContent"),
        "{}",
        g.path
    );
    assert_eq!(
        g.body["systemInstruction"]["parts"][0]["text"],
        "You are a travel assistant."
    );
    let roles: Vec<_> = g.body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].clone())
        .collect();
    assert_eq!(
        roles,
        ["user", "model", "user"],
        "consecutive user turns merged"
    );
    assert_eq!(g.body["generationConfig"]["stopSequences"][0], "\n\n");
    assert!(
        g.body["safetySettings"].is_array(),
        "the caller's extra_body reached the first provider"
    );

    let o = &c.openai.requests()[0];
    assert!(
        o.body.get("safetySettings").is_none(),
        "extra_body dropped on another provider"
    );

    let a = &c.claude.requests()[0];
    assert_eq!(a.rejected, None, "{:?}", a.rejected);
    assert_eq!(a.header("x-api-key"), Some(TEST_KEY));
    assert!(a.header("anthropic-version").is_some());
    assert_eq!(a.body["system"], "You are a travel assistant.");
    assert_eq!(
        a.body["max_tokens"], 512,
        "the deployment's default max_tokens"
    );
    assert_eq!(a.body["stop_sequences"][0], "\n\n");
    assert!(a.body.get("safetySettings").is_none());
    let roles: Vec<_> = a.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].clone())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_and_anthropic_answer_in_the_openai_shape() {
    let c = chain().await;
    let r = c.sy.ask("chat", CONVERSATION, &[]).await;
    assert_eq!(r.served_by(), "gemini-flash");
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "fake reply from gemini"
    );
    assert_eq!(r.body["model"], "gemini-flash-model");
    assert!(r.body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let pinned = CONVERSATION.replace(r#""model":"gpt-4o""#, r#""model":"claude-haiku""#);
    let r = c.sy.ask("chat", &pinned, &[]).await;
    assert_eq!(r.served_by(), "claude-haiku");
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "fake reply from claude"
    );
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_overloaded_falls_back_and_counts_for_the_breaker() {
    let c = chain().await;
    c.gemini.set_default(Fault::status(503));
    c.openai.set_default(Fault::status(503));
    c.claude.push(Fault::Overloaded);
    let r = c.sy.ask("chat", CONVERSATION, &[]).await;
    assert_eq!(r.error_kind(), "unavailable");
    assert_eq!(r.body["error"]["status"], 529);
    assert!(
        r.body["error"]["attempts"][2]["error"]
            .as_str()
            .unwrap()
            .contains("overloaded_error")
    );
    let s = c.sy.status().await;
    assert_eq!(s["deployments"][2]["name"], "claude-haiku");
    assert_eq!(s["deployments"][2]["failures"], 1);
    c.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_gemini_and_anthropic_are_openai_chunks() {
    let c = chain().await;
    let stream = CONVERSATION.replacen('{', r#"{"stream":true,"#, 1);
    let s = ask_stream(&c.sy.client, "chat", &stream, &[]).await;
    assert_eq!(
        s.last.header("Llm-Stream"),
        Some("end"),
        "{:?}",
        s.last.body
    );
    assert_eq!(s.last.served_by(), "gemini-flash");
    assert_eq!(s.text(), "fake reply from gemini");
    assert!(
        s.chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        c.gemini.requests()[0]
            .path
            .contains(":streamGenerateContent")
    );
    assert!(
        s.last
            .header("Llm-Cost-Usd")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0,
        "usage from the stream"
    );

    // Gemini fails before its first chunk: the stream comes from Claude, after DeepSeek fails too.
    c.gemini.push(Fault::status(503));
    c.openai.push(Fault::status(500));
    let s = ask_stream(&c.sy.client, "chat", &stream, &[]).await;
    assert_eq!(s.last.served_by(), "claude-haiku");
    assert_eq!(s.text(), "fake reply from claude");
    assert_eq!(s.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = s.chunks.last().unwrap();
    assert!(
        last["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert_eq!(c.claude.requests()[0].body["stream"], true);

    // A cut Anthropic stream ends in error with what was sent.
    c.gemini.push(Fault::status(503));
    c.openai.push(Fault::status(500));
    c.claude.push(Fault::CutStream { after: 1 });
    let s = ask_stream(&c.sy.client, "chat", &stream, &[]).await;
    assert_eq!(s.last.header("Llm-Stream"), Some("error"));
    assert!(!s.chunks.is_empty());
    c.sy.shutdown().await;
}
