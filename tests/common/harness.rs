//! Runs the real engine behind the real NATS ingress, in-process, against a `NatsServer` the test
//! started; and sends requests to it the way a NATS client would.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use serde_json::Value;
use switchyard::config::Config;
use switchyard::engine::Engine;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::NatsServer;

pub const TEST_KEY: &str = "sk-test-0123456789abcdef";

/// Config text for tests: `deployments` is the `[[deployments]]` part, `rest` the other sections.
/// Keys are read from a fake environment where `TEST_KEY_ENV` holds `TEST_KEY`.
pub fn config(nats_url: &str, rest: &str, deployments: &str) -> Config {
    // Each engine its own spend ledger, so that tests running side by side do not share totals.
    let storage = if rest.contains("[storage]") {
        String::new()
    } else {
        let db = std::env::temp_dir().join(format!("switchyard-test-{}.db", uuid::Uuid::new_v4()));
        format!("[storage]\npath = {:?}\n", db.display().to_string())
    };
    let text = format!("[nats]\nurl = \"{nats_url}\"\n{storage}{rest}\n{deployments}");
    Config::parse(&text, "test.toml", &|name| {
        (name == "TEST_KEY_ENV").then(|| TEST_KEY.to_string())
    })
    .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
}

/// One OpenAI-compatible deployment entry.
pub fn openai_deployment(name: &str, group: &str, base_url: &str, extra: &str) -> String {
    deployment("openai", name, group, base_url, extra)
}

/// One deployment entry of any provider, keyed with `TEST_KEY`, priced 1 / 2 USD per Mtok
/// unless `extra` sets a `price`.
pub fn deployment(provider: &str, name: &str, group: &str, base_url: &str, extra: &str) -> String {
    let price = if extra.contains("price") {
        ""
    } else {
        "price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }\n"
    };
    format!(
        "[[deployments]]\nname = \"{name}\"\ngroup = \"{group}\"\nprovider = \"{provider}\"\nmodel = \"{name}-model\"\napi_base = \"{base_url}\"\napi_key_env = \"TEST_KEY_ENV\"\n{price}{extra}\n"
    )
}

pub struct Running {
    pub client: Client,
    /// The connection the ingress serves on (to see which server it is on).
    pub serve_client: Client,
    nats_url: String,
    config: Config,
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn start(nats: &NatsServer, config: Config) -> Running {
        Self::start_instance(&nats.url(), config, "test-1").await
    }

    /// Another instance on the same NATS server and config.
    pub async fn start_second(&self, instance: &str) -> Running {
        Self::start_instance(&self.nats_url, self.config.clone(), instance).await
    }

    /// An instance that connects as `serve` does (`ingress::connect` on `nats.url`, which may
    /// list the servers of a NATS cluster); the test's own client is given the same list.
    pub async fn start_connected(config: Config, instance: &str) -> Running {
        let url = config.nats.url.clone();
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(|u| u.trim().parse().expect("a server address"))
            .collect();
        let client = async_nats::connect(servers).await.expect("connect");
        let serve_client =
            switchyard::ingress::connect(&config.nats, &format!("switchyard-{instance}"))
                .await
                .expect("connect as serve does");
        Self::start_with(client, serve_client, &url, config, instance, None).await
    }

    async fn start_instance(nats_url: &str, config: Config, instance: &str) -> Running {
        let client = async_nats::connect(nats_url).await.expect("connect");
        let serve_client = async_nats::connect(nats_url).await.expect("connect");
        Self::start_with(client, serve_client, nats_url, config, instance, None).await
    }

    /// An instance whose HTTP door listens on a free loopback port; returns it with the door's
    /// base URL (`http://127.0.0.1:PORT`).
    pub async fn start_http(
        nats: &NatsServer,
        config: Config,
        instance: &str,
    ) -> (Running, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let serve_client = async_nats::connect(nats.url()).await.expect("connect");
        let running = Self::start_with(
            client,
            serve_client,
            &nats.url(),
            config,
            instance,
            Some(listener),
        )
        .await;
        (running, base)
    }

    /// Asks for shutdown without waiting for it (`finish` waits).
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn start_with(
        client: Client,
        serve_client: Client,
        nats_url: &str,
        config: Config,
        instance: &str,
        http: Option<tokio::net::TcpListener>,
    ) -> Running {
        let engine = Arc::new(Engine::start(&config, instance).await.expect("engine"));
        let kept = config.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (e, serving) = (engine.clone(), serve_client.clone());
        let task = tokio::spawn(async move {
            switchyard::ingress::run_with(serving, e, &config, http, async {
                let _ = stopped.await;
            })
            .await
            .expect("ingress");
        });
        // The subscription is live once a status request is answered.
        for _ in 0..100 {
            if tokio::time::timeout(
                Duration::from_millis(200),
                client.request("llm.status", "".into()),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            // No responder yet: the ingress is still subscribing.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Running {
            client,
            serve_client,
            nats_url: nats_url.to_string(),
            config: kept,
            engine,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends a chat request on `llm.chat.<task>` and returns the reply's headers and JSON body.
    pub async fn ask(&self, task: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        ask(&self.client, task, body, headers).await
    }

    /// Sends an embeddings request on `llm.embed.<task>`.
    pub async fn embed(&self, task: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.client, &format!("llm.embed.{task}"), body, headers).await
    }

    pub async fn status(&self) -> Value {
        let msg = self
            .client
            .request("llm.status", "".into())
            .await
            .expect("status reply");
        serde_json::from_slice(&msg.payload).expect("status JSON")
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("ingress task");
        }
        self.engine.stop().await;
    }
}

#[derive(Debug)]
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    pub fn served_by(&self) -> &str {
        self.header("Llm-Deployment")
            .unwrap_or_else(|| panic!("not a success reply: {:?}", self.body))
    }

    pub fn error_kind(&self) -> &str {
        self.header("Llm-Error")
            .unwrap_or_else(|| panic!("not an error reply: {:?}", self.body))
    }

    pub fn attempts(&self) -> u32 {
        self.header("Llm-Attempts").unwrap().parse().unwrap()
    }

    pub fn fallback(&self) -> bool {
        self.header("Llm-Fallback").unwrap().parse().unwrap()
    }
}

pub async fn ask(client: &Client, task: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    request(client, &format!("llm.chat.{task}"), body, headers).await
}

/// A request on any subject, with its reply's headers and JSON body.
pub async fn request(
    client: &Client,
    subject: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        client.request_with_headers(subject.to_string(), h, body.to_string().into()),
    )
    .await
    .expect("a reply within 30 s")
    .expect("a reply");
    Reply {
        headers: msg.headers.unwrap_or_default(),
        body: serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
    }
}

pub const HELLO: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello there"}],"max_tokens":20}"#;

/// Waits for the next circuit event of `deployment` on `llm.status.events`.
pub async fn next_circuit_event(
    events: &mut async_nats::Subscriber,
    deployment: &str,
    timeout: Duration,
) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, events.next())
            .await
            .ok()??;
        let e: Value = serde_json::from_slice(&msg.payload).ok()?;
        if e["type"] == "circuit" && e["deployment"] == deployment {
            return Some((
                e["from"].as_str()?.to_string(),
                e["to"].as_str()?.to_string(),
            ));
        }
    }
}

/// A streamed reply: the chunks in order, then the closing message.
#[derive(Debug)]
pub struct Streamed {
    pub chunks: Vec<Value>,
    pub last: Reply,
}

impl Streamed {
    /// The text of every chunk's delta, joined.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }
}

/// Sends a streamed request and collects its messages until `Llm-Stream` says it ended.
pub async fn ask_stream(
    client: &Client,
    task: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Streamed {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply_and_headers(
            format!("llm.chat.{task}"),
            inbox,
            h,
            body.to_string().into(),
        )
        .await
        .expect("publish");
    let mut chunks = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a stream message within 30 s")
            .expect("subscription open");
        let headers = msg.headers.unwrap_or_default();
        if headers.get("Llm-Stream").is_some() {
            let body = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            return Streamed {
                chunks,
                last: Reply { headers, body },
            };
        }
        chunks.push(serde_json::from_slice(&msg.payload).expect("a chunk is JSON"));
    }
}

pub const HELLO_STREAM: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello there"}],"max_tokens":20,"stream":true}"#;
