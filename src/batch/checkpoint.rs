//! Checkpoints that make a batch resumable: one SQLite file holds every batch and every item that
//! has finished. Run again with the same arguments, a batch finds its row by a stable id, learns
//! which input lines are done, and sends only the rest to providers; the output file is written
//! at the end from the stored rows, in line order, so every input item appears exactly once.
//!
//! An item is stored only once it has finished (ok or failed). An item in flight when the process
//! dies has no row and is simply redone. Rows are written by a [`Writer`] thread that groups them
//! into transactions, so checkpointing keeps up with many concurrent calls. In WAL mode with
//! `synchronous = NORMAL` a committed transaction survives the process being killed (only a power
//! loss can take back the last few).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::protocol::reply::round_usd;

mod writer;
pub use writer::Writer;

/// Rows fetched per query by [`ItemsInOrder`], so writing a huge output keeps memory flat.
const PAGE: i64 = 512;
/// Other connections (the writer, another process reading status) hold the lock only for one
/// short transaction; waiting this long beats failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY, job_name TEXT, job_hash TEXT, input_path TEXT, input_hash TEXT,
        created_at TEXT, state TEXT, total INTEGER);
    CREATE TABLE IF NOT EXISTS items (
        batch_id TEXT, line INTEGER, item_id TEXT, status TEXT, output TEXT, raw TEXT,
        deployment TEXT, attempts INTEGER, tokens INTEGER, cost_usd REAL, error TEXT, via TEXT,
        PRIMARY KEY (batch_id, line));";

const ITEM_COLUMNS: &str =
    "line, item_id, status, output, raw, deployment, attempts, tokens, cost_usd, error, via";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "batch {batch_id}: the {what} file changed since this batch started; \
         run again with --restart to start over (its finished items are discarded)"
    )]
    Changed {
        /// `"job"` or `"input"`.
        what: &'static str,
        batch_id: String,
    },
    #[error("checkpoint {}: no batch {batch_id}", .path.display())]
    UnknownBatch { path: PathBuf, batch_id: String },
    #[error("checkpoint {}: cannot start the writer thread: {source}", .path.display())]
    Thread {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {}: the writer stopped: {reason}", .path.display())]
    WriterStopped { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Status> {
        match text {
            "ok" => Some(Status::Ok),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// How an item was served last (docs/contract.md §11): by a provider's batch API or a sync call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Batch,
    Sync,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Batch => "batch",
            Via::Sync => "sync",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    Running,
    Done,
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Done => "done",
            BatchState::Cancelled => "cancelled",
        }
    }
}

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// No earlier run of this batch had left anything (or `--restart` discarded it).
    pub fresh: bool,
    /// Input lines already finished: the runner skips them.
    pub done: HashSet<u64>,
}

/// One finished item, as the runner records it and as it is read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// The input line (the checkpoint key within a batch).
    pub line: u64,
    pub item_id: String,
    pub status: Status,
    /// The parsed output (label or extracted object) when the item passed its rule.
    pub output: Option<Value>,
    /// The model's text as returned.
    pub raw: Option<String>,
    /// The deployment that produced the final answer (or the last one tried).
    pub deployment: Option<String>,
    pub attempts: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    pub error: Option<String>,
    /// Where its last call went.
    pub via: Via,
}

/// A stored item: the same fields as recorded.
pub type ItemRow = ItemResult;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub tokens: u64,
    pub cost_usd: f64,
    /// Finished items (ok or failed) per deployment that answered last; items that never
    /// reached a deployment are not counted here.
    pub by_deployment: BTreeMap<String, u64>,
}

/// The output file's line for one item (docs/contract.md §5), as JSON, with nulls where a value
/// is absent. An embed job's line carries the vector as `embedding` instead of `output` and
/// `raw`: its JSON text (kept in `raw`) spliced in as it is, so that a vector's numbers are
/// never parsed and printed again.
pub fn output_line(row: &ItemRow, kind: super::job::Kind) -> Vec<u8> {
    if kind == super::job::Kind::Embed {
        /// The keys in the order `json!` writes them (sorted), as the other lines have them.
        #[derive(serde::Serialize)]
        struct EmbedLine<'a> {
            attempts: u32,
            cost_usd: f64,
            deployment: Option<&'a str>,
            embedding: Option<&'a serde_json::value::RawValue>,
            error: Option<&'a str>,
            id: &'a str,
            status: &'a str,
            tokens: u64,
            via: &'a str,
        }
        let embedding = row
            .raw
            .as_deref()
            .and_then(|r| serde_json::from_str::<&serde_json::value::RawValue>(r).ok());
        let line = EmbedLine {
            attempts: row.attempts,
            cost_usd: round_usd(row.cost_usd),
            deployment: row.deployment.as_deref(),
            embedding,
            error: row.error.as_deref(),
            id: &row.item_id,
            status: row.status.as_str(),
            tokens: row.tokens,
            via: row.via.as_str(),
        };
        // Serializing plain fields and valid raw JSON cannot fail.
        return serde_json::to_vec(&line).unwrap_or_default();
    }
    let line = serde_json::json!({
        "id": row.item_id,
        "status": row.status.as_str(),
        "output": row.output,
        "raw": row.raw,
        "deployment": row.deployment,
        "attempts": row.attempts,
        "tokens": row.tokens,
        "cost_usd": round_usd(row.cost_usd),
        "error": row.error,
        "via": row.via.as_str(),
    });
    serde_json::to_vec(&line).unwrap_or_default()
}

/// The checkpoint file. Cheap calls (begin, counts, state) go through one connection behind a
/// mutex, so a `Checkpoint` can be shared across threads; item rows go through a [`Writer`].
pub struct Checkpoint {
    path: PathBuf,
    db: Mutex<Connection>,
}

impl Checkpoint {
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref().to_path_buf();
        let db = connect(&path)?;
        Ok(Checkpoint {
            path,
            db: Mutex::new(db),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A stable id for one job run over one input file: the same command run again (from any
    /// working directory) finds the same batch.
    pub fn batch_id_for(job_name: &str, input_path: &Path) -> String {
        // canonicalize resolves symlinks and `..` but needs the file to exist; fall back to a
        // plain absolute path so an id can still be computed for a message.
        let absolute = std::fs::canonicalize(input_path)
            .or_else(|_| std::path::absolute(input_path))
            .unwrap_or_else(|_| input_path.to_path_buf());
        let mut hasher = Sha256::new();
        hasher.update(job_name.as_bytes());
        // A separator no job name or path contains, so ("ab", "/c") and ("a", "b/c") differ.
        hasher.update([0u8]);
        hasher.update(absolute.as_os_str().as_encoded_bytes());
        let mut id = format!("{:x}", hasher.finalize());
        id.truncate(16);
        id
    }

    /// Starts or resumes batch `id`. A batch that exists with another job or input hash is an
    /// error unless `restart`, which discards its items and starts it fresh.
    pub fn begin(
        &self,
        id: &str,
        job_name: &str,
        job_hash: &str,
        input_path: &Path,
        input_hash: &str,
        restart: bool,
    ) -> Result<Resume, CheckpointError> {
        let sql = |source| self.sqlite(source);
        let mut db = self.lock();
        // IMMEDIATE takes the write lock up front: read-then-write in a deferred transaction
        // could fail with SQLITE_BUSY instead of waiting when another connection writes.
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let existing: Option<(Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT job_hash, input_hash FROM batches WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        let fresh = match existing {
            Some((old_job, old_input)) if !restart => {
                let what = if old_job.as_deref() != Some(job_hash) {
                    Some("job")
                } else if old_input.as_deref() != Some(input_hash) {
                    Some("input")
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(CheckpointError::Changed {
                        what,
                        batch_id: id.to_string(),
                    });
                }
                tx.execute(
                    "UPDATE batches SET state = ?2 WHERE id = ?1",
                    params![id, BatchState::Running.as_str()],
                )
                .map_err(sql)?;
                false
            }
            _ => {
                tx.execute("DELETE FROM items WHERE batch_id = ?1", [id])
                    .map_err(sql)?;
                tx.execute(
                    "INSERT INTO batches
                         (id, job_name, job_hash, input_path, input_hash, created_at, state, total)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
                     ON CONFLICT (id) DO UPDATE SET
                         job_name = excluded.job_name, job_hash = excluded.job_hash,
                         input_path = excluded.input_path, input_hash = excluded.input_hash,
                         created_at = excluded.created_at, state = excluded.state, total = NULL",
                    params![
                        id,
                        job_name,
                        job_hash,
                        input_path.display().to_string(),
                        input_hash,
                        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                        BatchState::Running.as_str(),
                    ],
                )
                .map_err(sql)?;
                true
            }
        };
        let mut done = HashSet::new();
        if !fresh {
            let mut q = tx
                .prepare("SELECT line FROM items WHERE batch_id = ?1")
                .map_err(sql)?;
            let lines = q.query_map([id], |r| r.get::<_, i64>(0)).map_err(sql)?;
            for line in lines {
                done.insert(from_sql_u64(line.map_err(sql)?));
            }
        }
        tx.commit().map_err(sql)?;
        Ok(Resume { fresh, done })
    }

    /// Starts the thread that stores finished items of `batch_id`, on its own connection.
    pub fn writer(&self, batch_id: &str) -> Result<Writer, CheckpointError> {
        Writer::start(&self.path, connect(&self.path)?, batch_id)
    }

    /// The finished items of `batch_id`, by input line, fetched a page at a time.
    pub fn items_in_order(&self, batch_id: &str) -> Result<ItemsInOrder<'_>, CheckpointError> {
        let mut items = ItemsInOrder {
            checkpoint: self,
            batch_id: batch_id.to_string(),
            after: i64::MIN,
            page: Vec::new().into_iter(),
            last_page: false,
        };
        // The first page now, so that an unreadable checkpoint shows here rather than mid-output.
        items.fetch()?;
        Ok(items)
    }

    pub fn counts(&self, batch_id: &str) -> Result<Counts, CheckpointError> {
        let sql = |source| self.sqlite(source);
        let mut db = self.lock();
        // One read transaction, so both queries see the same commits of a running writer.
        let tx = db.transaction().map_err(sql)?;
        let mut counts = Counts::default();
        {
            let mut q = tx
                .prepare(
                    "SELECT status, COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0)
                     FROM items WHERE batch_id = ?1 GROUP BY status",
                )
                .map_err(sql)?;
            let rows = q
                .query_map([batch_id], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, f64>(3)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (status, n, tokens, cost) = row.map_err(sql)?;
                match status.as_deref().and_then(Status::parse) {
                    Some(Status::Ok) => counts.ok += from_sql_u64(n),
                    Some(Status::Failed) => counts.failed += from_sql_u64(n),
                    None => {}
                }
                counts.tokens += from_sql_u64(tokens);
                counts.cost_usd += cost;
            }
            let mut q = tx
                .prepare(
                    "SELECT deployment, COUNT(*) FROM items
                     WHERE batch_id = ?1 AND deployment IS NOT NULL GROUP BY deployment",
                )
                .map_err(sql)?;
            let rows = q
                .query_map([batch_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(sql)?;
            for row in rows {
                let (deployment, n) = row.map_err(sql)?;
                counts.by_deployment.insert(deployment, from_sql_u64(n));
            }
        }
        tx.commit().map_err(sql)?;
        Ok(counts)
    }

    pub fn set_state(&self, batch_id: &str, state: BatchState) -> Result<(), CheckpointError> {
        self.update_batch(
            "UPDATE batches SET state = ?2 WHERE id = ?1",
            batch_id,
            state.as_str(),
        )
    }

    /// The number of input items, once the runner has counted them (for progress).
    pub fn set_total(&self, batch_id: &str, total: u64) -> Result<(), CheckpointError> {
        self.update_batch(
            "UPDATE batches SET total = ?2 WHERE id = ?1",
            batch_id,
            to_sql_u64(total),
        )
    }

    fn update_batch(
        &self,
        sql: &str,
        batch_id: &str,
        value: impl rusqlite::ToSql,
    ) -> Result<(), CheckpointError> {
        let changed = self
            .lock()
            .execute(sql, params![batch_id, value])
            .map_err(|source| self.sqlite(source))?;
        if changed == 0 {
            return Err(CheckpointError::UnknownBatch {
                path: self.path.clone(),
                batch_id: batch_id.to_string(),
            });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done state behind: an open transaction
        // rolls back when dropped. So a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sqlite(&self, source: rusqlite::Error) -> CheckpointError {
        CheckpointError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// A connection to the checkpoint at `path`, its tables made if missing (the deferred runner's
/// tables sit in the same file, on connections of its own).
pub(crate) fn connect(path: &Path) -> Result<Connection, CheckpointError> {
    let err = |source| CheckpointError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let db = Connection::open(path).map_err(err)?;
    db.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    db.execute_batch(SCHEMA).map_err(err)?;
    // Checkpoints written before items had `via`: every item of theirs was served sync.
    let has_via = db
        .prepare("SELECT 1 FROM pragma_table_info('items') WHERE name = 'via'")
        .and_then(|mut q| q.exists([]))
        .map_err(err)?;
    if !has_via {
        match db.execute_batch("ALTER TABLE items ADD COLUMN via TEXT") {
            Ok(()) => {}
            // Another connection added it meanwhile.
            Err(e) if e.to_string().contains("duplicate column") => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(db)
}

/// Stores `items` of `batch_id` in `tx` (the writer's transactions, and the deferred runner's
/// that apply a results download whole). REPLACE: an item recorded twice (a runner retrying
/// after its own crash) keeps the latest result instead of failing the whole transaction.
pub(crate) fn insert_items<'a>(
    tx: &rusqlite::Transaction<'_>,
    batch_id: &str,
    items: impl IntoIterator<Item = &'a ItemResult>,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO items (batch_id, {ITEM_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?;
    for item in items {
        let output = item
            .output
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        insert.execute(params![
            batch_id,
            to_sql_u64(item.line),
            item.item_id,
            item.status.as_str(),
            output,
            item.raw,
            item.deployment,
            item.attempts,
            to_sql_u64(item.tokens),
            item.cost_usd,
            item.error,
            item.via.as_str(),
        ])?;
    }
    Ok(())
}

/// Iterator over a batch's stored items in line order; see [`Checkpoint::items_in_order`].
pub struct ItemsInOrder<'a> {
    checkpoint: &'a Checkpoint,
    batch_id: String,
    /// The last line returned so far: the next page starts after it.
    after: i64,
    page: std::vec::IntoIter<ItemRow>,
    last_page: bool,
}

impl ItemsInOrder<'_> {
    fn fetch(&mut self) -> Result<(), CheckpointError> {
        let checkpoint = self.checkpoint;
        let sql = |source| checkpoint.sqlite(source);
        let db = checkpoint.lock();
        let mut q = db
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE batch_id = ?1 AND line > ?2
                 ORDER BY line LIMIT ?3"
            ))
            .map_err(sql)?;
        let rows: Vec<ItemRow> = q
            .query_map(params![self.batch_id, self.after, PAGE], item_row)
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        self.last_page = (rows.len() as i64) < PAGE;
        if let Some(last) = rows.last() {
            self.after = to_sql_u64(last.line);
        }
        self.page = rows.into_iter();
        Ok(())
    }
}

impl Iterator for ItemsInOrder<'_> {
    type Item = Result<ItemRow, CheckpointError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.page.next() {
            return Some(Ok(row));
        }
        if self.last_page {
            return None;
        }
        if let Err(e) = self.fetch() {
            // Stop after reporting: retrying the same page would likely fail the same way.
            self.last_page = true;
            return Some(Err(e));
        }
        self.page.next().map(Ok)
    }
}

fn item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ItemRow> {
    let status: String = r.get(2)?;
    let status = Status::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown item status {status:?}").into(),
        )
    })?;
    let output = r
        .get::<_, Option<String>>(3)?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?;
    Ok(ItemRow {
        line: from_sql_u64(r.get(0)?),
        item_id: r.get(1)?,
        status,
        output,
        raw: r.get(4)?,
        deployment: r.get(5)?,
        attempts: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
        tokens: from_sql_u64(r.get(7)?),
        cost_usd: r.get(8)?,
        error: r.get(9)?,
        via: match r.get::<_, Option<String>>(10)?.as_deref() {
            Some("batch") => Via::Batch,
            _ => Via::Sync,
        },
    })
}

/// SQLite integers are i64; counts and lines never come near the limit, so saturating is safe.
fn to_sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests;
