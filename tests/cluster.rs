//! Several `serve` instances as one (`[cluster]`): load spread over the queue group, circuits
//! and `Retry-After` cool-downs seen by one instance held by all, `rpm` held for the cluster and
//! not per instance (and, far from the limits, at a handful of writes to the bucket), a killed
//! instance costing only its in-flight requests, and local state while NATS is away, shared
//! again once it returns.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::cluster::{ServeProcess, circuit, eventually, gather_status, wait_shared};
use common::harness::{HELLO, Running, ask, config, openai_deployment};
use common::jobs::header;
use common::{FakeProvider, Fault, NatsServer};
use switchyard::config::Config;
use switchyard::protocol::RequestOptions;

const BREAKER: &str = "[breaker]\nfailure_threshold = 3\nreset_timeout = \"30s\"\n";

fn solo(nats: &NatsServer, fake: &FakeProvider, rest: &str, extra: &str) -> Config {
    config(
        &nats.url(),
        rest,
        &openai_deployment("solo", "chat", &fake.base_url(), extra),
    )
}

/// Three instances on one NATS, each sharing its state through the bucket.
async fn three(nats: &NatsServer, config: Config) -> [Running; 3] {
    let a = Running::start(nats, config).await;
    let b = a.start_second("test-2").await;
    let c = a.start_second("test-3").await;
    for r in [&a, &b, &c] {
        wait_shared(r).await;
    }
    [a, b, c]
}

async fn shutdown(all: impl IntoIterator<Item = Running>) {
    for r in all {
        r.shutdown().await;
    }
}

/// One request served by this very instance (not through the queue group).
async fn chat_on(r: &Running) -> Result<String, String> {
    let o = r
        .engine
        .chat("chat", RequestOptions::default(), HELLO.as_bytes(), None)
        .await;
    match o.result {
        Ok(s) => Ok(s.deployment.to_string()),
        Err(f) => Err(f.kind.as_str().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_load() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let [a, b, c] = three(&nats, solo(&nats, &fake, "", "")).await;
    let replies = futures::future::join_all(
        (0..90).map(|_| ask(&a.client, "chat", HELLO, &[("Llm-Deadline", "20s")])),
    )
    .await;
    assert!(replies.iter().all(|r| r.served_by() == "solo"));
    let mut served = Vec::new();
    for r in [&a, &b, &c] {
        served.push(r.engine.status().await.requests);
    }
    println!("requests served per instance: {served:?}");
    assert_eq!(served.iter().sum::<u64>(), 90);
    assert!(
        served.iter().all(|&n| n > 0),
        "every instance serves a share: {served:?}"
    );
    assert_eq!(fake.calls(), 90);
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_on_one_instance_is_open_on_all_within_a_second() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(500));
    let [a, b, c] = three(&nats, solo(&nats, &fake, BREAKER, "")).await;
    let mut events = a.client.subscribe("llm.status.events").await.unwrap();
    a.client.flush().await.unwrap();

    for _ in 0..3 {
        assert_eq!(chat_on(&a).await, Err("unavailable".into()));
    }
    let opened = Instant::now();
    let all_open = eventually(Duration::from_secs(5), || async {
        let s = gather_status(&a.client, 3, Duration::from_secs(2)).await;
        ["test-2", "test-3"]
            .iter()
            .all(|i| s.get(*i).is_some_and(|s| circuit(s, "solo") == "open"))
    })
    .await;
    let propagation = opened.elapsed();
    println!("circuit open on the other two instances after {propagation:?}");
    assert!(all_open, "the other instances never saw the circuit open");
    assert!(
        propagation < Duration::from_secs(1),
        "propagation took {propagation:?}"
    );

    // The others skip the deployment without calling it.
    assert_eq!(chat_on(&b).await, Err("unavailable".into()));
    assert_eq!(chat_on(&c).await, Err("unavailable".into()));
    assert_eq!(fake.calls(), 3);

    // One event, from the instance whose breaker opened.
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut events),
    )
    .await
    .expect("a circuit event")
    .unwrap();
    let e: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(e["to"], "open");
    assert_eq!(e["instance"], "test-1");
    let more = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut events),
    )
    .await;
    assert!(
        more.is_err(),
        "forced transitions are not announced again: {more:?}"
    );
    shutdown([a, b, c]).await;
}

/// After the open period, the cluster sends one half-open probe, not one per instance: the
/// others find the probe claimed and skip the deployment while it is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_half_open_probe_for_the_whole_cluster() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(500));
    let breaker = "[breaker]\nfailure_threshold = 3\nreset_timeout = \"1s\"\n";
    let [a, b, c] = three(&nats, solo(&nats, &fake, breaker, "")).await;
    for _ in 0..3 {
        assert_eq!(chat_on(&a).await, Err("unavailable".into()));
    }
    for r in [&b, &c] {
        let open = eventually(Duration::from_secs(5), || async {
            r.engine.status().await.deployments[0].circuit == "open"
        })
        .await;
        assert!(open, "{} never saw the circuit open", r.engine.instance());
    }
    // The provider has recovered, slowly: the probe is in flight while the others ask.
    fake.set_default(Fault::delay(Duration::from_millis(1500), Fault::Ok));
    // Ask through one instance until the 1 s open period is over and a request becomes the
    // probe (it reaches the fake); until then each is refused without a call.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = loop {
        let engine = a.engine.clone();
        let ask = tokio::spawn(async move {
            let opts = RequestOptions::default();
            engine
                .chat("chat", opts, HELLO.as_bytes(), None)
                .await
                .result
                .is_ok()
        });
        if fake.wait_calls(4, Duration::from_millis(500)).await {
            break ask;
        }
        assert!(!ask.await.unwrap(), "served without reaching the provider");
        assert!(
            Instant::now() < deadline,
            "the circuit never went half-open"
        );
    };
    assert_eq!(chat_on(&b).await, Err("unavailable".into()));
    assert_eq!(chat_on(&c).await, Err("unavailable".into()));
    assert_eq!(
        fake.calls(),
        4,
        "one probe for the cluster: 3 failures + 1 probe"
    );
    assert!(probe.await.unwrap(), "the probe succeeded");
    // Its success closes the circuit everywhere.
    for r in [&b, &c] {
        let closed = eventually(Duration::from_secs(5), || async {
            r.engine.status().await.deployments[0].circuit == "closed"
        })
        .await;
        assert!(
            closed,
            "{} never saw the circuit close",
            r.engine.instance()
        );
    }
    shutdown([a, b, c]).await;
}

/// A probe that outlived its claim's hold gives back only its own claim: the instance that took
/// the probe over in the meantime keeps it, so that no third instance probes beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_probe_does_not_release_the_claim_that_took_over() {
    use switchyard::cluster::{claim_probe, release_probe};
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let kv = switchyard::ingress::cluster::open_bucket(&js, "probes", 1)
        .await
        .expect("bucket");
    let hold = Duration::from_secs(60);
    // A's claim held for no time at all: lapsed at once, as a probe slower than its timeout.
    let late = claim_probe(&kv, "solo", "a", Duration::ZERO).await.unwrap();
    let late = late.expect("A claims the free probe");
    let taken = claim_probe(&kv, "solo", "b", hold).await.unwrap();
    let taken = taken.expect("B claims the lapsed one");
    release_probe(&kv, "solo", late).await;
    assert_eq!(
        claim_probe(&kv, "solo", "c", hold).await.unwrap(),
        None,
        "B's probe is still the cluster's one"
    );
    release_probe(&kv, "solo", taken).await;
    assert!(
        claim_probe(&kv, "solo", "c", hold).await.unwrap().is_some(),
        "B's own release frees it"
    );
}

/// Offers 180 requests over the three instances at once; returns (served, rate_limited).
async fn offer_180(a: &Running) -> (usize, usize) {
    let replies = futures::future::join_all(
        (0..180).map(|_| ask(&a.client, "chat", HELLO, &[("Llm-Deadline", "25s")])),
    )
    .await;
    let ok = replies
        .iter()
        .filter(|r| r.header("Llm-Deployment").is_some())
        .count();
    let limited = replies
        .iter()
        .filter(|r| r.header("Llm-Error") == Some("rate_limited"))
        .count();
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_holds_for_the_cluster_not_per_instance() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let [a, b, c] = three(&nats, solo(&nats, &fake, "", "rpm = 60\n")).await;
    let started = Instant::now();
    let (ok, limited) = offer_180(&a).await;
    println!(
        "180 offered in {:?}: {ok} served, {limited} rate_limited",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(fake.calls(), 60, "the provider sees exactly the limit");
    assert_eq!((ok, limited), (60, 120));
    // Each instance's status shows the cluster's use beside its own share of it, as it saw it
    // at its last call: one more (refused) call on each brings that up to date.
    let mut own = 0;
    for r in [&a, &b, &c] {
        assert_eq!(chat_on(r).await, Err("rate_limited".into()));
        let d = &r.engine.status().await.deployments[0];
        assert_eq!(d.cluster_rpm_used, Some(60), "{}", r.engine.instance());
        own += d.rpm_used;
    }
    assert_eq!(
        own, 60,
        "the instances' own windows add up to the cluster's"
    );
    shutdown([a, b, c]).await;
}

/// The same offer with `[cluster] enabled = false`: each instance spends the whole limit, which
/// is the bug the shared window removes (and what makes the test above able to fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cluster_each_instance_spends_the_whole_limit() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let config = solo(&nats, &fake, "[cluster]\nenabled = false\n", "rpm = 60\n");
    let a = Running::start(&nats, config).await;
    let b = a.start_second("test-2").await;
    let c = a.start_second("test-3").await;
    let (ok, _) = offer_180(&a).await;
    assert!(!a.engine.status().await.cluster.shared);
    println!("without the cluster: {ok} of 180 served");
    assert!(fake.calls() > 60, "{} calls", fake.calls());
    shutdown([a, b, c]).await;
}

/// With limits far above the traffic, keeping them for the cluster costs a handful of writes to
/// the bucket, not one per request: an instance leases capacity in blocks that grow with its
/// demand and spends them locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_far_above_the_traffic_cost_a_handful_of_kv_writes() {
    const REQUESTS: usize = 500;
    const CALLERS: usize = 4;
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let limits = "rpm = 1000000\ntpm = 1000000000\n";
    let a = Arc::new(Running::start(&nats, solo(&nats, &fake, "", limits)).await);
    wait_shared(&a).await;
    // Every write to the key, successful or not, is a message on its subject.
    let mut writes = a
        .client
        .subscribe("$KV.switchyard_state.quota.solo")
        .await
        .unwrap();
    a.client.flush().await.unwrap();

    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..REQUESTS / CALLERS {
                    assert_eq!(chat_on(&a).await, Ok("solo".into()));
                }
            })
        })
        .collect();
    for c in callers {
        c.await.expect("caller");
    }
    let took = started.elapsed();
    assert_eq!(fake.calls(), REQUESTS);
    // Unspent capacity and token corrections are written a moment after the last request: count
    // those too, until the key has been quiet for longer than a lease and a correction take.
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout(
        Duration::from_millis(3000),
        futures::StreamExt::next(&mut writes),
    )
    .await
    {
        count += 1;
    }
    println!("{REQUESTS} requests in {took:?} ({CALLERS} callers): {count} writes to quota.solo");
    assert!(
        count <= 20,
        "{count} writes to the quota key for {REQUESTS} requests"
    );
    let d = &a.engine.status().await.deployments[0];
    assert_eq!(d.rpm_used, REQUESTS as u64);
    let Ok(a) = Arc::try_unwrap(a) else {
        panic!("a caller still holds the instance");
    };
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_seen_by_one_instance_holds_for_all() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let [a, b, c] = three(&nats, solo(&nats, &fake, "", "")).await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 30,
    });
    assert_eq!(chat_on(&a).await, Err("rate_limited".into()));
    for r in [&b, &c] {
        let cooling = eventually(Duration::from_secs(5), || async {
            r.engine.status().await.deployments[0].cooldown_s.is_some()
        })
        .await;
        assert!(cooling, "{} never cooled down", r.engine.instance());
        assert_eq!(chat_on(r).await, Err("rate_limited".into()));
    }
    let left = b.engine.status().await.deployments[0].cooldown_s.unwrap();
    assert!(left > 25.0 && left <= 30.0, "{left} s left");
    assert_eq!(fake.calls(), 1, "no instance called during the cool-down");
    shutdown([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_each_instance_keeps_local_state_and_shares_again_when_it_returns() {
    let mut nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(500));
    let a = Running::start(&nats, solo(&nats, &fake, BREAKER, "")).await;
    let b = a.start_second("test-2").await;
    wait_shared(&a).await;
    wait_shared(&b).await;

    nats.stop();
    for r in [&a, &b] {
        let local = eventually(Duration::from_secs(10), || async {
            !r.engine.status().await.cluster.shared
        })
        .await;
        assert!(local, "{} still says shared", r.engine.instance());
    }
    let status = a.engine.status().await.cluster;
    assert!(status.detail.contains("local state"), "{status:?}");
    // The circuit opens on `a` alone meanwhile.
    for _ in 0..3 {
        assert_eq!(chat_on(&a).await, Err("unavailable".into()));
    }
    assert_eq!(a.engine.status().await.deployments[0].circuit, "open");
    assert_eq!(b.engine.status().await.deployments[0].circuit, "closed");

    nats.restart();
    for r in [&a, &b] {
        let shared = eventually(Duration::from_secs(30), || async {
            r.engine.status().await.cluster.shared
        })
        .await;
        assert!(shared, "{} never shared again", r.engine.instance());
    }
    // `a` republishes the circuit it opened while NATS was away.
    let open = eventually(Duration::from_secs(5), || async {
        b.engine.status().await.deployments[0].circuit == "open"
    })
    .await;
    assert!(
        open,
        "b never learnt of the circuit a opened during the outage"
    );
    assert_eq!(fake.calls(), 3);
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_only_its_requests_in_flight() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::delay(Duration::from_millis(100), Fault::Ok));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[nats]\nurl = \"{}\"\n[storage]\npath = {:?}\n{}",
        nats.url(),
        dir.path().join("s.db").display().to_string(),
        openai_deployment("solo", "chat", &fake.base_url(), "")
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let mut procs: Vec<ServeProcess> = ["p-1", "p-2", "p-3"]
        .iter()
        .map(|i| ServeProcess::start(&path, i))
        .collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let up = eventually(Duration::from_secs(30), || async {
        let s = gather_status(&client, 3, Duration::from_secs(1)).await;
        s.len() == 3 && s.values().all(|v| v["cluster"]["shared"] == true)
    })
    .await;
    assert!(up, "three instances did not come up");

    const REQUESTS: usize = 120;
    const CONCURRENCY: usize = 12;
    let sent = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, sent, retries, answered) = (
                client.clone(),
                sent.clone(),
                retries.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                while sent.fetch_add(1, Relaxed) < REQUESTS {
                    for attempt in 0..2 {
                        let r = tokio::time::timeout(
                            Duration::from_secs(3),
                            client.request("llm.chat.chat", HELLO.into()),
                        )
                        .await;
                        match r {
                            Ok(Ok(msg)) => {
                                let ok = header(&msg, "Llm-Deployment").is_some();
                                assert!(ok, "an error reply: {:?}", msg.payload);
                                answered.fetch_add(1, Relaxed);
                                break;
                            }
                            // No responder or no answer: the instance died with it.
                            _ if attempt == 0 => {
                                retries.fetch_add(1, Relaxed);
                            }
                            other => panic!("no answer after a retry: {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    let killed_at = eventually(Duration::from_secs(30), || async {
        sent.load(Relaxed) >= REQUESTS / 3
    })
    .await;
    assert!(killed_at);
    procs[1].kill();
    for w in workers {
        w.await.expect("worker");
    }
    let (answered, retries) = (answered.load(Relaxed), retries.load(Relaxed));
    println!("{answered} answered, {retries} retried after the kill");
    assert_eq!(answered, REQUESTS, "every request is answered");
    assert!(
        retries <= CONCURRENCY,
        "only requests in flight on the killed instance are retried: {retries}"
    );
    let s = gather_status(&client, 3, Duration::from_secs(2)).await;
    assert_eq!(s.len(), 2, "the killed instance is gone: {:?}", s.keys());
    drop(procs);
}

const JOB: &str = r#"
name = "triage"
task = "classify"
prompt = "Ticket {{id}}: {{body}}"
concurrency = 2
output = { labels = ["billing", "bug", "other"] }
"#;

/// The owner of a batch's lease, read from the cluster's bucket.
async fn lease_owner(client: &async_nats::Client, batch_id: &str) -> Option<String> {
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value("switchyard_state")
        .await
        .ok()?;
    let e = kv.entry(format!("lease.batch.{batch_id}")).await.ok()??;
    let v: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
    Some(v["owner"].as_str()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_owner_dies_is_taken_over_and_finished_by_another_instance() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::delay(
        Duration::from_millis(100),
        Fault::Reply {
            text: "billing".into(),
            prompt_tokens: 12,
            completion_tokens: 1,
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[nats]\nurl = \"{}\"\n[storage]\npath = {:?}\n[cluster]\nlease_ttl = \"3s\"\n[tasks]\nclassify = \"main\"\n{}",
        nats.url(),
        dir.path().join("s.db").display().to_string(),
        openai_deployment("p", "main", &fake.base_url(), "")
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let mut procs: Vec<ServeProcess> = ["p-1", "p-2"]
        .iter()
        .map(|i| ServeProcess::start(&path, i))
        .collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let up = eventually(Duration::from_secs(30), || async {
        let s = gather_status(&client, 2, Duration::from_secs(1)).await;
        s.len() == 2 && s.values().all(|v| v["cluster"]["shared"] == true)
    })
    .await;
    assert!(up, "two instances did not come up");

    const ITEMS: usize = 60;
    let items: Vec<serde_json::Value> = (0..ITEMS)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "body": format!("invoice {i}")}))
        .collect();
    let body = serde_json::json!({"job": JOB, "items": items}).to_string();
    let reply = client
        .request("llm.batch.submit", body.into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    let id = v["batch_id"].as_str().expect("a batch id").to_string();
    let mut progress = client
        .subscribe(format!("llm.batch.{id}.progress"))
        .await
        .unwrap();

    let going = eventually(Duration::from_secs(10), || async { fake.calls() >= 10 }).await;
    assert!(going, "the batch never got going");
    let owner = lease_owner(&client, &id)
        .await
        .expect("the running batch has a lease");
    let killed = procs.iter().position(|p| p.instance == owner).unwrap();
    let calls_at_kill = fake.calls();
    let taken_at = Instant::now();
    procs[killed].kill();
    let survivor = procs[1 - killed].instance.clone();

    let deadline = Instant::now() + Duration::from_secs(40);
    let last = loop {
        let m = tokio::time::timeout_at(deadline.into(), futures::StreamExt::next(&mut progress))
            .await
            .expect("the batch finished")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v.get("state").is_some() {
            break v;
        }
    };
    println!(
        "owner {owner} killed after {calls_at_kill} calls; {survivor} finished the batch {:?} later",
        taken_at.elapsed()
    );
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["ok"], ITEMS as u64, "{last}");
    assert_eq!(
        lease_owner(&client, &id).await.as_deref(),
        Some(survivor.as_str())
    );
    // Items finished before the kill were not sent again: only those in flight on the dead owner
    // (at most `concurrency`) were.
    assert!(
        fake.calls() <= ITEMS + 2,
        "{} provider calls for {ITEMS} items",
        fake.calls()
    );
    drop(procs);
}
