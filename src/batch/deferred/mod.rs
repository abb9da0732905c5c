//! Deferred batches (docs/contract.md §11): a job with `mode = "deferred"` sends its items to one
//! deployment's batch API (OpenAI Batch, Anthropic Message Batches) at the batch discount, and
//! hands what did not come back right to the sync walk. This is the first phase of such a run;
//! `runner.rs` does the rest exactly as for a sync job, with what this phase carries over.
//!
//! 1. The deadline counts from the batch's first run (`store.rs` keeps it). If it leaves no more
//!    than `sync_reserve`, nothing is sent remotely: the job runs sync, with a warning.
//! 2. The deployment is the first on the job's route, in walk order, with `batch_api = true` and a
//!    circuit that is not open; a job with none is refused. A resumed run keeps the one its
//!    parts went to.
//! 3. Items not yet finished nor sent are built into entries (the sync request bodies, through
//!    the deployment's wire format) and cut into parts (`plan.rs`), written as intents, then
//!    created one after another (`remote.rs`); parts left as intents by a crash are found again
//!    (OpenAI, by metadata) or created again.
//! 4. Parts are polled until they end; each ended part's results are turned into item outcomes
//!    (`answers.rs`) and applied once, in one transaction. At `deadline − sync_reserve` the
//!    parts still running are cancelled; what they answered is kept.
//!
//! The remote calls run in this task, never in an actor: the deployment actors do not see batch
//! calls, which count against no `rpm`/`tpm` (providers keep a separate pool for them).

mod answers;
mod plan;
mod remote;
mod store;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::input::Input;
use super::job::{Deferred, Job};
use crate::engine::Engine;
use crate::protocol::{ChatRequest, CircuitState};
use crate::providers::Adapter;
use crate::providers::batch::BatchClient;
use store::{Part, PartState, Planned, Store};

pub use answers::completion_text;
pub use store::Carry;

/// What the deferred phase leaves to the sync part of the run.
#[derive(Debug, Default)]
pub struct Handover {
    /// Lines the sync walk must not take: answered by a batch, or held by a remote batch that may
    /// still answer (only when the run was cancelled).
    pub skip: HashSet<u64>,
    /// Lines whose batch answer did not pass (or never came), with what it used up.
    pub carries: HashMap<u64, Carry>,
    /// Stopped by the run's cancel token: the parts stay as they are, for the next run.
    pub cancelled: bool,
}

/// What one run of the deferred phase needs.
pub struct Args<'a> {
    pub engine: &'a Arc<Engine>,
    pub job: &'a Job,
    pub settings: &'a Deferred,
    pub db: &'a Path,
    pub batch_id: &'a str,
    pub input: &'a Path,
    /// The checkpoint started this batch afresh: earlier parts are forgotten.
    pub fresh: bool,
    /// Lines finished before this run.
    pub done: &'a HashSet<u64>,
    pub cancel: &'a CancellationToken,
    /// Say remote states on stderr (a terminal run), besides the log.
    pub tell: bool,
}

/// Runs blocking work (files, SQLite) off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("deferred batch I/O task failed: {e}"))?
}

/// The checkpoint's store, opened on a blocking thread for one piece of work.
async fn with_store<T: Send + 'static>(
    db: &Path,
    batch_id: &str,
    f: impl FnOnce(&mut Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (db, batch_id) = (db.to_path_buf(), batch_id.to_string());
    blocking(move || f(&mut Store::open(&db, &batch_id)?)).await
}

/// Milliseconds since the epoch: a deadline of seconds must not lose one to rounding.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The deferred phase of a run; see the module's doc.
pub async fn run(a: Args<'_>) -> anyhow::Result<Handover> {
    let (fresh, now) = (a.fresh, unix_now());
    if fresh {
        cancel_earlier(a.engine, a.db, a.batch_id).await?;
    }
    let (started, parts, planned) = with_store(a.db, a.batch_id, move |s| {
        if fresh {
            s.clear()?;
        }
        Ok((s.started_at(now)?, s.parts()?, s.planned_lines()?))
    })
    .await?;
    let started = UNIX_EPOCH + Duration::from_millis(started.max(0) as u64);
    let deadline = started + a.settings.deadline;
    let cutoff = deadline
        .checked_sub(a.settings.sync_reserve)
        .unwrap_or(started);
    let open: Vec<Part> = parts
        .iter()
        .filter(|p| !p.state.finished())
        .cloned()
        .collect();
    let late = SystemTime::now() >= cutoff;
    if late && open.is_empty() {
        if parts.is_empty() {
            tracing::warn!(
                job = %a.job.name,
                "the deadline leaves no more than sync_reserve: running the job sync"
            );
            if a.tell {
                eprintln!(
                    "{}: the deadline leaves no more than sync_reserve ({}): running sync",
                    a.job.name,
                    humantime::format_duration(a.settings.sync_reserve)
                );
            }
        }
        return handover(a.db, a.batch_id, false).await;
    }

    let adapter = match open.first() {
        Some(p) => deployment_named(a.engine, &p.deployment)?,
        None => {
            let sample = first_request(a.job, a.input, a.done, &planned).await?;
            let Some(sample) = sample else {
                return handover(a.db, a.batch_id, false).await;
            };
            choose(a.engine, a.job, &sample)?
        }
    };
    let Some(client) = adapter.batch() else {
        anyhow::bail!(
            "deployment `{}` holds this batch's remote parts but no longer has batch_api = true",
            adapter.config.name
        );
    };

    let mut fresh_entries = HashMap::new();
    if !late {
        let plan = plan_new(&a, &adapter, client, &parts, &planned).await?;
        fresh_entries = plan;
    }
    let remote = remote::Remote {
        job: a.job,
        adapter: &adapter,
        client,
        db: a.db,
        batch_id: a.batch_id,
        input: a.input,
        settings: a.settings,
        cutoff,
        cancel: a.cancel,
        tell: a.tell,
    };
    let cancelled = remote.run(fresh_entries).await?;
    handover(a.db, a.batch_id, cancelled).await
}

/// What the store says the sync walk gets.
async fn handover(db: &Path, batch_id: &str, cancelled: bool) -> anyhow::Result<Handover> {
    with_store(db, batch_id, move |s| {
        let mut skip = s.lines_with("outcome = 'ok'")?;
        if cancelled {
            skip.extend(s.lines_with("outcome IS NULL")?);
        }
        Ok(Handover {
            skip,
            carries: s.carries()?,
            cancelled,
        })
    })
    .await
}

/// A batch started over (`--restart`) first cancels the remote batches of its earlier run that
/// may still answer, before their parts are forgotten: what they answered would never be applied,
/// and their items are about to be sent again — paying twice for what would still come. Best
/// effort: a cancel that fails is logged (the provider bills what it already answered).
async fn cancel_earlier(engine: &Engine, db: &Path, batch_id: &str) -> anyhow::Result<()> {
    let earlier = with_store(db, batch_id, |s| Ok(s.parts()?)).await?;
    for p in earlier.iter().filter(|p| !p.state.finished()) {
        let Some(id) = &p.remote_id else { continue };
        let Ok(adapter) = deployment_named(engine, &p.deployment) else {
            tracing::warn!(remote_id = %id, deployment = %p.deployment, "restart: cannot cancel the earlier run's remote batch: its deployment is gone");
            continue;
        };
        let Some(client) = adapter.batch() else {
            continue;
        };
        match client.cancel(id).await {
            Ok(_) => {
                tracing::info!(remote_id = %id, "restart: the earlier run's remote batch is cancelled")
            }
            Err(e) => {
                tracing::warn!(remote_id = %id, error = %e, "restart: could not cancel the earlier run's remote batch")
            }
        }
    }
    Ok(())
}

fn deployment_named(engine: &Engine, name: &str) -> anyhow::Result<Arc<Adapter>> {
    engine
        .slots()
        .iter()
        .find(|s| *s.name == *name)
        .map(|s| s.args.adapter.clone())
        .with_context(|| {
            format!(
                "deployment `{name}` holds this batch's remote parts but is no longer in the config"
            )
        })
}

/// The first deployment on the job's route, in walk order, with a batch API and a circuit that
/// is not open.
fn choose(engine: &Engine, job: &Job, sample: &ChatRequest) -> anyhow::Result<Arc<Adapter>> {
    let slots = engine.slots();
    let order = engine.router().walk_order(&job.task, sample);
    let chosen = order
        .iter()
        .filter_map(|&i| slots.get(i))
        .find(|s| s.args.adapter.batch().is_some() && s.published.circuit() != CircuitState::Open);
    match chosen {
        Some(s) => Ok(s.args.adapter.clone()),
        None => {
            let names: Vec<&str> = order
                .iter()
                .filter_map(|&i| slots.get(i))
                .map(|s| &*s.name)
                .collect();
            anyhow::bail!(
                "{}: mode = \"deferred\", but no deployment on the route of task `{}` ({}) has \
                 batch_api = true and a circuit that is not open; nothing was sent",
                job.source,
                job.task,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// The request of the first item still to do, to find the route by.
async fn first_request(
    job: &Job,
    input: &Path,
    done: &HashSet<u64>,
    planned: &HashSet<u64>,
) -> anyhow::Result<Option<ChatRequest>> {
    let (job, input) = (job.clone(), input.to_path_buf());
    let skip: HashSet<u64> = done.union(planned).copied().collect();
    blocking(move || {
        for record in Input::open(&input)? {
            let record = record?;
            if skip.contains(&record.line) {
                continue;
            }
            let Ok(fields) = &record.fields else { continue };
            let Ok(body) = job.request_body(fields) else {
                continue;
            };
            if let Ok(req) = ChatRequest::parse(&body) {
                return Ok(Some(req));
            }
        }
        Ok(None)
    })
    .await
}

/// The entries of the items `want` picks, built as their sync requests would be: each item with
/// its `custom_id` (`l<line>`, the same on every run). Items that cannot be sent this way
/// (unreadable, untranslatable) are left out: the sync walk says why they fail.
fn build_entries(
    job: &Job,
    input: &Path,
    client: &BatchClient,
    want: impl Fn(u64) -> bool,
) -> anyhow::Result<Vec<(Planned, Vec<u8>)>> {
    let mut out = Vec::new();
    for record in Input::open(input)? {
        let record = record?;
        if !want(record.line) {
            continue;
        }
        let Ok(fields) = &record.fields else { continue };
        let Ok(body) = job.request_body(fields) else {
            continue;
        };
        let Ok(req) = ChatRequest::parse(&body) else {
            continue;
        };
        let custom_id = format!("l{}", record.line);
        match client.entry(&custom_id, &req) {
            Ok(entry) => out.push((
                Planned {
                    line: record.line,
                    item_id: record.id.clone(),
                    custom_id,
                },
                entry,
            )),
            Err(f) => {
                tracing::debug!(line = record.line, why = %f.describe(), "item left to the sync walk")
            }
        }
    }
    Ok(out)
}

/// Plans the items not done and not in a part yet into new parts, written as intents: their
/// entries, by part.
async fn plan_new(
    a: &Args<'_>,
    adapter: &Arc<Adapter>,
    client: &BatchClient,
    parts: &[Part],
    planned: &HashSet<u64>,
) -> anyhow::Result<HashMap<u32, Vec<Vec<u8>>>> {
    let (max_requests, max_bytes) = client.limits();
    let max_items = a
        .settings
        .max_batch_items
        .map_or(max_requests, |n| n.min(max_requests));
    let skip: HashSet<u64> = a.done.union(planned).copied().collect();
    let (job, input, owner) = (a.job.clone(), a.input.to_path_buf(), adapter.clone());
    let entries = blocking(move || {
        let client = owner.batch().context("the deployment lost its batch API")?;
        build_entries(&job, &input, client, |line| !skip.contains(&line))
    })
    .await?;
    let (cut, too_large) = plan::split(entries, max_items, max_bytes);
    for p in &too_large {
        tracing::warn!(
            line = p.line,
            "item larger than a remote batch may be: sent sync"
        );
    }
    let first = parts.iter().map(|p| p.part + 1).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(cut.len());
    let mut by_part = HashMap::new();
    for (n, part) in cut.into_iter().enumerate() {
        let number = first + n as u32;
        let (items, entries): (Vec<Planned>, Vec<Vec<u8>>) = part.into_iter().unzip();
        let tag = format!(
            "{}-{number}-{}",
            a.batch_id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rows.push((
            Part {
                part: number,
                deployment: adapter.config.name.clone(),
                tag,
                file_id: None,
                remote_id: None,
                state: PartState::Planned,
                status: None,
                done: 0,
                total: items.len() as u64,
                note: None,
            },
            items,
        ));
        by_part.insert(number, entries);
    }
    if !rows.is_empty() {
        let count = rows.len();
        let items: usize = rows.iter().map(|(_, i)| i.len()).sum();
        with_store(a.db, a.batch_id, move |s| Ok(s.plan(&rows)?)).await?;
        tracing::info!(
            parts = count,
            items,
            "deferred items planned into remote batches"
        );
    }
    Ok(by_part)
}

/// The remote state of a deferred batch, for `llm.batch.<id>.status` and the summary: what the
/// batch calls cost, what the same calls would have cost sync, and each part's state. `None`
/// when the batch has no deferred side.
pub fn figures(db: &Path, batch_id: &str) -> anyhow::Result<Option<Figures>> {
    let s = Store::open(db, batch_id)?;
    let parts = s.parts()?;
    if parts.is_empty() {
        return Ok(None);
    }
    let (batch_cost, batch_full) = s.batch_costs()?;
    Ok(Some(Figures {
        batch_cost_usd: batch_cost,
        batch_full_cost_usd: batch_full,
        parts: parts
            .into_iter()
            .map(|p| PartFigure {
                part: p.part,
                deployment: p.deployment,
                remote_id: p.remote_id,
                state: p.state.as_str(),
                status: p.status,
                done: p.done,
                total: p.total,
                note: p.note,
            })
            .collect(),
    }))
}

/// See [`figures`].
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// What the batch calls cost (at the discount).
    pub batch_cost_usd: f64,
    /// What the same calls would have cost at the sync price.
    pub batch_full_cost_usd: f64,
    pub parts: Vec<PartFigure>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartFigure {
    pub part: u32,
    pub deployment: String,
    pub remote_id: Option<String>,
    /// Ours: planned, submitted, applied, dropped.
    pub state: &'static str,
    /// The provider's last word.
    pub status: Option<String>,
    pub done: u64,
    pub total: u64,
    pub note: Option<String>,
}

impl Figures {
    /// The whole job's cost at the sync price: `cost_usd` (every paid call) with the batch calls
    /// at full price.
    pub fn sync_equivalent(&self, cost_usd: f64) -> f64 {
        cost_usd - self.batch_cost_usd + self.batch_full_cost_usd
    }

    pub fn to_json(&self, cost_usd: f64) -> Value {
        json!({
            "cost_usd": cost_usd,
            "sync_equivalent_cost_usd": self.sync_equivalent(cost_usd),
            "remote": self.parts.iter().map(|p| json!({
                "part": p.part, "deployment": p.deployment, "remote_id": p.remote_id,
                "state": p.state, "status": p.status, "done": p.done, "total": p.total,
                "note": p.note,
            })).collect::<Vec<_>>(),
        })
    }
}
