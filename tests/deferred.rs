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

use common::fake_batch::{Api, FakeBatch};
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
