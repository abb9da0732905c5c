//! `llm.chat.<task>` and `llm.embed.<task>` (the two doors of `Door`): each request runs in its own task (tracked, so shutdown can wait for it),
//! holds one of the instance's `limits.max_in_flight` places, and always gets exactly one reply:
//! success, error, `overloaded`, `internal` if its task panicked, or `unavailable` when shutdown
//! ran out of time.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, HeaderMap, Message, Subject, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::service::Counters;
use super::{IngressError, Tasks};
use crate::engine::{ChatOutcome, Engine};
use crate::protocol::headers::{self, new_request_id};
use crate::protocol::{ErrorKind, RequestOptions, Subjects};
use crate::routing::fallback::Failed;

/// Which synchronous surface a subscription serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `llm.chat.<task>`: chat completions, streamed or not.
    Chat,
    /// `llm.embed.<task>`: embeddings, in one reply.
    Embed,
}

pub async fn subscribe(
    client: &Client,
    subjects: &Subjects,
    queue_group: &str,
    door: Door,
) -> Result<Subscriber, IngressError> {
    let subject = match door {
        Door::Chat => subjects.chat_wildcard(),
        Door::Embed => subjects.embed_wildcard(),
    };
    client
        .queue_subscribe(subject.clone(), queue_group.to_string())
        .await
        .map_err(|source| IngressError::Subscribe { subject, source })
}

/// Takes requests until `stop`, then drains the subscription: requests NATS already delivered
/// are still served; new ones go to the other instances of the queue group. Each request holds
/// one of the engine's `limits.max_in_flight` places while it runs; one that finds none is
/// answered `overloaded` at once, here, without a task. `abort` (shutdown past its deadline)
/// answers every request still running with `unavailable`.
pub async fn serve(
    (mut sub, door): (Subscriber, Door),
    client: Client,
    engine: Arc<Engine>,
    subjects: Subjects,
    counters: Arc<Counters>,
    tasks: Tasks,
) {
    let Tasks {
        tracker,
        stop,
        abort,
    } = tasks;
    let mut draining = false;
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled(), if !draining => {
                draining = true;
                if let Err(e) = sub.drain().await {
                    warn!(error = %e, ?door, "could not drain the subscription");
                    break;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let started = Instant::now();
        let Some(place) = engine.hold() else {
            let error = refuse(msg, &client, &engine, door).await;
            counters.record(started, error);
            continue;
        };
        let (client, engine, subjects) = (client.clone(), engine.clone(), subjects.clone());
        let (counters, abort) = (counters.clone(), abort.clone());
        // Boxed: the runtime copies a task's future whole when it spawns and when it ends it,
        // and this one is kilobytes.
        tracker.spawn(Box::pin(async move {
            let error = handle(msg, &client, &engine, &subjects, &abort, door).await;
            drop(place);
            counters.record(started, error);
        }));
    }
}

/// Answers `overloaded`: this instance holds `limits.max_in_flight` requests already.
async fn refuse(
    msg: Message,
    client: &Client,
    engine: &Engine,
    door: Door,
) -> Option<&'static str> {
    let reply_to = msg.reply?;
    let request_id = requested_id(&msg.headers).unwrap_or_else(new_request_id);
    let failed = Failed::new(
        ErrorKind::Overloaded,
        format!(
            "this instance already holds {} requests (limits.max_in_flight): try again, or another instance",
            engine.limits().max_in_flight
        ),
    );
    let streaming = door == Door::Chat && may_stream(&msg.payload);
    let outcome = ChatOutcome::failed(request_id.into(), failed, streaming);
    engine.count_failure(ErrorKind::Overloaded);
    publish(client, reply_to, outcome, None).await;
    Some(ErrorKind::Overloaded.as_str())
}

/// Serves one request; answers the error kind it failed with, if it did. Whatever happens in
/// the engine, the caller gets exactly one reply: a panic in the request's task becomes an
/// `internal` error, a shutdown past its deadline `unavailable`.
async fn handle(
    msg: Message,
    client: &Client,
    engine: &Engine,
    subjects: &Subjects,
    abort: &CancellationToken,
    door: Door,
) -> Option<&'static str> {
    let Some(reply_to) = msg.reply.clone() else {
        warn!(subject = %msg.subject, "request without a reply subject: nowhere to answer");
        return Some("no_reply_subject");
    };
    let task = match door {
        Door::Chat => subjects.task_of(&msg.subject),
        Door::Embed => subjects.embed_task_of(&msg.subject),
    };
    let task = task.unwrap_or_default();
    let mut options = RequestOptions::from_lookup(
        |name| header(msg.headers.as_ref(), name),
        engine.limits().max_deadline,
    )
    .map(|o| RequestOptions {
        endpoints: subjects.endpoints(),
        ..o
    });
    // The id is fixed here, so that a reply made outside the engine names it too.
    let request_id = headers::settle_request_id(&mut options);
    let streaming = door == Door::Chat && may_stream(&msg.payload);
    let served = async {
        match options {
            Ok(options) if door == Door::Embed => {
                // As for chat: the future on the heap once, not copied by every wrapper.
                Box::pin(engine.embed(task, options, &msg.payload)).await
            }
            Ok(options) => {
                serve_one(
                    &msg,
                    reply_to.clone(),
                    client,
                    engine,
                    task,
                    options,
                    streaming,
                )
                .await
            }
            Err(why) => engine.refuse(task, request_id.clone(), why),
        }
    };
    let outcome = tokio::select! {
        outcome = guarded(served, engine, &request_id, streaming) => outcome,
        () = abort.cancelled() => shut_down(engine, &request_id, streaming),
    };
    let error = outcome.result.as_ref().err().map(|f| f.kind.as_str());
    let max_payload = client.server_info().max_payload;
    publish(client, reply_to, outcome, Some(max_payload)).await;
    error
}

/// Runs the request through the engine; a streamed one publishes its chunks as they come.
async fn serve_one(
    msg: &Message,
    reply_to: Subject,
    client: &Client,
    engine: &Engine,
    task: &str,
    options: RequestOptions,
    streaming: bool,
) -> ChatOutcome {
    // The engine's future is large (the whole fallback walk, with each provider call in it):
    // on the heap, it is allocated once instead of copied by every wrapper it passes through
    // (`guarded`, `catch_unwind`, `select!`, the task) — a copy per wrapper was a third of the
    // instructions of a request.
    if !streaming {
        return Box::pin(engine.chat(task, options, &msg.payload, None)).await;
    }
    // Chunks are published as they come, by this same task, while the engine produces them;
    // the channel is small, so a slow NATS connection slows the provider read, not memory.
    let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let chat = async move { Box::pin(engine.chat(task, options, &msg.payload, Some(&tx))).await };
    let publish = async {
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = client.publish(reply_to.clone(), chunk).await {
                warn!(error = %e, "could not publish a stream chunk");
            }
        }
    };
    tokio::join!(chat, publish).0
}

/// Publishes the reply; one larger than the server's `max_payload` becomes an `internal` error
/// that says so (the provider's answer is lost, but the caller is told instead of timing out).
pub(super) async fn publish(
    client: &Client,
    reply_to: Subject,
    outcome: ChatOutcome,
    max_payload: Option<usize>,
) {
    let outcome = match max_payload {
        Some(max) => outcome.fit(max),
        None => outcome,
    };
    let reply = outcome.into_reply();
    let headers = nats_headers(reply.headers);
    if let Err(e) = client
        .publish_with_headers(reply_to, headers, reply.body)
        .await
    {
        warn!(error = %e, "could not publish a reply");
    }
}

/// A reply's headers as async-nats sends them.
fn nats_headers(pairs: Vec<(&'static str, String)>) -> HeaderMap {
    let mut headers = sized_for(&pairs);
    for (name, value) in pairs {
        // The name is a constant of ours (not checked or copied again), the value moves in.
        headers.insert(async_nats::HeaderName::from_static(name), value);
    }
    headers
}

/// The header names of a served, unstreamed chat reply, in `Reply::success`'s order.
const SERVED: [&str; 8] = [
    headers::REQUEST_ID,
    headers::DEPLOYMENT,
    headers::PROVIDER,
    headers::ATTEMPTS,
    headers::FALLBACK,
    headers::ROUTE_REASON,
    headers::LATENCY_MS,
    headers::COST_USD,
];

/// A map to fill with `reply`'s headers. async-nats's `HeaderMap` is a `HashMap` that starts
/// with no room, so eight inserts grow it, and rehash it, twice; the clone of a map that holds
/// exactly these names (empty values, each overwritten by the inserts) has its room already.
/// That is the usual reply; any other set of names starts from an empty map.
fn sized_for(reply: &[(&'static str, String)]) -> HeaderMap {
    static SERVED_MAP: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        let mut h = HeaderMap::new();
        for name in SERVED {
            h.insert(async_nats::HeaderName::from_static(name), "");
        }
        h
    });
    if reply.iter().map(|(n, _)| *n).eq(SERVED) {
        SERVED_MAP.clone()
    } else {
        HeaderMap::new()
    }
}

/// The `Llm-Request-Id` a caller sent, if it is one we echo.
fn requested_id(headers: &Option<HeaderMap>) -> Option<String> {
    header(headers.as_ref(), crate::protocol::headers::REQUEST_ID)
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= crate::protocol::headers::MAX_REQUEST_ID
                && !id.chars().any(char::is_control)
        })
        .map(str::to_string)
}

/// The engine's work on one request or job; should it panic (a fault of ours), the outcome is
/// an `internal` error naming `request_id`, which the log line names too, so the caller still
/// gets its one reply and the instance keeps serving.
pub(super) async fn guarded(
    work: impl Future<Output = ChatOutcome>,
    engine: &Engine,
    request_id: &Arc<str>,
    streamed: bool,
) -> ChatOutcome {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            error!(request_id = %request_id, panic = panic_text(&*panic), "the request's task failed");
            engine.count_failure(ErrorKind::Internal);
            let failed = Failed::new(
                ErrorKind::Internal,
                format!("the engine failed on this request (logged with request id {request_id})"),
            );
            ChatOutcome::failed(request_id.clone(), failed, streamed)
        }
    }
}

/// The answer to a request still running when shutdown passed `limits.shutdown_timeout`.
pub(super) fn shut_down(engine: &Engine, request_id: &Arc<str>, streamed: bool) -> ChatOutcome {
    warn!(request_id = %request_id, "shutdown deadline passed: answering unavailable");
    engine.count_failure(ErrorKind::Unavailable);
    let failed = Failed::new(
        ErrorKind::Unavailable,
        "this instance shut down before the request finished (limits.shutdown_timeout): try again",
    );
    ChatOutcome::failed(request_id.clone(), failed, streamed)
}

/// What a panic said, for the log line.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Chunks held between the provider and NATS for one streamed request.
pub(super) const STREAM_BUFFER: usize = 16;

/// Could this body ask for streaming? Exact when it says no, which spares plain requests the
/// stream machinery; the engine reads the real value.
fn may_stream(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"stream\"").is_some()
}

/// Header lookup ignoring case, as NATS clients differ in how they spell names.
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_reply_carries_its_own_headers_whether_or_not_its_map_was_made_ahead() {
        use crate::protocol::reply::ServedBy;
        let by = ServedBy {
            deployment: "fast-a",
            provider: "openai",
            attempts: 2,
            fallback: true,
            route_reason: "task table",
            cost_usd: 0.000_03,
            space: None,
        };
        let served = crate::protocol::Reply::success(
            "r-1",
            false,
            std::time::Duration::from_millis(7),
            &by,
            Bytes::new(),
        );
        // The served reply takes the map made ahead; were its order to change, it would
        // quietly take the slow way, so hold it to the list.
        assert!(served.headers.iter().map(|(n, _)| *n).eq(SERVED));
        let h = nats_headers(served.headers);
        assert_eq!(h.len(), 8);
        assert_eq!(h.get(headers::DEPLOYMENT).unwrap().as_str(), "fast-a");
        assert_eq!(h.get(headers::ATTEMPTS).unwrap().as_str(), "2");
        assert_eq!(h.get(headers::REQUEST_ID).unwrap().as_str(), "r-1");
        assert!(
            h.iter()
                .all(|(_, v)| v.len() == 1 && !v[0].as_str().is_empty())
        );

        // Any other set of names: only its own, none of a served reply's left over.
        let failed = Failed::new(ErrorKind::Timeout, "too slow");
        let outcome = ChatOutcome::failed("r-2".into(), failed, false);
        let h = nats_headers(outcome.into_reply().headers);
        assert_eq!(h.get(headers::ERROR).unwrap().as_str(), "timeout");
        assert!(h.get(headers::DEPLOYMENT).is_none());
        assert!(h.get(headers::COST_USD).is_none());
    }

    #[tokio::test]
    async fn a_panic_in_the_engine_becomes_an_internal_reply_naming_the_request() {
        let engine = Engine::start(&Config::demo(), "t").await.unwrap();
        let id: Arc<str> = "req-42".into();
        let outcome = guarded(async { panic!("a bug of ours") }, &engine, &id, true).await;
        let failed = outcome.result.as_ref().unwrap_err();
        assert_eq!(failed.kind, ErrorKind::Internal);
        assert!(failed.message.contains("req-42"), "{}", failed.message);
        let reply = outcome.into_reply();
        let stream_end = reply.headers.iter().find(|(k, _)| *k == "Llm-Stream");
        assert_eq!(stream_end.map(|(_, v)| v.as_str()), Some("error"));
        assert_eq!(engine.status().await.errors["internal"], 1);
        engine.stop().await;
    }
}
