//! The pieces every request goes through, in isolation: parsing the caller's request, the routing
//! decision (strategy order over a group), building the OpenAI body for the provider, parsing
//! the provider's reply, and building our reply.
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::config::Config;
use switchyard::engine::ChatOutcome;
use switchyard::protocol::ChatRequest;
use switchyard::providers::{ProviderReply, openai};
use switchyard::routing::classify::RouteTable;
use switchyard::routing::fallback::Served;
use switchyard::routing::strategy::{Candidate, Strategy};

const REQUEST: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful travel assistant. Answer briefly."},{"role":"user","content":"Suggest a two-day itinerary for Lisbon in May, with one museum and one viewpoint per day."}],"temperature":0.7,"max_tokens":256}"#;

const REPLY: &[u8] = br#"{"id":"chatcmpl-9xYz","object":"chat.completion","created":1732600000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Day 1: Gulbenkian Museum, then sunset at Miradouro da Senhora do Monte. Day 2: MAAT, then Miradouro de Santa Catarina.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":52,"completion_tokens":38,"total_tokens":90,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_0ba0d124f1"}"#;

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            index: i,
            weight: 1 + (i % 3) as u32,
            in_flight: (i % 7) as u32,
            headroom: 1.0 - (i % 10) as f64 / 10.0,
            ewma_ms: Some(100.0 + (i % 13) as f64),
            estimated_cost: (i % 5) as f64 * 1e-6,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    c.bench_function("request parse + validate", |b| {
        b.iter(|| ChatRequest::parse(black_box(REQUEST)).unwrap())
    });

    let mut rng = SmallRng::seed_from_u64(1);
    for n in [3usize, 30, 300] {
        for s in [Strategy::SimpleShuffle, Strategy::LatencyBased] {
            let base = candidates(n);
            c.bench_function(&format!("route decision {} over {n}", s.as_str()), |b| {
                b.iter(|| {
                    let mut c = base.clone();
                    s.order(&mut c, &mut rng);
                    black_box(c[0].index)
                })
            });
        }
    }

    // Classification (task `auto`, four rules) then the strategy, as a request meets them.
    for n in [3usize, 30, 300] {
        let config = classified_config(n);
        let table = RouteTable::new(&config);
        let req = ChatRequest::parse(REQUEST).unwrap();
        let base = candidates(n);
        c.bench_function(&format!("classify + route decision over {n}"), |b| {
            b.iter(|| {
                let route = table.resolve(black_box("auto"), &req);
                let mut c = base.clone();
                Strategy::CostBased.order(&mut c, &mut rng);
                black_box((route.target, c[0].index))
            })
        });
    }

    let deployment = Config::demo().deployments.remove(0);
    let req = ChatRequest::parse(REQUEST).unwrap();
    c.bench_function("openai body build", |b| {
        b.iter(|| openai::build_body(&deployment, black_box(&req), true))
    });
    c.bench_function("openai reply check", |b| {
        b.iter(|| openai::parse_response(black_box(bytes::Bytes::from_static(REPLY))).unwrap())
    });

    c.bench_function("reply build (headers + body)", |b| {
        b.iter(|| {
            let outcome = ChatOutcome {
                request_id: Arc::from("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
                latency: Duration::from_micros(250),
                result: Ok(Served {
                    index: 0,
                    reply: ProviderReply {
                        body: bytes::Bytes::from_static(REPLY),
                        usage: Default::default(),
                        cost_usd: 0.0000312,
                    },
                    deployment: Arc::from("gpt-4o-mini"),
                    provider: "openai",
                    attempts: 1,
                    fallback: false,
                    route_reason: Arc::from("task table"),
                    space: None,
                }),
                streamed: false,
            };
            black_box(outcome.into_reply())
        })
    });
}

/// `n` simulated deployments in one group, with four classification rules; the request matches
/// the last one (keywords), so every rule is evaluated.
fn classified_config(n: usize) -> Config {
    let mut text = String::from(
        "[routing]\ndefault_group = \"g\"\n\
         [[classify.rules]]\ngroup = \"g\"\nhas_tools = true\n\
         [[classify.rules]]\ngroup = \"g\"\njson_output = true\n\
         [[classify.rules]]\ngroup = \"g\"\nmin_prompt_tokens = 4000\n\
         [[classify.rules]]\ngroup = \"g\"\nkeywords = [\"refund\", \"itinerary\"]\n",
    );
    for i in 0..n {
        text += &format!(
            "[[deployments]]\nname = \"d{i}\"\ngroup = \"g\"\nprovider = \"simulated\"\nmodel = \"m\"\n"
        );
    }
    Config::parse(&text, "bench.toml", &|_| None).unwrap()
}

criterion_group!(benches, bench);
criterion_main!(benches);
