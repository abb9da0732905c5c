//! Batches over NATS (contract section 5): `llm.batch.submit` starts a batch inside `serve`, on the
//! same engine and deployments as live traffic; each finished item goes to
//! `llm.batch.<id>.results`, counts to `llm.batch.<id>.progress` every second, and
//! `llm.batch.<id>.status` / `llm.batch.<id>.cancel` answer on request. A batch lives in its own
//! folder (job, input, output) next to the storage database, and is recorded there, so a
//! restarted `serve` resumes the batches that were running.
//!
//! In a cluster (`[cluster] enabled`, the default) a batch is run by one instance at a time: the
//! one holding its lease (`crate::cluster::lease`). Instances that share the folder next to
//! `storage.path` (same host, or a shared volume) take over a batch whose owner died and resume it
//! from its checkpoints; a `serve` stopped by SIGTERM gives its leases up at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, Message};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::IngressError;
use super::service::Counters;
use crate::batch::checkpoint::{Checkpoint, output_line};
use crate::batch::job::Job;
use crate::batch::runner::{self, Hooks, RunArgs};
use crate::cluster::lease::{self, Acquired, RenewError};
use crate::config::Config;
use crate::engine::Engine;

pub struct BatchService {
    client: Client,
    engine: Arc<Engine>,
    prefix: String,
    db: PathBuf,
    dir: PathBuf,
    /// Batches running on this instance, to cancel them.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Batch tasks, so that shutdown waits for their in-flight items to be checkpointed.
    tracker: TaskTracker,
    /// Set at shutdown: a batch stopped then stays `running`, to be resumed by the next `serve`.
    shutting_down: AtomicBool,
    /// `llm.batch.submit` as the `$SRV` endpoint counts it.
    submits: Arc<Counters>,
    /// `[cluster] lease_ttl` when batches are leased: one instance runs a batch at a time.
    lease_ttl: Option<Duration>,
    /// The leases this instance holds, by batch id.
    leases: Mutex<HashMap<String, Held>>,
}

/// A lease this instance holds (or is about to take: revision 0).
struct Held {
    revision: u64,
    renewed: Instant,
    /// Taken over by another instance, or not renewed in time: the run stops and leaves the
    /// batch's record alone.
    lost: bool,
}

impl BatchService {
    pub fn new(
        client: Client,
        engine: Arc<Engine>,
        config: &Config,
        tracker: TaskTracker,
        submits: Arc<Counters>,
    ) -> Arc<Self> {
        let db = if config.storage.path.as_os_str() == ":memory:" {
            PathBuf::from("switchyard-batches.db")
        } else {
            config.storage.path.clone()
        };
        let dir = db
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            .join("switchyard-batches");
        Arc::new(Self {
            client,
            engine,
            prefix: config.nats.prefix.clone(),
            db,
            dir,
            running: Mutex::new(HashMap::new()),
            tracker,
            shutting_down: AtomicBool::new(false),
            submits,
            lease_ttl: config.cluster.enabled.then_some(config.cluster.lease_ttl),
            leases: Mutex::new(HashMap::new()),
        })
    }

    fn record_db(&self) -> rusqlite::Result<rusqlite::Connection> {
        let db = rusqlite::Connection::open(&self.db)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS served_batches (
                 id TEXT PRIMARY KEY, dir TEXT NOT NULL, state TEXT NOT NULL);",
        )?;
        Ok(db)
    }

    /// Subscribes and serves until `stop`; first resumes what a previous run left running.
    pub async fn serve(
        self: Arc<Self>,
        stop: CancellationToken,
        queue_group: String,
    ) -> Result<(), IngressError> {
        let sub = |subject: String| async {
            self.client
                .subscribe(subject.clone())
                .await
                .map_err(|source| IngressError::Subscribe { subject, source })
        };
        let submit_subject = format!("{}.batch.submit", self.prefix);
        let mut submit = self
            .client
            .queue_subscribe(submit_subject.clone(), queue_group)
            .await
            .map_err(|source| IngressError::Subscribe {
                subject: submit_subject,
                source,
            })?;
        let mut status = sub(format!("{}.batch.*.status", self.prefix)).await?;
        let mut cancel = sub(format!("{}.batch.*.cancel", self.prefix)).await?;
        let leases = match self.lease_ttl {
            // Unfinished batches are resumed as their leases are taken.
            Some(ttl) => Some(tokio::spawn(self.clone().keep_leases(ttl, stop.clone()))),
            None => {
                self.resume_unfinished();
                None
            }
        };
        loop {
            tokio::select! {
                Some(m) = submit.next() => self.clone().submit(m).await,
                Some(m) = status.next() => self.status(m).await,
                Some(m) = cancel.next() => self.cancel(m).await,
                _ = stop.cancelled() => break,
                else => break,
            }
        }
        // Running batches stop taking items; what is in flight is checkpointed, and they stay
        // `running` so that the next `serve` resumes them.
        self.shutting_down.store(true, Relaxed);
        for token in self
            .running
            .lock()
            .map(|r| r.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            token.cancel();
        }
        if let Some(l) = leases {
            let _ = l.await;
        }
        Ok(())
    }

    /// Batches recorded as running, with their folders.
    fn running_records(&self) -> Vec<(String, String)> {
        match self.record_db().and_then(|db| {
            let mut q = db.prepare("SELECT id, dir FROM served_batches WHERE state = 'running'")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        }) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read unfinished batches");
                Vec::new()
            }
        }
    }

    /// Renews this instance's leases and takes over batches whose owner is gone, every
    /// `ttl / 3` (more often until the cluster's bucket is open).
    async fn keep_leases(self: Arc<Self>, ttl: Duration, stop: CancellationToken) {
        loop {
            self.renew_leases(ttl).await;
            self.take_over(ttl).await;
            let wait = if self.engine.cluster().kv().is_some() {
                ttl / 3
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
    }

    async fn renew_leases(&self, ttl: Duration) {
        let me = self.engine.instance();
        let kv = self.engine.cluster().kv();
        let held: Vec<(String, u64, Instant)> = self
            .leases
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, h)| !h.lost)
                    .map(|(id, h)| (id.clone(), h.revision, h.renewed))
                    .collect()
            })
            .unwrap_or_default();
        for (id, revision, renewed) in held {
            let result = match &kv {
                None => Err(RenewError::Unreachable("NATS unreachable".into())),
                Some(kv) if revision == 0 => match lease::acquire(kv, &id, me, ttl).await {
                    Ok(Acquired::Mine(r)) => Ok(r),
                    Ok(Acquired::Held(_)) => Err(RenewError::Lost),
                    Err(e) => Err(RenewError::Unreachable(e)),
                },
                Some(kv) => lease::renew(kv, &id, me, revision).await,
            };
            match result {
                Ok(r) => {
                    if let Ok(mut l) = self.leases.lock()
                        && let Some(h) = l.get_mut(&id)
                    {
                        h.revision = r;
                        h.renewed = Instant::now();
                    }
                }
                Err(RenewError::Lost) => self.hand_over(&id, "another instance took it over"),
                Err(RenewError::Unreachable(e)) if renewed.elapsed() > ttl => {
                    warn!(batch = %id, error = %e, "batch lease not renewed in time");
                    self.hand_over(&id, "its lease could not be renewed");
                }
                Err(RenewError::Unreachable(e)) => {
                    warn!(batch = %id, error = %e, "cannot renew a batch lease yet");
                }
            }
        }
    }

    /// Stops running a batch that another instance owns now; its record stays `running`.
    fn hand_over(&self, id: &str, why: &str) {
        warn!(batch = %id, why, "stopping a batch this instance no longer owns");
        if let Ok(mut l) = self.leases.lock()
            && let Some(h) = l.get_mut(id)
        {
            h.lost = true;
        }
        if let Some(token) = self.running.lock().ok().and_then(|r| r.get(id).cloned()) {
            token.cancel();
        }
    }

    /// Starts every batch recorded as running whose lease is free or stale.
    async fn take_over(self: &Arc<Self>, ttl: Duration) {
        let Some(kv) = self.engine.cluster().kv() else {
            return;
        };
        for (id, dir) in self.running_records() {
            let here = self.running.lock().is_ok_and(|r| r.contains_key(&id));
            if here {
                continue;
            }
            match lease::acquire(&kv, &id, self.engine.instance(), ttl).await {
                Ok(Acquired::Mine(revision)) => {
                    info!(batch = %id, "taking the batch's lease: resuming it here");
                    self.hold(&id, revision);
                    self.start(id, PathBuf::from(dir));
                }
                Ok(Acquired::Held(_)) => {}
                Err(e) => warn!(batch = %id, error = %e, "cannot take a batch lease"),
            }
        }
    }

    fn hold(&self, id: &str, revision: u64) {
        if let Ok(mut l) = self.leases.lock() {
            l.insert(
                id.to_string(),
                Held {
                    revision,
                    renewed: Instant::now(),
                    lost: false,
                },
            );
        }
    }

    /// Before a new batch starts: its lease, when batches are leased. `false` when another
    /// instance runs it already.
    async fn lease_new(&self, id: &str) -> bool {
        let Some(ttl) = self.lease_ttl else {
            return true;
        };
        let me = self.engine.instance();
        let revision = match self.engine.cluster().kv() {
            Some(kv) => match lease::acquire(&kv, id, me, ttl).await {
                Ok(Acquired::Mine(r)) => r,
                Ok(Acquired::Held(owner)) => {
                    info!(batch = %id, %owner, "the batch already runs on another instance");
                    return false;
                }
                // Taken at the next renewal.
                Err(_) => 0,
            },
            None => 0,
        };
        self.hold(id, revision);
        true
    }

    fn resume_unfinished(self: &Arc<Self>) {
        for (id, dir) in self.running_records() {
            info!(batch = %id, "resuming a batch left running");
            self.start(id, PathBuf::from(dir));
        }
    }

    async fn submit(self: Arc<Self>, msg: Message) {
        let started = std::time::Instant::now();
        let (answer, error) = match self.clone().prepare(&msg.payload) {
            Ok((id, dir)) => {
                if self.lease_new(&id).await {
                    self.start(id.clone(), dir);
                }
                (json!({ "batch_id": id }), None)
            }
            Err(e) => (
                json!({ "error": { "kind": "invalid_request", "message": e } }),
                Some("invalid_request"),
            ),
        };
        self.reply(&msg, &answer).await;
        self.submits.record(started, error);
    }

    /// Validates a submission and lays out its folder: `{job, items}` or `{job, input_path}`,
    /// where `job` is the job file's TOML text or `job_path` a job file on this machine.
    fn prepare(self: Arc<Self>, body: &[u8]) -> Result<(String, PathBuf), String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let text = match (v.get("job"), v.get("job_path")) {
            (Some(Value::String(t)), None) => t.clone(),
            (None, Some(Value::String(p))) => {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read job_path {p}: {e}"))?
            }
            _ => return Err("give `job` (the job file's TOML text) or `job_path`".into()),
        };
        let job = Job::parse(&text, "submitted job").map_err(|e| e.to_string())?;
        let work = self.dir.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&work)
            .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let input = match (v.get("items"), v.get("input_path")) {
            (Some(Value::Array(items)), None) => {
                let path = work.join("input.jsonl");
                let lines: String = items.iter().map(|i| format!("{i}\n")).collect();
                std::fs::write(&path, lines).map_err(|e| e.to_string())?;
                path
            }
            (None, Some(Value::String(p))) => PathBuf::from(p),
            _ => return Err("give `items` (an array of records) or `input_path`".into()),
        };
        std::fs::write(work.join("job.toml"), &text).map_err(|e| e.to_string())?;
        std::fs::write(work.join("input_path"), input.display().to_string())
            .map_err(|e| e.to_string())?;
        let id = Checkpoint::batch_id_for(&job.name, &input);
        self.record_db()
            .and_then(|db| {
                db.execute(
                    "INSERT OR REPLACE INTO served_batches (id, dir, state) VALUES (?1, ?2, 'running')",
                    rusqlite::params![id, work.display().to_string()],
                )
            })
            .map_err(|e| format!("cannot record the batch: {e}"))?;
        Ok((id, work))
    }

    /// Runs a batch in the background, publishing items and progress.
    fn start(self: &Arc<Self>, id: String, dir: PathBuf) {
        let input = match std::fs::read_to_string(dir.join("input_path")) {
            Ok(p) => PathBuf::from(p),
            Err(e) => {
                warn!(batch = %id, error = %e, "batch folder incomplete");
                return;
            }
        };
        let token = CancellationToken::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(id.clone(), token.clone());
        }
        let (items_tx, mut items_rx) = tokio::sync::mpsc::unbounded_channel();
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let this = self.clone();
        self.tracker.spawn(async move {
            let results = format!("{}.batch.{id}.results", this.prefix);
            let progress = format!("{}.batch.{id}.progress", this.prefix);
            let hooks = Hooks {
                items: Some(items_tx),
                cancel: token,
                progress: Some(progress_tx),
            };
            let args = RunArgs {
                job: dir.join("job.toml"),
                input,
                output: Some(dir.join("output.jsonl")),
                db: this.db.clone(),
                restart: false,
            };
            let run = runner::run_on(this.engine.clone(), args, hooks);
            tokio::pin!(run);
            let outcome = loop {
                tokio::select! {
                    Some(item) = items_rx.recv() => {
                        let body = serde_json::to_vec(&output_line(&item)).unwrap_or_default();
                        let _ = this.client.publish(results.clone(), body.into()).await;
                    }
                    Some((done, total, failed)) = progress_rx.recv() => {
                        let body = json!({"batch_id": id, "done": done, "total": total, "failed": failed});
                        let _ = this.client.publish(progress.clone(), body.to_string().into()).await;
                    }
                    r = &mut run => break r,
                }
            };
            // Items that finished at the very end.
            while let Ok(item) = items_rx.try_recv() {
                let body = serde_json::to_vec(&output_line(&item)).unwrap_or_default();
                let _ = this.client.publish(results.clone(), body.into()).await;
            }
            let lease = this.leases.lock().ok().and_then(|mut l| l.remove(&id));
            if lease.as_ref().is_some_and(|h| h.lost) {
                // Another instance runs it now: its record and progress are that one's.
                if let Ok(mut r) = this.running.lock() {
                    r.remove(&id);
                }
                return;
            }
            let (state, last) = match &outcome {
                Ok(s) if s.cancelled && this.shutting_down.load(Relaxed) => ("running", json!({"batch_id": id, "state": "interrupted", "ok": s.ok, "failed": s.failed})),
                Ok(s) if s.cancelled => ("cancelled", json!({"batch_id": id, "state": "cancelled", "ok": s.ok, "failed": s.failed})),
                Ok(s) => ("done", json!({"batch_id": id, "state": "done", "done": s.total, "total": s.total, "ok": s.ok, "failed": s.failed})),
                Err(e) => {
                    warn!(batch = %id, error = %e, "batch stopped");
                    ("failed", json!({"batch_id": id, "state": "failed", "error": e.to_string()}))
                }
            };
            let _ = this.client.publish(progress, last.to_string().into()).await;
            let _ = this.record_db().and_then(|db| {
                db.execute(
                    "UPDATE served_batches SET state = ?2 WHERE id = ?1",
                    rusqlite::params![id, state],
                )
            });
            if let Ok(mut r) = this.running.lock() {
                r.remove(&id);
            }
            // Done, cancelled or stopped by shutdown: another instance may take it at once.
            if let (Some(h), Some(kv)) = (lease, this.engine.cluster().kv())
                && h.revision != 0
            {
                lease::release(&kv, &id, this.engine.instance(), h.revision).await;
            }
        });
    }

    fn id_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(&format!("{}.batch.", self.prefix))?
            .split('.')
            .next()
    }

    async fn status(&self, msg: Message) {
        let Some(id) = self.id_of(&msg.subject).map(str::to_string) else {
            return;
        };
        let state: Option<String> = self.record_db().ok().and_then(|db| {
            db.query_row(
                "SELECT state FROM served_batches WHERE id = ?1",
                [&id],
                |r| r.get(0),
            )
            .ok()
        });
        // Only the instance that has the batch answers.
        let Some(state) = state else { return };
        let answer = match Checkpoint::open(&self.db).and_then(|c| c.counts(&id)) {
            Ok(c) => json!({
                "batch_id": id, "state": state, "ok": c.ok, "failed": c.failed,
                "done": c.ok + c.failed, "tokens": c.tokens, "cost_usd": c.cost_usd,
                "by_deployment": c.by_deployment,
            }),
            Err(e) => json!({"batch_id": id, "state": state, "error": e.to_string()}),
        };
        self.reply(&msg, &answer).await;
    }

    async fn cancel(&self, msg: Message) {
        let Some(id) = self.id_of(&msg.subject).map(str::to_string) else {
            return;
        };
        let token = self.running.lock().ok().and_then(|r| r.get(&id).cloned());
        // Only the instance running it answers.
        if let Some(token) = token {
            token.cancel();
            self.reply(&msg, &json!({"batch_id": id, "cancelled": true}))
                .await;
        }
    }

    async fn reply(&self, msg: &Message, body: &Value) {
        if let Some(reply) = &msg.reply
            && let Err(e) = self
                .client
                .publish(reply.clone(), body.to_string().into())
                .await
        {
            warn!(error = %e, "could not answer a batch request");
        }
    }
}
