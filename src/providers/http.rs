//! The one HTTP client every deployment shares: rustls with the `ring` provider (the same crypto
//! the NATS client uses, so the binary carries one TLS stack), keep-alive pools, no Nagle delay.
//! Also what is read off every response the same way, whatever its wire format: `Retry-After`,
//! bounded bodies, and URLs fit to print. `send.rs` uses these to send; no wire format does.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::failure::Failure;

/// Builds the shared client. Per-call timeouts are applied by the caller, so the client has none.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    // Fails only when a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Longer header values are not a number or a date anyone meant: ignored unparsed.
const MAX_RETRY_AFTER_LEN: usize = 64;

/// `Retry-After` as seconds or an HTTP date, and OpenAI's `retry-after-ms`. Total: a value that
/// is not a non-negative finite number or an IMF date (negative, NaN, `inf`, garbage, too long)
/// counts as absent, and a huge number saturates at `Duration::MAX` instead of overflowing.
/// Bounding the wait is policy, and is the failure policy's (`crate::routing::policy`, `breaker.max_retry_after`).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| v.len() <= MAX_RETRY_AFTER_LEN)
    };
    if let Some(ms) = value("retry-after-ms").and_then(non_negative) {
        return Some(seconds(ms / 1000.0));
    }
    let value = value("retry-after")?;
    if let Some(secs) = non_negative(value) {
        return Some(seconds(secs));
    }
    let at = httpdate_parse(value)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A non-negative finite number (`inf` and `NaN` parse as `f64` but are not a wait).
fn non_negative(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)
}

/// `Duration::from_secs_f64` panics above `u64::MAX` seconds; this saturates.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers send in `Retry-After`.
fn httpdate_parse(s: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(&imf_to_rfc3339(s)?).ok()
}

fn imf_to_rfc3339(s: &str) -> Option<String> {
    let mut it = s.split_whitespace();
    it.next().filter(|weekday| weekday.ends_with(','))?;
    let day: u32 = it.next().filter(|d| d.len() <= 2)?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u32 = it.next().filter(|y| y.len() == 4)?.parse().ok()?;
    let time = it
        .next()
        .filter(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit() || b == b':'))?;
    if it.next() != Some("GMT") || it.next().is_some() {
        return None;
    }
    Some(format!("{year:04}-{month:02}-{day:02} {time}"))
}

/// A URL fit for logs, error texts and traces: `scheme://host[:port]/path`, without the userinfo
/// (credentials), the query (where some APIs take `?key=`) and the fragment. Text that does not
/// parse as a URL is cut the same way by hand, so that nothing after an `@` of the authority or a
/// `?`/`#` is ever printed.
pub fn redact_url(url: &str) -> String {
    if let Ok(u) = reqwest::Url::parse(url)
        && let Some(host) = u.host_str()
    {
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        return format!("{}://{host}{port}{}", u.scheme(), u.path());
    }
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or_default();
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

/// What a body longer than the deployment's `max_reply_body` fails with: like a garbage body, it
/// falls back and counts for the breaker.
pub fn too_large(limit: usize) -> Failure {
    Failure::InvalidBody(format!("reply body over {limit} bytes"))
}

/// Reads a whole response body, success or error, failing as soon as it passes `limit` bytes (at
/// once when its `Content-Length` says it will), so that a provider cannot make us hold more.
pub async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, Failure> {
    let length = response.content_length();
    if length.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Most bodies come in one chunk: that one is kept as it is, without a copy.
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        let held = first.as_ref().map_or(0, Bytes::len) + more.len();
        if chunk.len() > limit.saturating_sub(held) {
            return Err(too_large(limit));
        }
        match first.take() {
            None if more.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    let hint = length
                        .map_or(0, |n| n as usize)
                        .max(earlier.len() + chunk.len());
                    more.reserve(hint);
                    more.extend_from_slice(&earlier);
                }
                more.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| more.freeze()))
}

/// Why a bounded byte stream stopped.
#[derive(Debug)]
pub enum BodyError {
    Transport(reqwest::Error),
    TooLarge(usize),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL is left out: it may carry a key.
            Self::Transport(_) => write!(f, "the connection broke"),
            Self::TooLarge(limit) => write!(f, "reply body over {limit} bytes"),
        }
    }
}

impl BodyError {
    pub fn into_failure(self) -> Failure {
        match self {
            Self::Transport(e) => Failure::Transport(format!("stream broken: {}", describe(e))),
            Self::TooLarge(limit) => too_large(limit),
        }
    }
}

/// A body's chunks, ending with `TooLarge` once more than `limit` bytes came in all: the SSE
/// reader buffers an unfinished line, and a line that never ends must not grow without bound.
pub fn bounded<S>(chunks: S, limit: usize) -> impl futures::Stream<Item = Result<Bytes, BodyError>>
where
    S: futures::Stream<Item = Result<Bytes, reqwest::Error>>,
{
    use futures::StreamExt;
    chunks.scan(Some(0usize), move |seen, chunk| {
        let item = match (seen.as_mut(), chunk) {
            (None, _) => None,
            (Some(_), Err(e)) => Some(Err(BodyError::Transport(e))),
            (Some(n), Ok(c)) if c.len() > limit.saturating_sub(*n) => {
                *seen = None;
                Some(Err(BodyError::TooLarge(limit)))
            }
            (Some(n), Ok(c)) => {
                *n += c.len();
                Some(Ok(c))
            }
        };
        futures::future::ready(item)
    })
}

/// A failed send or read as a `Failure`. `reqwest::Error`'s own text names the URL, which may
/// carry credentials or a `?key=`: the text here has the redacted URL instead.
pub fn transport(e: reqwest::Error) -> Failure {
    if e.is_connect() {
        Failure::Connect(describe(e))
    } else if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Transport(describe(e))
    }
}

/// `e` and its sources, its URL redacted.
fn describe(e: reqwest::Error) -> String {
    let url = e.url().map(|u| redact_url(u.as_str()));
    let e = e.without_url();
    let mut text = e.to_string();
    if let Some(url) = url {
        text.push_str(&format!(" ({url})"));
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_in_its_three_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}

#[cfg(test)]
mod bounds {
    use super::*;
    use futures::StreamExt;
    use reqwest::header::{HeaderMap, HeaderValue};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn with(name: &'static str, value: &str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        retry_after(&h)
    }

    #[test]
    fn huge_retry_after_saturates_instead_of_panicking() {
        assert_eq!(with("retry-after", "1e20"), Some(Duration::MAX));
        assert_eq!(with("retry-after", "1e300"), Some(Duration::MAX));
        // Fits in a Duration, but `now + d` would not fit in an Instant: the failure policy caps it.
        assert_eq!(
            with("retry-after", "1e19"),
            Some(Duration::from_secs(10_000_000_000_000_000_000))
        );
        assert_eq!(
            with("retry-after", "31536000"),
            Some(Duration::from_secs(31_536_000))
        );
        assert_eq!(with("retry-after-ms", "1e30"), Some(Duration::MAX));
        assert_eq!(with("retry-after", "0"), Some(Duration::ZERO));
        assert_eq!(
            with("retry-after", "0.25"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(with("retry-after", " 3 "), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_that_is_not_a_wait_counts_as_absent() {
        for bad in [
            "-5",
            "-0.001",
            "NaN",
            "nan",
            "inf",
            "+inf",
            "-inf",
            "infinity",
            "soon",
            "",
            "5s",
            "1,5",
            "0x10",
            "Sun, 06 Nov",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 99 Foo 1994 x GMT",
            "Sun, 06 Nov 99999 08:49:37 GMT",
            "Sun, 31 Feb 2030 08:49:37 GMT",
            "Sun, 06 Nov 2030 99:99:99 GMT",
            "Sun, 06 Nov 2030 08:49:37 GMT trailing",
        ] {
            assert_eq!(with("retry-after", bad), None, "retry-after: {bad:?}");
            assert_eq!(with("retry-after-ms", bad), None, "retry-after-ms: {bad:?}");
        }
        let long = "9".repeat(MAX_RETRY_AFTER_LEN + 1);
        assert_eq!(with("retry-after", &long), None, "absurdly long");
        let long = format!("{}1", "0".repeat(10_000));
        assert_eq!(with("retry-after", &long), None, "absurdly long");
        // Not text at all.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(retry_after(&h), None);
        // A bad `retry-after-ms` leaves `retry-after` to say it.
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("NaN"));
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_as_a_future_date() {
        let at = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = humantime::format_rfc3339_seconds(at).to_string();
        // 2026-12-01T08:49:37Z → Tue, 01 Dec 2026 08:49:37 GMT (the weekday is not checked).
        let (ymd, time) = date.trim_end_matches('Z').split_once('T').unwrap();
        let mut ymd = ymd.split('-');
        let (y, m, d) = (
            ymd.next().unwrap(),
            ymd.next().unwrap(),
            ymd.next().unwrap(),
        );
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months[m.parse::<usize>().unwrap() - 1];
        let wait = with("retry-after", &format!("Mon, {d} {month} {y} {time} GMT")).unwrap();
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }

    #[test]
    fn redacted_urls_keep_scheme_host_port_and_path_only() {
        for (url, redacted) in [
            (
                "http://user:secret@127.0.0.1:1/v1?key=abc",
                "http://127.0.0.1:1/v1",
            ),
            (
                "https://api.example.com/v1beta/models/m:streamGenerateContent?alt=sse&key=abc#frag",
                "https://api.example.com/v1beta/models/m:streamGenerateContent",
            ),
            ("https://key@api.openai.com", "https://api.openai.com/"),
            (
                "https://api.anthropic.com:443/v1",
                "https://api.anthropic.com/v1",
            ),
            // Not URLs: cut by hand the same way.
            ("http://user:secret@[bad/v1?key=abc", "http://[bad/v1"),
            ("user:secret@host/path#x", "host/path"),
            ("garbage", "garbage"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    /// Serves one response: `head` as is, then `body` in pieces of 1000 bytes, in chunked
    /// encoding if `chunked`.
    async fn serve(head: &'static str, body: Vec<u8>, chunked: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(head.as_bytes()).await;
            for piece in body.chunks(1000) {
                let out = if chunked {
                    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                    out
                } else {
                    piece.to_vec()
                };
                if socket.write_all(&out).await.is_err() {
                    return;
                }
            }
            if chunked {
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
        });
        url
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

    async fn get(url: &str) -> reqwest::Response {
        client().unwrap().get(url).send().await.unwrap()
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_and_no_further() {
        let url = serve(CHUNKED, vec![b'x'; 5000], true).await;
        assert_eq!(read_body(get(&url).await, 5000).await.unwrap().len(), 5000);
        let url = serve(CHUNKED, vec![b'x'; 5000], true).await;
        assert_eq!(
            read_body(get(&url).await, 4999).await.unwrap_err(),
            Failure::InvalidBody("reply body over 4999 bytes".into())
        );
        // A Content-Length over the limit fails before any of the body is read.
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 41943040\r\n\r\n";
        let url = serve(head, b"{}".to_vec(), false).await;
        assert_eq!(
            read_body(get(&url).await, 1 << 20).await.unwrap_err(),
            Failure::InvalidBody("reply body over 1048576 bytes".into())
        );
    }

    #[tokio::test]
    async fn a_stream_is_bounded_in_all_even_when_its_line_never_ends() {
        // One SSE line, never terminated: without the bound it would be buffered forever.
        let url = serve(CHUNKED, vec![b'x'; 64 * 1024], true).await;
        let translator = Box::new(super::super::openai::StreamState::default());
        let mut s = super::super::stream::from_sse(get(&url).await, 10_000, translator);
        assert_eq!(
            s.next().await.unwrap().unwrap_err(),
            Failure::InvalidBody("reply body over 10000 bytes".into())
        );
        assert!(s.next().await.is_none());
        let chunks = futures::stream::iter(
            (0..4).map(|_| Ok::<_, reqwest::Error>(Bytes::from_static(b"abc"))),
        );
        let seen: Vec<_> = bounded(chunks, 10).collect().await;
        assert!(matches!(
            seen.as_slice(),
            [Ok(_), Ok(_), Ok(_), Err(BodyError::TooLarge(10))]
        ));
    }

    #[tokio::test]
    async fn transport_errors_name_no_credentials_or_query() {
        let e = client()
            .unwrap()
            .get("http://user:secret@127.0.0.1:1/v1?key=abc")
            .send()
            .await
            .unwrap_err();
        let f = transport(e);
        assert!(matches!(f, Failure::Connect(_)), "{f:?}");
        let text = f.describe();
        assert!(text.contains("127.0.0.1:1/v1"), "{text}");
        assert!(!text.contains("secret") && !text.contains("abc"), "{text}");
    }
}
