//! Error kinds (the contract's low-cardinality `kind` strings) and the failure reply body, which
//! lists every attempt so a caller can see which provider failed how.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    Auth,
    NotFound,
    RateLimited,
    Unavailable,
    Timeout,
    BudgetExceeded,
    InvalidOutput,
    /// This instance already holds `limits.max_in_flight` requests.
    Overloaded,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        Self::InvalidRequest,
        Self::Auth,
        Self::NotFound,
        Self::RateLimited,
        Self::Unavailable,
        Self::Timeout,
        Self::BudgetExceeded,
        Self::InvalidOutput,
        Self::Overloaded,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Auth => "auth",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::BudgetExceeded => "budget_exceeded",
            Self::InvalidOutput => "invalid_output",
            Self::Overloaded => "overloaded",
            Self::Internal => "internal",
        }
    }
}

/// One try at one deployment, as the failure reply lists it. A deployment skipped before the call
/// (open circuit, at its limit, cooling down) is listed too, with `status: null` and `latency_ms: 0`.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub deployment: String,
    pub status: Option<u16>,
    pub error: String,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    pub message: String,
    pub status: Option<u16>,
    pub request_id: String,
    pub attempts: Vec<AttemptRecord>,
    /// Tokens a stream used before it broke, when the provider had said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::protocol::Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}
