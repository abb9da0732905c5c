//! Spend: cost, tokens and requests of the current UTC day per (task, deployment), counted with
//! atomics on the request path, and kept in SQLite (`storage.path`) so that budget totals survive
//! a restart. A writer thread saves the day's totals once a second and once more on shutdown; at
//! start the day's saved totals are loaded back.
//!
//! Rows are kept per instance, so several instances on one `storage.path` each keep their own
//! totals; the rows of an instance that stopped saving (gone: its id changes with its process
//! unless `SWITCHYARD_INSTANCE` is set) are carried on by a live one after [`STALE_AFTER`].
//!
//! Tasks are those named in `[tasks]`, plus `auto`; any other task token counts as `other`, so
//! the table stays small whatever subjects callers use.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;

/// Costs are counted in units of 1e-10 USD, so that sums stay exact integers.
pub(crate) const UNIT: f64 = 1e10;
const OTHER: &str = "other";

#[derive(Default)]
struct Cell {
    cost: AtomicU64,
    tokens: AtomicU64,
    requests: AtomicU64,
}

pub struct Spend {
    tasks: Vec<String>,
    task_index: HashMap<String, usize>,
    /// (name, group) per deployment, in config order.
    deployments: Vec<(String, String)>,
    /// `tasks.len() × deployments.len()`, task-major.
    cells: Vec<Cell>,
    day: AtomicU64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct SpendSnapshot {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub total_usd: f64,
    pub requests: u64,
    pub tokens: u64,
    pub by_task: BTreeMap<String, f64>,
    pub by_group: BTreeMap<String, f64>,
    pub by_deployment: BTreeMap<String, f64>,
}

impl Spend {
    pub fn new(config: &Config) -> Self {
        let mut tasks: Vec<String> = config.tasks.keys().cloned().collect();
        for extra in [crate::protocol::subjects::AUTO_TASK, OTHER] {
            if !tasks.iter().any(|t| t == extra) {
                tasks.push(extra.to_string());
            }
        }
        let deployments: Vec<(String, String)> = config
            .deployments
            .iter()
            .map(|d| (d.name.clone(), d.group.clone()))
            .collect();
        let cells = (0..tasks.len() * deployments.len())
            .map(|_| Cell::default())
            .collect();
        Self {
            task_index: tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect(),
            tasks,
            deployments,
            cells,
            day: AtomicU64::new(today()),
        }
    }

    /// The row a task token counts in.
    pub fn task_key(&self, task: &str) -> usize {
        self.task_index
            .get(task)
            .or_else(|| self.task_index.get(OTHER))
            .copied()
            .unwrap_or(0)
    }

    fn cell(&self, task: usize, deployment: usize) -> Option<&Cell> {
        if deployment >= self.deployments.len() {
            return None;
        }
        self.cells.get(task * self.deployments.len() + deployment)
    }

    pub fn record(&self, task: usize, deployment: usize, cost_usd: f64, tokens: u64) {
        let Some(c) = self.cell(task, deployment) else {
            return;
        };
        c.cost.fetch_add((cost_usd * UNIT).round() as u64, Relaxed);
        c.tokens.fetch_add(tokens, Relaxed);
        c.requests.fetch_add(1, Relaxed);
    }

    fn sum(&self, keep: impl Fn(usize, usize) -> bool) -> f64 {
        let n = self.deployments.len();
        let units: u64 = self
            .cells
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(i / n, i % n))
            .map(|(_, c)| c.cost.load(Relaxed))
            .sum();
        units as f64 / UNIT
    }

    pub fn task_usd(&self, task: usize) -> f64 {
        self.sum(|t, _| t == task)
    }

    pub fn group_usd(&self, group: &str) -> f64 {
        self.sum(|_, d| self.deployments.get(d).is_some_and(|(_, g)| g == group))
    }

    pub fn total_usd(&self) -> f64 {
        self.sum(|_, _| true)
    }

    pub fn snapshot(&self) -> SpendSnapshot {
        let n = self.deployments.len();
        let mut s = SpendSnapshot {
            day: day_name(self.day.load(Relaxed)),
            ..Default::default()
        };
        for (i, c) in self.cells.iter().enumerate() {
            let usd = c.cost.load(Relaxed) as f64 / UNIT;
            let (Some(task), Some((deployment, group))) =
                (self.tasks.get(i / n), self.deployments.get(i % n))
            else {
                continue;
            };
            s.total_usd += usd;
            s.requests += c.requests.load(Relaxed);
            s.tokens += c.tokens.load(Relaxed);
            *s.by_task.entry(task.clone()).or_default() += usd;
            *s.by_group.entry(group.clone()).or_default() += usd;
            *s.by_deployment.entry(deployment.clone()).or_default() += usd;
        }
        s
    }

    /// Starts a new day when the date has changed; returns the day that ended, if one did.
    fn roll_over(&self) -> Option<u64> {
        let now = today();
        let was = self.day.swap(now, Relaxed);
        if was == now {
            return None;
        }
        for c in &self.cells {
            c.cost.store(0, Relaxed);
            c.tokens.store(0, Relaxed);
            c.requests.store(0, Relaxed);
        }
        Some(was)
    }
}

/// Days since 1970-01-01, UTC.
pub(crate) fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// How long until the UTC day ends, and with it the day's spend (the daily caps reset then).
pub(crate) fn until_next_day() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Duration::from_secs(86_400 - now % 86_400)
}

pub(crate) fn day_name(day: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(day * 86_400);
    let mut text = humantime::format_rfc3339_seconds(t).to_string();
    text.truncate(10);
    text
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("spend ledger {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("spend ledger: cannot start its writer thread: {0}")]
    Thread(std::io::Error),
}

/// Rows of an instance that has not saved them for this long belong to an instance that is
/// gone (a live one saves its rows every second): the next instance to open the ledger carries
/// them on as its own, so a restarted `serve` keeps the day's totals.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spend (
        day TEXT NOT NULL, instance TEXT NOT NULL DEFAULT '', task TEXT NOT NULL,
        deployment TEXT NOT NULL, grp TEXT NOT NULL, cost_units INTEGER NOT NULL,
        tokens INTEGER NOT NULL, requests INTEGER NOT NULL, saved_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, instance, task, deployment));";

/// The SQLite side: loads today's totals, then saves them once a second from its own thread.
/// Each instance keeps its own rows (`instance`), so instances that share `storage.path` never
/// overwrite each other's totals.
pub struct Ledger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Opens the ledger for `instance`, on a blocking thread (SQLite never runs on the async
    /// workers).
    pub async fn open(path: &Path, instance: &str, spend: Arc<Spend>) -> Result<Self, LedgerError> {
        let (path, instance) = (path.to_path_buf(), instance.to_string());
        tokio::task::spawn_blocking(move || {
            Self::open_blocking(&path, &instance, spend, STALE_AFTER)
        })
        .await
        .map_err(|e| LedgerError::Thread(std::io::Error::other(e)))?
    }

    /// As `open`, on the calling thread; rows of other instances not saved for `stale_after`
    /// are carried on as this one's.
    pub fn open_blocking(
        path: &Path,
        instance: &str,
        spend: Arc<Spend>,
        stale_after: Duration,
    ) -> Result<Self, LedgerError> {
        let err = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let mut db = rusqlite::Connection::open(path).map_err(err)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(err)?;
        migrate(&mut db).map_err(err)?;
        {
            // One write transaction: two instances starting together cannot both carry on the
            // same gone instance's rows.
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            load(&tx, &spend, instance, stale_after).map_err(err)?;
            write(&tx, &spend, spend.day.load(Relaxed), instance).map_err(err)?;
            tx.commit().map_err(err)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let instance = instance.to_string();
        let thread = std::thread::Builder::new()
            .name("spend-ledger".into())
            .spawn(move || {
                while !flag.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    save(&db, &spend, &instance, stale_after);
                }
                save(&db, &spend, &instance, stale_after);
            })
            .map_err(LedgerError::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Saves once more and stops the writer.
    pub fn close(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Creates the table, or brings a file written before instances were told apart to the current
/// schema: its rows are kept, as those of instance `''` (taken over by the first instance that
/// opens it). The key changes too, so the table is rebuilt rather than altered.
fn migrate(db: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let columns: Vec<String> = {
        let mut q = tx.prepare("SELECT name FROM pragma_table_info('spend')")?;
        q.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    if !columns.is_empty() && !columns.iter().any(|c| c == "instance") {
        tx.execute_batch(&format!(
            "ALTER TABLE spend RENAME TO spend_before_instances;
             {SCHEMA}
             INSERT INTO spend (day, instance, task, deployment, grp, cost_units, tokens,
                                requests, saved_ms)
                 SELECT day, '', task, deployment, grp, cost_units, tokens, requests, 0
                 FROM spend_before_instances;
             DROP TABLE spend_before_instances;"
        ))?;
    } else {
        tx.execute_batch(SCHEMA)?;
    }
    tx.commit()
}

/// Adds today's saved totals of `instance`, and carries on those of instances gone for
/// `stale_after`.
fn load(
    db: &rusqlite::Connection,
    spend: &Spend,
    instance: &str,
    stale_after: Duration,
) -> rusqlite::Result<()> {
    let day = day_name(spend.day.load(Relaxed));
    add_rows(
        db,
        spend,
        "SELECT task, deployment, cost_units, tokens, requests FROM spend
         WHERE day = ?1 AND instance = ?2",
        rusqlite::params![day, instance],
    )?;
    adopt(db, spend, instance, stale_after)
}

/// Today's rows of instances that have not saved them for `stale_after` count here from now
/// on: added to this instance's totals and removed, in the caller's transaction (which also
/// writes this instance's rows, so nothing is counted twice or lost).
fn adopt(
    db: &rusqlite::Connection,
    spend: &Spend,
    instance: &str,
    stale_after: Duration,
) -> rusqlite::Result<()> {
    let day = day_name(spend.day.load(Relaxed));
    let stale_before = now_ms().saturating_sub(to_i64(stale_after.as_millis()));
    let found = add_rows(
        db,
        spend,
        "SELECT task, deployment, cost_units, tokens, requests FROM spend
         WHERE day = ?1 AND instance <> ?2 AND saved_ms < ?3",
        rusqlite::params![day, instance, stale_before],
    )?;
    if found > 0 {
        db.execute(
            "DELETE FROM spend WHERE day = ?1 AND instance <> ?2 AND saved_ms < ?3",
            rusqlite::params![day, instance, stale_before],
        )?;
        tracing::info!(rows = found, "spend of a gone instance carried on here");
    }
    Ok(())
}

/// Adds the rows `sql` selects to the counters; returns how many it found.
fn add_rows(
    db: &rusqlite::Connection,
    spend: &Spend,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    let mut q = db.prepare_cached(sql)?;
    let rows = q.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut found = 0;
    for row in rows {
        let (task, deployment, cost, tokens, requests) = row?;
        found += 1;
        let Some(d) = spend.deployments.iter().position(|(n, _)| *n == deployment) else {
            continue;
        };
        let Some(c) = spend.cell(spend.task_key(&task), d) else {
            continue;
        };
        c.cost.fetch_add(cost.max(0) as u64, Relaxed);
        c.tokens.fetch_add(tokens.max(0) as u64, Relaxed);
        c.requests.fetch_add(requests.max(0) as u64, Relaxed);
    }
    Ok(found)
}

fn save(db: &rusqlite::Connection, spend: &Spend, instance: &str, stale_after: Duration) {
    // A day that just ended is saved as it stood before the counters restart.
    let day = spend.day.load(Relaxed);
    let saved = db.unchecked_transaction().and_then(|tx| {
        adopt(&tx, spend, instance, stale_after)?;
        write(&tx, spend, day, instance)?;
        tx.commit()
    });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save spend totals");
    }
    if spend.roll_over().is_some() {
        tracing::info!(day = %day_name(day), "spend day closed");
    }
}

/// This instance's rows for `day`, in the caller's transaction.
fn write(
    db: &rusqlite::Connection,
    spend: &Spend,
    day: u64,
    instance: &str,
) -> rusqlite::Result<()> {
    let day = day_name(day);
    let saved_ms = now_ms();
    let mut up = db.prepare_cached(
        "INSERT INTO spend (day, instance, task, deployment, grp, cost_units, tokens, requests,
                            saved_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (day, instance, task, deployment) DO UPDATE SET
             cost_units = excluded.cost_units, tokens = excluded.tokens,
             requests = excluded.requests, saved_ms = excluded.saved_ms",
    )?;
    let n = spend.deployments.len();
    for (i, c) in spend.cells.iter().enumerate() {
        let requests = c.requests.load(Relaxed);
        if requests == 0 {
            continue;
        }
        let (Some((deployment, group)), Some(task)) =
            (spend.deployments.get(i % n), spend.tasks.get(i / n))
        else {
            continue;
        };
        up.execute(rusqlite::params![
            day,
            instance,
            task,
            deployment,
            group,
            to_i64(u128::from(c.cost.load(Relaxed))),
            to_i64(u128::from(c.tokens.load(Relaxed))),
            to_i64(u128::from(requests)),
            saved_ms,
        ])?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| to_i64(d.as_millis()))
}

fn to_i64(v: u128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.db");
        let config = Config::demo();
        let spend = Arc::new(Spend::new(&config));
        let chat = spend.task_key("chat");
        let other = spend.task_key("some-unknown-task");
        assert_eq!(other, spend.task_key("other"));
        let mut ledger = Ledger::open_blocking(&path, "a", spend.clone(), STALE_AFTER).unwrap();
        spend.record(chat, 0, 0.000_012_3, 100);
        spend.record(chat, 1, 0.000_001, 10);
        spend.record(other, 0, 0.5, 1000);
        assert!((spend.task_usd(chat) - 0.000_013_3).abs() < 1e-12);
        assert!((spend.group_usd("fast-chat") - 0.500_013_3).abs() < 1e-12);
        assert!((spend.total_usd() - 0.500_013_3).abs() < 1e-12);
        ledger.close();

        let again = Arc::new(Spend::new(&config));
        let _ledger = Ledger::open_blocking(&path, "a", again.clone(), STALE_AFTER).unwrap();
        assert!((again.total_usd() - 0.500_013_3).abs() < 1e-12);
        let s = again.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.tokens, 1110);
        assert!((s.by_task["other"] - 0.5).abs() < 1e-12);
        assert_eq!(s.day.len(), 10);
    }

    fn total_of(path: &Path, instance: &str) -> i64 {
        let db = rusqlite::Connection::open(path).unwrap();
        db.query_row(
            "SELECT COALESCE(SUM(cost_units), 0) FROM spend WHERE instance = ?1",
            [instance],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn instances_sharing_one_file_keep_their_own_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let config = Config::demo();
        let (a, b) = (Arc::new(Spend::new(&config)), Arc::new(Spend::new(&config)));
        let chat = a.task_key("chat");
        let mut la = Ledger::open_blocking(&path, "a", a.clone(), STALE_AFTER).unwrap();
        let mut lb = Ledger::open_blocking(&path, "b", b.clone(), STALE_AFTER).unwrap();
        a.record(chat, 0, 0.25, 10);
        b.record(chat, 0, 0.5, 20);
        // Both save the same (day, task, deployment) cell, each under its own instance.
        la.close();
        lb.close();
        assert_eq!(total_of(&path, "a"), 2_500_000_000);
        assert_eq!(total_of(&path, "b"), 5_000_000_000);

        // Each, started again under its name, finds its own total.
        let again = Arc::new(Spend::new(&config));
        let _la = Ledger::open_blocking(&path, "a", again.clone(), STALE_AFTER).unwrap();
        assert!((again.total_usd() - 0.25).abs() < 1e-12);
        let again = Arc::new(Spend::new(&config));
        let _lb = Ledger::open_blocking(&path, "b", again.clone(), STALE_AFTER).unwrap();
        assert!((again.total_usd() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn an_instance_gone_for_a_while_is_carried_on_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let config = Config::demo();
        let gone = Arc::new(Spend::new(&config));
        let chat = gone.task_key("chat");
        let mut l = Ledger::open_blocking(&path, "host-1", gone.clone(), STALE_AFTER).unwrap();
        gone.record(chat, 0, 0.25, 10);
        l.close();
        // Fresh rows are another live instance's: left alone.
        let next = Arc::new(Spend::new(&config));
        drop(Ledger::open_blocking(&path, "host-2", next.clone(), STALE_AFTER).unwrap());
        assert_eq!(next.total_usd(), 0.0);
        // Stale ones are carried on, once: counted here and gone from there.
        let next = Arc::new(Spend::new(&config));
        drop(Ledger::open_blocking(&path, "host-3", next.clone(), Duration::ZERO).unwrap());
        assert!((next.total_usd() - 0.25).abs() < 1e-12);
        assert_eq!(total_of(&path, "host-1"), 0);
        assert_eq!(total_of(&path, "host-3"), 2_500_000_000);
    }

    #[test]
    fn a_file_from_before_instances_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let config = Config::demo();
        let spend = Spend::new(&config);
        let day = day_name(spend.day.load(Relaxed));
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE spend (
                     day TEXT NOT NULL, task TEXT NOT NULL, deployment TEXT NOT NULL,
                     grp TEXT NOT NULL, cost_units INTEGER NOT NULL, tokens INTEGER NOT NULL,
                     requests INTEGER NOT NULL, PRIMARY KEY (day, task, deployment));",
            )
            .unwrap();
            let (deployment, group) = &spend.deployments[0];
            db.execute(
                "INSERT INTO spend VALUES (?1, 'chat', ?2, ?3, 7500000000, 30, 3)",
                rusqlite::params![day, deployment, group],
            )
            .unwrap();
        }
        let spend = Arc::new(spend);
        let mut l = Ledger::open_blocking(&path, "new", spend.clone(), STALE_AFTER).unwrap();
        // The old rows had no instance: whoever opens first carries them on.
        assert!((spend.total_usd() - 0.75).abs() < 1e-12);
        assert_eq!(spend.snapshot().requests, 3);
        l.close();
        assert_eq!(total_of(&path, "new"), 7_500_000_000);
        assert_eq!(total_of(&path, ""), 0);
    }
}
