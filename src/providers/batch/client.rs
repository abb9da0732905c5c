//! `BatchClient`: one deployment's batch API, sent. The only I/O of provider batches: each call a
//! `BatchFormat` describes goes out with the deployment's key (as its `WireFormat` sends it), its
//! reply read within bounds, and a failure said as [`BatchError`]: worth another try later, or
//! refused. Uploads and downloads get at least ten minutes.

use std::time::Duration;

use super::{BatchFormat, Call, ItemAnswer, RemoteBatch};
use crate::config::DeploymentConfig;
use crate::protocol::ChatRequest;
use crate::providers::failure::Failure;
use crate::providers::http;
use crate::providers::send;
use crate::providers::wire::WireFormat;

/// Uploads and result downloads may be hundreds of megabytes.
const LONG_CALL: Duration = Duration::from_secs(600);
/// A results file is read whole: 50,000 answers are far below this.
const MAX_RESULTS_BODY: usize = 1 << 30;
/// Pages of recent batches read when looking for one by its tag.
const LIST_PAGES: usize = 10;

/// How a batch call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// Worth another try later: 408, 409, 429, 5xx, no connection, a timeout, a reply that is not
    /// what the API sends.
    #[error("{message}")]
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Refused: trying again would be refused again.
    #[error("HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

impl BatchError {
    /// What a failed call is: the one place that decides which failures are worth repeating.
    fn of(f: Failure) -> BatchError {
        match f {
            Failure::Status {
                status,
                message,
                retry_after,
            } => match status {
                408 | 409 | 425 | 429 | 500..=599 => BatchError::Retry {
                    message: format!("HTTP {status}: {message}"),
                    retry_after,
                },
                _ => BatchError::Refused { status, message },
            },
            Failure::Timeout
            | Failure::StreamDuration(_)
            | Failure::DeadlineSpent
            | Failure::Connect(_)
            | Failure::Transport(_)
            | Failure::InvalidBody(_) => BatchError::Retry {
                message: f.describe(),
                retry_after: None,
            },
            // Nothing was sent.
            Failure::Untranslatable(message) => BatchError::Refused { status: 0, message },
        }
    }

    fn garbage(what: &str, why: String) -> BatchError {
        BatchError::Retry {
            message: format!("{what}: {why}"),
            retry_after: None,
        }
    }
}

/// One deployment's batch API: its format, the wire format that builds and reads the requests
/// inside, the deployment, the shared HTTP client.
pub struct BatchClient {
    format: Box<dyn BatchFormat>,
    wire: Box<dyn WireFormat>,
    d: DeploymentConfig,
    client: reqwest::Client,
}

impl BatchClient {
    pub fn new(
        format: Box<dyn BatchFormat>,
        wire: Box<dyn WireFormat>,
        d: &DeploymentConfig,
        client: reqwest::Client,
    ) -> Self {
        Self {
            format,
            wire,
            d: d.clone(),
            client,
        }
    }

    pub fn provider(&self) -> &'static str {
        self.format.name()
    }

    /// The most requests and bytes of entries one remote batch may hold.
    pub fn limits(&self) -> (usize, usize) {
        (self.format.max_requests(), self.format.max_bytes())
    }

    /// Whether a batch created before a crash can be found again by its tag.
    pub fn can_find(&self) -> bool {
        self.format.list(&self.d, None).is_some()
    }

    /// One entry of a batch: `req` as its sync call's body, under `custom_id`.
    pub fn entry(&self, custom_id: &str, req: &ChatRequest) -> Result<Vec<u8>, Failure> {
        let body = self.wire.build_body(&self.d, req, false, false)?;
        Ok(self.format.entry(custom_id, &body))
    }

    /// Uploads the entries where the API wants them uploaded first: the file's id.
    pub async fn upload(&self, entries: &[Vec<u8>]) -> Result<Option<String>, BatchError> {
        let Some(call) = self.format.upload(&self.d, entries) else {
            return Ok(None);
        };
        let body = self.send(call, self.long(), self.d.max_reply_body).await?;
        let id = self
            .format
            .uploaded(&body)
            .map_err(|e| BatchError::garbage("upload", e))?;
        Ok(Some(id))
    }

    pub async fn create(
        &self,
        file: Option<&str>,
        entries: &[Vec<u8>],
        tag: &str,
    ) -> Result<RemoteBatch, BatchError> {
        let call = self.format.create(&self.d, file, entries, tag);
        let body = self.send(call, self.long(), self.d.max_reply_body).await?;
        self.batch("create", &body)
    }

    pub async fn get(&self, id: &str) -> Result<RemoteBatch, BatchError> {
        let body = self.send(
            self.format.get(&self.d, id),
            self.d.timeout,
            self.d.max_reply_body,
        );
        self.batch("get", &body.await?)
    }

    pub async fn cancel(&self, id: &str) -> Result<RemoteBatch, BatchError> {
        let call = self.format.cancel(&self.d, id);
        let body = self
            .send(call, self.d.timeout, self.d.max_reply_body)
            .await?;
        self.batch("cancel", &body)
    }

    /// The batch created with `tag` among the most recent ones, if the API can tell.
    pub async fn find(&self, tag: &str) -> Result<Option<RemoteBatch>, BatchError> {
        let mut after: Option<String> = None;
        for _ in 0..LIST_PAGES {
            let Some(call) = self.format.list(&self.d, after.as_deref()) else {
                return Ok(None);
            };
            let body = self
                .send(call, self.d.timeout, self.d.max_reply_body)
                .await?;
            let (batches, next) = self
                .format
                .parse_list(&body)
                .map_err(|e| BatchError::garbage("list", e))?;
            if let Some(b) = batches.into_iter().find(|b| b.tag.as_deref() == Some(tag)) {
                return Ok(Some(b));
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Every result line of an ended batch, and how many lines could not be read (their items
    /// count as having no result).
    pub async fn results(
        &self,
        b: &RemoteBatch,
    ) -> Result<(Vec<(String, ItemAnswer)>, usize), BatchError> {
        let mut answers = Vec::new();
        let mut unreadable = 0;
        for at in &b.results {
            let call = self.format.results(&self.d, at);
            let body = self.send(call, self.long(), MAX_RESULTS_BODY).await?;
            for line in body.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match self.format.parse_result(&self.d, self.wire.as_ref(), line) {
                    Ok(a) => answers.push(a),
                    Err(why) => {
                        unreadable += 1;
                        tracing::warn!(batch = %b.id, %why, "unreadable batch result line");
                    }
                }
            }
        }
        Ok((answers, unreadable))
    }

    /// Uploads and downloads: at least ten minutes, more if the deployment allows its calls more.
    fn long(&self) -> Duration {
        self.d.timeout.max(LONG_CALL)
    }

    fn batch(&self, what: &str, body: &[u8]) -> Result<RemoteBatch, BatchError> {
        self.format
            .parse_batch(body)
            .map_err(|e| BatchError::garbage(what, e))
    }

    async fn send(
        &self,
        call: Call,
        timeout: Duration,
        limit: usize,
    ) -> Result<bytes::Bytes, BatchError> {
        let url = reqwest::Url::parse(&call.url).map_err(|_| BatchError::Refused {
            status: 0,
            message: format!("`{}` is not a URL", http::redact_url(&call.url)),
        })?;
        let mut builder = if call.post {
            self.client.post(url)
        } else {
            self.client.get(url)
        };
        builder = builder.timeout(timeout);
        if let Some((content_type, body)) = call.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        for (name, value) in self.wire.headers() {
            builder = builder.header(*name, *value);
        }
        builder = send::with_key(builder, &self.d, self.wire.auth()).map_err(|f| {
            BatchError::Refused {
                status: 0,
                message: f.describe(),
            }
        })?;
        let response = builder
            .send()
            .await
            .map_err(|e| BatchError::of(http::transport(e)))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let body = http::read_body(response, limit)
            .await
            .map_err(BatchError::of)?;
        if status.is_success() {
            return Ok(body);
        }
        Err(BatchError::of(Failure::Status {
            status: status.as_u16(),
            message: self.wire.error_message(&body),
            retry_after,
        }))
    }
}
