//! Async jobs over JetStream (docs/contract.md §1b), seen from a client: submit jobs, read the
//! results stream, watch the shared consumer; and the real `switchyard serve` binary, to be
//! killed with SIGKILL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use super::FakeProvider;
use super::harness::openai_deployment;

pub const JOBS: &str = "LLM_JOBS";
pub const RESULTS: &str = "LLM_RESULTS";
pub const CONSUMER: &str = "switchyard";

/// A chat request whose user message names the job, so the fake's records can be counted per job.
pub fn job_body(id: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": format!("job {id}")}], "max_tokens": 20})
        .to_string()
}

/// Publishes a job on `llm.submit.<task>` with `Nats-Msg-Id = id` (none when `id` is `None`)
/// and extra headers; returns the PubAck to await.
pub async fn submit(
    js: &jetstream::Context,
    task: &str,
    id: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> PublishAckFuture {
    let mut h = HeaderMap::new();
    if let Some(id) = id {
        h.insert("Nats-Msg-Id", id);
    }
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    js.publish_with_headers(format!("llm.submit.{task}"), h, body.to_string().into())
        .await
        .expect("publish a job")
}

/// Submits one job per id and waits for every PubAck.
pub async fn submit_all(js: &jetstream::Context, ids: &[String]) {
    let mut acks = Vec::with_capacity(ids.len());
    for id in ids {
        acks.push(submit(js, "chat", Some(id), &job_body(id), &[]).await);
    }
    for ack in acks {
        ack.await.expect("the job is stored");
    }
}

/// Messages per subject in the results stream.
pub async fn result_counts(js: &jetstream::Context) -> HashMap<String, usize> {
    let stream = js.get_stream(RESULTS).await.expect("the results stream");
    let mut subjects = stream
        .info_with_subjects("llm.result.>")
        .await
        .expect("results per subject");
    let mut counts = HashMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, n) = entry.expect("a subject count");
        counts.insert(subject, n);
    }
    counts
}

/// Messages in the results stream.
pub async fn results_total(js: &jetstream::Context) -> u64 {
    match js.get_stream(RESULTS).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// The shared jobs consumer, as the server sees it now.
pub async fn consumer_info(js: &jetstream::Context) -> consumer::Info {
    let stream = js.get_stream(JOBS).await.expect("the jobs stream");
    stream.consumer_info(CONSUMER).await.expect("consumer info")
}

/// Waits until `serve` has created the streams and the shared consumer.
pub async fn wait_jobs_ready(js: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = js.get_stream(JOBS).await
            && s.consumer_info(CONSUMER).await.is_ok()
            && js.get_stream(RESULTS).await.is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serve never set up the job streams"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every job up to stream sequence `last` was delivered and acked.
pub async fn wait_drained(js: &jetstream::Context, last: u64) {
    wait_until("every job acked", Duration::from_secs(120), || async {
        let i = consumer_info(js).await;
        i.delivered.stream_sequence >= last && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
}

/// Reads the first stored message on `subject` through a consumer filtered on it: finds a
/// result stored before the call as well as one yet to come.
pub async fn read_result(
    js: &jetstream::Context,
    subject: &str,
    timeout: Duration,
) -> async_nats::Message {
    let stream = js.get_stream(RESULTS).await.expect("the results stream");
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("a consumer on the result subject")
        .messages()
        .await
        .expect("messages");
    let m = tokio::time::timeout(timeout, messages.next())
        .await
        .unwrap_or_else(|_| panic!("no result on {subject} within {timeout:?}"))
        .expect("consumer open")
        .expect("a result");
    m.message
}

pub fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

pub fn body(m: &async_nats::Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

/// Provider calls per job id, from the fake's records (the user message is `job <id>`).
pub fn calls_per_job(fake: &FakeProvider) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in fake.requests() {
        if let Some(id) = r.body["messages"][0]["content"]
            .as_str()
            .and_then(|c| c.strip_prefix("job "))
        {
            *calls.entry(id.to_string()).or_default() += 1;
        }
    }
    calls
}

/// A config file for the binary: one OpenAI deployment on `fake`, task `chat`, and `jobs` as the
/// `[jobs]` section's body.
pub fn serve_config(dir: &Path, nats_url: &str, fake: &FakeProvider, jobs: &str) -> PathBuf {
    let text = format!(
        "[nats]\nurl = \"{nats_url}\"\n[storage]\npath = {:?}\n[tasks]\nchat = \"main\"\n[jobs]\n{jobs}\n{}",
        dir.join("switchyard.db").display().to_string(),
        openai_deployment("p", "main", &fake.base_url(), "")
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// `switchyard serve` as a child process, logging to a file (a pipe nobody reads would fill up).
pub struct ServeProcess {
    child: Child,
    pub log: PathBuf,
}

impl ServeProcess {
    pub fn start(config: &Path, name: &str) -> ServeProcess {
        let log = config.with_file_name(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(config)
            .env("TEST_KEY_ENV", super::harness::TEST_KEY)
            .env("SWITCHYARD_INSTANCE", name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("run switchyard serve");
        ServeProcess { child, log }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits; `true` if it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().is_ok_and(|s| s.success())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stream's config as the server holds it (to check what `serve` created).
pub async fn stream_config(js: &jetstream::Context, name: &str) -> stream::Config {
    js.get_stream(name)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("stream info")
        .config
        .clone()
}
