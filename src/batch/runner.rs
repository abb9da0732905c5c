//! `switchyard batch run`: a job over an input file, in-process, through the same engine and
//! deployments as live traffic. Every finished item is checkpointed in SQLite; run again with the
//! same arguments after any crash (even `kill -9`), it skips what finished and does the rest. The
//! output file is written at the end from the checkpoints, one line per input item, in input
//! order.
//!
//! Before any call, the whole input is read once: every record must have the fields the prompt
//! template uses (a missing one stops the run with its line and field), and the total is known for
//! the progress bar. Malformed lines are not fatal: they end `failed` with their reason.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::checkpoint::{BatchState, Checkpoint, Counts, ItemResult, Status, Via, output_line};
use super::deferred::{self, Carry, completion_text};
use super::input::Input;
use super::job::{Job, Kind, Mode};
use super::retry::{failed, room};
use crate::config::Config;
use crate::engine::Engine;
use crate::protocol::{ChatRequest, ErrorKind, RequestOptions};

pub struct RunArgs {
    pub job: PathBuf,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// The checkpoint database.
    pub db: PathBuf,
    /// Start over even if the job or input changed under the same batch.
    pub restart: bool,
}

/// What a run did, for the summary.
#[derive(Debug, Default)]
pub struct Summary {
    /// Stopped by `Hooks::cancel` before every item was done.
    pub cancelled: bool,
    pub batch_id: String,
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    /// Items done by an earlier run of the same batch.
    pub resumed: u64,
    pub fallbacks: u64,
    pub tokens: u64,
    pub cost_usd: f64,
    pub by_deployment: BTreeMap<String, u64>,
    /// (id, why) of the first failed items, for the summary.
    pub failures: Vec<(String, String)>,
    pub output: PathBuf,
    pub wall: Duration,
    /// A deferred job's remote side: batch costs and the state of each remote batch.
    pub deferred: Option<deferred::Figures>,
}

/// Counters the workers update and the progress display reads.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
    fallbacks: AtomicU64,
    /// Cost in 1e-10 USD.
    cost: AtomicU64,
}

/// What a caller can plug into a run: a channel that gets every item as it is checkpointed, a
/// token that stops new calls, a sink for progress counts, and the batch's id when the caller
/// names it.
#[derive(Default)]
pub struct Hooks {
    /// Each item's output line (docs/contract.md §5, JSON), as it is checkpointed.
    pub items: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    pub cancel: tokio_util::sync::CancellationToken,
    /// (done, total, failed), sent every second.
    pub progress: Option<tokio::sync::mpsc::Sender<(u64, u64, u64)>>,
    /// The checkpoint's batch id (`serve` names batches by content); by default it is made from
    /// the job name and the input path, so the same command run again resumes.
    pub batch_id: Option<String>,
}

/// Records read ahead of the workers by the reading thread.
const READ_AHEAD: usize = 256;

/// `switchyard batch run`: its own engine on `config`, stopped at the end.
pub async fn run(config: &Config, args: RunArgs) -> anyhow::Result<Summary> {
    let engine = Arc::new(Engine::start(config, "batch").await?);
    let summary = run_on(engine.clone(), args, Hooks::default()).await;
    engine.stop().await;
    summary
}

/// Runs blocking work (files, SQLite) off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("batch I/O task failed: {e}"))?
}

/// Pass 1 of a run: every record of `input` must have the fields the prompt uses. Returns how
/// many records there are, or names the first records that do not fit (line and field, never
/// the record's text).
pub fn check_input(job: &Job, input: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut problems = Vec::new();
    for record in Input::open(input)? {
        let record = record?;
        total += 1;
        if let Ok(fields) = &record.fields
            && let Err(e) = job.check_record(record.line, fields)
        {
            problems.push(e.to_string());
        }
    }
    if !problems.is_empty() {
        let shown = problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!(
            "{}: {} record(s) do not fit the prompt template; no call was made:\n{shown}",
            input.display(),
            problems.len()
        );
    }
    Ok(total)
}

/// A run through an engine that also serves other traffic (`serve`). Cancelled through
/// `hooks.cancel`, it stops taking items at once; items in flight finish and are checkpointed, so
/// the batch resumes where it stopped. Files and the checkpoint are read and written on blocking
/// threads, never on the async workers that serve live requests.
pub async fn run_on(engine: Arc<Engine>, args: RunArgs, hooks: Hooks) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let job_path = args.job.clone();
    let job = Arc::new(blocking(move || Ok(Job::load(&job_path)?)).await?);
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.input));

    // Pass 1: check every record before any call, and count them.
    let total = {
        let (job, input) = (job.clone(), args.input.clone());
        blocking(move || check_input(&job, &input)).await?
    };

    let (checkpoint, batch_id, resume, writer) = {
        let (job, input, db, restart) = (
            job.clone(),
            args.input.clone(),
            args.db.clone(),
            args.restart,
        );
        let named = hooks.batch_id.clone();
        blocking(move || {
            let checkpoint = Checkpoint::open(&db)?;
            let batch_id = named.unwrap_or_else(|| Checkpoint::batch_id_for(&job.name, &input));
            let resume = checkpoint.begin(
                &batch_id,
                &job.name,
                &job.hash(),
                &input,
                &Input::hash(&input)?,
                restart,
            )?;
            checkpoint.set_total(&batch_id, total)?;
            let writer = checkpoint.writer(&batch_id)?;
            Ok((Arc::new(checkpoint), batch_id, resume, writer))
        })
        .await?
    };
    let resumed = resume.done.len() as u64;
    let writer = Arc::new(writer);

    let progress = Arc::new(Progress::default());
    progress.done.store(resumed, Relaxed);
    // Over NATS, progress goes out every second from the start: through a deferred phase too,
    // whose remote states `serve` adds to it. A terminal's bar starts with the sync loop (the
    // deferred phase writes its own lines).
    let reporting = hooks
        .progress
        .clone()
        .map(|tx| report_progress(progress.clone(), total, tx));

    // A deferred job first sends what it can to a batch API; the sync loop below does the rest.
    let mut resume = resume;
    let mut carries = std::collections::HashMap::new();
    let mut deferred_cancelled = false;
    if let Mode::Deferred(settings) = &job.mode {
        let handover = deferred::run(deferred::Args {
            engine: &engine,
            job: &job,
            settings,
            db: checkpoint.path(),
            batch_id: &batch_id,
            input: &args.input,
            fresh: resume.fresh,
            done: &resume.done,
            cancel: &hooks.cancel,
            tell: hooks.progress.is_none(),
        })
        .await?;
        resume.done.extend(handover.skip);
        carries = handover.carries;
        deferred_cancelled = handover.cancelled;
    }
    let carries = Arc::new(std::sync::Mutex::new(carries));

    let display =
        reporting.unwrap_or_else(|| show_progress(progress.clone(), total, job.name.clone()));

    // Pass 2: a thread reads the records not done yet; the workers take them from a channel.
    let (records_tx, mut records) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = {
        let input = args.input.clone();
        tokio::task::spawn_blocking(move || {
            let opened = match Input::open(&input) {
                Ok(i) => i,
                Err(e) => {
                    let _ = records_tx.blocking_send(Err(e));
                    return;
                }
            };
            for record in opened {
                if record.as_ref().is_ok_and(|r| resume.done.contains(&r.line)) {
                    continue;
                }
                // The run stopped taking records (cancelled or failed): stop reading.
                if records_tx.blocking_send(record).is_err() {
                    return;
                }
            }
        })
    };

    let limit = Arc::new(Semaphore::new(job.concurrency));
    // An embed job's items per call: what the route's deployments take in one call.
    let embed_chunk = engine.router().embed_max_inputs(&job.task).max(1);
    // An embed job's vectors all come from one space, or the output could not be searched: the
    // first call that is served fixes it (a resumed run takes the one its finished items have).
    let space: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    if job.kind == Kind::Embed && resumed > 0 {
        let (checkpoint, batch_id) = (checkpoint.clone(), batch_id.clone());
        let counts = blocking(move || Ok(checkpoint.counts(&batch_id)?)).await?;
        let known = counts.by_deployment.keys().find_map(|name| {
            let slot = engine.slots().iter().find(|s| *s.name == **name)?;
            crate::routing::embed::space_of(slot.config(), None)
        });
        if let Some(known) = known {
            let _ = space.set(known);
        }
    }
    let mut workers = tokio::task::JoinSet::new();
    let mut cancelled = deferred_cancelled;
    let mut read_error = None;
    loop {
        if cancelled || hooks.cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        let record = tokio::select! {
            r = records.recv() => r,
            _ = hooks.cancel.cancelled() => {
                cancelled = true;
                break;
            }
        };
        let record = match record {
            None => break,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                read_error = Some(e);
                break;
            }
        };
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p?,
            _ = hooks.cancel.cancelled() => {
                cancelled = true;
                break;
            }
        };
        let (job, engine, writer, progress) = (
            job.clone(),
            engine.clone(),
            writer.clone(),
            progress.clone(),
        );
        let items = hooks.items.clone();
        let cancel = hooks.cancel.clone();
        if job.kind == Kind::Embed {
            // A provider call's worth of items: one call embeds them. The reader is far ahead of
            // the provider, so waiting for it fills the call; only the input's end (or a
            // cancel) sends a smaller one.
            let mut chunk = vec![record];
            while chunk.len() < embed_chunk {
                let next = tokio::select! {
                    r = records.recv() => r,
                    _ = hooks.cancel.cancelled() => break,
                };
                match next {
                    Some(Ok(r)) => chunk.push(r),
                    Some(Err(e)) => {
                        read_error = Some(e);
                        break;
                    }
                    None => break,
                }
            }
            if hooks.cancel.is_cancelled() {
                // Not sent, so not recorded: a resumed run embeds these.
                cancelled = true;
                break;
            }
            let space_fixed = space.get().is_some();
            let space = space.clone();
            workers.spawn(async move {
                let Some(results) =
                    super::embed::items(&job, &engine, chunk, &space, &cancel).await
                else {
                    drop(permit);
                    return Ok(Ok(()));
                };
                let saved = keep(results, &job, &progress, items.as_ref(), writer).await;
                drop(permit);
                saved
            });
            if read_error.is_some() {
                break;
            }
            if !space_fixed {
                // Until a call fixes the space, calls go one at a time.
                while let Some(done) = workers.join_next().await {
                    done???;
                }
            }
            while let Some(done) = workers.try_join_next() {
                done???;
            }
            continue;
        }
        let carry = carries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&record.line);
        workers.spawn(async move {
            let (result, fell_back) = match &record.fields {
                Ok(fields) => {
                    let item = Item {
                        line: record.line,
                        id: &record.id,
                        fields,
                        carry,
                    };
                    match run_item(&job, &engine, item, &cancel).await {
                        Some(done) => done,
                        // Cancelled while waiting for room: not finished, so not recorded; a
                        // resumed run does it.
                        None => {
                            drop(permit);
                            return Ok(Ok(()));
                        }
                    }
                }
                Err(why) => (failed(record.line, &record.id, why.clone()), false),
            };
            let saved = keep(
                vec![(result, fell_back)],
                &job,
                &progress,
                items.as_ref(),
                writer,
            )
            .await;
            drop(permit);
            saved
        });
        // Reap finished workers as we go, so the set does not grow with the file.
        while let Some(done) = workers.try_join_next() {
            done???;
        }
    }
    // The reading thread ends once it sees the channel closed.
    drop(records);
    while let Some(done) = workers.join_next().await {
        done???;
    }
    let _ = reader.await;
    display.abort();
    let writer =
        Arc::try_unwrap(writer).map_err(|_| anyhow::anyhow!("checkpoint writer still in use"))?;
    blocking(move || Ok(writer.close()?)).await?;
    if let Some(e) = read_error {
        return Err(e.into());
    }

    let (counts, failures, output) = {
        let batch_id = batch_id.clone();
        let kind = job.kind;
        blocking(move || {
            let (counts, failures) = finish(&checkpoint, &batch_id, &output, cancelled, kind)?;
            Ok((counts, failures, output))
        })
        .await?
    };
    let figures = match &job.mode {
        Mode::Deferred(_) => {
            let (db, id) = (args.db.clone(), batch_id.clone());
            blocking(move || deferred::figures(&db, &id)).await?
        }
        Mode::Sync => None,
    };
    Ok(Summary {
        cancelled,
        batch_id,
        total,
        ok: counts.ok,
        failed: counts.failed,
        resumed,
        fallbacks: progress.fallbacks.load(Relaxed),
        tokens: counts.tokens,
        cost_usd: counts.cost_usd,
        by_deployment: counts.by_deployment,
        failures,
        output,
        wall: started.elapsed(),
        deferred: figures,
    })
}

/// The end of a run, on a blocking thread: the output file (when every item is done), the
/// batch's state, its counts and its first failures.
fn finish(
    checkpoint: &Checkpoint,
    batch_id: &str,
    output: &Path,
    cancelled: bool,
    kind: Kind,
) -> anyhow::Result<(Counts, Vec<(String, String)>)> {
    if cancelled {
        checkpoint.set_state(batch_id, BatchState::Cancelled)?;
    } else {
        write_output(checkpoint, batch_id, output, kind)?;
        checkpoint.set_state(batch_id, BatchState::Done)?;
    }
    let counts = checkpoint.counts(batch_id)?;
    let mut failures = Vec::new();
    if counts.failed > 0 {
        for row in checkpoint.items_in_order(batch_id)? {
            let row = row?;
            if row.status == Status::Failed {
                failures.push((row.item_id, row.error.unwrap_or_default()));
                if failures.len() == 10 {
                    break;
                }
            }
        }
    }
    Ok((counts, failures))
}

/// The end of finished items: counted, their lines sent to `items`, and checkpointed (in one
/// blocking call) before the worker gives back its place.
async fn keep(
    results: Vec<(ItemResult, bool)>,
    job: &Job,
    progress: &Progress,
    items: Option<&tokio::sync::mpsc::Sender<Vec<u8>>>,
    writer: Arc<super::checkpoint::Writer>,
) -> Result<Result<(), super::checkpoint::CheckpointError>, tokio::task::JoinError> {
    for (result, fell_back) in &results {
        progress.done.fetch_add(1, Relaxed);
        progress.fallbacks.fetch_add(u64::from(*fell_back), Relaxed);
        if result.status != Status::Ok {
            progress.failed.fetch_add(1, Relaxed);
        }
        progress
            .cost
            .fetch_add((result.cost_usd * 1e10) as u64, Relaxed);
        // Bounded: a slow publisher slows the batch (the worker holds its concurrency
        // permit meanwhile) instead of queueing results in memory.
        if let Some(tx) = items {
            let _ = tx.send(output_line(result, job.kind)).await;
        }
    }
    // The checkpoint is the items' end: written before the worker's place is taken again.
    tokio::task::spawn_blocking(move || {
        results
            .into_iter()
            .try_for_each(|(result, _)| writer.record(result))
    })
    .await
}

/// One input record for the sync walk, with what a batch answer already used up.
struct Item<'a> {
    line: u64,
    id: &'a str,
    fields: &'a serde_json::Map<String, Value>,
    carry: Option<Carry>,
}

/// One item: a call, its output checked against the job's rule; an output that fails is retried
/// on another candidate, up to `max_attempts` provider calls in all (a batch answer counts as
/// one). Also says whether any call fell back.
async fn run_item(
    job: &Job,
    engine: &Engine,
    item: Item<'_>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<(ItemResult, bool)> {
    let Item {
        line,
        id,
        fields,
        carry,
    } = item;
    let body = match job.request_body(fields) {
        Ok(b) => b,
        Err(e) => return Some((failed(line, id, e.to_string()), false)),
    };
    if let Some(why) = never_admitted(job, engine, &body) {
        return Some((failed(line, id, why), false));
    }
    let mut fell_back = false;
    let mut options = RequestOptions {
        request_id: Some(format!("{}-{line}", job.name)),
        batch: true,
        ..RequestOptions::default()
    };
    let (mut calls, mut tokens, mut cost) = (0u32, 0u64, 0.0);
    let mut last_error = String::from("no attempt made");
    let mut raw = None;
    let mut deployment = None;
    let mut via = Via::Sync;
    if let Some(c) = carry {
        (calls, tokens, cost) = (c.attempts, c.tokens, c.cost_usd);
        last_error = c.error;
        raw = c.raw;
        if c.attempts > 0 {
            via = Via::Batch;
        }
        if let Some(d) = c.exclude {
            deployment = Some(d.clone());
            options.exclude.push(d);
        }
    }
    while calls < job.max_attempts {
        let outcome = engine.chat(&job.task, options.clone(), &body, None).await;
        via = Via::Sync;
        match outcome.result {
            Ok(served) => {
                fell_back |= served.fallback || calls > 0;
                calls += served.attempts;
                tokens += served.reply.usage.total_tokens;
                cost += served.reply.cost_usd;
                let text = completion_text(&served.reply.body);
                deployment = Some(served.deployment.to_string());
                match job.check_output(&text) {
                    Ok(output) => {
                        let item = ItemResult {
                            line,
                            item_id: id.to_string(),
                            status: Status::Ok,
                            output: Some(output),
                            raw: Some(text),
                            deployment,
                            attempts: calls,
                            tokens,
                            cost_usd: cost,
                            error: None,
                            via,
                        };
                        return Some((item, fell_back));
                    }
                    Err(reason) => {
                        last_error = format!("output from {}: {reason}", served.deployment);
                        options.exclude.push(served.deployment.to_string());
                        raw = Some(text);
                    }
                }
            }
            Err(f) => {
                let made = f.attempts.iter().filter(|a| a.latency_ms > 0).count() as u32;
                last_error = format!("{}: {}", f.kind.as_str(), f.message);
                match f.kind {
                    // Retrying cannot help these.
                    ErrorKind::InvalidRequest | ErrorKind::Auth | ErrorKind::BudgetExceeded => {
                        calls += made.max(1);
                        break;
                    }
                    // Every deployment is at the batch share of its limits (or cooling down):
                    // wait for room without spending an attempt, as no call was made.
                    ErrorKind::RateLimited if made == 0 => room(cancel).await?,
                    _ => {
                        calls += made.max(1);
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(calls))).await;
                    }
                }
            }
        }
    }
    let item = ItemResult {
        line,
        item_id: id.to_string(),
        status: Status::Failed,
        output: None,
        raw,
        deployment,
        attempts: calls,
        tokens,
        cost_usd: cost,
        error: Some(last_error),
        via,
    };
    Some((item, fell_back))
}

/// Why no candidate could ever admit this item, if none could: its token estimate is above
/// every candidate's batch share of `tpm`, so waiting for room would wait forever.
fn never_admitted(job: &Job, engine: &Engine, body: &[u8]) -> Option<String> {
    // A body the engine refuses is answered by the engine, with its own reason.
    let req = ChatRequest::parse(body).ok()?;
    let ceiling = engine.router().batch_token_ceiling(&job.task, &req)?;
    let needs = req.estimated_total_tokens();
    (needs > ceiling).then(|| {
        format!(
            "needs ~{needs} tokens, above what every candidate's tpm allows a batch ({ceiling})"
        )
    })
}

fn default_output(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "batch".into());
    input.with_file_name(format!("{stem}.out.jsonl"))
}

/// The output file from the checkpoints, written aside and renamed so a reader never sees half.
fn write_output(
    checkpoint: &Checkpoint,
    batch_id: &str,
    path: &Path,
    kind: Kind,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("jsonl.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for row in checkpoint.items_in_order(batch_id)? {
        out.write_all(&output_line(&row?, kind))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// (done, total, failed) to a channel every second, for `llm.batch.<id>.progress`.
fn report_progress(
    p: Arc<Progress>,
    total: u64,
    tx: tokio::sync::mpsc::Sender<(u64, u64, u64)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = (p.done.load(Relaxed), total, p.failed.load(Relaxed));
            // A report the publisher has not taken yet is stale anyway: this one replaces it.
            match tx.try_send(now) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    })
}

/// A progress bar on a terminal; a plain line every two seconds otherwise.
fn show_progress(p: Arc<Progress>, total: u64, name: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let cost = |p: &Progress| p.cost.load(Relaxed) as f64 / 1e10;
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name);
            loop {
                bar.set_position(p.done.load(Relaxed));
                bar.set_message(format!(
                    "failed {} · ${:.6}",
                    p.failed.load(Relaxed),
                    cost(&p)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let done = p.done.load(Relaxed);
                eprintln!(
                    "{name}: {done}/{total} done, {} failed, ${:.6}, {:.0} items/s",
                    p.failed.load(Relaxed),
                    cost(&p),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    })
}

impl Summary {
    pub fn print(&self) {
        println!(
            "\nbatch {}: {} items, {} ok, {} failed ({} done by an earlier run) in {:.1}s",
            self.batch_id,
            self.total,
            self.ok,
            self.failed,
            self.resumed,
            self.wall.as_secs_f64()
        );
        println!(
            "{} served after a fallback or an output retry, tokens {}, cost ${:.6}, output {}",
            self.fallbacks,
            self.tokens,
            self.cost_usd,
            self.output.display()
        );
        if let Some(d) = &self.deferred {
            let saved = d.sync_equivalent(self.cost_usd) - self.cost_usd;
            println!(
                "sync-equivalent cost ${:.6} (saved ${saved:.6}); batch calls ${:.6} instead of ${:.6}",
                d.sync_equivalent(self.cost_usd),
                d.batch_cost_usd,
                d.batch_full_cost_usd
            );
            println!(
                "\n{:<6} {:<20} {:<32} {:<10} {:<12} {:>12}",
                "PART", "DEPLOYMENT", "REMOTE BATCH", "STATE", "STATUS", "DONE"
            );
            for p in &d.parts {
                println!(
                    "{:<6} {:<20} {:<32} {:<10} {:<12} {:>12}",
                    p.part,
                    p.deployment,
                    p.remote_id.as_deref().unwrap_or("-"),
                    p.state,
                    p.status.as_deref().unwrap_or("-"),
                    format!("{}/{}", p.done, p.total)
                );
                if let Some(note) = &p.note {
                    println!("       {note}");
                }
            }
        }
        println!("\n{:<24} {:>8}", "DEPLOYMENT", "ITEMS");
        for (d, n) in &self.by_deployment {
            println!("{d:<24} {n:>8}");
        }
        if !self.failures.is_empty() {
            println!(
                "\nfailed items (first {}; every one is in the output with its error):",
                self.failures.len()
            );
            for (id, why) in &self.failures {
                println!("  {id}: {why}");
            }
        }
    }
}
