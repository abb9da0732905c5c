//! Events on `llm.status.events`: circuit transitions and alerts raised or cleared. Producers send them to an
//! in-process broadcast bus; `serve` publishes the bus to NATS and `demo` prints it.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::protocol::CircuitState;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Circuit {
        deployment: Arc<str>,
        from: CircuitState,
        to: CircuitState,
        /// RFC 3339, UTC.
        at: String,
        instance: Arc<str>,
    },
    Alert {
        /// `raised` | `cleared`.
        state: &'static str,
        rule: String,
        severity: String,
        deployment: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        value: f64,
        threshold: f64,
        at: String,
        instance: Arc<str>,
    },
}

pub type EventBus = broadcast::Sender<Event>;

pub fn bus() -> EventBus {
    broadcast::channel(1024).0
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
