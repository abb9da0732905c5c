//! `switchyard batch run` as a user runs it: the real binary on a few thousand items against a
//! fake provider, killed with SIGKILL at random points and started again with the same command.
//! Every input item must appear exactly once in the output, in input order, and no item that had
//! finished (was in the checkpoint when the process died) may be sent to the provider again.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::openai_deployment;
use common::{FakeProvider, Fault};
use serde_json::Value;

const ITEMS: usize = 3000;

fn setup(dir: &Path, fake: &FakeProvider) {
    let job = r#"
name = "triage"
task = "classify"
prompt = "Ticket {{id}}: {{body}}"
max_tokens = 8
concurrency = 16
max_attempts = 2
output = { labels = ["billing", "bug", "other"] }
"#;
    std::fs::write(dir.join("job.toml"), job).unwrap();
    let input: String = (0..ITEMS)
        .map(|i| format!("{{\"id\":\"t{i}\",\"body\":\"My invoice {i} is wrong\"}}\n"))
        .collect();
    std::fs::write(dir.join("input.jsonl"), input).unwrap();
    let config = format!(
        "[storage]\npath = \":memory:\"\n[tasks]\nclassify = \"main\"\n{}",
        openai_deployment("p", "main", &fake.base_url(), "")
    )
    .replace("TEST_KEY_ENV", "BATCH_TEST_KEY");
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
        .env("BATCH_TEST_KEY", "sk-batch")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Lines (1-based) finished in the checkpoint now.
fn finished(dir: &Path) -> HashSet<u64> {
    let db = rusqlite::Connection::open(dir.join("batch.db")).unwrap();
    let mut q = match db.prepare("SELECT line FROM items") {
        Ok(q) => q,
        Err(_) => return HashSet::new(),
    };
    q.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|l| l.unwrap() as u64)
        .collect()
}

/// The item id a recorded provider request was for.
fn item_of(body: &Value) -> Option<String> {
    let text = body["messages"].as_array()?.last()?["content"].as_str()?;
    Some(text.strip_prefix("Ticket ")?.split(':').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_and_resumed_every_item_exactly_once_and_never_resent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(Fault::delay(
        Duration::from_millis(4),
        Fault::Reply {
            text: "Billing".into(),
            prompt_tokens: 20,
            completion_tokens: 1,
        },
    ));
    setup(dir.path(), &fake);

    // (kill time, lines finished at that time)
    let mut kills: Vec<(Instant, HashSet<u64>)> = Vec::new();
    let mut seed = 0x9e37_79b9_u64;
    for _ in 0..4 {
        let mut child = command(dir.path()).spawn().unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 150 + (seed >> 33) % 500;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let at = Instant::now();
        kills.push((at, finished(dir.path())));
    }
    let out = command(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every item exactly once, in input order, all ok.
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ITEMS);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("t{i}"));
        assert_eq!(l["status"], "ok", "{l}");
        assert_eq!(l["output"], "billing");
    }

    // No finished item was sent again after the kill that found it finished.
    let requests = fake.requests();
    let mut calls: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        *calls.entry(item_of(&r.body).unwrap()).or_default() += 1;
    }
    assert_eq!(calls.len(), ITEMS, "every item was called");
    for (at, done) in &kills {
        let done_ids: HashSet<String> = done.iter().map(|l| format!("t{}", l - 1)).collect();
        let resent: Vec<_> = requests
            .iter()
            .filter(|r| r.at > *at)
            .filter_map(|r| item_of(&r.body))
            .filter(|id| done_ids.contains(id))
            .collect();
        assert!(resent.is_empty(), "finished items sent again: {resent:?}");
    }
    assert!(!kills.is_empty(), "the run was killed at least once");
    let repeats = calls.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} kills, finished at each: {:?}; {} items called more than once (in flight at a kill)",
        kills.len(),
        kills.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(),
        repeats
    );
}

/// An embed job (`kind = "embed"`) killed and resumed the same way: every item exactly once with
/// the vector of its own text, in input order, and nothing finished embedded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embed_job_killed_and_resumed_embeds_every_item_exactly_once() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start_named("e").await;
    fake.set_default(Fault::delay(
        Duration::from_millis(20),
        Fault::Reply {
            text: String::new(),
            prompt_tokens: 40,
            completion_tokens: 0,
        },
    ));
    let job = "name = \"docs\"\ntask = \"embed\"\nkind = \"embed\"\ninput = \"{{id}}: {{body}}\"\nconcurrency = 4\n";
    std::fs::write(dir.path().join("job.toml"), job).unwrap();
    let text = |i: usize| format!("t{i}: refund policy number {i}");
    let input: String = (0..N)
        .map(|i| format!("{{\"id\":\"t{i}\",\"body\":\"refund policy number {i}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("input.jsonl"), input).unwrap();
    let config = format!(
        "[storage]\npath = \":memory:\"\n[tasks]\nembed = \"main\"\n[[deployments]]\nname = \"e\"\ngroup = \"main\"\nprovider = \"openai\"\nmode = \"embedding\"\nmodel = \"text-embedding-3-small\"\ndimensions = 16\nmax_inputs = 8\napi_base = \"{}\"\napi_key_env = \"BATCH_TEST_KEY\"\n",
        fake.base_url()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();

    let mut kills: Vec<(Instant, HashSet<u64>)> = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for _ in 0..3 {
        let mut child = command(dir.path()).spawn().unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(200 + (seed >> 33) % 600)).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push((Instant::now(), finished(dir.path())));
    }
    let out = command(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("t{i}"));
        assert_eq!(l["status"], "ok", "{l}");
        assert!(l.get("output").is_none() && l.get("raw").is_none(), "{l}");
        let got: Vec<f32> = l["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, common::fake::embed::vector(&text(i), 16), "line {i}");
    }

    // Calls carried at most max_inputs items; nothing finished before a kill was sent after it.
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.inputs.is_some_and(|n| n <= 8)));
    let ids = |r: &common::Recorded| -> Vec<String> {
        r.body["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().split(':').next().unwrap().to_string())
            .collect()
    };
    let mut called: HashSet<String> = HashSet::new();
    for r in &requests {
        called.extend(ids(r));
    }
    assert_eq!(called.len(), N, "every item was embedded");
    for (at, done) in &kills {
        let done_ids: HashSet<String> = done.iter().map(|l| format!("t{}", l - 1)).collect();
        let resent: Vec<String> = requests
            .iter()
            .filter(|r| r.at > *at)
            .flat_map(ids)
            .filter(|id| done_ids.contains(id))
            .collect();
        assert!(
            resent.is_empty(),
            "finished items embedded again: {resent:?}"
        );
    }
    assert!(!kills.is_empty(), "the run was killed at least once");
    eprintln!(
        "{} kills, finished at each: {:?}; {} calls for {N} items",
        kills.len(),
        kills.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(),
        requests.len()
    );
}
