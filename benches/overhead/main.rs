//! What Switchyard adds to a call, against the physical floor, in one run on one upstream.
//!
//! `cargo bench --bench overhead` starts its own nats-server and an instant fake upstream (own
//! process), then measures three targets, each in its own process so that CPU and memory are
//! theirs alone:
//! - floor: a bare NATS responder → HTTP → reply (no routing, no actors);
//! - engine: `switchyard serve` on a realistic config (3 groups, 6 deployments, fallbacks,
//!   breaker, limits), requests on `llm.chat.chat`;
//! - engine-local: the same with `[cluster] enabled = false` (no KV round trip for rpm/tpm);
//! - engine-failover: the same with the first deployment answering 503, so every request falls
//!   back once (the breaker threshold is set out of reach so that it stays that way);
//! - http-floor: a bare HTTP passthrough (hyper → the same HTTP client → upstream), the floor of
//!   the HTTP door; http-floor-headers: the same answering with the engine's eight `Llm-*`
//!   headers (what the contract's reply costs the caller's HTTP client, apart from the engine);
//!   http-floor-checked: the same that also reads the request and checks the provider's reply
//!   as the engine does (the JSON work no router that refuses bad input can leave out);
//! - engine-http: `switchyard serve` with `[http] listen`, requests on `POST /v1/chat/completions`
//!   (the engine's config, `model = "chat"`), driven by an HTTP client with keep-alive.
//!
//! Loads: sequential, 64 in flight, open loop at 1k/2k/5k requests/s. Prints a table and the
//! engine/floor ratios, and writes `target/bench/overhead.json`.
//! Then each target but failover is started once more under valgrind's callgrind and its
//! user-space instructions per request counted over 2,000 sequential requests on its own door
//! (`callgrind.rs`), the HTTP door's against the HTTP floor's: the figure that stays put when
//! the machine's timings drift.
//! Flags (after `--`): `--quick` for a smoke run, `--soak 300s` to add a memory soak, `--only
//! engine` to run one target (e.g. under a profiler; `--only http-floor,engine-http` for a list),
//! `--no-callgrind` to skip the counts.
//! `SWITCHYARD_BENCH_BIN=path` runs another build of `switchyard` (an older commit's) as the
//! engine, for a before/after with the same harness.

#[path = "../../tests/common/nats.rs"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod nats;

mod callgrind;
mod floor;
mod load;
mod procs;
mod upstream;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use load::Summary;
use procs::Proc;

/// The HTTP door's body: the same request, its `model` naming the task (the door refuses a model
/// name it does not know, where NATS takes the subject's task).
const REQUEST_HTTP: &str = r#"{"model":"chat","messages":[{"role":"system","content":"You are a helpful travel assistant. Answer briefly."},{"role":"user","content":"Suggest a two-day itinerary for Lisbon in May, with one museum and one viewpoint per day."}],"temperature":0.7,"max_tokens":256}"#;

const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful travel assistant. Answer briefly."},{"role":"user","content":"Suggest a two-day itinerary for Lisbon in May, with one museum and one viewpoint per day."}],"temperature":0.7,"max_tokens":256}"#;

struct Plan {
    targets: Vec<&'static str>,
    warmup: usize,
    sequential: usize,
    in_flight_total: usize,
    open_loop: Duration,
    rates: Vec<u32>,
    soak: Option<Duration>,
    /// Sequential requests counted under callgrind per target (0: skip).
    counted: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("--upstream") => rt.block_on(upstream::run()),
        Some("--floor") => rt.block_on(floor::run(
            &args[2],
            &args[3],
            args.get(4).is_some_and(|a| a == "headers"),
        )),
        Some("--http-floor") => rt.block_on(floor::run_http(
            &args[2],
            floor::HttpFloor::of(args.get(3).map(String::as_str)),
        )),
        // `--drive <nats url> <subject or http url> <n> [in flight]`: load on a target started
        // by hand (to watch it with `perf stat` or `strace -c`); prints the summary.
        Some("--drive") => rt.block_on(drive(&args[2..])),
        _ => {
            let quick = args.iter().any(|a| a == "--quick");
            let soak = args
                .iter()
                .position(|a| a == "--soak")
                .and_then(|i| args.get(i + 1))
                .map(|s| humantime::parse_duration(s).expect("--soak takes a duration"));
            // `--only engine` (or floor, engine-failover): one target, e.g. to profile it.
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned();
            let no_callgrind = args.iter().any(|a| a == "--no-callgrind");
            let targets = [
                "floor",
                "floor-headers",
                "engine",
                "engine-local",
                "engine-failover",
                "http-floor",
                "http-floor-headers",
                "http-floor-checked",
                "engine-http",
            ]
            .into_iter()
            .filter(|t| {
                only.as_deref()
                    .is_none_or(|o| o.split(',').any(|o| o == *t))
            })
            .collect();
            let plan = if quick {
                Plan {
                    targets,
                    warmup: 200,
                    sequential: 2_000,
                    in_flight_total: 5_000,
                    open_loop: Duration::from_secs(1),
                    rates: vec![1_000, 2_000, 5_000],
                    soak,
                    counted: if no_callgrind { 0 } else { 300 },
                }
            } else {
                Plan {
                    targets,
                    warmup: 2_000,
                    sequential: 20_000,
                    in_flight_total: 60_000,
                    open_loop: Duration::from_secs(5),
                    rates: vec![1_000, 2_000, 5_000],
                    soak,
                    counted: if no_callgrind { 0 } else { 2_000 },
                }
            };
            rt.block_on(bench(plan));
        }
    }
}

async fn drive(args: &[String]) {
    let (door, body) = if args[1].starts_with("http://") {
        let door = load::Door::Http {
            client: switchyard::providers::http::client().expect("http client"),
            url: args[1].clone(),
        };
        (door, REQUEST_HTTP)
    } else {
        let client = async_nats::connect(&args[0]).await.expect("connect");
        let subject = args[1].clone();
        (load::Door::Nats { client, subject }, REQUEST)
    };
    let n: usize = args[2].parse().expect("n");
    let in_flight: usize = args.get(3).map_or(1, |c| c.parse().expect("in flight"));
    let body = Bytes::from_static(body.as_bytes());
    let sample = if in_flight > 1 {
        load::closed_loop(&door, &body, in_flight, n).await
    } else {
        load::sequential(&door, &body, n).await
    };
    println!("{:?}", sample.summary());
}

struct Row {
    target: &'static str,
    load: String,
    s: Summary,
    cpu_pct: f64,
    peak_rss_mb: f64,
}

/// The `switchyard` binary under test: this build's, or another one named by
/// `SWITCHYARD_BENCH_BIN` (e.g. an older commit's release build, for a before/after in one run of
/// the same harness).
fn engine_bin() -> PathBuf {
    std::env::var_os("SWITCHYARD_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_switchyard")),
        PathBuf::from,
    )
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    dir
}

async fn bench(plan: Plan) {
    let dir = out_dir();
    let me = std::env::current_exe().expect("own path");
    let nats = nats::NatsServer::start();
    let mut up = Proc::spawn(
        Command::new(&me).arg("--upstream"),
        &dir.join("upstream.log"),
    );
    let upstream = format!("http://127.0.0.1:{}", up.read_line());
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let body = Bytes::from_static(REQUEST.as_bytes());
    let http_body = Bytes::from_static(REQUEST_HTTP.as_bytes());
    eprintln!("nats {} · upstream {upstream}", nats.url());

    let mut rows = Vec::new();
    let mut idle = Vec::new();
    // Every target runs at once (each on its own subjects) and the loads go round them in turn,
    // in several rounds, so that drift on a shared machine hits floor and engine alike.
    let mut running = Vec::new();
    let http = switchyard::providers::http::client().expect("http client");
    let nats_door = |subject: String| load::Door::Nats {
        client: client.clone(),
        subject,
    };
    for &target in &plan.targets {
        let (proc, door, body) = match target {
            "floor" | "floor-headers" => {
                let headers = target == "floor-headers";
                let mut p = Proc::spawn(
                    Command::new(&me)
                        .args(["--floor", &nats.url(), &upstream])
                        .args(headers.then_some("headers")),
                    &dir.join(format!("{target}.log")),
                );
                assert_eq!(p.read_line(), "ready");
                let subject = if headers {
                    floor::SUBJECT_HEADERS
                } else {
                    floor::SUBJECT
                };
                (p, nats_door(subject.to_string()), body.clone())
            }
            "http-floor" | "http-floor-headers" | "http-floor-checked" => {
                let mut p = Proc::spawn(
                    Command::new(&me)
                        .args(["--http-floor", &upstream])
                        .args(target.strip_prefix("http-floor-")),
                    &dir.join(format!("{target}.log")),
                );
                let url = format!("http://127.0.0.1:{}/v1/chat/completions", p.read_line());
                let door = load::Door::Http {
                    client: http.clone(),
                    url,
                };
                (p, door, http_body.clone())
            }
            _ => {
                let prefix = target.replace('-', "_");
                let config = dir.join(format!("{target}.toml"));
                let listen = (target == "engine-http").then(free_port);
                let mut text = engine_config(
                    &nats.url(),
                    &prefix,
                    &upstream,
                    target == "engine-failover",
                    target != "engine-local",
                );
                if let Some(port) = listen {
                    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"));
                }
                std::fs::write(&config, text).expect("config");
                let p = Proc::spawn(
                    Command::new(engine_bin())
                        .args(["serve", "--config"])
                        .arg(&config)
                        .env("SWITCHYARD_INSTANCE", target),
                    &dir.join(format!("{target}.log")),
                );
                wait_ready(&client, &prefix).await;
                match listen {
                    Some(port) => {
                        let door = load::Door::Http {
                            client: http.clone(),
                            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
                        };
                        (p, door, http_body.clone())
                    }
                    None => (p, nats_door(format!("{prefix}.chat.chat")), body.clone()),
                }
            }
        };
        client.flush().await.expect("flush");
        let check = load::sequential(&door, &body, 1).await;
        assert_eq!(
            check.errors, 0,
            "{target}: the first request failed; see target/bench/*.log"
        );
        idle.push((target, proc.rss_mb()));
        eprintln!("{target}: warm-up");
        load::sequential(&door, &body, plan.warmup).await;
        running.push((target, proc, door, body));
    }

    // Reference: the same request straight to the upstream over HTTP, from this process.
    let direct_door = load::Door::Http {
        client: http.clone(),
        url: format!("{upstream}/v1/chat/completions"),
    };
    load::sequential(&direct_door, &body, plan.warmup).await;
    let direct = load::sequential(&direct_door, &body, plan.sequential).await;
    rows.push(Row {
        target: "direct-http",
        load: "sequential".into(),
        s: direct.summary(),
        cpu_pct: 0.0,
        peak_rss_mb: 0.0,
    });

    let mut loads: Vec<(String, Load)> = vec![
        ("sequential".into(), Load::Sequential(plan.sequential)),
        (
            "64 in flight".into(),
            Load::InFlight(64, plan.in_flight_total),
        ),
    ];
    for &rate in &plan.rates {
        loads.push((format!("open {rate}/s"), Load::Open(rate, plan.open_loop)));
    }
    // Each sequential round's (target, p50, p99), in the order they ran.
    let mut per_round: Vec<(&str, f64, f64)> = Vec::new();
    for (name, shape) in &loads {
        let mut merged: Vec<(load::Sample, f64, f64)> = running
            .iter()
            .map(|_| (load::Sample::default(), 0.0, 0.0))
            .collect();
        let rounds = shape.rounds();
        for _ in 0..rounds {
            for (i, (target, proc, door, body)) in running.iter().enumerate() {
                let run = shape.run(door, body);
                let (sample, cpu_pct, peak) = measure(proc, run).await;
                if matches!(shape, Load::Sequential(_)) {
                    let s = sample.summary();
                    per_round.push((*target, s.p50_us, s.p99_us));
                }
                let m = &mut merged[i];
                m.0.latencies_us.extend(sample.latencies_us);
                m.0.errors += sample.errors;
                m.0.wall += sample.wall;
                m.1 += cpu_pct / rounds as f64;
                m.2 = f64::max(m.2, peak);
            }
        }
        for ((target, _, _, _), (sample, cpu_pct, peak_rss_mb)) in running.iter().zip(merged) {
            let row = Row {
                target,
                load: name.clone(),
                s: sample.summary(),
                cpu_pct,
                peak_rss_mb,
            };
            eprintln!("{}", format_row(&row));
            rows.push(row);
        }
    }
    let mut doors = Vec::new();
    for (target, proc, door, body) in running {
        if let (Some(d), "engine") = (plan.soak, target) {
            soak(&door, &body, &proc, d).await;
        }
        proc.stop();
        doors.push((target, door, body));
    }
    let instructions = instructions(&plan, &client, &nats.url(), &upstream, &doors).await;
    up.child.kill().ok();

    let mut report = String::new();
    report.push_str(&machine());
    report.push_str(&format!(
        "\n{:<18} {:<13} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8}\n",
        "target",
        "load",
        "n",
        "err",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "req/s",
        "cpu%",
        "peak MB"
    ));
    for r in &rows {
        report.push_str(&format_row(r));
        report.push('\n');
    }
    if !instructions.is_empty() {
        report.push_str(&format!(
            "\ninstructions per request (callgrind, {} sequential, all threads, user space):\n",
            plan.counted
        ));
        // Each against its own floor: the HTTP door against the bare HTTP passthrough.
        let floor_of = |t: &str| match t {
            "http-floor" | "http-floor-headers" | "http-floor-checked" | "engine-http" => {
                "http-floor"
            }
            _ => "floor",
        };
        for (target, n) in &instructions {
            let floor = instructions
                .iter()
                .find(|(t, _)| *t == floor_of(target))
                .map(|(_, n)| *n);
            let ratio = floor.map_or(String::new(), |f| {
                format!("  {:.2}x {}", n / f, floor_of(target))
            });
            report.push_str(&format!("{target:<18} {:>8.1} k{ratio}\n", n / 1000.0));
        }
    }
    report.push_str("\nidle RSS after start: ");
    for (t, mb) in &idle {
        report.push_str(&format!("{t} {mb:.1} MB  "));
    }
    report.push_str("\n\nengine vs floor, same load:\n");
    let mut ratios = Vec::new();
    // The NATS targets against both floors: the bare one (issue #14's), and the one that answers
    // with the same `Llm-*` headers, which separates what the contract's reply costs the
    // caller's client and nats-server from the engine's own work.
    let pairs = [
        ("engine", "floor"),
        ("engine-local", "floor"),
        ("engine-failover", "floor"),
        ("engine-http", "http-floor"),
        ("engine", "floor-headers"),
        ("engine-local", "floor-headers"),
        ("engine-http", "http-floor-headers"),
        ("http-floor-checked", "http-floor"),
        ("engine-http", "http-floor-checked"),
    ];
    for (target, floor) in pairs {
        if floor == "floor-headers" && target == "engine" {
            report.push_str("\nthe same against the floor that sends the reply's headers:\n");
        }
        if target == "http-floor-checked" {
            report.push_str(
                "\nthe HTTP floor that also reads the request and checks the reply, and the engine against it:\n",
            );
        }
        for r in rows.iter().filter(|r| r.target == target) {
            let Some(f) = rows.iter().find(|f| f.target == floor && f.load == r.load) else {
                continue;
            };
            let line = format!(
                "{:<16} {:<13} p50 {:+7.0} µs ({:.2}x)  p99 {:+7.0} µs ({:.2}x)  throughput {:.2}x  errors {}",
                target,
                r.load,
                r.s.p50_us - f.s.p50_us,
                r.s.p50_us / f.s.p50_us,
                r.s.p99_us - f.s.p99_us,
                r.s.p99_us / f.s.p99_us,
                r.s.throughput_rps / f.s.throughput_rps,
                r.s.errors
            );
            report.push_str(&line);
            report.push('\n');
            let by_round = (r.load == "sequential")
                .then(|| median_round_difference(&per_round, target, floor))
                .flatten();
            if let Some((p50, p99)) = by_round {
                report.push_str(&format!(
                    "{:<16} {:<13} p50 {p50:+7.0} µs          p99 {p99:+7.0} µs          (median of {SEQUENTIAL_ROUNDS} rounds' differences)\n",
                    target, "  by round",
                ));
            }
            ratios.push(json!({
                "target": target, "floor": floor, "load": r.load,
                "added_p50_us": r.s.p50_us - f.s.p50_us, "added_p99_us": r.s.p99_us - f.s.p99_us,
                "p50_ratio": r.s.p50_us / f.s.p50_us, "p99_ratio": r.s.p99_us / f.s.p99_us,
                "throughput_ratio": r.s.throughput_rps / f.s.throughput_rps,
                "added_by_round_median": by_round.map(|(p50, p99)| json!({"p50_us": p50, "p99_us": p99})),
            }));
        }
    }
    println!("{report}");
    let json = json!({
        "machine": machine(),
        "rows": rows.iter().map(|r| json!({
            "target": r.target, "load": r.load, "summary": r.s,
            "cpu_pct": r.cpu_pct, "peak_rss_mb": r.peak_rss_mb,
        })).collect::<Vec<_>>(),
        "idle_rss_mb": idle.iter().map(|(t, mb)| json!({"target": t, "mb": mb})).collect::<Vec<_>>(),
        "ratios": ratios,
        "instructions_per_request": instructions
            .iter()
            .map(|(t, n)| json!({"target": t, "instructions": n}))
            .collect::<Vec<_>>(),
    });
    let path = dir.join("overhead.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write");
    std::fs::write(dir.join("overhead.txt"), &report).expect("write");
    println!("written: {}", path.display());
}

/// Instructions per request of each target but failover (whose upstream 503 is the same work
/// every time), counted under callgrind after the timed loads, one target at a time.
async fn instructions(
    plan: &Plan,
    client: &async_nats::Client,
    nats: &str,
    upstream: &str,
    doors: &[(&'static str, load::Door, Bytes)],
) -> Vec<(&'static str, f64)> {
    if plan.counted == 0 {
        return Vec::new();
    }
    if !callgrind::available() {
        eprintln!("valgrind not found: no instruction counts (apt-get install valgrind)");
        return Vec::new();
    }
    let dir = out_dir();
    let me = std::env::current_exe().expect("own path");
    let mut counts = Vec::new();
    for (target, door, body) in doors {
        if *target == "engine-failover" {
            continue;
        }
        eprintln!("{target}: counting instructions under callgrind");
        let out = dir.join(format!("callgrind.{target}.out"));
        let (program, args, env) = match *target {
            "floor" => (
                me.clone(),
                vec!["--floor".to_string(), nats.into(), upstream.into()],
                vec![],
            ),
            "floor-headers" => (
                me.clone(),
                vec![
                    "--floor".to_string(),
                    nats.into(),
                    upstream.into(),
                    "headers".into(),
                ],
                vec![],
            ),
            "http-floor" => (
                me.clone(),
                vec!["--http-floor".to_string(), upstream.into()],
                vec![],
            ),
            "http-floor-headers" | "http-floor-checked" => (
                me.clone(),
                vec![
                    "--http-floor".to_string(),
                    upstream.into(),
                    target.trim_start_matches("http-floor-").into(),
                ],
                vec![],
            ),
            _ => {
                let config = dir.join(format!("{target}.toml"));
                let args = vec![
                    "serve".to_string(),
                    "--config".into(),
                    config.display().to_string(),
                ];
                (engine_bin(), args, vec![("SWITCHYARD_INSTANCE", *target)])
            }
        };
        let prefix = target.replace('-', "_");
        // Where the process under callgrind answers: the floor says `ready`, the HTTP floor its
        // (new) port; an engine is ready when its NATS endpoints answer, on the door (and, for
        // the HTTP door, the port of its config) of the timed run.
        let start = async |p: &mut Proc| match *target {
            "floor" | "floor-headers" => {
                assert_eq!(p.read_line(), "ready");
                door.clone()
            }
            "http-floor" | "http-floor-headers" | "http-floor-checked" => {
                let url = format!("http://127.0.0.1:{}/v1/chat/completions", p.read_line());
                match door {
                    load::Door::Http { client, .. } => load::Door::Http {
                        client: client.clone(),
                        url,
                    },
                    other => other.clone(),
                }
            }
            _ => {
                wait_ready(client, &prefix).await;
                door.clone()
            }
        };
        let result =
            callgrind::per_request(&program, &args, &env, &out, body, 200, plan.counted, start)
                .await;
        match result {
            Ok(n) => {
                eprintln!("{target}: {:.1} k instructions per request", n / 1000.0);
                counts.push((*target, n));
            }
            Err(e) => eprintln!("{target}: no instruction count: {e}"),
        }
    }
    counts
}

/// Each load is run this many times per target, alternating targets.
const ROUNDS: usize = 2;
/// The sequential load's rounds (`Load::rounds`).
const SEQUENTIAL_ROUNDS: usize = 10;

enum Load {
    Sequential(usize),
    /// (in flight, total requests)
    InFlight(usize, usize),
    Open(u32, Duration),
}

impl Load {
    /// How many rounds the load is split into. Sequential latency differs between engine and
    /// floor by tens of µs, less than this VM drifts between minutes: ten short rounds in turn,
    /// and the median of the rounds' differences, keep a slow minute from deciding it.
    fn rounds(&self) -> usize {
        match self {
            Load::Sequential(_) => SEQUENTIAL_ROUNDS,
            _ => ROUNDS,
        }
    }

    /// One round: a share of the load's requests.
    async fn run(&self, door: &load::Door, body: &Bytes) -> load::Sample {
        let rounds = self.rounds();
        match *self {
            Load::Sequential(n) => load::sequential(door, body, n / rounds).await,
            Load::InFlight(c, n) => load::closed_loop(door, body, c, n / rounds).await,
            Load::Open(rate, d) => load::open_loop(door, body, rate, d / rounds as u32).await,
        }
    }
}

/// The median over the sequential rounds of `target`'s P50 and P99 minus `floor`'s in the same
/// round: what the engine adds, with the minutes the VM ran slow or fast counted once each.
fn median_round_difference(
    per_round: &[(&str, f64, f64)],
    target: &str,
    floor: &str,
) -> Option<(f64, f64)> {
    let engine = per_round.iter().filter(|r| r.0 == target);
    let floors = per_round.iter().filter(|r| r.0 == floor);
    let (mut d50, mut d99): (Vec<f64>, Vec<f64>) = engine
        .zip(floors)
        .map(|(e, f)| (e.1 - f.1, e.2 - f.2))
        .unzip();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
    };
    Some((median(&mut d50)?, median(&mut d99)?))
}

/// Runs one load against `proc` and reads its CPU (% of one core) and peak memory over the run.
async fn measure(proc: &Proc, run: impl Future<Output = load::Sample>) -> (load::Sample, f64, f64) {
    proc.reset_peak();
    let cpu0 = proc.cpu_time();
    let t0 = Instant::now();
    let sample = run.await;
    let wall = t0.elapsed();
    let cpu = proc.cpu_time().saturating_sub(cpu0);
    (
        sample,
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        proc.peak_rss_mb(),
    )
}

/// Open loop at 2k/s for `d`, RSS sampled every 10 s: memory must not grow.
async fn soak(door: &load::Door, body: &Bytes, proc: &Proc, d: Duration) {
    eprintln!("soak: 2000/s for {}", humantime::format_duration(d));
    let start_rss = proc.rss_mb();
    let step = Duration::from_secs(10);
    let mut samples = vec![start_rss];
    let mut errors = 0;
    let started = Instant::now();
    while started.elapsed() < d {
        let s = load::open_loop(door, body, 2_000, step).await;
        errors += s.errors;
        samples.push(proc.rss_mb());
    }
    let line = format!(
        "soak 2000/s for {}: RSS start {:.1} MB, after 10 s {:.1} MB, end {:.1} MB, max {:.1} MB, errors {errors}",
        humantime::format_duration(d),
        start_rss,
        samples.get(1).copied().unwrap_or(start_rss),
        samples.last().copied().unwrap_or(start_rss),
        samples.iter().copied().fold(0.0, f64::max)
    );
    eprintln!("{line}");
    std::fs::write(
        out_dir().join("soak.txt"),
        format!("{line}\nsamples MB: {samples:?}\n"),
    )
    .expect("write");
}

fn format_row(r: &Row) -> String {
    format!(
        "{:<18} {:<13} {:>7} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>6.0} {:>8.1}",
        r.target,
        r.load,
        r.s.n,
        r.s.errors,
        r.s.p50_us,
        r.s.p90_us,
        r.s.p99_us,
        r.s.p999_us,
        r.s.throughput_rps,
        r.cpu_pct,
        r.peak_rss_mb
    )
}

/// A port free now, for a listener the engine binds (a race with another process is possible but
/// would only fail the start, loudly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn wait_ready(client: &async_nats::Client, prefix: &str) {
    for _ in 0..500 {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            client.request(format!("{prefix}.status"), "".into()),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the engine did not come up; see target/bench/engine*.log");
}

/// 3 groups, 6 deployments, fallbacks, breaker and (non-binding) limits, all on the one upstream.
/// `cluster`: share circuits and rpm/tpm through the KV bucket (the default), which costs every
/// attempt on a limited deployment one KV round trip; `engine-local` measures without it.
fn engine_config(
    nats: &str,
    prefix: &str,
    upstream: &str,
    failover: bool,
    cluster: bool,
) -> String {
    let alerts = !failover;
    let (fast, threshold) = if failover {
        (
            format!(
                "{}{}",
                deployment("fast-primary", "fast-chat", &format!("{upstream}/fail/v1")),
                deployment("deep-c", "deep-analysis", &format!("{upstream}/deep-c/v1"))
            ),
            1_000_000_000,
        )
    } else {
        (
            format!(
                "{}{}",
                deployment("fast-a", "fast-chat", &format!("{upstream}/fast-a/v1")),
                deployment("fast-b", "fast-chat", &format!("{upstream}/fast-b/v1"))
            ),
            3,
        )
    };
    format!(
        r#"[nats]
url = "{nats}"
prefix = "{prefix}"

[routing]
strategy = "simple-shuffle"
default_group = "fast-chat"
fallbacks = {{ fast-chat = ["backup-chat"], deep-analysis = ["backup-chat"] }}

[tasks]
chat = "fast-chat"
title = "fast-chat"
analysis = "deep-analysis"

[breaker]
failure_threshold = {threshold}
reset_timeout = "60s"

# Failover: the alert rules would mark the failing deployment degraded after 20 s and route it
# last, so that requests would stop failing over; the target measures the fallback itself.
[alerts]
enabled = {alerts}

[cluster]
enabled = {cluster}
bucket = "{prefix}_state"

{fast}{}{}{}{}
"#,
        deployment("deep-a", "deep-analysis", &format!("{upstream}/deep-a/v1")),
        deployment("deep-b", "deep-analysis", &format!("{upstream}/deep-b/v1")),
        deployment(
            "backup-a",
            "backup-chat",
            &format!("{upstream}/backup-a/v1")
        ),
        deployment(
            "backup-b",
            "backup-chat",
            &format!("{upstream}/backup-b/v1")
        ),
    )
}

fn deployment(name: &str, group: &str, api_base: &str) -> String {
    format!(
        r#"[[deployments]]
name = "{name}"
group = "{group}"
provider = "openai"
model = "gpt-4o-mini"
api_base = "{api_base}"
rpm = 10000000
tpm = 10000000000
timeout = "30s"
context_window = 128000
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}

"#
    )
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
    let nats = Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "machine: {cores} cores, {cpu}, Linux {}, {nats}\n",
        kernel.trim()
    )
}
