//! A reply as it goes on the wire (docs/contract.md §1): the `Llm-*` headers and the body. A
//! success carries the `chat.completion` bytes as they came; a failure the error body. The engine
//! says what happened (`engine::ChatOutcome::into_reply`); how it is spelled lives here.

use std::time::Duration;

use bytes::Bytes;

use super::headers;
use super::{ErrorBody, ErrorDetail};

/// `Llm-*` headers and a body, ready to publish.
pub struct Reply {
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// What a success reply's headers tell the caller.
pub struct ServedBy<'a> {
    pub deployment: &'a str,
    pub provider: &'a str,
    /// Provider calls made, the one that answered included.
    pub attempts: u32,
    pub fallback: bool,
    pub route_reason: &'a str,
    pub cost_usd: f64,
    /// Embeddings: the vector space(s) that answered.
    pub space: Option<&'a str>,
}

impl Reply {
    /// A success: `body` is the `chat.completion` (empty for a stream's closing message).
    pub fn success(
        request_id: &str,
        streamed: bool,
        latency: Duration,
        by: &ServedBy<'_>,
        body: Bytes,
    ) -> Self {
        let mut h = Self::opening(request_id, streamed.then_some("end"));
        h.push((headers::DEPLOYMENT, by.deployment.to_string()));
        h.push((headers::PROVIDER, by.provider.to_string()));
        h.push((headers::ATTEMPTS, by.attempts.to_string()));
        h.push((headers::FALLBACK, by.fallback.to_string()));
        h.push((headers::ROUTE_REASON, by.route_reason.to_string()));
        h.push((headers::LATENCY_MS, latency.as_millis().to_string()));
        h.push((headers::COST_USD, format_usd(by.cost_usd)));
        if let Some(space) = by.space {
            h.push((headers::EMBEDDING_SPACE, space.to_string()));
        }
        Self { headers: h, body }
    }

    /// A failure: `Llm-Error` and the error body.
    pub fn failure(
        streamed: bool,
        latency: Duration,
        route_reason: Option<&str>,
        error: ErrorDetail,
    ) -> Self {
        let mut h = Self::opening(&error.request_id, streamed.then_some("error"));
        h.push((headers::ERROR, error.kind.as_str().to_string()));
        if let Some(r) = route_reason {
            h.push((headers::ROUTE_REASON, r.to_string()));
        }
        h.push((headers::LATENCY_MS, latency.as_millis().to_string()));
        // Serializing plain structs of strings and numbers cannot fail.
        let body = serde_json::to_vec(&ErrorBody { error }).unwrap_or_default();
        Self {
            headers: h,
            body: body.into(),
        }
    }

    /// `Llm-Request-Id`, and `Llm-Stream` on the message that closes a stream.
    fn opening(request_id: &str, stream_end: Option<&str>) -> Vec<(&'static str, String)> {
        let mut h = Vec::with_capacity(9);
        h.push((headers::REQUEST_ID, request_id.to_string()));
        if let Some(end) = stream_end {
            h.push((headers::STREAM, end.to_string()));
        }
        h
    }
}

/// Dollars to the 1e-10 as a number, as `format_usd` writes them: a cost split between the items
/// of one call (`x * share`) is written `6.6e-7`, not `6.599999999999999e-7`.
pub fn round_usd(x: f64) -> f64 {
    usd_units(x).map_or(x, |u| u as f64 / 1e10)
}

/// Dollars in whole 1e-10 units, where they fit an integer (below ~$1.8e9); a cost above zero is
/// never 0 units.
fn usd_units(x: f64) -> Option<u64> {
    let x = if x > 0.0 && x < 1e-10 { 1e-10 } else { x };
    let units = (x * 1e10).round();
    // In range, so the cast is exact.
    (0.0..1.8e19).contains(&units).then_some(units as u64)
}

/// Dollars to the 1e-10 (a hundredth of a micro-dollar), without float noise or trailing zeros.
pub fn format_usd(x: f64) -> String {
    // Whole units written with itoa, not float formatting with a precision (~1k instructions on
    // every reply).
    let Some(units) = usd_units(x) else {
        let s = format!("{x:.10}");
        let s = s.trim_end_matches('0');
        return s.strip_suffix('.').unwrap_or(s).to_string();
    };
    let (whole, frac) = (units / 10_000_000_000, units % 10_000_000_000);
    let mut out = String::with_capacity(24);
    out.push_str(itoa::Buffer::new().format(whole));
    if frac > 0 {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(frac);
        out.push('.');
        out.extend(std::iter::repeat_n('0', 10 - digits.len()));
        out.push_str(digits.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    #[test]
    fn costs_print_without_float_noise() {
        assert_eq!(format_usd(0.000006440000000000001), "0.00000644");
        assert_eq!(format_usd(1.5), "1.5");
        assert_eq!(format_usd(0.0), "0");
        assert_eq!(format_usd(1e-13), "0.0000000001");
        assert_eq!(format_usd(0.0000123), "0.0000123");
        assert_eq!(format_usd(12.25), "12.25");
        assert_eq!(format_usd(0.1 + 0.2), "0.3");
        assert_eq!(format_usd(3e9), "3000000000");
        // The numbers in batch output rows, rounded the same way.
        let row = |x: f64| serde_json::to_string(&round_usd(x)).unwrap();
        assert_eq!(row(6.599999999999999e-7), "6.6e-7");
        assert_eq!(row(3.4000000000000003e-7), "3.4e-7");
        assert_eq!(row(0.0000234), "0.0000234");
        assert_eq!(row(1e-13), "1e-10");
        assert_eq!(row(0.0), "0.0");
    }

    #[test]
    fn a_failure_closing_a_stream_says_so_and_carries_its_kind() {
        let error = ErrorDetail {
            kind: ErrorKind::Timeout,
            message: "cut".into(),
            status: None,
            request_id: "r-1".into(),
            attempts: Vec::new(),
            usage: None,
        };
        let r = Reply::failure(true, Duration::from_millis(5), None, error);
        let h: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            h,
            [
                ("Llm-Request-Id", "r-1"),
                ("Llm-Stream", "error"),
                ("Llm-Error", "timeout"),
                ("Llm-Latency-Ms", "5"),
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["kind"], "timeout");
    }
}
