//! `switchyard submit TASK --file req.json [--wait]`: publishes one async job on
//! `llm.submit.<TASK>` through JetStream (docs/contract.md §1b), prints its job id once the
//! server has stored it, and with `--wait` reads the result from the results stream — through a
//! consumer filtered on the result subject, so a result stored before we started waiting is found
//! too — and prints it the way `switchyard request` prints a reply.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures::StreamExt;

use super::request::{is_success, print_body, print_headers};
use crate::config::Config;
use crate::protocol::Subjects;
use crate::protocol::headers::{JOB_ID, RESULT_SUBJECT};

pub use crate::cli::SubmitArgs as Submit;

/// Submits the job; returns whether it succeeded (always `true` without `wait`).
pub async fn run(config: &Config, s: Submit) -> anyhow::Result<bool> {
    let body = if s.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read the request body from stdin")?;
        b
    } else {
        std::fs::read(&s.file).with_context(|| format!("cannot read {}", s.file.display()))?
    };
    let subjects = Subjects::new(&config.nats.prefix);
    let id = s.job_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut headers = HeaderMap::new();
    let mut result_subject = subjects.result(&id);
    for (k, v) in &s.headers {
        if k.eq_ignore_ascii_case(RESULT_SUBJECT) {
            result_subject = v.clone();
        }
        headers.insert(k.as_str(), v.as_str());
    }
    if !subjects.is_result(&result_subject) {
        anyhow::bail!(
            "the result subject `{result_subject}` is not a subject under {}: give a job id without '.', '*', '>' or spaces, or an {RESULT_SUBJECT} header under it",
            subjects.result_wildcard()
        );
    }

    let client = crate::ingress::connect(&config.nats, "switchyard-submit").await?;
    let mut js = jetstream::new(client);
    js.set_timeout(s.timeout);
    let subject = subjects.submit(&s.task);
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(body.into())
        .message_id(&id);
    let ack = js
        .send_publish(subject.clone(), publish)
        .await
        .with_context(|| format!("cannot publish on {subject}"))?
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{subject} was not stored: {e} (no stream captures it until `switchyard serve` has started once with [jobs] enabled)"
            )
        })?;
    println!("{id}");
    if ack.duplicate {
        eprintln!(
            "(a job with id {id} was already submitted: this one was dropped as a duplicate)"
        );
    }
    if !s.wait {
        return Ok(true);
    }
    let msg = tokio::time::timeout(s.timeout, result(&js, config, &result_subject, &id))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no result on {result_subject} within {:?} (the job stays queued; wait again later)",
                s.timeout
            )
        })??;
    print_headers(msg.headers.as_ref());
    print_body(&msg.payload)?;
    Ok(is_success(msg.headers.as_ref()))
}

/// The result of job `id`, from the results stream: already stored or yet to come.
async fn result(
    js: &jetstream::Context,
    config: &Config,
    subject: &str,
    id: &str,
) -> anyhow::Result<async_nats::Message> {
    // The stream appears when a `serve` starts; until then there is nothing to read.
    let stream = loop {
        match js.get_stream(&config.jobs.results_stream).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read {subject}"))?
        .messages()
        .await?;
    while let Some(m) = messages.next().await {
        let m = m.with_context(|| format!("reading {subject}"))?;
        // A result subject shared by several jobs carries the others' results too.
        if m.headers
            .as_ref()
            .and_then(|h| h.get(JOB_ID))
            .is_some_and(|v| v.as_str() == id)
        {
            return Ok(m.message);
        }
    }
    anyhow::bail!("the connection closed while waiting on {subject}")
}
