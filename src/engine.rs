//! The engine in-process: supervisor, deployment actors and router, with one entry point per
//! request (`chat`) and the status snapshot. `serve` puts NATS in front of it; `demo`, the
//! benchmarks and the tests drive it directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::Link;
use crate::cluster::quota::ClusterWindow;
use crate::config::Config;
use crate::deployment::Slot;
use crate::deployment::supervisor::{self, Supervisor};
use crate::deployment::{self, Published};
use crate::observe::alerts::{Alert, Change, Inputs, Rules};
use crate::observe::events::{self, EventBus};
use crate::observe::spend::{Ledger, LedgerError, Spend};
use crate::observe::status::{DeploymentStatus, LatencyMs, StatusSnapshot};
use crate::observe::trace::{self, int};
use crate::protocol::reply::{Reply, ServedBy};
use crate::protocol::{ChatRequest, EmbedRequest, InvalidRequest};
use crate::protocol::{ErrorDetail, ErrorKind, RequestOptions, headers};
use crate::providers::{Adapter, http};
use crate::routing::Router;
use crate::routing::embed::EmbedAsk;
use crate::routing::fallback::{Ask, Failed, Served};
use crate::routing::policy::Policy;
use crate::routing::strategy::Strategy;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot start the actors: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

pub struct Engine {
    router: Arc<Router>,
    /// Alerts raised now, as the alert task last saw them.
    alerts: Arc<ArcSwap<Vec<Alert>>>,
    /// Stops the alert task.
    stop: CancellationToken,
    ledger: std::sync::Mutex<Option<Ledger>>,
    supervisor: ActorRef<supervisor::Msg>,
    events: EventBus,
    instance: Arc<str>,
    cluster: Arc<Link>,
    started: Instant,
    /// Failed requests by `ErrorKind` (its position in `ErrorKind::ALL`).
    errors: [AtomicU64; ErrorKind::ALL.len()],
    batch_items_ok: AtomicU64,
    batch_items_failed: AtomicU64,
    limits: crate::config::LimitsConfig,
    /// One permit per synchronous request held (`limits.max_in_flight`).
    places: Arc<tokio::sync::Semaphore>,
    /// Requests and spend per `[[http.keys]]` entry, for status.
    keys: Arc<crate::observe::keys::KeyUsage>,
}

/// The result of one request, with what the reply needs.
#[derive(Debug)]
pub struct ChatOutcome {
    pub request_id: Arc<str>,
    pub latency: Duration,
    pub result: Result<Served, Failed>,
    /// The request was streamed to the sink: the reply is the stream's closing message.
    pub streamed: bool,
}

impl Engine {
    /// Starts one actor per deployment under a supervisor. `instance` names this engine in status
    /// and events.
    pub async fn start(config: &Config, instance: &str) -> Result<Self, EngineError> {
        let client = http::client()?;
        let epoch = Instant::now();
        let events = events::bus();
        let instance: Arc<str> = instance.into();
        let breaker = Arc::new(config.breaker.clone());
        let policy: Arc<dyn deployment::FailurePolicy> = Arc::new(Policy::new(
            breaker.clone(),
            config.routing.fallback_on_auth,
        ));
        let cluster = Arc::new(Link::new(instance.clone(), &config.cluster));
        let slots: Vec<Slot> = config
            .deployments
            .iter()
            .map(|d| {
                let name: Arc<str> = d.name.as_str().into();
                let published = Arc::new(Published::new(
                    epoch,
                    d.rpm.map(|n| u64::from(n.get())),
                    d.tpm.map(|n| n.get()),
                ));
                Slot {
                    args: deployment::Args {
                        adapter: Arc::new(Adapter::new(d.clone(), client.clone())),
                        breaker: breaker.clone(),
                        policy: policy.clone(),
                        published: published.clone(),
                        events: events.clone(),
                        instance: instance.clone(),
                        name: name.clone(),
                        batch_share: 1.0 - config.batch_live_reserve,
                        cluster: cluster.clone(),
                        quota: ClusterWindow::new(
                            &d.name,
                            d.rpm.map(|n| u64::from(n.get())),
                            d.tpm.map(|n| n.get()),
                        )
                        .map(Arc::new),
                        fates: deployment::Fates::of(d),
                    },
                    name,
                    published,
                    actor: Default::default(),
                    name_hash: crate::config::stable_hash(d.name.as_bytes()),
                }
            })
            .collect();
        let slots: Arc<[Slot]> = slots.into();
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            supervisor::Args {
                slots: slots.clone(),
            },
        )
        .await?;
        let spend = Arc::new(Spend::new(config));
        let ledger = Ledger::open(&config.storage.path, &instance, spend.clone()).await?;
        let router = Arc::new(Router::new(config, slots, spend));
        let alerts = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let stop = CancellationToken::new();
        if config.alerts.enabled {
            tokio::spawn(watch_alerts(
                router.clone(),
                Rules::new(config.alerts.clone(), router.slots.len()),
                alerts.clone(),
                events.clone(),
                instance.clone(),
                stop.clone(),
            ));
        }
        Ok(Self {
            router,
            alerts,
            stop,
            ledger: std::sync::Mutex::new(Some(ledger)),
            supervisor,
            events,
            instance,
            cluster,
            started: epoch,
            errors: Default::default(),
            batch_items_ok: AtomicU64::new(0),
            batch_items_failed: AtomicU64::new(0),
            limits: config.limits.clone(),
            places: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight)),
            keys: Arc::new(crate::observe::keys::KeyUsage::new(&config.http.keys)),
        })
    }

    /// One of the `limits.max_in_flight` places for a synchronous request, held until dropped;
    /// `None` when every place is taken (the caller answers `overloaded`).
    pub fn hold(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// Counts a failure answered outside `chat` (overloaded, a failed task, shutdown).
    pub fn count_failure(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// `[limits]`: what the edges check requests against.
    pub fn limits(&self) -> &crate::config::LimitsConfig {
        &self.limits
    }

    /// What the HTTP door counts per key (`[[http.keys]]`), shown in status.
    pub fn keys(&self) -> &Arc<crate::observe::keys::KeyUsage> {
        &self.keys
    }

    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// What this instance shares with the others (started by `crate::cluster::sync::spawn`).
    pub fn cluster(&self) -> &Arc<Link> {
        &self.cluster
    }

    pub(crate) fn slots(&self) -> &Arc<[Slot]> {
        &self.router.slots
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    pub fn events(&self) -> tokio::sync::broadcast::Receiver<events::Event> {
        self.events.subscribe()
    }

    /// Serves one chat request: `task` is the subject's task token, `options` what the headers
    /// said, `body` the caller's JSON. Headers that could not be read go to `refuse` instead.
    pub async fn chat(
        &self,
        task: &str,
        options: RequestOptions,
        body: &[u8],
        sink: Option<&mpsc::Sender<Bytes>>,
    ) -> ChatOutcome {
        self.chat_read(task, options, body, None, sink).await
    }

    /// `chat` for a door that has read the body already (the HTTP door does, to check a key
    /// against the model): `read` is `ChatRequest::parse(body)`, which is then not done twice.
    pub async fn chat_read(
        &self,
        task: &str,
        options: RequestOptions,
        body: &[u8],
        read: Option<ChatRequest>,
        sink: Option<&mpsc::Sender<Bytes>>,
    ) -> ChatOutcome {
        let started = Instant::now();
        let request_id: Arc<str> = match &options.request_id {
            Some(id) => id.as_str().into(),
            None => headers::new_request_id().into(),
        };
        let span = request_span(&request_id, task, "chat");
        // A request that streams says so in its body; the reply then closes the stream.
        let (result, streamed) = match span.in_scope(|| self.read(&options, body, read, sink)) {
            Ok((req, strategy)) => {
                let streamed = req.stream;
                let ask = Ask {
                    req: Arc::new(req),
                    task,
                    opts: &options,
                    strategy,
                    request_id: &request_id,
                    sink,
                };
                let result = self.router.route(ask).instrument(span.clone()).await;
                (result, streamed)
            }
            Err(failed) => (Err(failed), false),
        };
        self.record(&span, result.as_ref(), options.batch);
        ChatOutcome {
            request_id,
            latency: started.elapsed(),
            result,
            streamed,
        }
    }

    /// Serves one embeddings request (`llm.embed.<task>`, docs/contract.md §10): `body` is an
    /// OpenAI embeddings body; the reply an OpenAI `list`, in one message.
    pub async fn embed(&self, task: &str, options: RequestOptions, body: &[u8]) -> ChatOutcome {
        let started = Instant::now();
        let request_id: Arc<str> = match &options.request_id {
            Some(id) => id.as_str().into(),
            None => headers::new_request_id().into(),
        };
        let span = request_span(&request_id, task, "embeddings");
        let read = span.in_scope(|| {
            let strategy = self.checked(&options, body)?;
            let req = EmbedRequest::parse(body, &options.endpoints)
                .map_err(|InvalidRequest(m)| Failed::new(ErrorKind::InvalidRequest, m))?;
            if let Some(model) = &req.model {
                tracing::Span::current().record("gen_ai.request.model", model.as_str());
            }
            Ok::<_, Failed>((req, strategy))
        });
        let result = match read {
            Ok((req, strategy)) => {
                let ask = EmbedAsk {
                    req: Arc::new(req),
                    task,
                    opts: &options,
                    strategy,
                    request_id: &request_id,
                };
                self.router.embed(ask).instrument(span.clone()).await
            }
            Err(failed) => Err(failed),
        };
        self.record(&span, result.as_ref(), options.batch);
        ChatOutcome {
            request_id,
            latency: started.elapsed(),
            result,
            streamed: false,
        }
    }

    /// A request whose options could not be read (`why`): answered `invalid_request` without
    /// routing, and counted and traced like any other failed request.
    pub fn refuse(&self, task: &str, request_id: Arc<str>, why: String) -> ChatOutcome {
        let span = request_span(&request_id, task, "chat");
        let failed = Failed::new(ErrorKind::InvalidRequest, why);
        self.record(&span, Err(&failed), false);
        ChatOutcome::failed(request_id, failed, false)
    }

    /// What the request's span and the error counters learn from its result.
    fn record(&self, span: &tracing::Span, result: Result<&Served, &Failed>, batch: bool) {
        match result {
            Ok(s) => {
                let c = self.router.slots[s.index].config();
                span.record("gen_ai.system", c.provider.gen_ai_system());
                span.record("gen_ai.response.model", c.model.as_str());
                let usage = &s.reply.usage;
                span.record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
                span.record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
                span.record("llm.deployment", &*s.deployment);
                span.record("llm.attempts", int(s.attempts));
                span.record("llm.fallback", s.fallback);
                span.record("llm.cost_usd", s.reply.cost_usd);
            }
            Err(f) => {
                span.record("error.type", f.kind.as_str());
                span.record("llm.attempts", int(f.attempts.len()));
                trace::fail(span, &f.message);
            }
        }
        match (result, batch) {
            (Ok(_), true) => self.batch_items_ok.fetch_add(1, Relaxed),
            (Ok(_), false) => 0,
            (Err(f), batch) => {
                if batch {
                    self.batch_items_failed.fetch_add(1, Relaxed);
                }
                self.errors[f.kind as usize].fetch_add(1, Relaxed)
            }
        };
    }

    /// The request as the router takes it (the parsed body and `Llm-Strategy`), or why it is
    /// refused before routing.
    fn read(
        &self,
        options: &RequestOptions,
        body: &[u8],
        read: Option<ChatRequest>,
        sink: Option<&mpsc::Sender<Bytes>>,
    ) -> Result<(ChatRequest, Option<Strategy>), Failed> {
        let invalid = |m: String| Failed::new(ErrorKind::InvalidRequest, m);
        let strategy = self.checked(options, body)?;
        let req = match read {
            Some(req) => req,
            None => ChatRequest::parse(body).map_err(|InvalidRequest(m)| invalid(m))?,
        };
        if let Some(model) = &req.model {
            tracing::Span::current().record("gen_ai.request.model", model.as_str());
        }
        if req.stream && sink.is_none() {
            return Err(invalid(
                "\"stream\": true needs a reply subject to stream to".into(),
            ));
        }
        Ok((req, strategy))
    }

    /// What every request is checked for before its body is read: its size against
    /// `limits.max_body`, and `Llm-Strategy`, which it returns.
    fn checked(&self, options: &RequestOptions, body: &[u8]) -> Result<Option<Strategy>, Failed> {
        let invalid = |m: String| Failed::new(ErrorKind::InvalidRequest, m);
        if body.len() > self.limits.max_body {
            return Err(invalid(format!(
                "the body is {} bytes, over limits.max_body ({} bytes)",
                body.len(),
                self.limits.max_body
            )));
        }
        match &options.strategy {
            Some(s) => s
                .parse::<Strategy>()
                .map(Some)
                .map_err(|e| invalid(format!("{}: {e}", headers::STRATEGY))),
            None => Ok(None),
        }
    }

    /// This instance's status snapshot; an actor that does not answer within a second is shown
    /// with circuit `unknown` rather than holding up the whole answer.
    pub async fn status(&self) -> StatusSnapshot {
        let waits: Vec<_> = self
            .router
            .slots
            .iter()
            .map(|slot| {
                let (tx, rx) = oneshot::channel();
                let sent = slot
                    .actor
                    .load_full()
                    .is_some_and(|a| a.send_message(deployment::Msg::Snapshot(tx.into())).is_ok());
                async move {
                    if sent
                        && let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), rx).await
                    {
                        return s;
                    }
                    unknown_status(slot)
                }
            })
            .collect();
        let deployments = futures::future::join_all(waits).await;
        let requests = self.router.requests.load(Relaxed);
        let fallbacks = self.router.fallbacks.load(Relaxed);
        StatusSnapshot {
            instance: self.instance.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            deployments,
            requests,
            fallbacks,
            fallback_ratio: if requests == 0 {
                0.0
            } else {
                fallbacks as f64 / requests as f64
            },
            alerts: self.alerts.load().to_vec(),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        k.as_str().to_string(),
                        self.errors[*k as usize].load(Relaxed),
                    )
                })
                .collect(),
            batch_items_ok: self.batch_items_ok.load(Relaxed),
            batch_items_failed: self.batch_items_failed.load(Relaxed),
            latency_buckets_s: deployment::stats::LATENCY_BUCKETS_S.to_vec(),
            spend: self.router.spend.snapshot(),
            cluster: self.cluster.status(),
            keys: self.keys.snapshot(),
        }
    }

    /// Stops the actors. Requests still in flight get their answers from their own tasks.
    pub async fn stop(&self) {
        self.stop.cancel();
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        // Spend totals are saved one last time.
        let ledger = self.ledger.lock().ok().and_then(|mut l| l.take());
        if let Some(mut l) = ledger {
            let _ = tokio::task::spawn_blocking(move || l.close()).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every `alerts.interval`: reads each deployment's window from its actor, evaluates the rules,
/// marks degraded deployments for routing, publishes raised and cleared alerts as events, and
/// keeps the list of active ones for status. Runs in its own task: no request waits on it.
async fn watch_alerts(
    router: Arc<Router>,
    mut rules: Rules,
    active: Arc<ArcSwap<Vec<Alert>>>,
    events: EventBus,
    instance: Arc<str>,
    stop: CancellationToken,
) {
    let cfg = rules.config().clone();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let windows = router.slots.iter().map(|slot| {
            let (tx, rx) = oneshot::channel();
            let msg = deployment::Msg::Window {
                window: cfg.window,
                at_least: cfg.min_samples,
                reply: tx.into(),
            };
            let sent = slot
                .actor
                .load_full()
                .is_some_and(|a| a.send_message(msg).is_ok());
            async move {
                let figures = if sent {
                    tokio::time::timeout(Duration::from_secs(1), rx)
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                (slot.name.clone(), figures)
            }
        });
        let deployments = futures::future::join_all(windows).await;
        let budgets = router.budgets.levels(&router.spend);
        let changes = rules.evaluate(&Inputs {
            now: Instant::now(),
            deployments: &deployments,
            requests: router.requests.load(Relaxed),
            fallbacks: router.fallbacks.load(Relaxed),
            budgets: &budgets,
        });
        for (i, slot) in router.slots.iter().enumerate() {
            slot.published
                .set_health(rules.degraded(i), rules.baseline(i));
        }
        active.store(Arc::new(rules.active()));
        for change in changes {
            match &change {
                Change::Raised(a) => tracing::warn!(
                    rule = %a.rule,
                    severity = %a.severity,
                    deployment = a.deployment.as_deref().unwrap_or("-"),
                    value = a.value,
                    threshold = a.threshold,
                    "alert raised"
                ),
                Change::Cleared(a) => tracing::info!(
                    rule = %a.rule,
                    deployment = a.deployment.as_deref().unwrap_or("-"),
                    value = a.value,
                    "alert cleared"
                ),
            }
            let _ = events.send(change.into_event(instance.clone()));
        }
    }
}

/// One span per request (OpenTelemetry GenAI attribute names), parent of one span per attempt;
/// exported over OTLP when built with the `otlp` feature.
fn request_span(request_id: &str, task: &str, operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "request",
        otel.name = operation,
        otel.kind = "server",
        gen_ai.operation.name = operation,
        llm.request_id = %request_id,
        llm.task = task,
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.system = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        llm.deployment = tracing::field::Empty,
        llm.attempts = tracing::field::Empty,
        llm.fallback = tracing::field::Empty,
        llm.cost_usd = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

fn unknown_status(slot: &Slot) -> DeploymentStatus {
    let c = slot.config();
    DeploymentStatus {
        name: c.name.clone(),
        group: c.group.clone(),
        provider: c.provider.as_str().into(),
        model: c.model.clone(),
        mode: c.mode().into(),
        circuit: "unknown".into(),
        in_flight: slot.published.in_flight(),
        rpm_used: slot.published.rpm_used(),
        rpm_limit: c.rpm.map(|n| u64::from(n.get())),
        tpm_used: slot.published.tpm_used(),
        tpm_limit: c.tpm.map(|n| n.get()),
        latency_ms: LatencyMs {
            p50: 0.0,
            p95: 0.0,
            ewma: slot.published.ewma_ms().unwrap_or_default(),
            baseline: slot.published.baseline_ms(),
        },
        error_rate: 0.0,
        timeout_rate: 0.0,
        requests: 0,
        failures: 0,
        cost_usd: 0.0,
        cooldown_s: None,
        degraded: slot.published.degraded(),
        cluster_rpm_used: None,
        cluster_tpm_used: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        latency_histogram: Vec::new(),
        latency_sum_s: 0.0,
    }
}

impl ChatOutcome {
    /// A request answered with `failed` before or instead of the engine's own answer.
    pub fn failed(request_id: Arc<str>, failed: Failed, streamed: bool) -> Self {
        Self {
            request_id,
            latency: Duration::ZERO,
            result: Err(failed),
            streamed,
        }
    }

    /// This outcome, or an `internal` error that says so if its reply would not fit in one NATS
    /// message of `max_payload` bytes. The provider was called and paid; the caller is told
    /// rather than left to time out, and a job stores this error instead of being redelivered.
    pub fn fit(self, max_payload: usize) -> Self {
        /// Room kept for the `Llm-*` headers and the protocol line.
        const HEADROOM: usize = 2048;
        let size = match &self.result {
            Ok(s) => s.reply.body.len(),
            Err(f) => {
                f.message.len()
                    + f.attempts
                        .iter()
                        .map(|a| a.error.len() + 128)
                        .sum::<usize>()
            }
        };
        if size.saturating_add(HEADROOM) <= max_payload {
            return self;
        }
        let mut failed = Failed::new(
            ErrorKind::Internal,
            format!(
                "the reply is {size} bytes, larger than the NATS server's max_payload ({max_payload} bytes): ask for a shorter answer, or raise max_payload"
            ),
        );
        if let Err(f) = &self.result {
            failed.status = f.status;
        }
        Self {
            result: Err(failed),
            ..self
        }
    }

    /// The reply of docs/contract.md §1: a `chat.completion` with success headers, or the error
    /// body with `Llm-Error`.
    pub fn into_reply(self) -> Reply {
        match self.result {
            Ok(s) => {
                let by = ServedBy {
                    deployment: &s.deployment,
                    provider: s.provider,
                    attempts: s.attempts,
                    fallback: s.fallback,
                    route_reason: &s.route_reason,
                    cost_usd: s.reply.cost_usd,
                    space: s.space.as_deref(),
                };
                Reply::success(
                    &self.request_id,
                    self.streamed,
                    self.latency,
                    &by,
                    s.reply.body,
                )
            }
            Err(f) => Reply::failure(
                self.streamed,
                self.latency,
                f.route_reason.as_deref(),
                ErrorDetail {
                    kind: f.kind,
                    message: f.message,
                    status: f.status,
                    request_id: self.request_id.to_string(),
                    attempts: f.attempts,
                    usage: f.usage,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Kills the slot's actor and waits for the supervisor to put a new one in its place.
    async fn kill_and_wait_restart(slot: &Slot) {
        let old = slot.actor.load_full().unwrap();
        old.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = slot.actor.load_full().map(|a| a.get_id());
            if now.is_some_and(|id| id != old.get_id()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor did not restart the actor"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_restarted_actor_keeps_the_circuit_another_instance_opened() {
        use crate::cluster::Remote;
        use crate::protocol::CircuitState;

        let engine = Engine::start(&Config::demo(), "t").await.unwrap();
        let slot = &engine.router.slots[0];
        let actor = slot.actor.load_full().unwrap();
        let remote = Remote::Circuit {
            state: CircuitState::Open,
            until: Instant::now() + Duration::from_secs(30),
            instance: "other".into(),
        };
        // What the sync task does with a record from another instance.
        slot.published.remember(&remote);
        actor.send_message(deployment::Msg::Remote(remote)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while slot.published.circuit() != CircuitState::Open {
            assert!(Instant::now() < deadline, "the record was not applied");
            tokio::task::yield_now().await;
        }
        kill_and_wait_restart(slot).await;
        let status = engine.status().await;
        assert_eq!(status.deployments[0].circuit, "open", "restarted closed");
        engine.stop().await;
    }

    #[tokio::test]
    async fn a_dead_deployment_actor_is_restarted_and_serves_again() {
        let engine = Engine::start(&Config::demo(), "t").await.unwrap();
        let slot = &engine.router.slots[0];
        kill_and_wait_restart(slot).await;
        let body = br#"{"model":"flash-sim","messages":[{"role":"user","content":"hi"}]}"#;
        let outcome = engine
            .chat("chat", RequestOptions::default(), body, None)
            .await;
        let served = outcome.result.expect("served after the restart");
        assert_eq!(&*served.deployment, "flash-sim");
        engine.stop().await;
    }
}
