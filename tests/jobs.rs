//! Durable async jobs (docs/contract.md §1b) against a real nats-server with JetStream: a `serve`
//! killed with SIGKILL mid-run and started again, a NATS server restarted under load, duplicate
//! job ids, late readers, bad jobs, `switchyard submit --wait`, and a thousand jobs through one instance.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::harness::{HELLO, Running, ask, config, openai_deployment};
use common::jobs::*;
use common::{FakeProvider, Fault, NatsServer};

const LONG: Duration = Duration::from_secs(120);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Deliveries beyond the first of each job: the consumer numbers every delivery, the stream
/// every job (all delivered, from sequence 1).
/// Every job has exactly one result and nothing else is stored; no job whose result was stored
/// before the kill was called twice. Answers the result counts and the calls per job.
async fn check_exactly_once(
    js: &jetstream::Context,
    fake: &FakeProvider,
    all: &[String],
    stored_before: &HashSet<String>,
) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let counts = result_counts(js).await;
    for id in all {
        assert_eq!(
            counts.get(&format!("llm.result.{id}")),
            Some(&1),
            "job {id}: exactly one result"
        );
    }
    assert_eq!(counts.len(), all.len(), "no result on any other subject");
    let calls = calls_per_job(fake);
    for id in stored_before {
        assert_eq!(
            calls.get(id),
            Some(&1),
            "job {id} had its result stored before the kill: one call only"
        );
    }
    (counts, calls)
}

/// Submits `all`, SIGKILLs `serve` once `at` results are stored, and answers the ids of the
/// jobs whose result was stored by then.
async fn submit_then_kill(
    js: &jetstream::Context,
    all: &[String],
    at: u64,
    serve: &mut ServeProcess,
) -> HashSet<String> {
    submit_all(js, all).await;
    wait_until("some results stored", LONG, || async {
        results_total(js).await >= at
    })
    .await;
    serve.kill();
    result_counts(js)
        .await
        .into_keys()
        .map(|s| s.trim_start_matches("llm.result.").to_string())
        .collect()
}

/// Waits until `n` results are stored and every job is acked.
async fn wait_all_results(js: &jetstream::Context, n: usize) {
    wait_until("every job's result", LONG, || async {
        results_total(js).await >= n as u64
    })
    .await;
    wait_drained(js, n as u64).await;
}

async fn redeliveries(js: &jetstream::Context) -> u64 {
    let d = consumer_info(js).await.delivered;
    d.consumer_sequence - d.stream_sequence
}

/// The engine and ingress in-process, with `[jobs]` set by `jobs`, once it takes jobs.
async fn in_process(
    nats: &NatsServer,
    fake: &FakeProvider,
    jobs: &str,
) -> (Running, jetstream::Context) {
    let rest = format!("[tasks]\nchat = \"main\"\n[jobs]\n{jobs}\n");
    let cfg = config(
        &nats.url(),
        &rest,
        &openai_deployment("p", "main", &fake.base_url(), ""),
    );
    let running = Running::start(nats, cfg).await;
    let js = jetstream::new(running.client.clone());
    wait_jobs_ready(&js).await;
    (running, js)
}

/// Submits job `id` with the usual body and waits for its PubAck.
async fn accept(js: &jetstream::Context, id: &str) -> jetstream::publish::PublishAck {
    submit(js, "chat", Some(id), &job_body(id), &[])
        .await
        .await
        .expect("the job is stored")
}

/// A nats-server, a fake provider answering after `delay`, and the `serve` binary taking jobs
/// with `[jobs]` set by `jobs`.
struct Binary {
    fake: FakeProvider,
    cfg: std::path::PathBuf,
    serve: ServeProcess,
    js: jetstream::Context,
    _dir: tempfile::TempDir,
    /// Last: dropped (killed) after `serve`.
    _nats: NatsServer,
}

async fn binary(delay: Duration, jobs: &str) -> Binary {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    if !delay.is_zero() {
        fake.set_default(Fault::delay(delay, Fault::Ok));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = serve_config(dir.path(), &nats.url(), &fake, jobs);
    let serve = ServeProcess::start(&cfg, "serve");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    wait_jobs_ready(&js).await;
    Binary {
        _nats: nats,
        fake,
        cfg,
        serve,
        js,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_killed_mid_run_loses_no_job_and_never_calls_twice_for_a_stored_result() {
    // Slow enough that work is in flight when the kill comes.
    let b = binary(Duration::from_millis(100), "ack_wait = \"5s\"").await;
    let (fake, cfg, mut first, js) = (b.fake, b.cfg, b.serve, b.js);

    let all = ids("kill", 1000);
    let stored_before = submit_then_kill(&js, &all, 300, &mut first).await;
    let calls_before = calls_per_job(&fake);
    let in_flight = calls_before
        .keys()
        .filter(|id| !stored_before.contains(*id))
        .count();
    assert!(
        stored_before.len() < all.len(),
        "the kill came after every job was done: nothing was tested"
    );

    let mut second = ServeProcess::start(&cfg, "second");
    wait_all_results(&js, all.len()).await;

    let (counts, calls) = check_exactly_once(&js, &fake, &all, &stored_before).await;
    let recalled = calls.values().filter(|&&n| n > 1).count();
    let redelivered = redeliveries(&js).await;
    println!(
        "kill/restart: {} jobs, {} results stored before the kill, {} calls in flight at the kill, \
         {} redeliveries, {} jobs called twice, {} results in all",
        all.len(),
        stored_before.len(),
        in_flight,
        redelivered,
        recalled,
        counts.values().sum::<usize>()
    );
    assert!(
        recalled <= in_flight,
        "only jobs in flight at the kill may be called again"
    );
    assert!(second.terminate(), "logs:\n{}", second.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_jobs_and_the_survivor_finishes_those_of_one_killed() {
    let b = binary(Duration::from_millis(100), "ack_wait = \"3s\"").await;
    let (fake, cfg, mut first, js) = (b.fake, b.cfg, b.serve, b.js);
    // The second instance: same NATS and provider, its own storage file.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cfg2 = cfg.with_file_name("second.toml");
    std::fs::write(&cfg2, text.replace("switchyard.db", "second.db")).unwrap();
    let mut second = ServeProcess::start(&cfg2, "second");

    let all = ids("pair", 600);
    let stored_before = submit_then_kill(&js, &all, 150, &mut first).await;
    assert!(stored_before.len() < all.len(), "the kill came too late");

    wait_all_results(&js, all.len()).await;
    let (_, calls) = check_exactly_once(&js, &fake, &all, &stored_before).await;
    // Both instances took jobs before the kill: the consumer is shared.
    let served_by = |log: &str| log.matches("attempt succeeded").count();
    let (by_first, by_second) = (served_by(&first.logs()), served_by(&second.logs()));
    assert!(by_first > 0 && by_second > 0, "{by_first} / {by_second}");
    println!(
        "two instances: {} jobs, {} stored before the kill, first served {by_first}, \
         second {by_second}, {} redeliveries, {} jobs called twice",
        all.len(),
        stored_before.len(),
        redeliveries(&js).await,
        calls.values().filter(|&&n| n > 1).count()
    );
    assert!(second.terminate(), "logs:\n{}", second.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reader_gets_a_result_stored_before_it_came() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    let (running, js) = in_process(&nats, &fake, "").await;

    let ack = accept(&js, "late-1").await;
    assert!(!ack.duplicate);
    wait_until("the result stored", LONG, || async {
        result_counts(&js).await.contains_key("llm.result.late-1")
    })
    .await;

    // Connects only now.
    let late = async_nats::connect(nats.url()).await.unwrap();
    let m = read_result(&jetstream::new(late), "llm.result.late-1", LONG).await;
    assert_eq!(header(&m, "Llm-Job-Id"), Some("late-1"));
    assert_eq!(header(&m, "Llm-Deployment"), Some("p"));
    assert_eq!(header(&m, "Llm-Attempts"), Some("1"));
    assert_eq!(header(&m, "Llm-Fallback"), Some("false"));
    assert_eq!(header(&m, "Llm-Request-Id"), Some("late-1"));
    let b = body(&m);
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["choices"][0]["message"]["content"], "fake reply from p");
    assert_eq!(fake.calls(), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_is_served_once_even_when_submitted_again_later() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    // A short dedupe window, so the second half can resubmit past it.
    let (running, js) = in_process(&nats, &fake, "duplicate_window = \"2s\"").await;

    let body = job_body("dup-1");
    let first = submit(&js, "chat", Some("dup-1"), &body, &[])
        .await
        .await
        .unwrap();
    let again = submit(&js, "chat", Some("dup-1"), &body, &[])
        .await
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "the stream drops the same Nats-Msg-Id");
    let m = read_result(&js, "llm.result.dup-1", LONG).await;
    assert_eq!(header(&m, "Llm-Job-Id"), Some("dup-1"));
    wait_drained(&js, first.sequence).await;
    assert_eq!(fake.calls(), 1);

    // Past the dedupe window the stream takes the job again; its stored result is found and
    // the job is acked without a provider call.
    let deadline = Instant::now() + LONG;
    let resubmitted = loop {
        let ack = submit(&js, "chat", Some("dup-1"), &body, &[])
            .await
            .await
            .unwrap();
        if !ack.duplicate {
            break ack.sequence;
        }
        assert!(Instant::now() < deadline, "the dedupe window never passed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_drained(&js, resubmitted).await;
    assert_eq!(fake.calls(), 1, "a stored result is never called again");
    assert_eq!(result_counts(&js).await.get("llm.result.dup-1"), Some(&1));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_get_an_invalid_request_result_and_are_not_redelivered() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    let (running, js) = in_process(&nats, &fake, "ack_wait = \"2s\"").await;

    submit(&js, "chat", Some("bad-json"), "this is not JSON", &[])
        .await
        .await
        .unwrap();
    submit(
        &js,
        "chat",
        Some("bad-field"),
        r#"{"messages":[{"role":"user","content":"x"}],"colour":"blue","temperature":"hot"}"#,
        &[],
    )
    .await
    .await
    .unwrap();
    submit(
        &js,
        "chat",
        Some("bad-header"),
        &job_body("bad-header"),
        &[("Llm-Deadline", "soon")],
    )
    .await
    .await
    .unwrap();
    let no_id = submit(&js, "chat", None, &job_body("no-id"), &[])
        .await
        .await
        .unwrap();

    for (subject, says) in [
        ("llm.result.bad-json", "JSON"),
        ("llm.result.bad-field", ""),
        ("llm.result.bad-header", "Llm-Deadline"),
        (
            &*format!("llm.result.seq-{}", no_id.sequence),
            "Nats-Msg-Id",
        ),
    ] {
        let m = read_result(&js, subject, LONG).await;
        assert_eq!(
            header(&m, "Llm-Error"),
            Some("invalid_request"),
            "{subject}"
        );
        let b = body(&m);
        assert_eq!(b["error"]["kind"], "invalid_request");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{subject}: {message}");
    }
    wait_drained(&js, no_id.sequence).await;
    // Nothing to await: a redelivery that does not come shows only once ack_wait (2 s) has
    // passed, here more than twice over.
    let before = consumer_info(&js).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = consumer_info(&js).await;
    assert_eq!(after.num_redelivered, 0);
    assert_eq!(
        after.delivered.consumer_sequence,
        before.delivered.consumer_sequence
    );
    assert_eq!(result_counts(&js).await.values().sum::<usize>(), 4);
    assert_eq!(fake.calls(), 0, "no bad job reached the provider");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_load_loses_no_accepted_job_and_chat_works_again() {
    let mut nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    fake.set_default(Fault::delay(Duration::from_millis(200), Fault::Ok));
    let (running, js) = in_process(&nats, &fake, "ack_wait = \"5s\"").await;

    let before = ids("pre", 200);
    submit_all(&js, &before).await;
    assert!(
        fake.wait_calls(10, LONG).await,
        "jobs in flight before the restart"
    );
    nats.stop();
    nats.restart();

    // The client reconnects by itself; a job is accepted once its PubAck comes.
    let after = ids("post", 100);
    for id in &after {
        wait_until("a job accepted after the restart", LONG, || async {
            submit(&js, "chat", Some(id), &job_body(id), &[])
                .await
                .await
                .is_ok()
        })
        .await;
    }
    let total = before.len() + after.len();
    wait_until("a result for every accepted job", LONG, || async {
        results_total(&js).await >= total as u64
    })
    .await;
    let last = js
        .get_stream(JOBS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    wait_drained(&js, last).await;
    let counts = result_counts(&js).await;
    for id in before.iter().chain(&after) {
        assert_eq!(
            counts.get(&format!("llm.result.{id}")),
            Some(&1),
            "job {id}: exactly one result"
        );
    }
    let calls = calls_per_job(&fake);
    println!(
        "nats restart: {total} jobs, {} redeliveries, {} called twice",
        redeliveries(&js).await,
        calls.values().filter(|&&n| n > 1).count()
    );

    // Synchronous requests are served again once the ingress has resubscribed.
    fake.set_default(Fault::Ok);
    wait_until("a chat reply after the restart", LONG, || async {
        tokio::time::timeout(
            Duration::from_secs(5),
            running.client.request("llm.chat.chat", HELLO.into()),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    })
    .await;
    let r = ask(&running.client, "chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "p");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_ack_wait_sends_progress_and_is_not_redelivered() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    // Two and a half times ack_wait: without in-progress acks the job would come back twice.
    fake.set_default(Fault::delay(Duration::from_secs(5), Fault::Ok));
    let (running, js) = in_process(&nats, &fake, "ack_wait = \"2s\"").await;

    let ack = accept(&js, "slow-1").await;
    let m = read_result(&js, "llm.result.slow-1", LONG).await;
    assert_eq!(header(&m, "Llm-Deployment"), Some("p"));
    wait_drained(&js, ack.sequence).await;
    assert_eq!(redeliveries(&js).await, 0);
    assert_eq!(fake.calls(), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_jobs_in_flight_before_exit() {
    let b = binary(Duration::from_millis(1500), "").await;
    let (fake, mut serve, js) = (b.fake, b.serve, b.js);

    let all = ids("term", 3);
    submit_all(&js, &all).await;
    assert!(fake.wait_calls(3, LONG).await, "3 jobs in flight");
    let exited_ok = tokio::task::spawn_blocking(move || (serve.terminate(), serve.logs()))
        .await
        .unwrap();
    assert!(
        exited_ok.0,
        "exit 0 after the drain; logs:\n{}",
        exited_ok.1
    );
    // Stored and acked before exit: nothing is left for another instance.
    let counts = result_counts(&js).await;
    for id in &all {
        assert_eq!(
            counts.get(&format!("llm.result.{id}")),
            Some(&1),
            "job {id}"
        );
    }
    let c = consumer_info(&js).await;
    assert_eq!((c.num_ack_pending, c.num_pending), (0, 0));
}

/// Runs `switchyard submit` with `args`, `stdin` as its input; returns (success, stdout, stderr).
async fn submit_cli(args: Vec<String>, stdin: &'static str) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("submit")
            .args(&args)
            .env("TEST_KEY_ENV", common::harness::TEST_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_submit_waits_for_and_prints_the_result() {
    let b = binary(Duration::ZERO, "").await;
    let (fake, cfg, mut serve) = (b.fake, b.cfg, b.serve);

    let req = cfg.with_file_name("req.json");
    std::fs::write(&req, job_body("cli-1")).unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["chat".into(), "--config".into(), cfg.display().to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let file = req.display().to_string();
    let (ok, out, err) = submit_cli(
        args(&[
            "--file",
            &file,
            "--wait",
            "--job-id",
            "cli-1",
            "--timeout",
            "60s",
        ]),
        "",
    )
    .await;
    assert!(ok, "{out}\n{err}\nserve:\n{}", serve.logs());
    assert_eq!(out.lines().next(), Some("cli-1"), "the job id first: {out}");
    assert!(out.contains("fake reply from p"), "{out}");
    assert!(err.contains("Llm-Job-Id: cli-1"), "{err}");
    assert!(err.contains("Llm-Deployment: p"), "{err}");

    // Submitted again: dropped as a duplicate, and --wait reads the stored result.
    let (ok, out, err) =
        submit_cli(args(&["--file", &file, "--wait", "--job-id", "cli-1"]), "").await;
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("duplicate"), "{err}");
    assert!(out.contains("fake reply from p"), "{out}");
    assert_eq!(fake.calls(), 1);

    // A bad body from stdin, with a generated job id: an error result and a failing exit.
    let (ok, out, err) = submit_cli(args(&["--file", "-", "--wait"]), "not json").await;
    assert!(!ok, "an error result fails the command: {out}\n{err}");
    let id = out.lines().next().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "a uuid job id: {out}");
    assert!(err.contains("Llm-Error: invalid_request"), "{err}");
    assert!(err.contains(&format!("Llm-Job-Id: {id}")), "{err}");
    assert!(serve.terminate(), "logs:\n{}", serve.logs());
}

/// A thousand jobs through one `serve` on an instant provider: each gets exactly one provider
/// call and one stored result. (How fast is measured in `cargo bench`, not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_through_one_instance_get_one_call_and_one_result_each() {
    let b = binary(Duration::ZERO, "").await;
    let (fake, mut serve, js) = (b.fake, b.serve, b.js);

    let all = ids("tp", 1000);
    submit_all(&js, &all).await;
    wait_until("every result", LONG, || async {
        results_total(&js).await >= all.len() as u64
    })
    .await;
    let (_, calls) = check_exactly_once(&js, &fake, &all, &HashSet::new()).await;
    assert_eq!(calls.len(), all.len(), "a job was never called");
    assert!(
        calls.values().all(|&n| n == 1),
        "a job was called twice without a kill"
    );
    assert!(serve.terminate(), "logs:\n{}", serve.logs());
}
