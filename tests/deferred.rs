//! Deferred batches (docs/contract.md §11) as a user runs them: the real binary, `switchyard batch
//! run` on a job with `mode = "deferred"`, against fake OpenAI and Anthropic batch APIs that speak
//! the wire formats, refuse what the real ones refuse and record every `custom_id` submitted.
//! Killed with SIGKILL while a remote batch runs, while it is being created and while its results
//! are being read, then run again: every item exactly once in the output, and no item submitted
//! twice. Errored, expired and rule-failing items are served sync; the deadline holds; parts are
//! cut by `max_batch_items` and by the provider's own limit; batch calls cost half.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fake_batch::{Api, FakeBatch, Script};
use common::harness::deployment;
use common::{FakeProvider, Fault};
use serde_json::Value;

/// 20 prompt and 1 completion tokens at 1 and 2 USD per Mtok.
const SYNC_COST: f64 = 22e-6;

struct Setup {
    items: usize,
    job: String,
    deployments: String,
}

fn job(extra: &str) -> String {
    format!(
        r#"
name = "triage"
task = "classify"
prompt = "Ticket {{{{id}}}}: {{{{body}}}}"
max_tokens = 8
max_attempts = 3
output = {{ labels = ["billing", "bug", "other"] }}
mode = "deferred"
poll_interval = "20ms"
{extra}
"#
    )
}

fn batch_deployment(api: Api, fake: &FakeBatch) -> String {
    let provider = match api {
        Api::OpenAi => "openai",
        Api::Anthropic => "anthropic",
    };
    deployment(
        provider,
        "p",
        "main",
        &fake.base_url(),
        "batch_api = true\n",
    )
}

fn write(dir: &Path, s: &Setup) {
    std::fs::write(dir.join("job.toml"), &s.job).unwrap();
    let input: String = (0..s.items)
        .map(|i| format!("{{\"id\":\"t{i}\",\"body\":\"My invoice {i} is wrong\"}}\n"))
        .collect();
    std::fs::write(dir.join("input.jsonl"), input).unwrap();
    let config = format!(
        "[storage]\npath = \":memory:\"\n[tasks]\nclassify = \"main\"\n{}",
        s.deployments
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// A fake of `api` scripted by `script`, and a folder with a job of `items` items (`job_extra`
/// added to the job file) on one deployment with `batch_api = true` there.
async fn started(
    api: Api,
    items: usize,
    job_extra: &str,
    script: impl FnOnce(&mut Script),
) -> (tempfile::TempDir, FakeBatch) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBatch::start(api).await;
    fake.script(script);
    let setup = Setup {
        items,
        job: job(job_extra),
        deployments: batch_deployment(api, &fake),
    };
    write(dir.path(), &setup);
    (dir, fake)
}

fn command(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.current_dir(dir)
        .args(["batch", "run", "job.toml", "--input", "input.jsonl"])
        .args([
            "--output",
            "out.jsonl",
            "--db",
            "batch.db",
            "--config",
            "config.toml",
        ])
        .env("TEST_KEY_ENV", common::harness::TEST_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn(dir: &Path) -> Child {
    command(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs the binary to its end on a blocking thread (the fakes run on this runtime meanwhile).
async fn run(dir: &Path) -> Output {
    let dir = dir.to_path_buf();
    let out = tokio::task::spawn_blocking(move || command(&dir).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn output(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every item once, in input order, ok with the label; and how many were served each way.
fn check_output(lines: &[Value], items: usize) -> HashMap<String, usize> {
    assert_eq!(lines.len(), items);
    let mut via = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("t{i}"), "{l}");
        assert_eq!(l["status"], "ok", "{l}");
        assert_eq!(l["output"], "billing", "{l}");
        *via.entry(l["via"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    via
}

/// Each item's `custom_id` submitted exactly once.
fn submitted_once(fake: &FakeBatch, items: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in fake.submitted() {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), items, "every item was submitted");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "submitted more than once: {twice:?}");
}

/// A value of the checkpoint (0 when it cannot be read yet).
fn db_count(dir: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(dir.join("batch.db"))
        .and_then(|db| db.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
}

async fn wait_db(dir: &Path, what: &str, sql: &str, at_least: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while db_count(dir, sql) < at_least {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn summary_value(out: &Output, prefix: &str) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    text[at + prefix.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_end_to_end_at_half_price_with_errored_and_wrong_answers_served_sync() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBatch::start(Api::OpenAi).await;
    fake.script(|s| {
        s.error_every = Some(7);
        s.wrong_every = Some(11);
    });
    let backup = FakeProvider::start_named("q").await;
    backup.set_default(Fault::Reply {
        text: "Billing".into(),
        prompt_tokens: 20,
        completion_tokens: 1,
    });
    let items = 50;
    write(
        dir.path(),
        &Setup {
            items,
            job: job("deadline = \"24h\"\nmax_batch_items = 20"),
            deployments: batch_deployment(Api::OpenAi, &fake)
                + &deployment("openai", "q", "main", &backup.base_url(), ""),
        },
    );
    let out = run(dir.path()).await;
    let lines = output(dir.path());
    let via = check_output(&lines, items);
    submitted_once(&fake, items);
    // 50 items in parts of 20: three files, three batches.
    assert_eq!(fake.state().batches.len(), 3);
    assert_eq!(fake.calls("upload"), 3);
    // Errored (7, 14, ... of each part) and wrong (11 of each part) items went sync.
    let errored = [20usize, 20, 10].iter().map(|n| n / 7).sum::<usize>();
    let wrong = [20usize, 20, 10]
        .iter()
        .map(|n| n / 11 - usize::from(*n >= 77))
        .sum::<usize>();
    let sync_calls = fake.state().sync_prompts.len() + backup.requests().len();
    assert_eq!(sync_calls, errored + wrong);
    assert_eq!(via["sync"], errored + wrong);
    assert_eq!(via["batch"], items - errored - wrong);
    // A wrong batch answer is never asked of the batch deployment again.
    let mut cost = 0.0;
    for l in &lines {
        let c = l["cost_usd"].as_f64().unwrap();
        cost += c;
        match (l["via"].as_str().unwrap(), l["attempts"].as_u64().unwrap()) {
            ("batch", 1) => assert!(close(c, SYNC_COST / 2.0), "{l}"),
            // An errored request was not paid; a wrong answer was, at half price.
            ("sync", 2) => assert!(close(c, SYNC_COST) || close(c, SYNC_COST * 1.5), "{l}"),
            _ => panic!("unexpected {l}"),
        }
    }
    for l in lines
        .iter()
        .filter(|l| close(l["cost_usd"].as_f64().unwrap(), SYNC_COST * 1.5))
    {
        assert_eq!(l["deployment"], "q", "{l}");
    }
    let batch_ok = (items - errored - wrong) as f64;
    let expected =
        batch_ok * SYNC_COST / 2.0 + wrong as f64 * SYNC_COST * 1.5 + errored as f64 * SYNC_COST;
    assert!(close(cost, expected), "{cost} vs {expected}");
    assert!((summary_value(&out, "cost $") - expected).abs() < 1e-6);
    let sync_equivalent = expected + (batch_ok + wrong as f64) * SYNC_COST / 2.0;
    assert!((summary_value(&out, "sync-equivalent cost $") - sync_equivalent).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_end_to_end_with_expired_items_served_sync() {
    let items = 30;
    let (dir, fake) = started(
        Api::Anthropic,
        items,
        "deadline = \"24h\"\nmax_batch_items = 10",
        |s| {
            s.expire_every = Some(4);
            s.error_every = Some(9);
        },
    )
    .await;
    let out = run(dir.path()).await;
    let lines = output(dir.path());
    let via = check_output(&lines, items);
    submitted_once(&fake, items);
    assert_eq!(fake.state().batches.len(), 3);
    assert!(
        fake.state().refused.is_empty(),
        "{:?}",
        fake.state().refused
    );
    // In each part of 10: 4 and 8 expired, 9 errored.
    let sync = 3 * 3;
    assert_eq!(via["sync"], sync);
    assert_eq!(fake.state().sync_prompts.len(), sync);
    // Every batch request carried max_tokens and the rendered prompt.
    for b in &fake.state().batches {
        for e in &b.entries {
            assert_eq!(e.body["max_tokens"], 8);
            let text = e.body["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap();
            assert!(text.starts_with("Ticket t"), "{}", e.body);
        }
    }
    for l in lines.iter().filter(|l| l["via"] == "batch") {
        assert!(
            close(l["cost_usd"].as_f64().unwrap(), SYNC_COST / 2.0),
            "{l}"
        );
    }
    let cost: f64 = lines.iter().map(|l| l["cost_usd"].as_f64().unwrap()).sum();
    let expected = (items - sync) as f64 * SYNC_COST / 2.0 + sync as f64 * SYNC_COST;
    assert!(close(cost, expected));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("msgbatch_"),
        "the summary lists the remote batches:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_remote_batch_runs_resumes_it_without_submitting_again() {
    for api in [Api::OpenAi, Api::Anthropic] {
        let items = 40;
        let (dir, fake) = started(
            api,
            items,
            "deadline = \"24h\"\nmax_batch_items = 15",
            |s| s.hold = true,
        )
        .await;
        let child = spawn(dir.path());
        // Every part created, its remote id stored, and polled at least once.
        wait_db(
            dir.path(),
            "three parts submitted",
            "SELECT COUNT(*) FROM remote_parts WHERE remote_id IS NOT NULL",
            3,
        )
        .await;
        fake.wait("polls", 30, |s| {
            s.calls.get("get").copied().unwrap_or(0) >= 3
        })
        .await;
        kill(child);
        assert_eq!(db_count(dir.path(), "SELECT COUNT(*) FROM items"), 0);
        // Run again: it re-attaches, and once the provider finishes, every item is done.
        let child = spawn(dir.path());
        let polls = fake.calls("get");
        fake.wait("polls after the restart", 30, |s| {
            s.calls["get"] >= polls + 3
        })
        .await;
        fake.script(|s| s.hold = false);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{api:?}");
        let via = check_output(&output(dir.path()), items);
        assert_eq!(via["batch"], items, "{api:?}");
        submitted_once(&fake, items);
        assert_eq!(fake.state().batches.len(), 3, "{api:?}");
        assert!(fake.state().sync_prompts.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_creating_before_storing_the_id_openai_finds_its_batch_by_metadata() {
    let items = 12;
    let (dir, fake) = started(Api::OpenAi, items, "deadline = \"24h\"", |s| {
        s.hold_create = true
    })
    .await;
    let child = spawn(dir.path());
    // The batch exists remotely; its create call has not answered.
    fake.wait("the batch created", 30, |s| s.batches.len() == 1)
        .await;
    kill(child);
    assert_eq!(
        db_count(
            dir.path(),
            "SELECT COUNT(*) FROM remote_parts WHERE remote_id IS NULL"
        ),
        1
    );
    fake.script(|s| s.hold_create = false);
    run(dir.path()).await;
    check_output(&output(dir.path()), items);
    submitted_once(&fake, items);
    assert_eq!(
        fake.calls("create"),
        1,
        "found by its metadata, not created again"
    );
    assert!(fake.calls("list") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_results_are_read_reads_them_again_and_applies_them_once() {
    for api in [Api::OpenAi, Api::Anthropic] {
        let items = 20;
        let (dir, fake) = started(api, items, "deadline = \"24h\"", |s| {
            s.hold_downloads = true;
            s.error_every = Some(5);
        })
        .await;
        let child = spawn(dir.path());
        fake.wait("a results download", 30, |s| s.downloads >= 1)
            .await;
        kill(child);
        assert_eq!(db_count(dir.path(), "SELECT COUNT(*) FROM items"), 0);
        fake.script(|s| s.hold_downloads = false);
        run(dir.path()).await;
        let via = check_output(&output(dir.path()), items);
        assert_eq!(via["sync"], 4, "{api:?}");
        assert_eq!(
            fake.state().sync_prompts.len(),
            4,
            "{api:?}: errored items served sync once"
        );
        submitted_once(&fake, items);
        assert!(fake.state().downloads >= 2, "the cut download was redone");
        assert_eq!(
            db_count(
                dir.path(),
                "SELECT COUNT(*) FROM remote_parts WHERE state = 'applied'"
            ),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_cutoff_remote_batches_are_cancelled_answers_kept_and_the_rest_done_sync() {
    for api in [Api::OpenAi, Api::Anthropic] {
        let items = 20;
        let (dir, fake) = started(
            api,
            items,
            "deadline = \"3s\"\nsync_reserve = \"2s\"",
            |s| {
                s.hold = true;
                s.answered_while_held = 6;
            },
        )
        .await;
        let started = Instant::now();
        let out = run(dir.path()).await;
        let wall = started.elapsed();
        assert!(
            wall < Duration::from_secs(3),
            "{api:?}: finished by the deadline ({wall:?})"
        );
        assert!(
            wall >= Duration::from_secs(1),
            "{api:?}: waited for the cutoff ({wall:?})"
        );
        let via = check_output(&output(dir.path()), items);
        assert_eq!(via["batch"], 6, "{api:?}: answers before the cancel kept");
        assert_eq!(via["sync"], 14, "{api:?}");
        assert_eq!(fake.state().sync_prompts.len(), 14);
        assert_eq!(fake.calls("cancel"), 1);
        submitted_once(&fake, items);
        let told = String::from_utf8_lossy(&out.stderr);
        assert!(
            told.contains("deadline cutoff: cancelling remote batch"),
            "{told}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_inside_the_reserve_runs_sync_at_once_and_no_batch_route_is_refused() {
    let (dir, fake) = started(Api::OpenAi, 5, "deadline = \"30m\"", |_| {}).await;
    let out = run(dir.path()).await;
    let via = check_output(&output(dir.path()), 5);
    assert_eq!(via["sync"], 5);
    assert!(fake.submitted().is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync_reserve"));

    // No deployment on the route has batch_api = true: refused before any call.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBatch::start(Api::OpenAi).await;
    write(
        dir.path(),
        &Setup {
            items: 5,
            job: job("deadline = \"24h\""),
            deployments: deployment("openai", "p", "main", &fake.base_url(), ""),
        },
    );
    let out = command(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("batch_api = true") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(fake.state().calls.is_empty() && fake.state().sync_prompts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_rate_limits_on_batch_calls_are_retried() {
    // The upload, then the create (after a 500 it looks for the batch first), then polls.
    let items = 10;
    let (dir, fake) = started(Api::OpenAi, items, "deadline = \"24h\"", |s| {
        s.failures = [503, 500, 429, 429].into()
    })
    .await;
    run(dir.path()).await;
    let via = check_output(&output(dir.path()), items);
    assert_eq!(via["batch"], items);
    submitted_once(&fake, items);
    assert_eq!(fake.state().batches.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_items_split_by_the_providers_limit() {
    let items = 100_000;
    let (dir, fake) = started(
        Api::OpenAi,
        items,
        "deadline = \"24h\"\nconcurrency = 64",
        |_| {},
    )
    .await;
    let started = Instant::now();
    let out = run(dir.path()).await;
    let wall = started.elapsed();
    let via = check_output(&output(dir.path()), items);
    assert_eq!(via["batch"], items);
    // OpenAI takes 50,000 requests per file.
    let sizes: Vec<usize> = fake
        .state()
        .batches
        .iter()
        .map(|b| b.entries.len())
        .collect();
    assert_eq!(sizes, [50_000, 50_000]);
    submitted_once(&fake, items);
    let cost = summary_value(&out, "cost $");
    let sync_equivalent = summary_value(&out, "sync-equivalent cost $");
    eprintln!("{items} items, 2 remote batches, {wall:?}, cost ${cost} vs ${sync_equivalent} sync");
    assert!((sync_equivalent - 2.0 * cost).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_refuse_what_the_real_apis_refuse() {
    let http = switchyard::providers::http::client().unwrap();
    let key = common::harness::TEST_KEY;
    // Anthropic: a duplicate custom_id, a bad one, and a request without max_tokens.
    let fake = FakeBatch::start(Api::Anthropic).await;
    let url = format!("{}/v1/messages/batches", fake.base_url());
    let params = serde_json::json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let mut no_max = params.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    for (requests, why) in [
        (
            serde_json::json!([{"custom_id": "a", "params": params}, {"custom_id": "a", "params": params}]),
            "duplicate custom_id",
        ),
        (
            serde_json::json!([{"custom_id": "a.b", "params": params}]),
            "custom_id: must match",
        ),
        (
            serde_json::json!([{"custom_id": "a", "params": no_max}]),
            "max_tokens: Field required",
        ),
    ] {
        let r = http
            .post(&url)
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(serde_json::json!({"requests": requests}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains(why), "{why}");
    }
    assert!(fake.submitted().is_empty());

    // OpenAI: a batch for another endpoint is refused; a file with a duplicate custom_id or a
    // line for another url makes a batch that fails validation.
    let fake = FakeBatch::start(Api::OpenAi).await;
    let base = fake.base_url();
    let line = |id: &str, url: &str| {
        format!(
            "{{\"custom_id\":\"{id}\",\"method\":\"POST\",\"url\":\"{url}\",\"body\":{{\"model\":\"m\"}}}}\n"
        )
    };
    let boundary = "b0undary";
    let file = line("a", "/v1/chat/completions") + &line("a", "/v1/embeddings");
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n{file}\r\n--{boundary}--\r\n"
    );
    let uploaded: Value = http
        .post(format!("{base}/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let create = |endpoint: &str| {
        http.post(format!("{base}/batches"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(serde_json::json!({"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": "24h"}).to_string())
            .send()
    };
    assert_eq!(create("/v1/completions").await.unwrap().status(), 400);
    let json = |text: String| serde_json::from_str::<Value>(&text).unwrap();
    let b = json(
        create("/v1/chat/completions")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let get = || {
        http.get(format!("{base}/batches/{}", b["id"].as_str().unwrap()))
            .bearer_auth(key)
            .send()
    };
    let failed = json(get().await.unwrap().text().await.unwrap());
    assert_eq!(failed["status"], "failed", "{failed}");
    let refused = fake.state().refused.join("\n");
    assert!(
        refused.contains("duplicate") && refused.contains("url"),
        "{refused}"
    );
}

/// `--restart` after a kill starts the batch over: the earlier run's remote batch, which may
/// still answer and would never be applied, is cancelled first — the items are not paid for twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_cancels_the_earlier_runs_remote_batch_before_sending_again() {
    let items = 10;
    let (dir, fake) = started(Api::OpenAi, items, "deadline = \"24h\"", |s| s.hold = true).await;
    let child = spawn(dir.path());
    wait_db(
        dir.path(),
        "the part submitted",
        "SELECT COUNT(*) FROM remote_parts WHERE remote_id IS NOT NULL",
        1,
    )
    .await;
    kill(child);
    assert_eq!(fake.calls("cancel"), 0);
    fake.script(|s| s.hold = false);
    let dir_path = dir.path().to_path_buf();
    let out =
        tokio::task::spawn_blocking(move || command(&dir_path).arg("--restart").output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fake.calls("cancel"),
        1,
        "the earlier remote batch was cancelled"
    );
    assert_eq!(fake.state().batches.len(), 2, "one batch per run");
    let via = check_output(&output(dir.path()), items);
    assert_eq!(via["batch"], items);
}
