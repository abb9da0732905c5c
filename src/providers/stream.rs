//! Streaming from a provider: its server-sent events, translated as they arrive into OpenAI
//! `chat.completion.chunk` JSON, one `Piece` per event. Each wire format brings its own
//! `StreamState` (the translation); this file is the plumbing they share.

use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::{Failure, anthropic, gemini, http, openai};
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

/// The per-provider translation of a stream.
pub enum Translator {
    OpenAi(openai::StreamState),
    Anthropic(anthropic::StreamState),
    Gemini(gemini::StreamState),
}

impl Translator {
    fn on_event(&mut self, event: Option<&str>, data: &str) -> Result<Piece, Failure> {
        let (chunks, usage) = match self {
            Self::OpenAi(s) => return s.on_event(event, data),
            Self::Anthropic(s) => (s.on_event(event, data)?, s.usage()),
            Self::Gemini(s) => (s.on_event(event, data)?, s.usage()),
        };
        Ok(Piece {
            chunks: chunks
                .iter()
                // Serializing a JSON value cannot fail.
                .map(|c| Bytes::from(serde_json::to_vec(c).unwrap_or_default()))
                .collect(),
            usage,
        })
    }

    fn done(&self) -> bool {
        match self {
            Self::OpenAi(s) => s.done(),
            Self::Anthropic(s) => s.done(),
            Self::Gemini(s) => s.done(),
        }
    }
}

/// Reads an SSE response body and translates each event. The stream ends after the event that
/// completes the answer; a body that ends before it is a `Transport` failure (a cut stream), and
/// one that passes `limit` bytes in all fails as a reply body over the limit.
pub fn from_sse(response: reqwest::Response, limit: usize, translator: Translator) -> PieceStream {
    from_chunks(response.bytes_stream(), limit, translator)
}

/// `from_sse` over any body: the SSE framing, the bound and the translation, without a socket.
pub fn from_chunks<S>(chunks: S, limit: usize, translator: Translator) -> PieceStream
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
