//! The remote side of a deferred run: creating the planned parts, polling them until they end,
//! applying each ended part's results once, and at `deadline − sync_reserve` cancelling what still
//! runs. Every call that may be refused for a while (429, 5xx, no connection, garbage) is retried
//! here, with backoff (`Retry-After` when the provider gives one), and nowhere else.
//!
//! Polls start at `poll_interval` and double, up to 5 minutes, while nothing changes; the loop
//! also wakes at the cutoff, whatever the schedule.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::store::{Part, PartState};
use super::{answers, blocking, build_entries, with_store};
use crate::batch::job::{Deferred, Job, MAX_POLL_INTERVAL};
use crate::providers::Adapter;
use crate::providers::batch::{BatchClient, BatchError, Phase, RemoteBatch};

/// After the cutoff's cancel, how long cancelled parts may take to end before their unanswered
/// items are done sync anyway (at most this, and at most half the reserve).
const CANCEL_GRACE: Duration = Duration::from_secs(600);

pub(super) struct Remote<'a> {
    pub job: &'a Job,
    pub adapter: &'a Arc<Adapter>,
    pub client: &'a BatchClient,
    pub db: &'a Path,
    pub batch_id: &'a str,
    pub input: &'a Path,
    pub settings: &'a Deferred,
    pub cutoff: SystemTime,
    pub cancel: &'a tokio_util::sync::CancellationToken,
    pub tell: bool,
}

/// Why a retried call stopped.
enum Stop {
    /// Refused: trying again would be refused again.
    Refused(u16, String),
    /// Still failing when its time ran out.
    GaveUp(String),
    Cancelled,
}

impl Remote<'_> {
    /// Until every part is applied or dropped; `true` if the run's cancel token stopped it first.
    pub async fn run(&self, mut entries: HashMap<u32, Vec<Vec<u8>>>) -> anyhow::Result<bool> {
        let parts = self.parts().await?;
        let unsent: Vec<u32> = parts
            .iter()
            .filter(|p| p.state == PartState::Planned)
            .map(|p| p.part)
            .collect();
        let missing: Vec<u32> = unsent
            .iter()
            .copied()
            .filter(|p| !entries.contains_key(p))
            .collect();
        if !missing.is_empty() {
            entries.extend(self.rebuild(&missing).await?);
        }
        for part in parts.iter().filter(|p| p.state == PartState::Planned) {
            if SystemTime::now() >= self.cutoff {
                break;
            }
            let lines = entries.remove(&part.part).unwrap_or_default();
            if self.submit(part, &lines).await? {
                return Ok(true);
            }
        }
        self.poll().await
    }

    async fn parts(&self) -> anyhow::Result<Vec<Part>> {
        with_store(self.db, self.batch_id, |s| Ok(s.parts()?)).await
    }

    /// The entries of parts planned by an earlier run (killed before their create), rebuilt
    /// from the input exactly as they were first built.
    async fn rebuild(&self, parts: &[u32]) -> anyhow::Result<HashMap<u32, Vec<Vec<u8>>>> {
        let wanted = parts.to_vec();
        let line_part: HashMap<u64, u32> = with_store(self.db, self.batch_id, move |s| {
            let mut map = HashMap::new();
            for p in wanted {
                map.extend(s.items(p)?.into_iter().map(|i| (i.line, p)));
            }
            Ok(map)
        })
        .await?;
        let (job, input) = (self.job.clone(), self.input.to_path_buf());
        let client_entries = {
            let adapter = self.adapter.clone();
            let lines = line_part.clone();
            blocking(move || {
                let client = adapter
                    .batch()
                    .ok_or_else(|| anyhow::anyhow!("the deployment lost its batch API"))?;
                build_entries(&job, &input, client, |l| lines.contains_key(&l))
            })
            .await?
        };
        let mut out: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for (planned, entry) in client_entries {
            if let Some(p) = line_part.get(&planned.line) {
                out.entry(*p).or_default().push(entry);
            }
        }
        Ok(out)
    }

    /// Creates one planned part (uploading its entries first where the API wants that), found
    /// again by its tag if an earlier run created it already. A refused part goes sync.
    /// `true` when cancelled.
    async fn submit(&self, part: &Part, entries: &[Vec<u8>]) -> anyhow::Result<bool> {
        let n = part.part;
        // Created by a run killed before it stored the id?
        if self.client.can_find() {
            match self
                .retrying("find", self.cutoff, || self.client.find(&part.tag))
                .await
            {
                Ok(Some(b)) => {
                    self.created(n, &b).await?;
                    return Ok(false);
                }
                Ok(None) => {}
                Err(Stop::Cancelled) => return Ok(true),
                Err(Stop::Refused(_, why) | Stop::GaveUp(why)) => {
                    // Not knowing, creating could buy the items twice: they go sync instead.
                    self.drop_part(n, &format!("could not look for the batch: {why}"))
                        .await?;
                    return Ok(false);
                }
            }
        }
        if entries.is_empty() {
            self.drop_part(n, "its items could no longer be built")
                .await?;
            return Ok(false);
        }
        let mut file = part.file_id.clone();
        if file.is_none() {
            match self
                .retrying("upload", self.cutoff, || self.client.upload(entries))
                .await
            {
                Ok(Some(id)) => {
                    let stored = id.clone();
                    with_store(self.db, self.batch_id, move |s| Ok(s.set_file(n, &stored)?))
                        .await?;
                    file = Some(id);
                }
                Ok(None) => {}
                Err(Stop::Cancelled) => return Ok(true),
                Err(Stop::Refused(status, why)) => {
                    self.drop_part(n, &format!("upload refused (HTTP {status}): {why}"))
                        .await?;
                    return Ok(false);
                }
                Err(Stop::GaveUp(why)) => {
                    self.drop_part(n, &format!("upload failed: {why}")).await?;
                    return Ok(false);
                }
            }
        }
        // A create that failed without an answer may still have created the batch: before
        // trying again, look for it (where the API can tell).
        let tried = std::sync::atomic::AtomicBool::new(false);
        let create = || async {
            if tried.swap(true, std::sync::atomic::Ordering::Relaxed)
                && self.client.can_find()
                && let Some(b) = self.client.find(&part.tag).await?
            {
                return Ok(b);
            }
            self.client
                .create(file.as_deref(), entries, &part.tag)
                .await
        };
        match self.retrying("create", self.cutoff, create).await {
            Ok(b) => {
                self.created(n, &b).await?;
                Ok(false)
            }
            Err(Stop::Cancelled) => Ok(true),
            Err(Stop::Refused(status, why)) => {
                self.drop_part(n, &format!("create refused (HTTP {status}): {why}"))
                    .await?;
                Ok(false)
            }
            Err(Stop::GaveUp(why)) => {
                self.drop_part(n, &format!("create failed: {why}")).await?;
                Ok(false)
            }
        }
    }

    async fn created(&self, n: u32, b: &RemoteBatch) -> anyhow::Result<()> {
        let b = b.clone();
        tracing::info!(part = n, remote = %b.id, status = %b.status, "remote batch created");
        if self.tell {
            eprintln!(
                "{}: remote batch {} ({}): {}",
                self.job.name, n, b.id, b.status
            );
        }
        with_store(self.db, self.batch_id, move |s| {
            s.set_remote(n, &b.id)?;
            Ok(s.set_status(n, &b.status, b.done, b.total)?)
        })
        .await
    }

    /// Gives a part up: its items go sync with `why`.
    async fn drop_part(&self, n: u32, why: &str) -> anyhow::Result<()> {
        tracing::warn!(part = n, %why, "remote batch dropped: its items go sync");
        if self.tell {
            eprintln!(
                "{}: remote batch {n} dropped, its items go sync: {why}",
                self.job.name
            );
        }
        let (why, note) = (format!("batch: {why}"), why.to_string());
        with_store(self.db, self.batch_id, move |s| {
            Ok(s.apply(n, Vec::new(), &why, Some(&note))?)
        })
        .await
    }

    /// Polls every submitted part until all are applied or dropped.
    async fn poll(&self) -> anyhow::Result<bool> {
        let first = self.settings.poll_interval;
        let mut interval = first;
        let mut cancelled_at: Option<SystemTime> = None;
        let grace = CANCEL_GRACE.min(self.settings.sync_reserve / 2);
        let mut last: HashMap<u32, (Option<String>, u64)> = HashMap::new();
        loop {
            let parts = self.parts().await?;
            let open: Vec<Part> = parts.into_iter().filter(|p| !p.state.finished()).collect();
            if open.is_empty() {
                return Ok(false);
            }
            let mut changed = false;
            for part in &open {
                let Some(remote) = part.remote_id.as_deref() else {
                    // A part never created (the cutoff came first): sync.
                    self.drop_part(part.part, "not created before the deadline's cutoff")
                        .await?;
                    continue;
                };
                let b = match self.client.get(remote).await {
                    Ok(b) => b,
                    Err(BatchError::Retry { message, .. }) => {
                        tracing::warn!(remote, %message, "batch poll failed: trying again later");
                        continue;
                    }
                    Err(BatchError::Refused {
                        status: 404,
                        message,
                    }) => {
                        self.drop_part(part.part, &format!("the remote batch is gone: {message}"))
                            .await?;
                        continue;
                    }
                    Err(BatchError::Refused { status, message }) => anyhow::bail!(
                        "polling remote batch {remote} at {}: HTTP {status}: {message}",
                        self.adapter.config.name
                    ),
                };
                let now = (Some(b.status.clone()), b.done);
                if last.get(&part.part) != Some(&now) {
                    changed = true;
                    last.insert(part.part, now);
                    self.seen(part.part, &b).await?;
                }
                if b.phase == Some(Phase::Ended) {
                    changed = true;
                    if self.apply(part.part, &b).await? {
                        return Ok(true);
                    }
                }
            }
            let now = SystemTime::now();
            if cancelled_at.is_none() && now >= self.cutoff {
                cancelled_at = Some(now);
                if self.cancel_open().await? {
                    return Ok(true);
                }
                interval = first;
                continue;
            }
            if let Some(at) = cancelled_at
                && now >= at + grace
            {
                for part in self.parts().await?.iter().filter(|p| !p.state.finished()) {
                    self.drop_part(part.part, "its cancel did not take effect in time")
                        .await?;
                }
                return Ok(false);
            }
            interval = if changed {
                first
            } else {
                (interval * 2).min(MAX_POLL_INTERVAL)
            };
            let wake = match cancelled_at {
                // Wake at the cutoff whatever the schedule.
                None => self
                    .cutoff
                    .duration_since(now)
                    .unwrap_or_default()
                    .min(interval),
                Some(_) => first,
            };
            tokio::select! {
                _ = tokio::time::sleep(wake) => {}
                _ = self.cancel.cancelled() => return Ok(true),
            }
        }
    }

    /// A new state of a part: stored, and told.
    async fn seen(&self, n: u32, b: &RemoteBatch) -> anyhow::Result<()> {
        tracing::info!(part = n, remote = %b.id, status = %b.status, done = b.done, total = b.total, "remote batch");
        if self.tell {
            eprintln!(
                "{}: remote batch {n} ({}): {} {}/{}",
                self.job.name, b.id, b.status, b.done, b.total
            );
        }
        let b = b.clone();
        with_store(self.db, self.batch_id, move |s| {
            Ok(s.set_status(n, &b.status, b.done, b.total)?)
        })
        .await
    }

    /// Cancels every part still running (the cutoff came). `true` when the run was cancelled.
    async fn cancel_open(&self) -> anyhow::Result<bool> {
        let until = SystemTime::now() + CANCEL_GRACE.min(self.settings.sync_reserve / 2);
        for part in self.parts().await?.iter().filter(|p| !p.state.finished()) {
            let Some(remote) = part.remote_id.as_deref() else {
                continue;
            };
            tracing::warn!(
                remote,
                "the deadline's cutoff came: cancelling the remote batch"
            );
            if self.tell {
                eprintln!(
                    "{}: deadline cutoff: cancelling remote batch {remote}",
                    self.job.name
                );
            }
            match self
                .retrying("cancel", until, || self.client.cancel(remote))
                .await
            {
                Ok(b) => self.seen(part.part, &b).await?,
                Err(Stop::Cancelled) => return Ok(true),
                // Ended meanwhile (a 4xx to a cancel of an ended batch), or unreachable: the
                // polls find out, and the grace ends it either way.
                Err(Stop::Refused(_, why) | Stop::GaveUp(why)) => {
                    tracing::warn!(remote, %why, "cancel not taken");
                }
            }
        }
        Ok(false)
    }

    /// Reads an ended part's results and applies them once. `true` when cancelled meanwhile.
    async fn apply(&self, n: u32, b: &RemoteBatch) -> anyhow::Result<bool> {
        if let Some(why) = &b.failed {
            self.drop_part(n, &format!("the remote batch {} failed: {why}", b.id))
                .await?;
            return Ok(false);
        }
        // Results are worth waiting for: they are paid for.
        let until = SystemTime::now().max(self.cutoff) + self.settings.sync_reserve / 2;
        let (answers, unreadable) = match self
            .retrying("results", until, || self.client.results(b))
            .await
        {
            Ok(r) => r,
            Err(Stop::Cancelled) => return Ok(true),
            Err(Stop::Refused(status, why)) => {
                self.drop_part(n, &format!("results refused (HTTP {status}): {why}"))
                    .await?;
                return Ok(false);
            }
            Err(Stop::GaveUp(why)) => {
                self.drop_part(n, &format!("results could not be read: {why}"))
                    .await?;
                return Ok(false);
            }
        };
        let items = with_store(self.db, self.batch_id, move |s| Ok(s.items(n)?)).await?;
        let outcomes = answers::outcomes(self.job, self.adapter, &items, answers);
        let (got, of) = (outcomes.len(), items.len());
        let missing = format!(
            "batch at {}: no result for this request",
            self.adapter.config.name
        );
        with_store(self.db, self.batch_id, move |s| {
            Ok(s.apply(n, outcomes, &missing, None)?)
        })
        .await?;
        tracing::info!(part = n, remote = %b.id, results = got, items = of, unreadable, "remote batch applied");
        if self.tell {
            eprintln!(
                "{}: remote batch {n} ({}): {got}/{of} results applied",
                self.job.name, b.id
            );
        }
        Ok(false)
    }

    /// `call` until it answers, is refused, `until` passes, or the run is cancelled; waiting
    /// between tries from a second doubling up to 5 minutes, or as `Retry-After` says.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        until: SystemTime,
        mut call: F,
    ) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BatchError>>,
    {
        let mut backoff = self.settings.poll_interval.min(Duration::from_secs(1));
        loop {
            let (message, retry_after) = match call().await {
                Ok(v) => return Ok(v),
                Err(BatchError::Refused { status, message }) => {
                    return Err(Stop::Refused(status, message));
                }
                Err(BatchError::Retry {
                    message,
                    retry_after,
                }) => (message, retry_after),
            };
            let wait = retry_after.unwrap_or(backoff).min(MAX_POLL_INTERVAL);
            if SystemTime::now() + wait > until {
                return Err(Stop::GaveUp(message));
            }
            tracing::warn!(call = what, %message, wait_ms = wait.as_millis() as u64, "batch call failed: trying again");
            backoff = (backoff * 2).min(MAX_POLL_INTERVAL);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
            }
        }
    }
}
