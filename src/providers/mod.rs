//! Provider calls: one deployment's `Adapter` turns our `ChatRequest` into a call to its provider
//! and the answer into a `chat.completion` (or a stream of chunks) or a `Failure`.
//!
//! The files stand in layers, each naming only those below it (no two name each other):
//! - `failure.rs` — `Failure`: how a call failed, as seen on the wire (what is done about it is
//!   routing's failure policy).
//! - `shape.rs` — the OpenAI request and reply pieces that every format reads and writes alike.
//! - `http.rs` — the shared client and what is read off any response: `Retry-After`, bounded
//!   bodies, redacted URLs.
//! - `stream.rs` — SSE framing into `Piece`s through a `StreamTranslator`, naming no format.
//! - `wire.rs` — `WireFormat`: one provider API as translation only, no I/O.
//! - `embed.rs` — embeddings: `EmbedCall`, `Embedded`, and `EmbedFormat`, the capability a wire
//!   format opts into (OpenAI and Gemini), with the checks every backend's vectors pass.
//! - `openai.rs`, `anthropic/`, `gemini/` — one `WireFormat` each (and `EmbedFormat` where the
//!   API has embeddings).
//! - `send.rs` — `HttpBackend`: any wire format sent over HTTP, the only I/O for providers.
//! - `simulated.rs` — the in-process simulator, a backend of its own.
//! - `batch/` — provider batch APIs (OpenAI Batch, Anthropic Message Batches): a capability a
//!   format opts into, given to deployments with `batch_api = true`.
//! - this file — `Adapter`: picks the backend (and for HTTP the format) from the config, the only
//!   place that matches on `ProviderKind`, and completes and prices what comes back.
//!
//! Adding a provider is one `WireFormat` file and one arm in `Adapter::new`.
//!
//! `Adapter::embed` is the embeddings call of a `mode = "embedding"` deployment: one provider call
//! for a slice of the caller's inputs (splitting a request into calls is the router's).

pub mod anthropic;
pub mod batch;
pub mod embed;
mod failure;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod send;
mod shape;
pub mod simulated;
pub mod stream;
pub mod wire;

use bytes::Bytes;

use crate::config::{DeploymentConfig, ProviderKind};
use crate::protocol::{ChatRequest, Usage};
use embed::{EmbedCall, EmbedFormat, Embedded};
use send::HttpBackend;
use wire::WireFormat;

pub use failure::Failure;
pub use shape::{MAX_TOKENS, sane_usage, unix_now};
pub use wire::Answer;

/// A successful call: the `chat.completion` JSON to send back (with `usage`, `model` and `id`
/// filled in), its usage, and what it cost.
#[derive(Debug, Clone)]
pub struct ProviderReply {
    pub body: Bytes,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// Everything an adapter needs for one call besides the request.
pub struct CallContext {
    /// Merge the caller's `extra_body`: only for the kind of provider it was first routed to.
    pub include_request_extra: bool,
    /// Set by the deployment actor for `simulated` deployments: what this call will do.
    pub fate: Option<simulated::Fate>,
}

/// Where a deployment's calls go. The simulator sends nothing, so it is not a wire format: it
/// sits beside the HTTP backend here, and formats stay pure translation.
enum Backend {
    /// A provider API over HTTP, in the deployment's wire format (boxed: it is large, and the
    /// simulator is nothing).
    Http(Box<HttpBackend>),
    /// The in-process simulator.
    Simulated,
}

/// One deployment's adapter: its config and the backend its calls go to.
pub struct Adapter {
    pub config: DeploymentConfig,
    backend: Backend,
    /// The provider's batch API, for a deployment with `batch_api = true`.
    batch: Option<batch::BatchClient>,
}

impl Adapter {
    pub fn new(config: DeploymentConfig, client: reqwest::Client) -> Self {
        let http = |format: Box<dyn WireFormat>, embed: Option<Box<dyn EmbedFormat>>| {
            Backend::Http(Box::new(HttpBackend::new(
                format,
                embed,
                &config,
                client.clone(),
            )))
        };
        let batch = |format: Box<dyn batch::BatchFormat>, wire: Box<dyn WireFormat>| {
            let client = batch::BatchClient::new(format, wire, &config, client.clone());
            config.batch_api.then_some(client)
        };
        // The one place that knows the provider kinds (which of them embed, which batch).
        let (backend, batch) = match config.provider {
            ProviderKind::OpenAi => (
                http(Box::new(openai::OpenAi), Some(Box::new(openai::OpenAi))),
                batch(
                    Box::new(batch::openai::OpenAiBatch),
                    Box::new(openai::OpenAi),
                ),
            ),
            ProviderKind::Anthropic => (
                http(Box::new(anthropic::Anthropic), None),
                batch(
                    Box::new(batch::anthropic::AnthropicBatch),
                    Box::new(anthropic::Anthropic),
                ),
            ),
            ProviderKind::Gemini => (
                http(Box::new(gemini::Gemini), Some(Box::new(gemini::Gemini))),
                None,
            ),
            ProviderKind::Simulated => (Backend::Simulated, None),
        };
        Self {
            config,
            backend,
            batch,
        }
    }

    pub async fn call(
        &self,
        req: &ChatRequest,
        ctx: CallContext,
    ) -> Result<ProviderReply, Failure> {
        let d = &self.config;
        let answer = match &self.backend {
            Backend::Http(http) => http.call(d, req, ctx.include_request_extra).await?,
            Backend::Simulated => Answer::Built(simulated::call(d, req, ctx.fate).await?),
        };
        Ok(self.finish(req, answer))
    }

    /// Opens a streamed call. Fails like `call` when the provider refuses it; once open, the
    /// pieces come as the provider sends them.
    pub async fn open_stream(
        &self,
        req: &ChatRequest,
        ctx: CallContext,
    ) -> Result<stream::PieceStream, Failure> {
        let d = &self.config;
        match &self.backend {
            Backend::Http(http) => http.open_stream(d, req, ctx.include_request_extra).await,
            Backend::Simulated => simulated::open_stream(d, req, ctx.fate).await,
        }
    }

    /// One embeddings call of a `mode = "embedding"` deployment (anything else is
    /// `Untranslatable`): one vector per input in input order, each of the expected length
    /// (`call.dimensions`, else the deployment's), or `InvalidBody`; usage estimated where the
    /// provider reports none; priced. `fate` is the simulator's, as for `call`.
    pub async fn embed(
        &self,
        call: &EmbedCall<'_>,
        fate: Option<simulated::Fate>,
    ) -> Result<Embedded, Failure> {
        let d = &self.config;
        let dimensions = embed::expected_dimensions(d, call)?;
        if call.inputs.is_empty() {
            // Nothing to embed is no call (the APIs would refuse an empty `input`).
            return embed::complete(d, call, dimensions, embed::Vectors::default());
        }
        let vectors = match &self.backend {
            Backend::Http(http) => http.embed(d, call).await?,
            Backend::Simulated => simulated::embed(d, call, dimensions, fate).await?,
        };
        embed::complete(d, call, dimensions, vectors)
    }

    /// The host and port calls go to (for traces), never the userinfo; `None` for `simulated`.
    pub fn server(&self) -> Option<(&str, Option<u16>)> {
        match &self.backend {
            Backend::Http(http) => http.server(),
            Backend::Simulated => None,
        }
    }

    pub fn price(&self, usage: &Usage) -> f64 {
        self.config
            .price
            .cost(usage.prompt_tokens, usage.completion_tokens)
    }

    /// The provider's batch API, when the deployment says `batch_api = true`.
    pub fn batch(&self) -> Option<&batch::BatchClient> {
        self.batch.as_ref()
    }

    fn finish(&self, req: &ChatRequest, answer: Answer) -> ProviderReply {
        self.complete(req.estimated_prompt_tokens, answer)
    }

    /// Fills in what a provider may leave out (`usage`, `model`, `id`), and prices the call at
    /// the sync price (`estimated_prompt_tokens` stands in for a prompt count the provider left
    /// out). Batch answers are completed here too, so they read exactly as sync replies.
    pub fn complete(&self, estimated_prompt_tokens: u64, answer: Answer) -> ProviderReply {
        let price = |u: &Usage| self.config.price.cost(u.prompt_tokens, u.completion_tokens);
        let mut completion = match answer {
            Answer::Wire { body, usage } => {
                return ProviderReply {
                    cost_usd: price(&usage),
                    body,
                    usage,
                };
            }
            Answer::Built(c) => c,
        };
        let usage = match completion.usage {
            Some(u) if u.prompt_tokens.saturating_add(u.completion_tokens) > 0 => sane_usage(u),
            _ => {
                let completion_tokens = crate::protocol::request::estimate_tokens(
                    completion.text().map_or(0, str::len),
                );
                sane_usage(Usage {
                    prompt_tokens: estimated_prompt_tokens,
                    completion_tokens,
                    total_tokens: 0,
                })
            }
        };
        completion.usage = Some(usage);
        if completion.model.is_empty() {
            completion.model.clone_from(&self.config.model);
        }
        if completion.id.is_empty() {
            completion.id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        }
        if completion.created == 0 {
            completion.created = unix_now();
        }
        ProviderReply {
            // Serializing JSON values and plain structs cannot fail.
            body: serde_json::to_vec(&completion).unwrap_or_default().into(),
            cost_usd: price(&usage),
            usage,
        }
    }
}

#[cfg(test)]
mod props;

/// A provider that answers one request with a canned reply, for adapter tests of `call`.
#[cfg(test)]
mod one_shot {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one HTTP/1.1 exchange on 127.0.0.1; the task yields the raw request it read.
    pub async fn serve(
        status: u16,
        headers: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= length || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (base, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;

    fn adapter(provider: ProviderKind, api_base: &str, limit: usize) -> Adapter {
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.provider = provider;
        d.api_base = api_base.into();
        d.api_key = Some(crate::config::Secret::new("sk-secret-key"));
        d.max_reply_body = limit;
        Adapter::new(d, http::client().unwrap())
    }

    fn hello() -> ChatRequest {
        ChatRequest::parse(br#"{"messages":[{"role":"user","content":"Hello"}]}"#).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            include_request_extra: true,
            fate: None,
        }
    }

    #[tokio::test]
    async fn failures_never_print_credentials_or_query_keys() {
        for provider in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let a = adapter(
                provider,
                "http://user:secret@127.0.0.1:1/v1?key=abc",
                1 << 20,
            );
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert!(matches!(f, Failure::Connect(_)), "{f:?}");
            let text = f.describe();
            assert!(text.contains("127.0.0.1:1"), "{text}");
            for secret in ["secret", "abc", "sk-secret-key", "user"] {
                assert!(!text.contains(secret), "{provider:?}: {text}");
            }
            assert_eq!(a.server(), Some(("127.0.0.1", Some(1))));

            let a = adapter(provider, "http://user:secret@[bad/v1?key=abc", 1 << 20);
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert_eq!(
                f.describe(),
                "connect error: api_base `http://[bad/v1` is not a URL"
            );
        }
    }

    #[tokio::test]
    async fn reply_bodies_over_the_limit_fail_like_garbage() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
        let (base, _) = one_shot::serve(200, "", body).await;
        let a = adapter(ProviderKind::OpenAi, &base, body.len());
        assert!(a.call(&hello(), ctx()).await.is_ok(), "exactly the limit");
        let (base, _) = one_shot::serve(200, "", body).await;
        let a = adapter(ProviderKind::OpenAi, &base, body.len() - 1);
        let f = a.call(&hello(), ctx()).await.unwrap_err();
        let over = format!("reply body over {} bytes", body.len() - 1);
        assert_eq!(f, Failure::InvalidBody(over.clone()));
        let d = crate::routing::policy::decide(&f, &BreakerConfig::default(), false);
        assert!(d.fall_back && d.count);
        // Error bodies too, at every provider.
        for provider in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let (base, _) = one_shot::serve(500, "", body).await;
            let a = adapter(provider, &base, body.len() - 1);
            let f = a.call(&hello(), ctx()).await.unwrap_err();
            assert_eq!(f, Failure::InvalidBody(over.clone()), "{provider:?}");
        }
    }

    #[test]
    fn token_counts_cannot_overflow() {
        let u = sane_usage(Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            total_tokens: 3,
        });
        assert_eq!(u.prompt_tokens, MAX_TOKENS);
        assert_eq!(u.total_tokens, 2 * MAX_TOKENS);
        let huge = format!(
            r#"{{"id":"x","model":"m","created":1,"choices":[{{"index":0,"message":{{"role":"assistant","content":"x"}}}}],"usage":{{"prompt_tokens":{m},"completion_tokens":{m},"total_tokens":{m}}}}}"#,
            m = u64::MAX
        );
        match openai::parse_response(Bytes::from(huge)).unwrap() {
            Answer::Wire { usage, .. } => assert_eq!(usage.total_tokens, 2 * MAX_TOKENS),
            other => panic!("{other:?}"),
        }
    }

    fn embedder(provider: ProviderKind, model: &str, api_base: &str, dims: u32) -> Adapter {
        let mut d = embed::test_deployment(provider, model, dims);
        d.api_base = api_base.into();
        d.api_key = Some(crate::config::Secret::new("sk-secret-key"));
        Adapter::new(d, http::client().unwrap())
    }

    fn two() -> Vec<crate::protocol::EmbedInput> {
        ["hello", "world"]
            .map(|t| crate::protocol::EmbedInput::Text(t.into()))
            .to_vec()
    }

    fn call(inputs: &[crate::protocol::EmbedInput]) -> EmbedCall<'_> {
        EmbedCall {
            inputs,
            dimensions: None,
            user: None,
        }
    }

    #[tokio::test]
    async fn openai_embeddings_are_posted_with_the_key_and_priced_from_usage() {
        let reply = r#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0,1]},{"object":"embedding","index":0,"embedding":"AACAPwAAAAA="}],"model":"text-embedding-3-small-v2","usage":{"prompt_tokens":5000000,"total_tokens":5000000}}"#;
        let (base, request) = one_shot::serve(200, "", reply).await;
        let a = embedder(ProviderKind::OpenAi, "text-embedding-3-small", &base, 2);
        let inputs = two();
        let e = a.embed(&call(&inputs), None).await.unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(e.model, "text-embedding-3-small-v2");
        assert_eq!(e.prompt_tokens, 5_000_000);
        assert!((e.cost_usd - 0.1).abs() < 1e-12);
        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /embeddings HTTP/1.1"),
            "{request}"
        );
        assert!(request.contains("authorization: Bearer sk-secret-key"));
        assert!(request.ends_with(
            r#"{"model":"text-embedding-3-small","input":["hello","world"],"encoding_format":"base64"}"#
        ));
    }

    #[tokio::test]
    async fn gemini_embeddings_go_to_batch_embed_contents_with_estimated_usage() {
        let reply = r#"{"embeddings":[{"values":[0.6,0.8]},{"values":[1,0]}]}"#;
        let (base, request) = one_shot::serve(200, "", reply).await;
        let a = embedder(ProviderKind::Gemini, "text-embedding-004", &base, 2);
        let inputs = two();
        let e = a.embed(&call(&inputs), None).await.unwrap();
        assert_eq!(e.vectors, vec![vec![0.6, 0.8], vec![1.0, 0.0]]);
        assert_eq!(e.model, "text-embedding-004");
        assert_eq!(e.prompt_tokens, embed::estimated_tokens(&inputs));
        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /v1beta/models/text-embedding-004:batchEmbedContents "),
            "{request}"
        );
        assert!(request.contains("x-goog-api-key: sk-secret-key"));
    }

    #[tokio::test]
    async fn embeddings_of_the_wrong_count_or_length_are_invalid_bodies() {
        for (reply, says) in [
            (
                r#"{"data":[{"index":0,"embedding":[1,0]}],"model":"m"}"#,
                "1 vectors for 2 inputs",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1,0]},{"index":1,"embedding":[1,0,0]}]}"#,
                "vector 1 has 3 numbers, expected 2",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1,0]},{"index":1,"embedding":"AADAfwAAAAA="}]}"#,
                "not finite",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1,0]},{"index":1,"embedding":[1e300,0]}]}"#,
                "out of range",
            ),
            ("<html>bad gateway</html>", "body starts"),
        ] {
            let (base, _) = one_shot::serve(200, "", reply).await;
            let a = embedder(ProviderKind::OpenAi, "text-embedding-3-small", &base, 2);
            let inputs = two();
            let f = a.embed(&call(&inputs), None).await.unwrap_err();
            assert!(
                matches!(&f, Failure::InvalidBody(m) if m.contains(says)),
                "{reply}: {f:?}"
            );
            let d = crate::routing::policy::decide(&f, &BreakerConfig::default(), false);
            assert!(d.fall_back && d.count, "{reply}");
        }
        // The caller's dimensions are the length expected.
        let (base, _) = one_shot::serve(200, "", r#"{"data":[{"index":0,"embedding":[1]}]}"#).await;
        let a = embedder(ProviderKind::OpenAi, "text-embedding-3-small", &base, 2);
        let inputs = [crate::protocol::EmbedInput::Text("a".into())];
        let one = EmbedCall {
            dimensions: Some(1),
            ..call(&inputs)
        };
        assert_eq!(a.embed(&one, None).await.unwrap().vectors, vec![vec![1.0]]);
    }

    #[tokio::test]
    async fn embeddings_rate_limits_carry_retry_after() {
        let error = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        for provider in [ProviderKind::OpenAi, ProviderKind::Gemini] {
            let (base, _) = one_shot::serve(429, "retry-after: 7\r\n", error).await;
            let a = embedder(provider, "text-embedding-3-small", &base, 2);
            let inputs = two();
            assert_eq!(
                a.embed(&call(&inputs), None).await.unwrap_err(),
                Failure::Status {
                    status: 429,
                    message: "Rate limit reached".into(),
                    retry_after: Some(std::time::Duration::from_secs(7)),
                },
                "{provider:?}"
            );
        }
    }

    #[tokio::test]
    async fn only_embedding_deployments_embed() {
        let inputs = two();
        let chat = adapter(ProviderKind::OpenAi, "http://127.0.0.1:1", 1 << 20);
        assert!(matches!(
            chat.embed(&call(&inputs), None).await,
            Err(Failure::Untranslatable(_))
        ));
        let sim = embedder(ProviderKind::Simulated, "sim", "", 3);
        let e = sim.embed(&call(&inputs), None).await.unwrap();
        assert_eq!((e.vectors.len(), e.vectors[0].len()), (2, 3));
        assert_eq!(e.prompt_tokens, embed::estimated_tokens(&inputs));
        assert!(
            sim.embed(&call(&[]), None)
                .await
                .unwrap()
                .vectors
                .is_empty()
        );
    }
}
