//! The engine in-process: supervisor, deployment actors and router, with one entry point per
//! request (`chat`) and the status snapshot. `serve` puts NATS in front of it; `demo`, the
//! benchmarks and the tests drive it directly.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Link;
use crate::cluster::quota::SharedWindow;
use crate::config::Config;
use crate::deployment::{self, Shared};
use crate::observe::events::{self, EventBus};
use crate::observe::spend::{Ledger, LedgerError, Spend};
use crate::observe::status::{DeploymentStatus, LatencyMs, StatusSnapshot};
use crate::protocol::{ChatRequest, InvalidRequest};
use crate::protocol::{ErrorBody, ErrorDetail, ErrorKind, RequestOptions, headers};
use crate::providers::{Adapter, http};
use crate::routing::fallback::{Ask, Failed, Served};
use crate::routing::strategy::Strategy;
use crate::routing::supervisor::{self, Supervisor};
use crate::routing::{Router, Slot};

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
    ledger: std::sync::Mutex<Option<Ledger>>,
    supervisor: ActorRef<supervisor::Msg>,
    events: EventBus,
    instance: Arc<str>,
    cluster: Arc<Link>,
    started: Instant,
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

/// A reply as it goes on the wire: `Llm-*` headers and a JSON body.
pub struct Reply {
    pub headers: Vec<(&'static str, String)>,
    pub body: bytes::Bytes,
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
        let cluster = Arc::new(Link::new(instance.clone(), &config.cluster));
        let slots: Vec<Slot> = config
            .deployments
            .iter()
            .map(|d| {
                let name: Arc<str> = d.name.as_str().into();
                let shared = Arc::new(Shared::new(epoch));
                Slot {
                    args: deployment::Args {
                        adapter: Arc::new(Adapter::new(d.clone(), client.clone())),
                        breaker: breaker.clone(),
                        fallback_on_auth: config.routing.fallback_on_auth,
                        shared: shared.clone(),
                        events: events.clone(),
                        instance: instance.clone(),
                        name: name.clone(),
                        batch_share: 1.0 - config.batch_live_reserve,
                        cluster: cluster.clone(),
                        quota: SharedWindow::new(
                            &d.name,
                            d.rpm.map(|n| u64::from(n.get())),
                            d.tpm.map(|n| n.get()),
                        )
                        .map(Arc::new),
                    },
                    name,
                    shared,
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
        let ledger = Ledger::open(&config.storage.path, spend.clone())?;
        Ok(Self {
            router: Arc::new(Router::new(config, slots, spend)),
            ledger: std::sync::Mutex::new(Some(ledger)),
            supervisor,
            events,
            instance,
            cluster,
            started: epoch,
        })
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

    pub fn events(&self) -> tokio::sync::broadcast::Receiver<events::Event> {
        self.events.subscribe()
    }

    /// Serves one chat request: `task` is the subject's task token, `options` what the headers
    /// said (or why they were refused), `body` the caller's JSON.
    pub async fn chat(
        &self,
        task: &str,
        options: Result<RequestOptions, String>,
        body: &[u8],
        sink: Option<&mpsc::Sender<Bytes>>,
    ) -> ChatOutcome {
        let started = Instant::now();
        let request_id: Arc<str> = match options.as_ref().ok().and_then(|o| o.request_id.clone()) {
            Some(id) => id.into(),
            // Random (v4) from the thread's RNG: no syscall and no shared generator to contend on.
            None => uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
                .into(),
        };
        // No per-request span: every attempt's log line carries the request id, and entering a
        // span on every poll cost ~1 % of the engine's CPU under load.
        let mut streamed = false;
        let result = self
            .run(task, options, body, &request_id, sink, &mut streamed)
            .await;
        ChatOutcome {
            request_id,
            latency: started.elapsed(),
            result,
            streamed,
        }
    }

    async fn run(
        &self,
        task: &str,
        options: Result<RequestOptions, String>,
        body: &[u8],
        request_id: &Arc<str>,
        sink: Option<&mpsc::Sender<Bytes>>,
        streamed: &mut bool,
    ) -> Result<Served, Failed> {
        let invalid = |m: String| Failed::new(ErrorKind::InvalidRequest, m);
        let options = options.map_err(invalid)?;
        let strategy = match &options.strategy {
            Some(s) => Some(
                s.parse::<Strategy>()
                    .map_err(|e| invalid(format!("{}: {e}", headers::STRATEGY)))?,
            ),
            None => None,
        };
        let req = ChatRequest::parse(body).map_err(|InvalidRequest(m)| invalid(m))?;
        if req.stream && sink.is_none() {
            return Err(invalid(
                "\"stream\": true needs a reply subject to stream to".into(),
            ));
        }
        *streamed = req.stream;
        self.router
            .route(Ask {
                req: Arc::new(req),
                task,
                opts: &options,
                strategy,
                request_id,
                sink,
            })
            .await
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
            alerts: Vec::new(),
            spend: self.router.spend.snapshot(),
            cluster: self.cluster.status(),
        }
    }

    /// Stops the actors. Requests still in flight get their answers from their own tasks.
    pub async fn stop(&self) {
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

fn unknown_status(slot: &Slot) -> DeploymentStatus {
    let c = slot.config();
    DeploymentStatus {
        name: c.name.clone(),
        group: c.group.clone(),
        provider: c.provider.as_str().into(),
        model: c.model.clone(),
        circuit: "unknown".into(),
        in_flight: slot.shared.in_flight(),
        rpm_used: slot.shared.rpm_used(),
        rpm_limit: c.rpm.map(|n| u64::from(n.get())),
        tpm_used: slot.shared.tpm_used(),
        tpm_limit: c.tpm.map(|n| n.get()),
        latency_ms: LatencyMs {
            p50: 0.0,
            p95: 0.0,
            ewma: slot.shared.ewma_ms().unwrap_or_default(),
        },
        error_rate: 0.0,
        timeout_rate: 0.0,
        requests: 0,
        failures: 0,
        cost_usd: 0.0,
        cooldown_s: None,
    }
}

/// Dollars to the 1e-10 (a hundredth of a micro-dollar), without float noise or trailing zeros.
pub fn format_usd(x: f64) -> String {
    let s = format!("{x:.10}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

impl ChatOutcome {
    /// The reply of contract section 1: a `chat.completion` with success headers, or the error
    /// body with `Llm-Error`.
    pub fn into_reply(self) -> Reply {
        let mut h = vec![(headers::REQUEST_ID, self.request_id.to_string())];
        if self.streamed {
            let end = if self.result.is_ok() { "end" } else { "error" };
            h.push((headers::STREAM, end.to_string()));
        }
        let latency_ms = self.latency.as_millis().to_string();
        match self.result {
            Ok(s) => {
                h.push((headers::DEPLOYMENT, s.deployment.to_string()));
                h.push((headers::PROVIDER, s.provider.to_string()));
                h.push((headers::ATTEMPTS, s.attempts.to_string()));
                h.push((headers::FALLBACK, s.fallback.to_string()));
                h.push((headers::ROUTE_REASON, s.route_reason.to_string()));
                h.push((headers::LATENCY_MS, latency_ms));
                h.push((headers::COST_USD, format_usd(s.reply.cost_usd)));
                Reply {
                    headers: h,
                    body: s.reply.body,
                }
            }
            Err(f) => {
                h.push((headers::ERROR, f.kind.as_str().to_string()));
                if let Some(r) = &f.route_reason {
                    h.push((headers::ROUTE_REASON, r.to_string()));
                }
                h.push((headers::LATENCY_MS, latency_ms));
                let body = ErrorBody {
                    error: ErrorDetail {
                        kind: f.kind,
                        message: f.message,
                        status: f.status,
                        request_id: self.request_id.to_string(),
                        attempts: f.attempts,
                        usage: f.usage,
                    },
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                Reply {
                    headers: h,
                    body: body.into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn costs_print_without_float_noise() {
        assert_eq!(format_usd(0.000006440000000000001), "0.00000644");
        assert_eq!(format_usd(1.5), "1.5");
        assert_eq!(format_usd(0.0), "0");
    }

    #[tokio::test]
    async fn a_dead_deployment_actor_is_restarted_and_serves_again() {
        let engine = Engine::start(&Config::demo(), "t").await.unwrap();
        let slot = &engine.router.slots[0];
        let old = slot.actor.load_full().unwrap();
        old.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = slot.actor.load_full().map(|a| a.get_id());
            if now.is_some_and(|id| id != old.get_id()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor did not restart the actor"
            );
            tokio::task::yield_now().await;
        }
        let body = br#"{"model":"flash-sim","messages":[{"role":"user","content":"hi"}]}"#;
        let outcome = engine
            .chat("chat", Ok(RequestOptions::default()), body, None)
            .await;
        let served = outcome.result.expect("served after the restart");
        assert_eq!(&*served.deployment, "flash-sim");
        engine.stop().await;
    }
}
