//! The sync task, one per `serve` instance: opens the cluster's bucket, watches it and tells the
//! deployment actors what other instances decided (`deployment::Msg::Remote`), and puts in the
//! bucket what its own actors decided (their `Publish`es, through the `Link`'s channel).
//!
//! When NATS goes away it says so (`cluster.shared = false`: every actor keeps its own breaker and
//! windows) and keeps what its actors decided meanwhile. The bucket handle the request path uses
//! for `rpm`/`tpm` is cleared only when the connection stays down past `sync_timeout`; a watch
//! lost while async-nats reconnects to another node leaves it set. When NATS returns it opens the bucket
//! again, re-reads every key (the watch starts with each key's last value), resumes watching,
//! and republishes its own circuits and cool-downs unless a newer decision stands in the bucket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream::kv::{Entry, Operation, Store, Watch};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::{
    Bucket, Link, Publish, Record, Remote, circuit_key, cooldown_key, instant_of, key_token,
};
use crate::config::ClusterConfig;
use crate::deployment::Slot;
use crate::deployment::{self, breaker::CircuitState};
use crate::engine::Engine;

/// How often the connection state is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Unsent records kept for the sync task; beyond it an actor's record is dropped (and logged).
const OUTBOX: usize = 1024;

/// Opens (creating it if needed, with `replicas` copies) the bucket: a `KV_<bucket>` stream made
/// by hand, because async-nats 0.51's `create_key_value` fails against nats-server 2.9.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<Bucket, String> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        description: Some("Switchyard cluster state".into()),
        ..Default::default()
    };
    super::get_or_create_stream(js, config)
        .await
        .map_err(|e| format!("cannot create stream KV_{bucket} ({replicas} replicas): {e}"))?;
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open bucket {bucket}: {e}"))?;
    Ok(Bucket::new(store, js.clone()))
}

/// Starts the sync task for `engine`; it runs until `stop`.
pub fn spawn(
    client: Client,
    engine: Arc<Engine>,
    config: &ClusterConfig,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let link = engine.cluster().clone();
    let (tx, rx) = mpsc::channel(OUTBOX);
    link.set_outbox(Some(Arc::new(tx)));
    let slots = engine.slots().clone();
    let by_key = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (key_token(&s.name), i))
        .collect();
    let sync = Sync {
        js: jetstream::new(client.clone()),
        client,
        bucket: config.bucket.clone(),
        replicas: config.replicas,
        timeout: config.sync_timeout,
        link,
        slots,
        by_key,
        own: HashMap::new(),
    };
    tokio::spawn(sync.run(rx, stop))
}

struct Sync {
    client: Client,
    js: jetstream::Context,
    bucket: String,
    replicas: usize,
    timeout: Duration,
    link: Arc<Link>,
    slots: Arc<[Slot]>,
    /// Deployment key token → slot index.
    by_key: HashMap<String, usize>,
    /// What this instance decided last, per key: republished after an outage.
    own: HashMap<String, Record>,
}

enum Ended {
    Stopped,
    Lost(String),
}

impl Sync {
    async fn run(mut self, mut rx: mpsc::Receiver<Publish>, stop: CancellationToken) {
        loop {
            if !self.wait_connected(&mut rx, &stop).await {
                break;
            }
            let opened = tokio::time::timeout(self.timeout * 2, async {
                let bucket = open_bucket(&self.js, &self.bucket, self.replicas).await?;
                // Two watches rather than the whole bucket: every rpm/tpm lease writes a quota key,
                // and no instance needs to hear of those. (One consumer with two filters needs
                // nats-server 2.10.)
                let mut watches = Vec::new();
                for keys in ["circuit.>", "cooldown.>"] {
                    let w = bucket
                        .store()
                        .watch_with_history(keys)
                        .await
                        .map_err(|e| format!("cannot watch bucket {}: {e}", self.bucket))?;
                    watches.push(w);
                }
                Ok::<_, String>((bucket, futures::stream::select_all(watches)))
            })
            .await
            .unwrap_or_else(|_| Err(format!("bucket {} did not answer", self.bucket)));
            let (bucket, watch) = match opened {
                Ok(x) => x,
                // A handle to the bucket from before stays set: the connection is up, and the
                // bucket that did not answer now (a stream electing its leader) is what the
                // request path asks and retries (`cluster::quota`).
                Err(e) => {
                    self.link.set_status(false, format!("local state: {e}"));
                    if !self.pause(&mut rx, &stop, Duration::from_millis(500)).await {
                        break;
                    }
                    continue;
                }
            };
            self.link.set_kv(Some(Arc::new(bucket.clone())));
            let store = bucket.store();
            self.republish(store).await;
            self.link
                .set_status(true, format!("shared through bucket {}", self.bucket));
            // The bucket handle outlives the watch: async-nats moves the connection to a live
            // node by itself, and a handle made on this client keeps working there. Clearing it
            // when only the watch is lost would have each instance judge rpm/tpm by its own
            // windows until the watch is back, admitting up to the whole limit each. Only a real
            // loss of NATS (`wait_connected`) clears it.
            let ended = self.serve(store, watch, &mut rx, &stop).await;
            match ended {
                Ended::Stopped => break,
                Ended::Lost(why) => self.link.set_status(false, format!("local state: {why}")),
            }
        }
        self.link.set_outbox(None);
        self.link.set_kv(None);
    }

    /// Waits for the NATS connection, remembering what the actors decide meanwhile. `false` on
    /// stop. A connection that has not come back within `sync_timeout` is a real loss: the bucket
    /// handle is cleared, and every instance keeps its own windows until NATS returns. A shorter
    /// gap is async-nats moving to another node, during which a quota take retries.
    async fn wait_connected(
        &mut self,
        rx: &mut mpsc::Receiver<Publish>,
        stop: &CancellationToken,
    ) -> bool {
        let since = Instant::now();
        while self.client.connection_state() != State::Connected {
            self.link
                .set_status(false, "local state: NATS unreachable".to_string());
            if since.elapsed() >= self.timeout && self.link.kv().is_some() {
                self.link.set_kv(None);
            }
            if !self.pause(rx, stop, CHECK_EVERY).await {
                return false;
            }
        }
        true
    }

    /// Sleeps `d` while remembering the actors' records. `false` on stop.
    async fn pause(
        &mut self,
        rx: &mut mpsc::Receiver<Publish>,
        stop: &CancellationToken,
        d: Duration,
    ) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                p = rx.recv() => match p {
                    Some(p) => { self.remember(p); }
                    None => return false,
                },
            }
        }
    }

    async fn serve(
        &mut self,
        store: &Store,
        mut watch: futures::stream::SelectAll<Watch>,
        rx: &mut mpsc::Receiver<Publish>,
        stop: &CancellationToken,
    ) -> Ended {
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                e = watch.next() => match e {
                    Some(Ok(entry)) => self.apply(entry),
                    Some(Err(e)) => return Ended::Lost(format!("watch failed: {e}")),
                    None => return Ended::Lost("watch ended".into()),
                },
                p = rx.recv() => {
                    let Some(p) = p else { return Ended::Stopped };
                    let (key, record) = self.remember(p);
                    if let Err(e) = self.put(store, &key, &record).await {
                        warn!(key, error = %e, "cannot share a state change");
                        if self.client.connection_state() != State::Connected {
                            return Ended::Lost("NATS connection lost".into());
                        }
                    }
                }
                _ = check.tick() => {
                    if self.client.connection_state() != State::Connected {
                        return Ended::Lost("NATS connection lost".into());
                    }
                }
            }
        }
    }

    fn remember(&mut self, p: Publish) -> (String, Record) {
        let now = crate::cluster::wall_ms();
        let (key, record) = match p {
            Publish::Circuit {
                deployment,
                state,
                until_ms,
            } => (
                circuit_key(&deployment),
                Record {
                    state: Some(state),
                    until_ms,
                    instance: self.link.instance().clone(),
                    at_ms: now,
                },
            ),
            Publish::CoolDown {
                deployment,
                until_ms,
            } => (
                cooldown_key(&deployment),
                Record {
                    state: None,
                    until_ms,
                    instance: self.link.instance().clone(),
                    at_ms: now,
                },
            ),
        };
        self.own.insert(key.clone(), record.clone());
        (key, record)
    }

    async fn put(&self, store: &Store, key: &str, record: &Record) -> Result<(), String> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        match tokio::time::timeout(self.timeout, store.put(key, body.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// After an outage: puts this instance's decisions that still hold, unless the bucket has a
    /// newer one for the same key.
    async fn republish(&self, store: &Store) {
        let now = crate::cluster::wall_ms();
        for (key, mine) in &self.own {
            let lapsed = mine.state != Some(CircuitState::Closed) && mine.until_ms <= now;
            if lapsed {
                continue;
            }
            let newer = match store.entry(key.as_str()).await {
                Ok(Some(e)) => {
                    serde_json::from_slice::<Record>(&e.value).is_ok_and(|r| r.at_ms >= mine.at_ms)
                }
                _ => false,
            };
            if !newer && let Err(e) = self.put(store, key, mine).await {
                warn!(key, error = %e, "cannot republish a state change");
            }
        }
    }

    /// Tells the deployment actor what another instance put in the bucket.
    fn apply(&self, entry: Entry) {
        if entry.operation != Operation::Put {
            return;
        }
        let Some((kind, token)) = entry.key.split_once('.') else {
            return;
        };
        if kind != "circuit" && kind != "cooldown" {
            return;
        }
        let Some(slot) = self.by_key.get(token).map(|&i| &self.slots[i]) else {
            return;
        };
        let record: Record = match serde_json::from_slice(&entry.value) {
            Ok(r) => r,
            Err(e) => {
                warn!(key = %entry.key, error = %e, "unreadable cluster record");
                return;
            }
        };
        if record.instance == *self.link.instance() {
            return;
        }
        // Older than what this instance decided since (an outage's backlog): ours stands, and
        // `republish` puts it back.
        if self
            .own
            .get(&entry.key)
            .is_some_and(|mine| mine.at_ms > record.at_ms)
        {
            return;
        }
        // What another instance shares is bounded like what a provider says here: no longer
        // than this instance's own `reset_timeout` for an open circuit, `max_retry_after` for a
        // cool-down (an instance with a larger cap, or an old record, cannot stall the cluster).
        let breaker = &slot.args.breaker;
        let cap = if kind == "circuit" {
            breaker.reset_timeout
        } else {
            breaker.max_retry_after
        };
        let now = Instant::now();
        let until = instant_of(record.until_ms).min(now.checked_add(cap).unwrap_or(now));
        let remote = match (kind, record.state) {
            ("circuit", Some(state)) => Remote::Circuit {
                state,
                until,
                instance: record.instance,
            },
            ("cooldown", _) => Remote::CoolDown { until },
            _ => return,
        };
        debug!(key = %entry.key, ?remote, "cluster record");
        slot.published.remember(&remote);
        if let Some(actor) = slot.actor.load_full() {
            let _ = actor.send_message(deployment::Msg::Remote(remote));
        }
    }
}
