//! The physical floor: a bare NATS responder that forwards the request body to the upstream over
//! the same kind of HTTP client the engine uses and replies with the upstream's bytes. No
//! parsing, routing, actors or logging: what any router must at least pay.

use futures::StreamExt;

pub const SUBJECT: &str = "bench.floor";

pub async fn run(nats_url: &str, upstream: &str) {
    let client = async_nats::connect(nats_url).await.expect("floor: connect");
    let http = switchyard::providers::http::client().expect("http client");
    let url = format!("{upstream}/v1/chat/completions");
    let mut sub = client
        .queue_subscribe(SUBJECT, "floor".into())
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
            let _ = client.publish(reply, body).await;
        });
    }
}
