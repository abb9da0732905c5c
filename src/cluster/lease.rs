//! Batch leases: a batch over NATS is run by one instance at a time. Its owner holds the key
//! `lease.batch.<id>` (owner + heartbeat, wall-clock ms) and renews it with compare-and-swap
//! every `lease_ttl / 3`; an instance that finds a lease whose heartbeat is older than
//! `lease_ttl` takes it over with compare-and-swap on the revision it read (so exactly one of
//! several contenders wins) and resumes the batch from its checkpoints. An owner that cannot
//! renew for `lease_ttl` (NATS away) stops its run, so that two instances never run one batch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use serde::{Deserialize, Serialize};

use super::{Bucket, Write};

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    owner: Arc<str>,
    heartbeat_ms: u64,
}

/// What `acquire` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Acquired {
    /// This instance holds the lease, at this revision.
    Mine(u64),
    /// Another instance holds it and is alive.
    Held(String),
}

/// Why a renewal failed.
#[derive(Debug)]
pub enum RenewError {
    /// Another instance took the lease over: stop running the batch.
    Lost,
    /// The bucket did not answer; the lease holds until its heartbeat is `lease_ttl` old.
    Unreachable(String),
}

pub fn key(batch_id: &str) -> String {
    format!("lease.batch.{}", super::key_token(batch_id))
}

fn value(owner: &str, heartbeat_ms: u64) -> bytes::Bytes {
    serde_json::to_vec(&LeaseRecord {
        owner: owner.into(),
        heartbeat_ms,
    })
    .unwrap_or_default()
    .into()
}

/// Takes the lease if it is free, stale, or already this instance's.
pub async fn acquire(
    kv: &Bucket,
    batch_id: &str,
    me: &str,
    ttl: Duration,
) -> Result<Acquired, String> {
    let key = key(batch_id);
    let now = super::wall_ms();
    let current = kv
        .entry(key.as_str())
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    let revision = match current {
        Some(e) => {
            let held: Option<LeaseRecord> = serde_json::from_slice(&e.value).ok();
            let alive = held.filter(|h| {
                e.operation == Operation::Put
                    && &*h.owner != me
                    && now.saturating_sub(h.heartbeat_ms) <= ttl.as_millis() as u64
            });
            if let Some(h) = alive {
                return Ok(Acquired::Held(h.owner.to_string()));
            }
            e.revision
        }
        None => 0,
    };
    match kv.cas(&key, value(me, now), revision).await {
        Ok(revision) => Ok(Acquired::Mine(revision)),
        // Someone else took it first.
        Err(Write::Conflict) => Ok(Acquired::Held("another instance".into())),
        Err(Write::Failed(e)) => Err(e),
    }
}

/// Renews a held lease; returns its new revision.
pub async fn renew(
    kv: &Bucket,
    batch_id: &str,
    me: &str,
    revision: u64,
) -> Result<u64, RenewError> {
    kv.cas(&key(batch_id), value(me, super::wall_ms()), revision)
        .await
        .map_err(|e| match e {
            Write::Conflict => RenewError::Lost,
            Write::Failed(e) => RenewError::Unreachable(e),
        })
}

/// Gives the lease up (heartbeat 0: stale at once), so that another instance may take the batch
/// over without waiting for the ttl. Best effort.
pub async fn release(kv: &Bucket, batch_id: &str, me: &str, revision: u64) {
    let _ = kv.cas(&key(batch_id), value(me, 0), revision).await;
}
