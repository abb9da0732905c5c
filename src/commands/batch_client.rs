//! `switchyard batch submit|status|results|cancel`: the client side of batches run by `serve`
//! over NATS (`llm.batch.*`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::batch::input::Input;
use crate::cli::BatchCommand;
use crate::config::Config;
use crate::protocol::subjects::{BatchVerb, Subjects};

pub async fn run(command: BatchCommand) -> anyhow::Result<()> {
    match command {
        BatchCommand::Run(_) => anyhow::bail!("`batch run` runs in-process, not over NATS"),
        BatchCommand::Submit {
            job,
            input,
            wait,
            config,
        } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            // Read here, sent inline: the server needs no access to these files.
            let body = tokio::task::spawn_blocking(move || submit_body(&job, &input)).await??;
            let size = body.to_string().len();
            let max = client.server_info().max_payload;
            if size > max {
                anyhow::bail!(
                    "the job and its items are {size} bytes, more than the NATS server's \
                     max_payload ({max}): split the input, or run it with `switchyard batch run`"
                );
            }
            let subjects = Subjects::new(&config.nats.prefix);
            // Subscribe before submitting, so that no early result is missed.
            let mut results = client
                .subscribe(subjects.batch("*", BatchVerb::Results))
                .await?;
            let mut progress = client
                .subscribe(subjects.batch("*", BatchVerb::Progress))
                .await?;
            let answer = ask(&client, subjects.batch_submit(), body).await?;
            let Some(id) = answer["batch_id"].as_str() else {
                anyhow::bail!("refused: {}", answer["error"]["message"]);
            };
            println!("{id}");
            if wait {
                follow(id, &subjects, &mut results, &mut progress).await?;
            }
            Ok(())
        }
        BatchCommand::Status { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let subject = Subjects::new(&config.nats.prefix).batch(&id, BatchVerb::Status);
            println!(
                "{}",
                serde_json::to_string_pretty(&ask(&client, subject, json!({})).await?)?
            );
            Ok(())
        }
        BatchCommand::Results { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let subjects = Subjects::new(&config.nats.prefix);
            let mut results = client
                .subscribe(subjects.batch(&id, BatchVerb::Results))
                .await?;
            let mut progress = client
                .subscribe(subjects.batch(&id, BatchVerb::Progress))
                .await?;
            follow(&id, &subjects, &mut results, &mut progress).await
        }
        BatchCommand::Cancel { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let subject = Subjects::new(&config.nats.prefix).batch(&id, BatchVerb::Cancel);
            println!("{}", ask(&client, subject, json!({})).await?);
            Ok(())
        }
    }
}

/// The `llm.batch.submit` body for a job file over an input file (JSONL or CSV), both read on
/// this machine: `{job, items}`. A record without an `id` gets the one `batch run` would give it
/// (its line number), so results name the same items either way. A malformed line stops here,
/// before anything is sent.
pub fn submit_body(job: &Path, input: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(job).with_context(|| format!("cannot read {}", job.display()))?;
    let mut items = Vec::new();
    for record in Input::open(input)? {
        let record = record?;
        let mut fields = record
            .fields
            .map_err(|why| anyhow::anyhow!("{}: {why}", input.display()))?;
        if !matches!(fields.get("id"), Some(Value::String(_) | Value::Number(_))) {
            fields.insert("id".into(), Value::String(record.id));
        }
        items.push(Value::Object(fields));
    }
    Ok(json!({"job": text, "items": items}))
}

async fn ask(client: &async_nats::Client, subject: String, body: Value) -> anyhow::Result<Value> {
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.clone(), body.to_string().into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer on {subject}"))?
    .map_err(|e| {
        anyhow::anyhow!(
            "{subject}: {e} (is `switchyard serve` running, and does it have this batch?)"
        )
    })?;
    Ok(serde_json::from_slice(&m.payload)?)
}

/// Prints results as they come until the batch's progress says it ended.
async fn follow(
    id: &str,
    subjects: &Subjects,
    results: &mut async_nats::Subscriber,
    progress: &mut async_nats::Subscriber,
) -> anyhow::Result<()> {
    let mine = |subject: &str| subjects.batch_id_of(subject) == Some(id);
    loop {
        tokio::select! {
            Some(m) = results.next() => {
                if mine(&m.subject) {
                    println!("{}", String::from_utf8_lossy(&m.payload));
                }
            }
            Some(m) = progress.next() => {
                if !mine(&m.subject) {
                    continue;
                }
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                match v["state"].as_str() {
                    Some(state) => {
                        eprintln!("batch {id}: {state} ({} ok, {} failed)", v["ok"], v["failed"]);
                        return Ok(());
                    }
                    None => eprintln!("batch {id}: {}/{} done, {} failed", v["done"], v["total"], v["failed"]),
                }
            }
            else => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submit_body_carries_the_job_text_and_the_items_inline() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        std::fs::write(&job, "name = \"j\"\n").unwrap();
        let jsonl = dir.path().join("in.jsonl");
        std::fs::write(
            &jsonl,
            "{\"id\": \"a\", \"body\": \"x\"}\n\n{\"body\": \"y\"}\n",
        )
        .unwrap();
        let body = submit_body(&job, &jsonl).unwrap();
        assert_eq!(body["job"], "name = \"j\"\n");
        assert_eq!(
            body["items"],
            json!([{"id": "a", "body": "x"}, {"id": "3", "body": "y"}])
        );
        assert!(body.get("input_path").is_none() && body.get("job_path").is_none());

        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "body\nhello\n").unwrap();
        let body = submit_body(&job, &csv).unwrap();
        assert_eq!(body["items"], json!([{"id": "2", "body": "hello"}]));

        std::fs::write(&jsonl, "{\"body\": \"x\"}\nnot json\n").unwrap();
        let err = submit_body(&job, &jsonl).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
