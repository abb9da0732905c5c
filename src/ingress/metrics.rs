//! Prometheus metrics on an optional HTTP listener (`[metrics] listen`): `GET /metrics` renders
//! the same snapshot `llm.status` answers, in the Prometheus text format. Nothing is counted for
//! it on the request path: the deployment actors and the router already keep these numbers.
//! Label values are deployment, group, provider, task and circuit-state names: low cardinality.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::observe::status::StatusSnapshot;

/// The snapshot in Prometheus text format (version 0.0.4).
pub fn render(s: &StatusSnapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("switchyard_requests_total", "counter", "Requests routed.");
    family(
        "switchyard_fallbacks_total",
        "counter",
        "Requests that fell back.",
    );
    family(
        "switchyard_uptime_seconds",
        "gauge",
        "Seconds since the engine started.",
    );
    family(
        "switchyard_cluster_shared",
        "gauge",
        "1 while the instance shares circuits and limits through the cluster bucket.",
    );
    let mut text = out;
    let _ = writeln!(
        text,
        "switchyard_cluster_shared {}",
        u8::from(s.cluster.shared)
    );
    let _ = writeln!(text, "switchyard_requests_total {}", s.requests);
    let _ = writeln!(text, "switchyard_fallbacks_total {}", s.fallbacks);
    let _ = writeln!(text, "switchyard_uptime_seconds {}", s.uptime_s);

    let per = [
        (
            "switchyard_deployment_calls_total",
            "counter",
            "Provider calls made.",
        ),
        (
            "switchyard_deployment_failures_total",
            "counter",
            "Provider calls that failed (5xx, 429, timeouts, broken replies).",
        ),
        (
            "switchyard_deployment_in_flight",
            "gauge",
            "Calls in flight.",
        ),
        (
            "switchyard_deployment_cost_usd_total",
            "counter",
            "Cost of the calls, USD.",
        ),
        (
            "switchyard_deployment_error_rate",
            "gauge",
            "Share of recent calls that failed.",
        ),
        (
            "switchyard_deployment_timeout_rate",
            "gauge",
            "Share of recent calls that timed out.",
        ),
        (
            "switchyard_deployment_latency_ms",
            "gauge",
            "Latency of recent successful calls, by quantile (and ewma).",
        ),
        (
            "switchyard_deployment_rpm_used",
            "gauge",
            "Requests in the last minute.",
        ),
        (
            "switchyard_deployment_tpm_used",
            "gauge",
            "Tokens in the last minute.",
        ),
        (
            "switchyard_deployment_circuit",
            "gauge",
            "1 for the circuit's current state.",
        ),
        (
            "switchyard_deployment_tokens_total",
            "counter",
            "Tokens used by successful calls, by kind (prompt, completion).",
        ),
        (
            "switchyard_deployment_degraded",
            "gauge",
            "1 while a degradation alert is raised and traffic is shifted away.",
        ),
        (
            "switchyard_deployment_call_duration_seconds",
            "histogram",
            "Latency of successful provider calls.",
        ),
    ];
    for (name, kind, help) in per {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in &s.deployments {
            let l = format!(
                "deployment=\"{}\",group=\"{}\",provider=\"{}\",mode=\"{}\"",
                escape(&d.name),
                escape(&d.group),
                escape(&d.provider),
                escape(&d.mode)
            );
            let mut line = |labels: &str, v: f64| {
                let _ = writeln!(text, "{name}{{{labels}}} {v}");
            };
            match name {
                "switchyard_deployment_calls_total" => line(&l, d.requests as f64),
                "switchyard_deployment_failures_total" => line(&l, d.failures as f64),
                "switchyard_deployment_in_flight" => line(&l, f64::from(d.in_flight)),
                "switchyard_deployment_cost_usd_total" => line(&l, d.cost_usd),
                "switchyard_deployment_error_rate" => line(&l, d.error_rate),
                "switchyard_deployment_timeout_rate" => line(&l, d.timeout_rate),
                "switchyard_deployment_latency_ms" => {
                    line(&format!("{l},quantile=\"0.5\""), d.latency_ms.p50);
                    line(&format!("{l},quantile=\"0.95\""), d.latency_ms.p95);
                    line(&format!("{l},quantile=\"ewma\""), d.latency_ms.ewma);
                }
                "switchyard_deployment_rpm_used" => line(&l, d.rpm_used as f64),
                "switchyard_deployment_tpm_used" => line(&l, d.tpm_used as f64),
                "switchyard_deployment_tokens_total" => {
                    line(&format!("{l},kind=\"prompt\""), d.prompt_tokens as f64);
                    line(
                        &format!("{l},kind=\"completion\""),
                        d.completion_tokens as f64,
                    );
                }
                "switchyard_deployment_degraded" => line(&l, f64::from(u8::from(d.degraded))),
                "switchyard_deployment_call_duration_seconds" => {
                    histogram(&mut text, name, &l, &s.latency_buckets_s, d);
                }
                _ => {
                    for state in ["closed", "open", "half_open"] {
                        let on = if d.circuit == state { 1.0 } else { 0.0 };
                        line(&format!("{l},state=\"{state}\""), on);
                    }
                }
            }
        }
    }
    let _ = writeln!(
        text,
        "# HELP switchyard_errors_total Failed requests by error kind.\n# TYPE switchyard_errors_total counter"
    );
    for (kind, n) in &s.errors {
        let _ = writeln!(
            text,
            "switchyard_errors_total{{kind=\"{}\"}} {n}",
            escape(kind)
        );
    }
    let _ = writeln!(
        text,
        "# HELP switchyard_batch_items_total Batch items finished, by outcome.\n# TYPE switchyard_batch_items_total counter"
    );
    let _ = writeln!(
        text,
        "switchyard_batch_items_total{{outcome=\"ok\"}} {}\nswitchyard_batch_items_total{{outcome=\"failed\"}} {}",
        s.batch_items_ok, s.batch_items_failed
    );
    let _ = writeln!(
        text,
        "# HELP switchyard_alerts_active Alerts raised now, by rule and severity.\n# TYPE switchyard_alerts_active gauge"
    );
    let mut active: std::collections::BTreeMap<(&str, &str), u32> = Default::default();
    for a in &s.alerts {
        *active.entry((&a.rule, &a.severity)).or_default() += 1;
    }
    for ((rule, severity), n) in active {
        let _ = writeln!(
            text,
            "switchyard_alerts_active{{rule=\"{}\",severity=\"{}\"}} {n}",
            escape(rule),
            escape(severity)
        );
    }
    let _ = writeln!(
        text,
        "# HELP switchyard_spend_usd Cost today (UTC) by task.\n# TYPE switchyard_spend_usd gauge"
    );
    for (task, usd) in &s.spend.by_task {
        let _ = writeln!(
            text,
            "switchyard_spend_usd{{task=\"{}\"}} {usd}",
            escape(task)
        );
    }
    if !s.keys.is_empty() {
        let _ = writeln!(
            text,
            "# HELP switchyard_http_key_requests_total Requests taken today (UTC) by HTTP key (its name).\n# TYPE switchyard_http_key_requests_total counter\n# HELP switchyard_http_key_spend_usd Cost today (UTC) by HTTP key, this instance.\n# TYPE switchyard_http_key_spend_usd gauge"
        );
    }
    for k in &s.keys {
        let key = escape(&k.name);
        let _ = writeln!(
            text,
            "switchyard_http_key_requests_total{{key=\"{key}\"}} {}\nswitchyard_http_key_spend_usd{{key=\"{key}\"}} {}",
            k.requests, k.spend_usd
        );
    }
    text
}

/// One deployment's latency histogram: cumulative `_bucket` lines, `_sum` and `_count`.
fn histogram(
    text: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    d: &crate::observe::status::DeploymentStatus,
) {
    let mut cumulative = 0;
    for (i, n) in d.latency_histogram.iter().enumerate() {
        cumulative += n;
        let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(text, "{name}_sum{{{labels}}} {}", d.latency_sum_s);
    let _ = writeln!(text, "{name}_count{{{labels}}} {cumulative}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics on http://{addr}/metrics");
    }
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics listener");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let handle = move |req: Request<Incoming>| {
                let engine = engine.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let body = render(&engine.status().await);
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, Infallible>(resp)
                }
            };
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

/// Binds `[metrics] listen`; an address in use is a start-up error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
