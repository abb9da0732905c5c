//! Several `serve` instances as one (config `[cluster]`). They share what they learn through one
//! JetStream key-value bucket — NATS is the distributed engine, there is no other coordinator:
//!
//! - `circuit.<deployment>`: an instance whose breaker opens (or closes after a good probe) puts
//!   it there; every instance watches the bucket and forces its own breaker the same way, until
//!   the same wall-clock time (the sync task, `ingress::cluster`).
//! - `cooldown.<deployment>`: a `Retry-After` cool-down, held by every instance (`ingress::cluster`).
//! - `quota.<deployment>`: per-second request and token counts of the last minute, reserved in
//!   leases with compare-and-swap by the request's own task (one write serves many attempts), so
//!   that `rpm`/`tpm` hold for the cluster, not per instance (`quota/`).
//! - `probe.<deployment>`: which instance sends the half-open probe, so that the cluster sends one.
//! - `lease.batch.<id>`: which instance runs a batch over NATS (`lease.rs`).
//! - `keyspend.<day>.<key>`: what an HTTP key (`[[http.keys]]`) spent that UTC day, every instance
//!   adding its own spend with compare-and-swap, so that `max_cost_usd_per_day` holds for the
//!   cluster (`key_spend.rs`).
//!
//! Actors never await NATS: a deployment actor hands what to publish to the `Link` (a bounded
//! channel to the sync task, never waited on), and the sync task sends what others published to
//! the actors as `deployment::Msg::Remote`. When NATS is unreachable every instance keeps its own
//! windows and breakers, says so in its status (`cluster.shared = false`), and catches up when
//! NATS returns. A bucket that fails while the connection is up (a stream electing its leader)
//! is retried for `rpm`/`tpm` within `sync_timeout`, then judged within the instance's fair share
//! of each limit (`quota/share.rs`).

mod bucket;
pub mod key_spend;
pub mod lease;
pub mod quota;

pub use bucket::{Bucket, Write};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::observe::events::now_rfc3339;
use crate::observe::status::ClusterStatus;
use crate::protocol::CircuitState;

/// What a deployment actor asks the sync task to put in the bucket.
#[derive(Debug, Clone)]
pub enum Publish {
    Circuit {
        deployment: Arc<str>,
        state: CircuitState,
        /// Wall-clock ms until which an open circuit rejects calls; 0 otherwise.
        until_ms: u64,
    },
    CoolDown {
        deployment: Arc<str>,
        until_ms: u64,
    },
}

/// What another instance decided, as the sync task tells a deployment actor.
#[derive(Debug, Clone)]
pub enum Remote {
    Circuit {
        state: CircuitState,
        until: Instant,
        instance: Arc<str>,
    },
    CoolDown {
        until: Instant,
    },
}

/// The value of a `circuit.*` or `cooldown.*` key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `open` | `closed` for circuits; absent for cool-downs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CircuitState>,
    /// Wall-clock ms (Unix epoch).
    pub until_ms: u64,
    pub instance: Arc<str>,
    /// When it was decided, wall-clock ms: the newer of two records wins on catch-up.
    pub at_ms: u64,
}

/// The handle every deployment actor and request holds. Cheap to read on the request path:
/// lock-free loads of the bucket and of the outbox.
pub struct Link {
    instance: Arc<str>,
    sync_timeout: Duration,
    /// Set while the sync task runs.
    outbox: ArcSwapOption<mpsc::Sender<Publish>>,
    /// Set while the bucket is reachable.
    kv: ArcSwapOption<Bucket>,
    status: ArcSwap<ClusterStatus>,
}

impl Link {
    pub fn new(instance: Arc<str>, config: &ClusterConfig) -> Self {
        let detail = if config.enabled {
            "local state: no NATS (not running under `serve`)"
        } else {
            "local state: [cluster] enabled = false"
        };
        Self {
            instance,
            sync_timeout: config.sync_timeout,
            outbox: ArcSwapOption::empty(),
            kv: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(ClusterStatus {
                shared: false,
                since: now_rfc3339(),
                detail: detail.into(),
            }),
        }
    }

    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    pub fn sync_timeout(&self) -> Duration {
        self.sync_timeout
    }

    /// Hands a record to the sync task; dropped (with a log line) if it is not running or is
    /// far behind: an actor never waits on NATS.
    pub fn publish(&self, p: Publish) {
        if let Some(tx) = self.outbox.load().as_ref()
            && let Err(e) = tx.try_send(p)
        {
            tracing::warn!(error = %e, "cluster outbox full: a state change is not shared");
        }
    }

    /// The bucket, while it is reachable.
    pub fn kv(&self) -> Option<Arc<Bucket>> {
        self.kv.load_full()
    }

    pub fn status(&self) -> ClusterStatus {
        (**self.status.load()).clone()
    }

    /// Where `publish` hands records: the sync task's inbox while it runs (`ingress::cluster`).
    pub fn set_outbox(&self, outbox: Option<Arc<mpsc::Sender<Publish>>>) {
        self.outbox.store(outbox);
    }

    /// The bucket while it is reachable, as the sync task finds it.
    pub fn set_kv(&self, kv: Option<Arc<Bucket>>) {
        self.kv.store(kv);
    }

    /// Whether state is shared now, and why (status `cluster`).
    pub fn set_status(&self, shared: bool, detail: impl Into<String>) {
        let detail = detail.into();
        let old = self.status.load();
        if old.shared == shared && old.detail == detail {
            return;
        }
        let since = if old.shared == shared {
            old.since.clone()
        } else {
            now_rfc3339()
        };
        if shared {
            tracing::info!(%detail, "cluster state shared");
        } else {
            tracing::warn!(%detail, "cluster state local");
        }
        self.status.store(Arc::new(ClusterStatus {
            shared,
            since,
            detail,
        }));
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `Instant` of a wall-clock time (as close as the two clocks allow).
pub fn instant_of(ms: u64) -> Instant {
    let now = wall_ms();
    let now_i = Instant::now();
    if ms >= now {
        // A record from the far future (a clock or a peer gone wrong) must not overflow.
        let ahead = Duration::from_millis(ms - now).min(FAR_AHEAD);
        now_i.checked_add(ahead).unwrap_or(now_i)
    } else {
        now_i
            .checked_sub(Duration::from_millis(now - ms))
            .unwrap_or(now_i)
    }
}

/// How far ahead a shared record may point; callers cap it further by what it stands for.
const FAR_AHEAD: Duration = Duration::from_secs(365 * 24 * 3600);

/// The wall-clock time of an `Instant`.
pub fn ms_of(at: Instant) -> u64 {
    let now = Instant::now();
    let now_ms = wall_ms();
    if at >= now {
        now_ms.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        now_ms.saturating_sub((now - at).as_millis() as u64)
    }
}

/// A deployment name as one KV key token: letters, digits, `-` and `_` stay; anything else is
/// written `=XX` (hex), so that every name maps to one distinct valid key.
pub fn key_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

pub fn circuit_key(deployment: &str) -> String {
    format!("circuit.{}", key_token(deployment))
}

pub fn cooldown_key(deployment: &str) -> String {
    format!("cooldown.{}", key_token(deployment))
}

pub fn quota_key(deployment: &str) -> String {
    format!("quota.{}", key_token(deployment))
}

pub fn probe_key(deployment: &str) -> String {
    format!("probe.{}", key_token(deployment))
}

/// Who holds a deployment's half-open probe, and until when (wall-clock ms; 0: released).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeClaim {
    instance: String,
    until_ms: u64,
}

/// Claims the cluster's one half-open probe of `deployment` for at most `hold` (the call's
/// timeout): `Ok(Some(revision))` of the claim when this instance may send it, `Ok(None)` when
/// another instance's probe is under way. Without this every instance would probe a recovering
/// provider at once.
pub async fn claim_probe(
    kv: &Bucket,
    deployment: &str,
    instance: &str,
    hold: Duration,
) -> Result<Option<u64>, String> {
    let key = probe_key(deployment);
    for _ in 0..4 {
        let now = wall_ms();
        let revision = match kv.entry(&key).await {
            Ok(Some(e)) => {
                let held = serde_json::from_slice::<ProbeClaim>(&e.value).unwrap_or_default();
                if held.until_ms > now {
                    return Ok(None);
                }
                e.revision
            }
            Ok(None) => 0,
            Err(e) => return Err(format!("cannot read {key}: {e}")),
        };
        let claim = ProbeClaim {
            instance: instance.to_string(),
            until_ms: now + hold.as_millis() as u64,
        };
        let value = serde_json::to_vec(&claim).unwrap_or_default().into();
        match kv.cas(&key, value, revision).await {
            Ok(revision) => return Ok(Some(revision)),
            // Another instance claimed it between the read and the write.
            Err(Write::Conflict) => continue,
            Err(Write::Failed(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// Gives a finished probe's claim (at `revision`) back, so that the next half-open period need
/// not wait for it to expire. Only if it is still the last write: a claim that outlived its hold
/// may have been taken over, and the newer claim stands. Best effort: an unreleased claim
/// expires by itself.
pub async fn release_probe(kv: &Bucket, deployment: &str, revision: u64) {
    let key = probe_key(deployment);
    let value = serde_json::to_vec(&ProbeClaim::default()).unwrap_or_default();
    match kv.cas(&key, value.into(), revision).await {
        Ok(_) => {}
        Err(Write::Conflict) => tracing::debug!(key, "a probe claim taken over: left as it is"),
        Err(Write::Failed(e)) => {
            tracing::debug!(error = %e, key, "could not release a probe claim")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_distinct_valid_key_tokens() {
        assert_eq!(key_token("gpt-4o_mini"), "gpt-4o_mini");
        assert_eq!(key_token("a.b c"), "a=2Eb=20c");
        assert_ne!(key_token("a.b"), key_token("a_b"));
        assert_eq!(circuit_key("x.y"), "circuit.x=2Ey");
    }

    #[test]
    fn wall_clock_and_instants_convert_both_ways() {
        let later = Instant::now() + Duration::from_secs(30);
        let back = instant_of(ms_of(later));
        let diff = if back > later {
            back - later
        } else {
            later - back
        };
        assert!(diff < Duration::from_millis(5), "{diff:?}");
    }
}
