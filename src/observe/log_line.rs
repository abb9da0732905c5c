//! The log line: one per event, each field once, written straight into the line's buffer.
//!
//! tracing-subscriber's own formatters print every field through `Debug` (a `&str` is quoted and
//! escaped char by char), format the timestamp from scratch on each line and, for text, pass
//! each piece through an ANSI style even when colours are off: ~13 k instructions for the one
//! `info` line a request's attempt logs, 8 % of a request's whole cost (callgrind, issue #14).
//! These write the same content for a fraction of that: the timestamp's date and time of day
//! are formatted once a second per thread, numbers with `itoa`, strings as they are unless they
//! need quoting.
//!
//! Text: `2026-12-01T17:04:35.123456Z  INFO switchyard::deployment::call: attempt succeeded
//! request_id=r-1 deployment=primary provider=openai attempt=1 status=200`. A value with a space,
//! a quote, `=` or a control character (an ANSI escape a provider put in an error message) is
//! written quoted and escaped, so one event is one line and cannot forge another.
//! JSON (`--log-format json`): `{"timestamp":…,"level":"INFO","target":…,"message":…,` then each
//! field at the top level, numbers and booleans as JSON numbers and booleans.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The line's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    Json,
}

/// The formatter handed to `tracing_subscriber::fmt::layer().event_format(..)`.
#[derive(Debug, Clone, Copy)]
pub struct LogLine(pub Shape);

impl<S, N> FormatEvent<S, N> for LogLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` crate record (rustls logs through it) carries its real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        match self.0 {
            Shape::Text => {
                timestamp(&mut w)?;
                let level = level_text(meta.level());
                if w.has_ansi_escapes() {
                    write!(w, " \x1b[{}m{level}\x1b[0m ", level_colour(meta.level()))?;
                } else {
                    w.write_char(' ')?;
                    w.write_str(level)?;
                    w.write_char(' ')?;
                }
                w.write_str(meta.target())?;
                w.write_char(':')?;
                let mut v = TextFields {
                    w: &mut w,
                    r: Ok(()),
                };
                event.record(&mut v);
                v.r?;
            }
            Shape::Json => {
                w.write_str("{\"timestamp\":\"")?;
                timestamp(&mut w)?;
                w.write_str("\",\"level\":\"")?;
                w.write_str(level_text(meta.level()).trim_start())?;
                w.write_str("\",\"target\":")?;
                json_str(&mut w, meta.target())?;
                let mut v = JsonFields {
                    w: &mut w,
                    r: Ok(()),
                };
                event.record(&mut v);
                v.r?;
                w.write_char('}')?;
            }
        }
        w.write_char('\n')
    }
}

/// Fields `tracing-log` adds to a `log` record; `normalized_metadata` has already used them.
fn from_log_crate(field: &Field) -> bool {
    field.name().starts_with("log.")
}

fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

fn level_colour(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

thread_local! {
    /// The second last formatted on this thread, and its `2026-12-01T17:04:35` text.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-01T17:04:35.123456Z`, UTC; the date and time of day formatted once a second.
fn timestamp(w: &mut impl fmt::Write) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            // `2026-12-01T17:04:35Z` without its `Z`.
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
            text.pop();
            *second = secs;
        }
        w.write_str(text)
    })?;
    let micros = now.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    w.write_char('.')?;
    for _ in digits.len()..6 {
        w.write_char('0')?;
    }
    w.write_str(digits)?;
    w.write_char('Z')
}

/// ` name=value` for each field; the message first, bare.
struct TextFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    r: fmt::Result,
}

impl TextFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        self.w.write_char(' ')?;
        if field.name() != "message" {
            self.w.write_str(field.name())?;
            self.w.write_char('=')?;
        }
        Ok(())
    }

    fn put(&mut self, field: &Field, f: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.r.is_ok() && !from_log_crate(field) {
            self.r = self.name(field).and_then(|()| f(self.w));
        }
    }
}

/// Whether a text value is written as it is: no space, quote, `=`, backslash or control
/// character, and not empty. Else it is quoted and escaped (`Debug` of `str`).
fn bare(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f)
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.put(field, |w| {
            if message || bare(value) {
                Escaped { w, json: false }.write_str(value)
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` (Display) and messages arrive here; control characters in them are escaped
        // so that a value cannot start a forged line or colour the terminal.
        self.put(field, |w| write!(Escaped { w, json: false }, "{value:?}"));
    }
}

/// `,"name":value` for each field.
struct JsonFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    r: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn put(&mut self, field: &Field, f: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.r.is_ok() && !from_log_crate(field) {
            self.r = (|| {
                self.w.write_char(',')?;
                json_str(self.w, field.name())?;
                self.w.write_char(':')?;
                f(self.w)
            })();
        }
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| json_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |w| {
            if value.is_finite() {
                w.write_str(ryu::Buffer::new().format_finite(value))
            } else {
                json_str(w, &value.to_string())
            }
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escaped { w, json: true }, "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string literal.
fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped { w, json: true }.write_str(s)?;
    w.write_char('"')
}

/// Writes through, escaping what may not appear as it is: for JSON, `"`, `\` and control
/// characters (as JSON escapes); for text, control characters (as Rust escapes).
struct Escaped<'a, W: fmt::Write> {
    w: &'a mut W,
    json: bool,
}

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most values (ids, names, messages) are printable ASCII with nothing to escape: one
        // look at the bytes, then written whole (the char-by-char search below decodes UTF-8).
        let json = self.json;
        if s.bytes()
            .all(|b| (b' '..0x7f).contains(&b) && !(json && (b == b'"' || b == b'\\')))
        {
            return self.w.write_str(s);
        }
        let special = |c: char| c.is_control() || (self.json && (c == '"' || c == '\\'));
        let mut rest = s;
        while let Some(at) = rest.find(special) {
            self.w.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match (self.json, c) {
                (true, '"') => self.w.write_str("\\\"")?,
                (true, '\\') => self.w.write_str("\\\\")?,
                (true, '\n') => self.w.write_str("\\n")?,
                (true, '\r') => self.w.write_str("\\r")?,
                (true, '\t') => self.w.write_str("\\t")?,
                (true, c) if (c as u32) < 0x10000 => write!(self.w, "\\u{:04x}", c as u32)?,
                // A C1 control above U+FFFF does not exist; kept for totality.
                (true, c) => self.w.write_char(c)?,
                (false, c) => write!(self.w, "{}", c.escape_default())?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.w.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// The lines logged while `f` runs, in `shape`.
    fn lines(shape: Shape, f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .event_format(LogLine(shape));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn attempt() {
        let id: Arc<str> = "r-1".into();
        tracing::info!(
            request_id = %id,
            deployment = "primary",
            provider = "openai",
            attempt = 1u32,
            status = 200,
            latency_ms = 12u64,
            falls_back = false,
            error = %"upstream said \"no\"\n\x1b[31mFAKE  INFO forged line",
            note = "C:\\dir \"x\"\u{85}end",
            "attempt succeeded"
        );
    }

    #[test]
    fn text_has_each_field_once_and_one_line_per_event() {
        let out = lines(Shape::Text, attempt);
        assert_eq!(out.lines().count(), 1, "{out}");
        let line = out.trim_end();
        // 2026-12-01T17:04:35.123456Z
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert!(
            rest.starts_with(
                " INFO switchyard::observe::log_line::tests: attempt succeeded request_id=r-1 \
                 deployment=primary provider=openai attempt=1 status=200 latency_ms=12 \
                 falls_back=false error="
            ),
            "{rest}"
        );
        assert_eq!(line.matches("r-1").count(), 1);
        assert!(!line.contains('\x1b'), "escapes are escaped: {line}");
        assert!(line.contains("\\n\\u{1b}[31mFAKE"), "{line}");
    }

    #[test]
    fn json_is_one_object_with_fields_at_the_top() {
        let out = lines(Shape::Json, attempt);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "attempt succeeded");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["provider"], "openai");
        assert_eq!(v["attempt"], 1);
        assert_eq!(v["falls_back"], false);
        assert_eq!(
            v["error"],
            "upstream said \"no\"\n\x1b[31mFAKE  INFO forged line"
        );
        // A `&str` value with JSON's specials and a control character outside ASCII.
        assert_eq!(v["note"], "C:\\dir \"x\"\u{85}end");
        assert!(humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn text_quotes_values_that_would_read_as_two() {
        let out = lines(Shape::Text, || {
            tracing::warn!(path = "a b", empty = "", eq = "k=v", "odd values");
        });
        assert!(
            out.contains(r#"odd values path="a b" empty="" eq="k=v""#),
            "{out}"
        );
    }
}
