//! Health under load (issue: status, alerts, metrics, traces): a provider that degrades — first
//! its latency, then its error rate — is reported on `llm.status.events` and in `llm.status`,
//! loses its traffic to the fallback before its circuit has to open, and is cleared once it
//! recovers, with exactly one raise and one clear per rule (no flapping).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::harness::{HELLO, Running, ask, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;
use serde_json::Value;

/// Keeps `n` requests going on `llm.chat.chat` until stopped; records who served each.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &async_nats::Client, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|_| {
                let (client, stop, served) = (client.clone(), stop.clone(), served.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = ask(&client, "chat", HELLO, &[]).await;
                        let by = r.header("Llm-Deployment").unwrap_or("error").to_string();
                        served.lock().unwrap().push(by);
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            tasks,
        }
    }

    /// Who served the requests answered from now on: call `since` with what this returns.
    fn mark(&self) -> usize {
        self.served.lock().unwrap().len()
    }

    fn since(&self, mark: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for by in &self.served.lock().unwrap()[mark..] {
            *counts.entry(by.clone()).or_default() += 1;
        }
        counts
    }

    async fn wait_answers(&self, mark: usize, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.mark() < mark + n {
            assert!(tokio::time::Instant::now() < deadline, "load stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Reads events until one matches; returns it. Every event read is kept in `log`.
async fn wait_event(
    events: &mut async_nats::Subscriber,
    log: &mut Vec<Value>,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} event within 60 s; saw {log:#?}"))
            .expect("events subscription");
        let e: Value = serde_json::from_slice(&msg.payload).expect("event JSON");
        log.push(e.clone());
        if matches(&e) {
            // Called right after the step it waits on: this is how long the rules took.
            eprintln!("{what}: {} ms", started.elapsed().as_millis());
            return e;
        }
    }
}

fn alert(rule: &'static str, state: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == "alert" && e["rule"] == rule && e["state"] == state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degrading_provider_is_alerted_shifted_away_from_and_cleared_without_flapping() {
    let nats = NatsServer::start();
    let primary = FakeProvider::start_named("primary").await;
    let backup = FakeProvider::start_named("backup").await;
    let rest = r#"
[routing]
default_group = "main"
fallbacks = { main = ["spare"] }

[alerts]
interval = "200ms"
window = "2s"
min_samples = 10
raise_after = 2
clear_after = 3
p95_floor = "50ms"
baseline_window = "10m"
probe_share = 0.1
"#;
    let deployments = openai_deployment("primary", "main", &primary.base_url(), "")
        + &openai_deployment("backup", "spare", &backup.base_url(), "");
    let sy = Running::start(&nats, config(&nats.url(), rest, &deployments)).await;
    let mut events = sy.client.subscribe("llm.status.events").await.unwrap();
    sy.client.flush().await.unwrap();
    let mut log = Vec::new();

    // Healthy: the primary serves everything and learns its baseline.
    let load = Load::start(&sy.client, 4);
    let mark = load.mark();
    load.wait_answers(mark, 200).await;
    let healthy = load.since(mark);
    assert_eq!(healthy.get("primary"), Some(&healthy.values().sum()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = sy.status().await;
        if s["deployments"][0]["latency_ms"]["baseline"].is_number() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no baseline: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Latency steps up from instant to 300 ms: P95 is far over twice the baseline.
    primary.set_default(Fault::delay(Duration::from_millis(300), Fault::Ok));
    let raised = wait_event(
        &mut events,
        &mut log,
        "p95 raised",
        alert("p95_latency", "raised"),
    )
    .await;
    assert_eq!(raised["deployment"], "primary");
    assert!(raised["value"].as_f64().unwrap() >= 300.0, "{raised}");
    let s = sy.status().await;
    assert_eq!(s["deployments"][0]["degraded"], true, "{s}");

    assert!(
        s["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "p95_latency" && a["deployment"] == "primary"),
        "{s}"
    );
    // Traffic moves to the fallback; a few probes still measure the primary.
    let mark = load.mark();
    load.wait_answers(mark, 200).await;
    let shifted = load.since(mark);
    let on_primary = shifted.get("primary").copied().unwrap_or(0);
    assert!(on_primary <= 50, "traffic did not shift away: {shifted:?}");
    assert!(
        shifted.get("backup").copied().unwrap_or(0) >= 150,
        "{shifted:?}"
    );
    // What `switchyard status` prints now (see it with --nocapture).
    let s = sy.status().await;
    let snapshot: switchyard::observe::StatusSnapshot = serde_json::from_value(s).unwrap();
    let table = switchyard::commands::status::table(&[snapshot]);
    assert!(
        table.contains("ALERT warning p95_latency on primary"),
        "{table}"
    );
    eprintln!("{table}");

    // Recovery: the probes see it fast again and the alert clears.
    primary.set_default(Fault::Ok);
    wait_event(
        &mut events,
        &mut log,
        "p95 cleared",
        alert("p95_latency", "cleared"),
    )
    .await;
    let mark = load.mark();
    load.wait_answers(mark, 100).await;
    let back = load.since(mark);
    assert!(
        back.get("primary").copied().unwrap_or(0) >= 80,
        "traffic did not come back: {back:?}"
    );

    // Errors step up: one call in eight answers 500 (12.5 %, over the 2 % rule; never three
    // failures in a row, so the breaker alone would never act).
    for _ in 0..400 {
        primary.push(Fault::status(500));
        for _ in 0..7 {
            primary.push(Fault::Ok);
        }
    }
    wait_event(
        &mut events,
        &mut log,
        "error_rate raised",
        alert("error_rate", "raised"),
    )
    .await;
    let mark = load.mark();
    load.wait_answers(mark, 200).await;
    let shifted = load.since(mark);
    assert!(
        shifted.get("primary").copied().unwrap_or(0) <= 50,
        "traffic did not shift away: {shifted:?}"
    );
    // Recovery: what is left of the error script is dropped.
    primary.clear_script();
    wait_event(
        &mut events,
        &mut log,
        "error_rate cleared",
        alert("error_rate", "cleared"),
    )
    .await;
    load.stop().await;

    // Drain what is left on the events subject, then check the whole log.
    sy.client.flush().await.unwrap();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await
    {
        log.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    let primary_alerts: Vec<(String, String)> = log
        .iter()
        .filter(|e| e["type"] == "alert" && e["deployment"] == "primary")
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs = |rule: &str| {
        primary_alerts
            .iter()
            .filter(|(r, _)| r == rule)
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs("p95_latency"), ["raised", "cleared"], "{log:#?}");
    assert_eq!(pairs("error_rate"), ["raised", "cleared"], "{log:#?}");
    assert!(
        !log.iter()
            .any(|e| e["type"] == "circuit" && e["deployment"] == "primary"),
        "the circuit had to open: traffic did not move early enough: {log:#?}"
    );
    for e in log.iter().filter(|e| e["type"] == "alert") {
        for key in [
            "state",
            "rule",
            "deployment",
            "value",
            "threshold",
            "at",
            "instance",
        ] {
            assert!(e.get(key).is_some(), "event without {key}: {e}");
        }
    }
    sy.shutdown().await;
}
