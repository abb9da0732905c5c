//! Switchyard as a NATS service (the "micro" protocol): `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` (also `.switchyard` and `.switchyard.<id>`) answer with the endpoints
//! `llm.chat.>`, `llm.status` and `llm.batch.submit` and their request counts, errors and
//! processing times, as `nats micro ls|info|stats` and any other NATS tooling expect.
//!
//! The answers are async-nats's own `service` types, so the wire format is the crate's. The
//! endpoints themselves stay our subscriptions rather than the crate's `Service` endpoints,
//! for three reasons the contract forces: a failed request must be answered with our JSON error
//! body (the crate's error reply has an empty body), a stream is many messages before its
//! reply, and shutdown drains the chat subscription. Counting here is a few atomic adds per
//! request — no lock on the request path (the crate's `Service` takes a mutex per reply).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_nats::Client;
use async_nats::service::{self, endpoint};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::IngressError;

/// The service's name in `$SRV` subjects and answers.
pub const NAME: &str = "switchyard";

/// One endpoint's counters.
#[derive(Debug)]
pub struct Counters {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    requests: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    last_error: ArcSwapOption<String>,
}

impl Counters {
    fn new(name: &str, subject: String, queue_group: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            subject,
            queue_group: queue_group.into(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
        })
    }

    /// One request answered, `started` when it arrived; `error` is its error kind, if it failed.
    pub fn record(&self, started: Instant, error: Option<&str>) {
        self.requests.fetch_add(1, Relaxed);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Relaxed);
        if let Some(kind) = error {
            self.errors.fetch_add(1, Relaxed);
            self.last_error.store(Some(Arc::new(kind.to_string())));
        }
    }

    fn stats(&self) -> endpoint::Stats {
        let requests = self.requests.load(Relaxed);
        let total = Duration::from_nanos(self.nanos.load(Relaxed));
        endpoint::Stats {
            name: self.name.clone(),
            subject: self.subject.clone(),
            requests: requests as usize,
            errors: self.errors.load(Relaxed) as usize,
            processing_time: total,
            average_processing_time: total
                .checked_div(u32::try_from(requests).unwrap_or(u32::MAX))
                .unwrap_or_default(),
            last_error: self
                .last_error
                .load_full()
                .map(|kind| service::error::Error {
                    code: 500,
                    status: kind.to_string(),
                }),
            data: None,
            queue_group: self.queue_group.clone(),
        }
    }

    fn info(&self) -> endpoint::Info {
        endpoint::Info {
            name: self.name.clone(),
            subject: self.subject.clone(),
            queue_group: self.queue_group.clone(),
            metadata: HashMap::new(),
        }
    }
}

/// The endpoints of this instance.
pub struct Endpoints {
    pub chat: Arc<Counters>,
    pub embed: Arc<Counters>,
    pub status: Arc<Counters>,
    pub batch_submit: Arc<Counters>,
}

impl Endpoints {
    /// `status_queue` is this instance's own: every instance answers status.
    pub fn new(prefix: &str, queue_group: &str, status_queue: &str) -> Self {
        let subjects = crate::protocol::Subjects::new(prefix);
        Self {
            chat: Counters::new("chat", subjects.chat_wildcard(), queue_group),
            embed: Counters::new("embed", subjects.embed_wildcard(), queue_group),
            status: Counters::new("status", subjects.status(), status_queue),
            batch_submit: Counters::new("batch-submit", subjects.batch_submit(), queue_group),
        }
    }

    fn all(&self) -> [&Arc<Counters>; 4] {
        [&self.chat, &self.embed, &self.status, &self.batch_submit]
    }
}

/// What `$SRV` answers are made of.
pub struct Service {
    id: String,
    started: async_nats::datetime::DateTime,
    metadata: HashMap<String, String>,
    pub endpoints: Endpoints,
}

impl Service {
    pub fn new(instance: &str, endpoints: Endpoints) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            started: async_nats::datetime::now(),
            metadata: HashMap::from([("instance".to_string(), instance.to_string())]),
            endpoints,
        }
    }

    fn answer(&self, verb: &str) -> serde_json::Result<Vec<u8>> {
        let version = env!("CARGO_PKG_VERSION").to_string();
        match verb {
            "PING" => serde_json::to_vec(&service::PingResponse {
                kind: "io.nats.micro.v1.ping_response".into(),
                name: NAME.into(),
                id: self.id.clone(),
                version,
                metadata: self.metadata.clone(),
            }),
            "INFO" => serde_json::to_vec(&service::Info {
                kind: "io.nats.micro.v1.info_response".into(),
                name: NAME.into(),
                id: self.id.clone(),
                description: "Routes LLM requests, async jobs and batches across providers".into(),
                version,
                metadata: self.metadata.clone(),
                endpoints: self.endpoints.all().iter().map(|e| e.info()).collect(),
            }),
            _ => serde_json::to_vec(&service::Stats {
                kind: "io.nats.micro.v1.stats_response".into(),
                name: NAME.into(),
                id: self.id.clone(),
                version,
                started: self.started,
                endpoints: self.endpoints.all().iter().map(|e| e.stats()).collect(),
            }),
        }
    }
}

/// Subscribes to the `$SRV` verbs: for all services, for this service's name, and for its id.
pub async fn subscribe(
    client: &Client,
    service: &Service,
) -> Result<Vec<async_nats::Subscriber>, IngressError> {
    let mut subs = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{NAME}"),
            format!("$SRV.{verb}.{NAME}.{}", service.id),
        ] {
            let sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|source| IngressError::Subscribe { subject, source })?;
            subs.push(sub);
        }
    }
    Ok(subs)
}

/// Answers `$SRV` requests until `stop`.
pub async fn serve(
    subs: Vec<async_nats::Subscriber>,
    client: Client,
    service: Arc<Service>,
    stop: CancellationToken,
) {
    let mut all = futures::stream::select_all(subs);
    loop {
        let msg = tokio::select! {
            m = all.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        let Some(reply) = msg.reply else { continue };
        let verb = msg.subject.split('.').nth(1).unwrap_or_default();
        match service.answer(verb) {
            Ok(body) => {
                if let Err(e) = client.publish(reply, body.into()).await {
                    warn!(error = %e, "could not answer a $SRV request");
                }
            }
            Err(e) => warn!(error = %e, "could not encode a $SRV answer"),
        }
    }
}
