//! Provider batch APIs (docs/contract.md §11): many chat requests sent as one remote batch, answered
//! within hours at a discount. A capability beside the sync wire formats, not part of them: a
//! format that has a batch API implements [`BatchFormat`] (OpenAI's Batch API in `openai.rs`,
//! Anthropic's Message Batches in `anthropic.rs`), and `Adapter::new` gives a deployment with
//! `batch_api = true` a [`BatchClient`] over it (`client.rs`, the only I/O here).
//!
//! A `BatchFormat` does no I/O, as a `WireFormat` does none: it says what each HTTP call of the
//! batch's life is (upload, create, get, list, cancel, results) and reads what comes back. The
//! request bodies inside a batch are the sync ones: the deployment's `WireFormat` builds them, and
//! parses each answer, so a batch answer reads exactly as a sync reply would.

pub mod anthropic;
mod client;
mod multipart;
pub mod openai;

use super::wire::{Answer, WireFormat};
use crate::config::DeploymentConfig;

pub use client::{BatchClient, BatchError};

/// Where a remote batch stands, as Switchyard reads both APIs' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// OpenAI `validating`.
    Validating,
    /// Working on it (OpenAI `in_progress`, Anthropic `in_progress`).
    InProgress,
    /// OpenAI `finalizing`: done, the output files are being written.
    Finalizing,
    /// A cancel was asked for and has not taken effect yet (`cancelling` / `canceling`).
    Cancelling,
    /// Over: its results (whatever answered) can be read. OpenAI `completed`, `expired`,
    /// `cancelled`, `failed`; Anthropic `ended`.
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Validating => "validating",
            Phase::InProgress => "in_progress",
            Phase::Finalizing => "finalizing",
            Phase::Cancelling => "cancelling",
            Phase::Ended => "ended",
        }
    }
}

/// A remote batch as the provider describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteBatch {
    pub id: String,
    /// The provider's own status word (`in_progress`, `expired`, `ended`, ...), for status and logs.
    pub status: String,
    pub phase: Option<Phase>,
    /// Requests answered so far (succeeded or errored) and in all, when the provider says.
    pub done: u64,
    pub total: u64,
    /// Why the batch failed as a whole (OpenAI `failed`: the input did not validate).
    pub failed: Option<String>,
    /// Where the results are read from once it ended: OpenAI's output and error files,
    /// Anthropic's `results_url`.
    pub results: Vec<String>,
    /// The `metadata.switchyard_tag` it was created with (OpenAI; Anthropic keeps none).
    pub tag: Option<String>,
}

/// How one request of a batch came back.
#[derive(Debug)]
pub enum ItemAnswer {
    /// A reply, read by the deployment's wire format as a sync reply is.
    Answered(Answer),
    /// The provider refused or failed this request; the text says why.
    Errored(String),
    /// The batch's window closed before this request ran (not paid).
    Expired,
    /// The batch was cancelled before this request ran (not paid).
    Canceled,
}

/// One HTTP call of a batch's life, as a format describes it; `BatchClient` sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub post: bool,
    pub url: String,
    /// Content type and bytes (none for a GET or a bodiless POST).
    pub body: Option<(String, Vec<u8>)>,
}

impl Call {
    fn get(url: String) -> Call {
        Call {
            post: false,
            url,
            body: None,
        }
    }

    fn post(url: String, body: Option<(String, Vec<u8>)>) -> Call {
        Call {
            post: true,
            url,
            body,
        }
    }

    fn post_json(url: String, body: Vec<u8>) -> Call {
        Call::post(url, Some(("application/json".into(), body)))
    }
}

/// What a list of batches held: the batches, and the cursor of the next page if there is one.
pub type Page = (Vec<RemoteBatch>, Option<String>);

/// One provider's batch API as translation only.
pub trait BatchFormat: Send + Sync {
    /// The provider's name for messages (`openai`, `anthropic`).
    fn name(&self) -> &'static str;

    /// The most requests one batch may hold.
    fn max_requests(&self) -> usize;

    /// The most bytes of entries one batch may hold (its file, or its create body).
    fn max_bytes(&self) -> usize;

    /// One entry of a batch: the sync request `body` under `custom_id`, as the bytes it adds.
    fn entry(&self, custom_id: &str, body: &[u8]) -> Vec<u8>;

    /// The call that uploads `entries` before the batch is created, if the API has one (OpenAI).
    fn upload(&self, d: &DeploymentConfig, entries: &[Vec<u8>]) -> Option<Call>;

    /// The uploaded file's id from the upload's reply.
    fn uploaded(&self, body: &[u8]) -> Result<String, String>;

    /// The create call: from the uploaded file, or with the entries inline. `tag` names the
    /// batch where the API keeps metadata, so that it can be found again after a crash.
    fn create(
        &self,
        d: &DeploymentConfig,
        file: Option<&str>,
        entries: &[Vec<u8>],
        tag: &str,
    ) -> Call;

    /// A batch object (the reply of create, get and cancel).
    fn parse_batch(&self, body: &[u8]) -> Result<RemoteBatch, String>;

    fn get(&self, d: &DeploymentConfig, id: &str) -> Call;

    fn cancel(&self, d: &DeploymentConfig, id: &str) -> Call;

    /// A page of the most recent batches, if the API can tell them by metadata (OpenAI).
    fn list(&self, d: &DeploymentConfig, after: Option<&str>) -> Option<Call>;

    fn parse_list(&self, body: &[u8]) -> Result<Page, String>;

    /// The call that reads one of `RemoteBatch::results`.
    fn results(&self, d: &DeploymentConfig, at: &str) -> Call;

    /// One line of a results file: its `custom_id` and how it came back. The answer's body is
    /// read by `wire`, as a sync reply would be.
    fn parse_result(
        &self,
        d: &DeploymentConfig,
        wire: &dyn WireFormat,
        line: &[u8],
    ) -> Result<(String, ItemAnswer), String>;
}

/// An answer's body read by the wire format, or why it is not a reply: the item errored.
fn read_answer(
    d: &DeploymentConfig,
    wire: &dyn WireFormat,
    body: &serde_json::Value,
) -> ItemAnswer {
    let bytes = bytes::Bytes::from(body.to_string());
    match wire.parse_reply(d, bytes) {
        Ok(answer) => ItemAnswer::Answered(answer),
        Err(f) => ItemAnswer::Errored(f.describe()),
    }
}

/// `custom_id`s Switchyard writes, valid for both APIs: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The text of `value[key]` when it is a string.
fn text(value: &serde_json::Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
}

/// A JSON body or why it is not one (the start of what came, never all of it).
fn json(body: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "not JSON ({e}); body starts {:?}",
            super::shape::snippet(body)
        )
    })
}
