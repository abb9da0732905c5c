//! `switchyard import litellm`: the LiteLLM config of our users' article (tests/data/
//! litellm-article.yaml) imports with exit 0, says on stderr what it could not carry, and the TOML
//! it prints serves: requests through the HTTP door reach the providers it names (here fakes
//! speaking the Gemini, OpenAI and Anthropic wire formats, in place of the real hosts).

mod common;

use std::process::Command;

use common::harness::Running;
use common::{FakeProvider, NatsServer};
use serde_json::json;
use switchyard::config::Config;

fn import(file: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["import", "litellm", file])
        .output()
        .expect("the binary runs")
}

#[tokio::test]
async fn the_articles_litellm_config_imports_and_serves() {
    let out = import(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/litellm-article.yaml"
    ));
    let (toml, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("router_settings.enable_pre_call_checks"),
        "{stderr}"
    );
    for expected in [
        "api_key_env = \"GOOGLE_API_KEY\"",
        "api_key_env = \"DEEPSEEK_API_KEY\"",
        "api_key_env = \"ANTHROPIC_API_KEY\"",
        "strategy = \"usage-based\"",
        "api_base = \"https://api.deepseek.com/v1\"",
    ] {
        assert!(toml.contains(expected), "missing {expected:?} in:\n{toml}");
    }

    let gemini = FakeProvider::start_gemini("gemini").await;
    let deepseek = FakeProvider::start_named("deepseek").await;
    let anthropic = FakeProvider::start_anthropic("anthropic").await;
    let nats = NatsServer::start();
    let db = std::env::temp_dir().join(format!("switchyard-import-{}.db", uuid::Uuid::new_v4()));
    let toml = toml
        .replace(
            "https://generativelanguage.googleapis.com",
            &gemini.base_url(),
        )
        .replace("https://api.deepseek.com/v1", &deepseek.base_url())
        .replace("https://api.anthropic.com", &anthropic.base_url());
    let text = format!(
        "[nats]\nurl = \"{}\"\n[storage]\npath = {:?}\n{toml}",
        nats.url(),
        db.display().to_string()
    );
    let config = Config::parse(&text, "imported.toml", &|_| Some("sk-test".into()))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (running, base) = Running::start_http(&nats, config, "imported").await;
    let client = reqwest::Client::new();
    for (model, fake) in [("fast-chat", None), ("deep-analysis", Some(&anthropic))] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        if let Some(f) = fake {
            assert_eq!(f.calls(), 1, "{model} went to its provider");
        }
    }
    assert_eq!(
        gemini.calls() + deepseek.calls(),
        1,
        "fast-chat went to one of its two"
    );
    running.shutdown().await;
}

#[test]
fn yaml_that_cannot_be_read_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "model_list: [\n").unwrap();
    let out = import(bad.to_str().unwrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
    let out = import(dir.path().join("absent.yaml").to_str().unwrap());
    assert!(!out.status.success());
}
