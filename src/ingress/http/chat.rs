//! `POST /v1/chat/completions` and `POST /v1/embeddings` (the two kinds of `Work`): the body of
//! docs/contract.md §1 (or §10) and its `Llm-*` request headers,
//! served by `Engine::chat` exactly as `ingress::chat` serves NATS (headers read by
//! `RequestOptions::from_lookup`, one of `limits.max_in_flight` places, the panic guard, the
//! shutdown answer). Not streamed: the `chat.completion` or the error with its status. Streamed:
//! `text/event-stream` once the first chunk is there (a failure before it is a plain error with
//! its status, after fallbacks), `data: <chunk>` events, then `data: [DONE]` — or one
//! `data: {"error": ...}` event if the stream broke, and the end.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::errors::HttpError;
use super::models::Pick;
use super::{Body, Busy, Door, ENDPOINTS, JSON, failure, whole, with_headers};
use crate::deployment::opened::{self, OpenedCell};
use crate::engine::ChatOutcome;
use crate::ingress::chat::{STREAM_BUFFER, guarded, shut_down};
use crate::protocol::ChatRequest;
use crate::protocol::ErrorKind;
use crate::protocol::headers::{self, RequestOptions};
use crate::protocol::request::Peek;

/// What a POST asks the engine for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    /// `/v1/chat/completions`: `Engine::chat`, streamed or not.
    Chat,
    /// `/v1/embeddings`: `Engine::embed`, never streamed.
    Embed,
}

pub(super) async fn handle(
    door: &Door,
    req: Request<Incoming>,
    busy: Busy,
    work: Work,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let key = match door.keys.authenticate(&parts.headers) {
        Ok(k) => k,
        Err(e) => return failure(&e, Vec::new()),
    };
    let body = match read(body, door.max_body).await {
        Ok(b) => b,
        Err(e) => return failure(&e, Vec::new()),
    };
    // A chat body is read here once, for the model a key is checked against, and handed to the
    // engine read; a body that does not read is peeked at, and the engine words its refusal.
    let read = match work {
        Work::Chat => ChatRequest::parse(&body).ok(),
        Work::Embed => None,
    };
    let peek = match &read {
        Some(r) => Peek {
            model: r.model.clone(),
            stream: Some(r.stream),
        },
        None => Peek::of(&body),
    };
    let Some(pick) = door.models.pick(peek.model.as_deref()) else {
        return failure(
            &HttpError::unknown_model(peek.model.as_deref().unwrap_or_default()),
            Vec::new(),
        );
    };
    let asked = match work {
        Work::Chat => door.models.asked(&pick),
        Work::Embed => door.models.asked_embed(&pick),
    };
    if let Some(i) = key {
        if let Some(k) = door.keys.key(i)
            && !k.allows(asked)
        {
            return failure(&HttpError::forbidden(&k.name, asked), Vec::new());
        }
        if let Err(e) = door.keys.admit(i) {
            return failure(&e, Vec::new());
        }
    }
    let engine = &door.engine;
    // Most callers (an OpenAI SDK) send no `Llm-*` header: one look at the names then spares
    // six lookups, each of which lower-cases and hashes its name.
    let llm = parts
        .headers
        .keys()
        .any(|n| n.as_str().get(..4) == Some("llm-"));
    let mut options = RequestOptions::from_lookup(
        |name| {
            llm.then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
        },
        engine.limits().max_deadline,
    )
    .map(|o| RequestOptions {
        endpoints: ENDPOINTS,
        ..o
    });
    let request_id = headers::settle_request_id(&mut options);
    let Some(place) = engine.hold() else {
        engine.count_failure(ErrorKind::Overloaded);
        let mut e = HttpError::of(
            ErrorKind::Overloaded,
            format!(
                "this instance already holds {} requests (limits.max_in_flight): try again, or another instance",
                engine.limits().max_in_flight
            ),
        );
        e.request_id = Some(request_id.clone());
        return failure(&e, vec![(headers::REQUEST_ID, request_id.to_string())]);
    };
    let task = match &pick {
        Pick::Task(t) => t.clone(),
        Pick::Named(_) | Pick::Default => String::new(),
    };
    let options = match options {
        Ok(o) if work == Work::Chat && peek.stream == Some(true) => {
            let first_group = door.models.first_group(&pick).map(str::to_string);
            let ask = Streamed {
                task,
                options: o,
                body,
                read,
                request_id,
                key,
                first_group,
            };
            return stream(door, ask, place, busy).await;
        }
        other => other,
    };
    let served = async {
        match options {
            Ok(o) if work == Work::Embed => Box::pin(engine.embed(&task, o, &body)).await,
            Ok(o) => Box::pin(engine.chat_read(&task, o, &body, read, None)).await,
            Err(why) => engine.refuse(&task, request_id.clone(), why),
        }
    };
    let outcome = tokio::select! {
        o = guarded(served, engine, &request_id, false) => o,
        () = door.abort.cancelled() => shut_down(engine, &request_id, false),
    };
    drop(place);
    if let (Some(i), Ok(s)) = (key, &outcome.result) {
        door.keys.record(i, s.reply.cost_usd);
    }
    answer(outcome)
}

/// The reply to a request that is over: its `chat.completion`, or its error with its status.
fn answer(outcome: ChatOutcome) -> Response<Body> {
    match &outcome.result {
        Ok(_) => {
            let reply = outcome.into_reply();
            with_headers(whole(StatusCode::OK, JSON, reply.body), reply.headers)
        }
        Err(f) => {
            let e = HttpError::failed(f, &outcome.request_id);
            failure(&e, outcome.into_reply().headers)
        }
    }
}

/// The body, within `limits.max_body` (413 beyond it, before reading it when the length says so).
async fn read(body: Incoming, max: usize) -> Result<Bytes, HttpError> {
    if body.size_hint().lower() > max as u64 {
        return Err(HttpError::too_large(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(HttpError::too_large(max))
        }
        Err(e) => Err(HttpError::of(
            ErrorKind::InvalidRequest,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// A streamed request, read and admitted.
struct Streamed {
    task: String,
    options: RequestOptions,
    body: Bytes,
    /// The body as the door read it, for the engine.
    read: Option<ChatRequest>,
    request_id: Arc<str>,
    key: Option<usize>,
    /// The group the route starts in, if known: a stream served elsewhere fell back.
    first_group: Option<String>,
}

/// Runs the request in a tracked task that outlives this handler; answers once the first chunk
/// is there (or the request is over without one). The task is cancelled — and with it the
/// provider call — when the caller goes away, before or during the stream.
async fn stream(
    door: &Door,
    ask: Streamed,
    place: tokio::sync::OwnedSemaphorePermit,
    busy: Busy,
) -> Response<Body> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let (done_tx, done_rx) = oneshot::channel::<ChatOutcome>();
    let cell = OpenedCell::default();
    let cancel = CancellationToken::new();
    let gone = cancel.clone().drop_guard();
    let request_id = ask.request_id.clone();
    let first_group = ask.first_group.clone();
    {
        let (engine, keys, abort, cell) = (
            door.engine.clone(),
            door.keys.clone(),
            door.abort.clone(),
            cell.clone(),
        );
        door.tracker.spawn(async move {
            let Streamed {
                task,
                options,
                body,
                read,
                request_id,
                key,
                ..
            } = ask;
            let work = opened::watch(cell, async {
                let tx = tx;
                Box::pin(engine.chat_read(&task, options, &body, read, Some(&tx))).await
            });
            let outcome = tokio::select! {
                o = guarded(work, &engine, &request_id, true) => o,
                () = cancel.cancelled() => return,
                () = abort.cancelled() => shut_down(&engine, &request_id, true),
            };
            drop(place);
            if let (Some(i), Ok(s)) = (key, &outcome.result) {
                keys.record(i, s.reply.cost_usd);
            }
            let _ = done_tx.send(outcome);
        });
    }
    let Some(first) = rx.recv().await else {
        // Over before any chunk: a failure (after every fallback) is a plain error.
        return match done_rx.await {
            Ok(outcome) if outcome.result.is_err() => answer(outcome),
            // Served without a chunk (an empty stream): the stream's end alone.
            Ok(_) => whole(
                StatusCode::OK,
                "text/event-stream",
                Bytes::from_static(b"data: [DONE]\n\n"),
            ),
            Err(_) => failure(
                &HttpError::of(
                    ErrorKind::Internal,
                    "the request's task ended without an answer",
                ),
                Vec::new(),
            ),
        };
    };
    let opened = cell.lock().ok().and_then(|o| o.clone());
    let mut llm = vec![(headers::REQUEST_ID, request_id.to_string())];
    if let Some(o) = opened {
        let fallback = o.attempt > 1 || first_group.as_deref().is_some_and(|g| g != o.group);
        llm.push((headers::DEPLOYMENT, o.deployment.to_string()));
        llm.push((headers::PROVIDER, o.provider.to_string()));
        llm.push((headers::ATTEMPTS, o.attempt.to_string()));
        llm.push((headers::FALLBACK, fallback.to_string()));
    }
    let state = Sse {
        first: Some(first),
        rx,
        done: Some(done_rx),
        _gone: gone,
        _busy: busy,
    };
    let body = futures::stream::unfold(state, Sse::next)
        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
    let mut r = Response::new(StreamBody::new(body).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_headers(r, llm)
}

/// A stream's events as they come.
struct Sse {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    done: Option<oneshot::Receiver<ChatOutcome>>,
    /// Dropped with the body (the caller went away): cancels the request.
    _gone: DropGuard,
    _busy: Busy,
}

impl Sse {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        if let Some(chunk) = self.first.take() {
            return Some((event(&chunk), self));
        }
        if let Some(chunk) = self.rx.recv().await {
            return Some((event(&chunk), self));
        }
        let outcome = self.done.take()?.await.ok()?;
        let last = match &outcome.result {
            Ok(_) => Bytes::from_static(b"data: [DONE]\n\n"),
            Err(f) => event(&HttpError::failed(f, &outcome.request_id).body()),
        };
        Some((last, self))
    }
}

fn event(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}
