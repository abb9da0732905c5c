//! What our trace spans say beyond their fields, the same in every build: numbers as signed
//! integers, and a failure as the span's `Error` status.
//!
//! tracing-opentelemetry exports a field recorded as `i64` as an OTLP `Int` but one recorded as
//! `u64` (which every unsigned type becomes) through its `Debug` fallback, as a string; so every
//! count, port and status code goes through [`int`]. The status is set on the OpenTelemetry span
//! itself rather than through an `otel.status_code` field, so the log lines (which print a span's
//! fields) read as they did; without the `otlp` feature, or with no exporter configured, it is a
//! no-op.

/// An unsigned count, port or status code as the `i64` an OTLP `Int` attribute holds, saturating
/// at `i64::MAX`.
pub fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The longest status description we send: the human line, not a provider's whole error body.
#[cfg(any(feature = "otlp", test))]
const MAX_DESCRIPTION: usize = 200;

/// Marks `span` failed (OpenTelemetry status `Error`), with a short description.
pub fn fail(span: &tracing::Span, description: &str) {
    #[cfg(feature = "otlp")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.set_status(opentelemetry::trace::Status::error(short(description)));
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, description);
}

/// `text` cut to `MAX_DESCRIPTION` bytes, on a character boundary, with an ellipsis when cut.
#[cfg(any(feature = "otlp", test))]
fn short(text: &str) -> String {
    if text.len() <= MAX_DESCRIPTION {
        return text.to_string();
    }
    let mut end = MAX_DESCRIPTION;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_values_become_i64_and_saturate() {
        assert_eq!(int(8u64), 8);
        assert_eq!(int(503u16), 503);
        assert_eq!(int(3usize), 3);
        assert_eq!(int(u64::MAX), i64::MAX);
    }

    #[test]
    fn long_descriptions_are_cut_on_a_character_boundary() {
        assert_eq!(short("HTTP 503: busy"), "HTTP 503: busy");
        let long = "é".repeat(150);
        let cut = short(&long);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_DESCRIPTION + '…'.len_utf8());
    }
}
