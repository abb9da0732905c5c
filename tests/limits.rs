//! `[limits]` as a caller sees them (docs/contract.md §8): back-pressure instead of a queue
//! (`overloaded` at once beyond `max_in_flight`), a shutdown with a deadline (what is left is
//! answered `unavailable`, unfinished jobs stay unacked and are run elsewhere), and replies too
//! large for NATS answered as an `internal` error instead of being lost.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::harness::{self, HELLO, Running, openai_deployment};
use common::jobs::{
    consumer_info, header, job_body, read_result, submit, wait_jobs_ready, wait_until,
};
use common::{FakeProvider, Fault, NatsServer};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_requests_are_answered_overloaded_at_once_and_the_rest_served() {
    let nats = NatsServer::start();
    let upstream = FakeProvider::start().await;
    upstream.set_default(Fault::delay(Duration::from_millis(800), Fault::Ok));
    let config = harness::config(
        &nats.url(),
        "[limits]\nmax_in_flight = 4\n",
        &openai_deployment("slow", "chat", &upstream.base_url(), ""),
    );
    let running = Running::start(&nats, config).await;

    let client = running.client.clone();
    let mut replies: FuturesUnordered<_> = (0..20)
        .map(|_| harness::ask(&client, "chat", HELLO, &[]))
        .collect();
    // In the order the replies arrive.
    let mut order = Vec::new();
    while let Some(r) = replies.next().await {
        order.push(r.header("Llm-Error").unwrap_or("served").to_string());
    }
    drop(replies);
    let served = order.iter().filter(|k| *k == "served").count();
    let overloaded = order.iter().filter(|k| *k == "overloaded").count();
    assert_eq!(served + overloaded, 20, "other answers: {order:?}");
    assert!(served >= 4, "fewer served than places: {order:?}");
    assert!(overloaded >= 1, "nothing was refused: {order:?}");
    // Refusals do not wait for a place: every one came before the first served reply.
    let first_served = order.iter().position(|k| k == "served").unwrap();
    assert!(
        order[first_served..].iter().all(|k| k == "served"),
        "an overloaded answer waited behind a call: {order:?}"
    );
    assert_eq!(
        upstream.calls(),
        served,
        "a refused request reached the provider"
    );
    let status = running.status().await;
    assert_eq!(status["errors"]["overloaded"], overloaded as u64);
    // Places are given back: a request after the burst is served.
    upstream.set_default(Fault::Ok);
    assert_eq!(running.ask("chat", HELLO, &[]).await.served_by(), "slow");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_its_timeout_answers_unavailable_and_leaves_jobs_for_another_instance() {
    let nats = NatsServer::start();
    let upstream = FakeProvider::start().await;
    upstream.set_default(Fault::Hang);
    let config = harness::config(
        &nats.url(),
        "[limits]\nshutdown_timeout = \"300ms\"\n[jobs]\nack_wait = \"2s\"\n",
        &openai_deployment(
            "stuck",
            "chat",
            &upstream.base_url(),
            "timeout = \"120s\"\n",
        ),
    );
    let running = Running::start(&nats, config.clone()).await;
    let js = jetstream::new(running.client.clone());
    wait_jobs_ready(&js).await;

    let requests: Vec<_> = (0..3)
        .map(|_| {
            let client = running.client.clone();
            tokio::spawn(async move { harness::ask(&client, "chat", HELLO, &[]).await })
        })
        .collect();
    submit(&js, "chat", Some("stuck-job"), &job_body("stuck-job"), &[])
        .await
        .await
        .expect("the job is stored");
    assert!(
        upstream.wait_calls(4, Duration::from_secs(20)).await,
        "the calls did not reach the provider"
    );

    // The stuck calls outlast the shutdown timeout: shutdown still ends, and every caller hears.
    tokio::time::timeout(Duration::from_secs(20), running.shutdown())
        .await
        .expect("shutdown ended despite the stuck calls");
    for r in requests {
        let reply = r.await.unwrap();
        assert_eq!(reply.error_kind(), "unavailable", "{:?}", reply.body);
    }
    let info = consumer_info(&js).await;
    assert_eq!(
        info.num_ack_pending, 1,
        "the job was acked by an instance that did not run it"
    );

    // Another instance, on a healthy provider, runs the job once it is redelivered.
    upstream.set_default(Fault::Ok);
    let other = Running::start(&nats, config).await;
    let result = read_result(&js, "llm.result.stuck-job", Duration::from_secs(30)).await;
    assert_eq!(header(&result, "Llm-Error"), None, "{:?}", result.payload);
    assert_eq!(header(&result, "Llm-Deployment"), Some("stuck"));
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_max_payload_is_an_internal_error_and_a_job_is_not_paid_twice() {
    let nats = NatsServer::start_with_max_payload(64 * 1024);
    let upstream = FakeProvider::start().await;
    upstream.set_default(Fault::Reply {
        text: "long ".repeat(40_000),
        prompt_tokens: 5,
        completion_tokens: 40_000,
    });
    let config = harness::config(
        &nats.url(),
        "[jobs]\nack_wait = \"2s\"\n",
        &openai_deployment("verbose", "chat", &upstream.base_url(), ""),
    );
    let running = Running::start(&nats, config).await;
    let js = jetstream::new(running.client.clone());
    wait_jobs_ready(&js).await;

    let reply = running.ask("chat", HELLO, &[]).await;
    assert_eq!(reply.error_kind(), "internal");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_payload"), "{message}");
    assert!(reply.body["error"]["request_id"].as_str().is_some());

    let calls_before = upstream.calls();
    submit(&js, "chat", Some("big-job"), &job_body("big-job"), &[])
        .await
        .await
        .expect("the job is stored");
    let result = read_result(&js, "llm.result.big-job", Duration::from_secs(30)).await;
    assert_eq!(header(&result, "Llm-Error"), Some("internal"));
    wait_until("the job acked", Duration::from_secs(20), || async {
        consumer_info(&js).await.num_ack_pending == 0
    })
    .await;
    assert_eq!(upstream.calls(), calls_before + 1, "the job was sent twice");
    running.shutdown().await;
}
