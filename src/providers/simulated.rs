//! The `simulated` provider: answers in-process after a scripted latency, with a seeded share of
//! 503s and 429s and outage windows. For demos, policy experiments and benchmarks; it is chosen in
//! config by name and never stands in silently for a real provider. It is a backend, not a wire
//! format: nothing is sent, so it stands beside `send::HttpBackend` behind `Adapter`, not behind
//! `WireFormat`.
//!
//! The deployment actor owns the seeded RNG and decides each call's `Fate` when it admits the
//! call, so that a run is repeatable for a given seed and order of requests.

use std::time::Duration;

use rand::{Rng, rngs::SmallRng};

use serde_json::json;

use super::failure::Failure;
use super::shape::unix_now;
use super::stream::{self, Piece, PieceStream};
use crate::config::{DeploymentConfig, SimulatedSpec};
use crate::protocol::response::{Choice, Message};
use crate::protocol::response::{chunk, usage_chunk};
use crate::protocol::{ChatCompletion, ChatRequest, Usage};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Reply,
    /// 503, as during an outage.
    Unavailable,
    /// 429 with a Retry-After of one second.
    RateLimited,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fate {
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Decides what the next call does; `since_start` places it against the outage windows.
pub fn decide(spec: &SimulatedSpec, rng: &mut SmallRng, since_start: Duration) -> Fate {
    let jitter = if spec.latency_jitter.is_zero() {
        Duration::ZERO
    } else {
        spec.latency_jitter.mul_f64(rng.random::<f64>())
    };
    let in_outage = spec
        .outages
        .iter()
        .any(|o| since_start >= o.start && since_start < o.start + o.duration);
    let roll: f64 = rng.random();
    let outcome = if in_outage || roll < spec.error_rate {
        Outcome::Unavailable
    } else if roll < spec.error_rate + spec.rate_limit_rate {
        Outcome::RateLimited
    } else {
        Outcome::Reply
    };
    Fate {
        latency: spec.latency + jitter,
        outcome,
    }
}

/// The same answer as `call`, as a stream of chunks: role, three pieces of text, the finish,
/// and the usage.
pub async fn open_stream(
    d: &DeploymentConfig,
    req: &ChatRequest,
    fate: Option<Fate>,
) -> Result<PieceStream, Failure> {
    let c = call(d, req, fate).await?;
    let text = c.text().unwrap_or_default().to_string();
    let usage = c.usage.unwrap_or_default();
    let piece = |v: serde_json::Value| {
        Ok(Piece {
            chunks: vec![serde_json::to_vec(&v).unwrap_or_default().into()],
            usage: None,
        })
    };
    let mut pieces = vec![piece(chunk(
        &c.id,
        &c.model,
        c.created,
        0,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    let third = text.len().div_ceil(3);
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut at = third.min(rest.len());
        while !rest.is_char_boundary(at) {
            at += 1;
        }
        let (part, tail) = rest.split_at(at);
        pieces.push(piece(chunk(
            &c.id,
            &c.model,
            c.created,
            0,
            json!({"content": part}),
            None,
        )));
        rest = tail;
    }
    pieces.push(piece(chunk(
        &c.id,
        &c.model,
        c.created,
        0,
        json!({}),
        Some("stop"),
    )));
    let mut last = piece(usage_chunk(&c.id, &c.model, c.created, usage));
    if let Ok(p) = &mut last {
        p.usage = Some(usage);
    }
    pieces.push(last);
    Ok(stream::from_pieces(pieces))
}

pub async fn call(
    d: &DeploymentConfig,
    req: &ChatRequest,
    fate: Option<Fate>,
) -> Result<ChatCompletion, Failure> {
    let fate = fate.unwrap_or(Fate {
        latency: Duration::ZERO,
        outcome: Outcome::Reply,
    });
    if !fate.latency.is_zero() {
        tokio::time::sleep(fate.latency).await;
    }
    match fate.outcome {
        Outcome::Reply => Ok(reply(d, req)),
        Outcome::Unavailable => Err(Failure::Status {
            status: 503,
            message: format!("simulated outage at {}", d.name),
            retry_after: None,
        }),
        Outcome::RateLimited => Err(Failure::Status {
            status: 429,
            message: format!("simulated rate limit at {}", d.name),
            retry_after: Some(Duration::from_secs(1)),
        }),
    }
}

fn reply(d: &DeploymentConfig, req: &ChatRequest) -> ChatCompletion {
    let last_user = req
        .body
        .get("messages")
        .and_then(|m| m.as_array())
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let answers = d
        .simulated
        .as_ref()
        .map(|s| s.answers.as_slice())
        .unwrap_or_default();
    let text = if answers.is_empty() {
        let preview: String = last_user.chars().take(60).collect();
        format!("[{}] simulated answer to: {preview}", d.model)
    } else {
        // The same prompt gets the same answer from the same deployment, run after run.
        let key = format!("{}\u{0}{last_user}", d.name);
        let i = crate::config::stable_hash(key.as_bytes()) as usize % answers.len();
        answers.get(i).cloned().unwrap_or_default()
    };
    let completion_tokens = crate::protocol::request::estimate_tokens(text.len())
        .min(u64::from(req.max_tokens.unwrap_or(u32::MAX)));
    ChatCompletion {
        id: format!("chatcmpl-sim-{}", uuid::Uuid::new_v4().simple()),
        object: "chat.completion".into(),
        created: unix_now(),
        model: d.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: Some(text),
                extra: Default::default(),
            },
            finish_reason: Some("stop".into()),
            extra: Default::default(),
        }],
        usage: Some(Usage {
            prompt_tokens: req.estimated_prompt_tokens,
            completion_tokens,
            total_tokens: req.estimated_prompt_tokens + completion_tokens,
        }),
        extra: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Outage;
    use rand::SeedableRng;

    fn spec(error_rate: f64, rate_limit_rate: f64) -> SimulatedSpec {
        SimulatedSpec {
            latency: Duration::from_millis(10),
            latency_jitter: Duration::from_millis(5),
            error_rate,
            rate_limit_rate,
            outages: vec![Outage {
                start: Duration::from_secs(10),
                duration: Duration::from_secs(5),
            }],
            seed: 7,
            answers: Vec::new(),
        }
    }

    #[test]
    fn rates_hold_and_a_seed_repeats() {
        let s = spec(0.2, 0.1);
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..10_000)
                .map(|_| decide(&s, &mut rng, Duration::ZERO))
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        let errors = a
            .iter()
            .filter(|f| f.outcome == Outcome::Unavailable)
            .count();
        let limited = a
            .iter()
            .filter(|f| f.outcome == Outcome::RateLimited)
            .count();
        assert!((1800..2200).contains(&errors), "{errors}");
        assert!((850..1150).contains(&limited), "{limited}");
        assert!(
            a.iter().all(|f| f.latency >= Duration::from_millis(10)
                && f.latency <= Duration::from_millis(15))
        );
    }

    #[test]
    fn outage_windows_answer_503() {
        let s = spec(0.0, 0.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let at = |secs| {
            decide(
                &s,
                &mut SmallRng::seed_from_u64(1),
                Duration::from_secs(secs),
            )
        };
        assert_eq!(at(9).outcome, Outcome::Reply);
        assert_eq!(at(10).outcome, Outcome::Unavailable);
        assert_eq!(at(14).outcome, Outcome::Unavailable);
        assert_eq!(
            decide(&s, &mut rng, Duration::from_secs(15)).outcome,
            Outcome::Reply
        );
    }
}
