//! HTTP/1.1 on a raw `TcpStream` for the fake providers: reading requests
//! (with `content-length` or chunked bodies, and `100-continue`), writing
//! whole responses, and writing chunked responses one piece at a time.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Larger request heads are rejected with 400.
const MAX_HEAD: usize = 64 * 1024;

/// A request as read off the wire.
pub(super) struct Request {
    pub method: String,
    /// The request target as sent, query included.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// `body` parsed as JSON, or `Null`.
    pub json: Value,
}

impl Request {
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The query string's `name=value` pairs (not percent-decoded).
    pub fn query(&self) -> impl Iterator<Item = (&str, &str)> {
        self.path
            .split_once('?')
            .map_or("", |(_, q)| q)
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// One client connection with its read buffer (which may already hold the
/// start of the next request).
pub(super) struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads more bytes into the buffer; `false` on end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(4 * 1024);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The next request, or `None` if the client closed the connection
    /// cleanly between requests.
    pub async fn read_request(&mut self) -> io::Result<Option<Request>> {
        let head_len = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("request head too large"));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        };
        let head = self.buf.split_to(head_len + 4);
        let head = std::str::from_utf8(&head[..head_len])
            .map_err(|_| invalid("request head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split_whitespace();
        let (Some(method), Some(path), Some(_version)) = (
            request_line.next(),
            request_line.next(),
            request_line.next(),
        ) else {
            return Err(invalid("malformed request line"));
        };
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| invalid("malformed header"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect::<io::Result<Vec<_>>>()?;

        if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let chunked = find_header(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            self.read_chunked_body().await?
        } else {
            let len = match find_header(&headers, "content-length") {
                Some(v) => v.parse().map_err(|_| invalid("bad content-length"))?,
                None => 0,
            };
            self.read_exact(len).await?
        };
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Some(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            body,
            json,
        }))
    }

    async fn read_exact(&mut self, len: usize) -> io::Result<Bytes> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(pos + 2);
                return String::from_utf8(line[..pos].to_vec())
                    .map_err(|_| invalid("line is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn read_chunked_body(&mut self) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Skip any trailers up to the terminating empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body.freeze());
            }
            body.extend_from_slice(&self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }

    /// Sends a complete response with a JSON content type.
    pub async fn send(
        &mut self,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> io::Result<()> {
        let mut out = response_head(status, extra, body.len(), close).into_bytes();
        out.extend_from_slice(body);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Sends the head of a 200 response whose body follows in chunks
    /// ([`Conn::send_chunk`], then [`Conn::end_chunks`]).
    pub async fn start_chunks(&mut self, content_type: &str, close: bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
        );
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.flush().await
    }

    /// Sends `data` as one chunk (nothing if it is empty: an empty chunk
    /// would end the body).
    pub async fn send_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// The last chunk, which ends the body; the connection can be reused.
    pub async fn end_chunks(&mut self) -> io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n").await?;
        self.stream.flush().await
    }

    /// Waits for `duration` (forever if `None`) while watching the client.
    /// Returns `false` as soon as the client closes the connection. Bytes that
    /// arrive meanwhile are kept in the buffer for the next request.
    pub async fn idle(&mut self, duration: Option<Duration>) -> bool {
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            self.buf.reserve(1024);
            tokio::select! {
                () = &mut sleep => return true,
                read = self.stream.read_buf(&mut self.buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return false;
                    }
                }
            }
        }
    }
}

pub(super) fn response_head(
    status: u16,
    extra: &[(&str, &str)],
    content_length: usize,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n",
        reason(status)
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

pub(super) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}
