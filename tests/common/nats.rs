//! A throwaway `nats-server` with JetStream, one per test.
//!
//! [`NatsServer::start`] runs the `nats-server` binary found on `PATH` on a
//! free loopback port, with its JetStream store in a fresh temporary
//! directory, so tests can run in parallel without sharing any state. The
//! process is killed when the value is dropped. [`NatsServer::stop`] and
//! [`NatsServer::restart`] keep the port and the store, for tests of
//! reconnection and of JetStream persistence across a server restart.
//!
//! Each process is given a unique server name, and readiness is confirmed by
//! reading that name back from the server's `INFO` greeting, so a port grabbed
//! by some other server between picking and binding it is detected and a new
//! port is tried.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BINARY: &str = "nats-server";
/// How many ports `start` tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long a freshly spawned server gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running `nats-server` child process; killed on drop.
pub struct NatsServer {
    port: u16,
    name: String,
    store: TempDir,
    /// A config file of settings beyond the command line (e.g. `max_payload`), if any.
    conf: Option<std::path::PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port with an empty JetStream store and
    /// waits until it accepts connections. Panics if that fails.
    pub fn start() -> NatsServer {
        Self::start_conf(None)
    }

    /// Like `start`, with the server's `max_payload` (bytes a message may carry) set.
    pub fn start_with_max_payload(bytes: usize) -> NatsServer {
        let path = std::env::temp_dir().join(format!("{}.conf", unique_name()));
        std::fs::write(&path, format!("max_payload: {bytes}\n")).expect("write nats config");
        Self::start_conf(Some(path))
    }

    fn start_conf(conf: Option<std::path::PathBuf>) -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("switchyard-nats-")
            .tempdir()
            .expect("create a temporary directory for the JetStream store");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let name = unique_name();
            match spawn_ready(port, &name, store.path(), conf.as_deref()) {
                Ok(child) => {
                    return NatsServer {
                        port,
                        name,
                        store,
                        conf,
                        child: Some(child),
                    };
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
                Err(StartError::Retry(msg)) => failures.push(format!("port {port}: {msg}")),
            }
        }
        panic!(
            "could not start {BINARY} after {START_ATTEMPTS} attempts:\n  {}",
            failures.join("\n  ")
        );
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across `stop`/`restart`).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Whether the server process is currently running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    /// Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port and store directory, stopping
    /// it first if it is still running, and waits until it accepts
    /// connections. Panics if that fails.
    pub fn restart(&mut self) {
        self.stop();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_ready(
                self.port,
                &self.name,
                self.store.path(),
                self.conf.as_deref(),
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
                Err(StartError::Retry(msg)) => {
                    // The old process's socket may linger for a moment.
                    failures.push(msg);
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "could not restart {BINARY} on port {}:\n  {}",
            self.port,
            failures.join("\n  ")
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum StartError {
    /// Probably lost a race for the port; worth trying again.
    Retry(String),
    /// Trying again will not help.
    Fatal(String),
}

/// Asks the OS for a free loopback port. It is released again before the
/// server binds it, so another process may take it in between; `start`
/// detects that and retries.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of listener")
        .port()
}

fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "switchyard-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn_ready(
    port: u16,
    name: &str,
    store: &Path,
    conf: Option<&Path>,
) -> Result<Child, StartError> {
    let mut command = Command::new(BINARY);
    if let Some(conf) = conf {
        command.arg("-c").arg(conf);
    }
    let mut child = command
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            name,
            "-js",
            "-sd",
        ])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            StartError::Fatal(format!(
                "cannot run `{BINARY}` (is it installed and on PATH?): {e}"
            ))
        })?;
    match wait_ready(&mut child, port, name) {
        Ok(()) => Ok(child),
        Err(e) => {
            kill(&mut child);
            Err(e)
        }
    }
}

/// Polls until the port greets us as server `name`, the child exits, or
/// [`READY_TIMEOUT`] passes.
fn wait_ready(child: &mut Child, port: u16, name: &str) -> Result<(), StartError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(StartError::Retry(format!(
                    "{BINARY} exited early ({status}); port probably taken"
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(StartError::Fatal(format!("cannot poll {BINARY}: {e}"))),
        }
        if let Ok(stream) = TcpStream::connect_timeout(&addr, POLL_INTERVAL) {
            match greeting_server_name(stream) {
                Some(greeted) if greeted == name => return Ok(()),
                Some(other) => {
                    return Err(StartError::Retry(format!(
                        "port is served by another server ({other})"
                    )));
                }
                // Not a NATS greeting (yet): keep polling.
                None => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(StartError::Fatal(format!(
                "{BINARY} did not accept connections on {addr} within {READY_TIMEOUT:?}"
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Reads the `INFO {...}` line a NATS server sends on connect and returns its
/// `server_name`. A short timeout is enough: NATS greets at once, and on a
/// miss the caller simply polls again.
fn greeting_server_name(stream: TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    Some(info.get("server_name")?.as_str()?.to_owned())
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
