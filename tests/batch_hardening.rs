//! Batches against callers who send what they should not: paths outside `[batch] input_dir`,
//! files whose contents must not come back in a reply, the same batch twice while it runs, items
//! no deployment could ever admit, and bytes that no parser may panic on.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::harness::{Running, config, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchyard::batch::input::Input;
use switchyard::batch::job::{Job, Template};
use switchyard::batch::runner::{self, Hooks, RunArgs};
use switchyard::engine::Engine;

const JOB: &str = r#"
name = "triage"
task = "classify"
prompt = "Ticket {{id}}: {{body}}"
concurrency = 2
output = { labels = ["billing", "bug", "other"] }
"#;

/// What `/etc/passwd` looks like: no line of it may come back in any answer.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice Example,,,:/home/alice:/bin/bash
";

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i}"), "body": format!("invoice {i} is wrong")}))
        .collect()
}

fn billing() -> Fault {
    Fault::Reply {
        text: "billing".into(),
        prompt_tokens: 12,
        completion_tokens: 1,
    }
}

/// A `serve` with one fake deployment; `input_dir` set when given.
async fn serve(
    db: &Path,
    input_dir: Option<&Path>,
    fault: Fault,
) -> (NatsServer, FakeProvider, Running) {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(fault);
    let mut rest = format!(
        "[storage]\npath = {:?}\n[tasks]\nclassify = \"main\"\n",
        db.display().to_string()
    );
    if let Some(dir) = input_dir {
        rest.push_str(&format!(
            "[batch]\ninput_dir = {:?}\n",
            dir.display().to_string()
        ));
    }
    let cfg = config(
        &nats.url(),
        &rest,
        &openai_deployment("p", "main", &fake.base_url(), ""),
    );
    let sy = Running::start(&nats, cfg).await;
    // `llm.status` answers before the batch service has subscribed: wait until it answers too.
    for _ in 0..100 {
        let asked = tokio::time::timeout(
            Duration::from_millis(200),
            sy.client.request("llm.batch.submit", "{}".into()),
        )
        .await;
        if asked.is_ok_and(|r| r.is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (nats, fake, sy)
}

/// The answer to a submit: its JSON body and its `Llm-Error` header, if any.
async fn submit(client: &async_nats::Client, body: Value) -> (Value, Option<String>) {
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("llm.batch.submit", body.to_string().into()),
    )
    .await
    .expect("an answer")
    .expect("a reply");
    let error = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Llm-Error"))
        .map(|v| v.as_str().to_string());
    (serde_json::from_slice(&m.payload).unwrap(), error)
}

fn assert_refused(answer: &(Value, Option<String>), names: &str) {
    let (body, header) = answer;
    assert_eq!(body["error"]["kind"], "invalid_request", "{body}");
    assert_eq!(header.as_deref(), Some("invalid_request"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(names), "names {names:?}: {message}");
    assert!(body.get("batch_id").is_none(), "{body}");
}

fn assert_quotes_nothing_of(text: &str, file: &str) {
    for line in file.lines() {
        assert!(!text.contains(line), "quotes {line:?}: {text}");
        for field in line.split(':').filter(|f| f.len() > 3) {
            assert!(!text.contains(field), "quotes {field:?}: {text}");
        }
    }
}

/// Every message of batch `id` on `llm.batch.>` until its final progress message: the result
/// count per item id, and that last message.
async fn until_the_end(
    sub: &mut async_nats::Subscriber,
    id: &str,
) -> (HashMap<String, u32>, Value) {
    let mut seen = HashMap::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("the batch goes on")
            .expect("subscription open");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.as_str() == format!("llm.batch.{id}.results") {
            *seen
                .entry(v["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        } else if m.subject.as_str() == format!("llm.batch.{id}.progress") && v["state"].is_string()
        {
            return (seen, v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_input_dir_every_path_is_refused_and_inline_batches_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("passwd.jsonl");
    std::fs::write(&secret, PASSWD).unwrap();
    let (_nats, fake, sy) = serve(&dir.path().join("sy.db"), None, billing()).await;

    let answer = submit(
        &sy.client,
        json!({"job_path": "/etc/passwd", "items": items(1)}),
    )
    .await;
    assert_refused(&answer, "/etc/passwd");
    assert!(
        answer.0["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input_dir")
    );
    assert_quotes_nothing_of(&answer.0.to_string(), PASSWD);
    let given = secret.display().to_string();
    let answer = submit(&sy.client, json!({"job": JOB, "input_path": given})).await;
    assert_refused(&answer, &given);
    assert_eq!(
        fake.calls(),
        0,
        "nothing of a refused file reached a provider"
    );

    let mut sub = sy.client.subscribe("llm.batch.>").await.unwrap();
    sy.client.flush().await.unwrap();
    let (ok, header) = submit(&sy.client, json!({"job": JOB, "items": items(3)})).await;
    assert_eq!(header, None);
    let id = ok["batch_id"]
        .as_str()
        .expect("inline job and items are accepted");
    let (seen, end) = until_the_end(&mut sub, id).await;
    assert_eq!(end["state"], "done", "{end}");
    assert_eq!(seen.len(), 3);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_read_only_under_input_dir_and_no_reply_quotes_a_file() {
    let root = tempfile::tempdir().unwrap();
    let inputs = root.path().join("inputs");
    std::fs::create_dir_all(inputs.join("sub")).unwrap();
    std::fs::write(root.path().join("outside.jsonl"), PASSWD).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.jsonl"), inputs.join("link.jsonl"))
        .unwrap();
    // Planted inside: readable, but its contents must not come back.
    std::fs::write(inputs.join("passwd"), PASSWD).unwrap();
    std::fs::write(inputs.join("passwd.csv"), PASSWD).unwrap();
    std::fs::write(inputs.join("passwd.jsonl"), PASSWD).unwrap();
    std::fs::write(inputs.join("job.toml"), JOB).unwrap();
    let lines: String = items(4).iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(inputs.join("sub/tickets.jsonl"), lines).unwrap();
    let (_nats, fake, sy) = serve(&root.path().join("sy.db"), Some(&inputs), billing()).await;

    for given in ["../outside.jsonl", "sub/../../outside.jsonl", "/etc/passwd"] {
        let answer = submit(&sy.client, json!({"job": JOB, "input_path": given})).await;
        assert_refused(&answer, given);
        assert!(
            answer.0["error"]["message"]
                .as_str()
                .unwrap()
                .contains("outside")
        );
        assert_quotes_nothing_of(&answer.0.to_string(), PASSWD);
    }
    let answer = submit(&sy.client, json!({"job": JOB, "input_path": "link.jsonl"})).await;
    assert_refused(&answer, "link.jsonl");
    let answer = submit(
        &sy.client,
        json!({"job_path": "../outside.jsonl", "items": items(1)}),
    )
    .await;
    assert_refused(&answer, "../outside.jsonl");

    // A job file that is not TOML: message and position, not its line.
    let answer = submit(&sy.client, json!({"job_path": "passwd", "items": items(1)})).await;
    assert_refused(&answer, "passwd");
    assert!(
        answer.0["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
    assert_quotes_nothing_of(&answer.0.to_string(), PASSWD);
    // A CSV whose rows lack the prompt's fields: line and field, not the row.
    let answer = submit(&sy.client, json!({"job": JOB, "input_path": "passwd.csv"})).await;
    assert_refused(&answer, "passwd.csv");
    let message = answer.0["error"]["message"].as_str().unwrap();
    assert!(message.contains("is missing"), "{message}");
    assert_quotes_nothing_of(&answer.0.to_string(), PASSWD);

    let mut sub = sy.client.subscribe("llm.batch.>").await.unwrap();
    sy.client.flush().await.unwrap();
    // JSONL lines that are not JSON: each item fails with its line number and what is wrong.
    let (ok, _) = submit(
        &sy.client,
        json!({"job": JOB, "input_path": "passwd.jsonl"}),
    )
    .await;
    let id = ok["batch_id"].as_str().expect("a batch id").to_string();
    let mut failed = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_quotes_nothing_of(&String::from_utf8_lossy(&m.payload), PASSWD);
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.as_str() == format!("llm.batch.{id}.results") {
            assert_eq!(v["status"], "failed");
            assert!(v["error"].as_str().unwrap().starts_with("line "), "{v}");
            failed += 1;
        } else if v["state"] == "done" {
            break;
        }
    }
    assert_eq!(failed, 3);
    assert_eq!(fake.calls(), 0);

    // Relative paths inside the folder work, for the job and the input.
    let (ok, header) = submit(
        &sy.client,
        json!({"job_path": "job.toml", "input_path": "sub/tickets.jsonl"}),
    )
    .await;
    assert_eq!(header, None, "{ok}");
    let id = ok["batch_id"].as_str().unwrap().to_string();
    let (seen, end) = until_the_end(&mut sub, &id).await;
    assert_eq!(end["state"], "done", "{end}");
    assert_eq!(end["ok"], 4);
    assert_eq!(seen.len(), 4);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_submit_while_the_batch_runs_answers_its_id_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Fault::delay(Duration::from_millis(150), billing());
    let (_nats, fake, sy) = serve(&dir.path().join("sy.db"), None, slow).await;
    let mut sub = sy.client.subscribe("llm.batch.>").await.unwrap();
    sy.client.flush().await.unwrap();
    let n = 8;
    let body = json!({"job": JOB, "items": items(n)});
    let (first, _) = submit(&sy.client, body.clone()).await;
    let (second, _) = submit(&sy.client, body).await;
    let id = first["batch_id"].as_str().expect("a batch id");
    assert_eq!(second["batch_id"], id, "the same job over the same items");

    let (seen, end) = until_the_end(&mut sub, id).await;
    assert_eq!(end["state"], "done", "{end}");
    assert_eq!(end["ok"], n);
    assert_eq!(seen.len(), n);
    assert!(
        seen.values().all(|&c| c == 1),
        "every item exactly once: {seen:?}"
    );
    let concurrency = 2;
    assert!(
        fake.calls() <= n + concurrency,
        "{} calls for {n} items",
        fake.calls()
    );
    // Another job over the same items is another batch.
    let other = JOB.replace("concurrency = 2", "concurrency = 3");
    let (third, _) = submit(&sy.client, json!({"job": other, "items": items(n)})).await;
    assert_ne!(third["batch_id"], id);
    sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_no_candidate_could_admit_fails_with_why_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(billing());
    // tpm 1000 with half kept for live traffic: a batch reservation may be at most 500.
    let rest = format!(
        "[storage]\npath = {:?}\n[tasks]\nclassify = \"main\"\n[batch]\nlive_reserve = 0.5\n",
        dir.path().join("sy.db").display().to_string()
    );
    let cfg = config(
        "nats://127.0.0.1:1",
        &rest,
        &openai_deployment("p", "main", &fake.base_url(), "tpm = 1000"),
    );
    std::fs::write(
        dir.path().join("job.toml"),
        JOB.replace("concurrency = 2", "max_tokens = 8"),
    )
    .unwrap();
    let long = "word ".repeat(2000);
    let input = format!(
        "{}\n{}\n",
        json!({"id": "short", "body": "my invoice is wrong"}),
        json!({"id": "long", "body": long})
    );
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let engine = Arc::new(Engine::start(&cfg, "test").await.unwrap());
    let args = RunArgs {
        job: dir.path().join("job.toml"),
        input: dir.path().join("in.jsonl"),
        output: Some(dir.path().join("out.jsonl")),
        db: dir.path().join("batch.db"),
        restart: false,
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        runner::run_on(engine.clone(), args, Hooks::default()),
    )
    .await
    .expect("the batch ends instead of waiting for room that never comes")
    .unwrap();
    engine.stop().await;
    assert_eq!((summary.ok, summary.failed), (1, 1));
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[1]["id"], "long");
    assert_eq!(lines[1]["status"], "failed");
    let why = lines[1]["error"].as_str().unwrap();
    assert!(
        why.starts_with("needs ~")
            && why.ends_with("above what every candidate's tpm allows a batch (500)"),
        "{why}"
    );
    assert_eq!(fake.calls(), 1, "the long item was never sent");
}

fn record_of(pairs: Vec<(String, String)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

fn read_all(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    if let Ok(input) = Input::open(&path) {
        for record in input {
            // Every record, well-formed or not, says what it is without panicking.
            let _ = record.map(|r| (r.line, r.id, r.fields.is_ok()));
        }
    }
    let _ = Input::hash(&path);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_text_panics_the_job_parser(text in any::<String>()) {
        let _ = Job::parse(&text, "fuzz.toml");
    }

    #[test]
    fn no_job_shaped_text_panics_the_job_parser(
        name in any::<String>(),
        prompt in any::<String>(),
        labels in proptest::collection::vec(any::<String>(), 0..4),
        concurrency in any::<i64>(),
    ) {
        let text = format!(
            "name = {name:?}\ntask = \"t\"\nprompt = {prompt:?}\nconcurrency = {concurrency}\n\
             output = {{ labels = {labels:?} }}\n"
        );
        if let Ok(job) = Job::parse(&text, "fuzz.toml") {
            let _ = job.request_body(&Map::new());
            let _ = job.check_output(&prompt);
        }
    }

    #[test]
    fn no_template_or_record_panics_the_renderer(
        text in "(\\PC|\\{\\{|\\}\\}|\\{| |\\n){0,64}",
        pairs in proptest::collection::vec(("\\PC{0,8}", "\\PC{0,16}"), 0..6),
    ) {
        if let Ok(t) = Template::parse(&text) {
            let record = record_of(pairs);
            let rendered = t.render(&record);
            prop_assert_eq!(rendered.is_err(), t.missing_field(&record).is_some());
            let _ = t.to_string();
        }
    }

    #[test]
    fn no_bytes_panic_the_input_readers(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        text in "(\\PC|\\n|,|\"|\\{|\\}|:){0,256}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        read_all(dir.path(), "a.jsonl", &bytes);
        read_all(dir.path(), "a.csv", &bytes);
        read_all(dir.path(), "b.jsonl", text.as_bytes());
        read_all(dir.path(), "b.csv", text.as_bytes());
    }
}
