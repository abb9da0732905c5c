//! What NATS tooling and operators see: the `$SRV` service verbs (`nats micro ls|info|stats`)
//! with each endpoint's counts, and `switchyard status` gathering every instance into one table.

mod common;

use std::time::Duration;

use async_nats::service::{Info, PingResponse, Stats};
use common::harness::{HELLO, Running, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;

/// Every answer to `subject` within half a second.
async fn gather(client: &async_nats::Client, subject: &str) -> Vec<async_nats::Message> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_ping_info_and_stats_answer_with_the_endpoints_and_their_counts() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("primary").await;
    let sy = Running::start(
        &nats,
        config(
            &nats.url(),
            "",
            &openai_deployment("primary", "main", &fake.base_url(), ""),
        ),
    )
    .await;
    fake.push(Fault::status(503));
    let mut failed = 0;
    for _ in 0..4 {
        let r = sy.ask("chat", HELLO, &[]).await;
        failed += usize::from(r.header("Llm-Error").is_some());
    }
    assert_eq!(failed, 1);
    sy.ask("chat", "not json", &[]).await;

    let pings = gather(&sy.client, "$SRV.PING").await;
    assert_eq!(pings.len(), 1);
    let ping: PingResponse = serde_json::from_slice(&pings[0].payload).unwrap();
    assert_eq!(ping.kind, "io.nats.micro.v1.ping_response");
    assert_eq!(ping.name, "switchyard");
    assert_eq!(ping.metadata["instance"], "test-1");

    // By name and by id, as `nats micro info switchyard` and `nats micro info switchyard ID` ask.
    let by_name = sy
        .client
        .request("$SRV.INFO.switchyard", "".into())
        .await
        .unwrap();
    let info: Info = serde_json::from_slice(&by_name.payload).unwrap();
    assert_eq!(info.kind, "io.nats.micro.v1.info_response");
    assert_eq!(info.id, ping.id);
    let mut subjects: Vec<&str> = info.endpoints.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        ["llm.batch.submit", "llm.chat.>", "llm.embed.>", "llm.status"]
    );

    let by_id = sy
        .client
        .request(format!("$SRV.STATS.switchyard.{}", ping.id), "".into())
        .await
        .unwrap();
    let stats: Stats = serde_json::from_slice(&by_id.payload).unwrap();
    assert_eq!(stats.kind, "io.nats.micro.v1.stats_response");
    let chat = stats
        .endpoints
        .iter()
        .find(|e| e.subject == "llm.chat.>")
        .unwrap();
    assert_eq!(chat.requests, 5, "{chat:?}");
    assert_eq!(chat.errors, 2, "the 503 and the bad JSON: {chat:?}");
    assert_eq!(
        chat.last_error.as_ref().map(|e| e.status.as_str()),
        Some("invalid_request")
    );
    assert!(chat.processing_time > Duration::ZERO);
    assert!(chat.average_processing_time <= chat.processing_time);
    assert_eq!(chat.queue_group, "switchyard");
    let status = stats
        .endpoints
        .iter()
        .find(|e| e.subject == "llm.status")
        .unwrap();
    assert!(
        status.requests >= 1,
        "the harness waits on status: {status:?}"
    );
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_status_shows_every_instance() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("primary").await;
    let deployment = openai_deployment("primary", "main", &fake.base_url(), "");
    let one = Running::start(&nats, config(&nats.url(), "", &deployment)).await;
    let two = one.start_second("test-2").await;
    one.ask("chat", HELLO, &[]).await;
    two.ask("chat", HELLO, &[]).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        format!(
            // A list, as for a NATS cluster: the first server is down, the second answers.
            "[nats]\nurl = \"nats://127.0.0.1:1, {}\"\n{}",
            nats.url(),
            deployment.replace("TEST_KEY_ENV", "STATUS_TEST_KEY")
        ),
    )
    .unwrap();
    let status = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("status")
            .args(args)
            .arg("--config")
            .arg(&file)
            .env("STATUS_TEST_KEY", "sk-status")
            .output()
            .unwrap()
    };
    let run = |args: &[&str]| {
        let out = status(args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&["--gather", "1s"]);
    assert!(table.starts_with("INSTANCE"), "{table}");
    for instance in ["test-1", "test-2"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(instance) && l.contains("primary")),
            "{instance} missing:\n{table}"
        );
    }
    let json = run(&["--gather", "1s", "--json"]);
    let instances: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["instance"].to_string())
        .collect();
    assert_eq!(instances, ["\"test-1\"", "\"test-2\""]);

    // The container health check: one instance by id, and a failure for one that is gone.
    let out = run(&["--json", "--instance", "test-2"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("\"instance\":\"test-2\""), "{out}");
    let gone = status(&["--instance", "test-9"]);
    assert!(!gone.status.success());
    let err = String::from_utf8(gone.stderr).unwrap();
    assert!(err.contains("instance test-9 did not answer"), "{err}");
    two.shutdown().await;
    one.shutdown().await;
}
