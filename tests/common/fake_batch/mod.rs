//! Fakes of the providers' batch APIs, on a loopback port: OpenAI's Batch API (`/v1/files`,
//! `/v1/batches`, `/v1/files/{id}/content`) and Anthropic's Message Batches
//! (`/v1/messages/batches`, `…/{id}/results`), each with its sync endpoint too
//! (`/v1/chat/completions`, `/v1/messages`) so that items the batch did not serve can be served
//! sync by the same deployment.
//!
//! They refuse what the real ones refuse (`openai.rs`, `anthropic.rs`): a duplicate `custom_id`, a
//! wrong endpoint or `url`, a missing `max_tokens` (Anthropic), a bad `custom_id`, an upload
//! without `purpose=batch`. A batch moves one state per poll (`validating → in_progress →
//! finalizing → completed` / `in_progress → ended`) unless [`Script::hold`] keeps it in progress
//! until cancelled; on ending it errors every `error_every`-th and expires every `expire_every`-th
//! request, answers the rest, and writes results in reverse order. Every `custom_id` of every
//! created batch is recorded ([`FakeBatch::submitted`]), and so is every sync call.

mod anthropic;
mod openai;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

/// How the fake behaves; change it at any time through [`FakeBatch::script`].
#[derive(Clone, Debug)]
pub struct Script {
    /// Batches stay in progress until cancelled (or until `hold` is cleared).
    pub hold: bool,
    /// While held, this many of a batch's first requests count as answered (kept on cancel).
    pub answered_while_held: usize,
    /// Every n-th request (1-based, in submission order) comes back errored.
    pub error_every: Option<usize>,
    /// Every n-th request comes back expired (the batch ends `expired` at OpenAI).
    pub expire_every: Option<usize>,
    /// Every n-th answer is a label outside the job's list (it fails the output rule).
    pub wrong_every: Option<usize>,
    /// Results downloads wait until this is cleared.
    pub hold_downloads: bool,
    /// A create makes the batch, then waits until this is cleared before answering.
    pub hold_create: bool,
    /// Statuses to answer the next batch calls with (create, get, upload, cancel, results), once each.
    pub failures: VecDeque<u16>,
    /// The label answered.
    pub label: String,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            hold: false,
            answered_while_held: 0,
            error_every: None,
            expire_every: None,
            wrong_every: None,
            hold_downloads: false,
            hold_create: false,
            failures: VecDeque::new(),
            label: "billing".into(),
        }
    }
}

/// One request of a batch.
#[derive(Clone, Debug)]
pub struct Entry {
    pub custom_id: String,
    /// The request body (OpenAI `body`, Anthropic `params`).
    pub body: Value,
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub id: String,
    pub entries: Vec<Entry>,
    /// OpenAI's status word, or Anthropic's `processing_status`.
    pub status: String,
    pub metadata: Value,
    pub cancel_asked: bool,
    /// Results, once ended: by file id (OpenAI: output and error files; Anthropic: one).
    pub files: Vec<String>,
    pub counts: (usize, usize, usize, usize),
}

#[derive(Default)]
pub struct State {
    pub script: Script,
    pub files: HashMap<String, Vec<u8>>,
    pub batches: Vec<Batch>,
    /// Every `custom_id` of every created batch, in order.
    pub submitted: Vec<String>,
    /// Why requests were refused.
    pub refused: Vec<String>,
    /// Sync calls: the last user message of each.
    pub sync_prompts: Vec<String>,
    /// Results downloads asked for (served or not).
    pub downloads: usize,
    /// Batch calls by kind: "upload", "create", "get", "list", "cancel", "results".
    pub calls: HashMap<&'static str, usize>,
    next: u64,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:06}", self.next)
    }
}

pub(super) struct Shared {
    pub(super) api: Api,
    pub(super) addr: SocketAddr,
    pub(super) state: Mutex<State>,
    changed: Notify,
    released: Notify,
}

#[derive(Clone)]
pub struct FakeBatch {
    shared: Arc<Shared>,
}

impl FakeBatch {
    pub async fn start(api: Api) -> FakeBatch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            api,
            addr,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            released: Notify::new(),
        });
        let server = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeBatch { shared }
    }

    /// The deployment's `api_base`.
    pub fn base_url(&self) -> String {
        match self.shared.api {
            Api::OpenAi => format!("http://{}/v1", self.shared.addr),
            Api::Anthropic => format!("http://{}", self.shared.addr),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Changes the script; a download held by `hold_downloads` goes on once it is cleared.
    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state().script);
        self.shared.released.notify_waiters();
    }

    pub fn submitted(&self) -> Vec<String> {
        self.state().submitted.clone()
    }

    pub fn calls(&self, kind: &str) -> usize {
        self.state().calls.get(kind).copied().unwrap_or(0)
    }

    /// Waits until `check` holds of the state (re-checked on every request), for up to `secs`.
    pub async fn wait(&self, what: &str, secs: u64, check: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let changed = self.shared.changed.notified();
            if check(&self.state()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

pub(super) type Reply = Response<Full<Bytes>>;

pub(super) fn reply(status: u16, body: &Value) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub(super) fn raw(status: u16, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/binary")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// What a handler sees of a request.
pub(super) struct Call {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let call = Call {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let out = match shared.api {
        Api::OpenAi => openai::handle(shared, &call).await,
        Api::Anthropic => anthropic::handle(shared, &call).await,
    };
    shared.changed.notify_waiters();
    out
}

/// Counts a batch call, and answers it with the script's next failure if there is one.
pub(super) fn count(shared: &Shared, kind: &'static str) -> Option<u16> {
    let mut s = shared.state.lock().unwrap();
    *s.calls.entry(kind).or_default() += 1;
    s.script.failures.pop_front()
}

/// Waits while the script holds downloads (the test may kill the client meanwhile).
pub(super) async fn held_download(shared: &Shared) {
    {
        shared.state.lock().unwrap().downloads += 1;
    }
    held(shared, |s| s.hold_downloads).await;
}

/// Waits while `holding` says so of the script.
pub(super) async fn held(shared: &Shared, holding: impl Fn(&Script) -> bool) {
    shared.changed.notify_waiters();
    loop {
        let released = shared.released.notified();
        if !holding(&shared.state.lock().unwrap().script) {
            return;
        }
        released.await;
    }
}

/// How request `n` (1-based) of a batch ends, as the script says.
#[derive(Debug, PartialEq)]
pub(super) enum Fate {
    Answer(String),
    Error,
    Expire,
}

pub(super) fn fate(script: &Script, n: usize) -> Fate {
    let every = |e: Option<usize>| e.is_some_and(|e| n.is_multiple_of(e));
    if every(script.error_every) {
        Fate::Error
    } else if every(script.expire_every) {
        Fate::Expire
    } else if every(script.wrong_every) {
        Fate::Answer("banana".into())
    } else {
        Fate::Answer(script.label.clone())
    }
}

/// The last user message's text of a chat body (OpenAI or Anthropic shape).
pub(super) fn prompt_of(body: &Value) -> String {
    let last = body["messages"].as_array().and_then(|m| m.last());
    match last.map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

pub(super) fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn not_found(what: &str) -> Reply {
    reply(
        404,
        &json!({"error": {"message": format!("no such {what}"), "type": "not_found_error"}}),
    )
}
