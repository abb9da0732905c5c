//! The OpenAI-compatible HTTP door of `serve` (`[http] listen`, docs/contract.md §9): the same
//! engine, routing, breaker, limits and status as NATS requests, for any OpenAI SDK or curl.
//! HTTP/1.1 with keep-alive and HTTP/2 without TLS (h2c), on one port.
//!
//! A request goes: accept (one task per connection, `connection`) → `Door::handle` picks the
//! route → the key (`keys`), the body within `limits.max_body`, the model (`models`) → the
//! engine, as `ingress::chat` calls it (`chat`) → OpenAI's reply or error shape (`errors`).
//! A route is one arm of `Door::handle` and one handler.
//!
//! Bounds: a connection with no request in flight for `http.idle_timeout` is closed; a client
//! that goes away drops its request, and with it the provider call; on shutdown the listener
//! closes, each connection finishes what it has in flight and closes (drained as NATS requests
//! are, the same `limits.shutdown_timeout`, then `unavailable`).

mod chat;
mod errors;
mod keys;
mod models;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Tasks;
use crate::config::Config;
use crate::engine::Engine;
use crate::protocol::Endpoints;
use errors::HttpError;
use keys::Keys;
use models::Models;

/// Every response body: whole, or a stream of events.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request of the door shares.
struct Door {
    engine: Arc<Engine>,
    keys: Arc<Keys>,
    models: Models,
    max_body: usize,
    /// Streams outlive their handler: their tasks are tracked with the NATS requests'.
    tracker: TaskTracker,
    /// Shutdown past its deadline: what still runs answers `unavailable`.
    abort: CancellationToken,
}

pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP on `listener` until `tasks.stop`, then lets each connection finish what it has in
/// flight and returns once all are closed. (What it needs of `config` is taken now: the future
/// runs as a task of its own.)
pub fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: &Config,
    tasks: Tasks,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let door = Arc::new(Door {
        keys: Arc::new(Keys::new(
            &config.http.keys,
            engine.keys().clone(),
            config.breaker.max_retry_after,
        )),
        models: Models::new(config),
        max_body: config.limits.max_body,
        tracker: tasks.tracker.clone(),
        abort: tasks.abort.clone(),
        engine,
    });
    let idle = config.http.idle_timeout;
    let key_count = config.http.keys.len();
    async move {
        let sharing = tokio::spawn(
            door.keys
                .clone()
                .share(door.engine.cluster().clone(), tasks.stop.clone()),
        );
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(true);
        let builder = Arc::new(builder);
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, keys = key_count, "serving OpenAI-compatible HTTP");
        }
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tasks.stop.cancelled() => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        door.clone(),
                        builder.clone(),
                        idle,
                        tasks.stop.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a moment instead of spinning.
                    warn!(error = %e, "could not accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        connections.close();
        connections.wait().await;
        let _ = sharing.await;
    }
}

/// One connection, until it closes, sits idle for `idle`, or shutdown closes it gracefully.
async fn connection(
    stream: TcpStream,
    door: Arc<Door>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle: Duration,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::default());
    let service = {
        let state = state.clone();
        hyper::service::service_fn(move |req| {
            let (door, busy) = (door.clone(), Busy::new(state.clone()));
            async move { Ok::<_, Infallible>(door.handle(req, busy).await) }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = state.idle_for(idle), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Requests of one connection in flight (a stream until its last event), and when the last one
/// ended. Nothing is woken when a request starts or ends: the idle timer looks when it fires
/// (a `Notify` here woke the connection's task twice per request, and with it, often, the
/// runtime's other worker).
struct ConnState {
    active: AtomicUsize,
    /// Nanoseconds after `opened` at which the connection last had no request in flight.
    quiet_since: AtomicU64,
    opened: Instant,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            active: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }
}

impl ConnState {
    /// Resolves once no request has been in flight for `idle`: the timer sleeps what is left of
    /// `idle` since the connection went quiet, or `idle` again while a request is in flight.
    async fn idle_for(&self, idle: Duration) {
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            if self.active.load(SeqCst) > 0 {
                wait = idle;
                continue;
            }
            let since = Duration::from_nanos(self.quiet_since.load(SeqCst));
            let quiet = self.opened.elapsed().saturating_sub(since);
            if quiet >= idle {
                return;
            }
            wait = idle.saturating_sub(quiet).max(Duration::from_millis(1));
        }
    }
}

/// A request in flight on its connection, until dropped.
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, SeqCst);
        Self(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let s = &self.0;
        // The time first: a timer that sees no request in flight then sees when the last one
        // ended. (Written by every request, not only the last: the timer reads it only once
        // none is in flight. A connection open for 584 years saturates.)
        let at = u64::try_from(s.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        s.quiet_since.store(at, SeqCst);
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Door {
    async fn handle(&self, req: Request<Incoming>, busy: Busy) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/chat/completions") => {
                chat::handle(self, req, busy, chat::Work::Chat).await
            }
            (&Method::POST, "/v1/embeddings") => {
                chat::handle(self, req, busy, chat::Work::Embed).await
            }
            (&Method::GET, "/v1/models") => match self.keys.authenticate(req.headers()) {
                Ok(key) => {
                    let key = key.and_then(|i| self.keys.key(i));
                    whole(StatusCode::OK, JSON, self.models.list(key))
                }
                Err(e) => failure(&e, Vec::new()),
            },
            (&Method::GET, "/health/live") => whole(
                StatusCode::OK,
                JSON,
                Bytes::from_static(b"{\"status\":\"live\"}"),
            ),
            (&Method::GET, "/health/ready") => {
                if models::ready(&self.engine) {
                    whole(
                        StatusCode::OK,
                        JSON,
                        Bytes::from_static(b"{\"status\":\"ready\"}"),
                    )
                } else {
                    let body = b"{\"status\":\"unavailable\",\"reason\":\"no deployment can take a call now: every circuit is open or cooling down\"}";
                    whole(
                        StatusCode::SERVICE_UNAVAILABLE,
                        JSON,
                        Bytes::from_static(body),
                    )
                }
            }
            (method, path) => failure(&HttpError::no_route(method, path), Vec::new()),
        }
    }
}

const JSON: &str = "application/json";

/// The door's two POST routes, as a message that sends a request of one kind to the other names
/// them (the engine's default names NATS subjects).
const ENDPOINTS: Endpoints = Endpoints {
    chat: "POST /v1/chat/completions",
    embed: "POST /v1/embeddings",
};

fn whole(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An error in OpenAI's shape, with `Retry-After` when known and the `Llm-*` headers given.
fn failure(e: &HttpError, llm: Vec<(&'static str, String)>) -> Response<Body> {
    let mut r = with_headers(whole(e.status, JSON, e.body()), llm);
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Adds `Llm-*` headers (names in lower case on the wire, as HTTP/2 wants); a value that is not
/// a valid header value (it cannot be: ids are checked at the edge) is left out rather than
/// failing the reply.
fn with_headers(mut r: Response<Body>, llm: Vec<(&'static str, String)>) -> Response<Body> {
    // Room for them all at once (a map grown one insert at a time is rehashed on the way); a
    // dozen names cannot reach the map's limit, so this does not fail.
    let _ = r.headers_mut().try_reserve(llm.len());
    for (name, value) in llm {
        if let (Some(n), Ok(v)) = (header_name(name), HeaderValue::try_from(value)) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

/// A reply header's name in HTTP's lower case. The `Llm-*` names a reply carries are made once
/// (`HeaderName::from_bytes` lower-cases and copies the name on every reply); a clone of one is
/// a reference count.
fn header_name(name: &'static str) -> Option<HeaderName> {
    use crate::protocol::headers as h;
    static NAMES: std::sync::LazyLock<Vec<(&'static str, HeaderName)>> =
        std::sync::LazyLock::new(|| {
            [
                h::REQUEST_ID,
                h::DEPLOYMENT,
                h::PROVIDER,
                h::ATTEMPTS,
                h::FALLBACK,
                h::LATENCY_MS,
                h::COST_USD,
                h::EMBEDDING_SPACE,
                h::ROUTE_REASON,
                h::ERROR,
                h::STREAM,
            ]
            .into_iter()
            .filter_map(|n| Some((n, HeaderName::from_bytes(n.as_bytes()).ok()?)))
            .collect()
        });
    match NAMES.iter().find(|(n, _)| *n == name) {
        Some((_, made)) => Some(made.clone()),
        None => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}
