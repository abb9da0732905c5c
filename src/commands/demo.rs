//! `switchyard demo`: the engine in-process on the demo config, no NATS and no key.
//!
//! By default a batch: the ticket-triage job (embedded) over 20 tickets, checkpointed in
//! `./switchyard-demo/`, with a progress bar and a summary; a second run finds every item done.
//! With `--burst`, chat requests go through the real supervisor, deployment actors and fallback
//! walk against `simulated` deployments, one of which has an outage, so the run shows fallback
//! and a circuit opening and closing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::engine::Engine;
use crate::observe::Event;
use crate::protocol::RequestOptions;

const PROMPTS: [(&str, &str); 4] = [
    ("chat", "What is a good name for a travel app?"),
    (
        "title",
        "Summarise in five words: our trip to Lisbon in May",
    ),
    ("chat", "Explain circuit breakers in one sentence."),
    (
        "extract",
        "Extract the city from: 'Meet me in Porto on Friday'",
    ),
];

const JOB: &str = include_str!("../../jobs/ticket-triage.toml");
const TICKETS: &str = include_str!("../../jobs/tickets.jsonl");

const EMBED_JOB: &str = include_str!("../../jobs/docs-embed.toml");
const DOCS: &str = include_str!("../../jobs/docs.jsonl");

/// The demo batches, in `./switchyard-demo/`: the ticket triage (chat), then the help-centre
/// articles embedded for search (`kind = "embed"`).
pub async fn batch(config: &Config) -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from("switchyard-demo");
    std::fs::create_dir_all(&dir)?;
    let jobs = [
        ("ticket-triage.toml", JOB, "tickets.jsonl", TICKETS),
        ("docs-embed.toml", EMBED_JOB, "docs.jsonl", DOCS),
    ];
    for (n, (job_name, job_text, input_name, input_text)) in jobs.into_iter().enumerate() {
        let (job, input) = (dir.join(job_name), dir.join(input_name));
        std::fs::write(&job, job_text)?;
        std::fs::write(&input, input_text)?;
        if n > 0 {
            println!();
        }
        println!(
            "switchyard demo: job {} over {} on {}\n",
            job.display(),
            input.display(),
            config.source
        );
        let summary = crate::batch::runner::run(
            config,
            crate::batch::runner::RunArgs {
                job,
                input,
                output: None,
                db: dir.join("batch.db"),
                restart: false,
            },
        )
        .await?;
        summary.print();
        println!("\nfirst lines of {}:", summary.output.display());
        for line in std::fs::read_to_string(&summary.output)?.lines().take(3) {
            // A vector is long: the line is shown up to its first numbers.
            match line.char_indices().nth(160) {
                Some((cut, _)) => println!("  {}…", &line[..cut]),
                None => println!("  {line}"),
            }
        }
    }
    Ok(())
}

pub async fn run(config: &Config, args: &DemoArgs) -> anyhow::Result<()> {
    let (requests, interval, strategy) = (args.requests, args.interval, args.strategy.clone());
    let engine = Arc::new(Engine::start(config, "demo").await?);
    let mut events = engine.events();
    let started = Instant::now();
    let printer = tokio::spawn(async move {
        while let Ok(Event::Circuit {
            deployment,
            from,
            to,
            ..
        }) = events.recv().await
        {
            println!(
                "{:>7.2}s  ⚡ circuit {deployment}: {} → {}",
                started.elapsed().as_secs_f64(),
                from.as_str(),
                to.as_str()
            );
        }
    });
    println!(
        "switchyard demo: {requests} requests, one every {} ms, config {}, strategy {}\n",
        interval.as_millis(),
        config.source,
        strategy.as_deref().unwrap_or("as configured")
    );
    let options = RequestOptions {
        strategy,
        ..RequestOptions::default()
    };
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    for i in 0..requests {
        tick.tick().await;
        let (task, prompt) = PROMPTS[i % PROMPTS.len()];
        let (engine, options) = (engine.clone(), options.clone());
        tasks.spawn(async move {
            let body = serde_json::json!({
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 64
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let outcome = engine
                .chat(task, options, &body, None)
                .await;
            let at = started.elapsed().as_secs_f64();
            match &outcome.result {
                Ok(s) => println!(
                    "{at:>7.2}s  #{:<3} {task:<8} → {:<16} attempts={} fallback={:<5} {:>4} ms  ${:.6}",
                    i + 1,
                    s.deployment,
                    s.attempts,
                    s.fallback,
                    outcome.latency.as_millis(),
                    s.reply.cost_usd
                ),
                Err(f) => println!(
                    "{at:>7.2}s  #{:<3} {task:<8} ✗ {}: {}",
                    i + 1,
                    f.kind.as_str(),
                    f.message
                ),
            }
            outcome
        });
    }
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let (mut ok, mut failed, mut fallbacks, mut cost) = (0, 0, 0, 0.0);
    while let Some(done) = tasks.join_next().await {
        let outcome = done?;
        match outcome.result {
            Ok(s) => {
                ok += 1;
                fallbacks += usize::from(s.fallback);
                cost += s.reply.cost_usd;
                *served.entry(s.deployment.to_string()).or_default() += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let status = engine.status().await;
    engine.stop().await;
    printer.abort();

    println!(
        "\n{ok} ok, {failed} failed, {fallbacks} served after a fallback, ${cost:.6} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "\n{:<16} {:<17} {:>6} {:>7} {:>9} {:>9} {:>10}",
        "DEPLOYMENT", "GROUP", "SERVED", "CIRCUIT", "P50 ms", "ERRORS", "COST $"
    );
    for d in &status.deployments {
        println!(
            "{:<16} {:<17} {:>6} {:>7} {:>9.1} {:>5}/{:<3} {:>10.6}",
            d.name,
            d.group,
            served.get(&d.name).copied().unwrap_or(0),
            d.circuit,
            d.latency_ms.p50,
            d.failures,
            d.requests,
            d.cost_usd
        );
    }
    Ok(())
}
