//! The caller's OpenAI Chat Completions request, parsed once and checked before any routing.
//!
//! The body is kept as the JSON object the caller sent (`body`), so that provider adapters can pass
//! through fields we do not interpret without copying them; the few fields that routing needs are
//! read out into typed fields at parse time.

use serde_json::{Map, Value};

/// A request that passed validation. Shared (`Arc`) by every attempt of the fallback walk.
#[derive(Debug)]
pub struct ChatRequest {
    /// The caller's JSON object, untouched.
    pub body: Map<String, Value>,
    pub model: Option<String>,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Rough prompt size in tokens, for the `tpm` budget and context-window checks.
    pub estimated_prompt_tokens: u64,
    /// Size of the body as received, to size outgoing buffers once.
    pub size_hint: usize,
}

/// Why a request was refused before routing (`invalid_request`).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn bad(msg: impl Into<String>) -> InvalidRequest {
    InvalidRequest(msg.into())
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(bad(
                "empty body: expected an OpenAI chat completion request",
            ));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let Value::Object(body) = value else {
            return Err(bad("body must be a JSON object"));
        };
        let mut req = Self::from_object(body)?;
        req.size_hint = bytes.len();
        Ok(req)
    }

    pub fn from_object(body: Map<String, Value>) -> Result<Self, InvalidRequest> {
        let model = match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("`model` must be a string")),
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(Value::Array(_)) => return Err(bad("`messages` must not be empty")),
            Some(_) => return Err(bad("`messages` must be an array")),
            None => return Err(bad("`messages` is required")),
        };
        let mut chars = 0usize;
        for (i, m) in messages.iter().enumerate() {
            chars += check_message(i, m)?;
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("`stream` must be a boolean")),
        };
        let max_tokens = match positive_int(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => positive_int(&body, "max_tokens")?,
        };
        number_in(&body, "temperature", 0.0, 2.0)?;
        number_in(&body, "top_p", 0.0, 1.0)?;
        positive_int(&body, "n")?;
        if let Some(tools) = body.get("tools") {
            let Value::Array(tools) = tools else {
                return Err(bad("`tools` must be an array"));
            };
            // Tool schemas count against the context like prompt text does.
            chars += tools.iter().map(|t| t.to_string().len()).sum::<usize>();
        }
        if !matches!(body.get("extra_body"), None | Some(Value::Object(_))) {
            return Err(bad("`extra_body` must be an object"));
        }
        let estimated_prompt_tokens = estimate_tokens(chars) + 4 * messages.len() as u64;
        Ok(Self {
            model,
            stream,
            max_tokens,
            estimated_prompt_tokens,
            size_hint: 512,
            body,
        })
    }

    /// Tokens to reserve against a `tpm` budget before the call: the prompt plus the completion it
    /// may produce (its `max_tokens`, else a typical short reply).
    pub fn estimated_total_tokens(&self) -> u64 {
        self.estimated_prompt_tokens + u64::from(self.max_tokens.unwrap_or(256))
    }

    /// The caller's `extra_body`, for the provider it was meant for.
    pub fn extra_body(&self) -> Option<&Map<String, Value>> {
        self.body.get("extra_body").and_then(Value::as_object)
    }
}

/// Checks one message and returns the length of its text, for the token estimate.
fn check_message(i: usize, m: &Value) -> Result<usize, InvalidRequest> {
    let Value::Object(m) = m else {
        return Err(bad(format!("messages[{i}] must be an object")));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
        Some(Value::String(r)) => {
            return Err(bad(format!(
                "messages[{i}].role `{r}` is not one of {}",
                ROLES.join(", ")
            )));
        }
        _ => return Err(bad(format!("messages[{i}].role is required"))),
    };
    let len = match m.get("content") {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => s.len(),
                // Images and audio: count their encoded size, as a rough upper bound.
                _ => p.to_string().len(),
            })
            .sum(),
        None | Some(Value::Null) if role == "assistant" && m.contains_key("tool_calls") => 0,
        None | Some(Value::Null) => {
            return Err(bad(format!("messages[{i}].content is required")));
        }
        Some(_) => {
            return Err(bad(format!(
                "messages[{i}].content must be a string or an array of parts"
            )));
        }
    };
    let calls = m.get("tool_calls").map_or(0, |c| c.to_string().len());
    Ok(len + calls)
}

fn positive_int(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 && n <= u64::from(u32::MAX) => Ok(Some(n as u32)),
            _ => Err(bad(format!("`{key}` must be a positive integer"))),
        },
    }
}

fn number_in(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<(), InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(()),
            _ => Err(bad(format!("`{key}` must be a number from {lo} to {hi}"))),
        },
    }
}

/// English text averages about four characters per token with the GPT and Claude tokenizers.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatRequest, InvalidRequest> {
        ChatRequest::parse(s.as_bytes())
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
        // 9 + 25 chars → 9 tokens, plus 4 per message.
        assert_eq!(r.estimated_prompt_tokens, 17);
        assert_eq!(r.estimated_total_tokens(), 67);
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
}
