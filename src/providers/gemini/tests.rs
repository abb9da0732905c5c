use std::num::NonZeroU32;

use super::*;
use crate::config::{Config, ProviderKind};

fn deployment() -> DeploymentConfig {
    let mut d = Config::demo().deployments.remove(0);
    d.provider = ProviderKind::Gemini;
    d.model = "gemini-2.0-flash".into();
    d.max_tokens = None;
    d.extra_body = None;
    d
}

fn body(d: &DeploymentConfig, req: Value) -> Result<Value, Failure> {
    let req = ChatRequest::parse(req.to_string().as_bytes()).unwrap();
    build_body(d, &req, true).map(|b| serde_json::from_slice(&b).unwrap())
}

fn untranslatable_message(req: Value) -> String {
    match body(&deployment(), req) {
        Err(Failure::Untranslatable(m)) => m,
        other => panic!("{other:?}"),
    }
}

const WEATHER: &str = r#"{"type": "function", "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "strict": true,
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "strict": {"type": "boolean"},
                "options": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "additionalProperties": false}
            },
            "required": ["location"],
            "additionalProperties": false
        }
    }}"#;

#[test]
fn system_instruction_roles_and_generation_config() {
    let b = body(
        &deployment(),
        json!({
            "model": "fast-chat",
            "messages": [
                {"role": "system", "content": "You are a cat."},
                {"role": "developer", "content": [{"type": "text", "text": "Your name is Neko."}]},
                {"role": "user", "content": "Hello"},
                {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
                {"role": "assistant", "content": "Meow. I am Neko."},
                {"role": "user", "content": "How many paws are in my house? I have two dogs."}
            ],
            "temperature": 1.0,
            "top_p": 0.8,
            "n": 2,
            "seed": 42,
            "max_tokens": 800,
            "stop": ["Title"],
            "user": "u-1",
            "parallel_tool_calls": true
        }),
    )
    .unwrap();
    assert_eq!(
        b,
        json!({
            "systemInstruction": {"parts": [{"text": "You are a cat.\n\nYour name is Neko."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}, {"text": "Who are you?"}]},
                {"role": "model", "parts": [{"text": "Meow. I am Neko."}]},
                {"role": "user", "parts": [{"text": "How many paws are in my house? I have two dogs."}]}
            ],
            "generationConfig": {
                "temperature": 1.0,
                "topP": 0.8,
                "candidateCount": 2,
                "seed": 42,
                "maxOutputTokens": 800,
                "stopSequences": ["Title"]
            }
        })
    );
}

#[test]
fn max_output_tokens_from_the_caller_else_the_deployment_else_unset() {
    let mut d = deployment();
    let msgs = json!([{"role": "user", "content": "x"}]);
    assert!(
        body(&d, json!({"messages": msgs}))
            .unwrap()
            .get("generationConfig")
            .is_none()
    );
    d.max_tokens = NonZeroU32::new(2048);
    let b = body(&d, json!({"messages": msgs, "stop": "END"})).unwrap();
    assert_eq!(
        b["generationConfig"],
        json!({"maxOutputTokens": 2048, "stopSequences": ["END"]})
    );
    let b = body(&d, json!({"messages": msgs, "max_completion_tokens": 9})).unwrap();
    assert_eq!(b["generationConfig"]["maxOutputTokens"], 9);
}

/// The function-calling flow of the Gemini docs, asked OpenAI-side.
#[test]
fn tools_function_calls_and_function_responses() {
    let weather: Value = serde_json::from_str(WEATHER).unwrap();
    let b = body(
        &deployment(),
        json!({
            "messages": [
                {"role": "user", "content": "What is the weather like in Boston?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_0", "content": "{\"temperature\": 22, \"unit\": \"celsius\"}"},
                {"role": "user", "content": "And in Paris?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [weather],
            "tool_choice": "required"
        }),
    )
    .unwrap();
    assert_eq!(
        b["contents"],
        json!([
            {"role": "user", "parts": [{"text": "What is the weather like in Boston?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_current_weather", "args": {"location": "Boston, MA"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_current_weather", "response": {"temperature": 22, "unit": "celsius"}}},
                {"text": "And in Paris?"}
            ]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_current_weather", "args": {"location": "Paris"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_current_weather", "response": {"content": "sunny"}}}]}
        ])
    );
    assert_eq!(
        b["tools"],
        json!([{"functionDeclarations": [{
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "strict": {"type": "boolean"},
                    "options": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
                },
                "required": ["location"]
            }
        }]}])
    );
    assert_eq!(
        b["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    for (choice, expected) in [
        (json!("auto"), json!({"mode": "AUTO"})),
        (json!("none"), json!({"mode": "NONE"})),
        (
            json!({"type": "function", "function": {"name": "get_current_weather"}}),
            json!({"mode": "ANY", "allowedFunctionNames": ["get_current_weather"]}),
        ),
    ] {
        let b = body(
            &deployment(),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [weather], "tool_choice": choice}),
        )
        .unwrap();
        assert_eq!(b["toolConfig"]["functionCallingConfig"], expected);
    }
}

#[test]
fn json_mode_and_schemas() {
    let msgs = json!([{"role": "user", "content": "List a few popular cookie recipes."}]);
    let b = body(
        &deployment(),
        json!({"messages": msgs, "response_format": {"type": "json_object"}}),
    )
    .unwrap();
    assert_eq!(
        b["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"recipeName": {"type": "string"}, "ingredients": {"type": "array", "items": {"type": "string"}}},
            "required": ["recipeName"],
            "additionalProperties": false
        }
    });
    let b = body(
        &deployment(),
        json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "recipes", "strict": true, "schema": schema}}}),
    )
    .unwrap();
    assert_eq!(
        b["generationConfig"],
        json!({
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"recipeName": {"type": "string"}, "ingredients": {"type": "array", "items": {"type": "string"}}},
                    "required": ["recipeName"]
                }
            }
        })
    );
}

#[test]
fn images_audio_and_files_go_inline() {
    let b = body(
        &deployment(),
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Caption this image."},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
        ]}]}),
    )
    .unwrap();
    assert_eq!(
        b["contents"][0]["parts"],
        json!([
            {"text": "Caption this image."},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}
        ])
    );
}

#[test]
fn what_cannot_be_said_in_gemini_is_untranslatable() {
    let user = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
    let url = untranslatable_message(user(
        json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
    ));
    assert!(url.contains("http(s) URL"), "{url}");
    let file = untranslatable_message(user(
        json!({"type": "file", "file": {"file_id": "file-abc"}}),
    ));
    assert!(file.contains("file_id"), "{file}");
    let orphan = untranslatable_message(json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "call_9", "content": "42"}
    ]}));
    assert!(
        orphan.contains("`call_9` matches no earlier tool call"),
        "{orphan}"
    );
    let unknown = untranslatable_message(
        json!({"messages": [{"role": "user", "content": "x"}], "web_search_options": {}}),
    );
    assert!(unknown.contains("`web_search_options`"), "{unknown}");
    let tool = untranslatable_message(
        json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
    );
    assert!(tool.contains("`custom`"), "{tool}");
}

#[test]
fn extra_body_merges_into_the_translated_settings() {
    let mut d = deployment();
    d.extra_body = serde_json::from_value(json!({"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}]})).unwrap();
    let req = ChatRequest::parse(
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0.2,
               "extra_body": {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let b: Value = serde_json::from_slice(&build_body(&d, &req, true).unwrap()).unwrap();
    assert_eq!(
        b["generationConfig"],
        json!({"temperature": 0.2, "thinkingConfig": {"thinkingBudget": 0}})
    );
    assert_eq!(b["safetySettings"][0]["threshold"], "BLOCK_ONLY_HIGH");
    let b: Value = serde_json::from_slice(&build_body(&d, &req, false).unwrap()).unwrap();
    assert_eq!(b["generationConfig"], json!({"temperature": 0.2}));
}

fn completion(body: Value) -> Value {
    let c = parse_response(body.to_string().as_bytes(), "gemini-2.0-flash").unwrap();
    let mut v = serde_json::to_value(c).unwrap();
    v.as_object_mut().unwrap().remove("created");
    v
}

#[test]
fn a_text_reply_becomes_a_chat_completion() {
    let reply = json!({
        "candidates": [{
            "content": {"parts": [
                {"text": "The user asks about AI.", "thought": true},
                {"text": "AI learns patterns from data."}
            ], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}]
        }],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 10, "thoughtsTokenCount": 5, "totalTokenCount": 23,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mcVLaNjNKNyJ1dkP0-v9iAo"
    });
    assert_eq!(
        completion(reply),
        json!({
            "id": "chatcmpl-mcVLaNjNKNyJ1dkP0-v9iAo",
            "object": "chat.completion",
            "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "AI learns patterns from data."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 15, "total_tokens": 23}
        })
    );
}

#[test]
fn a_function_call_reply_becomes_tool_calls() {
    let reply = json!({
        "candidates": [{
            "content": {"parts": [
                {"functionCall": {"name": "get_current_weather", "args": {"location": "Boston, MA"}}},
                {"functionCall": {"name": "get_current_weather", "args": {"location": "Paris"}}}
            ], "role": "model"},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12, "totalTokenCount": 42}
    });
    let v = completion(reply.clone());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["model"], "gemini-2.0-flash",
        "no modelVersion: the deployment's model"
    );
    // Gemini sends no ids: they are made up like OpenAI's, and never repeat.
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    for id in &ids {
        assert_made_up_id(id);
    }
    assert_ne!(ids[0], ids[1]);
    let again = completion(reply);
    let again = again["choices"][0]["message"]["tool_calls"][0]["id"]
        .as_str()
        .unwrap();
    assert!(!ids.contains(&again), "another reply, other ids");
    let mut v = v;
    for call in v["choices"][0]["message"]["tool_calls"]
        .as_array_mut()
        .unwrap()
    {
        call["id"] = json!("ID");
    }
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "ID", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}},
            {"id": "ID", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}
        ]}, "finish_reason": "tool_calls"}])
    );
}

/// `call_` and 24 ASCII alphanumerics, as OpenAI's tool call ids.
pub(super) fn assert_made_up_id(id: &str) {
    let random = id.strip_prefix("call_").unwrap_or_else(|| panic!("{id}"));
    assert_eq!(random.len(), 24, "{id}");
    assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
}

#[test]
fn every_finish_reason_and_a_blocked_prompt() {
    for (reason, finish) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
    ] {
        let reply = json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason, "index": 0}]});
        let c = parse_response(reply.to_string().as_bytes(), "m").unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some(finish),
            "{reason}"
        );
    }
    let blocked = json!({
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": "gemini-2.0-flash"
    });
    let v = completion(blocked);
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "content_filter"}])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7})
    );
    for bad in [&b"<html>502</html>"[..], br#"{"candidates":[]}"#, br#"{}"#] {
        assert!(
            matches!(parse_response(bad, "m"), Err(Failure::InvalidBody(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn documented_error_bodies_name_their_status() {
    for (code, status, message) in [
        (
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        ),
        (
            400,
            "FAILED_PRECONDITION",
            "User location is not supported for the API use.",
        ),
        (
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
        ),
        (
            404,
            "NOT_FOUND",
            "models/gemini-9 is not found for API version v1beta",
        ),
        (
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        (500, "INTERNAL", "An internal error has occurred."),
        (
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        (
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
    ] {
        let body = json!({"error": {"code": code, "message": message, "status": status}});
        assert_eq!(
            error_message(body.to_string().as_bytes()),
            format!("{status}: {message}")
        );
    }
    let wrapped =
        br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#;
    assert_eq!(error_message(wrapped), "RESOURCE_EXHAUSTED: Quota exceeded");
    assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
}

#[tokio::test]
async fn a_call_posts_to_generate_content_with_the_key_header() {
    let mut d = deployment();
    d.api_key = Some(crate::config::Secret::new("AIza-test"));
    let req = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap();
    // Sent the way every deployment sends: through the HTTP backend over this format.
    let call = |base: String, model: &str| {
        let mut d = d.clone();
        d.api_base = base;
        d.model = model.into();
        let client = crate::providers::http::client().unwrap();
        let backend = crate::providers::send::HttpBackend::new(Box::new(Gemini), None, &d, client);
        let req = &req;
        async move { backend.call(&d, req, true).await }
    };

    let reply = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1,"totalTokenCount":3}}"#;
    let (base, seen) = super::super::one_shot::serve(200, "", reply).await;
    let answer = call(base, "models/gemini-2.0-flash").await.unwrap();
    assert!(matches!(answer, Answer::Built(c) if c.text() == Some("Hi")));
    let request = seen.await.unwrap();
    assert!(
        request.starts_with("POST /v1beta/models/gemini-2.0-flash:generateContent HTTP/1.1"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("x-goog-api-key: aiza-test")
    );

    let quota = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
    let (base, _) = super::super::one_shot::serve(429, "", quota).await;
    assert_eq!(
        call(base, "gemini-2.0-flash").await.unwrap_err(),
        Failure::Status {
            status: 429,
            message: "RESOURCE_EXHAUSTED: Resource has been exhausted (e.g. check quota).".into(),
            retry_after: None,
        }
    );
    assert_eq!(
        endpoint(
            "https://generativelanguage.googleapis.com",
            "gemini-2.0-flash",
            true
        ),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
}
