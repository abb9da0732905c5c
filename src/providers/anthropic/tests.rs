use std::num::NonZeroU32;

use super::*;
use crate::config::{Config, ProviderKind};

fn deployment() -> DeploymentConfig {
    let mut d = Config::demo().deployments.remove(0);
    d.provider = ProviderKind::Anthropic;
    d.model = "claude-sonnet-4-5".into();
    d.max_tokens = None;
    d.extra_body = None;
    d
}

fn body(d: &DeploymentConfig, req: Value) -> Result<Value, Failure> {
    let req = ChatRequest::parse(req.to_string().as_bytes()).unwrap();
    build_body(d, &req, true, false).map(|b| serde_json::from_slice(&b).unwrap())
}

fn untranslatable_message(req: Value) -> String {
    match body(&deployment(), req) {
        Err(Failure::Untranslatable(m)) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn system_prompts_are_lifted_and_turns_merged() {
    let b = body(
        &deployment(),
        json!({
            "model": "fast-chat",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello there."},
                {"role": "user", "content": [{"type": "text", "text": "Can you explain LLMs?"}]},
                {"role": "assistant", "content": "Hi, I'm Claude."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in one line."}]},
                {"role": "user", "content": "In plain English."}
            ],
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": "\n\nHuman:",
            "user": "user-42",
            "seed": 7,
            "logprobs": false
        }),
    )
    .unwrap();
    assert_eq!(
        b,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": "You are a helpful assistant.\n\nAnswer in one line.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Hello there."},
                    {"type": "text", "text": "Can you explain LLMs?"}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi, I'm Claude."}]},
                {"role": "user", "content": [{"type": "text", "text": "In plain English."}]}
            ],
            "temperature": 1.0,
            "top_p": 0.9,
            "stop_sequences": ["\n\nHuman:"],
            "metadata": {"user_id": "user-42"}
        })
    );
    let b = body(
        &deployment(),
        json!({"messages": [{"role": "user", "content": "x"}], "stop": ["END", "STOP"], "stream": true}),
    )
    .unwrap();
    assert_eq!(b["stop_sequences"], json!(["END", "STOP"]));
    assert!(
        b.get("stream").is_none(),
        "streaming is chosen by the caller of build_body"
    );
}

#[test]
fn max_tokens_comes_from_the_caller_then_the_deployment_then_the_default() {
    let mut d = deployment();
    let msg = json!([{"role": "user", "content": "x"}]);
    let b = body(&d, json!({"messages": msg})).unwrap();
    assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
    d.max_tokens = NonZeroU32::new(1000);
    assert_eq!(
        body(&d, json!({"messages": msg})).unwrap()["max_tokens"],
        1000
    );
    let b = body(&d, json!({"messages": msg, "max_tokens": 50})).unwrap();
    assert_eq!(b["max_tokens"], 50);
    let b = body(&d, json!({"messages": msg, "max_completion_tokens": 60})).unwrap();
    assert_eq!(b["max_tokens"], 60);
}

/// The weather example of Anthropic's tool-use guide, asked OpenAI-side.
#[test]
fn tools_tool_calls_and_tool_results() {
    let weather = json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
                "required": ["location"]
            }
        }
    });
    let b = body(
        &deployment(),
        json!({
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco and Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "15 degrees"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "20 degrees"}]},
                {"role": "user", "content": "Which is warmer?"}
            ],
            "tools": [weather],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false
        }),
    )
    .unwrap();
    assert_eq!(
        b["tools"],
        json!([{
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": weather["function"]["parameters"]
        }])
    );
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "What's the weather like in San Francisco and Paris?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"location": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "15 degrees"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "20 degrees"},
                {"type": "text", "text": "Which is warmer?"}
            ]}
        ])
    );
    for (choice, expected) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("required"), json!({"type": "any"})),
        (json!("none"), json!({"type": "none"})),
    ] {
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather], "tool_choice": choice}),
        )
        .unwrap();
        assert_eq!(b["tool_choice"], expected);
    }
    let b = body(
        &deployment(),
        json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather]}),
    )
    .unwrap();
    assert!(
        b.get("tool_choice").is_none(),
        "Anthropic's default is auto"
    );
}

#[test]
fn json_mode_is_an_instruction_in_the_system_prompt() {
    let msgs = json!([{"role": "system", "content": "Extract the fields."}, {"role": "user", "content": "Ann, 31"}]);
    let b = body(
        &deployment(),
        json!({"messages": msgs, "response_format": {"type": "json_object"}}),
    )
    .unwrap();
    assert_eq!(
        b["system"],
        "Extract the fields.\n\nRespond with only a valid JSON object: no prose and no code fences."
    );
    let schema =
        json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
    let b = body(
        &deployment(),
        json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}}}),
    )
    .unwrap();
    let system = b["system"].as_str().unwrap();
    assert!(system.starts_with("Extract the fields.\n\nRespond with only a valid JSON object"));
    assert!(
        system.ends_with(&format!("JSON schema:\n{schema}")),
        "{system}"
    );
}

#[test]
fn images_by_data_url_and_by_url() {
    let b = body(
        &deployment(),
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
            {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/ant.jpg", "detail": "high"}},
            {"type": "text", "text": "Describe these images.", "cache_control": {"type": "ephemeral"}}
        ]}]}),
    )
    .unwrap();
    assert_eq!(
        b["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/ant.jpg"}},
            {"type": "text", "text": "Describe these images.", "cache_control": {"type": "ephemeral"}}
        ])
    );
}

#[test]
fn what_cannot_be_said_in_the_messages_api_is_untranslatable() {
    let user = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
    let audio = untranslatable_message(user(
        json!({"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}),
    ));
    assert_eq!(audio, "a `input_audio` content part");
    let file = untranslatable_message(user(json!({"type": "file", "file": {"file_id": "file-1"}})));
    assert!(file.contains("`file`"), "{file}");
    let n = untranslatable_message(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}));
    assert!(n.contains("`n`"), "{n}");
    let unknown = untranslatable_message(
        json!({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}),
    );
    assert!(unknown.contains("`modalities`"), "{unknown}");
    let bad_args = untranslatable_message(json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
    ]}));
    assert!(bad_args.contains("tool call `f`"), "{bad_args}");
    let legacy = untranslatable_message(
        json!({"messages": [{"role": "function", "name": "f", "content": "1"}]}),
    );
    assert!(legacy.contains("`function` role"), "{legacy}");
}

#[test]
fn extra_body_is_merged_last_and_the_callers_only_when_meant_for_this_provider() {
    let mut d = deployment();
    d.extra_body =
        serde_json::from_value(json!({"top_k": 5, "thinking": {"type": "disabled"}, "model": "x"}))
            .unwrap();
    let req = ChatRequest::parse(
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0.2,
               "extra_body": {"thinking": {"type": "enabled", "budget_tokens": 2048}, "temperature": 1}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let b: Value = serde_json::from_slice(&build_body(&d, &req, true, true).unwrap()).unwrap();
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["top_k"], 5);
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(b["temperature"], 1);
    assert_eq!(b["stream"], true);
    let b: Value = serde_json::from_slice(&build_body(&d, &req, false, false).unwrap()).unwrap();
    assert_eq!(b["thinking"], json!({"type": "disabled"}));
    assert_eq!(b["temperature"], 0.2);
    assert!(b.get("extra_body").is_none());
}

fn completion(body: Value) -> Value {
    let c = parse_response(body.to_string().as_bytes()).unwrap();
    assert!(c.created > 0);
    let mut v = serde_json::to_value(c).unwrap();
    v.as_object_mut().unwrap().remove("created");
    v
}

#[test]
fn a_text_reply_becomes_a_chat_completion() {
    let reply = json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "A greeting.", "signature": "EqQB"},
            {"type": "text", "text": "Hi! My name is Claude."}
        ],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
    });
    assert_eq!(
        completion(reply),
        json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "object": "chat.completion",
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2200, "completion_tokens": 503, "total_tokens": 2703}
        })
    );
}

#[test]
fn a_tool_use_reply_becomes_tool_calls() {
    // Anthropic's tool-use guide example.
    let reply = json!({
        "id": "msg_01Aq9w938a90dw8q",
        "model": "claude-opus-4-6",
        "stop_reason": "tool_use",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
        ]
    });
    assert_eq!(
        completion(reply),
        json!({
            "id": "msg_01Aq9w938a90dw8q",
            "object": "chat.completion",
            "model": "claude-opus-4-6",
            "choices": [{"index": 0, "message": {
                "role": "assistant",
                "content": "I'll check the current weather in San Francisco for you.",
                "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"
                }}]
            }, "finish_reason": "tool_calls"}],
            "usage": null
        })
    );
}

#[test]
fn every_stop_reason_has_a_finish_reason_and_bad_bodies_are_invalid() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let reply = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
        let c = parse_response(reply.to_string().as_bytes()).unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some(finish),
            "{stop}"
        );
        assert_eq!(c.text(), None, "no text blocks: null content");
    }
    for bad in [
        &b"<html>502</html>"[..],
        br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        br#"{"id":"msg_1","type":"message","content":"hi"}"#,
    ] {
        assert!(
            matches!(parse_response(bad), Err(Failure::InvalidBody(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn documented_error_bodies_name_their_type() {
    for (kind, message) in [
        ("invalid_request_error", "max_tokens: Field required"),
        ("authentication_error", "invalid x-api-key"),
        ("billing_error", "Your credit balance is too low."),
        (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        (
            "not_found_error",
            "The requested resource could not be found.",
        ),
        (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        (
            "api_error",
            "An unexpected error has occurred internal to Anthropic's systems.",
        ),
        ("overloaded_error", "Overloaded"),
    ] {
        let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"});
        assert_eq!(
            error_message(body.to_string().as_bytes()),
            format!("{kind}: {message}")
        );
    }
    assert_eq!(
        error_message(b"upstream connect error"),
        "upstream connect error"
    );
}

#[tokio::test]
async fn a_call_sends_the_anthropic_headers_and_reads_errors() {
    let mut d = deployment();
    d.api_key = Some(crate::config::Secret::new("sk-ant-test"));
    let req = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap();
    // Sent the way every deployment sends: through the HTTP backend over this format.
    let call = |base: String| {
        let mut d = d.clone();
        d.api_base = base;
        let client = crate::providers::http::client().unwrap();
        let backend =
            crate::providers::send::HttpBackend::new(Box::new(Anthropic), None, &d, client);
        let req = &req;
        async move { backend.call(&d, req, true).await }
    };

    let reply = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":8,"output_tokens":2}}"#;
    let (base, seen) = super::super::one_shot::serve(200, "", reply).await;
    let answer = call(base).await.unwrap();
    assert!(matches!(answer, Answer::Built(c) if c.text() == Some("Hi")));
    let request = seen.await.unwrap().to_ascii_lowercase();
    assert!(
        request.starts_with("post /v1/messages http/1.1"),
        "{request}"
    );
    assert!(request.contains("x-api-key: sk-ant-test"));
    assert!(request.contains("anthropic-version: 2023-06-01"));
    assert!(request.contains("content-type: application/json"));

    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let (base, _) = super::super::one_shot::serve(529, "retry-after: 3\r\n", overloaded).await;
    assert_eq!(
        call(base).await.unwrap_err(),
        Failure::Status {
            status: 529,
            message: "overloaded_error: Overloaded".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        }
    );
}
