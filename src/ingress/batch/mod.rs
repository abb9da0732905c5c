//! Batches over NATS (docs/contract.md §5): `llm.batch.submit` starts a batch inside `serve`, on the
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
//!
//! A batch is named by its content (`crate::batch::source`): submitting the same job over the
//! same input while it runs answers the same `batch_id` and starts nothing, on this instance
//! (the set of running batches) and on the others (the lease). Files are read only under
//! `[batch] input_dir`, and every file and SQLite access runs on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

mod submission;

use super::IngressError;
use super::service::Counters;
use crate::batch::checkpoint::Checkpoint;
use crate::batch::runner::{self, Hooks, RunArgs};
use crate::cluster::lease::{self, Acquired, RenewError};
use crate::config::Config;
use crate::engine::Engine;
use crate::protocol::headers;
use crate::protocol::subjects::{BatchVerb, Subjects};
use submission::{Refusal, lay_out, prepare};

pub struct BatchService {
    client: Client,
    engine: Arc<Engine>,
    subjects: Subjects,
    db: PathBuf,
    dir: PathBuf,
    /// `[batch] input_dir`: the only folder `job_path` and `input_path` are read from.
    input_dir: Option<PathBuf>,
    /// Batches running on this instance (or about to), by id: a second submit of one of them
    /// starts nothing.
    running: Mutex<HashMap<String, Run>>,
    /// Batch tasks, so that shutdown waits for their in-flight items to be checkpointed.
    tracker: TaskTracker,
    /// Places for `not_found` answers waiting their delay.
    not_held: Arc<tokio::sync::Semaphore>,
    /// Set at shutdown: a batch stopped then stays `running`, to be resumed by the next `serve`.
    shutting_down: AtomicBool,
    /// `llm.batch.submit` as the `$SRV` endpoint counts it.
    submits: Arc<Counters>,
    /// `[cluster] lease_ttl` when batches are leased: one instance runs a batch at a time.
    lease_ttl: Option<Duration>,
    /// The leases this instance holds, by batch id.
    leases: Mutex<HashMap<String, Held>>,
}

/// Item results held between a batch's workers and the NATS publisher.
const ITEMS_BUFFER: usize = 64;
/// How long an instance that does not hold a batch waits before saying so.
const NOT_HELD_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
/// `not_found` answers waiting at once.
const NOT_HELD_WAITING: usize = 256;

/// A batch this instance runs.
struct Run {
    /// Stops the run (cancel, shutdown, lost lease).
    cancel: CancellationToken,
    /// The run has returned and its end is being recorded.
    ending: bool,
    /// Cancelled once the batch has left `running`: a submit waiting to start it again goes on.
    gone: CancellationToken,
}

/// What `claim` found.
enum Claim {
    /// Now this instance's to start.
    Mine(CancellationToken),
    /// Running here already.
    Running,
    /// Stopping: claim again once this is cancelled.
    Stopping(CancellationToken),
}

/// How long a submit waits for a stopping run of the same batch to end before it gives up.
const STOPPING_WAIT: Duration = Duration::from_secs(30);

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
            subjects: Subjects::new(&config.nats.prefix),
            db,
            dir,
            input_dir: config.batch_input_dir.clone(),
            running: Mutex::new(HashMap::new()),
            tracker,
            not_held: Arc::new(tokio::sync::Semaphore::new(NOT_HELD_WAITING)),
            shutting_down: AtomicBool::new(false),
            submits,
            lease_ttl: config.cluster.enabled.then_some(config.cluster.lease_ttl),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Takes batch `id` for this instance unless it runs here already.
    fn claim(&self, id: &str) -> Claim {
        let Ok(mut running) = self.running.lock() else {
            return Claim::Running;
        };
        match running.get(id) {
            // Cancelled by a request: it is stopping, and a new submit resumes it afterwards.
            Some(r) if r.ending || r.cancel.is_cancelled() => Claim::Stopping(r.gone.clone()),
            Some(_) => Claim::Running,
            None => {
                let cancel = CancellationToken::new();
                running.insert(
                    id.to_string(),
                    Run {
                        cancel: cancel.clone(),
                        ending: false,
                        gone: CancellationToken::new(),
                    },
                );
                Claim::Mine(cancel)
            }
        }
    }

    /// The batch left this instance (ended, handed over, or never started).
    fn unclaim(&self, id: &str) {
        let run = self.running.lock().ok().and_then(|mut r| r.remove(id));
        if let Some(run) = run {
            run.gone.cancel();
        }
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
        let submit_subject = self.subjects.batch_submit();
        let mut submit = self
            .client
            .queue_subscribe(submit_subject.clone(), queue_group)
            .await
            .map_err(|source| IngressError::Subscribe {
                subject: submit_subject,
                source,
            })?;
        let mut status = sub(self.subjects.batch("*", BatchVerb::Status)).await?;
        let mut cancel = sub(self.subjects.batch("*", BatchVerb::Cancel)).await?;
        let leases = match self.lease_ttl {
            // Unfinished batches are resumed as their leases are taken.
            Some(ttl) => Some(tokio::spawn(self.clone().keep_leases(ttl, stop.clone()))),
            None => {
                self.resume_unfinished().await;
                None
            }
        };
        loop {
            tokio::select! {
                // Each submit in its own task: reading and hashing an input file takes a while.
                Some(m) = submit.next() => {
                    self.tracker.spawn(self.clone().submit(m));
                }
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
            .map(|r| r.values().map(|r| r.cancel.clone()).collect::<Vec<_>>())
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
    async fn running_records(&self) -> Vec<(String, String)> {
        let db = self.db.clone();
        let read = tokio::task::spawn_blocking(move || {
            record_db(&db).and_then(|db| {
                let mut q =
                    db.prepare("SELECT id, dir FROM served_batches WHERE state = 'running'")?;
                let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<(String, String)>>>()
            })
        })
        .await;
        match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read unfinished batches");
                Vec::new()
            }
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
        if let Some(token) = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(id).map(|r| r.cancel.clone()))
        {
            token.cancel();
        }
    }

    /// Starts every batch recorded as running whose lease is free or stale.
    async fn take_over(self: &Arc<Self>, ttl: Duration) {
        let Some(kv) = self.engine.cluster().kv() else {
            return;
        };
        for (id, dir) in self.running_records().await {
            let Claim::Mine(cancel) = self.claim(&id) else {
                continue;
            };
            match lease::acquire(&kv, &id, self.engine.instance(), ttl).await {
                Ok(Acquired::Mine(revision)) => {
                    info!(batch = %id, "taking the batch's lease: resuming it here");
                    self.hold(&id, revision);
                    self.start(id, PathBuf::from(dir), cancel);
                }
                Ok(Acquired::Held(_)) => self.unclaim(&id),
                Err(e) => {
                    self.unclaim(&id);
                    warn!(batch = %id, error = %e, "cannot take a batch lease");
                }
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

    async fn resume_unfinished(self: &Arc<Self>) {
        for (id, dir) in self.running_records().await {
            if let Claim::Mine(cancel) = self.claim(&id) {
                info!(batch = %id, "resuming a batch left running");
                self.start(id, PathBuf::from(dir), cancel);
            }
        }
    }

    async fn submit(self: Arc<Self>, msg: Message) {
        let started = std::time::Instant::now();
        let (answer, error) = match self.clone().accept(msg.payload.clone()).await {
            Ok(id) => (json!({ "batch_id": id }), None),
            Err((kind, message)) => (
                json!({ "error": { "kind": kind, "message": message } }),
                Some(kind),
            ),
        };
        self.reply_as(&msg, &answer, error).await;
        self.submits.record(started, error);
    }

    /// Reads and checks a submission, then starts its batch unless it runs already (here or on
    /// another instance); the answer is the batch's id either way.
    async fn accept(self: Arc<Self>, body: bytes::Bytes) -> Result<String, Refusal> {
        let input_dir = self.input_dir.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(input_dir.as_deref(), &body))
            .await
            .map_err(|e| ("internal", format!("the submission could not be read: {e}")))??;
        let id = prepared.id.clone();
        let cancel = loop {
            // A batch started now would hold the shutdown up until it ends.
            if self.shutting_down.load(Relaxed) {
                return Err((
                    "unavailable",
                    "this instance is shutting down: submit again (another instance takes it)"
                        .into(),
                ));
            }
            match self.claim(&id) {
                Claim::Mine(cancel) => break cancel,
                Claim::Running => {
                    info!(batch = %id, "submitted again while it runs: nothing started");
                    return Ok(id);
                }
                Claim::Stopping(gone) => {
                    if tokio::time::timeout(STOPPING_WAIT, gone.cancelled())
                        .await
                        .is_err()
                    {
                        return Err((
                            "unavailable",
                            format!("batch {id} is still stopping; submit it again in a moment"),
                        ));
                    }
                }
            }
        };
        if !self.lease_new(&id).await {
            // Another instance runs it: same batch, nothing to start here.
            self.unclaim(&id);
            return Ok(id);
        }
        let (db, dir) = (self.db.clone(), self.dir.join(&id));
        let laid_out = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || lay_out(&db, &dir, prepared))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        if let Err(e) = laid_out {
            warn!(batch = %id, error = %e, "cannot lay out a submitted batch");
            self.leases.lock().ok().and_then(|mut l| l.remove(&id));
            self.unclaim(&id);
            return Err(("internal", format!("cannot store the batch: {e}")));
        }
        self.start(id.clone(), dir, cancel);
        Ok(id)
    }

    /// Runs a claimed batch in the background, publishing items and progress; `cancel` is its
    /// claim's token.
    fn start(self: &Arc<Self>, id: String, dir: PathBuf, cancel: CancellationToken) {
        // Both bounded: item results wait for the publisher (the batch slows down), progress
        // reports are dropped while one is waiting.
        let (items_tx, mut items_rx) = tokio::sync::mpsc::channel(ITEMS_BUFFER);
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel(1);
        let this = self.clone();
        self.tracker.spawn(async move {
            let input = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || std::fs::read_to_string(dir.join("input_path")))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
            };
            let input = match input {
                Ok(p) => PathBuf::from(p),
                Err(e) => {
                    warn!(batch = %id, error = %e, "batch folder incomplete");
                    this.leases.lock().ok().and_then(|mut l| l.remove(&id));
                    this.unclaim(&id);
                    return;
                }
            };
            let results = this.subjects.batch(&id, BatchVerb::Results);
            let progress = this.subjects.batch(&id, BatchVerb::Progress);
            let hooks = Hooks {
                items: Some(items_tx),
                cancel,
                progress: Some(progress_tx),
                batch_id: Some(id.clone()),
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
                        let _ = this.client.publish(results.clone(), item.into()).await;
                    }
                    Some((done, total, failed)) = progress_rx.recv() => {
                        let mut body = json!({"batch_id": id, "done": done, "total": total, "failed": failed});
                        // A deferred batch's remote parts and their states (validating, in
                        // progress, finalizing, ended…), read off its checkpoint.
                        let (db, batch) = (this.db.clone(), id.clone());
                        let remote = tokio::task::spawn_blocking(move || {
                            crate::batch::deferred::figures(&db, &batch).ok().flatten()
                        })
                        .await
                        .ok()
                        .flatten();
                        if let Some(f) = remote {
                            body["remote"] = f.to_json(0.0)["remote"].take();
                        }
                        let _ = this.client.publish(progress.clone(), body.to_string().into()).await;
                    }
                    r = &mut run => break r,
                }
            };
            // From here a submit of the same batch waits for this run to be gone, then starts it.
            if let Ok(mut r) = this.running.lock()
                && let Some(run) = r.get_mut(&id)
            {
                run.ending = true;
            }
            // Items that finished at the very end.
            while let Ok(item) = items_rx.try_recv() {
                let _ = this.client.publish(results.clone(), item.into()).await;
            }
            let lease = this.leases.lock().ok().and_then(|mut l| l.remove(&id));
            if lease.as_ref().is_some_and(|h| h.lost) {
                // Another instance runs it now: its record and progress are that one's.
                this.unclaim(&id);
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
            // Recorded before the last progress message, so whoever hears it and asks for the
            // status sees the end too.
            let (db, record_id) = (this.db.clone(), id.clone());
            let recorded = tokio::task::spawn_blocking(move || {
                record_db(&db).and_then(|db| {
                    db.execute(
                        "UPDATE served_batches SET state = ?2 WHERE id = ?1",
                        rusqlite::params![record_id, state],
                    )
                })
            })
            .await;
            if !matches!(recorded, Ok(Ok(_))) {
                warn!(batch = %id, state, "cannot record the batch's state");
            }
            let _ = this.client.publish(progress, last.to_string().into()).await;
            this.unclaim(&id);
            // Done, cancelled or stopped by shutdown: another instance may take it at once.
            if let (Some(h), Some(kv)) = (lease, this.engine.cluster().kv())
                && h.revision != 0
            {
                lease::release(&kv, &id, this.engine.instance(), h.revision).await;
            }
        });
    }

    fn id_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.subjects.batch_id_of(subject)
    }

    async fn status(self: &Arc<Self>, msg: Message) {
        let Some(id) = self.id_of(&msg.subject).map(str::to_string) else {
            return;
        };
        let (db, batch) = (self.db.clone(), id.clone());
        let read = tokio::task::spawn_blocking(move || {
            let state: Option<String> = record_db(&db).ok().and_then(|d| {
                d.query_row(
                    "SELECT state FROM served_batches WHERE id = ?1",
                    [&batch],
                    |r| r.get(0),
                )
                .ok()
            });
            // A deferred batch's remote side: costs and remote states (none for a sync one).
            let deferred = crate::batch::deferred::figures(&db, &batch).ok().flatten();
            state.map(|s| {
                let counts = Checkpoint::open(&db).and_then(|c| c.counts(&batch));
                (s, counts, deferred)
            })
        })
        .await;
        // The instance that has the batch answers at once; the others say they do not, later.
        let Ok(Some((state, counts, deferred))) = read else {
            self.not_held(msg, id);
            return;
        };
        let answer = match counts {
            Ok(c) => {
                let mut answer = json!({
                    "batch_id": id, "state": state, "ok": c.ok, "failed": c.failed,
                    "done": c.ok + c.failed, "tokens": c.tokens, "cost_usd": c.cost_usd,
                    "by_deployment": c.by_deployment,
                });
                if let (Some(d), Some(fields)) = (deferred, answer.as_object_mut())
                    && let Value::Object(more) = d.to_json(c.cost_usd)
                {
                    fields.extend(more);
                }
                answer
            }
            Err(e) => json!({"batch_id": id, "state": state, "error": e.to_string()}),
        };
        self.reply(&msg, &answer).await;
    }

    async fn cancel(self: &Arc<Self>, msg: Message) {
        let Some(id) = self.id_of(&msg.subject).map(str::to_string) else {
            return;
        };
        let token = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(&id).map(|r| r.cancel.clone()));
        // The instance running it answers at once; the others say they do not, later.
        match token {
            Some(token) => {
                token.cancel();
                self.reply(&msg, &json!({"batch_id": id, "cancelled": true}))
                    .await;
            }
            None => self.not_held(msg, id),
        }
    }

    /// Answers `not_found` for a batch this instance does not hold, after `NOT_HELD_DELAY`: every
    /// instance hears `llm.batch.<id>.status` and `.cancel`, and a requester takes the first
    /// answer, so the holder's (sent at once) wins and a batch no instance holds still gets an
    /// answer. At most `NOT_HELD_WAITING` such answers wait at once; beyond, they go at once.
    fn not_held(self: &Arc<Self>, msg: Message, id: String) {
        let answer = json!({"error": {
            "kind": "not_found",
            "message": format!("no instance holds batch {}", headers::shorten(&id)),
        }});
        let this = self.clone();
        let waiting = self.not_held.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            if let Some(_place) = waiting {
                tokio::time::sleep(NOT_HELD_DELAY).await;
            }
            this.reply_as(&msg, &answer, Some("not_found")).await;
        });
    }

    async fn reply(&self, msg: &Message, body: &Value) {
        self.reply_as(msg, body, None).await;
    }

    /// Answers `msg`; an error answer carries `Llm-Error: <kind>` like every error reply.
    async fn reply_as(&self, msg: &Message, body: &Value, error: Option<&str>) {
        let Some(reply) = &msg.reply else {
            return;
        };
        let sent = match error {
            Some(kind) => {
                let mut h = HeaderMap::new();
                h.insert(headers::ERROR, kind);
                self.client
                    .publish_with_headers(reply.clone(), h, body.to_string().into())
                    .await
            }
            None => {
                self.client
                    .publish(reply.clone(), body.to_string().into())
                    .await
            }
        };
        if let Err(e) = sent {
            warn!(error = %e, "could not answer a batch request");
        }
    }
}

fn record_db(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS served_batches (
             id TEXT PRIMARY KEY, dir TEXT NOT NULL, state TEXT NOT NULL);",
    )?;
    Ok(db)
}
