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
//!
//! [`NatsCluster::start`] runs several such servers clustered over loopback
//! routes (each its own client port, route port, store and config file), and
//! returns once JetStream has a meta leader that every node knows of.
//! [`NatsCluster::kill`] SIGKILLs one node; [`NatsCluster::urls`] is the
//! comma-separated list of every node's address, as `nats.url` takes it.

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
    port_of(&loopback_listener())
}

fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "switchyard-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How long a fresh cluster gets to elect its JetStream meta leader.
const META_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `nats-server`s clustered over loopback routes, JetStream on each; every node is killed on
/// drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    /// The nodes' config files.
    _confs: TempDir,
}

struct ClusterNode {
    name: String,
    port: u16,
    conf: std::path::PathBuf,
    child: Option<Child>,
    _store: TempDir,
}

impl NatsCluster {
    /// Starts `size` clustered servers and waits until JetStream has a meta leader that each of
    /// them answers for. Panics if that fails.
    pub async fn start(size: usize) -> NatsCluster {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::spawn(size) {
                Ok(cluster) => {
                    cluster.wait_meta_leader().await;
                    return cluster;
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
                Err(StartError::Retry(msg)) => failures.push(msg),
            }
        }
        panic!(
            "could not start a {size}-node {BINARY} cluster after {START_ATTEMPTS} attempts:\n  {}",
            failures.join("\n  ")
        );
    }

    /// One try with fresh ports; on failure the nodes already started are killed (on drop).
    fn spawn(size: usize) -> Result<NatsCluster, StartError> {
        let confs = tempfile::Builder::new()
            .prefix("switchyard-nats-cluster-")
            .tempdir()
            .expect("create a temporary directory for the config files");
        let cluster_name = unique_name();
        // Held together, so that no two of them are the same port.
        let listeners: Vec<(TcpListener, TcpListener)> = (0..size)
            .map(|_| (loopback_listener(), loopback_listener()))
            .collect();
        let ports: Vec<(u16, u16)> = listeners
            .iter()
            .map(|(c, r)| (port_of(c), port_of(r)))
            .collect();
        drop(listeners);
        let routes = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            _confs: confs,
        };
        for (i, &(port, route)) in ports.iter().enumerate() {
            let name = format!("{cluster_name}-n{i}");
            let store = tempfile::Builder::new()
                .prefix("switchyard-nats-")
                .tempdir()
                .expect("create a temporary directory for the JetStream store");
            let conf = cluster._confs.path().join(format!("n{i}.conf"));
            let text = format!(
                "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {store:?}\n}}\ncluster {{\n  name: \"{cluster_name}\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                store = store.path().display().to_string(),
            );
            std::fs::write(&conf, text).expect("write a nats config");
            let child = spawn(Command::new(BINARY).arg("-c").arg(&conf))?;
            cluster.nodes.push(ClusterNode {
                name,
                port,
                conf,
                child: Some(child),
                _store: store,
            });
        }
        for node in &mut cluster.nodes {
            let child = node.child.as_mut().expect("just started");
            wait_ready(child, node.port, &node.name)
                .map_err(|e| e.context(&format!("node {} (port {})", node.name, node.port)))?;
        }
        Ok(cluster)
    }

    /// Polls the JetStream API through each node until it answers: a node answers only once the
    /// cluster has a meta leader and this node knows it.
    async fn wait_meta_leader(&self) {
        let deadline = Instant::now() + META_LEADER_TIMEOUT;
        for node in &self.nodes {
            let client = async_nats::connect(node.url())
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name));
            loop {
                // Raw, because async-nats 0.51 cannot read nats-server 2.9's account info.
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await;
                let detail = match answer {
                    Ok(Ok(m)) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&m.payload).unwrap_or_default();
                        if v.get("error").is_none() && v.get("type").is_some() {
                            break;
                        }
                        v.to_string()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer".to_string(),
                };
                assert!(
                    Instant::now() < deadline,
                    "no JetStream meta leader seen from {} within {META_LEADER_TIMEOUT:?}: {detail}",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Every node's address, comma-separated (killed nodes included, as a client's config
    /// would still list them): what `nats.url` takes for a cluster.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// The `server_name` of node `i` (as stream and consumer infos name their leader).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node whose `server_name` is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Kills node `i` with SIGKILL (a crash: no leadership handed over, no goodbye to clients
    /// or routes) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            kill(&mut child);
        }
    }

    /// Starts node `i` again with its config and store (as a supervisor would after a crash)
    /// and waits until it accepts connections; it then rejoins the cluster by its routes.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &mut self.nodes[i];
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let started =
                spawn(Command::new(BINARY).arg("-c").arg(&node.conf)).and_then(|mut child| {
                    match wait_ready(&mut child, node.port, &node.name) {
                        Ok(()) => Ok(child),
                        Err(e) => {
                            kill(&mut child);
                            Err(e)
                        }
                    }
                });
            match started {
                Ok(child) => {
                    node.child = Some(child);
                    return;
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
                Err(StartError::Retry(msg)) => {
                    // The old process's sockets may linger for a moment.
                    failures.push(msg);
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "could not restart {} on port {}:\n  {}",
            node.name,
            node.port,
            failures.join("\n  ")
        );
    }
}

impl ClusterNode {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill(&mut child);
            }
        }
    }
}

impl StartError {
    fn context(self, what: &str) -> StartError {
        match self {
            StartError::Retry(m) => StartError::Retry(format!("{what}: {m}")),
            StartError::Fatal(m) => StartError::Fatal(format!("{what}: {m}")),
        }
    }
}

fn loopback_listener() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0")
}

fn port_of(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .expect("local address of listener")
        .port()
}

/// Runs `command` with no stdio.
fn spawn(command: &mut Command) -> Result<Child, StartError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            StartError::Fatal(format!(
                "cannot run `{BINARY}` (is it installed and on PATH?): {e}"
            ))
        })
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
    let mut child = spawn(
        command
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
            .arg(store),
    )?;
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
