//! What a failed call means for the request and for the deployment: a `Decision`. The table that
//! makes it is routing's failure policy (`crate::routing::policy`); each deployment is given it
//! as a `FailurePolicy` in its `Args`, so that the call that saw the failure can update the
//! breaker, limits and cool-down before the walk goes on, without this floor naming routing.

use std::time::Duration;

use crate::protocol::ErrorKind;
use crate::providers::Failure;

/// What is done about a failure: the walk reads `kind` and `fall_back`, the deployment's breaker
/// and limits `count` and `cool_down`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The error kind if this failure ends the request (or is the last one).
    pub kind: ErrorKind,
    /// Try the next candidate.
    pub fall_back: bool,
    /// Counts as a circuit-breaker failure.
    pub count: bool,
    /// Keep this deployment out of routing for this long (`Retry-After`).
    pub cool_down: Option<Duration>,
}

/// Turns a `Failure` into its `Decision`: one table for every deployment (docs/contract.md §2).
pub trait FailurePolicy: Send + Sync {
    fn decide(&self, failure: &Failure) -> Decision;
}
