//! The load shapes: sequential, a fixed number in flight (closed loop), and open loop at a fixed
//! rate with latency measured from each request's intended send time, so a stall is not hidden
//! by the sender slowing down with the server (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, Serialize)]
pub struct Sample {
    pub latencies_us: Vec<u32>,
    pub errors: usize,
    pub wall: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub errors: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub throughput_rps: f64,
}

impl Sample {
    pub fn summary(&self) -> Summary {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        let pct = |p: f64| {
            if l.is_empty() {
                return f64::NAN;
            }
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
            f64::from(l[i])
        };
        Summary {
            n: l.len(),
            errors: self.errors,
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            throughput_rps: (l.len() + self.errors) as f64 / self.wall.as_secs_f64(),
        }
    }
}

/// Where a load's requests go: a NATS subject, or an HTTP URL (a POST of the body).
#[derive(Clone)]
pub enum Door {
    Nats {
        client: Client,
        subject: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Door {
    /// One request; `true` only for a reply that is not an error reply.
    async fn one(&self, body: &Bytes) -> bool {
        match self {
            Door::Nats { client, subject } => {
                let sent = client.request(subject.clone(), body.clone());
                match tokio::time::timeout(TIMEOUT, sent).await {
                    Ok(Ok(msg)) => msg
                        .headers
                        .as_ref()
                        .is_none_or(|h| h.get("Llm-Error").is_none()),
                    _ => false,
                }
            }
            Door::Http { client, url } => {
                let sent = async {
                    let r = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let ok = r.status().is_success();
                    r.bytes().await.map(|_| ok)
                };
                matches!(tokio::time::timeout(TIMEOUT, sent).await, Ok(Ok(true)))
            }
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

pub async fn sequential(door: &Door, body: &Bytes, n: usize) -> Sample {
    let mut s = Sample::default();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        if door.one(body).await {
            s.latencies_us.push(micros(t.elapsed()));
        } else {
            s.errors += 1;
        }
    }
    s.wall = started.elapsed();
    s
}

/// `concurrency` workers, each sending its next request when the last is answered, `n` in all.
pub async fn closed_loop(door: &Door, body: &Bytes, concurrency: usize, n: usize) -> Sample {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (door, body, next) = (door.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let mut s = Sample::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let t = Instant::now();
                    if door.one(&body).await {
                        s.latencies_us.push(micros(t.elapsed()));
                    } else {
                        s.errors += 1;
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Sample::default();
    for w in workers {
        let s = w.await.expect("worker");
        all.latencies_us.extend(s.latencies_us);
        all.errors += s.errors;
    }
    all.wall = started.elapsed();
    all
}

/// `rate` requests a second for `duration`, each sent at its intended time whatever the answers
/// do; latency runs from the intended time. The sender is an OS thread sleeping with the kernel's
/// precision (tens of µs), not the runtime's 1 ms timer, so the schedule itself adds no latency.
pub async fn open_loop(door: &Door, body: &Bytes, rate: u32, duration: Duration) -> Sample {
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = tokio::runtime::Handle::current();
    let (door, body) = (door.clone(), body.clone());
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..total {
            let intended = started + period * i as u32;
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let (door, body, tx) = (door.clone(), body.clone(), tx.clone());
            handle.spawn(async move {
                let ok = door.one(&body).await;
                let _ = tx.send((ok, intended.elapsed()));
            });
        }
    });
    let mut s = Sample::default();
    for _ in 0..total {
        match rx.recv().await {
            Some((true, latency)) => s.latencies_us.push(micros(latency)),
            _ => s.errors += 1,
        }
    }
    let _ = sender.join();
    s.wall = started.elapsed().max(duration);
    s
}
