//! The fallback walk: try the route's candidates in strategy order, group after group along the
//! fallback chain, until one answers, a failure says stop (docs/contract.md §2), the candidates run
//! out, or the caller's deadline is spent. Every retry and fallback decision lives here.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Router;
use super::budget::Verdict;
use super::classify::{Route, Target};
use super::strategy::{Candidate, Strategy, affinity_order};
use crate::config::{ProviderKind, Shift};
use crate::deployment::{self, Attempt, CallArgs, LATENCY_FRESH, Skip};
use crate::observe::spend::until_next_day;
use crate::protocol::CircuitState;
use crate::protocol::{AttemptRecord, ChatRequest, Endpoints, ErrorKind, RequestOptions, Usage};
use crate::providers::{Failure, ProviderReply};

/// One request to route, with what the caller said about it.
pub struct Ask<'a> {
    pub req: Arc<ChatRequest>,
    /// The subject's task token.
    pub task: &'a str,
    pub opts: &'a RequestOptions,
    /// `Llm-Strategy`, overriding the groups' own.
    pub strategy: Option<Strategy>,
    pub request_id: &'a Arc<str>,
    /// Where a streamed request's chunks go; `None` answers even a `stream` request in one reply.
    pub sink: Option<&'a mpsc::Sender<Bytes>>,
}

/// A request that was served.
#[derive(Debug)]
pub struct Served {
    pub reply: ProviderReply,
    /// The deployment's position in the config.
    pub index: usize,
    pub deployment: Arc<str>,
    pub provider: &'static str,
    /// Provider calls made, this one included.
    pub attempts: u32,
    /// An earlier call failed, or the request left its first group.
    pub fallback: bool,
    /// Why the route went where it did (`Llm-Route-Reason`).
    pub route_reason: Arc<str>,
    /// Embeddings: the vector space(s) that answered (`Llm-Embedding-Space`).
    pub space: Option<Arc<str>>,
}

/// A request that was not.
#[derive(Debug)]
pub struct Failed {
    pub kind: ErrorKind,
    pub message: String,
    pub status: Option<u16>,
    pub attempts: Vec<AttemptRecord>,
    /// A call failed and a later candidate was tried.
    pub fell_back: bool,
    /// Tokens a stream used before it broke, when known.
    pub usage: Option<Usage>,
    /// Why the route went where it did, once it was known.
    pub route_reason: Option<Arc<str>>,
    /// When the refusal is known to lift, at most `breaker.max_retry_after` (the HTTP door's
    /// `Retry-After`): for `rate_limited`, the soonest a candidate has room again, if every
    /// candidate said when; for `budget_exceeded`, the daily caps' reset at midnight UTC.
    pub retry_after: Option<Duration>,
}

impl Failed {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            attempts: Vec::new(),
            fell_back: false,
            usage: None,
            route_reason: None,
            retry_after: None,
        }
    }
}

/// One walk over the candidates: what every attempt of the request shares, and what the walk has
/// seen, to name the error when candidates run out.
pub(super) struct Walk {
    started: Instant,
    pub(super) deadline: Option<Instant>,
    /// Prompt estimate plus `max_tokens`: what a context window must hold.
    needed_context: u64,
    /// Why the route went where it did (`Llm-Route-Reason`).
    reason: Arc<str>,
    records: Vec<AttemptRecord>,
    /// Provider calls made (skips are not calls).
    pub(super) calls: u32,
    failed_calls: u32,
    last_status: Option<u16>,
    /// Every candidate was at its limit, cooling down, or answered 429.
    only_rate_limited: bool,
    /// The soonest of those candidates has room again in this long, as far as they said;
    /// `room_unknown` once one of them did not say.
    room_in: Option<Duration>,
    room_unknown: bool,
    /// `breaker.max_retry_after`: the longest `room_in` told to the caller.
    max_wait: Duration,
    only_not_found: bool,
    only_over_cost: bool,
    /// The provider of the first call: `extra_body` goes only to that provider.
    first_provider: Option<ProviderKind>,
}

impl Walk {
    pub(super) fn new(
        started: Instant,
        opts: &RequestOptions,
        reason: Arc<str>,
        max_wait: Duration,
    ) -> Self {
        Self {
            started,
            // Deadlines are clamped to `limits.max_deadline` at the edge; the sum is checked anyway.
            deadline: opts.deadline.and_then(|d| started.checked_add(d)),
            needed_context: 0,
            reason,
            records: Vec::new(),
            calls: 0,
            failed_calls: 0,
            last_status: None,
            only_rate_limited: true,
            room_in: None,
            room_unknown: false,
            max_wait,
            only_not_found: true,
            only_over_cost: true,
            first_provider: None,
        }
    }

    /// The actor of a candidate the caller allows, within `Llm-Max-Cost-Usd` at `estimate`, with
    /// its circuit not open; else `None` with the skip recorded.
    pub(super) fn reachable(
        &mut self,
        slot: &super::Slot,
        opts: &RequestOptions,
        estimate: f64,
    ) -> Option<Arc<ractor::ActorRef<deployment::Msg>>> {
        let c = slot.config();
        let name = c.name.as_str();
        if opts.exclude.contains(&c.name) {
            self.skip(name, "skipped: excluded by the caller".into(), false, false);
            return None;
        }
        if let Some(max) = opts.max_cost_usd
            && estimate > max
        {
            let why =
                format!("skipped: estimated cost ${estimate:.6} over Llm-Max-Cost-Usd ${max}");
            self.skip(name, why, false, true);
            return None;
        }
        if slot.published.circuit() == CircuitState::Open {
            self.skip(name, Skip::CircuitOpen.describe(), false, false);
            return None;
        }
        let Some(actor) = slot.actor.load_full() else {
            self.skip(name, Skip::Unreachable.describe(), false, false);
            return None;
        };
        Some(actor)
    }

    /// A candidate its deployment did not admit: rate limited (at its limit or cooling down,
    /// with when it has room again, if known), or out for another reason.
    pub(super) fn skipped(&mut self, deployment: &str, skip: &Skip) {
        let limited = matches!(skip, Skip::CoolingDown(_) | Skip::AtLimit { .. });
        if limited {
            self.rate_limited_for(skip.known_wait());
        }
        self.skip(deployment, skip.describe(), limited, false);
    }

    /// One more rate-limited candidate, with room again in `wait` (`None`: it did not say).
    fn rate_limited_for(&mut self, wait: Option<Duration>) {
        match wait {
            Some(w) => self.room_in = Some(self.room_in.map_or(w, |soonest| soonest.min(w))),
            None => self.room_unknown = true,
        }
    }

    pub(super) fn skip(
        &mut self,
        deployment: &str,
        why: String,
        rate_limited: bool,
        over_cost: bool,
    ) {
        self.only_rate_limited &= rate_limited;
        self.only_not_found = false;
        self.only_over_cost &= over_cost;
        self.records.push(AttemptRecord {
            deployment: deployment.to_string(),
            status: None,
            error: why,
            latency_ms: 0,
        });
    }

    /// A call that failed: counted, recorded, and the error that ends the walk when the failure
    /// says not to fall back.
    pub(super) fn failed_call(
        &mut self,
        name: &str,
        failure: &Failure,
        decision: &crate::deployment::Decision,
        latency: Duration,
    ) -> Option<Failed> {
        self.calls += 1;
        self.failed_calls += 1;
        self.only_rate_limited &= decision.kind == ErrorKind::RateLimited;
        if decision.kind == ErrorKind::RateLimited {
            // A 429's `Retry-After`, capped: the cool-down it started.
            self.rate_limited_for(decision.cool_down);
        }
        self.only_not_found &= decision.kind == ErrorKind::NotFound;
        self.only_over_cost = false;
        self.record_failure(name, failure, latency);
        (!decision.fall_back).then(|| {
            let message = format!("{name}: {}", failure.describe());
            self.fail(decision.kind, message)
        })
    }

    /// A call that answered, in the walk's `group_number`-th group: whether the request fell
    /// back to get it.
    pub(super) fn answered(&mut self, group_number: usize) -> bool {
        self.calls += 1;
        self.failed_calls > 0 || group_number > 0
    }

    pub(super) fn record_failure(
        &mut self,
        deployment: &str,
        failure: &Failure,
        latency: Duration,
    ) {
        self.last_status = failure.status().or(self.last_status);
        self.records.push(AttemptRecord {
            deployment: deployment.to_string(),
            status: failure.status(),
            error: failure.describe(),
            latency_ms: (latency.as_millis() as u64).max(1),
        });
    }

    pub(super) fn deadline_spent(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    pub(super) fn fail(&mut self, kind: ErrorKind, message: String) -> Failed {
        // The failed call that ended the walk does not count as a fallback by itself.
        let fell_back = self.failed_calls > 1 || (self.failed_calls == 1 && self.records.len() > 1);
        Failed {
            kind,
            message,
            status: self.last_status,
            attempts: std::mem::take(&mut self.records),
            fell_back,
            usage: None,
            route_reason: None,
            retry_after: None,
        }
    }

    /// The error once every candidate was tried or skipped, named by what they had in common.
    pub(super) fn exhausted(&mut self) -> Failed {
        if self.deadline_spent(Instant::now()) {
            return self.timeout();
        }
        let n = self.records.len();
        let mut retry_after = None;
        let (kind, message) = if n == 0 {
            (
                ErrorKind::Unavailable,
                "no deployment to route to".to_string(),
            )
        } else if self.only_over_cost {
            (
                ErrorKind::BudgetExceeded,
                format!("all {n} candidates cost more than Llm-Max-Cost-Usd"),
            )
        } else if self.only_rate_limited {
            if !self.room_unknown {
                retry_after = self.room_in.map(|w| w.min(self.max_wait));
            }
            (
                ErrorKind::RateLimited,
                format!("all {n} candidates are at their limit or cooling down"),
            )
        } else if self.only_not_found {
            (
                ErrorKind::NotFound,
                format!("the model was not found at any of the {n} candidates"),
            )
        } else {
            (
                ErrorKind::Unavailable,
                format!("all {n} candidates failed or were skipped"),
            )
        };
        let mut f = self.fail(kind, message);
        f.retry_after = retry_after;
        f
    }

    pub(super) fn timeout(&mut self) -> Failed {
        let spent = self.started.elapsed().as_millis();
        let calls = self.calls;
        self.fail(
            ErrorKind::Timeout,
            format!("Llm-Deadline spent after {spent} ms and {calls} provider call(s)"),
        )
    }
}

impl Router {
    /// Routes one request to completion. `strategy` overrides the groups' own (`Llm-Strategy`).
    pub async fn route(&self, ask: Ask<'_>) -> Result<Served, Failed> {
        self.requests.fetch_add(1, Relaxed);
        let task = self.spend.task_key(ask.task);
        let route = self.table.resolve(ask.task, &ask.req);
        let route = self.admissible_route(task, route, false, &ask.opts.endpoints)?;
        let reason = route.reason.clone();
        let result = self.walk(ask, route).await.map_err(|mut f| {
            f.route_reason = Some(reason);
            f
        });
        if let Ok(s) = &result {
            self.spend
                .record(task, s.index, s.reply.cost_usd, s.reply.usage.total_tokens);
        }
        self.count_fallback(result)
    }

    /// The deployments `req` on `task` would walk, in the order a walk would try them now (each
    /// group by its strategy, then the fallback chain), for a deferred batch to pick its batch
    /// deployment from (docs/contract.md §11). Nothing is admitted or counted.
    pub fn walk_order(&self, task: &str, req: &ChatRequest) -> Vec<usize> {
        let route = self.table.resolve(task, req);
        let opts = RequestOptions::default();
        match route.target {
            Target::Group(g) => self
                .table
                .chain(g)
                .flat_map(|g| self.order(g, &|s| estimated_cost(s, req), &opts, None, false))
                .collect(),
            Target::Deployment(d) => vec![d],
        }
    }

    /// `result`, counted in `fallbacks` if it fell back.
    pub(super) fn count_fallback(&self, result: Result<Served, Failed>) -> Result<Served, Failed> {
        let fell_back = match &result {
            Ok(s) => s.fallback,
            Err(f) => f.fell_back,
        };
        if fell_back {
            self.fallbacks.fetch_add(1, Relaxed);
        }
        result
    }

    /// `route` as the daily caps leave it (the same, a downgrade, or refused), checked to lead to
    /// deployments of the request's mode (`embedding` or chat); a request of the other mode is
    /// sent to the other one of its door's `endpoints`.
    pub(super) fn admissible_route(
        &self,
        task: usize,
        mut route: Route,
        embedding: bool,
        endpoints: &Endpoints,
    ) -> Result<Route, Failed> {
        if !self.budgets.is_empty() {
            // A downgrade is checked once more: the cheaper group may have a cap of its own.
            for _ in 0..2 {
                match self.budgets.check(&self.spend, task, route.target) {
                    Verdict::Go => break,
                    Verdict::Downgrade(g, reason) => {
                        route = Route {
                            target: Target::Group(g),
                            reason,
                        }
                    }
                    Verdict::Reject(why) => {
                        let mut f = Failed::new(ErrorKind::BudgetExceeded, why);
                        f.route_reason = Some(route.reason);
                        f.retry_after = Some(until_next_day().min(self.max_retry_after));
                        return Err(f);
                    }
                }
            }
        }
        let serves_embeddings = match route.target {
            Target::Group(g) => self.table.groups[g].embedding,
            Target::Deployment(d) => self.slots[d].config().is_embedding(),
        };
        if serves_embeddings != embedding {
            // Named only on the way out: a request of the right mode allocates nothing here.
            let what = match route.target {
                Target::Group(g) => format!("group `{}`", self.table.groups[g].name),
                Target::Deployment(d) => format!("deployment `{}`", self.slots[d].config().name),
            };
            let message = if embedding {
                format!(
                    "{what} serves chat, not embeddings: send chat requests to {}",
                    endpoints.chat
                )
            } else {
                format!(
                    "{what} serves embeddings, not chat: send embeddings requests to {}",
                    endpoints.embed
                )
            };
            let mut f = Failed::new(ErrorKind::InvalidRequest, message);
            f.route_reason = Some(route.reason);
            return Err(f);
        }
        Ok(route)
    }

    async fn walk(&self, ask: Ask<'_>, route: Route) -> Result<Served, Failed> {
        let Route { target, reason } = route;
        let (req, opts) = (&ask.req, ask.opts);
        let mut w = Walk::new(Instant::now(), opts, reason, self.max_retry_after);
        w.needed_context = req.estimated_prompt_tokens + u64::from(req.max_tokens.unwrap_or(0));
        let groups: Vec<Option<usize>> = match target {
            Target::Group(g) => self.table.chain(g).map(Some).collect(),
            Target::Deployment(_) => vec![None],
        };
        // A small share of requests still tries degraded deployments in their place, so that
        // their recovery is measured and their alerts can clear.
        let probing = self.shift != Shift::Off && rand::random::<f64>() < self.probe_share;
        let deferring = self.shift == Shift::Skip && !probing;
        let mut deferred = Vec::new();

        for (group_number, group) in groups.into_iter().enumerate() {
            let order = match (group, target) {
                (Some(g), _) => {
                    self.order(g, &|s| estimated_cost(s, req), opts, ask.strategy, probing)
                }
                (None, Target::Deployment(d)) => vec![d],
                (None, Target::Group(_)) => Vec::new(),
            };
            for index in order {
                if deferring && self.slots[index].published.degraded() {
                    deferred.push((group_number, index));
                    continue;
                }
                if let Some(done) = self.try_one(&mut w, &ask, index, group_number).await {
                    return done;
                }
            }
        }
        // Degraded deployments (`alerts.shift = "skip"`) come after the whole chain.
        for (group_number, index) in deferred {
            if let Some(done) = self.try_one(&mut w, &ask, index, group_number).await {
                return done;
            }
        }
        Err(w.exhausted())
    }

    /// Tries one candidate: `None` to go on with the next, `Some` when the walk is over.
    async fn try_one(
        &self,
        w: &mut Walk,
        ask: &Ask<'_>,
        index: usize,
        group_number: usize,
    ) -> Option<Result<Served, Failed>> {
        let (req, opts, request_id, sink) = (&ask.req, ask.opts, ask.request_id, ask.sink);
        let needed_context = w.needed_context;
        let slot = &self.slots[index];
        let c = slot.config();
        let now = Instant::now();
        if w.deadline_spent(now) {
            return Some(Err(w.timeout()));
        }
        if let Some(window) = c.context_window.filter(|w| needed_context > w.get()) {
            w.skip(
                c.name.as_str(),
                format!(
                    "skipped: request needs ~{needed_context} tokens, context window is {window}"
                ),
                false,
                false,
            );
            return None;
        }
        let actor = w.reachable(slot, opts, estimated_cost(slot, req))?;
        let include_request_extra = *w.first_provider.get_or_insert(c.provider) == c.provider;
        if !include_request_extra && req.extra_body().is_some() {
            tracing::debug!(
                request_id = %request_id,
                deployment = %c.name,
                "extra_body dropped: it was meant for another provider"
            );
        }
        let call = CallArgs {
            req: req.clone(),
            deadline: w.deadline,
            include_request_extra,
            request_id: request_id.clone(),
            attempt: w.calls + 1,
            batch: opts.batch,
        };
        let attempt = match sink {
            Some(sink) if req.stream => {
                deployment::call_stream(&actor, &slot.args, call, sink).await
            }
            _ => deployment::call(&actor, &slot.args, call).await,
        };
        match attempt {
            Attempt::Skipped(skip) => w.skipped(c.name.as_str(), &skip),
            Attempt::Answered { reply, .. } => {
                let fallback = w.answered(group_number);
                return Some(Ok(Served {
                    reply,
                    index,
                    deployment: slot.name.clone(),
                    provider: c.provider.as_str(),
                    attempts: w.calls,
                    fallback,
                    route_reason: w.reason.clone(),
                    space: None,
                }));
            }
            Attempt::Failed {
                failure,
                decision,
                latency,
            } => {
                if let Some(stop) = w.failed_call(&c.name, &failure, &decision, latency) {
                    return Some(Err(stop));
                }
            }
            Attempt::Broken {
                failure,
                decision,
                usage,
                latency,
            } => {
                // Chunks already went out: no fallback now, the stream ends in error.
                w.calls += 1;
                w.failed_calls += 1;
                w.record_failure(&c.name, &failure, latency);
                let message = format!(
                    "{}: stream broken after the first chunk: {}",
                    c.name,
                    failure.describe()
                );
                let mut failed = w.fail(decision.kind, message);
                failed.usage = usage;
                return Some(Err(failed));
            }
        }
        None
    }

    /// The group's deployments, best first.
    pub(super) fn order(
        &self,
        group: usize,
        cost: &dyn Fn(&super::Slot) -> f64,
        opts: &RequestOptions,
        strategy: Option<Strategy>,
        probing: bool,
    ) -> Vec<usize> {
        let now = Instant::now();
        let mut candidates: Vec<Candidate> = self.table.groups[group]
            .members
            .iter()
            .map(|&i| {
                let s = &self.slots[i];
                let c = s.config();
                let headroom = |used: u64, limit: Option<u64>| {
                    limit.map_or(1.0, |l| 1.0 - (used as f64 / l as f64).min(1.0))
                };
                Candidate {
                    index: i,
                    weight: c.weight.get(),
                    in_flight: s.published.in_flight(),
                    headroom: if s.published.cooling_down(now) {
                        0.0
                    } else {
                        headroom(s.published.rpm_used(), c.rpm.map(|n| u64::from(n.get())))
                            .min(headroom(s.published.tpm_used(), c.tpm.map(|n| n.get())))
                    },
                    ewma_ms: s.published.recent_ewma_ms(now, LATENCY_FRESH),
                    estimated_cost: cost(s),
                }
            })
            .collect();
        match &opts.affinity {
            Some(key) => affinity_order(&mut candidates, key, |i| self.slots[i].name_hash),
            None => strategy
                .unwrap_or(self.strategies[group])
                .order(&mut candidates, &mut rand::rng()),
        }
        if self.shift == Shift::Deprioritize && !probing {
            // Degraded deployments go last, in the strategy's order (the sort is stable).
            candidates.sort_by_key(|c| self.slots[c.index].published.degraded());
        }
        candidates.into_iter().map(|c| c.index).collect()
    }
}

/// Cost of this request at this deployment if it uses its whole `max_tokens`.
fn estimated_cost(slot: &super::Slot, req: &ChatRequest) -> f64 {
    slot.config().price.cost(
        req.estimated_prompt_tokens,
        u64::from(req.max_tokens.unwrap_or(256)),
    )
}
