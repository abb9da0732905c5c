//! `switchyard status`: scatter-gather on `llm.status` (every instance answers), printed as one
//! table, as JSON lines, or refreshed in place with `--watch`.

use std::time::Duration;

use futures::StreamExt;

use crate::config::Config;
use crate::observe::StatusSnapshot;
use crate::protocol::Subjects;

/// What `switchyard status` was asked for.
pub use crate::cli::StatusArgs as How;

pub async fn run(config: &Config, how: &How) -> anyhow::Result<()> {
    let client = crate::ingress::connect(&config.nats, "switchyard-status").await?;
    let subjects = Subjects::new(&config.nats.prefix);
    loop {
        let mut answers = gather_status(&client, &subjects, how.gather).await?;
        if let Some(id) = &how.instance {
            answers.retain(|a| &*a.instance == id.as_str());
        }
        if how.watch && !how.json {
            print!("\x1b[2J\x1b[H");
        }
        if how.json {
            for a in &answers {
                println!("{}", serde_json::to_string(a)?);
            }
        } else {
            print!("{}", table(&answers));
        }
        if !how.watch {
            if answers.is_empty() {
                let (subject, ms) = (subjects.status(), how.gather.as_millis());
                match &how.instance {
                    Some(i) => {
                        anyhow::bail!("instance {i} did not answer on {subject} within {ms} ms")
                    }
                    None => anyhow::bail!("no instance answered on {subject} within {ms} ms"),
                }
            }
            return Ok(());
        }
        tokio::time::sleep(how.every).await;
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
        "{:<14} {:<18} {:<16} {:<9} {:>4} {:>11} {:>8} {:>8} {:>8} {:>6} {:>7} {:>10}",
        "INSTANCE",
        "DEPLOYMENT",
        "GROUP",
        "CIRCUIT",
        "INFL",
        "RPM",
        "P50 ms",
        "P95 ms",
        "BASE ms",
        "ERR%",
        "REQS",
        "COST $"
    );
    for a in answers {
        for d in &a.deployments {
            // The cluster's use when this instance knows it (`c`), else its own.
            let (used, mark) = match d.cluster_rpm_used {
                Some(n) => (n, "c"),
                None => (d.rpm_used, ""),
            };
            let rpm = match d.rpm_limit {
                Some(l) => format!("{used}/{l}{mark}"),
                None => used.to_string(),
            };
            let circuit = if d.degraded {
                format!("{}*", d.circuit)
            } else {
                d.circuit.clone()
            };
            let _ = writeln!(
                out,
                "{:<14} {:<18} {:<16} {:<9} {:>4} {:>11} {:>8.1} {:>8.1} {:>8} {:>6.1} {:>7} {:>10.6}",
                a.instance,
                d.name,
                d.group,
                circuit,
                d.in_flight,
                rpm,
                d.latency_ms.p50,
                d.latency_ms.p95,
                d.latency_ms
                    .baseline
                    .map_or_else(|| "-".to_string(), |b| format!("{b:.1}")),
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
        for k in &a.keys {
            let cap = k
                .max_cost_usd_per_day
                .map_or_else(String::new, |c| format!(" of ${c}/day"));
            let _ = writeln!(
                out,
                "{:<14} KEY {}: {} requests, ${:.6} here, ${:.6} in the cluster{cap}",
                a.instance, k.name, k.requests, k.spend_usd, k.cluster_spend_usd
            );
        }
        for alert in &a.alerts {
            let on = alert
                .deployment
                .as_deref()
                .or(alert.scope.as_deref())
                .unwrap_or("all traffic");
            let _ = writeln!(
                out,
                "{:<14} ALERT {} {} on {on}: {} over {} since {}",
                a.instance,
                alert.severity,
                alert.rule,
                figure(&alert.rule, alert.value),
                figure(&alert.rule, alert.threshold),
                alert.since
            );
        }
    }
    if answers
        .iter()
        .any(|a| a.deployments.iter().any(|d| d.degraded))
    {
        out.push_str("* degraded: an alert is raised, traffic is shifted away (alerts.shift)\n");
    }
    out
}

/// An alert's value as people read it: ms for latency, % for rates, $ for spend.
fn figure(rule: &str, x: f64) -> String {
    match rule {
        "p95_latency" => format!("{x:.0} ms"),
        "cost_over_budget" => format!("${x:.4}"),
        _ => format!("{:.1} %", x * 100.0),
    }
}
