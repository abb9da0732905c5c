//! Batches over NATS inside `serve`: submit, per-item results to a subscriber, status, cancel, and
//! a restarted `serve` finishing a batch it had left running.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::harness::{Running, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;
use serde_json::{Value, json};

const JOB: &str = r#"
name = "triage"
task = "classify"
prompt = "Ticket {{id}}: {{body}}"
concurrency = 4
output = { labels = ["billing", "bug", "other"] }
"#;

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i}"), "body": format!("invoice {i} is wrong")}))
        .collect()
}

async fn setup(db: &std::path::Path) -> (NatsServer, FakeProvider, switchyard::config::Config) {
    setup_with(db, "").await
}

/// As `setup`, with more config sections.
async fn setup_with(
    db: &std::path::Path,
    more: &str,
) -> (NatsServer, FakeProvider, switchyard::config::Config) {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(Fault::delay(
        Duration::from_millis(10),
        Fault::Reply {
            text: "billing".into(),
            prompt_tokens: 12,
            completion_tokens: 1,
        },
    ));
    let rest = format!(
        "[storage]\npath = {:?}\n[tasks]\nclassify = \"main\"\n{more}",
        db.display().to_string()
    );
    let cfg = config(
        &nats.url(),
        &rest,
        &openai_deployment("p", "main", &fake.base_url(), ""),
    );
    (nats, fake, cfg)
}

/// Submits `n` generated items with `JOB`; returns the batch id.
async fn submit(client: &async_nats::Client, n: usize) -> String {
    let r = request(
        client,
        "llm.batch.submit".into(),
        json!({"job": JOB, "items": items(n)}),
    )
    .await;
    r["batch_id"].as_str().expect("a batch id").to_string()
}

/// The next `n` result messages (each within 10 s).
async fn next_results(results: &mut async_nats::Subscriber, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a result within 10 s")
            .expect("subscription open");
        out.push(serde_json::from_slice(&m.payload).expect("a result is JSON"));
    }
    out
}

/// Asks `llm.batch.<id>.status` until the batch is in `state` (within 10 s).
async fn wait_for_state(client: &async_nats::Client, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = request(client, format!("llm.batch.{id}.status"), json!({})).await;
        if s["state"] == state {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached {state}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn request(client: &async_nats::Client, subject: String, body: Value) -> Value {
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.to_string().into()),
    )
    .await
    .expect("an answer")
    .expect("a reply");
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_batch_streams_every_result_and_answers_status() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, fake, cfg) = setup(&dir.path().join("sy.db")).await;
    let sy = Running::start(&nats, cfg).await;
    let mut results = sy.client.subscribe("llm.batch.*.results").await.unwrap();
    let mut progress = sy.client.subscribe("llm.batch.*.progress").await.unwrap();
    sy.client.flush().await.unwrap();

    let bad = request(
        &sy.client,
        "llm.batch.submit".into(),
        json!({"job": "name = 1"}),
    )
    .await;
    assert_eq!(bad["error"]["kind"], "invalid_request");

    let r = request(
        &sy.client,
        "llm.batch.submit".into(),
        json!({"job": JOB, "items": items(50)}),
    )
    .await;
    let id = r["batch_id"].as_str().unwrap().to_string();
    let mut seen = HashSet::new();
    while seen.len() < 50 {
        let m = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), format!("llm.batch.{id}.results"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["output"], "billing");
        assert!(
            seen.insert(v["id"].as_str().unwrap().to_string()),
            "each item once"
        );
    }
    // The last progress message says the batch is done.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), progress.next())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if v["state"] == "done" {
            assert_eq!(v["ok"], 50);
            break;
        }
    }
    let s = request(&sy.client, format!("llm.batch.{id}.status"), json!({})).await;
    assert_eq!(s["state"], "done");
    assert_eq!(s["ok"], 50);
    assert_eq!(s["failed"], 0);
    assert_eq!(fake.calls(), 50);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_new_calls_and_leaves_a_consistent_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, fake, cfg) = setup(&dir.path().join("sy.db")).await;
    let sy = Running::start(&nats, cfg).await;
    let mut results = sy.client.subscribe("llm.batch.*.results").await.unwrap();
    sy.client.flush().await.unwrap();
    let id = submit(&sy.client, 400).await;
    next_results(&mut results, 20).await;
    let c = request(&sy.client, format!("llm.batch.{id}.cancel"), json!({})).await;
    assert_eq!(c["cancelled"], true);
    // Once cancelled, the state settles and no more calls go out.
    let status = wait_for_state(&sy.client, &id, "cancelled").await;
    let calls = fake.calls();
    let done = status["done"].as_u64().unwrap();
    assert!(done < 400, "cancelled before the end: {done}");
    assert_eq!(
        calls as u64, done,
        "every call made is checkpointed, no more"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls(), calls, "no call after the cancel settled");
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_serve_finishes_a_batch_it_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, fake, cfg) = setup(&dir.path().join("sy.db")).await;
    let first = Running::start(&nats, cfg.clone()).await;
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut results = watcher.subscribe("llm.batch.*.results").await.unwrap();
    watcher.flush().await.unwrap();
    let r = request(
        &first.client,
        "llm.batch.submit".into(),
        json!({"job": JOB, "items": items(300)}),
    )
    .await;
    let id = r["batch_id"].as_str().unwrap().to_string();
    let mut seen = HashSet::new();
    while seen.len() < 30 {
        let m = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        seen.insert(v["id"].as_str().unwrap().to_string());
    }
    first.shutdown().await;
    let after_first = fake.calls();
    assert!(after_first < 300, "stopped mid-batch: {after_first}");

    let second = Running::start(&nats, cfg).await;
    while seen.len() < 300 {
        let m = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        seen.insert(v["id"].as_str().unwrap().to_string());
    }
    let s = wait_for_state(&second.client, &id, "done").await;
    assert_eq!(s["ok"], 300);
    assert_eq!(
        fake.calls(),
        300,
        "no item was sent twice across the restart"
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_only_its_share_of_the_limits_and_live_requests_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(Fault::Reply {
        text: "billing".into(),
        prompt_tokens: 12,
        completion_tokens: 1,
    });
    let rest = format!(
        "[storage]\npath = {:?}\n[tasks]\nclassify = \"main\"\n[batch]\nlive_reserve = 0.5\n",
        dir.path().join("sy.db").display().to_string()
    );
    let cfg = config(
        &nats.url(),
        &rest,
        &openai_deployment("p", "main", &fake.base_url(), "rpm = 10"),
    );
    let sy = Running::start(&nats, cfg).await;
    let mut results = sy.client.subscribe("llm.batch.*.results").await.unwrap();
    sy.client.flush().await.unwrap();
    let id = submit(&sy.client, 20).await;
    next_results(&mut results, 5).await;
    // The batch has spent its half of rpm = 10 and waits; live traffic still gets through.
    let extra = tokio::time::timeout(Duration::from_millis(700), results.next()).await;
    assert!(extra.is_err(), "the batch went past its share");
    for _ in 0..5 {
        let live = common::harness::ask(&sy.client, "classify", common::harness::HELLO, &[]).await;
        assert_eq!(live.served_by(), "p", "{}", live.body);
    }
    assert_eq!(fake.calls(), 10);
    let c = request(&sy.client, format!("llm.batch.{id}.cancel"), json!({})).await;
    assert_eq!(c["cancelled"], true);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_resumes_when_submitted_again() {
    let dir = tempfile::tempdir().unwrap();
    // Files are read only under `[batch] input_dir`.
    let more = format!(
        "[batch]\ninput_dir = {:?}\n",
        dir.path().display().to_string()
    );
    let (nats, fake, cfg) = setup_with(&dir.path().join("sy.db"), &more).await;
    let input = dir.path().join("tickets.jsonl");
    let lines: String = items(100).iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let submit = json!({"job": JOB, "input_path": input.display().to_string()});
    let sy = Running::start(&nats, cfg).await;
    let mut results = sy.client.subscribe("llm.batch.*.results").await.unwrap();
    sy.client.flush().await.unwrap();

    let id = request(&sy.client, "llm.batch.submit".into(), submit.clone()).await["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .unwrap()
            .unwrap();
    }
    request(&sy.client, format!("llm.batch.{id}.cancel"), json!({})).await;
    wait_for_state(&sy.client, &id, "cancelled").await;
    let again = request(&sy.client, "llm.batch.submit".into(), submit).await;
    assert_eq!(
        again["batch_id"],
        id.as_str(),
        "the same job and input are the same batch"
    );
    let s = wait_for_state(&sy.client, &id, "done").await;
    assert_eq!(s["ok"], 100);
    assert_eq!(
        fake.calls(),
        100,
        "nothing finished before the cancel was sent again"
    );
    sy.shutdown().await;
}

/// A deferred job submitted over NATS: progress shows the remote batch's state while the fake
/// holds it, and once it ends, status shows what it cost next to what it would have cost sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_batch_over_nats_shows_its_remote_state_and_its_saving() {
    use common::fake_batch::{Api, FakeBatch};
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let fake = FakeBatch::start(Api::OpenAi).await;
    fake.script(|s| s.hold = true);
    let rest = format!(
        "[storage]\npath = {:?}\n[tasks]\nclassify = \"main\"\n",
        dir.path().join("sy.db").display().to_string()
    );
    let deployment = openai_deployment("p", "main", &fake.base_url(), "batch_api = true\n");
    let sy = Running::start(&nats, config(&nats.url(), &rest, &deployment)).await;
    let mut progress = sy.client.subscribe("llm.batch.*.progress").await.unwrap();
    sy.client.flush().await.unwrap();
    let job = format!(
        "{JOB}max_tokens = 8\nmode = \"deferred\"\ndeadline = \"24h\"\npoll_interval = \"20ms\"\n"
    );
    let r = request(
        &sy.client,
        "llm.batch.submit".into(),
        json!({"job": job, "items": items(20)}),
    )
    .await;
    let id = r["batch_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();

    // While the provider holds the batch, progress names it and its state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let remote = loop {
        let m = tokio::time::timeout_at(deadline, progress.next())
            .await
            .expect("a progress message with the remote batch")
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if let Some(parts) = v["remote"].as_array()
            && parts.iter().any(|p| p["status"] == "in_progress")
        {
            break v;
        }
    };
    assert_eq!(remote["batch_id"], id);
    assert!(remote["remote"][0]["remote_id"].is_string(), "{remote}");
    fake.script(|s| s.hold = false);

    let s = wait_for_state(&sy.client, &id, "done").await;
    assert_eq!(s["ok"], 20, "{s}");
    let cost = s["cost_usd"].as_f64().unwrap();
    let sync = s["sync_equivalent_cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0 && (sync - 2.0 * cost).abs() < 1e-9,
        "half price: {s}"
    );
    assert_eq!(fake.submitted().len(), 20, "each item submitted once");
    sy.shutdown().await;
}
