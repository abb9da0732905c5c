use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", &|name| {
        (name == "PRESENT_KEY").then(|| "sk-123".to_string())
    })
}

const MINIMAL: &str = r#"
    [[deployments]]
    name = "a"
    group = "chat"
    provider = "openai"
    model = "gpt-4o-mini"
    api_base = "http://127.0.0.1:1/v1"
    api_key_env = "PRESENT_KEY"
"#;

#[test]
fn minimal_config_gets_the_contract_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.routing.default_group, "chat");
    assert_eq!(c.breaker.failure_threshold, 3);
    assert_eq!(c.breaker.reset_timeout, Duration::from_secs(60));
    assert_eq!(c.breaker.ignored_status, vec![400, 404]);
    assert_eq!(c.nats.prefix, "llm");
    let d = &c.deployments[0];
    assert_eq!(d.timeout, Duration::from_secs(60));
    assert_eq!(
        d.price.input_per_mtok, 0.15,
        "gpt-4o-mini's built-in list price"
    );
    assert_eq!(d.api_key.as_ref().unwrap().expose(), "sk-123");
}

#[test]
fn the_sample_config_for_real_providers_is_valid() {
    let text = include_str!("../../config/switchyard.toml");
    let c = Config::parse(text, "config/switchyard.toml", &|_| Some("key".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.alerts.enabled && c.cluster.enabled && c.jobs.enabled);
}

#[test]
fn the_docker_http_config_is_valid() {
    let text = include_str!("../../docker/http.toml");
    let c = Config::parse(text, "docker/http.toml", &|_| Some("key".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.http.keys.len(), 1);
}

#[test]
fn the_embedded_demo_config_is_valid() {
    let c = Config::demo();
    assert!(c.deployments.len() >= 3);
    assert!(
        c.deployments
            .iter()
            .all(|d| d.provider == ProviderKind::Simulated)
    );
}

#[test]
fn batch_api_is_for_openai_and_anthropic_chat_deployments_at_a_sane_discount() {
    let c = parse(&format!("{MINIMAL}batch_api = true\n")).unwrap();
    assert!(c.deployments[0].batch_api);
    assert_eq!(c.deployments[0].batch_discount, 0.5);
    assert!(!parse(MINIMAL).unwrap().deployments[0].batch_api);
    let gemini = MINIMAL.replace("\"openai\"", "\"gemini\"");
    let err = parse(&format!("{gemini}batch_api = true\nbatch_discount = 1.5\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deployments[0].batch_api: gemini has no batch API"),
        "{err}"
    );
    assert!(
        err.contains("deployments[0].batch_discount: must be a number above 0 and at most 1"),
        "{err}"
    );
    let err = parse(&format!("{MINIMAL}batch_discount = 0.4\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch_discount: only with batch_api = true"),
        "{err}"
    );
}

#[test]
fn a_missing_key_names_the_deployment_and_the_variable() {
    let text = MINIMAL.replace("PRESENT_KEY", "ABSENT_KEY");
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "test.toml: deployments[0].api_key_env: deployment `a`: environment variable ABSENT_KEY is not set"
    );
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = format!(
        "{MINIMAL}\nrpm = 0\n[routing]\ndefault_group = \"nope\"\nstrategy = \"fastest\"\n[tasks]\nchat = \"ghost\"\n[breaker]\nfailure_threshold = 0\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    for expected in [
        "test.toml: deployments[0].rpm: must be > 0",
        "test.toml: routing.default_group: `nope` is not the group of any deployment",
        "test.toml: routing.strategy: unknown strategy `fastest`",
        "test.toml: tasks.chat: `ghost` is not the group of any deployment",
        "test.toml: breaker.failure_threshold: must be > 0",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn unknown_keys_and_bad_durations_are_refused_by_the_parser() {
    let err = parse(&format!("{MINIMAL}\ncolour = \"blue\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml: "), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    let err = parse(&format!("{MINIMAL}\ntimeout = \"soon\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timeout"), "{err}");
}

fn embedding(name: &str, group: &str, provider: &str, model: &str, extra: &str) -> String {
    format!(
        "[[deployments]]\nname = \"{name}\"\ngroup = \"{group}\"\nprovider = \"{provider}\"\nmode = \"embedding\"\nmodel = \"{model}\"\napi_base = \"http://127.0.0.1:1/v1\"\n{extra}\n"
    )
}

#[test]
fn embedding_deployments_get_their_space_and_split_size() {
    let text = format!(
        "{MINIMAL}{}{}{}",
        embedding("e1", "embed", "openai", "text-embedding-3-small", ""),
        embedding(
            "e2",
            "embed",
            "openai",
            "my-model",
            "dimensions = 384\nspace = \"docs\""
        ),
        embedding("e3", "g", "gemini", "text-embedding-004", ""),
    );
    let c = parse(&text).unwrap();
    let spec = |i: usize| c.deployments[i].embedding.clone().unwrap();
    assert!(
        c.deployments[0].embedding.is_none(),
        "chat is the default mode"
    );
    assert_eq!(spec(1).dimensions, 1536, "known for the model");
    assert_eq!(spec(1).space, "text-embedding-3-small@1536");
    assert_eq!(spec(1).max_inputs, 256);
    assert_eq!((spec(2).dimensions, spec(2).space.as_str()), (384, "docs"));
    assert_eq!((spec(3).dimensions, spec(3).max_inputs), (768, 100));
    assert_eq!(c.routing.default_group, "chat");
    assert_eq!(c.routing.default_embedding_group.as_deref(), Some("embed"));
    assert!(c.groups["embed"].embedding && !c.groups["chat"].embedding);
}

#[test]
fn modes_do_not_mix_and_anthropic_cannot_embed() {
    let text = format!(
        "{MINIMAL}{}{}{}{}\n[routing]\ndefault_embedding_group = \"chat\"\nfallbacks = {{ chat = [\"embed\"] }}\n[groups.chat]\ncross_space = true\n",
        embedding("e1", "chat", "openai", "text-embedding-3-small", ""),
        embedding("e2", "embed", "anthropic", "claude-embed", "dimensions = 8"),
        embedding("e3", "embed", "openai", "unknown-model", "max_inputs = 0"),
        embedding(
            "e4",
            "embed",
            "gemini",
            "text-embedding-004",
            "max_inputs = 250"
        ),
    );
    let err = parse(&text).unwrap_err().to_string();
    for expected in [
        "deployments[1].mode: group `chat` holds chat deployments (deployments[0]): a group holds one mode",
        "deployments[2].mode: Anthropic has no embeddings API",
        "deployments[3].dimensions: an embedding deployment says the vector size `unknown-model` returns",
        "deployments[3].max_inputs: must be > 0",
        "deployments[4].max_inputs: gemini takes at most 100 inputs per call",
        "routing.default_embedding_group: `chat` is a group of chat deployments",
        "routing.fallbacks.chat[0]: `embed` is a group of embedding deployments, `chat` of chat",
        "groups.chat.cross_space: only for groups of embedding deployments",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let chat_only = format!("{MINIMAL}\ndimensions = 8\nmode = \"vectors\"\n");
    let err = parse(&chat_only).unwrap_err().to_string();
    assert!(
        err.contains("deployments[0].mode: unknown mode `vectors` (chat | embedding)"),
        "{err}"
    );
    let err = parse(&format!("{MINIMAL}\ndimensions = 8\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deployments[0].dimensions: only for mode = \"embedding\""),
        "{err}"
    );
}

#[test]
fn duplicate_names_and_self_fallbacks_are_refused() {
    let text = format!("{MINIMAL}{MINIMAL}\n[routing.fallbacks]\nchat = [\"chat\"]\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("deployments[1].name: `a` is already the name of deployments[0]"));
    assert!(err.contains("routing.fallbacks.chat[0]: a group cannot fall back to itself"));
}

#[test]
fn alert_thresholds_are_checked() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!((c.alerts.error_rate, c.alerts.timeout_rate), (0.02, 0.01));
    assert_eq!(c.alerts.shift, Shift::Skip);
    let text = format!(
        "{MINIMAL}\n[alerts]\nerror_rate = 2\np95_factor = 0.5\nfallback_ratio_warn = 0.5\nwindow = \"1s\"\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    for expected in [
        "alerts.error_rate: must be a share above 0 and at most 1 (0.02 is 2 %)",
        "alerts.p95_factor: must be > 1",
        "alerts.fallback_ratio_critical: must be at least alerts.fallback_ratio_warn",
        "alerts.window: must be at least alerts.interval",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let err = parse(&format!("{MINIMAL}\n[alerts]\nshift = \"sideways\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `sideways`"), "{err}");
}
