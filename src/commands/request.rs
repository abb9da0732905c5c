//! `switchyard request TASK`: sends one chat request on `llm.chat.<TASK>` and prints the reply's
//! `Llm-*` headers and JSON body — what any NATS client (`nats req`, a Python or Go program) does.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;

use crate::config::Config;
use crate::protocol::Subjects;

pub struct Request {
    pub task: String,
    /// The request body; `prompt` builds a one-message request when it is absent.
    pub file: Option<PathBuf>,
    pub prompt: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Sends the request; returns whether the reply was a success.
pub async fn run(config: &Config, r: Request) -> anyhow::Result<bool> {
    let body = match (&r.file, &r.prompt) {
        (Some(path), _) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        (None, Some(prompt)) => serde_json::to_vec(&serde_json::json!({
            "messages": [{"role": "user", "content": prompt}]
        }))?,
        (None, None) => anyhow::bail!("give the request body with --file or a prompt"),
    };
    let client = crate::ingress::connect(&config.nats, "switchyard-request").await?;
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.insert(k.as_str(), v.as_str());
    }
    let subject = Subjects::new(&config.nats.prefix).chat(&r.task);
    let reply = tokio::time::timeout(
        r.timeout,
        client.request_with_headers(subject.clone(), headers, body.into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no reply on {subject} within {:?}", r.timeout))?
    .map_err(|e| {
        anyhow::anyhow!("request on {subject} failed: {e} (is `switchyard serve` running?)")
    })?;
    let mut ok = true;
    if let Some(h) = &reply.headers {
        let mut names: Vec<_> = h.iter().collect();
        names.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(AsRef::<str>::as_ref(b.0)));
        for (name, values) in names {
            for v in values {
                eprintln!("{}: {}", AsRef::<str>::as_ref(name), v.as_str());
            }
        }
        ok = h.get(crate::protocol::headers::ERROR).is_none();
    }
    match serde_json::from_slice::<serde_json::Value>(&reply.payload) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{}", String::from_utf8_lossy(&reply.payload)),
    }
    Ok(ok)
}

/// `Name: value` or `Name=value`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .or_else(|| s.split_once('='))
        .ok_or_else(|| format!("`{s}` is not `Name: value`"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}
