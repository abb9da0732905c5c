//! The real `switchyard` binary: `serve` drains on SIGTERM and exits 0, keeps API keys out of
//! logs, replies and status, and refuses bad configs with the file, key and reason.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::harness::{HELLO, ask, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};

const SECRET: &str = "sk-live-DO-NOT-LEAK-7f3a9c";
const URL_PASSWORD: &str = "url-password-DO-NOT-LEAK-41d0";
const QUERY_KEY: &str = "query-key-DO-NOT-LEAK-93be";

struct Serve {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts `switchyard serve` on a config file written from `text`, with the secret in
    /// `SECRET_KEY`, logging JSON at debug level to a pipe.
    fn start(text: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&path)
            .env("SECRET_KEY", SECRET)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Serve { child, _dir: dir }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for exit and returns (success, stderr).
    fn wait(mut self) -> (bool, String) {
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (self.child.wait().unwrap().success(), logs)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(nats: &NatsServer, fake: &FakeProvider) -> String {
    format!(
        "[nats]\nurl = \"{}\"\n[storage]\npath = \":memory:\"\n[tasks]\nchat = \"main\"\n{}",
        nats.url(),
        openai_deployment("primary", "main", &fake.base_url(), "")
            .replace("TEST_KEY_ENV", "SECRET_KEY")
    )
}

/// Waits until the binary answers on `llm.status`.
async fn wait_ready(client: &async_nats::Client) {
    for _ in 0..250 {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            client.request("llm.status", "".into()),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("switchyard serve did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits_zero() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("slow").await;
    fake.set_default(Fault::delay(Duration::from_millis(1500), Fault::Ok));
    let serve = Serve::start(&config_text(&nats, &fake));
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_ready(&client).await;

    let pending: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { ask(&client, "chat", HELLO, &[]).await })
        })
        .collect();
    assert!(
        fake.wait_calls(3, Duration::from_secs(10)).await,
        "3 requests in flight"
    );
    serve.signal("-TERM");
    for p in pending {
        let r = p.await.unwrap();
        assert_eq!(r.served_by(), "primary", "{:?}", r.body);
    }
    let (ok, logs) = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .unwrap();
    assert!(ok, "exit status 0 after drain; logs:\n{logs}");
    assert!(logs.contains("draining"), "{logs}");
    // After the drain nobody serves: a new request finds no responder.
    let r = client.request("llm.chat.chat", HELLO.into()).await;
    assert!(r.is_err(), "nothing should answer after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_calls_stuck_past_the_shutdown_timeout_answers_them_and_exits_zero() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("stuck").await;
    fake.set_default(Fault::Hang);
    let text = config_text(&nats, &fake)
        .replace("[tasks]", "[limits]\nshutdown_timeout = \"500ms\"\n[tasks]");
    let serve = Serve::start(&text);
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_ready(&client).await;
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { ask(&client, "chat", HELLO, &[]).await })
        })
        .collect();
    assert!(
        fake.wait_calls(2, Duration::from_secs(10)).await,
        "2 requests in flight"
    );
    serve.signal("-TERM");
    for p in pending {
        let r = p.await.unwrap();
        assert_eq!(r.error_kind(), "unavailable", "{:?}", r.body);
    }
    let (ok, logs) = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .unwrap();
    assert!(
        ok,
        "exit status 0 after the shutdown timeout; logs:\n{logs}"
    );
    assert!(logs.contains("shutdown timeout passed"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_appears_in_logs_replies_or_status() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start_named("p").await;
    // A deployment whose api_base carries credentials and a query key, and cannot be reached:
    // its connect errors are logged, traced (the JSON log lines carry the spans) and replied.
    let leaky = openai_deployment(
        "leaky",
        "leaky",
        &format!("http://user:{URL_PASSWORD}@127.0.0.1:1/v1?key={QUERY_KEY}"),
        "",
    )
    .replace("TEST_KEY_ENV", "SECRET_KEY");
    let text = config_text(&nats, &fake).replace("[tasks]\n", "[tasks]\nleaky = \"leaky\"\n");
    let serve = Serve::start(&format!("{text}{leaky}"));
    let client = async_nats::connect(nats.url()).await.unwrap();
    wait_ready(&client).await;

    let mut seen = Vec::new();
    let r = ask(&client, "leaky", HELLO, &[]).await;
    assert_eq!(r.error_kind(), "unavailable", "{}", r.body);
    seen.push(format!("{:?} {}", r.headers, r.body));
    fake.push(Fault::Ok);
    fake.push(Fault::status(401));
    fake.push(Fault::status(500));
    for _ in 0..3 {
        let r = ask(&client, "chat", HELLO, &[]).await;
        seen.push(format!("{:?} {}", r.headers, r.body));
    }
    let status = client.request("llm.status", "".into()).await.unwrap();
    seen.push(String::from_utf8_lossy(&status.payload).to_string());

    // The key did reach the provider, so it was in use.
    let auth = fake.requests()[0]
        .header("authorization")
        .map(str::to_string);
    assert_eq!(auth.as_deref(), Some(format!("Bearer {SECRET}").as_str()));

    serve.signal("-TERM");
    let (ok, logs) = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .unwrap();
    assert!(ok);
    assert!(
        logs.contains("attempt failed"),
        "attempts are logged: {logs}"
    );
    assert!(logs.contains("\"request_id\""), "{logs}");
    assert!(
        logs.contains("connect"),
        "the unreachable deployment is logged: {logs}"
    );
    for planted in [SECRET, URL_PASSWORD, QUERY_KEY] {
        assert!(!logs.contains(planted), "{planted} in logs:\n{logs}");
        for s in &seen {
            assert!(!s.contains(planted), "{planted} in a reply or status: {s}");
        }
    }
}

#[test]
fn bad_configs_are_refused_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: &str, env: &[(&str, &str)]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .env_remove("MISSING_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        (path, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let deployment = "[[deployments]]\nname = \"d1\"\ngroup = \"g\"\nprovider = \"openai\"\nmodel = \"m\"\napi_base = \"http://127.0.0.1:9/v1\"\n";

    let (path, err) = run(
        "missing-key.toml",
        &format!("{deployment}api_key_env = \"MISSING_KEY\"\n"),
        &[],
    );
    assert!(
        err.contains(&format!(
            "{}: deployments[0].api_key_env: deployment `d1`: environment variable MISSING_KEY is not set",
            path.display()
        )),
        "{err}"
    );

    let (_, err) = run(
        "zero-rpm.toml",
        &format!("{deployment}rpm = 0\ntimeout = \"0s\"\n"),
        &[],
    );
    assert!(err.contains("deployments[0].rpm: must be > 0"), "{err}");
    assert!(err.contains("deployments[0].timeout: must be > 0"), "{err}");

    let (_, err) = run(
        "typo.toml",
        &format!("[routing]\nstrategee = \"x\"\n{deployment}"),
        &[],
    );
    assert!(err.contains("unknown field `strategee`"), "{err}");

    let (_, err) = run("garbage.toml", "this is not toml", &[]);
    assert!(err.contains("garbage.toml"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config", "/nonexistent/switchyard.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/switchyard.toml: cannot read")
    );
}

#[test]
fn the_demo_runs_on_its_embedded_config_with_fallbacks_and_a_circuit() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--burst", "--requests", "70", "--interval", "50ms"])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("circuit flash-sim: closed → open"), "{text}");
    assert!(text.contains("fallback=true"), "{text}");
    assert!(text.contains("70 ok, 0 failed"), "{text}");
}
