//! Routing strategies, context-window skips, affinity and budgets through NATS against fake
//! providers that count the calls they get (docs/contract.md §4, issue "routing strategies").

mod common;

use std::time::Duration;

use common::harness::{HELLO, Reply, Running, config, next_circuit_event, openai_deployment};
use common::{FakeProvider, Fault, NatsServer};

struct Group {
    nats: NatsServer,
    fakes: Vec<FakeProvider>,
    sy: Running,
}

/// Deployments `d0`, `d1`, … in group `main`, each with its own extra config lines.
async fn group(strategy: &str, extras: &[&str], rest: &str) -> Group {
    let nats = NatsServer::start();
    let mut fakes = Vec::new();
    let mut deployments = String::new();
    for (i, extra) in extras.iter().enumerate() {
        let fake = FakeProvider::start_named(format!("d{i}")).await;
        deployments += &openai_deployment(&format!("d{i}"), "main", &fake.base_url(), extra);
        fakes.push(fake);
    }
    let rest = format!("[routing]\nstrategy = \"{strategy}\"\ndefault_group = \"main\"\n{rest}");
    let sy = Running::start(&nats, config(&nats.url(), &rest, &deployments)).await;
    Group { nats, fakes, sy }
}

fn calls(g: &Group) -> Vec<usize> {
    g.fakes.iter().map(FakeProvider::calls).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_based_never_lets_a_deployment_exceed_its_rpm() {
    let g = group("usage-based", &["rpm = 4", "rpm = 4"], "").await;
    let mut limited = 0;
    for _ in 0..12 {
        let r = g.sy.ask("chat", HELLO, &[]).await;
        if r.header("Llm-Error") == Some("rate_limited") {
            limited += 1;
        }
    }
    assert_eq!(calls(&g), [4, 4], "each fake saw exactly its rpm, no more");
    assert_eq!(
        limited, 4,
        "the offered load above both limits is refused, not sent"
    );
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_based_never_lets_a_deployment_exceed_its_tpm() {
    let g = group("usage-based", &["tpm = 300"], "").await;
    // Usage as a real provider counts this prompt (our estimate reserves a little more).
    g.fakes[0].set_default(Fault::Reply {
        text: "Hi!".into(),
        prompt_tokens: 10,
        completion_tokens: 9,
    });
    let mut used = 0;
    for _ in 0..30 {
        let r = g.sy.ask("chat", HELLO, &[]).await;
        if r.header("Llm-Deployment").is_some() {
            used += r.body["usage"]["total_tokens"].as_u64().unwrap();
        }
    }
    assert!(used <= 300, "{used} tokens in the minute");
    assert!(g.fakes[0].calls() < 30, "calls stopped at the budget");
    assert!(used >= 150, "the budget was used, not left idle: {used}");
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_based_moves_away_from_a_slow_deployment_and_back() {
    let g = group("latency-based", &["", ""], "").await;
    for _ in 0..10 {
        g.sy.ask("chat", HELLO, &[]).await;
    }
    g.fakes[0].set_default(Fault::delay(Duration::from_millis(120), Fault::Ok));
    for _ in 0..5 {
        g.sy.ask("chat", HELLO, &[]).await;
    }
    let before = calls(&g);
    for _ in 0..20 {
        g.sy.ask("chat", HELLO, &[]).await;
    }
    let slow_share = calls(&g)[0] - before[0];
    assert!(
        slow_share <= 1,
        "the slow deployment got {slow_share} of 20"
    );

    // It recovers; once its old figure is stale (LATENCY_FRESH, 2 s) it is probed and wins
    // traffic back. Requests keep flowing until that probe happens, however long it takes.
    g.fakes[0].set_default(Fault::Ok);
    let stale_at = calls(&g)[0];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while calls(&g)[0] == stale_at {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow deployment was never probed again"
        );
        g.sy.ask("chat", HELLO, &[]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = calls(&g);
    for _ in 0..20 {
        g.sy.ask("chat", HELLO, &[]).await;
    }
    let back = calls(&g)[0] - before[0];
    assert!(back >= 5, "the recovered deployment got only {back} of 20");
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_follows_in_flight_counts() {
    let g = group("least-busy", &["", ""], "").await;
    g.fakes[0].set_default(Fault::delay(Duration::from_millis(800), Fault::Ok));
    let mut pending = Vec::new();
    for i in 1..=6 {
        let client = g.sy.client.clone();
        pending.push(tokio::spawn(async move {
            common::harness::ask(&client, "chat", HELLO, &[]).await
        }));
        // The next request is decided once this one is in flight at its deployment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls(&g).iter().sum::<usize>() < i {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    assert!(calls(&g)[0] <= 1, "the busy deployment got {:?}", calls(&g));
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_based_picks_the_cheapest_and_moves_up_when_it_is_full_or_open() {
    let cheap = "rpm = 3\nprice = { input_per_mtok = 0.1, output_per_mtok = 0.2 }";
    let mid = "price = { input_per_mtok = 0.5, output_per_mtok = 1.0 }";
    let dear = "price = { input_per_mtok = 2.0, output_per_mtok = 8.0 }";
    let g = group("cost-based", &[cheap, mid, dear], "").await;
    for _ in 0..3 {
        assert_eq!(g.sy.ask("chat", HELLO, &[]).await.served_by(), "d0");
    }
    assert_eq!(
        g.sy.ask("chat", HELLO, &[]).await.served_by(),
        "d1",
        "d0 is at its rpm"
    );
    g.fakes[1].set_default(Fault::status(503));
    for _ in 0..3 {
        assert_eq!(g.sy.ask("chat", HELLO, &[]).await.served_by(), "d2");
    }
    let r = g.sy.ask("chat", HELLO, &[]).await;
    assert_eq!(r.served_by(), "d2");
    assert_eq!(r.attempts(), 1, "d1's circuit is open: skipped, not called");
    assert_eq!(calls(&g), [3, 4, 4]);
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_window_too_small_is_skipped_before_the_call() {
    let g = group(
        "simple-shuffle",
        &["context_window = 100\nweight = 100", ""],
        "",
    )
    .await;
    let long = "lorem ipsum dolor ".repeat(200);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}]}}"#);
    for _ in 0..5 {
        let r = g.sy.ask("chat", &body, &[]).await;
        assert_eq!(r.served_by(), "d1");
    }
    assert_eq!(g.fakes[0].calls(), 0);
    // Short requests still go to it.
    assert_eq!(g.sy.ask("chat", HELLO, &[]).await.served_by(), "d0");
    g.sy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_sticks_moves_when_unhealthy_and_comes_back() {
    let g = group(
        "simple-shuffle",
        &["", "", "", ""],
        "[breaker]\nreset_timeout = \"1s\"\n",
    )
    .await;
    let key = [("Llm-Affinity", "project-42")];
    let home = g.sy.ask("chat", HELLO, &key).await.served_by().to_string();
    for _ in 0..10 {
        assert_eq!(g.sy.ask("chat", HELLO, &key).await.served_by(), home);
    }
    let others: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mut homes = std::collections::HashSet::new();
    for k in &others {
        homes.insert(
            g.sy.ask("chat", HELLO, &[("Llm-Affinity", k)])
                .await
                .served_by()
                .to_string(),
        );
    }
    assert!(homes.len() >= 3, "keys spread over deployments: {homes:?}");

    let watcher = async_nats::connect(g.nats.url()).await.unwrap();
    let mut events = watcher.subscribe("llm.status.events").await.unwrap();
    watcher.flush().await.unwrap();
    let i: usize = home[1..].parse().unwrap();
    g.fakes[i].set_default(Fault::status(503));
    let moved: Vec<Reply> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(g.sy.ask("chat", HELLO, &key).await);
        }
        v
    };
    let second = moved[4].served_by().to_string();
    assert_ne!(second, home);
    assert!(
        moved.iter().all(|r| r.served_by() == second),
        "one stand-in, not a spread"
    );
    assert_eq!(
        next_circuit_event(&mut events, &home, Duration::from_secs(5)).await,
        Some(("closed".into(), "open".into()))
    );
    g.fakes[i].set_default(Fault::Ok);
    assert_eq!(
        next_circuit_event(&mut events, &home, Duration::from_secs(5)).await,
        Some(("open".into(), "half_open".into()))
    );
    assert_eq!(
        g.sy.ask("chat", HELLO, &key).await.served_by(),
        home,
        "back home"
    );
    g.sy.shutdown().await;
}

/// `main` (d0, pricey) and `cheap` (c0); caps on task `chat` (downgrade) and on all traffic
/// (reject). Costs: the fakes report their usage; the price is 1 and 2 USD per Mtok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_downgrade_then_reject_and_survive_a_restart() {
    let nats = NatsServer::start();
    let d0 = FakeProvider::start_named("d0").await;
    let c0 = FakeProvider::start_named("c0").await;
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("spend.db");
    let rest = format!(
        "[storage]\npath = {:?}\n[routing]\ndefault_group = \"main\"\n[tasks]\nchat = \"main\"\n\
         [[budgets.caps]]\ntask = \"chat\"\ndaily_usd = 0.0001\naction = \"downgrade\"\ndowngrade_to = \"cheap\"\n\
         [[budgets.caps]]\ndaily_usd = 0.0003\n",
        path.display().to_string()
    );
    let deployments = format!(
        "{}{}",
        openai_deployment("d0", "main", &d0.base_url(), ""),
        openai_deployment("c0", "cheap", &c0.base_url(), "")
    );
    let cfg = config(&nats.url(), &rest, &deployments);
    let sy = Running::start(&nats, cfg.clone()).await;

    let mut header_total = 0.0;
    let mut priced_usage = 0.0;
    let mut served = Vec::new();
    let mut rejected = 0;
    for _ in 0..12 {
        let r = sy.ask("chat", HELLO, &[]).await;
        if let Some(cost) = r.header("Llm-Cost-Usd") {
            header_total += cost.parse::<f64>().unwrap();
            let u = &r.body["usage"];
            priced_usage += (u["prompt_tokens"].as_f64().unwrap() * 1.0
                + u["completion_tokens"].as_f64().unwrap() * 2.0)
                / 1e6;
            served.push((
                r.served_by().to_string(),
                r.header("Llm-Route-Reason").unwrap().to_string(),
            ));
        } else {
            assert_eq!(r.error_kind(), "budget_exceeded", "{}", r.body);
            rejected += 1;
        }
    }
    assert_eq!(served[0], ("d0".to_string(), "task table".to_string()));
    let first_downgrade = served
        .iter()
        .position(|(d, _)| d == "c0")
        .expect("a downgrade");
    assert!(first_downgrade >= 1);
    assert!(
        served[first_downgrade]
            .1
            .starts_with("budget: daily budget of task `chat` reached")
    );
    assert!(served[first_downgrade..].iter().all(|(d, _)| d == "c0"));
    assert!(rejected >= 1, "the cap on all traffic rejects");

    // What the callers were charged is what the providers reported, priced, and so is the spend.
    assert!(
        (header_total - priced_usage).abs() < 1e-9,
        "{header_total} vs {priced_usage}"
    );
    let status = sy.status().await;
    let total = status["spend"]["total_usd"].as_f64().unwrap();
    assert!(
        (total - header_total).abs() < 1e-9,
        "{total} vs {header_total}"
    );
    assert!(total >= 0.0003);
    sy.shutdown().await;

    // The totals are kept: a restarted engine still rejects.
    let again = Running::start(&nats, cfg).await;
    let r = again.ask("chat", HELLO, &[]).await;
    assert_eq!(r.error_kind(), "budget_exceeded");
    let total_again = again.status().await["spend"]["total_usd"].as_f64().unwrap();
    assert!((total_again - total).abs() < 1e-9);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_skips_deployments_estimated_above_it() {
    let cheap = "price = { input_per_mtok = 0.1, output_per_mtok = 0.1 }";
    let dear = "price = { input_per_mtok = 100.0, output_per_mtok = 100.0 }\nweight = 100";
    let g = group("simple-shuffle", &[cheap, dear], "").await;
    // HELLO: ~11 prompt tokens + 20 max_tokens ≈ 31 tokens: $0.0031 at d1, $0.0000031 at d0.
    for _ in 0..5 {
        let r =
            g.sy.ask("chat", HELLO, &[("Llm-Max-Cost-Usd", "0.001")])
                .await;
        assert_eq!(r.served_by(), "d0");
    }
    assert_eq!(g.fakes[1].calls(), 0);
    let r =
        g.sy.ask("chat", HELLO, &[("Llm-Max-Cost-Usd", "0.000000001")])
            .await;
    assert_eq!(r.error_kind(), "budget_exceeded");
    assert_eq!(calls(&g), [5, 0]);
    g.sy.shutdown().await;
}
