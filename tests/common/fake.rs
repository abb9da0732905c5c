//! A scriptable fake of an OpenAI-compatible Chat Completions provider.
//!
//! [`FakeProvider`] is a real HTTP/1.1 server (with keep-alive) on a loopback
//! port, written directly on `tokio::net` rather than an HTTP library so that
//! it can misbehave at the socket level: reset the connection, truncate the
//! body, answer late or never. Tests queue [`Fault`]s with
//! [`FakeProvider::push`]; each request to `POST /v1/chat/completions` takes
//! the next one, or the default behaviour (normally a successful completion)
//! once the queue is empty. Every request is recorded for later assertions.
//!
//! Requests to any other method or path are recorded too, but answered with
//! an OpenAI-style 404 without consuming the script.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The only route that is scripted.
const CHAT_PATH: &str = "/v1/chat/completions";
/// Larger request heads are rejected with 400.
const MAX_HEAD: usize = 64 * 1024;
const DEFAULT_COMPLETION_TOKENS: u32 = 7;

/// How the fake answers one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 200 with a chat.completion saying "fake reply from NAME".
    Ok,
    /// 200 with a chat.completion carrying this text and usage.
    Reply {
        text: String,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// This status with this (JSON) body; see [`Fault::status`].
    Status { code: u16, body: String },
    /// 429 with a `retry-after` header and an OpenAI rate-limit error body.
    RateLimited { retry_after_secs: u64 },
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
}

impl Fault {
    /// `code` with an OpenAI-style error body:
    /// `{"error":{"message":"fake error CODE","type":...,"param":null,"code":...}}`.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            body: error_body(code, &format!("fake error {code}")).to_string(),
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

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// In arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Null` if it is not JSON.
    pub body: Value,
    /// When the request had been read in full.
    pub at: Instant,
}

impl Recorded {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
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
    state: Mutex<State>,
    /// Signalled whenever a request is recorded.
    recorded: Notify,
    completions: AtomicU64,
}

struct State {
    script: VecDeque<Fault>,
    default: Fault,
    requests: Vec<Recorded>,
}

impl FakeProvider {
    /// Starts a fake named "fake" on `127.0.0.1:0`.
    pub async fn start() -> FakeProvider {
        FakeProvider::start_named("fake").await
    }

    /// Starts a fake whose default reply is "fake reply from NAME". The
    /// server runs on the current tokio runtime.
    pub async fn start_named(name: impl Into<String>) -> FakeProvider {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind fake provider to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of fake provider");
        let shared = Arc::new(Shared {
            name: name.into(),
            state: Mutex::new(State {
                script: VecDeque::new(),
                default: Fault::Ok,
                requests: Vec::new(),
            }),
            recorded: Notify::new(),
            completions: AtomicU64::new(0),
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

    /// `http://127.0.0.1:PORT/v1`, to be used as the OpenAI API base.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.handle.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    pub fn name(&self) -> &str {
        &self.handle.shared.name
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
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later assertion down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `req`, wakes `wait_calls`, and picks the fault to answer with.
    fn record(&self, req: &Request) -> Fault {
        let path = req.path.split('?').next().unwrap_or_default();
        let scripted = req.method == "POST" && path == CHAT_PATH;
        let fault = {
            let mut state = self.state();
            state.requests.push(Recorded {
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: req.json.clone(),
                at: Instant::now(),
            });
            if scripted {
                match state.script.pop_front() {
                    Some(fault) => fault,
                    None => state.default.clone(),
                }
            } else {
                Fault::Status {
                    code: 404,
                    body: error_body(
                        404,
                        &format!("Unknown request URL: {} {}", req.method, req.path),
                    )
                    .to_string(),
                }
            }
        };
        self.recorded.notify_waiters();
        fault
    }

    /// A chat.completion response body.
    fn completion(
        &self,
        req: &Request,
        text: &str,
        prompt_tokens: u32,
        completion_tokens: u32,
    ) -> Vec<u8> {
        let n = self.completions.fetch_add(1, Ordering::Relaxed) + 1;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let model = req
            .json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("fake-model");
        json!({
            "id": format!("chatcmpl-{n}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_fake",
        })
        .to_string()
        .into_bytes()
    }

    /// The body of [`Fault::Ok`] (also what [`Fault::TruncatedBody`] cuts).
    fn default_completion(&self, req: &Request) -> Vec<u8> {
        let text = format!("fake reply from {}", self.name);
        let prompt_tokens = 10 + u32::try_from(req.body.len() / 4).unwrap_or(u32::MAX - 10);
        self.completion(req, &text, prompt_tokens, DEFAULT_COMPLETION_TOKENS)
    }
}

/// `{"error":{...}}` as OpenAI sends it, with the error type for `code`.
fn error_body(code: u16, message: &str) -> Value {
    let (kind, error_code) = match code {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        // 400 and any other client error.
        400..=499 => ("invalid_request_error", None),
        500..=599 => ("server_error", None),
        _ => ("api_error", None),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": error_code}})
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
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
    };
    loop {
        let req = match conn.read_request().await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = error_body(400, &format!("malformed request: {e}")).to_string();
                let _ = conn.send(400, &[], body.as_bytes(), true).await;
                return;
            }
            Err(_) => return,
        };
        let fault = shared.record(&req);
        if !answer(&mut conn, shared, &req, fault).await {
            return;
        }
    }
}

/// Answers `req` as `fault` says; `true` if the connection stays usable.
async fn answer(conn: &mut Conn, shared: &Shared, req: &Request, mut fault: Fault) -> bool {
    let close = req.wants_close();
    loop {
        let sent = match fault {
            Fault::Delay { delay, then } => {
                if !conn.idle(Some(delay)).await {
                    return false;
                }
                fault = *then;
                continue;
            }
            Fault::Ok => {
                let body = shared.default_completion(req);
                conn.send(200, &[], &body, close).await
            }
            Fault::Reply {
                text,
                prompt_tokens,
                completion_tokens,
            } => {
                let body = shared.completion(req, &text, prompt_tokens, completion_tokens);
                conn.send(200, &[], &body, close).await
            }
            Fault::Status { code, body } => conn.send(code, &[], body.as_bytes(), close).await,
            Fault::RateLimited { retry_after_secs } => {
                let message = format!(
                    "Rate limit reached for requests. Please try again in {retry_after_secs}s."
                );
                let body = error_body(429, &message).to_string();
                let retry_after = retry_after_secs.to_string();
                conn.send(
                    429,
                    &[("retry-after", &retry_after)],
                    body.as_bytes(),
                    close,
                )
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
            Fault::TruncatedBody => {
                let body = shared.default_completion(req);
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
        };
        return sent.is_ok() && !close;
    }
}

/// A request as read off the wire.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// `body` parsed as JSON, or `Null`.
    json: Value,
}

impl Request {
    fn wants_close(&self) -> bool {
        find_header(&self.headers, "connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// One client connection with its read buffer (which may already hold the
/// start of the next request).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads more bytes into the buffer; `false` on end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(4 * 1024);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The next request, or `None` if the client closed the connection
    /// cleanly between requests.
    async fn read_request(&mut self) -> io::Result<Option<Request>> {
        let head_len = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("request head too large"));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        };
        let head = self.buf.split_to(head_len + 4);
        let head = std::str::from_utf8(&head[..head_len])
            .map_err(|_| invalid("request head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split_whitespace();
        let (Some(method), Some(path), Some(_version)) = (
            request_line.next(),
            request_line.next(),
            request_line.next(),
        ) else {
            return Err(invalid("malformed request line"));
        };
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| invalid("malformed header"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect::<io::Result<Vec<_>>>()?;

        if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let chunked = find_header(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            self.read_chunked_body().await?
        } else {
            let len = match find_header(&headers, "content-length") {
                Some(v) => v.parse().map_err(|_| invalid("bad content-length"))?,
                None => 0,
            };
            self.read_exact(len).await?
        };
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Some(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            body,
            json,
        }))
    }

    async fn read_exact(&mut self, len: usize) -> io::Result<Bytes> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(pos + 2);
                return String::from_utf8(line[..pos].to_vec())
                    .map_err(|_| invalid("line is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn read_chunked_body(&mut self) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Skip any trailers up to the terminating empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body.freeze());
            }
            body.extend_from_slice(&self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }

    /// Sends a complete response with a JSON content type.
    async fn send(
        &mut self,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> io::Result<()> {
        let mut out = response_head(status, extra, body.len(), close).into_bytes();
        out.extend_from_slice(body);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Waits for `duration` (forever if `None`) while watching the client.
    /// Returns `false` as soon as the client closes the connection. Bytes that
    /// arrive meanwhile are kept in the buffer for the next request.
    async fn idle(&mut self, duration: Option<Duration>) -> bool {
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            self.buf.reserve(1024);
            tokio::select! {
                () = &mut sleep => return true,
                read = self.stream.read_buf(&mut self.buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return false;
                    }
                }
            }
        }
    }
}

fn response_head(
    status: u16,
    extra: &[(&str, &str)],
    content_length: usize,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n",
        reason(status)
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}
