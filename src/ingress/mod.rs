//! NATS in front of the engine: `llm.chat.>` (queue group, shared by every `serve` instance),
//! `llm.status` (every instance answers), `llm.status.events`, batches, the async jobs of
//! `llm.submit.>` (a JetStream consumer shared by every instance), and the `$SRV` service
//! verbs. `run` takes the connection and
//! a shutdown future, so tests run it in-process; on shutdown it stops taking requests, finishes
//! the ones in flight, flushes, and returns. With `[cluster] enabled` it also runs the cluster
//! sync task (`crate::cluster::sync`), which shares this instance's state with the others.

pub mod batch;
pub mod chat;
pub mod cluster;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod service;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, NatsConfig};
use crate::engine::Engine;
use crate::protocol::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("nats.url `{url}` is not a NATS server address (or a comma-separated list): {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http.listen: cannot listen on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// Connects as NATS users expect: creds file, user/password, token, TLS.
pub async fn connect(c: &NatsConfig, name: &str) -> Result<async_nats::Client, IngressError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(|e| async move { tracing::info!(event = %e, "nats") });
    if let Some(path) = &c.creds_file {
        o = o
            .credentials_file(path)
            .await
            .map_err(|source| IngressError::Creds {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let (Some(user), Some(pass)) = (&c.user, &c.password) {
        o = o.user_and_password(user.clone(), pass.expose().to_string());
    }
    if let Some(token) = &c.token {
        o = o.token(token.expose().to_string());
    }
    if c.tls_required {
        o = o.require_tls(true);
    }
    if let Some(ca) = &c.tls_ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &c.tls_client_cert {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    // The first connection must succeed, so a wrong URL or credentials fail at start; after that
    // the client reconnects on its own.
    // `nats.url` may list several servers of a NATS cluster, comma-separated: the first that
    // answers is used, and the client learns the rest of the cluster from it.
    let servers = c
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IngressError::Url {
            url: c.url.clone(),
            reason: e.to_string(),
        })?;
    let client = o
        .connect(servers)
        .await
        .map_err(|source| IngressError::Connect {
            url: c.url.clone(),
            source,
        })?;
    Ok(client)
}

/// Looks up the stream `config.name`, creating it from `config` when missing. A stream that
/// already exists keeps its settings: its replica count is an operator's decision (raised with
/// `nats stream edit --replicas`, say), so one that differs from `config.num_replicas` is only
/// logged — updating it would shrink a stream scaled up by hand to the default 1.
pub(crate) async fn get_or_create_stream(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::jetstream::context::CreateStreamError>
{
    let (name, wanted) = (config.name.clone(), config.num_replicas.max(1));
    let stream = js.get_or_create_stream(config).await?;
    let replicas = stream.cached_info().config.num_replicas.max(1);
    if replicas != wanted {
        warn!(
            stream = %name,
            replicas,
            configured = wanted,
            "the stream exists with another replica count than cluster.replicas: kept as it is (`nats stream edit STREAM --replicas N` changes it)"
        );
    }
    Ok(stream)
}

/// How a serving loop's tasks are tracked and ended: `stop` ends taking new work (drain),
/// `abort` ends the work still running once the shutdown timeout has passed.
#[derive(Clone)]
pub struct Tasks {
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// How long answering what is left after the shutdown timeout may take.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves until `shutdown` resolves, then drains for at most `limits.shutdown_timeout`; with
/// `[http] listen`, serves HTTP there too.
pub async fn run(
    client: async_nats::Client,
    engine: Arc<Engine>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    let listener = match config.http.listen {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(|source| IngressError::Http { addr, source })?,
        ),
        None => None,
    };
    run_with(client, engine, config, listener, shutdown).await
}

/// `run`, with the HTTP door on `http` (a listener bound by the caller: tests bind port 0)
/// instead of `[http] listen`.
pub async fn run_with(
    client: async_nats::Client,
    engine: Arc<Engine>,
    config: &Config,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    let subjects = Subjects::new(&config.nats.prefix);
    let stop = CancellationToken::new();
    // Cancelled when draining outlasts `limits.shutdown_timeout`: what still runs is answered
    // (requests) or left unacked (jobs).
    let abort = CancellationToken::new();
    let tracker = TaskTracker::new();

    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| IngressError::Metrics { addr, source })?;
            Some(tokio::spawn(metrics::serve(
                listener,
                engine.clone(),
                stop.clone(),
            )))
        }
        None => None,
    };
    let service = Arc::new(service::Service::new(
        engine.instance(),
        // Status has no queue group: every instance answers.
        service::Endpoints::new(&config.nats.prefix, &config.nats.queue_group, ""),
    ));
    let queue = &config.nats.queue_group;
    let chat = chat::subscribe(&client, &subjects, queue, chat::Door::Chat).await?;
    let embed = chat::subscribe(&client, &subjects, queue, chat::Door::Embed).await?;
    let status = status::subscribe(&client, &subjects).await?;
    let srv = service::subscribe(&client, &service).await?;
    let srv_loop = tokio::spawn(service::serve(
        srv,
        client.clone(),
        service.clone(),
        stop.clone(),
    ));
    let events = tokio::spawn(status::publish_events(
        client.clone(),
        engine.events(),
        subjects.status_events(),
        stop.clone(),
    ));
    let tasks = || Tasks {
        tracker: tracker.clone(),
        stop: stop.clone(),
        abort: abort.clone(),
    };
    let chat_loop = tokio::spawn(chat::serve(
        (chat, chat::Door::Chat),
        client.clone(),
        engine.clone(),
        subjects.clone(),
        service.endpoints.chat.clone(),
        tasks(),
    ));
    let embed_loop = tokio::spawn(chat::serve(
        (embed, chat::Door::Embed),
        client.clone(),
        engine.clone(),
        subjects.clone(),
        service.endpoints.embed.clone(),
        tasks(),
    ));
    let status_loop = tokio::spawn(status::serve(
        status,
        client.clone(),
        engine.clone(),
        service.endpoints.status.clone(),
        stop.clone(),
    ));
    let batches = batch::BatchService::new(
        client.clone(),
        engine.clone(),
        config,
        tracker.clone(),
        service.endpoints.batch_submit.clone(),
    )
    .serve(stop.clone(), config.nats.queue_group.clone());
    let batch_loop = tokio::spawn(batches);
    let jobs_loop = config.jobs.enabled.then(|| {
        tokio::spawn(jobs::serve(
            client.clone(),
            engine.clone(),
            config,
            tracker.clone(),
            stop.clone(),
            abort.clone(),
        ))
    });
    let mut http_loop = http.map(|listener| {
        tokio::spawn(http::serve(
            listener,
            engine.clone(),
            config,
            Tasks {
                tracker: tracker.clone(),
                stop: stop.clone(),
                abort: abort.clone(),
            },
        ))
    });
    let cluster = config.cluster.enabled.then(|| {
        cluster::spawn(
            client.clone(),
            engine.clone(),
            &config.cluster,
            stop.clone(),
        )
    });
    info!(
        subject = %subjects.chat_wildcard(),
        queue_group = %config.nats.queue_group,
        instance = %engine.instance(),
        "serving"
    );

    shutdown.await;
    let grace = config.limits.shutdown_timeout;
    info!(
        in_flight = tracker.len(),
        timeout = %humantime::format_duration(grace),
        "shutting down: draining requests in flight"
    );
    let drained = tokio::time::timeout(grace, async {
        stop.cancel();
        let _ = chat_loop.await;
        let _ = embed_loop.await;
        // The HTTP door closes its listener and waits for its connections to finish.
        if let Some(h) = &mut http_loop {
            let _ = h.await;
        }
        // The batch service cancels its batches once `stop` is cancelled; their tasks are tracked.
        let _ = batch_loop.await;
        // The jobs loop lets its last pull end; the jobs it brought are tracked.
        if let Some(j) = jobs_loop {
            let _ = j.await;
        }
        tracker.close();
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            left = tracker.len(),
            "shutdown timeout passed: answering the requests left with `unavailable`, leaving unfinished jobs for redelivery"
        );
        abort.cancel();
        tracker.close();
        // Every request task answers at once on `abort`; a batch task that does not end within
        // this is abandoned to its checkpoint, which a restart resumes.
        if tokio::time::timeout(ABORT_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!(left = tracker.len(), "tasks still running at exit");
        }
    }
    // Not yet awaited if draining ran out of time.
    if let Some(h) = http_loop
        && !h.is_finished()
    {
        let _ = tokio::time::timeout(ABORT_GRACE, h).await;
    }
    let _ = status_loop.await;
    let _ = srv_loop.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = events.await;
    if let Some(c) = cluster {
        let _ = c.await;
    }
    let _ = client.flush().await;
    info!("drained");
    Ok(())
}
