//! The `simulated` provider: answers in-process after a scripted latency, with a seeded share of
//! 503s and 429s and outage windows. For demos, policy experiments and benchmarks; it is chosen in
//! config by name and never stands in silently for a real provider. It is a backend, not a wire
//! format: nothing is sent, so it stands beside `send::HttpBackend` behind `Adapter`, not behind
//! `WireFormat`.
//!
//! The deployment actor owns the seeded RNG and decides each call's `Fate` when it admits the
//! call, so that a run is repeatable for a given seed and order of requests.
//!
//! Embedding deployments answer with unit vectors drawn from a hash of the space and the text, so
//! that the same text gets the same vector run after run, from every deployment of its space.

use std::time::Duration;

use rand::{Rng, rngs::SmallRng};

use serde_json::json;

use super::embed::{self, EmbedCall, Vectors};
use super::failure::Failure;
use super::shape::unix_now;
use super::stream::{self, Piece, PieceStream};
use crate::config::{DeploymentConfig, SimulatedSpec};
use crate::protocol::response::{Choice, Message};
use crate::protocol::response::{chunk, usage_chunk};
use crate::protocol::{ChatCompletion, ChatRequest, EmbedInput, Usage};

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
    undergo(d, fate).await?;
    Ok(reply(d, req))
}

/// An embeddings call: after its fate, one unit vector of `dimensions` per input.
pub async fn embed(
    d: &DeploymentConfig,
    call: &EmbedCall<'_>,
    dimensions: u32,
    fate: Option<Fate>,
) -> Result<Vectors, Failure> {
    undergo(d, fate).await?;
    let space = embed::space(d, call.dimensions);
    Ok(Vectors {
        vectors: call
            .inputs
            .iter()
            .map(|input| unit_vector(&space, input, dimensions))
            .collect(),
        prompt_tokens: None,
        model: None,
    })
}

/// A vector of length 1 drawn from a hash of `space` and `input` by splitmix64, which (unlike a
/// library RNG) cannot change with a dependency's version.
fn unit_vector(space: &str, input: &EmbedInput, dimensions: u32) -> Vec<f32> {
    let mut key = Vec::with_capacity(space.len() + 64);
    key.extend_from_slice(space.as_bytes());
    match input {
        EmbedInput::Text(t) => {
            key.push(0);
            key.extend_from_slice(t.as_bytes());
        }
        EmbedInput::Tokens(t) => {
            key.push(1);
            key.extend(t.iter().flat_map(|id| id.to_le_bytes()));
        }
    }
    let mut state = crate::config::stable_hash(&key);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // Uniform in [-1, 1): 53 random bits.
    let v: Vec<f64> = (0..dimensions)
        .map(|_| (next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    v.into_iter().map(|x| (x / norm) as f32).collect()
}

/// Lives out a call's fate: waits its latency, then lets it answer or fails it as it says.
async fn undergo(d: &DeploymentConfig, fate: Option<Fate>) -> Result<(), Failure> {
    let fate = fate.unwrap_or(Fate {
        latency: Duration::ZERO,
        outcome: Outcome::Reply,
    });
    if !fate.latency.is_zero() {
        tokio::time::sleep(fate.latency).await;
    }
    match fate.outcome {
        Outcome::Reply => Ok(()),
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
        .body()
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

    fn texts(t: &[&str]) -> Vec<EmbedInput> {
        t.iter().map(|s| EmbedInput::Text(s.to_string())).collect()
    }

    async fn vectors(d: &DeploymentConfig, inputs: &[EmbedInput], dims: Option<u32>) -> Vectors {
        let call = EmbedCall {
            inputs,
            dimensions: dims,
            user: None,
        };
        let n = dims.unwrap_or(d.embedding.as_ref().unwrap().dimensions);
        embed(d, &call, n, None).await.unwrap()
    }

    #[tokio::test]
    async fn embeddings_are_unit_vectors_fixed_by_space_and_text() {
        use crate::config::ProviderKind;
        let a = embed::test_deployment(ProviderKind::Simulated, "sim-embed", 64);
        let mut b = a.clone();
        b.name = "another deployment of the space".into();
        let inputs = texts(&["hello", "world", "hello"]);
        let va = vectors(&a, &inputs, None).await.vectors;
        assert_eq!(va, vectors(&b, &inputs, None).await.vectors);
        assert_eq!(va[0], va[2]);
        assert_ne!(va[0], va[1]);
        for v in &va {
            assert_eq!(v.len(), 64);
            let norm: f32 = v.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        // Another space, or other dimensions: other vectors.
        let other = embed::test_deployment(ProviderKind::Simulated, "sim-embed-2", 64);
        assert_ne!(vectors(&other, &inputs, None).await.vectors[0], va[0]);
        let short = vectors(&a, &inputs, Some(8)).await.vectors;
        assert_eq!(short[0].len(), 8);
        // Fixed across runs and builds (FNV-1a and splitmix64, no library RNG): pinned here.
        assert_eq!(
            vectors(&a, &texts(&["pinned"]), Some(2)).await.vectors[0],
            vec![-0.776_303_65_f32, 0.630_359_2]
        );
        let tokens = [EmbedInput::Tokens(vec![104, 105])];
        assert_eq!(vectors(&a, &tokens, None).await.vectors[0].len(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn embeddings_undergo_their_fate_like_chat() {
        use crate::config::ProviderKind;
        let d = embed::test_deployment(ProviderKind::Simulated, "sim-embed", 4);
        let inputs = texts(&["a"]);
        let call = EmbedCall {
            inputs: &inputs,
            dimensions: None,
            user: None,
        };
        let fate = |outcome| {
            Some(Fate {
                latency: Duration::from_millis(250),
                outcome,
            })
        };
        let started = tokio::time::Instant::now();
        assert!(embed(&d, &call, 4, fate(Outcome::Reply)).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(matches!(
            embed(&d, &call, 4, fate(Outcome::Unavailable)).await,
            Err(Failure::Status {
                status: 503,
                retry_after: None,
                ..
            })
        ));
        assert!(matches!(
            embed(&d, &call, 4, fate(Outcome::RateLimited)).await,
            Err(Failure::Status { status: 429, retry_after: Some(w), .. }) if w == Duration::from_secs(1)
        ));
    }
}
