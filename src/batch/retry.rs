//! What the item loops share when a call does not serve an item: a pause while every candidate
//! is at its limit, and an item that ends failed.

use std::time::Duration;

use super::checkpoint::{ItemResult, Status, Via};

/// A pause while every candidate is at its batch share (or cooling down): no call was made, so
/// no attempt is spent. `None` when the run is cancelled meanwhile.
pub(super) async fn room(cancel: &tokio_util::sync::CancellationToken) -> Option<()> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(500)) => Some(()),
        _ = cancel.cancelled() => None,
    }
}

pub(super) fn failed(line: u64, id: &str, why: String) -> ItemResult {
    ItemResult {
        line,
        item_id: id.to_string(),
        status: Status::Failed,
        output: None,
        raw: None,
        deployment: None,
        attempts: 0,
        tokens: 0,
        cost_usd: 0.0,
        error: Some(why),
        via: Via::Sync,
    }
}
