//! `llm.chat.<task>`: each request runs in its own task (tracked, so shutdown can wait for it) and
//! always gets a reply, success or error.

use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::IngressError;
use super::service::Counters;
use crate::engine::Engine;
use crate::protocol::{RequestOptions, Subjects};

pub async fn subscribe(
    client: &Client,
    subjects: &Subjects,
    queue_group: &str,
) -> Result<Subscriber, IngressError> {
    let subject = subjects.chat_wildcard();
    client
        .queue_subscribe(subject.clone(), queue_group.to_string())
        .await
        .map_err(|source| IngressError::Subscribe { subject, source })
}

/// Takes requests until `stop`, then drains the subscription: requests NATS already delivered
/// are still served; new ones go to the other instances of the queue group.
pub async fn serve(
    mut sub: Subscriber,
    client: Client,
    engine: Arc<Engine>,
    subjects: Subjects,
    counters: Arc<Counters>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut draining = false;
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled(), if !draining => {
                draining = true;
                if let Err(e) = sub.drain().await {
                    warn!(error = %e, "could not drain the chat subscription");
                    break;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let started = Instant::now();
        let (client, engine, subjects) = (client.clone(), engine.clone(), subjects.clone());
        let counters = counters.clone();
        tracker.spawn(async move {
            let error = handle(msg, &client, &engine, &subjects).await;
            counters.record(started, error);
        });
    }
}

/// Serves one request; answers the error kind it failed with, if it did.
async fn handle(
    msg: Message,
    client: &Client,
    engine: &Engine,
    subjects: &Subjects,
) -> Option<&'static str> {
    let Some(reply_to) = msg.reply else {
        warn!(subject = %msg.subject, "chat request without a reply subject: nowhere to answer");
        return Some("no_reply_subject");
    };
    let task = subjects.task_of(&msg.subject).unwrap_or_default();
    let options = RequestOptions::from_lookup(
        |name| header(msg.headers.as_ref(), name),
        engine.limits().max_deadline,
    );
    let outcome = if may_stream(&msg.payload) {
        // Chunks are published as they come, by this same task, while the engine produces them;
        // the channel is small, so a slow NATS connection slows the provider read, not memory.
        let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        let chat = async move { engine.chat(task, options, &msg.payload, Some(&tx)).await };
        let publish = async {
            while let Some(chunk) = rx.recv().await {
                if let Err(e) = client.publish(reply_to.clone(), chunk).await {
                    warn!(error = %e, "could not publish a stream chunk");
                }
            }
        };
        tokio::join!(chat, publish).0
    } else {
        engine.chat(task, options, &msg.payload, None).await
    };
    let error = outcome.result.as_ref().err().map(|f| f.kind.as_str());
    let reply = outcome.into_reply();
    let mut headers = HeaderMap::new();
    for (name, value) in reply.headers {
        headers.insert(name, value.as_str());
    }
    if let Err(e) = client
        .publish_with_headers(reply_to, headers, reply.body)
        .await
    {
        warn!(error = %e, "could not publish a reply");
    }
    error
}

/// Chunks held between the provider and NATS for one streamed request.
const STREAM_BUFFER: usize = 16;

/// Could this body ask for streaming? Exact when it says no, which spares plain requests the
/// stream machinery; the engine reads the real value.
fn may_stream(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"stream\"")
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
