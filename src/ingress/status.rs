//! `llm.status` (every instance answers: no queue group, so a requester gathering replies sees
//! the cluster) and `llm.status.events` (every circuit transition, as it happens).

use std::sync::Arc;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::IngressError;
use super::service::Counters;
use crate::engine::Engine;
use crate::observe::Event;
use crate::protocol::Subjects;

pub async fn subscribe(client: &Client, subjects: &Subjects) -> Result<Subscriber, IngressError> {
    let subject = subjects.status();
    client
        .subscribe(subject.clone())
        .await
        .map_err(|source| IngressError::Subscribe { subject, source })
}

pub async fn serve(
    mut sub: Subscriber,
    client: Client,
    engine: Arc<Engine>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        let Some(reply) = msg.reply else { continue };
        let started = std::time::Instant::now();
        let snapshot = engine.status().await;
        let body = serde_json::to_vec(&snapshot).unwrap_or_default();
        let error = match client.publish(reply, body.into()).await {
            Ok(()) => None,
            Err(e) => {
                warn!(error = %e, "could not publish a status reply");
                Some("publish_failed")
            }
        };
        counters.record(started, error);
    }
    let _ = sub.unsubscribe().await;
}

pub async fn publish_events(
    client: Client,
    mut events: broadcast::Receiver<Event>,
    subject: String,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.cancelled() => break,
        };
        match event {
            Ok(e) => {
                let body = serde_json::to_vec(&e).unwrap_or_default();
                if let Err(e) = client.publish(subject.clone(), body.into()).await {
                    warn!(error = %e, "could not publish an event");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "status events were dropped: publisher too slow");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}
