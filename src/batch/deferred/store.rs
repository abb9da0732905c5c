//! The deferred runner's checkpoint, in the batch's SQLite file beside the items (docs/contract.md
//! §11): when the batch first ran (its deadline counts from then), every remote batch (`parts`:
//! deployment, tag, uploaded file, remote id, state) and every item sent in one (`remote_items`:
//! its `custom_id`, and once its part's results are applied, how it came back).
//!
//! A part is written as an intent (`planned`) with all its items before anything is sent; its
//! file id and remote id are stored the moment they are known. Applying a part's results is one
//! transaction — the items that passed go to `items`, the others get what the sync walk needs,
//! and the part becomes `applied` — so a kill mid-way applies nothing and the download is redone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::batch::checkpoint::{self, CheckpointError, ItemResult};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS deferred (
        batch_id TEXT PRIMARY KEY, started_at_ms INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS remote_parts (
        batch_id TEXT, part INTEGER, deployment TEXT NOT NULL, tag TEXT NOT NULL, file_id TEXT,
        remote_id TEXT, state TEXT NOT NULL, status TEXT, done INTEGER, total INTEGER,
        results TEXT, note TEXT, PRIMARY KEY (batch_id, part));
    CREATE TABLE IF NOT EXISTS remote_items (
        batch_id TEXT, line INTEGER, part INTEGER NOT NULL, custom_id TEXT NOT NULL,
        item_id TEXT NOT NULL, outcome TEXT, attempts INTEGER, tokens INTEGER, cost_usd REAL,
        full_cost_usd REAL, raw TEXT, error TEXT, exclude TEXT, PRIMARY KEY (batch_id, line));
    CREATE INDEX IF NOT EXISTS remote_items_part ON remote_items (batch_id, part);";

/// Where a part stands on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartState {
    /// Written before the create call: may or may not exist remotely.
    Planned,
    /// Created: `remote_id` is known.
    Submitted,
    /// Its results are applied: done.
    Applied,
    /// Never created (refused), or given up (lost, or past the deadline's grace): its items are
    /// done synchronously.
    Dropped,
}

impl PartState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartState::Planned => "planned",
            PartState::Submitted => "submitted",
            PartState::Applied => "applied",
            PartState::Dropped => "dropped",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<PartState> {
        Ok(match s {
            "planned" => PartState::Planned,
            "submitted" => PartState::Submitted,
            "applied" => PartState::Applied,
            "dropped" => PartState::Dropped,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    format!("unknown part state {other:?}").into(),
                ));
            }
        })
    }

    pub fn finished(self) -> bool {
        matches!(self, PartState::Applied | PartState::Dropped)
    }
}

/// One remote batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub part: u32,
    pub deployment: String,
    /// Names it in the provider's metadata (`<batch id>-<part>-<random>`).
    pub tag: String,
    pub file_id: Option<String>,
    pub remote_id: Option<String>,
    pub state: PartState,
    /// The provider's last status word, and its counts.
    pub status: Option<String>,
    pub done: u64,
    pub total: u64,
    /// Why a part was dropped.
    pub note: Option<String>,
}

/// One item planned into a part.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub line: u64,
    pub item_id: String,
    pub custom_id: String,
}

/// What a batch answer left for the sync walk of an item that did not pass: the calls it counts
/// for, what they cost, the answer, why, and the deployment not to ask again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carry {
    pub attempts: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    /// What `cost_usd` would have been at the sync price.
    pub full_cost_usd: f64,
    pub raw: Option<String>,
    pub error: String,
    pub exclude: Option<String>,
}

/// How an item of an applied part came back.
pub enum Outcome {
    /// Passed: recorded as the item's result, at `full_cost_usd` for the same call sync.
    Done(ItemResult, f64),
    /// To be done synchronously, with this carried over.
    Retry(u64, Carry),
}

pub struct Store {
    path: PathBuf,
    db: Connection,
    batch_id: String,
}

impl Store {
    pub fn open(path: &Path, batch_id: &str) -> Result<Store, CheckpointError> {
        let db = checkpoint::connect(path)?;
        db.execute_batch(SCHEMA).map_err(|e| sqlite(path, e))?;
        Ok(Store {
            path: path.to_path_buf(),
            db,
            batch_id: batch_id.to_string(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> CheckpointError {
        sqlite(&self.path, e)
    }

    /// Forgets an earlier run's parts (the batch started over with `--restart`).
    pub fn clear(&self) -> Result<(), CheckpointError> {
        for table in ["deferred", "remote_parts", "remote_items"] {
            self.db
                .execute(
                    &format!("DELETE FROM {table} WHERE batch_id = ?1"),
                    [&self.batch_id],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// When the batch first ran (unix milliseconds): `now` on its first run, kept after.
    pub fn started_at(&self, now: i64) -> Result<i64, CheckpointError> {
        self.db
            .execute(
                "INSERT OR IGNORE INTO deferred (batch_id, started_at_ms) VALUES (?1, ?2)",
                params![self.batch_id, now],
            )
            .map_err(|e| self.err(e))?;
        self.db
            .query_row(
                "SELECT started_at_ms FROM deferred WHERE batch_id = ?1",
                [&self.batch_id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    pub fn parts(&self) -> Result<Vec<Part>, CheckpointError> {
        let mut q = self
            .db
            .prepare(
                "SELECT part, deployment, tag, file_id, remote_id, state, status, done, total, note
                 FROM remote_parts WHERE batch_id = ?1 ORDER BY part",
            )
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map([&self.batch_id], |r| {
                Ok(Part {
                    part: r.get(0)?,
                    deployment: r.get(1)?,
                    tag: r.get(2)?,
                    file_id: r.get(3)?,
                    remote_id: r.get(4)?,
                    state: PartState::parse(&r.get::<_, String>(5)?)?,
                    status: r.get(6)?,
                    done: r.get::<_, Option<i64>>(7)?.unwrap_or(0).max(0) as u64,
                    total: r.get::<_, Option<i64>>(8)?.unwrap_or(0).max(0) as u64,
                    note: r.get(9)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every line already planned into some part.
    pub fn planned_lines(&self) -> Result<HashSet<u64>, CheckpointError> {
        self.lines_with("TRUE")
    }

    /// The items of `part`.
    pub fn items(&self, part: u32) -> Result<Vec<Planned>, CheckpointError> {
        let mut q = self
            .db
            .prepare(
                "SELECT line, item_id, custom_id FROM remote_items
                 WHERE batch_id = ?1 AND part = ?2 ORDER BY line",
            )
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map(params![self.batch_id, part], |r| {
                Ok(Planned {
                    line: r.get::<_, i64>(0)?.max(0) as u64,
                    item_id: r.get(1)?,
                    custom_id: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Writes new parts as intents, with all their items, in one transaction.
    pub fn plan(&mut self, parts: &[(Part, Vec<Planned>)]) -> Result<(), CheckpointError> {
        let path = self.path.clone();
        let tx = self.db.transaction().map_err(|e| sqlite(&path, e))?;
        {
            let mut part_row = tx
                .prepare(
                    "INSERT INTO remote_parts (batch_id, part, deployment, tag, state)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| sqlite(&path, e))?;
            let mut item_row = tx
                .prepare(
                    "INSERT INTO remote_items (batch_id, line, part, custom_id, item_id)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| sqlite(&path, e))?;
            for (p, items) in parts {
                part_row
                    .execute(params![
                        self.batch_id,
                        p.part,
                        p.deployment,
                        p.tag,
                        PartState::Planned.as_str()
                    ])
                    .map_err(|e| sqlite(&path, e))?;
                for i in items {
                    item_row
                        .execute(params![
                            self.batch_id,
                            i.line as i64,
                            p.part,
                            i.custom_id,
                            i.item_id
                        ])
                        .map_err(|e| sqlite(&path, e))?;
                }
            }
        }
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    pub fn set_file(&self, part: u32, file_id: &str) -> Result<(), CheckpointError> {
        self.update(part, "file_id = ?3", file_id)
    }

    /// The remote batch `part` is: stored the moment it is known.
    pub fn set_remote(&self, part: u32, remote_id: &str) -> Result<(), CheckpointError> {
        self.db
            .execute(
                "UPDATE remote_parts SET remote_id = ?3, state = ?4 WHERE batch_id = ?1 AND part = ?2",
                params![self.batch_id, part, remote_id, PartState::Submitted.as_str()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// The provider's latest word on `part`.
    pub fn set_status(
        &self,
        part: u32,
        status: &str,
        done: u64,
        total: u64,
    ) -> Result<(), CheckpointError> {
        self.db
            .execute(
                "UPDATE remote_parts SET status = ?3, done = ?4, total = ?5
                 WHERE batch_id = ?1 AND part = ?2",
                params![self.batch_id, part, status, done as i64, total as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn update(&self, part: u32, set: &str, value: &str) -> Result<(), CheckpointError> {
        self.db
            .execute(
                &format!("UPDATE remote_parts SET {set} WHERE batch_id = ?1 AND part = ?2"),
                params![self.batch_id, part, value],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Applies a part's outcomes in one transaction: passed items recorded, the others left for
    /// the sync walk, the part `applied` (or `dropped` with `note`). Items of the part with no
    /// outcome are left for the sync walk with `missing` as their reason.
    pub fn apply(
        &mut self,
        part: u32,
        outcomes: Vec<Outcome>,
        missing: &str,
        dropped: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let path = self.path.clone();
        let e = |x| sqlite(&path, x);
        let tx = self.db.transaction().map_err(e)?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM remote_parts WHERE batch_id = ?1 AND part = ?2",
                params![self.batch_id, part],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        // Applied once: a second apply (there is none, but a bug would make one) changes nothing.
        if state
            .as_deref()
            .map(PartState::parse)
            .transpose()
            .map_err(e)?
            .is_none_or(PartState::finished)
        {
            return Ok(());
        }
        let mut done = Vec::new();
        {
            let mut outcome_row = tx
                .prepare(
                    "UPDATE remote_items SET outcome = ?3, attempts = ?4, tokens = ?5,
                         cost_usd = ?6, full_cost_usd = ?7, raw = ?8, error = ?9, exclude = ?10
                     WHERE batch_id = ?1 AND line = ?2 AND part = ?11 AND outcome IS NULL",
                )
                .map_err(e)?;
            for o in &outcomes {
                let (line, outcome, c) = match o {
                    Outcome::Done(item, full) => {
                        done.push(item);
                        let c = Carry {
                            attempts: item.attempts,
                            tokens: item.tokens,
                            cost_usd: item.cost_usd,
                            full_cost_usd: *full,
                            ..Carry::default()
                        };
                        (item.line, "ok", c)
                    }
                    Outcome::Retry(line, c) => (*line, "retry", c.clone()),
                };
                outcome_row
                    .execute(params![
                        self.batch_id,
                        line as i64,
                        outcome,
                        c.attempts,
                        c.tokens as i64,
                        c.cost_usd,
                        c.full_cost_usd,
                        c.raw,
                        (outcome == "retry").then_some(c.error.as_str()),
                        c.exclude,
                        part,
                    ])
                    .map_err(e)?;
            }
        }
        checkpoint::insert_items(&tx, &self.batch_id, done).map_err(e)?;
        tx.execute(
            "UPDATE remote_items SET outcome = 'retry', attempts = 0, tokens = 0, cost_usd = 0,
                 full_cost_usd = 0, error = ?3
             WHERE batch_id = ?1 AND part = ?2 AND outcome IS NULL",
            params![self.batch_id, part, missing],
        )
        .map_err(e)?;
        let state = match dropped {
            Some(_) => PartState::Dropped,
            None => PartState::Applied,
        };
        tx.execute(
            "UPDATE remote_parts SET state = ?3, note = ?4 WHERE batch_id = ?1 AND part = ?2",
            params![self.batch_id, part, state.as_str(), dropped],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// What the sync walk takes over: items whose batch answer did not pass and that have no
    /// result yet, by line.
    pub fn carries(&self) -> Result<HashMap<u64, Carry>, CheckpointError> {
        let mut q = self
            .db
            .prepare(
                "SELECT r.line, r.attempts, r.tokens, r.cost_usd, r.full_cost_usd, r.raw, r.error,
                        r.exclude
                 FROM remote_items r LEFT JOIN items i ON i.batch_id = r.batch_id AND i.line = r.line
                 WHERE r.batch_id = ?1 AND r.outcome = 'retry' AND i.line IS NULL",
            )
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map([&self.batch_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?.max(0) as u64,
                    Carry {
                        attempts: r.get::<_, Option<u32>>(1)?.unwrap_or(0),
                        tokens: r.get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
                        cost_usd: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                        full_cost_usd: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                        raw: r.get(5)?,
                        error: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                        exclude: r.get(7)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Lines sent in a part whose outcome matches `filter` (`outcome = 'ok'`: answered by a
    /// batch; `outcome IS NULL`: may still answer).
    pub fn lines_with(&self, filter: &str) -> Result<HashSet<u64>, CheckpointError> {
        let mut q = self
            .db
            .prepare(&format!(
                "SELECT line FROM remote_items WHERE batch_id = ?1 AND {filter}"
            ))
            .map_err(|e| self.err(e))?;
        let lines = q
            .query_map([&self.batch_id], |r| r.get::<_, i64>(0))
            .map_err(|e| self.err(e))?;
        lines
            .map(|l| l.map(|l| l.max(0) as u64))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// What the batch calls cost, and what the same calls would have cost at the sync price.
    pub fn batch_costs(&self) -> Result<(f64, f64), CheckpointError> {
        self.db
            .query_row(
                "SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(full_cost_usd), 0)
                 FROM remote_items WHERE batch_id = ?1",
                [&self.batch_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> CheckpointError {
    CheckpointError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}
