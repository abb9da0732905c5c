//! Helpers for tests of several instances as one cluster: gathering every instance's
//! `llm.status` answer, waiting for an instance to share its state, and running real `serve`
//! processes that can be killed.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;
use serde_json::Value;

use super::harness::Running;

/// Every instance's `llm.status` answer, by instance name: returns as soon as `expect` answered,
/// or what came within `within`.
pub async fn gather_status(
    client: &Client,
    expect: usize,
    within: Duration,
) -> HashMap<String, Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply("llm.status", inbox, "".into())
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + within;
    let mut answers = HashMap::new();
    while answers.len() < expect {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        // A no-responders notice (empty) while no instance is up yet.
        let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) else {
            break;
        };
        answers.insert(v["instance"].as_str().unwrap_or_default().to_string(), v);
    }
    answers
}

/// The `circuit` of `deployment` in one status answer.
pub fn circuit<'a>(status: &'a Value, deployment: &str) -> &'a str {
    deployment_status(status, deployment)["circuit"]
        .as_str()
        .unwrap_or("?")
}

pub fn deployment_status<'a>(status: &'a Value, deployment: &str) -> &'a Value {
    status["deployments"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == deployment))
        .unwrap_or_else(|| panic!("no {deployment} in {status}"))
}

/// Polls `check` (every 20 ms) until it holds or `timeout` passes; says whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the instance reads and writes the cluster's bucket.
pub async fn wait_shared(r: &Running) {
    let shared = eventually(Duration::from_secs(20), || async {
        r.engine.status().await.cluster.shared
    })
    .await;
    assert!(
        shared,
        "instance {} never shared its state: {:?}",
        r.engine.instance(),
        r.engine.status().await.cluster
    );
}

/// A real `switchyard serve` process; killed (SIGKILL) on drop.
pub struct ServeProcess {
    child: Child,
    pub instance: String,
}

impl ServeProcess {
    pub fn start(config: &std::path::Path, instance: &str) -> ServeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(config)
            .env("SWITCHYARD_INSTANCE", instance)
            .env("TEST_KEY_ENV", super::harness::TEST_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run switchyard serve");
        ServeProcess {
            child,
            instance: instance.to_string(),
        }
    }

    /// SIGKILL, like a crash: nothing is drained.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
