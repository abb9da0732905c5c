//! How a provider call fails, as seen on the wire. Every wire format and backend reports a
//! `Failure`; what is done about it (fall back or stop, count for the breaker or not, cool down)
//! is routing's failure policy, `crate::routing::policy`. It sits at the bottom of `providers`:
//! it names no other file of the module.

use std::time::Duration;

/// How a call failed, as seen on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The provider answered with a non-success HTTP status.
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The deployment's own `timeout` passed.
    Timeout,
    /// A stream ran for the deployment's whole `max_stream_duration` (`[limits]`) and was cut.
    StreamDuration(Duration),
    /// The caller's `Llm-Deadline` ran out during the call.
    DeadlineSpent,
    /// No connection could be made.
    Connect(String),
    /// The connection broke: reset, closed mid-body, protocol error.
    Transport(String),
    /// A success status with a body that is not a valid provider reply.
    InvalidBody(String),
    /// A request this provider cannot express (a content part, role or field it has no
    /// equivalent for). Nothing was sent; another provider may take it.
    Untranslatable(String),
}

impl Failure {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short stable name (`error.type` on trace spans).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "http_status",
            Self::Timeout => "timeout",
            Self::StreamDuration(_) => "stream_duration",
            Self::DeadlineSpent => "deadline_spent",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::InvalidBody(_) => "invalid_body",
            Self::Untranslatable(_) => "untranslatable",
        }
    }

    /// One line for logs and the `attempts` list.
    pub fn describe(&self) -> String {
        match self {
            Self::Status {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            Self::Timeout => "timed out".into(),
            Self::StreamDuration(d) => format!(
                "the stream ran past max_stream_duration ({})",
                humantime::format_duration(*d)
            ),
            Self::DeadlineSpent => "request deadline spent".into(),
            Self::Connect(e) => format!("connect error: {e}"),
            Self::Transport(e) => format!("connection error: {e}"),
            Self::InvalidBody(e) => format!("invalid provider reply: {e}"),
            Self::Untranslatable(e) => {
                format!("cannot translate the request for this provider: {e}")
            }
        }
    }
}
