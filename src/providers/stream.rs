//! Streaming from a provider: its server-sent events, translated as they arrive into OpenAI
//! `chat.completion.chunk` JSON, one `Piece` per event. Each wire format brings its own
//! `StreamTranslator`; this file is the plumbing they share (SSE framing, the body bound, where a
//! stream ends), and names no format: a translator comes in as a `Box<dyn StreamTranslator>`.

use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use serde_json::Value;

use super::failure::Failure;
use super::http;
use crate::protocol::Usage;

/// What one provider event turned into.
#[derive(Debug, Default)]
pub struct Piece {
    /// `chat.completion.chunk` objects to forward, in order.
    pub chunks: Vec<Bytes>,
    /// The usage so far, when the event carried it.
    pub usage: Option<Usage>,
}

pub type PieceStream = Pin<Box<dyn Stream<Item = Result<Piece, Failure>> + Send>>;

/// One stream's translation from a provider's events into `Piece`s, made fresh for each stream
/// by its wire format. It keeps what the events said so far (ids, usage, tool call numbering).
pub trait StreamTranslator: Send {
    /// One SSE event (`event:` name, `data:` payload) → what to forward. An error ends the stream.
    fn on_event(&mut self, event: Option<&str>, data: &str) -> Result<Piece, Failure>;
    /// The event that completes the answer was seen: the body may end now, and nothing after it
    /// is read.
    fn done(&self) -> bool;
}

impl Piece {
    /// A piece of chunks a translator built as JSON values.
    pub fn of_values(chunks: &[Value], usage: Option<Usage>) -> Self {
        Self {
            chunks: chunks
                .iter()
                // Serializing a JSON value cannot fail.
                .map(|c| Bytes::from(serde_json::to_vec(c).unwrap_or_default()))
                .collect(),
            usage,
        }
    }
}

/// Reads an SSE response body and translates each event. The stream ends after the event that
/// completes the answer; a body that ends before it is a `Transport` failure (a cut stream), and
/// one that passes `limit` bytes in all fails as a reply body over the limit.
pub fn from_sse(
    response: reqwest::Response,
    limit: usize,
    translator: Box<dyn StreamTranslator>,
) -> PieceStream {
    from_chunks(response.bytes_stream(), limit, translator)
}

/// `from_sse` over any body: the SSE framing, the bound and the translation, without a socket.
pub fn from_chunks<S>(chunks: S, limit: usize, translator: Box<dyn StreamTranslator>) -> PieceStream
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    let events = http::bounded(chunks, limit).eventsource();
    let state = (Box::pin(events), translator);
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let (mut events, mut translator) = state?;
        if translator.done() {
            return None;
        }
        loop {
            match events.next().await {
                Some(Ok(e)) => {
                    let name = (e.event != "message").then_some(e.event.as_str());
                    if e.data.is_empty() {
                        continue;
                    }
                    let piece = translator.on_event(name, &e.data);
                    return Some(match piece {
                        Ok(p) => (Ok(p), Some((events, translator))),
                        Err(f) => (Err(f), None),
                    });
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    return Some((Err(e.into_failure()), None));
                }
                // Not quoted: the parser's error holds the rest of the body.
                Some(Err(EventStreamError::Utf8(_))) => {
                    let f = Failure::InvalidBody("the event stream is not UTF-8".into());
                    return Some((Err(f), None));
                }
                Some(Err(EventStreamError::Parser(_))) => {
                    let f = Failure::InvalidBody("the body is not an event stream".into());
                    return Some((Err(f), None));
                }
                None if translator.done() => return None,
                None => {
                    return Some((
                        Err(Failure::Transport(
                            "stream ended before its last event".into(),
                        )),
                        None,
                    ));
                }
            }
        }
    }))
}

/// A stream of pieces already made (the simulated provider).
pub fn from_pieces(pieces: Vec<Result<Piece, Failure>>) -> PieceStream {
    Box::pin(futures::stream::iter(pieces))
}
