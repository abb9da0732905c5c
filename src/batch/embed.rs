//! An embed job's items (`kind = "embed"`, docs/contract.md §10): a provider call's worth of
//! records embedded in one `llm.embed` request through the engine, retried like a chat item, each
//! item's vector kept as the JSON text the engine wrote (never parsed into numbers again) and its
//! share of the call's tokens and cost.

use std::sync::OnceLock;
use std::time::Duration;

use super::checkpoint::{ItemResult, Status, Via};
use super::input::Record;
use super::job::Job;
use super::retry::{failed, room};
use crate::engine::Engine;
use crate::protocol::{ErrorKind, RequestOptions};

/// The items of one embed call: each record's rendered `input` embedded together, each item
/// `ok` with its vector or `failed` with why. A call refused as a whole (one input the provider
/// will not take) is made again one item at a time, so that only the bad item fails. `None`:
/// cancelled while waiting for room; nothing is recorded and a resumed run does these items.
pub(super) async fn items(
    job: &Job,
    engine: &Engine,
    records: Vec<Record>,
    space: &OnceLock<String>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Vec<(ItemResult, bool)>> {
    let mut results = Vec::with_capacity(records.len());
    let mut texts = Vec::with_capacity(records.len());
    let mut sent = Vec::with_capacity(records.len());
    for record in &records {
        let text = match &record.fields {
            Ok(fields) => job.embed_input(fields).map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        };
        match text {
            Ok(t) if t.is_empty() => {
                let why = "the rendered input is empty".to_string();
                results.push((failed(record.line, &record.id, why), false));
            }
            Ok(t) => {
                texts.push(t);
                sent.push(record);
            }
            Err(why) => results.push((failed(record.line, &record.id, why), false)),
        }
    }
    if sent.is_empty() {
        return Some(results);
    }
    let first = sent[0].line;
    let outcome = embed_call(job, engine, first, &texts, space, cancel).await?;
    match outcome {
        Ok(served) => results.extend(served.items(&sent, &texts)),
        Err((why, false)) | Err((why, true)) if sent.len() == 1 => {
            results.push((failed(sent[0].line, &sent[0].id, why), false));
        }
        Err((_, true)) => {
            // One at a time: the calls cost what the one call would have.
            for (record, text) in sent.iter().zip(&texts) {
                let one = std::slice::from_ref(text);
                match embed_call(job, engine, record.line, one, space, cancel).await? {
                    Ok(served) => results.extend(served.items(&[*record], one)),
                    Err((why, _)) => results.push((failed(record.line, &record.id, why), false)),
                }
            }
        }
        Err((why, false)) => results.extend(
            sent.iter()
                .map(|r| (failed(r.line, &r.id, why.clone()), false)),
        ),
    }
    Some(results)
}

/// What one embed call of a batch served: the vectors (each as its JSON text) and what the call
/// cost, shared out.
struct EmbedServed {
    vectors: Vec<String>,
    deployment: String,
    attempts: u32,
    tokens: u64,
    cost_usd: f64,
    fell_back: bool,
}

impl EmbedServed {
    /// One `ok` item per record, each with its share of the call's tokens and cost (by its
    /// estimated size).
    fn items(self, records: &[&Record], texts: &[String]) -> Vec<(ItemResult, bool)> {
        let sizes: Vec<u64> = texts
            .iter()
            .map(|t| crate::protocol::request::estimate_text_tokens(t).max(1))
            .collect();
        let total = sizes.iter().sum::<u64>().max(1) as f64;
        records
            .iter()
            .zip(self.vectors)
            .zip(sizes)
            .map(|((r, vector), size)| {
                let share = size as f64 / total;
                let item = ItemResult {
                    line: r.line,
                    item_id: r.id.clone(),
                    status: Status::Ok,
                    // The vector's JSON text, as the engine wrote it: stored and written out
                    // as it is (`output_line`).
                    output: None,
                    raw: Some(vector),
                    deployment: Some(self.deployment.clone()),
                    attempts: self.attempts,
                    tokens: (self.tokens as f64 * share).round() as u64,
                    cost_usd: self.cost_usd * share,
                    error: None,
                    via: Via::Sync,
                };
                (item, self.fell_back)
            })
            .collect()
    }
}

/// One embed call for a batch, retried like a chat item (up to `max_attempts` calls; waiting
/// for room without spending one while every candidate is at its batch share). `Err` is why it
/// failed, and whether the request itself was refused (so that its items may go one by one).
async fn embed_call(
    job: &Job,
    engine: &Engine,
    line: u64,
    texts: &[String],
    space: &OnceLock<String>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Result<EmbedServed, (String, bool)>> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        input: &'a [String],
    }
    // Serializing strings cannot fail.
    let body = serde_json::to_vec(&Body { input: texts }).unwrap_or_default();
    let mut options = RequestOptions {
        request_id: Some(format!("{}-{line}", job.name)),
        batch: true,
        ..RequestOptions::default()
    };
    let mut calls = 0u32;
    loop {
        options.embedding_space = space.get().cloned();
        let outcome = engine.embed(&job.task, options.clone(), &body).await;
        let f = match outcome.result {
            Ok(served) => {
                // One space (a group with cross_space = true may serve from several: then the
                // job takes what comes, as that group says).
                if let Some(s) = served.space.as_deref().filter(|s| !s.contains(',')) {
                    let _ = space.set(s.to_string());
                }
                let vectors = embeddings_of(&served.reply.body, texts.len());
                let Some(vectors) = vectors else {
                    return Some(Err(("the engine's reply held no vectors".into(), false)));
                };
                return Some(Ok(EmbedServed {
                    vectors,
                    deployment: served.deployment.to_string(),
                    attempts: calls + served.attempts,
                    tokens: served.reply.usage.total_tokens,
                    cost_usd: served.reply.cost_usd,
                    fell_back: served.fallback || calls > 0,
                }));
            }
            Err(f) => f,
        };
        let made = f.attempts.iter().filter(|a| a.latency_ms > 0).count() as u32;
        let why = format!("{}: {}", f.kind.as_str(), f.message);
        match f.kind {
            ErrorKind::InvalidRequest => return Some(Err((why, true))),
            ErrorKind::Auth | ErrorKind::BudgetExceeded => return Some(Err((why, false))),
            ErrorKind::RateLimited if made == 0 => room(cancel).await?,
            _ => {
                calls += made.max(1);
                if calls >= job.max_attempts {
                    return Some(Err((why, false)));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(calls))).await;
            }
        }
    }
}

/// The `embedding` of each item of a `list` reply as its JSON text, in index order, if it holds
/// `n` of them. The numbers are only scanned, never parsed.
fn embeddings_of(body: &[u8], n: usize) -> Option<Vec<String>> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        data: Vec<Item<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        index: usize,
        #[serde(borrow)]
        embedding: &'a RawValue,
    }
    let list: List<'_> = serde_json::from_slice(body).ok()?;
    let mut out = vec![String::new(); n];
    for item in list.data {
        let text = item.embedding.get();
        if !text.starts_with('[') {
            return None;
        }
        *out.get_mut(item.index)? = text.to_string();
    }
    out.iter().all(|v| !v.is_empty()).then_some(out)
}
