//! The request reader's tests: both readings agree, bad input is refused with its reason.
use super::*;
use proptest::prelude::*;

fn parse(s: &str) -> Result<ChatRequest, InvalidRequest> {
    ChatRequest::parse(s.as_bytes())
}

/// JSON-ish text: the parser sees mostly near-misses of real requests, not only noise.
fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"messages\"".to_string()),
        Just("\"role\"".to_string()),
        Just("\"content\"".to_string()),
        Just("\"user\"".to_string()),
        Just("\"tools\"".to_string()),
        Just("\"max_tokens\"".to_string()),
        Just("\"temperature\"".to_string()),
        Just("\"stream\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
        "[a-z\\\\\"]{0,6}",
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_byte_string_panics_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ChatRequest::parse(&bytes);
    }

    #[test]
    fn no_json_like_text_panics_the_parser(text in jsonish()) {
        if let Ok(r) = ChatRequest::parse(text.as_bytes()) {
            prop_assert!(r.estimated_total_tokens() >= r.estimated_prompt_tokens);
        }
    }
}

/// What a parse read, comparable across the two ways of reading (the token estimate
/// apart: JSON inside a message, `tool_calls`, is estimated from the caller's text on one
/// way and from its re-serialised text, keys sorted, on the other).
fn read(r: &Result<ChatRequest, InvalidRequest>) -> Result<String, String> {
    match r {
        Ok(r) => Ok(format!(
            "{:?} {} {:?} {:?} {:?} {:?}",
            r.model,
            r.stream,
            r.max_tokens,
            r.temperature,
            r.extra_body(),
            r.body()
        )),
        Err(e) => Err(e.0.clone()),
    }
}

/// The two estimates of one body are close: within a tenth, and a few tokens.
fn close(a: &Result<ChatRequest, InvalidRequest>, b: &Result<ChatRequest, InvalidRequest>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            let (a, b) = (a.estimated_prompt_tokens, b.estimated_prompt_tokens);
            a.abs_diff(b) <= 4 + a.max(b) / 10
        }
        _ => true,
    }
}

/// Requests of the shapes callers send, with their near misses.
fn requestish() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just(r#""Hello there""#.to_string()),
        Just(r#""line\nbreak \"quoted\" \\ back""#.to_string()),
        Just(r#""""#.to_string()),
        Just("null".to_string()),
        Just("5".to_string()),
        Just(r#"[{"type":"text","text":"part one"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]"#.to_string()),
        Just(r#"["bare"]"#.to_string()),
    ];
    let role = prop_oneof![
        Just(r#""user""#),
        Just(r#""assistant""#),
        Just(r#""wizard""#),
        Just("7"),
    ];
    let message = (role, text, any::<bool>(), any::<bool>()).prop_map(|(r, t, calls, spaced)| {
        let calls = if calls {
            r#","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]"#
        } else {
            ""
        };
        let sep = if spaced { " : " } else { ":" };
        format!(r#"{{"role"{sep}{r},"content"{sep}{t}{calls}}}"#)
    });
    let messages = prop_oneof![
        proptest::collection::vec(message, 0..4).prop_map(|m| format!("[{}]", m.join(","))),
        Just("\"hi\"".to_string()),
        Just("null".to_string()),
    ];
    let extra = prop_oneof![
        Just(String::new()),
        Just(r#","max_tokens":50"#.to_string()),
        Just(r#","max_tokens":-1"#.to_string()),
        Just(r#","max_completion_tokens":5.0"#.to_string()),
        Just(r#","temperature":0.2,"top_p":1"#.to_string()),
        Just(r#","temperature":"hot""#.to_string()),
        Just(r#","stream":true"#.to_string()),
        Just(r#","stream":"yes""#.to_string()),
        Just(r#","model":"fast","model":"slow""#.to_string()),
        Just(r#","model":7"#.to_string()),
        Just(
            r#","tools":[{"type":"function","function":{"name":"w","parameters":{}}}]"#.to_string()
        ),
        Just(r#","tools":{}"#.to_string()),
        Just(r#","extra_body":{"seed":1}"#.to_string()),
        Just(r#","extra_body":null"#.to_string()),
        Just(r#","unknown":{"deep":[1,2,{"x":null}]}"#.to_string()),
    ];
    (messages, proptest::collection::vec(extra, 0..4))
        .prop_map(|(m, extra)| format!(r#"{{"messages":{m}{}}}"#, extra.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The plain reading and the whole parse accept and refuse the same bodies, with the
    /// same reasons, and read the same fields out of them.
    #[test]
    fn both_readings_agree(text in requestish()) {
        let bytes = text.as_bytes();
        prop_assume!(plain(bytes));
        let raw = ChatRequest::parse_raw(Bytes::copy_from_slice(bytes));
        let whole = ChatRequest::parse_whole(bytes);
        prop_assert_eq!(read(&raw), read(&whole), "{}", text);
        prop_assert!(close(&raw, &whole), "{}", text);
    }

    #[test]
    fn both_readings_agree_on_noise(text in jsonish()) {
        let bytes = text.as_bytes();
        prop_assume!(plain(bytes));
        let raw = ChatRequest::parse_raw(Bytes::copy_from_slice(bytes));
        let whole = ChatRequest::parse_whole(bytes);
        prop_assert_eq!(read(&raw).is_ok(), read(&whole).is_ok(), "{}", text);
        if raw.is_ok() {
            prop_assert_eq!(read(&raw), read(&whole), "{}", text);
        }
    }
}

#[test]
fn bodies_a_plain_reading_could_misjudge_are_parsed_whole() {
    // A lone surrogate: skipping accepts it, a parse does not.
    let lone = r#"{"messages":[{"role":"user","content":"x"}],"user":"\ud800"}"#;
    assert!(!plain(lone.as_bytes()));
    assert!(parse(lone).unwrap_err().0.contains("body is not JSON"));
    // Deeper than serde_json's limit, in a field nobody reads.
    let deep = format!(
        r#"{{"messages":[{{"role":"user","content":"x"}}],"x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(!plain(deep.as_bytes()));
    assert!(parse(&deep).unwrap_err().0.contains("recursion limit"));
    // Non-ASCII written as escapes (Python's json.dumps does) reads plainly.
    let escaped = r#"{"messages":[{"role":"user","content":"caf\u00e9 \u4e2d"}]}"#;
    assert!(plain(escaped.as_bytes()));
    assert!(parse(escaped).unwrap().raw.is_some());
}

#[test]
fn members_are_the_callers_bytes_in_the_callers_order() {
    let r = parse(r#"{"messages": [ {"role":"user",  "content":"hi"} ],"model":"a","zeta":{"k" : 1},"alpha":2,"alpha":3}"#).unwrap();
    let members: Vec<(&str, String)> = r
        .members()
        .map(|(k, v)| match v {
            Member::Raw(b) => (k, String::from_utf8_lossy(b).into_owned()),
            Member::Parsed(v) => (k, v.to_string()),
        })
        .collect();
    assert_eq!(
        members,
        [
            (
                "messages",
                r#"[ {"role":"user",  "content":"hi"} ]"#.to_string()
            ),
            ("model", r#""a""#.to_string()),
            ("zeta", r#"{"k" : 1}"#.to_string()),
            ("alpha", "3".to_string()),
        ]
    );
    assert_eq!(r.body()["alpha"], 3);
    assert_eq!(r.body()["zeta"]["k"], 1);
}

#[test]
fn a_peek_reads_model_and_stream_as_the_engine_will() {
    assert_eq!(
        Peek::of(br#"{"model":"a","stream":true,"model":"b"}"#),
        Peek {
            model: Some("b".into()),
            stream: Some(true)
        }
    );
    assert_eq!(
        Peek::of(br#"{"model":"caf\u00e9"}"#).model.as_deref(),
        Some("café")
    );
    assert_eq!(Peek::of(b"[1]"), Peek::default());
    assert_eq!(Peek::of(br#"{"model":7,"stream":"yes"}"#), Peek::default());
}

#[test]
fn a_plain_request_parses_with_its_routing_fields() {
    let r = parse(
        r#"{"model":"fast-chat","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there, how are you?"}],"max_tokens":50,"temperature":0.2}"#,
    )
    .unwrap();
    assert_eq!(r.model.as_deref(), Some("fast-chat"));
    assert_eq!(r.max_tokens, Some(50));
    assert!(!r.stream);
    // "Be brief." 3 + "Hello there, how are you?" 7, plus 4 per message.
    assert_eq!(r.estimated_prompt_tokens, 18);
    assert_eq!(r.estimated_total_tokens(), 68);
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let cases = [
        ("", "empty body"),
        ("not json", "body is not JSON"),
        ("[1,2]", "body must be a JSON object"),
        (r#"{}"#, "`messages` is required"),
        (r#"{"messages":[]}"#, "`messages` must not be empty"),
        (r#"{"messages":"hi"}"#, "`messages` must be an array"),
        (
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            "messages[0].role `wizard`",
        ),
        (
            r#"{"messages":[{"content":"x"}]}"#,
            "messages[0].role is required",
        ),
        (
            r#"{"messages":[{"role":"user"}]}"#,
            "messages[0].content is required",
        ),
        (
            r#"{"messages":[{"role":"user","content":5}]}"#,
            "messages[0].content must be",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            "`max_tokens` must be a positive integer",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            "`temperature` must be a number",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#,
            "`model` must be a string",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            "`stream` must be a boolean",
        ),
    ];
    for (input, expected) in cases {
        let err = parse(input).unwrap_err().0;
        assert!(err.contains(expected), "{input:?} gave {err:?}");
    }
}

#[test]
fn assistant_tool_calls_may_have_null_content() {
    let r = parse(
        r#"{"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}]}"#,
    );
    assert!(r.is_ok(), "{r:?}");
}
