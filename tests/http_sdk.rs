//! The official `openai` Python SDK against the HTTP door (tests/sdk/openai_sdk.py): create,
//! stream, fallback seen through `with_raw_response`, `models.list()`, each refusal as the SDK's
//! own typed error, and a client leaving mid-stream. The SDK lives in a virtualenv made once
//! (tests/common/python.rs).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::harness::{Running, TEST_KEY, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use serde_json::Value;

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged_but_for_base_url_and_key() {
    let python = tokio::task::spawn_blocking(common::python::python)
        .await
        .expect("the virtualenv");
    let nats = NatsServer::start();
    let (a, b, e) = (
        FakeProvider::start_named("a").await,
        FakeProvider::start_named("b").await,
        FakeProvider::start_named("e").await,
    );
    let slow: String = switchyard::config::key_digest("sk-slow")
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let rest = format!(
        "[routing]\nfallbacks = {{ chat = [\"spare\"] }}\n[limits]\nmax_body = 4096\n\
         [[http.keys]]\nname = \"sdk\"\nkey_env = \"TEST_KEY_ENV\"\nmodels = [\"chat\", \"embed\"]\n\
         [[http.keys]]\nname = \"slow\"\nkey_sha256 = \"{slow}\"\nrpm = 1\n"
    );
    let deployments = format!(
        "{}{}[[deployments]]\nname = \"emb\"\ngroup = \"embed\"\nprovider = \"openai\"\nmode = \"embedding\"\nmodel = \"text-embedding-3-small\"\ndimensions = 16\napi_base = \"{}\"\napi_key_env = \"TEST_KEY_ENV\"\n",
        openai_deployment("primary", "chat", &a.base_url(), ""),
        openai_deployment("backup", "spare", &b.base_url(), ""),
        e.base_url()
    );
    let (running, base) =
        Running::start_http(&nats, config(&nats.url(), &rest, &deployments), "sdk").await;
    // The calls that reach a provider, in the script's order.
    for f in [
        Fault::Ok,          // create
        Fault::Ok,          // stream
        Fault::status(503), // fallback: to backup
        Fault::Ok,          // the slow key's first call
        Fault::status(503), // 503: every candidate fails
        Fault::Hang,        // 504: Llm-Deadline spent
        Fault::Trickle {
            every: Duration::from_millis(20),
        }, // left mid-stream
    ] {
        a.push(f);
    }
    b.push(Fault::Ok);
    b.push(Fault::status(503));

    // The script blocks; the engine goes on serving on the runtime's other threads.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("SWITCHYARD_BASE_URL", &base)
            .env("SDK_KEY", TEST_KEY)
            .env("SLOW_KEY", "sk-slow")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    })
    .await
    .expect("the script's thread")
    .expect("python runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    println!("{seen:#}");

    assert_eq!(seen["create"]["text"], "fake reply from a");
    assert!(seen["create"]["tokens"].as_u64() > Some(0));
    assert_eq!(seen["stream"]["text"], "fake reply from a");
    assert!(
        seen["stream"]["tokens"].as_u64() > Some(0),
        "the last chunk carries usage"
    );
    assert_eq!(seen["fallback"]["llm_fallback"], "true");
    assert_eq!(seen["fallback"]["deployment"], "backup");
    assert_eq!(seen["fallback"]["text"], "fake reply from b");
    assert_eq!(
        seen["models"],
        serde_json::json!(["chat", "emb", "embed", "primary"])
    );
    // Embeddings: the SDK's base64 default and plain floats give the fake's exact vectors.
    let emb = &seen["embed"];
    // Compared as the float32s they are, however the SDK decoded them.
    let f32s = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a vector: {v}"))
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let exact = |text: &str| common::fake::embed::vector(text, 16);
    assert_eq!(emb["n"], 2);
    assert_eq!(emb["dims"], 16);
    assert_eq!(f32s(&emb["alpha"]), exact("alpha"), "{emb}");
    assert_eq!(f32s(&emb["beta"]), exact("beta"));
    assert_eq!(f32s(&emb["float_alpha"]), exact("alpha"));
    assert_eq!(emb["model"], "text-embedding-3-small");
    assert_eq!(emb["space"], "text-embedding-3-small@16");
    assert!(emb["tokens"].as_u64() > Some(0));
    let e = &seen["errors"];
    for (status, class, code) in [
        ("401", "AuthenticationError", "invalid_api_key"),
        ("403", "PermissionDeniedError", "model_not_allowed"),
        ("404", "NotFoundError", "model_not_found"),
        ("413", "APIStatusError", "body_too_large"),
        ("429", "RateLimitError", "rate_limited"),
        ("503", "InternalServerError", "unavailable"),
        ("504", "InternalServerError", "timeout"),
    ] {
        assert_eq!(e[status]["class"], class, "{status}: {}", e[status]);
        assert_eq!(e[status]["status"].to_string(), status, "{}", e[status]);
        assert_eq!(e[status]["code"], code, "{status}: {}", e[status]);
    }
    assert!(
        e["429"]["retry_after"].is_string(),
        "429 says when to retry"
    );
    assert_eq!(seen["left_after"], "chat.completion.chunk");
    assert!(
        a.wait_hangups(1, Duration::from_secs(5)).await,
        "the provider call outlived the client"
    );
    running.shutdown().await;
}
