//! Scriptable fakes of the provider APIs Switchyard calls: OpenAI Chat
//! Completions and Embeddings, Anthropic Messages, and Gemini `generateContent`
//! and `batchEmbedContents`.
//!
//! [`FakeProvider`] is a real HTTP/1.1 server (with keep-alive) on a loopback
//! port, written directly on `tokio::net` rather than an HTTP library so that
//! it can misbehave at the socket level: reset the connection, truncate the
//! body, answer late or never, cut a stream short. Each fake speaks one
//! [`Dialect`]:
//!
//! | start with                        | `base_url()`            | scripted route                                   |
//! |-----------------------------------|-------------------------|--------------------------------------------------|
//! | [`FakeProvider::start_named`]     | `http://127.0.0.1:P/v1` | `POST /v1/chat/completions`, `POST /v1/embeddings` |
//! | [`FakeProvider::start_anthropic`] | `http://127.0.0.1:P`    | `POST /v1/messages`                              |
//! | [`FakeProvider::start_gemini`]    | `http://127.0.0.1:P`    | `POST /v1beta/models/{model}:generateContent`, `…:streamGenerateContent`, `…:batchEmbedContents` |
//!
//! Tests queue [`Fault`]s with [`FakeProvider::push`]; each request to the
//! scripted route takes the next one, or the default behaviour (normally a
//! success) once the queue is empty. Every request is recorded for later
//! assertions.
//!
//! Anthropic and Gemini requests are first checked the way the real APIs
//! check them (auth and version headers, required fields, roles and their
//! order, ranges). A request that fails a check gets the API's 400 (403 for a
//! missing Gemini key) without consuming the script, and the reason is kept
//! in [`Recorded::rejected`]. OpenAI chat requests are not checked; OpenAI
//! embeddings requests are (`model`, `input` of at most 2048 non-empty items,
//! `encoding_format`, no `dimensions` for `text-embedding-ada-002`).
//!
//! Embeddings (see `embed.rs`): the scripted faults apply as they do to chat,
//! plus [`Fault::WrongDimensions`] and [`Fault::DropVector`]. A success
//! carries one deterministic unit vector per input ([`embed::vector`]) of the
//! requested length, else [`FakeProvider::set_embed_dimensions`]'s
//! ([`embed::DEFAULT_DIMENSIONS`] at first); base64 when OpenAI's
//! `encoding_format` asks for it; OpenAI's `data` reversed after
//! [`FakeProvider::set_embed_shuffle`]. Each recorded embeddings request keeps
//! its number of inputs ([`Recorded::inputs`], [`FakeProvider::embed_inputs`]),
//! so tests can assert how a request was split into calls.
//!
//! A request asking for a stream (`"stream": true` for OpenAI and Anthropic,
//! `:streamGenerateContent` for Gemini) is answered, on success, with the
//! dialect's event stream in a chunked 200, one event at a time with
//! [`FakeProvider::set_chunk_delay`] between them; the reply text comes in
//! three pieces. Other faults answer a streaming request as they answer any
//! other, before any event.
//!
//! Requests to any other method or path are recorded too, but answered with
//! a 404 in the dialect's error shape without consuming the script.

mod anthropic;
pub mod embed;
mod gemini;
mod openai;
mod wire;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use wire::{Conn, Request, response_head};

const DEFAULT_COMPLETION_TOKENS: u32 = 7;
const DEFAULT_CHUNK_DELAY: Duration = Duration::from_millis(5);

/// How the fake answers one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 200 with the dialect's reply (or stream) saying "fake reply from NAME".
    Ok,
    /// 200 with the dialect's reply (or stream) carrying this text and usage.
    Reply {
        text: String,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// This status with this (JSON) body, sent as is.
    Status { code: u16, body: String },
    /// This status with the dialect's error body carrying `message`; see
    /// [`Fault::status`].
    Error { code: u16, message: String },
    /// 429 with a `retry-after` header and the dialect's rate-limit error
    /// body (Gemini's also holds a `RetryInfo` detail).
    RateLimited { retry_after_secs: u64 },
    /// The dialect's overload answer: Anthropic 529 `overloaded_error`,
    /// Gemini 503 `UNAVAILABLE`, OpenAI 503.
    Overloaded,
    /// Wait, then behave as `then`. Gives up if the client disconnects.
    Delay { delay: Duration, then: Box<Fault> },
    /// Close the connection without answering, with a TCP reset.
    Reset,
    /// 200 labelled `application/json` whose body is an HTML error page.
    NotJson,
    /// Promise the full OK body in `content-length`, send half, then close.
    TruncatedBody,
    /// Never answer; keep the connection open until the client goes away or
    /// the fake is shut down.
    Hang,
    /// Stream the head and the events before the text, then `after` of the
    /// text events, then close the connection (FIN) without the rest, the
    /// terminating `[DONE]` / `message_stop` or the last chunk. A request
    /// not asking for a stream gets [`Fault::TruncatedBody`] instead.
    CutStream { after: usize },
    /// Send the stream's head at once, wait `first`, then stream normally
    /// (for first-token timeouts). A request not asking for a stream gets
    /// the OK reply after `first`.
    StreamDelay { first: Duration },
    /// 429 with the dialect's rate-limit body and `header: value` as sent
    /// (`retry-after: 1e20`, `retry-after-ms: NaN`, ...).
    RateLimitedRaw { header: String, value: String },
    /// 200 whose body is `bytes` long (a JSON object padded with spaces):
    /// with a `content-length` unless `chunked`. Written in pieces, so that
    /// the fake stops when the client stops reading.
    HugeBody { bytes: usize, chunked: bool },
    /// 200 whose body never ends: for a plain request a chunked body with a
    /// space every `every`; for a stream, the stream's head and first events,
    /// then one more text event every `every`. Either way, forever, until the
    /// client goes away ([`FakeProvider::hangups`] counts those).
    Trickle { every: Duration },
    /// 200 with the dialect's reply asking for one call of tool `name` with
    /// `args`, and no text. Gemini's carries no call id, as Gemini sends
    /// none. A streamed request gets the same reply as one event (Gemini's
    /// stream events are whole replies); for the other dialects, only
    /// non-streamed requests are meant.
    ToolCall { name: String, args: Value },
    /// Embeddings only: 200 with vectors of this many numbers, whatever was
    /// asked (a chat request gets [`Fault::Ok`]).
    WrongDimensions(usize),
    /// Embeddings only: 200 with one vector fewer than the inputs (a chat
    /// request gets [`Fault::Ok`]).
    DropVector,
}

impl Fault {
    /// `code` with the dialect's error body saying "fake error CODE"; for
    /// OpenAI that is
    /// `{"error":{"message":"fake error CODE","type":...,"param":null,"code":...}}`.
    pub fn status(code: u16) -> Fault {
        Fault::error(code, format!("fake error {code}"))
    }

    /// `code` with the dialect's error body carrying `message`.
    pub fn error(code: u16, message: impl Into<String>) -> Fault {
        Fault::Error {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`Fault::Delay`].
    pub fn delay(delay: Duration, then: Fault) -> Fault {
        Fault::Delay {
            delay,
            then: Box::new(then),
        }
    }
}

/// The API a [`FakeProvider`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target, query included.
    pub path: String,
    /// In arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Null` if it is not JSON.
    pub body: Value,
    /// When the request had been read in full.
    pub at: Instant,
    /// The model asked for: from the path for Gemini, else the body's
    /// `model`.
    pub model: Option<String>,
    /// Whether the request asked for a streamed answer.
    pub stream: bool,
    /// Why the fake rejected the request before the script (the message of
    /// its 400 or 403), or `None`.
    pub rejected: Option<String>,
    /// For an embeddings request, how many inputs it holds.
    pub inputs: Option<usize>,
}

impl Recorded {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find_header(&self.headers, name)
    }
}

/// Handle to a running fake provider. Clones share the same server; dropping
/// the last one (or calling [`FakeProvider::shutdown`]) stops it.
#[derive(Clone)]
pub struct FakeProvider {
    handle: Arc<Handle>,
}

/// Owned by the `FakeProvider` clones only, never by the server tasks, so it
/// is dropped with the last handle; dropping `shutdown` stops the server.
struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

/// State shared by the handles and the server tasks.
struct Shared {
    name: String,
    dialect: Dialect,
    state: Mutex<State>,
    /// Signalled whenever a request is recorded.
    recorded: Notify,
    /// Numbers the answers, for their ids.
    answers: AtomicU64,
    /// Endless answers ([`Fault::Trickle`]) ended by the client going away.
    hangups: AtomicU64,
}

struct State {
    script: VecDeque<Fault>,
    default: Fault,
    requests: Vec<Recorded>,
    chunk_delay: Duration,
    embed_dimensions: usize,
    embed_shuffle: bool,
}

impl FakeProvider {
    /// Starts an OpenAI fake named "fake" on `127.0.0.1:0`.
    pub async fn start() -> FakeProvider {
        FakeProvider::start_named("fake").await
    }

    /// Starts an OpenAI fake whose default reply is "fake reply from NAME".
    /// The server runs on the current tokio runtime.
    pub async fn start_named(name: impl Into<String>) -> FakeProvider {
        FakeProvider::start_dialect(Dialect::OpenAi, name).await
    }

    /// Starts an Anthropic Messages fake; see [`FakeProvider::start_named`].
    pub async fn start_anthropic(name: impl Into<String>) -> FakeProvider {
        FakeProvider::start_dialect(Dialect::Anthropic, name).await
    }

    /// Starts a Gemini fake; see [`FakeProvider::start_named`].
    pub async fn start_gemini(name: impl Into<String>) -> FakeProvider {
        FakeProvider::start_dialect(Dialect::Gemini, name).await
    }

    /// Starts a fake speaking `dialect` whose default reply is "fake reply
    /// from NAME", on `127.0.0.1:0` and the current tokio runtime.
    pub async fn start_dialect(dialect: Dialect, name: impl Into<String>) -> FakeProvider {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind fake provider to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of fake provider");
        let shared = Arc::new(Shared {
            name: name.into(),
            dialect,
            state: Mutex::new(State {
                script: VecDeque::new(),
                default: Fault::Ok,
                requests: Vec::new(),
                chunk_delay: DEFAULT_CHUNK_DELAY,
                embed_dimensions: embed::DEFAULT_DIMENSIONS,
                embed_shuffle: false,
            }),
            recorded: Notify::new(),
            answers: AtomicU64::new(0),
            hangups: AtomicU64::new(0),
        });
        let (shutdown, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        FakeProvider {
            handle: Arc::new(Handle {
                shared,
                addr,
                shutdown,
            }),
        }
    }

    /// What a deployment's `api_base` must be: `http://127.0.0.1:PORT/v1`
    /// for OpenAI, `http://127.0.0.1:PORT` for Anthropic and Gemini.
    pub fn base_url(&self) -> String {
        match self.dialect() {
            Dialect::OpenAi => format!("http://{}/v1", self.handle.addr),
            Dialect::Anthropic | Dialect::Gemini => format!("http://{}", self.handle.addr),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    pub fn dialect(&self) -> Dialect {
        self.handle.shared.dialect
    }

    /// Queues `fault` for a later request (first in, first out).
    pub fn push(&self, fault: Fault) {
        self.handle.shared.state().script.push_back(fault);
    }

    /// How requests are answered once the script is empty (initially
    /// [`Fault::Ok`]).
    pub fn set_default(&self, fault: Fault) {
        self.handle.shared.state().default = fault;
    }

    /// The pause between two events of a stream (initially 5 ms).
    pub fn set_chunk_delay(&self, delay: Duration) {
        self.handle.shared.state().chunk_delay = delay;
    }

    /// The vector length of an embeddings answer when the request names
    /// none (initially [`embed::DEFAULT_DIMENSIONS`]).
    pub fn set_embed_dimensions(&self, dims: usize) {
        self.handle.shared.state().embed_dimensions = dims;
    }

    /// Whether OpenAI embeddings answers list `data` in reverse order (each
    /// item keeps its `index`, as the API allows). Gemini's reply has no
    /// index, so this does not apply to it.
    pub fn set_embed_shuffle(&self, shuffle: bool) {
        self.handle.shared.state().embed_shuffle = shuffle;
    }

    /// The number of inputs of each embeddings request that passed the API's
    /// checks, in arrival order: one entry per provider call.
    pub fn embed_inputs(&self) -> Vec<usize> {
        let state = self.handle.shared.state();
        let accepted = state.requests.iter().filter(|r| r.rejected.is_none());
        accepted.filter_map(|r| r.inputs).collect()
    }

    /// Drops the faults still queued: the default answers from now on.
    pub fn clear_script(&self) {
        self.handle.shared.state().script.clear();
    }

    /// Queued faults not yet consumed.
    pub fn pending(&self) -> usize {
        self.handle.shared.state().script.len()
    }

    /// Requests received so far (counted once read in full, before the
    /// answer is sent).
    pub fn calls(&self) -> usize {
        self.handle.shared.state().requests.len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.handle.shared.state().requests.clone()
    }

    /// Waits until at least `n` requests have been received; `false` if
    /// `timeout` passes first.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so no notification is lost.
            let notified = self.handle.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.calls() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.calls() >= n;
            }
        }
    }

    /// How many [`Fault::Trickle`] answers the client ended by closing the
    /// connection: the engine stopped reading.
    pub fn hangups(&self) -> u64 {
        self.handle.shared.hangups.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` trickled answers were hung up on; `false`
    /// if `timeout` passes first.
    pub async fn wait_hangups(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.handle.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.hangups() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.hangups() >= n;
            }
        }
    }

    /// Stops accepting connections and drops the open ones (including those
    /// held by [`Fault::Hang`] or [`Fault::Delay`]).
    pub fn shutdown(&self) {
        self.handle.shutdown.send_replace(true);
    }
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProvider")
            .field("name", &self.name())
            .field("dialect", &self.dialect())
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

/// What a dialect makes of a request.
enum Call {
    /// The scripted route; `stream` if a streamed answer is asked for.
    Scripted { stream: bool },
    /// The scripted embeddings route (never streamed).
    Embed,
    /// The scripted route, but the request fails the API's checks: answered
    /// with `code` and the dialect's error body, leaving the script alone.
    Rejected { code: u16, message: String },
    /// Any other method or path.
    Unknown,
}

/// A success answer, for the dialect to render as a body or a stream.
struct Answer<'a> {
    /// Numbers the answer, for ids.
    n: u64,
    /// Unix seconds.
    created: u64,
    model: &'a str,
    text: &'a str,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl Answer<'_> {
    /// The text in three pieces of (nearly) equal length in characters; the
    /// text events of a stream carry one piece each.
    fn pieces(&self) -> [&str; 3] {
        let chars = self.text.chars().count();
        let at = |k: usize| {
            self.text
                .char_indices()
                .nth(chars * k / 3)
                .map_or(self.text.len(), |(i, _)| i)
        };
        let (one, two) = (at(1), at(2));
        [&self.text[..one], &self.text[one..two], &self.text[two..]]
    }
}

/// A streamed answer as its dialect frames it, each string one event (or
/// piece of a JSON array) sent as one chunk.
struct Events {
    content_type: &'static str,
    /// Before the text, e.g. `message_start`.
    preamble: Vec<String>,
    /// One per piece of text.
    content: Vec<String>,
    /// After the text, e.g. the finish chunk and `[DONE]`.
    trailer: Vec<String>,
}

impl Dialect {
    fn classify(self, req: &Request) -> Call {
        match self {
            Dialect::OpenAi => openai::classify(req),
            Dialect::Anthropic => anthropic::classify(req),
            Dialect::Gemini => gemini::classify(req),
        }
    }

    /// The inputs of an embeddings request; `None` for any other.
    fn embed_inputs(self, req: &Request) -> Option<Vec<embed::Input>> {
        match self {
            Dialect::OpenAi => openai::embed_inputs(req),
            Dialect::Gemini => gemini::embed_inputs(req),
            Dialect::Anthropic => None,
        }
    }

    fn embed_body(self, r: &embed::Reply<'_>) -> Value {
        match self {
            Dialect::Gemini => gemini::embed_body(r),
            Dialect::OpenAi | Dialect::Anthropic => openai::embed_body(r),
        }
    }

    fn model(self, req: &Request) -> Option<String> {
        match self {
            Dialect::Gemini => gemini::model(req),
            Dialect::OpenAi | Dialect::Anthropic => req
                .json
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    fn error_body(self, code: u16, message: &str) -> Value {
        match self {
            Dialect::OpenAi => openai::error_body(code, message),
            Dialect::Anthropic => anthropic::error_body(code, message),
            Dialect::Gemini => gemini::error_body(code, message),
        }
    }

    fn rate_limited(self, retry_after_secs: u64) -> Value {
        match self {
            Dialect::OpenAi => openai::rate_limited(retry_after_secs),
            Dialect::Anthropic => anthropic::rate_limited(retry_after_secs),
            Dialect::Gemini => gemini::rate_limited(retry_after_secs),
        }
    }

    fn overloaded(self) -> (u16, Value) {
        match self {
            Dialect::OpenAi => openai::overloaded(),
            Dialect::Anthropic => anthropic::overloaded(),
            Dialect::Gemini => gemini::overloaded(),
        }
    }

    fn body(self, a: &Answer<'_>) -> Value {
        match self {
            Dialect::OpenAi => openai::body(a),
            Dialect::Anthropic => anthropic::body(a),
            Dialect::Gemini => gemini::body(a),
        }
    }

    fn tool_call(self, a: &Answer<'_>, name: &str, args: &Value) -> Value {
        match self {
            Dialect::OpenAi => openai::tool_call(a, name, args),
            Dialect::Anthropic => anthropic::tool_call(a, name, args),
            Dialect::Gemini => gemini::tool_call(a, name, args),
        }
    }

    fn events(self, a: &Answer<'_>, req: &Request) -> Events {
        match self {
            Dialect::OpenAi => openai::events(a, req),
            Dialect::Anthropic => anthropic::events(a),
            Dialect::Gemini => gemini::events(a, req),
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later assertion down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `req`, wakes `wait_calls`, and picks the fault to answer with
    /// and whether a success is streamed.
    fn record(&self, req: &Request) -> (Fault, bool) {
        let call = self.dialect.classify(req);
        let stream = matches!(call, Call::Scripted { stream: true });
        let answer = {
            let mut state = self.state();
            state.requests.push(Recorded {
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: req.json.clone(),
                at: Instant::now(),
                model: self.dialect.model(req),
                stream,
                rejected: match &call {
                    Call::Rejected { message, .. } => Some(message.clone()),
                    _ => None,
                },
                inputs: self.dialect.embed_inputs(req).map(|i| i.len()),
            });
            match call {
                Call::Scripted { .. } | Call::Embed => match state.script.pop_front() {
                    Some(fault) => fault,
                    None => state.default.clone(),
                },
                Call::Rejected { code, message } => Fault::Error { code, message },
                Call::Unknown => Fault::Error {
                    code: 404,
                    message: format!("Unknown request URL: {} {}", req.method, req.path),
                },
            }
        };
        self.recorded.notify_waiters();
        (answer, stream)
    }

    /// The body of a success for `req` (its `text` and usage in `reply`),
    /// embeddings or chat as `req` asks.
    fn body(&self, req: &Request, reply: Option<(&str, u32, u32)>, tamper: Tamper) -> Value {
        match self.embeddings(req, reply.map(|r| r.1), tamper) {
            Some(body) => body,
            None => self.answer(req, reply, |a| self.dialect.body(a)),
        }
    }

    /// The embeddings answer to `req`, or `None` if it is no embeddings
    /// request; usage is `prompt_tokens`, else counted from the inputs.
    fn embeddings(
        &self,
        req: &Request,
        prompt_tokens: Option<u32>,
        tamper: Tamper,
    ) -> Option<Value> {
        let inputs = self.dialect.embed_inputs(req)?;
        let (dims, shuffle) = {
            let state = self.state();
            (state.embed_dimensions, state.embed_shuffle)
        };
        let mut items: Vec<(usize, Vec<f32>)> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let n = match tamper {
                    Tamper::Dimensions(n) => n,
                    _ => input.dimensions.unwrap_or(dims),
                };
                (i, embed::vector(&input.key, n))
            })
            .collect();
        if tamper == Tamper::DropVector {
            items.pop();
        }
        if shuffle && self.dialect == Dialect::OpenAi {
            items.reverse();
        }
        let model = self.dialect.model(req);
        let reply = embed::Reply {
            model: model.as_deref().unwrap_or("fake-model"),
            items,
            prompt_tokens: prompt_tokens
                .unwrap_or_else(|| inputs.iter().map(|i| embed::tokens(&i.key)).sum()),
            base64: req.json.get("encoding_format").and_then(Value::as_str) == Some("base64"),
        };
        Some(self.dialect.embed_body(&reply))
    }

    fn chunk_delay(&self) -> Duration {
        self.state().chunk_delay
    }

    /// Renders a success with `text` (by default "fake reply from NAME",
    /// with a prompt count growing with the body).
    fn answer<R>(
        &self,
        req: &Request,
        reply: Option<(&str, u32, u32)>,
        render: impl FnOnce(&Answer<'_>) -> R,
    ) -> R {
        let default_text;
        let (text, prompt_tokens, completion_tokens) = match reply {
            Some(reply) => reply,
            None => {
                default_text = format!("fake reply from {}", self.name);
                let prompt = 10 + u32::try_from(req.body.len() / 4).unwrap_or(u32::MAX - 10);
                (default_text.as_str(), prompt, DEFAULT_COMPLETION_TOKENS)
            }
        };
        let model = self.dialect.model(req);
        render(&Answer {
            n: self.answers.fetch_add(1, Ordering::Relaxed) + 1,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.as_deref().unwrap_or("fake-model"),
            text,
            prompt_tokens,
            completion_tokens,
        })
    }
}

/// Resolves on [`FakeProvider::shutdown`] or once the last handle is gone.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // `wait_for` fails when the sender is dropped: that means stop, too.
    let _ = rx.wait_for(|&stop| stop).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(stop.clone()) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = stopped(stop) => {}
                            () = serve_connection(stream, &shared) => {}
                        }
                    });
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Serves requests on one connection until either side closes it.
async fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request().await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = shared
                    .dialect
                    .error_body(400, &format!("malformed request: {e}"))
                    .to_string();
                let _ = conn.send(400, &[], body.as_bytes(), true).await;
                return;
            }
            Err(_) => return,
        };
        let (fault, stream) = shared.record(&req);
        if !answer(&mut conn, shared, &req, fault, stream).await {
            return;
        }
    }
}

/// Answers `req` as `fault` says, streaming a success if `stream`; `true` if
/// the connection stays usable.
async fn answer(
    conn: &mut Conn,
    shared: &Shared,
    req: &Request,
    mut fault: Fault,
    stream: bool,
) -> bool {
    let close = req.wants_close();
    let dialect = shared.dialect;
    loop {
        let sent = match fault {
            Fault::Delay { delay, then } => {
                if !conn.idle(Some(delay)).await {
                    return false;
                }
                fault = *then;
                continue;
            }
            Fault::Ok => return succeed(conn, shared, req, None, stream, Pace::default()).await,
            Fault::Reply {
                text,
                prompt_tokens,
                completion_tokens,
            } => {
                let reply = Some((text.as_str(), prompt_tokens, completion_tokens));
                return succeed(conn, shared, req, reply, stream, Pace::default()).await;
            }
            Fault::CutStream { after } if stream => {
                let pace = Pace {
                    cut: Some(after),
                    ..Pace::default()
                };
                return succeed(conn, shared, req, None, stream, pace).await;
            }
            Fault::StreamDelay { first } if stream => {
                let pace = Pace {
                    first,
                    ..Pace::default()
                };
                return succeed(conn, shared, req, None, stream, pace).await;
            }
            Fault::StreamDelay { first } => {
                fault = Fault::delay(first, Fault::Ok);
                continue;
            }
            Fault::Status { code, body } => conn.send(code, &[], body.as_bytes(), close).await,
            Fault::Error { code, message } => {
                let body = dialect.error_body(code, &message).to_string();
                conn.send(code, &[], body.as_bytes(), close).await
            }
            Fault::RateLimited { retry_after_secs } => {
                let body = dialect.rate_limited(retry_after_secs).to_string();
                let retry_after = retry_after_secs.to_string();
                conn.send(
                    429,
                    &[("retry-after", &retry_after)],
                    body.as_bytes(),
                    close,
                )
                .await
            }
            Fault::Overloaded => {
                let (code, body) = dialect.overloaded();
                conn.send(code, &[], body.to_string().as_bytes(), close)
                    .await
            }
            Fault::NotJson => {
                conn.send(200, &[], b"<html>502 bad gateway</html>", close)
                    .await
            }
            Fault::Reset => {
                // With a zero linger, closing the socket sends RST, not FIN.
                let _ = conn.stream.set_zero_linger();
                return false;
            }
            Fault::TruncatedBody | Fault::CutStream { .. } => {
                let body = shared
                    .body(req, None, Tamper::None)
                    .to_string()
                    .into_bytes();
                let mut out = response_head(200, &[], body.len(), true).into_bytes();
                out.extend_from_slice(&body[..body.len() / 2]);
                let _ = conn.stream.write_all(&out).await;
                let _ = conn.stream.shutdown().await;
                return false;
            }
            Fault::Hang => {
                conn.idle(None).await;
                return false;
            }
            Fault::RateLimitedRaw { header, value } => {
                let body = dialect.rate_limited(1).to_string();
                conn.send(429, &[(&header, &value)], body.as_bytes(), close)
                    .await
            }
            Fault::HugeBody { bytes, chunked } => {
                return huge_body(conn, bytes, chunked).await && !close;
            }
            Fault::Trickle { every } => {
                trickle(conn, shared, req, stream, every).await;
                return false;
            }
            Fault::WrongDimensions(n) => {
                let body = shared.body(req, None, Tamper::Dimensions(n)).to_string();
                conn.send(200, &[], body.as_bytes(), close).await
            }
            Fault::DropVector => {
                let body = shared.body(req, None, Tamper::DropVector).to_string();
                conn.send(200, &[], body.as_bytes(), close).await
            }
            Fault::ToolCall { name, args } => {
                let body = shared
                    .answer(req, None, |a| dialect.tool_call(a, &name, &args))
                    .to_string();
                if stream && dialect == Dialect::Gemini {
                    let event = format!("data: {body}\r\n\r\n");
                    let sent = conn.start_chunks("text/event-stream", close).await.is_ok()
                        && conn.send_chunk(event.as_bytes()).await.is_ok()
                        && conn.end_chunks().await.is_ok();
                    return sent && !close;
                }
                conn.send(200, &[], body.as_bytes(), close).await
            }
        };
        return sent.is_ok() && !close;
    }
}

/// How an embeddings success is spoiled on purpose.
#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    None,
    Dimensions(usize),
    DropVector,
}

/// How a stream is paced: a wait before the first event, and where to cut.
#[derive(Default)]
struct Pace {
    first: Duration,
    /// Close after this many text events.
    cut: Option<usize>,
}

/// Sends a success, as one body or as a stream; `true` if the connection
/// stays usable.
async fn succeed(
    conn: &mut Conn,
    shared: &Shared,
    req: &Request,
    reply: Option<(&str, u32, u32)>,
    stream: bool,
    pace: Pace,
) -> bool {
    let close = req.wants_close();
    let dialect = shared.dialect;
    if !stream {
        let body = shared.body(req, reply, Tamper::None).to_string();
        return conn.send(200, &[], body.as_bytes(), close).await.is_ok() && !close;
    }
    let events = shared.answer(req, reply, |a| dialect.events(a, req));
    let pause = shared.chunk_delay();
    if conn.start_chunks(events.content_type, close).await.is_err() {
        return false;
    }
    if !pace.first.is_zero() && !conn.idle(Some(pace.first)).await {
        return false;
    }
    let texts = pace
        .cut
        .map_or(events.content.len(), |n| n.min(events.content.len()));
    let trailer: &[String] = if pace.cut.is_some() {
        &[]
    } else {
        &events.trailer
    };
    let all = events
        .preamble
        .iter()
        .chain(&events.content[..texts])
        .chain(trailer);
    for (i, event) in all.enumerate() {
        if i > 0 && !pause.is_zero() && !conn.idle(Some(pause)).await {
            return false;
        }
        if conn.send_chunk(event.as_bytes()).await.is_err() {
            return false;
        }
    }
    if pace.cut.is_some() {
        // FIN, not RST, so the client reads what was sent before the end.
        let _ = conn.stream.shutdown().await;
        return false;
    }
    conn.end_chunks().await.is_ok() && !close
}

/// A 200 with a `bytes`-long body; `true` if all of it was sent.
async fn huge_body(conn: &mut Conn, bytes: usize, chunked: bool) -> bool {
    const OPEN: &[u8] = b"{\"pad\":\"";
    const PIECE: usize = 64 * 1024;
    let head = if chunked {
        conn.start_chunks("application/json", false).await
    } else {
        let head = response_head(200, &[], bytes, false);
        conn.stream.write_all(head.as_bytes()).await
    };
    if head.is_err() {
        return false;
    }
    let mut left = bytes;
    let mut first = true;
    let pad = vec![b' '; PIECE];
    while left > 0 {
        let mut piece = if first { OPEN.to_vec() } else { Vec::new() };
        first = false;
        let n = (PIECE - piece.len()).min(left.saturating_sub(piece.len()));
        piece.extend_from_slice(&pad[..n]);
        piece.truncate(left);
        left -= piece.len();
        let sent = if chunked {
            conn.send_chunk(&piece).await
        } else {
            conn.stream.write_all(&piece).await
        };
        if sent.is_err() {
            return false;
        }
    }
    !chunked || conn.end_chunks().await.is_ok()
}

/// An answer that never ends (see [`Fault::Trickle`]); returns once the
/// client hangs up, counting it.
async fn trickle(conn: &mut Conn, shared: &Shared, req: &Request, stream: bool, every: Duration) {
    let dialect = shared.dialect;
    let (content_type, mut first, next): (_, Vec<String>, String) = if stream {
        let events = shared.answer(req, Some(("tick tock tack", 1, 1)), |a| {
            dialect.events(a, req)
        });
        let mut first = events.preamble;
        let next = events.content.first().cloned().unwrap_or_default();
        first.push(next.clone());
        (events.content_type, first, next)
    } else {
        ("application/json", vec!["{".to_owned()], " ".to_owned())
    };
    let mut open = conn.start_chunks(content_type, false).await.is_ok();
    for piece in first.drain(..) {
        open = open && conn.send_chunk(piece.as_bytes()).await.is_ok();
    }
    while open && conn.idle(Some(every)).await {
        open = conn.send_chunk(next.as_bytes()).await.is_ok();
    }
    shared.hangups.fetch_add(1, Ordering::Relaxed);
    shared.recorded.notify_waiters();
}
