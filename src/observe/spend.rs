//! Spend: cost, tokens and requests of the current UTC day per (task, deployment), counted with
//! atomics on the request path, and kept in SQLite (`storage.path`) so that budget totals survive
//! a restart. A writer thread saves the day's totals once a second and once more on shutdown; at
//! start the day's saved totals are loaded back.
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
const UNIT: f64 = 1e10;
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
        for extra in [crate::routing::classify::AUTO, OTHER] {
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

    fn cell(&self, task: usize, deployment: usize) -> &Cell {
        &self.cells[task * self.deployments.len() + deployment]
    }

    pub fn record(&self, task: usize, deployment: usize, cost_usd: f64, tokens: u64) {
        let c = self.cell(task, deployment);
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
        self.sum(|_, d| self.deployments[d].1 == group)
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
            let (task, (deployment, group)) = (&self.tasks[i / n], &self.deployments[i % n]);
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
fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

fn day_name(day: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(day * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
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

/// The SQLite side: loads today's totals, then saves them once a second from its own thread.
pub struct Ledger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    pub fn open(path: &Path, spend: Arc<Spend>) -> Result<Self, LedgerError> {
        let err = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let db = rusqlite::Connection::open(path).map_err(err)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS spend (
                 day TEXT NOT NULL, task TEXT NOT NULL, deployment TEXT NOT NULL,
                 grp TEXT NOT NULL, cost_units INTEGER NOT NULL, tokens INTEGER NOT NULL,
                 requests INTEGER NOT NULL, PRIMARY KEY (day, task, deployment));",
        )
        .map_err(err)?;
        load(&db, &spend).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spend-ledger".into())
            .spawn(move || {
                while !flag.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    save(&db, &spend);
                }
                save(&db, &spend);
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

fn load(db: &rusqlite::Connection, spend: &Spend) -> rusqlite::Result<()> {
    let day = day_name(spend.day.load(Relaxed));
    let mut q = db.prepare(
        "SELECT task, deployment, cost_units, tokens, requests FROM spend WHERE day = ?1",
    )?;
    let rows = q.query_map([&day], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (task, deployment, cost, tokens, requests) = row?;
        let Some(d) = spend.deployments.iter().position(|(n, _)| *n == deployment) else {
            continue;
        };
        let c = spend.cell(spend.task_key(&task), d);
        c.cost.fetch_add(cost.max(0) as u64, Relaxed);
        c.tokens.fetch_add(tokens.max(0) as u64, Relaxed);
        c.requests.fetch_add(requests.max(0) as u64, Relaxed);
    }
    Ok(())
}

fn save(db: &rusqlite::Connection, spend: &Spend) {
    // A day that just ended is saved as it stood before the counters restart.
    let day = spend.day.load(Relaxed);
    if let Err(e) = write(db, spend, day) {
        tracing::warn!(error = %e, "could not save spend totals");
    }
    if spend.roll_over().is_some() {
        tracing::info!(day = %day_name(day), "spend day closed");
    }
}

fn write(db: &rusqlite::Connection, spend: &Spend, day: u64) -> rusqlite::Result<()> {
    let day = day_name(day);
    let tx = db.unchecked_transaction()?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO spend (day, task, deployment, grp, cost_units, tokens, requests)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (day, task, deployment) DO UPDATE SET
                 cost_units = excluded.cost_units, tokens = excluded.tokens,
                 requests = excluded.requests",
        )?;
        let n = spend.deployments.len();
        for (i, c) in spend.cells.iter().enumerate() {
            let requests = c.requests.load(Relaxed);
            if requests == 0 {
                continue;
            }
            let (deployment, group) = &spend.deployments[i % n];
            up.execute(rusqlite::params![
                day,
                spend.tasks[i / n],
                deployment,
                group,
                c.cost.load(Relaxed) as i64,
                c.tokens.load(Relaxed) as i64,
                requests as i64,
            ])?;
        }
    }
    tx.commit()
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
        let mut ledger = Ledger::open(&path, spend.clone()).unwrap();
        spend.record(chat, 0, 0.000_012_3, 100);
        spend.record(chat, 1, 0.000_001, 10);
        spend.record(other, 0, 0.5, 1000);
        assert!((spend.task_usd(chat) - 0.000_013_3).abs() < 1e-12);
        assert!((spend.group_usd("fast-chat") - 0.500_013_3).abs() < 1e-12);
        assert!((spend.total_usd() - 0.500_013_3).abs() < 1e-12);
        ledger.close();

        let again = Arc::new(Spend::new(&config));
        let _ledger = Ledger::open(&path, again.clone()).unwrap();
        assert!((again.total_usd() - 0.500_013_3).abs() < 1e-12);
        let s = again.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.tokens, 1110);
        assert!((s.by_task["other"] - 0.5).abs() < 1e-12);
        assert_eq!(s.day.len(), 10);
    }
}
