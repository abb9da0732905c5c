//! Batch throughput: `switchyard batch run` (the real release binary) over a large JSONL file.
//!
//! `cargo bench --bench batch` writes, in a temp dir, a 100,000-line ticket file and a
//! classification job (`concurrency = 64`, labels billing/bug/other), then runs the batch twice,
//! each in its own process:
//! - simulated: one `simulated` deployment answering at once (`latency = "0ms"`), so the time is
//!   the runner's own: input passes, engine, label check, SQLite checkpoints, output file;
//! - openai-fake: one `openai` deployment against the tests' fake OpenAI-compatible server on
//!   127.0.0.1 (in this process), answering at once with a label, adding a real HTTP round trip
//!   per item.
//!
//! For each: wall time from spawn to exit, items/s, CPU time of the process (user + system), and
//! its peak RSS (VmHWM from /proc, polled every 100 ms). The output must have one `ok` line per
//! input line, in input order. Prints a table and writes `target/bench/batch.json`; the process's
//! stdout/stderr go to `target/bench/batch-<case>.log`.
//! - embed-fake: an embed job (`kind = "embed"`) through the fake's `/embeddings`, answering at
//!   once with 64-number vectors: up to 256 items per provider call (the calls are counted: at
//!   most items / 256 and a few), each vector checkpointed and written.
//!
//! Flags (after `--`): `--items N` to run N items instead of 100,000; `--only CASE[,CASE]` to run
//! some of the cases (simulated, openai-fake, embed-fake).

#[path = "../tests/common"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod common {
    pub mod fake;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fake::{FakeProvider, Fault};
use serde_json::{Value, json};

const DEFAULT_ITEMS: usize = 100_000;
/// A run that takes longer than this is stuck: it is killed and the bench fails.
const GIVE_UP: Duration = Duration::from_secs(1800);

const JOB: &str = r#"name = "bench-triage"
task = "classify"
system = "You route support tickets for a SaaS invoicing product. Answer with the label only."
prompt = """
Which queue should handle this ticket: billing, bug or other?

{{body}}"""
max_tokens = 4
temperature = 0.0
concurrency = 64
max_attempts = 3
output = { labels = ["billing", "bug", "other"] }
"#;

/// The embed case: an embed job, vectors of this size, this many items per provider call.
const EMBED_JOB: &str = r#"name = "bench-embed"
task = "embed"
kind = "embed"
input = "{{body}}"
concurrency = 8
"#;
const EMBED_DIMS: usize = 64;
const EMBED_MAX_INPUTS: usize = 256;

struct Row {
    case: &'static str,
    /// Provider calls, where the case counts them.
    calls: Option<usize>,
    items: usize,
    wall: Duration,
    cpu: Duration,
    peak_rss_mb: f64,
}

impl Row {
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let items = args
        .iter()
        .position(|a| a == "--items")
        .map_or(DEFAULT_ITEMS, |i| {
            args.get(i + 1)
                .and_then(|n| n.replace(['_', ','], "").parse().ok())
                .filter(|n| *n > 0)
                .expect("--items takes a positive number")
        });
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();

    write_input(&dir.join("input.jsonl"), items);
    std::fs::write(dir.join("job.toml"), JOB).expect("job file");
    eprintln!("{items} items in {}", dir.display());

    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let runs = |case: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|c| c == case))
    };
    let mut rows = Vec::new();

    // Case A: the runner and engine alone, against an instant in-process provider.
    if runs("simulated") {
        let config = format!(
            "{COMMON}{}",
            deployment(
                "sim",
                "simulated",
                "latency = \"0ms\"\nanswers = [\"billing\", \"bug\", \"other\"]\n"
            )
        );
        rows.push(run_case("simulated", dir, &config, items, &out_dir));
    }

    // Case B: the same through HTTP to a fake OpenAI-compatible server in this process.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if runs("openai-fake") {
        let fake = runtime.block_on(FakeProvider::start_named("bench"));
        fake.set_default(Fault::Reply {
            text: "bug".into(),
            prompt_tokens: 48,
            completion_tokens: 1,
        });
        let config = format!(
            "{COMMON}{}",
            deployment(
                "fake",
                "openai",
                &format!(
                    "api_base = \"{}\"\napi_key_env = \"SWITCHYARD_BENCH_KEY\"\ntimeout = \"30s\"\n",
                    fake.base_url()
                )
            )
        );
        rows.push(run_case("openai-fake", dir, &config, items, &out_dir));
        assert_eq!(
            fake.calls(),
            items,
            "openai-fake: the fake must get one call per item"
        );
        fake.shutdown();
        drop(fake);
    }

    // Case C: an embed job (`kind = "embed"`) through HTTP to the fake's `/embeddings`, which
    // answers at once: up to `max_inputs` items per call, each vector checkpointed and written.
    if runs("embed-fake") {
        let fake = runtime.block_on(FakeProvider::start_named("bench-embed"));
        fake.set_embed_dimensions(EMBED_DIMS);
        std::fs::write(dir.join("embed.toml"), EMBED_JOB).expect("job file");
        let config = format!(
            // Still in COMMON's [tasks].
            "{COMMON}embed = \"main\"\n\n{}",
            deployment_of(
                "fake-embed",
                "openai",
                "text-embedding-3-small",
                &format!(
                    "mode = \"embedding\"\ndimensions = {EMBED_DIMS}\nmax_inputs = {EMBED_MAX_INPUTS}\napi_base = \"{}\"\napi_key_env = \"SWITCHYARD_BENCH_KEY\"\ntimeout = \"30s\"\n",
                    fake.base_url()
                )
            )
        );
        let mut row = run_job("embed-fake", "embed.toml", dir, &config, items, &out_dir);
        let calls = fake.calls();
        let floor = items.div_ceil(EMBED_MAX_INPUTS);
        eprintln!("embed-fake: {calls} provider calls for {items} items (at least {floor})");
        assert!(
            calls <= floor + floor / 10 + 8,
            "embed-fake: {calls} calls for {items} items in calls of {EMBED_MAX_INPUTS}"
        );
        row.calls = Some(calls);
        rows.push(row);
        fake.shutdown();
        drop(fake);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));

    let machine = machine();
    let mut table = format!(
        "machine: {machine}\n{:<12} {:>8} {:>8} {:>9} {:>7} {:>8} {:>7}\n",
        "case", "items", "wall s", "items/s", "cpu s", "peak MB", "calls"
    );
    for r in &rows {
        table.push_str(&format!(
            "{:<12} {:>8} {:>8.2} {:>9.0} {:>7.2} {:>8.1} {:>7}\n",
            r.case,
            r.items,
            r.wall.as_secs_f64(),
            r.items_per_s(),
            r.cpu.as_secs_f64(),
            r.peak_rss_mb,
            r.calls.map_or_else(|| "-".to_string(), |n| n.to_string())
        ));
    }
    table.push_str(&format!(
        "embed-fake: {EMBED_DIMS}-number vectors, {EMBED_MAX_INPUTS} items per call\n"
    ));
    println!("{table}");
    let report = json!({
        "machine": machine,
        "concurrency": 64,
        "rows": rows.iter().map(|r| json!({
            "case": r.case,
            "items": r.items,
            "wall_s": r.wall.as_secs_f64(),
            "items_per_s": r.items_per_s(),
            "cpu_s": r.cpu.as_secs_f64(),
            "peak_rss_mb": r.peak_rss_mb,
            "provider_calls": r.calls,
        })).collect::<Vec<_>>(),
    });
    let path = out_dir.join("batch.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json")).expect("write");
    println!("written: {}", path.display());
}

const COMMON: &str = r#"[storage]
path = ":memory:"

[tasks]
classify = "main"

"#;

fn deployment(name: &str, provider: &str, extra: &str) -> String {
    deployment_of(name, provider, "gpt-4o-mini", extra)
}

fn deployment_of(name: &str, provider: &str, model: &str, extra: &str) -> String {
    format!(
        r#"[[deployments]]
name = "{name}"
group = "main"
provider = "{provider}"
model = "{model}"
context_window = 128000
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
{extra}"#
    )
}

/// One run of the real binary on a fresh checkpoint database; checks its output.
fn run_case(case: &'static str, dir: &Path, config: &str, items: usize, logs: &Path) -> Row {
    run_job(case, "job.toml", dir, config, items, logs)
}

fn run_job(
    case: &'static str,
    job: &str,
    dir: &Path,
    config: &str,
    items: usize,
    logs: &Path,
) -> Row {
    let config_path = dir.join(format!("{case}.toml"));
    std::fs::write(&config_path, config).expect("config");
    let output = dir.join(format!("{case}.out.jsonl"));
    let log = std::fs::File::create(logs.join(format!("batch-{case}.log"))).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["batch", "run"])
        .arg(dir.join(job))
        .arg("--input")
        .arg(dir.join("input.jsonl"))
        .arg("--output")
        .arg(&output)
        .arg("--db")
        .arg(dir.join(format!("{case}.db")))
        .arg("--config")
        .arg(&config_path)
        .env("SWITCHYARD_BENCH_KEY", "sk-bench")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);

    eprintln!("{case}: running");
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    // The wait happens on its own thread, so the wall time ends at the exit, not at a poll.
    let (exited, exit) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = exited.send(Instant::now());
        status
    });
    let mut peak_kb = 0;
    let ended = loop {
        // VmHWM only grows; the last reading before the exit is the run's peak, to within the
        // 100 ms poll.
        if let Some(kb) = status_kb(pid, "VmHWM:") {
            peak_kb = peak_kb.max(kb);
        }
        match exit.recv_timeout(Duration::from_millis(100)) {
            Ok(at) => break at,
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() > GIVE_UP => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("{case}: still running after {GIVE_UP:?}; killed");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{case}: waiter thread died"),
        }
    };
    let status = waiter.join().expect("waiter").expect("wait");
    let wall = ended - started;
    let cpu = children_cpu().saturating_sub(cpu0);
    assert!(
        status.success(),
        "{case}: switchyard batch run failed ({status}); see target/bench/batch-{case}.log"
    );
    check_output(case, &output, items);
    let row = Row {
        case,
        calls: None,
        items,
        wall,
        cpu,
        peak_rss_mb: peak_kb as f64 / 1024.0,
    };
    eprintln!(
        "{case}: {:.2} s, {:.0} items/s, peak {:.1} MB",
        wall.as_secs_f64(),
        row.items_per_s(),
        row.peak_rss_mb
    );
    row
}

/// One line per input line, in input order, every one `ok` with one of the labels.
fn check_output(case: &str, output: &Path, items: usize) {
    let text = std::fs::read_to_string(output).expect("output file");
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{case}: output line {}: {e}", i + 1));
        assert_eq!(v["id"], format!("t{i}"), "{case}: output line {}", i + 1);
        assert_eq!(v["status"], "ok", "{case}: output line {}: {v}", i + 1);
        let ok = match v.get("embedding") {
            Some(e) => e.as_array().is_some_and(|e| e.len() == EMBED_DIMS),
            None => matches!(v["output"].as_str(), Some("billing" | "bug" | "other")),
        };
        assert!(ok, "{case}: output line {}: {v}", i + 1);
        n += 1;
    }
    assert_eq!(n, items, "{case}: output lines");
}

/// `items` tickets, `{"id":"t<i>","body":"..."}`, one sentence each, varied by `i`.
fn write_input(path: &Path, items: usize) {
    const OPENINGS: [&str; 8] = [
        "Hi team,",
        "Hello,",
        "Urgent:",
        "Quick question:",
        "Good morning,",
        "Hey support,",
        "Dear Sir or Madam,",
        "",
    ];
    let mut out = String::with_capacity(items * 200);
    for i in 0..items {
        let n = 10_000 + i * 7 % 90_000;
        let amount = format!("{}.{:02}", 20 + i * 37 % 4_980, i % 100);
        let count = 2 + i % 47;
        let body = match i % 12 {
            0 => format!(
                "our card was charged twice for invoice INV-{n} ({amount} EUR) this month, please refund the duplicate."
            ),
            1 => format!(
                "exporting invoice INV-{n} to PDF cuts off the last page when it has more than {count} line items."
            ),
            2 => format!(
                "could you add a dark mode to the dashboard, our team of {count} works late most evenings?"
            ),
            3 => format!(
                "the VAT number is missing from invoice INV-{n} so our accountant cannot book the {amount} GBP."
            ),
            4 => format!(
                "every invoice.paid webhook for account {n} is delivered {count} times within a minute even though we answer 200."
            ),
            5 => format!(
                "we would like to move from monthly to annual billing for our {count} seats, is the discount applied automatically?"
            ),
            6 => format!(
                "clicking Save on the new customer form spins forever and the console shows TypeError at line {n}."
            ),
            7 => format!(
                "just wanted to say the new reminders feature saved us about {count} hours this month, great work."
            ),
            8 => format!(
                "we removed {count} seats mid-cycle, do we get a prorated credit of {amount} USD on the next invoice?"
            ),
            9 => format!(
                "the dashboard shows {amount} EUR outstanding but the CSV export for the same filter sums to a different total."
            ),
            10 => format!(
                "our procurement team needs your security questionnaire and SOC 2 report before renewal of contract {n}."
            ),
            _ => format!(
                "two-factor SMS codes for user {n} never arrive on Vodafone numbers although email codes work fine."
            ),
        };
        let opening = OPENINGS[i % OPENINGS.len()];
        let body = if opening.is_empty() {
            let mut b = body;
            b[..1].make_ascii_uppercase();
            b
        } else {
            format!("{opening} {body}")
        };
        out.push_str(&json!({"id": format!("t{i}"), "body": body}).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).expect("input file");
}

/// The CPU time (user + system) of this process's children that have been waited for.
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that closes the command name; cutime and cstime are 16 and 17.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((ticks(16) + ticks(17)) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `kB` value of `/proc/<pid>/status`, while the process is alive.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}
