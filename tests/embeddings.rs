//! `llm.embed.<task>` through real NATS against fake OpenAI and Gemini embeddings servers that
//! speak the exact wire formats (and refuse what the real APIs refuse): inputs split into calls of
//! `max_inputs` and put back in order, base64 vectors, fallback within a vector space and never
//! out of it, the wrong door refused, and status showing the traffic.

mod common;

use base64::Engine as _;
use common::fake::embed::vector;
use common::harness::{Running, config};
use common::{FakeProvider, Fault, NatsServer};
use serde_json::{Value, json};

const DIMS: usize = 16;

/// An embedding deployment of `provider` at `base`, keyed with the tests' key.
fn embedding(
    name: &str,
    group: &str,
    provider: &str,
    model: &str,
    base: &str,
    extra: &str,
) -> String {
    let price = if extra.contains("price") {
        ""
    } else {
        "price = { input_per_mtok = 0.02 }\n"
    };
    format!(
        "[[deployments]]\nname = \"{name}\"\ngroup = \"{group}\"\nprovider = \"{provider}\"\nmode = \"embedding\"\nmodel = \"{model}\"\ndimensions = {DIMS}\napi_base = \"{base}\"\napi_key_env = \"TEST_KEY_ENV\"\n{price}{extra}\n"
    )
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("document number {i} about refunds"))
        .collect()
}

/// The vectors of a `list` reply, in `index` order, either encoding.
fn vectors(body: &Value) -> Vec<Vec<f32>> {
    let data = body["data"].as_array().unwrap_or_else(|| panic!("{body}"));
    let mut out = vec![Vec::new(); data.len()];
    for item in data {
        let v = match &item["embedding"] {
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            Value::String(s) => {
                let raw = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            other => panic!("not a vector: {other}"),
        };
        out[item["index"].as_u64().unwrap() as usize] = v;
    }
    out
}

/// Each vector is the one the fake makes for its text: nothing reordered, nothing mixed.
fn assert_vectors_of(body: &Value, texts: &[String]) {
    let got = vectors(body);
    assert_eq!(got.len(), texts.len());
    for (i, (v, t)) in got.iter().zip(texts).enumerate() {
        assert_eq!(
            *v,
            vector(t, DIMS),
            "vector {i} is not the one of its input"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_input_is_split_into_max_inputs_calls_and_comes_back_in_order() {
    let nats = NatsServer::start();
    let oai = FakeProvider::start_named("oai").await;
    oai.set_embed_shuffle(true);
    let deployments = embedding(
        "oai-embed",
        "embed",
        "openai",
        "text-embedding-3-small",
        &oai.base_url(),
        "max_inputs = 4",
    );
    let sy = Running::start(
        &nats,
        config(&nats.url(), "[tasks]\nembed = \"embed\"\n", &deployments),
    )
    .await;
    let input = texts(10);
    let r = sy
        .embed("embed", &json!({ "input": input }).to_string(), &[])
        .await;
    assert_eq!(r.served_by(), "oai-embed", "{}", r.body);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["model"], "text-embedding-3-small");
    assert_vectors_of(&r.body, &input);
    let mut calls = oai.embed_inputs();
    calls.sort_unstable();
    assert_eq!(calls, vec![2, 4, 4], "ten inputs in calls of at most four");
    assert_eq!(r.attempts(), 3, "every call counts");
    assert_eq!(
        r.header("Llm-Embedding-Space"),
        Some("text-embedding-3-small@16")
    );
    assert!(!r.fallback());
    let usage = r.body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(usage > 0 && r.body["usage"]["total_tokens"].as_u64() == Some(usage));
    let cost: f64 = r.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(
        (cost - usage as f64 * 0.02 / 1e6).abs() < 1e-12,
        "{cost} for {usage} tokens"
    );

    // Base64, as OpenAI's SDKs ask by default: the same vectors, little-endian float32.
    let body = json!({ "input": input[..3], "encoding_format": "base64" });
    let r = sy.embed("embed", &body.to_string(), &[]).await;
    assert!(r.body["data"][0]["embedding"].is_string(), "{}", r.body);
    assert_vectors_of(&r.body, &input[..3]);

    // Status and Prometheus know the traffic as embedding traffic.
    let status = sy.status().await;
    let d = &status["deployments"][0];
    assert_eq!(d["mode"], "embedding");
    assert_eq!(d["requests"], 4, "three calls, then one: {d}");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_gets_at_most_100_inputs_a_call_and_a_failing_part_falls_back_within_its_space() {
    let nats = NatsServer::start();
    let gemini = FakeProvider::start_gemini("gemini").await;
    let gemini_b = FakeProvider::start_gemini("gemini-b").await;
    let deployments = format!(
        "{}{}",
        embedding(
            "g-1",
            "embed",
            "gemini",
            "text-embedding-004",
            &gemini.base_url(),
            "price = { input_per_mtok = 0.01 }"
        ),
        embedding(
            "g-2",
            "embed",
            "gemini",
            "text-embedding-004",
            &gemini_b.base_url(),
            "price = { input_per_mtok = 0.02 }"
        ),
    );
    // The cheaper one first, every time.
    let rest = "[tasks]\nembed = \"embed\"\n[routing]\nstrategy = \"cost-based\"\n";
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    let input = texts(250);
    // The first call to the cheaper deployment fails: that part goes to the other one, which
    // serves the same model — the same space.
    gemini.push(Fault::status(503));
    let r = sy
        .embed("embed", &json!({ "input": input }).to_string(), &[])
        .await;
    assert_eq!(r.header("Llm-Error"), None, "{}", r.body);
    assert_vectors_of(&r.body, &input);
    // The cheaper one saw every input once (one of its calls failed), the other the failed part
    // again; no call held more than 100.
    let (first, second) = (gemini.embed_inputs(), gemini_b.embed_inputs());
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first.iter().sum::<usize>(), 250, "{first:?}");
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(first.contains(&second[0]), "{first:?} {second:?}");
    assert!(first.iter().all(|n| *n <= 100), "{first:?}");
    assert!(r.fallback(), "a part fell back");
    assert_eq!(
        r.header("Llm-Embedding-Space"),
        Some("text-embedding-004@16")
    );
    let served = r.served_by();
    assert!(served.contains("g-1") && served.contains("g-2"), "{served}");
    assert_eq!(r.attempts(), 4, "three served calls and the failed one");
    sy.shutdown().await;
}

/// A 3-small group falling back to a Gemini group: another model, another space.
async fn two_spaces(cross_space: bool) -> (NatsServer, FakeProvider, FakeProvider, Running) {
    let nats = NatsServer::start();
    let oai = FakeProvider::start_named("oai").await;
    let gemini = FakeProvider::start_gemini("gemini").await;
    let deployments = format!(
        "{}{}",
        embedding(
            "oai-embed",
            "embed",
            "openai",
            "text-embedding-3-small",
            &oai.base_url(),
            "max_inputs = 2"
        ),
        embedding(
            "gemini-embed",
            "embed-gemini",
            "gemini",
            "text-embedding-004",
            &gemini.base_url(),
            ""
        ),
    );
    let rest = format!(
        "[tasks]\nembed = \"embed\"\n[routing]\nfallbacks = {{ embed = [\"embed-gemini\"] }}\n[groups.embed]\ncross_space = {cross_space}\n"
    );
    let sy = Running::start(&nats, config(&nats.url(), &rest, &deployments)).await;
    (nats, oai, gemini, sy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_never_come_from_another_space_than_the_first_part() {
    let (_nats, oai, gemini, sy) = two_spaces(false).await;
    let input = texts(4);
    // The first part is served by 3-small; the second fails there. Gemini could answer, but its
    // vectors would live in another space: the request fails instead.
    oai.push(Fault::Reply {
        text: String::new(),
        prompt_tokens: 5,
        completion_tokens: 0,
    });
    oai.push(Fault::status(503));
    let r = sy
        .embed("embed", &json!({ "input": input }).to_string(), &[])
        .await;
    assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    let attempts = r.body["error"]["attempts"].as_array().unwrap();
    let skipped = attempts
        .iter()
        .find(|a| a["deployment"] == "gemini-embed")
        .unwrap_or_else(|| panic!("{attempts:?}"));
    let why = skipped["error"].as_str().unwrap();
    assert!(
        why.contains("text-embedding-004@16") && why.contains("text-embedding-3-small@16"),
        "{why}"
    );
    assert_eq!(gemini.calls(), 0, "no call was made in the other space");

    // A request that asks for the space by name never leaves it, even for its first part.
    oai.push(Fault::status(503));
    let pinned = [("Llm-Embedding-Space", "text-embedding-3-small@16")];
    let r = sy
        .embed("embed", &json!({ "input": "one" }).to_string(), &pinned)
        .await;
    assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    assert_eq!(gemini.calls(), 0);

    // Without the pin, a request whose first candidate fails at once starts in the other space,
    // and says so.
    oai.push(Fault::status(503));
    let r = sy
        .embed("embed", &json!({ "input": "one" }).to_string(), &[])
        .await;
    assert_eq!(r.served_by(), "gemini-embed", "{}", r.body);
    assert_eq!(
        r.header("Llm-Embedding-Space"),
        Some("text-embedding-004@16")
    );
    assert!(r.fallback());
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_cross_space_lets_a_part_fall_into_another_space() {
    let (_nats, oai, gemini, sy) = two_spaces(true).await;
    let input = texts(4);
    oai.push(Fault::Reply {
        text: String::new(),
        prompt_tokens: 5,
        completion_tokens: 0,
    });
    oai.push(Fault::status(503));
    let r = sy
        .embed("embed", &json!({ "input": input }).to_string(), &[])
        .await;
    assert_eq!(r.header("Llm-Error"), None, "{}", r.body);
    assert_eq!(gemini.calls(), 1);
    let spaces = r.header("Llm-Embedding-Space").unwrap();
    assert!(
        spaces.contains("text-embedding-3-small@16") && spaces.contains("text-embedding-004@16")
    );
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_door_and_bad_bodies_are_invalid_requests_that_reach_no_provider() {
    let nats = NatsServer::start();
    let oai = FakeProvider::start_named("oai").await;
    let chat_fake = FakeProvider::start_named("chat").await;
    let deployments = format!(
        "{}{}",
        common::harness::openai_deployment("gpt", "chat", &chat_fake.base_url(), ""),
        embedding(
            "oai-embed",
            "embed",
            "openai",
            "text-embedding-3-small",
            &oai.base_url(),
            ""
        ),
    );
    let rest = "[tasks]\nembed = \"embed\"\nchat = \"chat\"\n";
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    let chat_body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let r = sy.ask("embed", chat_body, &[]).await;
    assert_eq!(r.error_kind(), "invalid_request");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llm.embed"),
        "{}",
        r.body
    );
    let r = sy.embed("chat", r#"{"input":"hi"}"#, &[]).await;
    assert_eq!(r.error_kind(), "invalid_request");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llm.chat"),
        "{}",
        r.body
    );
    let r = sy.embed("embed", chat_body, &[]).await;
    assert_eq!(
        r.error_kind(),
        "invalid_request",
        "a chat body on the embed door"
    );
    for bad in [
        "",
        "[1,2]",
        r#"{"input":[]}"#,
        r#"{"input":["a",""]}"#,
        r#"{"input":"a","encoding_format":"int8"}"#,
        r#"{"input":"a","dimensions":0}"#,
    ] {
        let r = sy.embed("embed", bad, &[]).await;
        assert_eq!(r.error_kind(), "invalid_request", "{bad}: {}", r.body);
    }
    // The provider answering garbage, or vectors of the wrong size: a failed call, never a reply.
    oai.push(Fault::WrongDimensions(8));
    oai.push(Fault::DropVector);
    oai.push(Fault::NotJson);
    for _ in 0..3 {
        let r = sy.embed("embed", r#"{"input":["a","b"]}"#, &[]).await;
        assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    }
    assert_eq!(chat_fake.calls(), 0);
    assert_eq!(
        oai.calls(),
        3,
        "only the three scripted calls reached the provider"
    );
    sy.shutdown().await;
}
