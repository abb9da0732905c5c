//! A job's `mode` (docs/contract.md §11): `"sync"` (default) sends every item through the engine
//! as it is read; `"deferred"` sends them to a provider's batch API at a discount, to be answered
//! by `deadline`. Beside it: `sync_reserve` (the time kept to finish synchronously), the first
//! `poll_interval`, and `max_batch_items` (a cap below the provider's own per-batch limit).

use std::time::Duration;

use super::Problems;

const DEFAULT_SYNC_RESERVE: Duration = Duration::from_secs(3600);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Polls slow down, while nothing changes, to this.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// How a job's items are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Deferred(Deferred),
}

/// A deferred job's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// From the batch's first run: everything is answered by then.
    pub deadline: Duration,
    /// When the deadline leaves no more than this, what is still remote is cancelled and the
    /// rest is done synchronously.
    pub sync_reserve: Duration,
    pub poll_interval: Duration,
    /// At most this many items per remote batch (the provider's limit when `None`).
    pub max_batch_items: Option<usize>,
}

/// The keys as written in the job file.
#[derive(Debug, Default)]
pub(super) struct RawMode {
    pub mode: Option<String>,
    pub deadline: Option<String>,
    pub sync_reserve: Option<String>,
    pub poll_interval: Option<String>,
    pub max_batch_items: Option<i64>,
}

impl RawMode {
    pub(super) fn validate(self, problems: &mut Problems) -> Mode {
        let mut duration = |key: &str, text: Option<String>| {
            let text = text?;
            match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    problems.add(key, "must be more than zero");
                    None
                }
                Err(e) => {
                    problems.add(key, format!("not a duration like \"12h\" or \"30s\": {e}"));
                    None
                }
            }
        };
        let deadline = duration("deadline", self.deadline);
        let sync_reserve = duration("sync_reserve", self.sync_reserve);
        let poll_interval = duration("poll_interval", self.poll_interval);
        let deferred = match self.mode.as_deref() {
            None | Some("sync") => false,
            Some("deferred") => true,
            Some(other) => {
                problems.add("mode", format!("`{other}` is not sync | deferred"));
                false
            }
        };
        if !deferred {
            for (key, given) in [
                ("deadline", deadline.is_some()),
                ("sync_reserve", sync_reserve.is_some()),
                ("poll_interval", poll_interval.is_some()),
                ("max_batch_items", self.max_batch_items.is_some()),
            ] {
                if given {
                    problems.add(key, "only with mode = \"deferred\"");
                }
            }
            return Mode::Sync;
        }
        let max_batch_items = self.max_batch_items.and_then(|n| {
            let n = usize::try_from(n).ok().filter(|n| *n > 0);
            if n.is_none() {
                problems.add("max_batch_items", "must be a positive integer");
            }
            n
        });
        let poll_interval = poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        if poll_interval > MAX_POLL_INTERVAL {
            problems.add("poll_interval", "must be at most 5m");
        }
        let Some(deadline) = deadline else {
            problems.add(
                "deadline",
                "is required with mode = \"deferred\" (how long the batch may take, e.g. \"24h\")",
            );
            return Mode::Sync;
        };
        Mode::Deferred(Deferred {
            deadline,
            sync_reserve: sync_reserve.unwrap_or(DEFAULT_SYNC_RESERVE),
            poll_interval,
            max_batch_items,
        })
    }
}
