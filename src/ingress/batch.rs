//! Batches over NATS (contract section 5): `llm.batch.submit` starts a batch inside `serve`, on the
//! same engine and deployments as live traffic; each finished item goes to
//! `llm.batch.<id>.results`, counts to `llm.batch.<id>.progress` every second, and
//! `llm.batch.<id>.status` / `llm.batch.<id>.cancel` answer on request. A batch lives in its own
//! folder (job, input, output) next to the storage database, and is recorded there, so a
//! restarted `serve` resumes the batches that were running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
        self.resume_unfinished();
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
        Ok(())
    }

    fn resume_unfinished(self: &Arc<Self>) {
        let rows: Vec<(String, String)> = match self.record_db().and_then(|db| {
            let mut q = db.prepare("SELECT id, dir FROM served_batches WHERE state = 'running'")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        }) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read unfinished batches");
                return;
            }
        };
        for (id, dir) in rows {
            info!(batch = %id, "resuming a batch left running");
            self.start(id, PathBuf::from(dir));
        }
    }

    async fn submit(self: Arc<Self>, msg: Message) {
        let started = std::time::Instant::now();
        let (answer, error) = match self.clone().prepare(&msg.payload) {
            Ok((id, dir)) => {
                self.start(id.clone(), dir);
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
