//! A remote batch's results as item outcomes: an answer is completed and priced as a sync reply
//! would be (by the deployment's adapter), at the deployment's `batch_discount`, and checked
//! against the job's output rule. An answer that passes is the item's result (`"via": "batch"`);
//! one that fails, an errored request, and a request that expired or was cancelled, go to the
//! sync walk with what they used up. Results come in any order; a `custom_id` we did not send,
//! or one seen twice, is ignored.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::store::{Carry, Outcome, Planned};
use crate::batch::checkpoint::{ItemResult, Status, Via};
use crate::batch::job::Job;
use crate::providers::Adapter;
use crate::providers::batch::ItemAnswer;

pub fn outcomes(
    job: &Job,
    adapter: &Adapter,
    items: &[Planned],
    answers: Vec<(String, ItemAnswer)>,
) -> Vec<Outcome> {
    let by_id: HashMap<&str, &Planned> = items.iter().map(|p| (p.custom_id.as_str(), p)).collect();
    let mut seen = HashSet::new();
    let deployment = &adapter.config.name;
    let discount = adapter.config.batch_discount;
    let mut out = Vec::with_capacity(answers.len());
    for (custom_id, answer) in answers {
        let Some(item) = by_id.get(custom_id.as_str()) else {
            tracing::warn!(%custom_id, "a batch result for a request we did not send: ignored");
            continue;
        };
        if !seen.insert(item.line) {
            tracing::warn!(%custom_id, "a second batch result for one request: ignored");
            continue;
        }
        let retry = |attempts, error: String| {
            Outcome::Retry(
                item.line,
                Carry {
                    attempts,
                    error,
                    ..Carry::default()
                },
            )
        };
        let reply = match answer {
            ItemAnswer::Answered(answer) => adapter.complete(0, answer),
            ItemAnswer::Errored(why) => {
                out.push(retry(1, format!("batch at {deployment}: {why}")));
                continue;
            }
            ItemAnswer::Expired => {
                out.push(retry(0, format!("batch at {deployment}: expired")));
                continue;
            }
            ItemAnswer::Canceled => {
                out.push(retry(0, format!("batch at {deployment}: cancelled")));
                continue;
            }
        };
        let text = completion_text(&reply.body);
        let (tokens, full) = (reply.usage.total_tokens, reply.cost_usd);
        let cost = full * discount;
        match job.check_output(&text) {
            Ok(output) => out.push(Outcome::Done(
                ItemResult {
                    line: item.line,
                    item_id: item.item_id.clone(),
                    status: Status::Ok,
                    output: Some(output),
                    raw: Some(text),
                    deployment: Some(deployment.clone()),
                    attempts: 1,
                    tokens,
                    cost_usd: cost,
                    error: None,
                    via: Via::Batch,
                },
                full,
            )),
            Err(reason) => out.push(Outcome::Retry(
                item.line,
                Carry {
                    attempts: 1,
                    tokens,
                    cost_usd: cost,
                    full_cost_usd: full,
                    raw: Some(text),
                    error: format!("output from {deployment} (batch): {reason}"),
                    exclude: Some(deployment.clone()),
                },
            )),
        }
    }
    out
}

/// The assistant's text in a `chat.completion`.
pub fn completion_text(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}
