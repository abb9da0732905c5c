//! The HTTP backend: a deployment's wire format, sent. This is the one place that does I/O for
//! every HTTP provider — the POST with its key header marked sensitive, the send, the body read
//! within `max_reply_body`, a non-2xx turned into `Failure::Status` with its `Retry-After`, and an
//! SSE stream opened through `stream::from_sse` — so that a wire format is translation only.
//! Embeddings calls go the same way, through the format's `EmbedFormat` where it has one.

use bytes::Bytes;

use super::embed::{EmbedCall, EmbedFormat, Vectors};
use super::failure::Failure;
use super::http;
use super::stream::{self, PieceStream};
use super::wire::{Answer, Auth, WireFormat};
use crate::config::DeploymentConfig;
use crate::protocol::ChatRequest;

/// One deployment's HTTP calls: its wire format, its endpoints parsed once, the shared client.
pub struct HttpBackend {
    format: Box<dyn WireFormat>,
    endpoint: Option<reqwest::Url>,
    /// Where streamed calls go (another URL for Gemini).
    stream_endpoint: Option<reqwest::Url>,
    /// For `mode = "embedding"` deployments of a format that has an embeddings API.
    embed: Option<Embeddings>,
    client: reqwest::Client,
}

/// A format's embeddings API and where its calls go.
struct Embeddings {
    format: Box<dyn EmbedFormat>,
    endpoint: Option<reqwest::Url>,
}

impl HttpBackend {
    /// `embed`: the format's embeddings API, if it has one (the same API's other face).
    pub fn new(
        format: Box<dyn WireFormat>,
        embed: Option<Box<dyn EmbedFormat>>,
        d: &DeploymentConfig,
        client: reqwest::Client,
    ) -> Self {
        // Parsing a URL per request showed up in profiles; config validation checked it already.
        let parse = |url: String| reqwest::Url::parse(&url).ok();
        let endpoint = parse(format.endpoint(d, false));
        let stream_endpoint = parse(format.endpoint(d, true));
        let embed = embed.filter(|_| d.is_embedding()).map(|format| Embeddings {
            endpoint: parse(format.embed_endpoint(d)),
            format,
        });
        Self {
            format,
            endpoint,
            stream_endpoint,
            embed,
            client,
        }
    }

    /// One call: the reply as the format reads it, or how it failed.
    pub async fn call(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
    ) -> Result<Answer, Failure> {
        let url = usable(self.endpoint.as_ref(), d)?;
        let body = self
            .format
            .build_body(d, req, include_request_extra, false)?;
        let bytes = self.exchange(url, d, body).await?;
        self.format.parse_reply(d, bytes)
    }

    /// One embeddings call: the vectors as the format reads them (unchecked: `embed::complete`
    /// checks them for every backend), or how it failed.
    pub async fn embed(
        &self,
        d: &DeploymentConfig,
        call: &EmbedCall<'_>,
    ) -> Result<Vectors, Failure> {
        let Some(Embeddings { format, endpoint }) = &self.embed else {
            return Err(Failure::Untranslatable(format!(
                "deployment `{}` has no embeddings API here",
                d.name
            )));
        };
        let url = usable(endpoint.as_ref(), d)?;
        let body = format.build_embed_body(d, call)?;
        let bytes = self.exchange(url, d, body).await?;
        format.parse_embed_reply(&bytes)
    }

    /// POSTs `body` to `url` with the format's key and headers: the 2xx body, read within the
    /// deployment's `max_reply_body`, or the failure.
    async fn exchange(
        &self,
        url: &reqwest::Url,
        d: &DeploymentConfig,
        body: Vec<u8>,
    ) -> Result<Bytes, Failure> {
        send(
            self.post(url, d, body)?,
            self.format.as_ref(),
            d.max_reply_body,
        )
        .await
    }

    fn post(
        &self,
        url: &reqwest::Url,
        d: &DeploymentConfig,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let f = self.format.as_ref();
        post_json(&self.client, url, d, f.auth(), f.headers(), body)
    }

    /// Opens a streamed call: fails like `call` when the provider refuses it, else yields the
    /// pieces as the format's translator makes them out of the events.
    pub async fn open_stream(
        &self,
        d: &DeploymentConfig,
        req: &ChatRequest,
        include_request_extra: bool,
    ) -> Result<PieceStream, Failure> {
        let url = usable(self.stream_endpoint.as_ref(), d)?;
        let body = self
            .format
            .build_body(d, req, include_request_extra, true)?;
        let builder = self.post(url, d, body)?;
        let response = send_stream(builder, self.format.as_ref(), d.max_reply_body).await?;
        Ok(stream::from_sse(
            response,
            d.max_reply_body,
            self.format.stream_translator(d),
        ))
    }

    /// The host and port calls go to (for traces), never the userinfo.
    pub fn server(&self) -> Option<(&str, Option<u16>)> {
        let url = self.endpoint.as_ref()?;
        Some((url.host_str()?, url.port_or_known_default()))
    }
}

/// The endpoint, or why there is none: an `api_base` that is not a URL, printed redacted.
fn usable<'a>(
    url: Option<&'a reqwest::Url>,
    d: &DeploymentConfig,
) -> Result<&'a reqwest::Url, Failure> {
    url.ok_or_else(|| {
        Failure::Connect(format!(
            "api_base `{}` is not a URL",
            http::redact_url(&d.api_base)
        ))
    })
}

/// Sends a prepared request: the body of a 2xx answer, else a `Failure::Status` with the message
/// that the format reads out of the provider's error body. Bodies longer than `limit` fail the
/// call (`http::too_large`).
async fn send(
    builder: reqwest::RequestBuilder,
    format: &dyn WireFormat,
    limit: usize,
) -> Result<Bytes, Failure> {
    let response = send_stream(builder, format, limit).await?;
    http::read_body(response, limit).await
}

/// Sends a prepared request and returns the 2xx response unread (for streaming: read it through
/// `stream::from_sse`, which bounds it too), else a `Failure::Status` as `send` does.
async fn send_stream(
    builder: reqwest::RequestBuilder,
    format: &dyn WireFormat,
    limit: usize,
) -> Result<reqwest::Response, Failure> {
    let response = builder.send().await.map_err(http::transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = http::retry_after(response.headers());
    let bytes = http::read_body(response, limit).await?;
    Err(Failure::Status {
        status: status.as_u16(),
        message: format.error_message(&bytes),
        retry_after,
    })
}

/// A JSON POST with the deployment's key (when it has one) and `extra` headers. The key header is
/// marked sensitive, so that HTTP/2 never indexes it and debug output never shows it.
fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    d: &DeploymentConfig,
    auth: Auth,
    extra: &[(&'static str, &'static str)],
    body: Vec<u8>,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut builder = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    with_key(builder, d, auth)
}

/// `builder` with the deployment's key (when it has one) in the header `auth` names, marked
/// sensitive, so that HTTP/2 never indexes it and debug output never shows it.
pub fn with_key(
    builder: reqwest::RequestBuilder,
    d: &DeploymentConfig,
    auth: Auth,
) -> Result<reqwest::RequestBuilder, Failure> {
    let Some(key) = &d.api_key else {
        return Ok(builder);
    };
    let (name, value) = match auth {
        Auth::Bearer => (
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", key.expose())),
        ),
        Auth::Header(name) => (
            reqwest::header::HeaderName::from_static(name),
            reqwest::header::HeaderValue::try_from(key.expose()),
        ),
    };
    // The error would not quote the key, but say nothing of it anyway.
    let mut value = value.map_err(|_| {
        Failure::Transport("the deployment's API key is not a valid HTTP header value".into())
    })?;
    value.set_sensitive(true);
    Ok(builder.header(name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_are_sensitive_headers() {
        let client = http::client().unwrap();
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        let mut d = crate::config::Config::demo().deployments.remove(0);
        d.api_key = Some(crate::config::Secret::new("sk-secret-key"));
        for (auth, header) in [
            (Auth::Bearer, "authorization"),
            (Auth::Header("x-api-key"), "x-api-key"),
            (Auth::Header("x-goog-api-key"), "x-goog-api-key"),
        ] {
            let req = post_json(&client, &url, &d, auth, &[], Vec::new())
                .unwrap()
                .build()
                .unwrap();
            let value = req.headers().get(header).unwrap();
            assert!(value.is_sensitive(), "{header}");
            assert!(!format!("{:?}", req.headers()).contains("sk-secret-key"));
        }
        d.api_key = Some(crate::config::Secret::new("bad\nkey"));
        let refused = post_json(&client, &url, &d, Auth::Bearer, &[], Vec::new()).unwrap_err();
        assert!(!refused.describe().contains("key\n"));
    }
}
