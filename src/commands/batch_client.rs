//! `switchyard batch submit|status|results|cancel`: the client side of batches run by `serve`
//! over NATS (`llm.batch.*`).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cli::BatchCommand;
use crate::config::Config;

pub async fn run(command: BatchCommand) -> anyhow::Result<()> {
    match command {
        BatchCommand::Run { .. } => anyhow::bail!("`batch run` runs in-process, not over NATS"),
        BatchCommand::Submit {
            job,
            input,
            wait,
            config,
        } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("cannot read {}", job.display()))?;
            let input = std::path::absolute(&input)?;
            let prefix = &config.nats.prefix;
            // Subscribe before submitting, so that no early result is missed.
            let mut results = client
                .subscribe(format!("{prefix}.batch.*.results"))
                .await?;
            let mut progress = client
                .subscribe(format!("{prefix}.batch.*.progress"))
                .await?;
            let body = json!({"job": text, "input_path": input.display().to_string()});
            let answer = ask(&client, format!("{prefix}.batch.submit"), body).await?;
            let Some(id) = answer["batch_id"].as_str() else {
                anyhow::bail!("refused: {}", answer["error"]["message"]);
            };
            println!("{id}");
            if wait {
                follow(id, prefix, &mut results, &mut progress).await?;
            }
            Ok(())
        }
        BatchCommand::Status { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let subject = format!("{}.batch.{id}.status", config.nats.prefix);
            println!(
                "{}",
                serde_json::to_string_pretty(&ask(&client, subject, json!({})).await?)?
            );
            Ok(())
        }
        BatchCommand::Results { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let prefix = &config.nats.prefix;
            let mut results = client
                .subscribe(format!("{prefix}.batch.{id}.results"))
                .await?;
            let mut progress = client
                .subscribe(format!("{prefix}.batch.{id}.progress"))
                .await?;
            follow(&id, prefix, &mut results, &mut progress).await
        }
        BatchCommand::Cancel { id, config } => {
            let config = Config::load(&config)?;
            let client = crate::ingress::connect(&config.nats, "switchyard-batch").await?;
            let subject = format!("{}.batch.{id}.cancel", config.nats.prefix);
            println!("{}", ask(&client, subject, json!({})).await?);
            Ok(())
        }
    }
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
    prefix: &str,
    results: &mut async_nats::Subscriber,
    progress: &mut async_nats::Subscriber,
) -> anyhow::Result<()> {
    let mine = format!("{prefix}.batch.{id}.");
    loop {
        tokio::select! {
            Some(m) = results.next() => {
                if m.subject.starts_with(&mine) {
                    println!("{}", String::from_utf8_lossy(&m.payload));
                }
            }
            Some(m) = progress.next() => {
                if !m.subject.starts_with(&mine) {
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
