//! `switchyard status`: scatter-gather on `llm.status` (every instance answers), printed as one
//! table, as JSON lines, or refreshed in place with `--watch`.

use std::time::Duration;

use futures::StreamExt;

use crate::config::Config;
use crate::observe::StatusSnapshot;
use crate::protocol::Subjects;

pub async fn run(
    config: &Config,
    json: bool,
    watch: bool,
    gather: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let client = crate::ingress::connect(&config.nats, "switchyard-status").await?;
    let subjects = Subjects::new(&config.nats.prefix);
    loop {
        let answers = gather_status(&client, &subjects, gather).await?;
        if watch && !json {
            print!("\x1b[2J\x1b[H");
        }
        if json {
            for a in &answers {
                println!("{}", serde_json::to_string(a)?);
            }
        } else {
            print!("{}", table(&answers));
        }
        if !watch {
            if answers.is_empty() {
                anyhow::bail!(
                    "no instance answered on {} within {} ms",
                    subjects.status(),
                    gather.as_millis()
                );
            }
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

/// Every answer that arrives within `gather`.
pub async fn gather_status(
    client: &async_nats::Client,
    subjects: &Subjects,
    gather: Duration,
) -> anyhow::Result<Vec<StatusSnapshot>> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subjects.status(), inbox, "".into())
        .await?;
    client.flush().await?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + gather;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        match serde_json::from_slice::<StatusSnapshot>(&msg.payload) {
            Ok(s) => answers.push(s),
            Err(e) => tracing::warn!(error = %e, "unreadable status answer"),
        }
    }
    answers.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(answers)
}

pub fn table(answers: &[StatusSnapshot]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<18} {:<16} {:<9} {:>4} {:>11} {:>8} {:>8} {:>6} {:>7} {:>10}",
        "INSTANCE",
        "DEPLOYMENT",
        "GROUP",
        "CIRCUIT",
        "INFL",
        "RPM",
        "P50 ms",
        "P95 ms",
        "ERR%",
        "REQS",
        "COST $"
    );
    for a in answers {
        for d in &a.deployments {
            let rpm = match d.rpm_limit {
                Some(l) => format!("{}/{l}", d.rpm_used),
                None => d.rpm_used.to_string(),
            };
            let _ = writeln!(
                out,
                "{:<14} {:<18} {:<16} {:<9} {:>4} {:>11} {:>8.1} {:>8.1} {:>6.1} {:>7} {:>10.6}",
                a.instance,
                d.name,
                d.group,
                d.circuit,
                d.in_flight,
                rpm,
                d.latency_ms.p50,
                d.latency_ms.p95,
                d.error_rate * 100.0,
                d.requests,
                d.cost_usd
            );
        }
        let _ = writeln!(
            out,
            "{:<14} up {}s, {} requests, {} fallbacks ({:.1}%); cluster: {} since {} ({})",
            a.instance,
            a.uptime_s,
            a.requests,
            a.fallbacks,
            a.fallback_ratio * 100.0,
            if a.cluster.shared { "shared" } else { "LOCAL" },
            a.cluster.since,
            a.cluster.detail
        );
    }
    out
}
