//! The caller's OpenAI embeddings request (docs/contract.md §10) and the `list` reply every caller
//! gets, whichever provider served it.
//!
//! The request is read into typed fields at once (unlike chat, nothing of it passes through to a
//! provider untouched): the inputs, the optional `model` and `dimensions`, and how the vectors go
//! back (`encoding_format`).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::InvalidRequest;
use super::request::estimate_text_tokens;
use super::subjects::Endpoints;

/// The most inputs one request may hold. OpenAI takes 2,048 per call; we split into calls, so the
/// bound is only there to keep one request's work finite (the body's size bounds it too).
pub const MAX_INPUTS: usize = 100_000;

/// One text to embed.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    /// Token ids of the model's tokenizer; only OpenAI-compatible providers take these.
    Tokens(Vec<u32>),
}

impl EmbedInput {
    /// Rough size in tokens, for `tpm` and for splitting under a provider's token limit.
    pub fn estimated_tokens(&self) -> u64 {
        match self {
            Self::Text(t) => estimate_text_tokens(t).max(1),
            Self::Tokens(t) => t.len() as u64,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t),
            Self::Tokens(_) => None,
        }
    }
}

/// How the vectors go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON arrays of numbers.
    #[default]
    Float,
    /// The little-endian float32 bytes of each vector, base64 (about a third of the size).
    Base64,
}

/// An embeddings request that passed validation.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub inputs: Vec<EmbedInput>,
    pub model: Option<String>,
    pub dimensions: Option<u32>,
    pub encoding: Encoding,
    /// OpenAI's end-user id, passed on where the provider takes it.
    pub user: Option<String>,
    /// The sum of the inputs' estimates.
    pub estimated_tokens: u64,
}

fn bad(msg: impl Into<String>) -> InvalidRequest {
    InvalidRequest(msg.into())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

impl EmbedRequest {
    /// The request in `bytes`; a chat body is sent to `endpoints.chat`, as its door names it.
    pub fn parse(bytes: &[u8], endpoints: &Endpoints) -> Result<Self, InvalidRequest> {
        /// The fields read, each left raw or as a `Value` to be checked with our own message;
        /// the inputs are read once, straight into strings (no JSON tree for a 10,000-text body).
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(default, borrow)]
            input: Option<&'a RawValue>,
            #[serde(default, borrow)]
            messages: Option<&'a RawValue>,
            #[serde(default)]
            model: Option<Value>,
            #[serde(default)]
            dimensions: Option<Value>,
            #[serde(default)]
            encoding_format: Option<Value>,
            #[serde(default)]
            user: Option<Value>,
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(bad("empty body: expected an OpenAI embeddings request"));
        }
        // serde would also read a struct from an array: only an object is a body.
        let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let body: Body<'_> = match serde_json::from_slice(bytes) {
            Ok(_) if !object => return Err(bad("body must be a JSON object")),
            Ok(b) => b,
            Err(e) if e.is_data() => return Err(bad("body must be a JSON object")),
            Err(e) => return Err(bad(format!("body is not JSON: {e}"))),
        };
        if body.messages.is_some() {
            return Err(bad(format!(
                "this is a chat request (`messages`): send it to {}, not {}",
                endpoints.chat, endpoints.embed
            )));
        }
        let inputs = match body.input.map(RawValue::get) {
            None | Some("null") => return Err(bad("`input` is required")),
            Some(text) => match serde_json::from_str::<RawInput>(text) {
                Ok(RawInput::One(s)) => vec![EmbedInput::Text(s)],
                Ok(RawInput::Many(v)) => v.into_iter().map(EmbedInput::Text).collect(),
                Ok(RawInput::Tokens(t)) => vec![EmbedInput::Tokens(t)],
                Ok(RawInput::ManyTokens(v)) => v.into_iter().map(EmbedInput::Tokens).collect(),
                Err(_) => {
                    return Err(bad(
                        "`input` must be a string, an array of strings, an array of token ids or an array of such arrays",
                    ));
                }
            },
        };
        if inputs.is_empty() {
            return Err(bad("`input` must not be empty"));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(bad(format!(
                "`input` holds {} items, more than {MAX_INPUTS}: send a batch job instead",
                inputs.len()
            )));
        }
        for (i, input) in inputs.iter().enumerate() {
            let empty = match input {
                EmbedInput::Text(t) => t.is_empty(),
                EmbedInput::Tokens(t) => t.is_empty(),
            };
            if empty {
                return Err(bad(format!("`input[{i}]` is empty")));
            }
        }
        let model = match &body.model {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("`model` must be a string")),
        };
        let dimensions = match &body.dimensions {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=65_536) => Some(n as u32),
                _ => return Err(bad("`dimensions` must be an integer from 1 to 65536")),
            },
        };
        let encoding = match &body.encoding_format {
            None | Some(Value::Null) => Encoding::Float,
            Some(Value::String(s)) if s == "float" => Encoding::Float,
            Some(Value::String(s)) if s == "base64" => Encoding::Base64,
            Some(_) => return Err(bad("`encoding_format` must be \"float\" or \"base64\"")),
        };
        let user = match &body.user {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("`user` must be a string")),
        };
        let estimated_tokens = inputs
            .iter()
            .map(EmbedInput::estimated_tokens)
            .fold(0u64, u64::saturating_add);
        Ok(Self {
            inputs,
            model,
            dimensions,
            encoding,
            user,
            estimated_tokens,
        })
    }
}

/// The OpenAI `list` reply: one `embedding` object per vector, in input order, with `model` the
/// served model and `usage` the input tokens.
pub fn list_body(
    vectors: &[Vec<f32>],
    encoding: Encoding,
    model: &str,
    prompt_tokens: u64,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let dims = vectors.first().map_or(0, Vec::len);
    let per = match encoding {
        Encoding::Float => dims * 12 + 64,
        Encoding::Base64 => dims * 6 + 64,
    };
    let mut out = String::with_capacity(vectors.len() * per + 128);
    out.push_str(r#"{"object":"list","data":["#);
    let mut raw = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#"{{"object":"embedding","index":{i},"embedding":"#);
        match encoding {
            Encoding::Float => {
                out.push('[');
                let mut buf = ryu::Buffer::new();
                for (j, x) in v.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    // JSON holds no NaN: a provider's never reaches a caller as invalid JSON.
                    out.push_str(if x.is_finite() {
                        buf.format_finite(*x)
                    } else {
                        "0"
                    });
                }
                out.push(']');
            }
            Encoding::Base64 => {
                raw.clear();
                raw.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(&raw, &mut out);
                out.push('"');
            }
        }
        out.push('}');
    }
    out.push_str("],\"model\":");
    // A model name is a plain string; serializing it escapes what needs escaping.
    out.push_str(&serde_json::to_string(model).unwrap_or_else(|_| "\"\"".into()));
    let _ = write!(
        out,
        r#","usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}"#
    );
    out.into_bytes()
}

/// The vectors of a `list` reply as a caller reads them back (either encoding), in index order.
pub fn read_list(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        index: usize,
        embedding: Value,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = vec![Vec::new(); list.data.len()];
    for item in list.data {
        let v = match item.embedding {
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).ok_or("not a number"))
                .collect::<Result<Vec<f32>, _>>()?,
            Value::String(s) => decode_base64(&s)?,
            _ => return Err("embedding is neither an array nor a string".into()),
        };
        let slot = out.get_mut(item.index).ok_or("index out of range")?;
        *slot = v;
    }
    Ok(out)
}

/// A base64 vector of little-endian float32s.
pub fn decode_base64(s: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of float32s",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_byte_string_panics_the_embeddings_parser(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = EmbedRequest::parse(&bytes, &Endpoints::NATS);
        }

        #[test]
        fn any_inputs_parse_back_in_order(texts in proptest::collection::vec("[a-z ]{1,12}", 1..20)) {
            let body = serde_json::json!({ "input": texts }).to_string();
            let r = EmbedRequest::parse(body.as_bytes(), &Endpoints::NATS).unwrap();
            let got: Vec<&str> = r.inputs.iter().filter_map(EmbedInput::text).collect();
            prop_assert_eq!(got, texts.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn every_input_shape_parses() {
        let r = EmbedRequest::parse(br#"{"input":"hello world","model":"m"}"#, &Endpoints::NATS)
            .unwrap();
        assert_eq!(r.inputs, vec![EmbedInput::Text("hello world".into())]);
        assert_eq!(r.model.as_deref(), Some("m"));
        let r = EmbedRequest::parse(
            br#"{"input":["a","b"],"dimensions":256,"encoding_format":"base64"}"#,
            &Endpoints::NATS,
        )
        .unwrap();
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.dimensions, Some(256));
        assert_eq!(r.encoding, Encoding::Base64);
        let r = EmbedRequest::parse(br#"{"input":[1,2,3]}"#, &Endpoints::NATS).unwrap();
        assert_eq!(r.inputs, vec![EmbedInput::Tokens(vec![1, 2, 3])]);
        let r = EmbedRequest::parse(br#"{"input":[[1],[2,3]]}"#, &Endpoints::NATS).unwrap();
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.estimated_tokens, 3);
    }

    #[test]
    fn bad_requests_say_why() {
        for (body, says) in [
            ("", "empty body"),
            ("[]", "JSON object"),
            (r#"{"model":"m"}"#, "`input` is required"),
            (r#"{"input":[]}"#, "must not be empty"),
            (r#"{"input":["a",""]}"#, "`input[1]` is empty"),
            (r#"{"input":[1,"a"]}"#, "`input` must be"),
            (r#"{"input":"a","dimensions":0}"#, "`dimensions`"),
            (r#"{"input":"a","dimensions":-3}"#, "`dimensions`"),
            (
                r#"{"input":"a","encoding_format":"int8"}"#,
                "`encoding_format`",
            ),
            (r#"{"input":"a","model":7}"#, "`model`"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                "chat request",
            ),
        ] {
            let e = EmbedRequest::parse(body.as_bytes(), &Endpoints::NATS).unwrap_err();
            assert!(e.0.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn both_encodings_read_back_the_same_vectors() {
        let vectors = vec![
            vec![0.5_f32, -1.25, 3.0e-8],
            vec![1.0, 0.0, f32::MIN_POSITIVE],
        ];
        for encoding in [Encoding::Float, Encoding::Base64] {
            let body = list_body(&vectors, encoding, "m\"x", 7);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["object"], "list");
            assert_eq!(v["model"], "m\"x");
            assert_eq!(v["usage"]["prompt_tokens"], 7);
            assert_eq!(v["data"][1]["index"], 1);
            assert_eq!(read_list(&body).unwrap(), vectors, "{encoding:?}");
        }
        let body = list_body(&[vec![f32::NAN]], Encoding::Float, "m", 1);
        assert!(serde_json::from_slice::<Value>(&body).is_ok());
    }
}
