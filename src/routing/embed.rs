//! The embeddings walk (docs/contract.md §10): the request's inputs cut into parts of at most
//! `max_inputs` (and a provider's token limit), each part walking the route's candidates like a
//! chat request does, concurrently, then put back together in input order.
//!
//! Vectors of two models live in two spaces, so a part never falls back into another space: the
//! first part that is served fixes the request's space, and later candidates of another space are
//! skipped (with the reason in `attempts`) unless the request's first group says
//! `cross_space = true`. When the route's candidates span more than one space, the first part goes
//! alone, so that the space is fixed before any other part is paid for.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;

use super::Router;
use super::classify::{Route, Target};
use super::fallback::{Failed, Served, Walk};
use super::strategy::Strategy;
use crate::config::{DeploymentConfig, ProviderKind, Shift};
use crate::deployment::embed::EmbedArgs;
use crate::deployment::{self, Attempt};
use crate::protocol::embed::list_body;
use crate::protocol::{EmbedRequest, ErrorKind, RequestOptions, Usage};
use crate::providers::ProviderReply;
use crate::providers::embed::{Embedded, space};

/// Parts of one request in flight at once. Each is one provider call, admitted against the
/// deployment's limits like any call; this only keeps one huge request from holding every
/// connection.
const PARALLEL_PARTS: usize = 8;

/// One embeddings request to route.
pub struct EmbedAsk<'a> {
    pub req: Arc<EmbedRequest>,
    pub task: &'a str,
    pub opts: &'a RequestOptions,
    pub strategy: Option<Strategy>,
    pub request_id: &'a Arc<str>,
}

/// A part that was served.
struct Part {
    range: Range<usize>,
    reply: Embedded,
    index: usize,
    calls: u32,
    fallback: bool,
}

/// What every part of a request shares.
struct Shared<'a> {
    ask: &'a EmbedAsk<'a>,
    /// (group number, deployment index), best first, degraded ones last where they go last.
    candidates: Vec<(usize, usize)>,
    cross_space: bool,
    /// The space the first served part fixed.
    space: OnceLock<Arc<str>>,
    /// Calls made so far, to number each one.
    calls: AtomicU32,
    started: Instant,
    reason: Arc<str>,
}

/// The space a deployment's vectors live in for a request asking `dimensions`
/// (`providers::embed::space`); `None` for a chat deployment.
pub fn space_of(c: &DeploymentConfig, dimensions: Option<u32>) -> Option<String> {
    c.is_embedding().then(|| space(c, dimensions))
}

/// The most estimated tokens one call may carry at this provider: OpenAI refuses a request over
/// 300,000 tokens; Gemini's embedding models read 2,048 tokens an input, 100 inputs a call.
fn call_token_limit(provider: ProviderKind) -> u64 {
    match provider {
        ProviderKind::OpenAi => 300_000,
        ProviderKind::Gemini => 204_800,
        _ => u64::MAX,
    }
}

/// Cuts `req`'s inputs into consecutive ranges of at most `max_inputs` inputs and `max_tokens`
/// estimated tokens (an input larger than that alone is a part of its own: the provider says
/// whether it takes it).
pub fn split(req: &EmbedRequest, max_inputs: usize, max_tokens: u64) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut tokens) = (0, 0u64);
    for (i, input) in req.inputs.iter().enumerate() {
        let t = input.estimated_tokens();
        if i > start && (i - start >= max_inputs || tokens.saturating_add(t) > max_tokens) {
            parts.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens = tokens.saturating_add(t);
    }
    if start < req.inputs.len() {
        parts.push(start..req.inputs.len());
    }
    parts
}

impl Router {
    /// Routes one embeddings request to completion: its vectors in input order as an OpenAI
    /// `list`, or why not.
    pub async fn embed(&self, ask: EmbedAsk<'_>) -> Result<Served, Failed> {
        self.requests.fetch_add(1, Relaxed);
        let task = self.spend.task_key(ask.task);
        let Some(route) = self.table.resolve_embed(ask.task, ask.req.model.as_deref()) else {
            return Err(Failed::new(
                ErrorKind::Unavailable,
                "no deployment serves embeddings: add one with mode = \"embedding\"",
            ));
        };
        let route = self.admissible_route(task, route, true, &ask.opts.endpoints)?;
        let reason = route.reason.clone();
        let result = self.embed_walk(&ask, route).await;
        self.count_fallback(result.map_err(|mut f| {
            f.route_reason = Some(reason);
            f
        }))
    }

    async fn embed_walk(&self, ask: &EmbedAsk<'_>, route: Route) -> Result<Served, Failed> {
        let Route { target, reason } = route;
        let req = &ask.req;
        let cost = |s: &super::Slot| s.config().price.cost(req.estimated_tokens, 0);
        let (candidates, cross_space) = match target {
            Target::Deployment(d) => (vec![(0, d)], false),
            Target::Group(g) => {
                let probing = self.shift != Shift::Off && rand::random::<f64>() < self.probe_share;
                let deferring = self.shift == Shift::Skip && !probing;
                let mut first = Vec::new();
                let mut deferred = Vec::new();
                for (n, group) in self.table.chain(g).enumerate() {
                    for i in self.order(group, &cost, ask.opts, ask.strategy, probing) {
                        if deferring && self.slots[i].published.degraded() {
                            deferred.push((n, i));
                        } else {
                            first.push((n, i));
                        }
                    }
                }
                first.extend(deferred);
                (first, self.table.groups[g].cross_space)
            }
        };
        let configs = || candidates.iter().map(|&(_, i)| self.slots[i].config());
        let max_inputs = configs()
            .filter_map(|c| c.embedding.as_ref().map(|e| e.max_inputs))
            .min()
            .unwrap_or(1);
        let max_tokens = configs()
            .map(|c| {
                let tpm = c.tpm.map_or(u64::MAX, |t| t.get());
                call_token_limit(c.provider).min(tpm)
            })
            .min()
            .unwrap_or(u64::MAX);
        let parts = split(req, max_inputs, max_tokens);
        let mut spaces = configs().filter_map(|c| space_of(c, req.dimensions));
        // A space the caller names is fixed from the start, whatever the group allows.
        let pinned = ask.opts.embedding_space.is_some();
        let cross_space = cross_space && !pinned;
        let one_space = pinned || spaces.next().is_some_and(|s| spaces.all(|o| o == s));
        let shared = Shared {
            ask,
            candidates,
            cross_space,
            space: ask
                .opts
                .embedding_space
                .as_deref()
                .map(|s| OnceLock::from(Arc::<str>::from(s)))
                .unwrap_or_default(),
            calls: AtomicU32::new(0),
            started: Instant::now(),
            reason,
        };

        let mut served: Vec<Part> = Vec::with_capacity(parts.len());
        let mut rest = parts.into_iter();
        if !(one_space || cross_space)
            && let Some(first) = rest.next()
        {
            served.push(self.embed_part(&shared, first).await?);
        }
        let mut running = futures::stream::iter(rest)
            .map(|range| self.embed_part(&shared, range))
            .buffer_unordered(PARALLEL_PARTS);
        while let Some(part) = running.next().await {
            // One part that cannot be served ends the request; the others are dropped (their
            // calls cancelled and reported to their actors as abandoned).
            served.push(part?);
        }
        drop(running);
        Ok(self.assemble(&shared, served))
    }

    /// One part along the candidates, within the request's space.
    async fn embed_part(&self, sh: &Shared<'_>, range: Range<usize>) -> Result<Part, Failed> {
        let (ask, req) = (sh.ask, &sh.ask.req);
        let mut w = Walk::new(
            sh.started,
            ask.opts,
            sh.reason.clone(),
            self.max_retry_after,
        );
        let estimate = |s: &super::Slot| s.config().price.cost(req.estimated_tokens, 0);
        for &(group_number, index) in &sh.candidates {
            if w.deadline_spent(Instant::now()) {
                return Err(w.timeout());
            }
            let slot = &self.slots[index];
            let c = slot.config();
            let Some(space) = space_of(c, req.dimensions) else {
                w.skip(
                    &c.name,
                    "skipped: not an embedding deployment".into(),
                    false,
                    false,
                );
                continue;
            };
            if !sh.cross_space
                && let Some(fixed) = sh.space.get()
                && **fixed != *space
            {
                let why =
                    format!("skipped: its vector space `{space}` is not the request's `{fixed}`");
                w.skip(&c.name, why, false, false);
                continue;
            }
            let Some(actor) = w.reachable(slot, ask.opts, estimate(slot)) else {
                continue;
            };
            let call = EmbedArgs {
                req: req.clone(),
                range: range.clone(),
                deadline: w.deadline,
                request_id: ask.request_id.clone(),
                attempt: sh.calls.fetch_add(1, Relaxed) + 1,
                batch: ask.opts.batch,
            };
            match deployment::embed::embed(&actor, &slot.args, call).await {
                Attempt::Skipped(skip) => w.skipped(&c.name, &skip),
                Attempt::Answered { reply, .. } => {
                    let fallback = w.answered(group_number);
                    let _ = sh.space.set(space.into());
                    return Ok(Part {
                        range,
                        reply,
                        index,
                        calls: w.calls,
                        fallback,
                    });
                }
                Attempt::Failed {
                    failure,
                    decision,
                    latency,
                }
                | Attempt::Broken {
                    failure,
                    decision,
                    latency,
                    ..
                } => {
                    if let Some(stop) = w.failed_call(&c.name, &failure, &decision, latency) {
                        return Err(stop);
                    }
                }
            }
        }
        Err(w.exhausted())
    }

    /// The parts in input order as one `list` reply, priced and recorded against the spend of
    /// each deployment that served one.
    fn assemble(&self, sh: &Shared<'_>, mut parts: Vec<Part>) -> Served {
        parts.sort_by_key(|p| p.range.start);
        let task = self.spend.task_key(sh.ask.task);
        let req = &sh.ask.req;
        let mut vectors = Vec::with_capacity(req.inputs.len());
        let (mut tokens, mut cost, mut calls, mut fallback) = (0u64, 0.0, 0u32, false);
        let mut used: Vec<usize> = Vec::new();
        let mut spaces: Vec<String> = Vec::new();
        for p in &mut parts {
            self.spend
                .record(task, p.index, p.reply.cost_usd, p.reply.prompt_tokens);
            tokens = tokens.saturating_add(p.reply.prompt_tokens);
            cost += p.reply.cost_usd;
            calls += p.calls;
            fallback |= p.fallback;
            if !used.contains(&p.index) {
                used.push(p.index);
                let space = space_of(self.slots[p.index].config(), req.dimensions);
                if let Some(s) = space.filter(|s| !spaces.contains(s)) {
                    spaces.push(s);
                }
            }
            vectors.append(&mut p.reply.vectors);
        }
        let first = parts.first().map_or(0, |p| p.index);
        let model = parts.first().map_or("", |p| p.reply.model.as_str());
        let body = list_body(&vectors, req.encoding, model, tokens);
        let names: Vec<&str> = used.iter().map(|&i| &*self.slots[i].name).collect();
        Served {
            reply: ProviderReply {
                body: body.into(),
                usage: Usage {
                    prompt_tokens: tokens,
                    completion_tokens: 0,
                    total_tokens: tokens,
                },
                cost_usd: cost,
            },
            index: first,
            deployment: names.join(",").into(),
            provider: self.slots[first].config().provider.as_str(),
            attempts: calls,
            fallback,
            route_reason: sh.reason.clone(),
            space: Some(spaces.join(",").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EmbedInput, Endpoints};

    fn request(texts: &[&str]) -> EmbedRequest {
        let body = serde_json::json!({ "input": texts });
        EmbedRequest::parse(body.to_string().as_bytes(), &Endpoints::NATS).unwrap()
    }

    #[test]
    fn parts_keep_every_input_once_in_order_within_both_limits() {
        let texts: Vec<String> = (0..1000).map(|i| "word ".repeat(i % 7 + 1)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let req = request(&refs);
        for (max_inputs, max_tokens) in [(256, u64::MAX), (100, 50), (1, 1), (7, 20)] {
            let parts = split(&req, max_inputs, max_tokens);
            let mut next = 0;
            for p in &parts {
                assert_eq!(p.start, next, "gap or overlap");
                assert!(!p.is_empty() && p.len() <= max_inputs);
                let tokens: u64 = req.inputs[p.clone()]
                    .iter()
                    .map(EmbedInput::estimated_tokens)
                    .sum();
                assert!(p.len() == 1 || tokens <= max_tokens, "{p:?}: {tokens}");
                next = p.end;
            }
            assert_eq!(next, 1000);
        }
        assert_eq!(split(&req, 256, u64::MAX).len(), 4);
    }

    #[test]
    fn the_space_follows_the_requested_dimensions() {
        let mut c = Config::demo();
        let d = c.deployments.iter_mut().find(|d| d.is_embedding()).unwrap();
        let spec = d.embedding.clone().unwrap();
        assert_eq!(space_of(d, None), Some(spec.space.clone()));
        assert_eq!(space_of(d, Some(spec.dimensions)), Some(spec.space.clone()));
        assert_eq!(space_of(d, Some(64)), Some(format!("{}@64", d.model)));
        d.embedding.as_mut().unwrap().space = "docs".into();
        assert_eq!(space_of(d, Some(64)), Some("docs@64".into()));
    }

    use crate::config::Config;
}
