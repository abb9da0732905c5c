//! Who opened a stream. A streamed reply's first piece goes out before the request is over, and
//! an HTTP response must name then the deployment that serves it (`Llm-Deployment` and the other
//! headers of docs/contract.md §9). The request's own task runs the fallback walk and each
//! streamed attempt inline, so a caller that wants to know wraps the request in [`watch`], and
//! the attempt whose first chunk arrived writes [`Opened`] there just before it delivers it.
//! NATS streams close with these headers instead and never ask.

use std::future::Future;
use std::sync::{Arc, Mutex};

/// The attempt that is streaming the reply.
#[derive(Debug, Clone)]
pub struct Opened {
    pub deployment: Arc<str>,
    pub provider: &'static str,
    pub group: String,
    /// 1-based number of this call within the request: above 1, earlier calls failed.
    pub attempt: u32,
}

/// Where the opening attempt is written.
pub type OpenedCell = Arc<Mutex<Option<Opened>>>;

tokio::task_local! {
    static OPENED: OpenedCell;
}

/// Runs `work` (a request) so that a stream it opens writes who opened it into `cell`.
pub async fn watch<F: Future>(cell: OpenedCell, work: F) -> F::Output {
    OPENED.scope(cell, work).await
}

/// Says who opened the stream, if the request is watched.
pub(super) fn tell(opened: impl FnOnce() -> Opened) {
    let _ = OPENED.try_with(|cell| {
        if let Ok(mut slot) = cell.lock() {
            *slot = Some(opened());
        }
    });
}
