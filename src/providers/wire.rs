//! The seam between our OpenAI-shaped request and one provider API: a `WireFormat` says where a
//! call goes, how the key is sent, what body to send, how to read the reply, the error text and a
//! stream's events. It does no I/O — `send.rs` sends for every format the same way — so that a
//! format is pure translation, tested without a socket, and adding a provider is one file that
//! implements this trait plus one arm where `Adapter::new` picks the format from the config.

use bytes::Bytes;

use super::failure::Failure;
use super::stream::StreamTranslator;
use crate::config::DeploymentConfig;
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

/// What a wire format read out of a 2xx reply.
#[derive(Debug)]
pub enum Answer {
    /// The provider's own bytes, already a complete `chat.completion` with `usage`: passed
    /// through untouched, with no re-serialization.
    Wire { body: Bytes, usage: Usage },
    /// A completion we built or must complete; serialized once.
    Built(ChatCompletion),
}

/// Where a provider takes its key.
#[derive(Clone, Copy)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and the APIs that speak it).
    Bearer,
    /// The key alone in this header (`x-api-key`, `x-goog-api-key`).
    Header(&'static str),
}

/// One provider API, as translation only. Every method is given the deployment, so that a format
/// holds no state and one value serves every deployment of its kind.
pub trait WireFormat: Send + Sync {
    /// The URL of a call (of a streamed call when `stream`), from the deployment's `api_base`.
    fn endpoint(&self, d: &DeploymentConfig, stream: bool) -> String;

    /// The header that carries the deployment's key.
    fn auth(&self) -> Auth;

    /// Headers every request of this format carries besides the key (an API version).
    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The JSON body for `req`, with `model`, the deployment's `extra_body` and (when
    /// `include_request_extra`) the caller's. A request this API cannot express fails here with
    /// `Failure::Untranslatable`, before anything is sent.
    fn build_body(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
        stream: bool,
    ) -> Result<Vec<u8>, Failure>;

    /// A 2xx body as our answer, or `Failure::InvalidBody` when it is not a reply of this API.
    fn parse_reply(&self, d: &DeploymentConfig, body: Bytes) -> Result<Answer, Failure>;

    /// The human message of an error body (`Failure::Status`'s `message`).
    fn error_message(&self, body: &[u8]) -> String;

    /// A fresh translator for one streamed reply.
    fn stream_translator(&self, d: &DeploymentConfig) -> Box<dyn StreamTranslator>;
}
