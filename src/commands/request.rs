//! `switchyard request TASK`: sends one chat request on `llm.chat.<TASK>` (with `--embed`, an
//! embeddings request on `llm.embed.<TASK>`) and prints the reply's `Llm-*` headers and JSON body
//! — what any NATS client (`nats req`, a Python or Go program) does.

use std::time::Duration;

use async_nats::HeaderMap;

use crate::config::Config;
use crate::protocol::Subjects;
use crate::protocol::headers::{ERROR, STREAM};

pub use crate::cli::RequestArgs as Request;

/// Sends the request; returns whether the reply was a success.
pub async fn run(config: &Config, r: Request) -> anyhow::Result<bool> {
    let body = match (&r.file, &r.prompt) {
        (Some(path), _) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        (None, Some(prompt)) if r.embed => {
            serde_json::to_vec(&serde_json::json!({ "input": prompt }))?
        }
        (None, Some(prompt)) => serde_json::to_vec(&serde_json::json!({
            "messages": [{"role": "user", "content": prompt}],
            "stream": r.stream,
        }))?,
        (None, None) => anyhow::bail!("give the request body with --file or a prompt"),
    };
    let client = crate::ingress::connect(&config.nats, "switchyard-request").await?;
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.insert(k.as_str(), v.as_str());
    }
    let subjects = Subjects::new(&config.nats.prefix);
    let subject = if r.embed {
        subjects.embed(&r.task)
    } else {
        subjects.chat(&r.task)
    };
    if r.stream {
        return stream(&client, subject, headers, body, r.timeout).await;
    }
    let reply = tokio::time::timeout(
        r.timeout,
        client.request_with_headers(subject.clone(), headers, body.into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no reply on {subject} within {:?}", r.timeout))?
    .map_err(|e| {
        anyhow::anyhow!("request on {subject} failed: {e} (is `switchyard serve` running?)")
    })?;
    print_headers(reply.headers.as_ref());
    if r.embed && is_success(reply.headers.as_ref()) {
        print_vectors(&reply.payload)?;
    } else {
        print_body(&reply.payload)?;
    }
    Ok(is_success(reply.headers.as_ref()))
}

/// An embeddings reply with each vector cut to its first numbers and its size.
fn print_vectors(payload: &[u8]) -> anyhow::Result<()> {
    let mut v: serde_json::Value = serde_json::from_slice(payload)?;
    let vectors = crate::protocol::embed::read_list(payload).map_err(anyhow::Error::msg)?;
    if let Some(data) = v.get_mut("data").and_then(|d| d.as_array_mut()) {
        for (item, vector) in data.iter_mut().zip(&vectors) {
            let head: Vec<String> = vector.iter().take(4).map(|x| format!("{x:.4}")).collect();
            item["embedding"] = format!("[{}, … {} numbers]", head.join(", "), vector.len()).into();
        }
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// A streamed request: the reply subject gets one message per chunk, then a last message with
/// `Llm-Stream: end` (or `error` and the error body).
async fn stream(
    client: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<bool> {
    use futures::StreamExt;
    use std::io::Write;

    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply_and_headers(subject.clone(), inbox, headers, body.into())
        .await?;
    loop {
        let msg = tokio::time::timeout(timeout, sub.next())
            .await
            .map_err(|_| anyhow::anyhow!("the stream on {subject} stalled for {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the connection closed mid-stream"))?;
        if msg.headers.as_ref().and_then(|h| h.get(STREAM)).is_some() {
            println!();
            print_headers(msg.headers.as_ref());
            if !msg.payload.is_empty() {
                print_body(&msg.payload)?;
            }
            return Ok(is_success(msg.headers.as_ref()));
        }
        let chunk: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            print!("{text}");
            std::io::stdout().flush()?;
        }
    }
}

pub(crate) fn print_headers(headers: Option<&HeaderMap>) {
    let Some(h) = headers else { return };
    let mut names: Vec<_> = h.iter().collect();
    names.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(AsRef::<str>::as_ref(b.0)));
    for (name, values) in names {
        for v in values {
            eprintln!("{}: {}", AsRef::<str>::as_ref(name), v.as_str());
        }
    }
}

pub(crate) fn print_body(payload: &[u8]) -> anyhow::Result<()> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{}", String::from_utf8_lossy(payload)),
    }
    Ok(())
}

pub(crate) fn is_success(headers: Option<&HeaderMap>) -> bool {
    headers.is_none_or(|h| h.get(ERROR).is_none())
}
