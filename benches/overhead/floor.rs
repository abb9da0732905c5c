//! The physical floor: a bare NATS responder that forwards the request body to the upstream over
//! the same kind of HTTP client the engine uses and replies with the upstream's bytes. No
//! parsing, routing, actors or logging: what any router must at least pay. `run_http` is the
//! same for the HTTP door: a bare HTTP passthrough (hyper, HTTP/1.1 keep-alive, as the door).

use futures::StreamExt;

pub const SUBJECT: &str = "bench.floor";
/// The floor that also answers with the contract's reply headers (docs/contract.md §2).
pub const SUBJECT_HEADERS: &str = "bench.floor-headers";

/// The `Llm-*` headers of a served reply, as the engine sends them for the bench's request (the
/// same names, the same lengths): what the contract's wire format costs the caller's client and
/// nats-server, apart from any work of the engine's.
fn reply_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in REPLY_HEADERS {
        h.insert(name, value);
    }
    h
}

const REPLY_HEADERS: [(&str, &str); 8] = [
    ("Llm-Request-Id", "ddfe1eae-bc88-4aa1-8215-79c8a0e92c27"),
    ("Llm-Deployment", "fast-b"),
    ("Llm-Provider", "openai"),
    ("Llm-Attempts", "1"),
    ("Llm-Fallback", "false"),
    ("Llm-Route-Reason", "task table"),
    ("Llm-Latency-Ms", "3"),
    ("Llm-Cost-Usd", "0.0000306"),
];

/// `headers`: answer with `reply_headers()` too, on `SUBJECT_HEADERS`.
pub async fn run(nats_url: &str, upstream: &str, headers: bool) {
    let subject = if headers { SUBJECT_HEADERS } else { SUBJECT };
    let client = async_nats::connect(nats_url).await.expect("floor: connect");
    let http = switchyard::providers::http::client().expect("http client");
    let url = format!("{upstream}/v1/chat/completions");
    let mut sub = client
        .queue_subscribe(subject, "floor".into())
        .await
        .expect("floor: subscribe");
    // The server has the subscription once a flush round trip is done.
    client.flush().await.expect("floor: flush");
    println!("ready");
    while let Some(msg) = sub.next().await {
        let (client, http, url) = (client.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            let Some(reply) = msg.reply else { return };
            let body = match http
                .post(&url)
                .header("content-type", "application/json")
                .body(msg.payload)
                .send()
                .await
            {
                Ok(r) => r.bytes().await.unwrap_or_default(),
                Err(_) => Default::default(),
            };
            let _ = if headers {
                client
                    .publish_with_headers(reply, reply_headers(), body)
                    .await
            } else {
                client.publish(reply, body).await
            };
        });
    }
}

/// What the HTTP floor does beside forwarding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HttpFloor {
    /// Forwards and answers the upstream's bytes: nothing else.
    Bare,
    /// Answers with the reply's eight `Llm-*` headers.
    Headers,
    /// The headers, and the two reads no router that refuses bad input can leave out: the
    /// caller's body read as the engine reads it (`ChatRequest::parse`, 400 when it does not)
    /// and the provider's reply checked as the engine checks it (`openai::parse_response`, 502
    /// when it is not a chat completion). No routing, limits, breaker, log line or actor.
    Checked,
}

impl HttpFloor {
    pub fn of(arg: Option<&str>) -> Self {
        match arg {
            Some("headers") => Self::Headers,
            Some("checked") => Self::Checked,
            _ => Self::Bare,
        }
    }
}

/// The HTTP floor: POSTs are forwarded to the upstream, its bytes answered (with the reply's
/// `Llm-*` headers and the two reads, as `mode` says); prints the port.
pub async fn run_http(upstream: &str, mode: HttpFloor) {
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let headers = mode != HttpFloor::Bare;

    let http = switchyard::providers::http::client().expect("http client");
    let url: std::sync::Arc<str> = format!("{upstream}/v1/chat/completions").into();
    // Made once, as the engine makes its reply's names (HTTP's lower case).
    let names: std::sync::Arc<[hyper::header::HeaderName]> = REPLY_HEADERS
        .iter()
        .filter(|_| headers)
        .map(|(n, _)| hyper::header::HeaderName::from_bytes(n.as_bytes()).expect("valid name"))
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http floor");
    println!("{}", listener.local_addr().expect("addr").port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (http, url, names) = (http.clone(), url.clone(), names.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (http, url, names) = (http.clone(), url.clone(), names.clone());
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let mut status = hyper::StatusCode::OK;
                    let reply = match body {
                        Ok(body)
                            if mode == HttpFloor::Checked
                                && switchyard::protocol::ChatRequest::parse(&body).is_err() =>
                        {
                            status = hyper::StatusCode::BAD_REQUEST;
                            bytes::Bytes::new()
                        }
                        Ok(body) => match http
                            .post(&*url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                        {
                            Ok(r) => r.bytes().await.unwrap_or_default(),
                            Err(_) => Default::default(),
                        },
                        Err(_) => Default::default(),
                    };
                    if mode == HttpFloor::Checked
                        && switchyard::providers::openai::parse_response(reply.clone()).is_err()
                        && status.is_success()
                    {
                        status = hyper::StatusCode::BAD_GATEWAY;
                    }
                    let mut resp = hyper::Response::new(Full::new(reply));
                    *resp.status_mut() = status;
                    let h = resp.headers_mut();
                    h.insert("content-type", "application/json".parse().expect("static"));
                    for (name, value) in names.iter().zip(REPLY_HEADERS) {
                        h.insert(
                            name.clone(),
                            hyper::header::HeaderValue::from_static(value.1),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
