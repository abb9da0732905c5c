//! Provider adapters: one file per wire format. Each turns our `ChatRequest` into that provider's
//! call and its answer into a `chat.completion` or a `Failure`. `classify` is the one place that
//! decides what the router does with a failure (contract section 2).

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod simulated;
pub mod stream;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::config::{BreakerConfig, DeploymentConfig, ProviderKind};
use crate::protocol::{ChatCompletion, ChatRequest, ErrorKind, Usage};

/// A successful call: the `chat.completion` JSON to send back (with `usage`, `model` and `id`
/// filled in), its usage, and what it cost.
#[derive(Debug, Clone)]
pub struct ProviderReply {
    pub body: Bytes,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// What an adapter got back.
#[derive(Debug)]
pub enum Answer {
    /// The provider's own bytes, already a complete `chat.completion` with `usage`: passed
    /// through untouched, with no re-serialization.
    Wire { body: Bytes, usage: Usage },
    /// A completion we built or must complete; serialized once.
    Built(ChatCompletion),
}

/// How a call failed, as seen on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The provider answered with a non-success HTTP status.
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The deployment's own `timeout` passed.
    Timeout,
    /// A stream ran for the deployment's whole `max_stream_duration` (`[limits]`) and was cut.
    StreamDuration(Duration),
    /// The caller's `Llm-Deadline` ran out during the call.
    DeadlineSpent,
    /// No connection could be made.
    Connect(String),
    /// The connection broke: reset, closed mid-body, protocol error.
    Transport(String),
    /// A success status with a body that is not a valid provider reply.
    InvalidBody(String),
    /// A request this provider cannot express (a content part, role or field it has no
    /// equivalent for). Nothing was sent; another provider may take it.
    Untranslatable(String),
}

impl Failure {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short stable name (`error.type` on trace spans).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "http_status",
            Self::Timeout => "timeout",
            Self::StreamDuration(_) => "stream_duration",
            Self::DeadlineSpent => "deadline_spent",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::InvalidBody(_) => "invalid_body",
            Self::Untranslatable(_) => "untranslatable",
        }
    }

    /// One line for logs and the `attempts` list.
    pub fn describe(&self) -> String {
        match self {
            Self::Status {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            Self::Timeout => "timed out".into(),
            Self::StreamDuration(d) => format!(
                "the stream ran past max_stream_duration ({})",
                humantime::format_duration(*d)
            ),
            Self::DeadlineSpent => "request deadline spent".into(),
            Self::Connect(e) => format!("connect error: {e}"),
            Self::Transport(e) => format!("connection error: {e}"),
            Self::InvalidBody(e) => format!("invalid provider reply: {e}"),
            Self::Untranslatable(e) => {
                format!("cannot translate the request for this provider: {e}")
            }
        }
    }
}

/// What the router does with a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The error kind if this failure ends the request (or is the last one).
    pub kind: ErrorKind,
    /// Try the next candidate.
    pub fall_back: bool,
    /// Counts as a circuit-breaker failure.
    pub count: bool,
    /// Keep this deployment out of routing for this long (`Retry-After`).
    pub cool_down: Option<Duration>,
}

/// The one exhaustive decision table of contract section 2.
pub fn classify(failure: &Failure, breaker: &BreakerConfig, fallback_on_auth: bool) -> Decision {
    let fall = |kind, count| Decision {
        kind,
        fall_back: true,
        count,
        cool_down: None,
    };
    let stop = |kind| Decision {
        kind,
        fall_back: false,
        count: false,
        cool_down: None,
    };
    let decision = match failure {
        Failure::Status {
            status,
            retry_after,
            ..
        } => match *status {
            400 | 413 | 422 => stop(ErrorKind::InvalidRequest),
            401 | 403 if fallback_on_auth => fall(ErrorKind::Auth, false),
            401 | 403 => stop(ErrorKind::Auth),
            404 => fall(ErrorKind::NotFound, false),
            // The provider does not take the request as asked (method, conflict, gone, payment):
            // another provider may; this one is not failing.
            402 | 405..=407 | 409..=412 | 414..=421 | 423..=428 | 430..=499 => {
                fall(ErrorKind::Unavailable, false)
            }
            408 => fall(ErrorKind::Unavailable, true),
            429 => Decision {
                cool_down: retry_after.map(|asked| capped_cool_down(asked, breaker)),
                ..fall(ErrorKind::RateLimited, true)
            },
            // 500, 502, 503, 504, Anthropic's 529 overloaded, and every other server error.
            500..=599 => fall(ErrorKind::Unavailable, true),
            // Informational, redirects and non-HTTP codes are not a provider reply we can use.
            0..=399 | 600.. => fall(ErrorKind::Unavailable, true),
        },
        Failure::Timeout
        | Failure::Connect(_)
        | Failure::Transport(_)
        | Failure::InvalidBody(_) => fall(ErrorKind::Unavailable, true),
        Failure::DeadlineSpent => stop(ErrorKind::Timeout),
        // Our own bound on a stream, not the provider failing (a long answer is not an outage;
        // a stalled one is caught by the idle `timeout`). It only happens once chunks went out,
        // when falling back is no longer possible anyway.
        Failure::StreamDuration(_) => fall(ErrorKind::Timeout, false),
        // The request, not the provider, is at fault here; a provider of another kind may take it.
        Failure::Untranslatable(_) => fall(ErrorKind::InvalidRequest, false),
    };
    match failure.status() {
        Some(s) if breaker.ignored_status.contains(&s) => Decision {
            count: false,
            ..decision
        },
        _ => decision,
    }
}

/// A provider's `Retry-After`, at most `breaker.max_retry_after`: a misconfigured proxy's
/// `Retry-After: 31536000` must not take a deployment away for a year.
fn capped_cool_down(asked: Duration, breaker: &BreakerConfig) -> Duration {
    let cap = breaker.max_retry_after;
    if asked > cap {
        tracing::warn!(
            asked_s = asked.as_secs_f64(),
            cap_s = cap.as_secs_f64(),
            "Retry-After above breaker.max_retry_after: cooling down for the cap"
        );
        cap
    } else {
        asked
    }
}

/// Everything an adapter needs for one call besides the request.
pub struct CallContext {
    /// Merge the caller's `extra_body`: only for the kind of provider it was first routed to.
    pub include_request_extra: bool,
    /// Set by the deployment actor for `simulated` deployments: what this call will do.
    pub fate: Option<simulated::Fate>,
}

/// One deployment's adapter: its config, its endpoint parsed once, and the shared HTTP client.
pub struct Adapter {
    pub config: DeploymentConfig,
    endpoint: Option<reqwest::Url>,
    /// Where streamed calls go, when that is not `endpoint` (Gemini).
    stream_endpoint: Option<reqwest::Url>,
    client: reqwest::Client,
}

impl Adapter {
    pub fn new(config: DeploymentConfig, client: reqwest::Client) -> Self {
        // Parsing a URL per request showed up in profiles; config validation checked it already.
        let endpoint = match config.provider {
            ProviderKind::OpenAi => {
                reqwest::Url::parse(&format!("{}/chat/completions", config.api_base)).ok()
            }
            ProviderKind::Anthropic => {
                reqwest::Url::parse(&anthropic::endpoint(&config.api_base)).ok()
            }
            ProviderKind::Gemini => {
                reqwest::Url::parse(&gemini::endpoint(&config.api_base, &config.model, false)).ok()
            }
            ProviderKind::Simulated => None,
        };
        let stream_endpoint = match config.provider {
            ProviderKind::Gemini => {
                reqwest::Url::parse(&gemini::endpoint(&config.api_base, &config.model, true)).ok()
            }
            ProviderKind::OpenAi | ProviderKind::Anthropic | ProviderKind::Simulated => {
                endpoint.clone()
            }
        };
        Self {
            config,
            endpoint,
            stream_endpoint,
            client,
        }
    }

    pub async fn call(
        &self,
        req: &ChatRequest,
        ctx: CallContext,
    ) -> Result<ProviderReply, Failure> {
        let url = || {
            self.endpoint.as_ref().ok_or_else(|| {
                Failure::Connect(format!(
                    "api_base `{}` is not a URL",
                    http::redact_url(&self.config.api_base)
                ))
            })
        };
        let (client, d) = (&self.client, &self.config);
        let answer = match self.config.provider {
            ProviderKind::OpenAi => openai::call(client, url()?, d, req, &ctx).await?,
            ProviderKind::Anthropic => anthropic::call(client, url()?, d, req, &ctx).await?,
            ProviderKind::Gemini => gemini::call(client, url()?, d, req, &ctx).await?,
            ProviderKind::Simulated => {
                Answer::Built(simulated::call(&self.config, req, ctx.fate).await?)
            }
        };
        Ok(self.finish(req, answer))
    }

    /// Opens a streamed call. Fails like `call` when the provider refuses it; once open, the
    /// pieces come as the provider sends them.
    pub async fn open_stream(
        &self,
        req: &ChatRequest,
        ctx: CallContext,
    ) -> Result<stream::PieceStream, Failure> {
        let url = || {
            self.stream_endpoint.as_ref().ok_or_else(|| {
                Failure::Connect(format!(
                    "api_base `{}` is not a URL",
                    http::redact_url(&self.config.api_base)
                ))
            })
        };
        let (client, d) = (&self.client, &self.config);
        match self.config.provider {
            ProviderKind::OpenAi => openai::open_stream(client, url()?, d, req, &ctx).await,
            ProviderKind::Anthropic => anthropic::open_stream(client, url()?, d, req, &ctx).await,
            ProviderKind::Gemini => gemini::open_stream(client, url()?, d, req, &ctx).await,
            ProviderKind::Simulated => simulated::open_stream(d, req, ctx.fate).await,
        }
    }

    /// The host and port calls go to (for traces), never the userinfo; `None` for `simulated`.
    pub fn server(&self) -> Option<(&str, Option<u16>)> {
        let url = self.endpoint.as_ref()?;
        Some((url.host_str()?, url.port_or_known_default()))
    }

    pub fn price(&self, usage: &Usage) -> f64 {
        self.config
            .price
            .cost(usage.prompt_tokens, usage.completion_tokens)
    }

    /// Fills in what a provider may leave out (`usage`, `model`, `id`), and prices the call.
    fn finish(&self, req: &ChatRequest, answer: Answer) -> ProviderReply {
        let price = |u: &Usage| self.config.price.cost(u.prompt_tokens, u.completion_tokens);
        let mut completion = match answer {
            Answer::Wire { body, usage } => {
                return ProviderReply {
                    cost_usd: price(&usage),
                    body,
                    usage,
                };
            }
            Answer::Built(c) => c,
        };
        let usage = match completion.usage {
            Some(u) if u.prompt_tokens.saturating_add(u.completion_tokens) > 0 => sane_usage(u),
            _ => {
                let completion_tokens = crate::protocol::request::estimate_tokens(
                    completion.text().map_or(0, str::len),
                );
                sane_usage(Usage {
                    prompt_tokens: req.estimated_prompt_tokens,
                    completion_tokens,
                    total_tokens: 0,
                })
            }
        };
        completion.usage = Some(usage);
        if completion.model.is_empty() {
            completion.model.clone_from(&self.config.model);
        }
        if completion.id.is_empty() {
            completion.id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        }
        if completion.created == 0 {
            completion.created = unix_now();
        }
        ProviderReply {
            // Serializing JSON values and plain structs cannot fail.
            body: serde_json::to_vec(&completion).unwrap_or_default().into(),
            cost_usd: price(&usage),
            usage,
        }
    }
}

/// More tokens than any model serves in a call: a provider's number above it is clamped, so that
/// the sums kept by limits, stats and the ledger cannot overflow.
pub const MAX_TOKENS: u64 = u32::MAX as u64;

/// Usage with each count clamped to `MAX_TOKENS` and `total_tokens` their sum.
pub fn sane_usage(u: Usage) -> Usage {
    let prompt_tokens = u.prompt_tokens.min(MAX_TOKENS);
    let completion_tokens = u.completion_tokens.min(MAX_TOKENS);
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// What the translating adapters (anthropic, gemini) share: sending, and the pieces of an OpenAI
// request and reply that read the same whichever wire format they are translated to.

/// Sends a prepared request: the body of a 2xx answer, else a `Failure::Status` with the message
/// that `error_message` reads out of the provider's error body. Bodies longer than `limit` fail
/// the call (`http::too_large`).
async fn send(
    builder: reqwest::RequestBuilder,
    error_message: fn(&[u8]) -> String,
    limit: usize,
) -> Result<Bytes, Failure> {
    let response = send_stream(builder, error_message, limit).await?;
    http::read_body(response, limit).await
}

/// Sends a prepared request and returns the 2xx response unread (for streaming: read it through
/// `stream::from_sse`, which bounds it too), else a `Failure::Status` as `send` does.
async fn send_stream(
    builder: reqwest::RequestBuilder,
    error_message: fn(&[u8]) -> String,
    limit: usize,
) -> Result<reqwest::Response, Failure> {
    let response = builder.send().await.map_err(http::transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = http::retry_after(response.headers());
    let bytes = http::read_body(response, limit).await?;
    Err(Failure::Status {
        status: status.as_u16(),
        message: error_message(&bytes),
        retry_after,
    })
}

/// Where a provider takes its key.
#[derive(Clone, Copy)]
enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and the APIs that speak it).
    Bearer,
    /// The key alone in this header (`x-api-key`, `x-goog-api-key`).
    Header(&'static str),
}

/// A JSON POST with the deployment's key (when it has one) and `extra` headers. The key header is
/// marked sensitive, so that HTTP/2 never indexes it and debug output never shows it.
fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    d: &DeploymentConfig,
    auth: Auth,
    extra: &[(&'static str, &'static str)],
    body: Vec<u8>,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut builder = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let Some(key) = &d.api_key else {
        return Ok(builder);
    };
    let (name, value) = match auth {
        Auth::Bearer => (
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", key.expose())),
        ),
        Auth::Header(name) => (
            reqwest::header::HeaderName::from_static(name),
            reqwest::header::HeaderValue::try_from(key.expose()),
        ),
    };
    // The error would not quote the key, but say nothing of it anyway.
    let mut value = value.map_err(|_| {
        Failure::Transport("the deployment's API key is not a valid HTTP header value".into())
    })?;
    value.set_sensitive(true);
    Ok(builder.header(name, value))
}

fn untranslatable(what: impl Into<String>) -> Failure {
    Failure::Untranslatable(what.into())
}

/// The texts of an assistant message whose `content` is an array of parts: only `text` and
/// `refusal` parts have an equivalent at other providers. `None` when `content` is not an array.
fn assistant_texts(m: &Value) -> Option<Result<Vec<&str>, Failure>> {
    let Some(Value::Array(parts)) = m.get("content") else {
        return None;
    };
    Some(
        parts
            .iter()
            .map(
                |p| match (part_type(p), p.get("text").or(p.get("refusal"))) {
                    ("text" | "refusal", Some(Value::String(t))) => Ok(t.as_str()),
                    (other, _) => Err(untranslatable(format!(
                        "a `{other}` content part in an assistant message"
                    ))),
                },
            )
            .collect(),
    )
}

/// One tool call of an assistant message, its arguments parsed.
struct ToolCall<'a> {
    id: Option<&'a str>,
    name: &'a str,
    arguments: Value,
}

/// An assistant message's `tool_calls`; empty arguments read as `{}`.
fn assistant_tool_calls(m: &Value) -> Result<Vec<ToolCall<'_>>, Failure> {
    m.get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
            let arguments = arguments.filter(|a| !a.trim().is_empty()).unwrap_or("{}");
            let arguments = serde_json::from_str(arguments).map_err(|e| {
                untranslatable(format!("arguments of tool call `{name}` are not JSON: {e}"))
            })?;
            Ok(ToolCall {
                id: call.get("id").and_then(Value::as_str),
                name,
                arguments,
            })
        })
        .collect()
}

/// The caller's `messages` (validated as a non-empty array of objects at parse time).
fn messages(req: &ChatRequest) -> &[Value] {
    req.body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Fails on the first top-level field that is neither translated (`handled`) nor safe to drop
/// (`ignored`): a field we do not know may ask for something the provider cannot give.
fn check_fields(req: &ChatRequest, handled: &[&str], ignored: &[&str]) -> Result<(), Failure> {
    match req.body.iter().find(|(k, v)| {
        !v.is_null() && !handled.contains(&k.as_str()) && !ignored.contains(&k.as_str())
    }) {
        Some((k, _)) => Err(untranslatable(format!(
            "field `{k}` has no equivalent (provider-specific fields go in `extra_body`)"
        ))),
        None => Ok(()),
    }
}

/// Text of a `system`, `developer` or `tool` message: a string or an array of text parts.
fn plain_text(content: Option<&Value>, role: &str) -> Result<String, Failure> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (part_type(p), p.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => out.push_str(t),
                    (other, _) => {
                        return Err(untranslatable(format!(
                            "a `{other}` content part in a `{role}` message"
                        )));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(untranslatable(format!("`{role}` message content"))),
    }
}

fn part_type(part: &Value) -> &str {
    part.get("type")
        .and_then(Value::as_str)
        .unwrap_or("untyped")
}

/// The URL of an `image_url` part (`{"url": ...}`, or a bare string as some clients send).
fn image_url(part: &Value) -> Option<&str> {
    let u = part.get("image_url")?;
    u.get("url").and_then(Value::as_str).or_else(|| u.as_str())
}

/// `data:<mime>;base64,<data>` split into its media type and data.
fn base64_data_url(url: &str) -> Option<(&str, &str)> {
    let (head, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = head.strip_suffix(";base64")?;
    Some((mime, data))
}

/// `stop` as a list: a string, or an array of strings.
fn stop_sequences(req: &ChatRequest) -> Result<Option<Vec<Value>>, Failure> {
    match req.body.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![Value::String(s.clone())])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(untranslatable(
            "`stop` must be a string or an array of strings",
        )),
    }
}

/// Merges the deployment's `extra_body`, then (when meant for this provider) the caller's, into a
/// translated body. Objects merge key by key, so that `{"generationConfig": {"seed": 1}}` adds to
/// the translated settings instead of replacing them; any other value replaces. `model` is the
/// deployment's and is never overridden.
fn merge_extra(
    body: &mut Map<String, Value>,
    d: &DeploymentConfig,
    req: &ChatRequest,
    include_request_extra: bool,
) {
    fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
        for (k, v) in from {
            match (into.get_mut(k), v) {
                (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
                _ => {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let request_extra = include_request_extra.then(|| req.extra_body()).flatten();
    for extra in [d.extra_body.as_ref(), request_extra].into_iter().flatten() {
        let model = body.get("model").cloned();
        merge(body, extra);
        if let Some(m) = model {
            body.insert("model".into(), m);
        }
    }
}

/// One `chat.completion.chunk` with a single choice.
fn chunk(
    id: &str,
    created: u64,
    model: &str,
    index: u64,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    })
}

/// The last chunk of a stream, as OpenAI sends it with `stream_options.include_usage`.
fn usage_chunk(id: &str, created: u64, model: &str, usage: Usage) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

#[cfg(test)]
mod props;

/// A provider that answers one request with a canned reply, for adapter tests of `call`.
#[cfg(test)]
mod one_shot {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one HTTP/1.1 exchange on 127.0.0.1; the task yields the raw request it read.
    pub async fn serve(
        status: u16,
        headers: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= length || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (base, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Failure {
        Failure::Status {
            status: s,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn the_contract_table() {
        let b = BreakerConfig::default();
        let d = |f: &Failure| {
            let d = classify(f, &b, false);
            (d.kind, d.fall_back, d.count)
        };
        use ErrorKind::*;
        assert_eq!(d(&status(400)), (InvalidRequest, false, false));
        assert_eq!(d(&status(401)), (Auth, false, false));
        assert_eq!(d(&status(403)), (Auth, false, false));
        assert_eq!(d(&status(404)), (NotFound, true, false));
        assert_eq!(d(&status(429)), (RateLimited, true, true));
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(d(&status(s)), (Unavailable, true, true), "{s}");
        }
        assert_eq!(d(&Failure::Timeout), (Unavailable, true, true));
        assert_eq!(
            d(&Failure::Transport("reset".into())),
            (Unavailable, true, true)
        );
        assert_eq!(
            d(&Failure::InvalidBody("x".into())),
            (Unavailable, true, true)
        );
        assert_eq!(d(&Failure::Connect("x".into())), (Unavailable, true, true));
        assert_eq!(d(&Failure::DeadlineSpent), (Timeout, false, false));
        let u = Failure::Untranslatable("an `input_audio` content part".into());
        assert_eq!(d(&u), (InvalidRequest, true, false));
        assert_eq!(
            u.describe(),
            "cannot translate the request for this provider: an `input_audio` content part"
        );
    }

    #[test]
    fn auth_falls_back_only_when_configured() {
        let b = BreakerConfig::default();
        let d = classify(&status(401), &b, true);
        assert!(d.fall_back && !d.count);
    }

    #[test]
    fn retry_after_cools_down_and_ignored_statuses_do_not_count() {
        let mut b = BreakerConfig::default();
        let f = Failure::Status {
            status: 429,
            message: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            classify(&f, &b, false).cool_down,
            Some(Duration::from_secs(7))
        );
        b.ignored_status.push(503);
        assert!(!classify(&status(503), &b, false).count);
    }

    #[test]
    fn retry_after_is_capped_at_max_retry_after() {
        let b = BreakerConfig {
            max_retry_after: Duration::from_secs(300),
            ..BreakerConfig::default()
        };
        let asked = |d: Duration| {
            let f = Failure::Status {
                status: 429,
                message: String::new(),
                retry_after: Some(d),
            };
            classify(&f, &b, false).cool_down
        };
        let cap = Some(Duration::from_secs(300));
        assert_eq!(asked(Duration::from_secs(31_536_000)), cap, "a year");
        assert_eq!(asked(Duration::MAX), cap, "`Retry-After: 1e20`, saturated");
        assert_eq!(asked(Duration::from_secs(u64::MAX / 2)), cap, "1e19");
        assert_eq!(asked(Duration::from_secs(300)), cap);
        assert_eq!(asked(Duration::from_secs(7)), Some(Duration::from_secs(7)));
        assert_eq!(asked(Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn a_stream_cut_by_its_overall_bound_is_a_timeout_that_does_not_count() {
        let f = Failure::StreamDuration(Duration::from_secs(600));
        let d = classify(&f, &BreakerConfig::default(), false);
        assert_eq!(
            (d.kind, d.count, d.cool_down),
            (ErrorKind::Timeout, false, None)
        );
        assert_eq!(f.kind_name(), "stream_duration");
        assert_eq!(
            f.describe(),
            "the stream ran past max_stream_duration (10m)"
        );
    }

    fn adapter(provider: ProviderKind, api_base: &str, limit: usize) -> Adapter {
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.provider = provider;
        d.api_base = api_base.into();
        d.api_key = Some(crate::config::Secret::new("sk-secret-key"));
        d.max_reply_body = limit;
        Adapter::new(d, http::client().unwrap())
    }

    fn hello() -> ChatRequest {
        ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            include_request_extra: true,
            fate: None,
        }
    }

    #[tokio::test]
    async fn failures_never_print_credentials_or_query_keys() {
        for provider in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let a = adapter(
                provider,
                "http://user:secret@127.0.0.1:1/v1?key=abc",
                1 << 20,
            );
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert!(matches!(f, Failure::Connect(_)), "{f:?}");
            let text = f.describe();
            assert!(text.contains("127.0.0.1:1"), "{text}");
            for secret in ["secret", "abc", "sk-secret-key", "user"] {
                assert!(!text.contains(secret), "{provider:?}: {text}");
            }
            assert_eq!(a.server(), Some(("127.0.0.1", Some(1))));

            let a = adapter(provider, "http://user:secret@[bad/v1?key=abc", 1 << 20);
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert_eq!(
                f.describe(),
                "connect error: api_base `http://[bad/v1` is not a URL"
            );
        }
    }

    #[test]
    fn provider_keys_are_sensitive_headers() {
        let client = http::client().unwrap();
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.api_key = Some(crate::config::Secret::new("sk-secret-key"));
        for (auth, header) in [
            (Auth::Bearer, "authorization"),
            (Auth::Header("x-api-key"), "x-api-key"),
            (Auth::Header("x-goog-api-key"), "x-goog-api-key"),
        ] {
            let req = post_json(&client, &url, &d, auth, &[], Vec::new())
                .unwrap()
                .build()
                .unwrap();
            let value = req.headers().get(header).unwrap();
            assert!(value.is_sensitive(), "{header}");
            assert!(!format!("{:?}", req.headers()).contains("sk-secret-key"));
        }
        d.api_key = Some(crate::config::Secret::new("bad\nkey"));
        let refused = post_json(&client, &url, &d, Auth::Bearer, &[], Vec::new()).unwrap_err();
        assert!(!refused.describe().contains("key\n"));
    }

    #[tokio::test]
    async fn reply_bodies_over_the_limit_fail_like_garbage() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
        let (base, _) = one_shot::serve(200, "", body).await;
        let a = adapter(ProviderKind::OpenAi, &base, body.len());
        assert!(a.call(&hello(), ctx()).await.is_ok(), "exactly the limit");
        let (base, _) = one_shot::serve(200, "", body).await;
        let a = adapter(ProviderKind::OpenAi, &base, body.len() - 1);
        let f = a.call(&hello(), ctx()).await.unwrap_err();
        let over = format!("reply body over {} bytes", body.len() - 1);
        assert_eq!(f, Failure::InvalidBody(over.clone()));
        let d = classify(&f, &BreakerConfig::default(), false);
        assert!(d.fall_back && d.count);
        // Error bodies too, at every provider.
        for provider in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let (base, _) = one_shot::serve(500, "", body).await;
            let a = adapter(provider, &base, body.len() - 1);
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert_eq!(f, Failure::InvalidBody(over.clone()), "{provider:?}");
        }
    }

    #[test]
    fn token_counts_cannot_overflow() {
        let u = sane_usage(Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            total_tokens: 3,
        });
        assert_eq!(u.prompt_tokens, MAX_TOKENS);
        assert_eq!(u.total_tokens, 2 * MAX_TOKENS);
        let huge = format!(
            r#"{{"id":"x","model":"m","created":1,"choices":[{{"index":0,"message":{{"role":"assistant","content":"x"}}}}],"usage":{{"prompt_tokens":{m},"completion_tokens":{m},"total_tokens":{m}}}}}"#,
            m = u64::MAX
        );
        match openai::parse_response(Bytes::from(huge)).unwrap() {
            Answer::Wire { usage, .. } => assert_eq!(usage.total_tokens, 2 * MAX_TOKENS),
            other => panic!("{other:?}"),
        }
    }
}
