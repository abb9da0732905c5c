//! OpenAI's error shape for the HTTP door (docs/contract.md §9): `{"error": {"message", "type",
//! "param", "code", "kind", "request_id", "attempts"}}` with the status the contract's table
//! gives each kind, so that every OpenAI SDK raises its own typed error and retries what it
//! should (`Retry-After` on 429 and 503 when known).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;

use crate::protocol::{AttemptRecord, ErrorKind};
use crate::routing::fallback::Failed;

/// A refusal or failure, ready to answer.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind_type: &'static str,
    /// Our `kind` (the NATS `Llm-Error`).
    pub kind: ErrorKind,
    /// `kind`, or a finer reason of the HTTP door (`model_not_found`, `invalid_api_key`, ...).
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub request_id: Option<Arc<str>>,
    pub attempts: Box<[AttemptRecord]>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind_type: &'static str,
    param: Option<&'static str>,
    code: &'static str,
    kind: &'static str,
    request_id: Option<&'a str>,
    attempts: &'a [AttemptRecord],
}

/// The status and OpenAI `type` of each error kind.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        // A provider refused our key: the caller's own key is fine, so not 401.
        ErrorKind::Auth => (StatusCode::BAD_GATEWAY, "server_error"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorKind::BudgetExceeded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        ErrorKind::InvalidOutput => (StatusCode::BAD_GATEWAY, "server_error"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

impl HttpError {
    /// An error of `kind` with the contract's status and type.
    pub fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        let (status, kind_type) = status_of(kind);
        Self {
            status,
            kind_type,
            kind,
            code: kind.as_str(),
            message: message.into(),
            param: None,
            request_id: None,
            attempts: Box::default(),
            retry_after: (kind == ErrorKind::Overloaded).then_some(1),
        }
    }

    /// The engine's failure of request `request_id`, with `Retry-After` when the engine knows
    /// when it lifts.
    pub fn failed(f: &Failed, request_id: &Arc<str>) -> Self {
        let mut e = Self::of(f.kind, f.message.clone());
        e.request_id = Some(request_id.clone());
        e.attempts = f.attempts.clone().into_boxed_slice();
        match f.retry_after {
            Some(wait) => e.retry_after(wait),
            None => e,
        }
    }

    /// No key, or a key no entry of `[[http.keys]]` holds.
    pub fn unauthorized(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind_type: "authentication_error",
            code: "invalid_api_key",
            ..Self::of(ErrorKind::Auth, message)
        }
    }

    /// The key may not use this model.
    pub fn forbidden(key: &str, model: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            kind_type: "permission_error",
            code: "model_not_allowed",
            param: Some("model"),
            ..Self::of(
                ErrorKind::Auth,
                format!("key `{key}` may not use model `{model}` (its `models` in [[http.keys]])"),
            )
        }
    }

    pub fn unknown_model(model: &str) -> Self {
        Self {
            code: "model_not_found",
            param: Some("model"),
            ..Self::of(
                ErrorKind::NotFound,
                format!(
                    "the model `{}` does not exist: name a deployment, a group or a task (GET /v1/models lists them)",
                    crate::protocol::headers::shorten(model)
                ),
            )
        }
    }

    pub fn too_large(max: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            ..Self::of(
                ErrorKind::InvalidRequest,
                format!("the body is over limits.max_body ({max} bytes)"),
            )
        }
    }

    /// No such path or method: OpenAI answers these as `not_found_error` too.
    pub fn no_route(method: &hyper::Method, path: &str) -> Self {
        Self {
            code: "unknown_url",
            ..Self::of(
                ErrorKind::NotFound,
                format!(
                    "no route {method} {}: this door serves POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models, GET /health/live and GET /health/ready",
                    crate::protocol::headers::shorten(path)
                ),
            )
        }
    }

    /// `Retry-After: wait`, in whole seconds rounded up and at least 1 (told 0, a client retries
    /// at once, into the same refusal).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX).max(1));
        self
    }

    /// The JSON body (also a stream's error event).
    pub fn body(&self) -> Bytes {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind_type: self.kind_type,
                param: self.param,
                code: self.code,
                kind: self.kind.as_str(),
                request_id: self.request_id.as_deref(),
                attempts: &self.attempts,
            },
        };
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_vec(&body).unwrap_or_default().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_contracts_status() {
        let expected = [
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::Auth, 502),
            (ErrorKind::NotFound, 404),
            (ErrorKind::RateLimited, 429),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Timeout, 504),
            (ErrorKind::BudgetExceeded, 429),
            (ErrorKind::InvalidOutput, 502),
            (ErrorKind::Overloaded, 503),
            (ErrorKind::Internal, 500),
        ];
        assert_eq!(expected.len(), ErrorKind::ALL.len());
        for (kind, status) in expected {
            assert_eq!(status_of(kind).0.as_u16(), status, "{kind:?}");
        }
        let e = HttpError::of(ErrorKind::Overloaded, "full");
        assert_eq!(e.retry_after, Some(1));
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
    }
}
