//! The fake upstream both the floor and the engine call: an OpenAI-compatible endpoint on
//! 127.0.0.1 that answers instantly with a realistic ~600-byte `chat.completion`, or a 503 for
//! any path under `/fail/`. It runs in its own process so its CPU is not the engine's.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const REPLY: &str = r#"{"id":"chatcmpl-9xYzAbCdEf","object":"chat.completion","created":1732600000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Day 1: Gulbenkian Museum, then sunset at Miradouro da Senhora do Monte. Day 2: MAAT, then Miradouro de Santa Catarina.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":52,"completion_tokens":38,"total_tokens":90,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_0ba0d124f1"}"#;
const UNAVAILABLE: &str = r#"{"error":{"message":"The server is overloaded","type":"server_error","param":null,"code":null}}"#;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let fail = req.uri().path().starts_with("/fail/");
    // Read the whole body, as a real server does before answering.
    let _ = req.into_body().collect().await;
    let (status, body) = if fail {
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
    } else {
        (StatusCode::OK, REPLY)
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    Ok(resp)
}

/// Serves forever; prints the port on stdout once listening.
pub async fn run() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    println!("{}", listener.local_addr().expect("addr").port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
