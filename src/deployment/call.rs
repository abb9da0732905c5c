//! One attempt at one deployment, run in the request's own task: ask the actor for a permit,
//! take the cluster's slot or probe claim if there is one, call the provider within the
//! deployment's timeout and the caller's deadline, trace and log it, and report the outcome back
//! to the actor (also when the task is dropped mid-call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::{Instrument, debug, info, warn};

use super::decision::Decision;
use super::gate::{Admitted, Refused};
use super::reports;
use super::{Args, Finished, Msg, Outcome, Published, Skip};
use crate::cluster;
use crate::cluster::quota::{ClusterWindow, Take, Taken};
use crate::observe::trace::{self, int};
use crate::protocol::{ChatRequest, Usage};
use crate::providers::{CallContext, Failure, ProviderReply, simulated};

/// One try of one request at this deployment.
pub struct CallArgs {
    pub req: Arc<ChatRequest>,
    pub deadline: Option<Instant>,
    pub include_request_extra: bool,
    pub request_id: Arc<str>,
    /// 1-based number of this call within the request.
    pub attempt: u32,
    /// Batch work, which only takes the batch share of the limits.
    pub batch: bool,
}

/// How one attempt at this deployment went, streamed or not: what the walk goes on from. `R` is
/// what an answer carries: a chat reply, or an embedding call's vectors.
pub enum Attempt<R = ProviderReply> {
    /// The actor did not call its provider.
    Skipped(Skip),
    /// The provider answered. For a stream the chunks already went to the sink: the reply's
    /// body is empty, its usage and cost are the stream's.
    Answered { reply: R, latency: Duration },
    /// Failed before anything reached the caller: the walk may fall back.
    Failed {
        failure: Failure,
        decision: Decision,
        latency: Duration,
    },
    /// A stream that broke after its first chunk: chunks went out, so no fallback now.
    Broken {
        failure: Failure,
        decision: Decision,
        /// Tokens used before it broke, when the provider said.
        usage: Option<Usage>,
        latency: Duration,
    },
}

/// Admits the call at the deployment's published gate (asking the actor only when a limit
/// looks spent), takes the cluster's slot or probe claim if there is one, and arms the report
/// that will tell the actor how the call went.
/// `estimate` is the tokens the call may use (reserved against `tpm`), `batch` whether it is
/// batch work.
pub(super) async fn admit<'a>(
    actor: &'a ActorRef<Msg>,
    args: &Args,
    estimate: u64,
    batch: bool,
) -> Result<(Option<simulated::Fate>, Report<'a>), Skip> {
    let share = if batch { args.batch_share } else { 1.0 };
    let published = &args.published;
    let admitted = match published.admit(Instant::now(), estimate, share) {
        Ok(a) => a,
        Err(Refused::Skip(skip)) => return Err(skip),
        Err(Refused::Limit(_)) => {
            // The actor may have room it has not published yet (old calls left the window).
            let (tx, rx) = tokio::sync::oneshot::channel();
            actor
                .send_message(Msg::Recheck {
                    estimate,
                    reply: tx.into(),
                })
                .map_err(|_| Skip::Unreachable)?;
            let room = rx.await.map_err(|_| Skip::Unreachable)?;
            match published.admit(Instant::now(), estimate, share) {
                Ok(a) => a,
                Err(Refused::Skip(skip)) => return Err(skip),
                Err(Refused::Limit(limit)) => {
                    let retry_in = if limit == "rpm" { room.rpm } else { room.tpm };
                    return Err(Skip::AtLimit {
                        limit,
                        // Room may already have come back to another request's call.
                        retry_in: retry_in.max(Duration::from_millis(1)),
                    });
                }
            }
        }
    };
    let fate = args.fates.as_ref().and_then(|f| f.throw(admitted.at));
    let mut report = Report {
        actor,
        published: published.clone(),
        admitted,
        window: None,
        probe_claim: None,
        started: Instant::now(),
        sent: false,
    };
    // A half-open probe is the cluster's one probe, not one per instance.
    if admitted.probe
        && let Some(kv) = args.cluster.kv()
    {
        let claim = cluster::claim_probe(
            &kv,
            &args.name,
            args.cluster.instance(),
            args.adapter.config.timeout,
        );
        // On the heap, as the cluster window's round trip: rare, and large.
        match Box::pin(tokio::time::timeout(args.cluster.sync_timeout(), claim)).await {
            Ok(Ok(Some(revision))) => report.probe_claim = Some((kv, args.name.clone(), revision)),
            Ok(Ok(None)) => {
                report.refused();
                return Err(Skip::CircuitOpen);
            }
            Ok(Err(why)) => {
                warn!(deployment = %args.name, %why, "probe claim failed: probing locally");
            }
            Err(_) => {
                warn!(deployment = %args.name, "probe claim timed out: probing locally");
            }
        }
        report.started = Instant::now();
    }
    // The cluster-wide window, after the local one: only deployments with limits pay for it,
    // and only while the bucket is reachable (else the local windows guard alone).
    if let (Some(quota), Some(kv)) = (&args.quota, args.cluster.kv()) {
        match quota
            .take(&kv, estimate, share, args.cluster.sync_timeout())
            .await
        {
            Take::Taken(t) => report.window = Some((quota.clone(), kv, t)),
            Take::Full { limit, retry_in } => {
                report.refused();
                return Err(Skip::AtLimit { limit, retry_in });
            }
            Take::Unshared(why) => {
                warn!(deployment = %args.name, %why, "cluster window unreachable: local limits only");
            }
        }
        report.started = Instant::now();
    }
    Ok((fate, report))
}

/// How long a call may take: the deployment's `limit`, or less if the caller's deadline comes
/// first (then running out is the caller's `timeout`, not the deployment's failure).
pub(super) fn bound(
    limit: Duration,
    deadline: Option<Instant>,
    from: Instant,
) -> (Duration, Failure) {
    match deadline {
        Some(d) if d.saturating_duration_since(from) < limit => {
            (d.saturating_duration_since(from), Failure::DeadlineSpent)
        }
        _ => (limit, Failure::Timeout),
    }
}

/// `bound` for a stream, which also ends at `stream_ends` (its `max_stream_duration` after it was
/// admitted, `None` if that is past what an `Instant` holds) whatever its other bounds.
fn stream_bound(
    limit: Duration,
    deadline: Option<Instant>,
    stream_ends: Option<Instant>,
    max_stream_duration: Duration,
    from: Instant,
) -> (Duration, Failure) {
    let (limit, expired) = bound(limit, deadline, from);
    match stream_ends {
        Some(end) if end.saturating_duration_since(from) < limit => (
            end.saturating_duration_since(from),
            Failure::StreamDuration(max_stream_duration),
        ),
        _ => (limit, expired),
    }
}

/// One attempt at one deployment, run in the caller's task: asks the actor for a permit, makes
/// the call bounded by the deployment's timeout and the caller's deadline (whichever comes first),
/// logs it, and reports the outcome to the actor.
pub async fn call(actor: &ActorRef<Msg>, args: &Args, call: CallArgs) -> Attempt {
    let span = attempt_span(args, &call);
    call_inner(actor, args, call, &span)
        .instrument(span.clone())
        .await
}

/// A child span of the request's for one attempt, with the OpenTelemetry GenAI attributes.
fn attempt_span(args: &Args, call: &CallArgs) -> tracing::Span {
    let c = &args.adapter.config;
    let span = tracing::info_span!(
        "attempt",
        otel.name = %format_args!("chat {}", c.model),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.system = c.provider.gen_ai_system(),
        gen_ai.request.model = %c.model,
        gen_ai.request.max_tokens = tracing::field::Empty,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        llm.deployment = %args.name,
        llm.attempt = int(call.attempt),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    record_server(&span, args);
    if let Some(n) = call.req.max_tokens {
        span.record("gen_ai.request.max_tokens", int(n));
    }
    if let Some(t) = call.req.temperature {
        span.record("gen_ai.request.temperature", t);
    }
    span
}

/// Where the call goes, on its span: the host alone — `api_base` may carry credentials
/// (`https://user:key@host`) or a `?key=`.
pub(super) fn record_server(span: &tracing::Span, args: &Args) {
    if let Some((host, port)) = args.adapter.server() {
        span.record("server.address", host);
        if let Some(port) = port {
            span.record("server.port", int(port));
        }
    }
}

/// What an attempt's span learns when it ends.
pub(super) fn close_span(
    span: &tracing::Span,
    model: &str,
    usage: Option<&Usage>,
    failure: Option<&Failure>,
) {
    match failure {
        None => {
            span.record("gen_ai.response.model", model);
            span.record("http.response.status_code", 200_i64);
            if let Some(u) = usage {
                span.record("gen_ai.usage.input_tokens", int(u.prompt_tokens));
                span.record("gen_ai.usage.output_tokens", int(u.completion_tokens));
            }
        }
        Some(f) => {
            if let Some(status) = f.status() {
                span.record("http.response.status_code", int(status));
            }
            span.record("error.type", f.kind_name());
            trace::fail(span, &f.describe());
        }
    }
}

async fn call_inner(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    span: &tracing::Span,
) -> Attempt {
    let estimate = call.req.estimated_total_tokens();
    let (fate, mut report) = match admit(actor, args, estimate, call.batch).await {
        Ok(p) => p,
        Err(skip) => return Attempt::Skipped(skip),
    };
    let ctx = CallContext {
        include_request_extra: call.include_request_extra,
        fate,
    };
    let (limit, expired) = bound(args.adapter.config.timeout, call.deadline, report.started);
    // The provider call (reqwest's future within) on the heap: held inline, its kilobytes would
    // be copied again by every future that awaits this one, up to the request's task.
    let result = match Box::pin(tokio::time::timeout(
        limit,
        args.adapter.call(&call.req, ctx),
    ))
    .await
    {
        Ok(r) => r,
        Err(_) => Err(expired),
    };
    let latency = report.started.elapsed();
    let model = args.adapter.config.model.as_str();
    // The actor hears of the outcome before the caller goes on, so that the caller's next
    // request already sees the breaker it caused.
    match result {
        Ok(reply) => {
            close_span(span, model, Some(&reply.usage), None);
            log_success(args, &call, latency, reply.usage.total_tokens);
            report
                .answered(
                    latency,
                    Outcome::Ok {
                        prompt_tokens: reply.usage.prompt_tokens,
                        completion_tokens: reply.usage.completion_tokens,
                        cost_usd: reply.cost_usd,
                    },
                )
                .await;
            Attempt::Answered { reply, latency }
        }
        Err(failure) => {
            let decision = args.policy.decide(&failure);
            close_span(span, model, None, Some(&failure));
            log_failure(args, &call, latency, &failure, &decision);
            report.failed(latency, &failure, decision).await;
            Attempt::Failed {
                failure,
                decision,
                latency,
            }
        }
    }
}

/// A streamed attempt: the first chunk must come within `first_token_timeout` (else it is a
/// failure the walk can fall back from); after it, chunks go to `sink` as they come, each within
/// the deployment's `timeout` of the last, and all of it within `max_stream_duration` (a stream
/// cut by that ends broken with `Failure::StreamDuration`, an error of kind `timeout`). `sink` is
/// bounded, so a slow subscriber slows the read from the provider instead of growing memory; the
/// caller's side closing stops the read, and dropping the response closes the connection.
pub async fn call_stream(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    sink: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Attempt {
    let span = attempt_span(args, &call);
    call_stream_inner(actor, args, call, sink, &span)
        .instrument(span.clone())
        .await
}

async fn call_stream_inner(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: CallArgs,
    sink: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    span: &tracing::Span,
) -> Attempt {
    use futures::StreamExt;

    let estimate = call.req.estimated_total_tokens();
    let (fate, mut report) = match admit(actor, args, estimate, call.batch).await {
        Ok(p) => p,
        Err(skip) => return Attempt::Skipped(skip),
    };
    let ctx = CallContext {
        include_request_extra: call.include_request_extra,
        fate,
    };
    let c = &args.adapter.config;
    let mut usage = None;
    let stream_ends = report.started.checked_add(c.max_stream_duration);
    let bounds = |limit, from| {
        stream_bound(
            limit,
            call.deadline,
            stream_ends,
            c.max_stream_duration,
            from,
        )
    };
    let (limit, expired) = bounds(c.first_token_timeout, report.started);
    let opened = tokio::time::timeout(limit, async {
        let mut stream = args.adapter.open_stream(&call.req, ctx).await?;
        loop {
            match stream.next().await {
                Some(Ok(p)) if !p.chunks.is_empty() => return Ok((stream, p)),
                Some(Ok(p)) => usage = p.usage.or(usage),
                Some(Err(f)) => return Err(f),
                None => {
                    return Err(Failure::InvalidBody(
                        "the stream ended before any chunk".into(),
                    ));
                }
            }
        }
    })
    .await
    .unwrap_or(Err(expired));
    let (mut stream, first) = match opened {
        Ok(x) => x,
        Err(f) => {
            let latency = report.started.elapsed();
            let d = args.policy.decide(&f);
            close_span(span, &c.model, None, Some(&f));
            log_failure(args, &call, latency, &f, &d);
            report.failed(latency, &f, d).await;
            return Attempt::Failed {
                failure: f,
                decision: d,
                latency,
            };
        }
    };

    super::opened::tell(|| super::opened::Opened {
        deployment: args.name.clone(),
        provider: c.provider.as_str(),
        group: c.group.clone(),
        attempt: call.attempt,
    });
    let mut pending = first.chunks;
    usage = first.usage.or(usage);
    let broken = 'stream: loop {
        for chunk in pending.drain(..) {
            // A subscriber too slow to take the chunks does not hold the stream open either.
            match deliver(sink, chunk, bounds(Duration::MAX, Instant::now())).await {
                Delivery::Sent => {}
                Delivery::Gone => {
                    // The caller's side is gone: stop reading; no one to tell.
                    report.send(report.started.elapsed(), Outcome::Abandoned, false);
                    close_span(span, &c.model, usage.as_ref(), None);
                    return Attempt::Answered {
                        reply: ProviderReply {
                            body: bytes::Bytes::new(),
                            usage: usage.unwrap_or_default(),
                            cost_usd: 0.0,
                        },
                        latency: report.started.elapsed(),
                    };
                }
                Delivery::Late(expired) => break 'stream Some(expired),
            }
        }
        let (limit, expired) = bounds(c.timeout, Instant::now());
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(Ok(p))) => {
                usage = p.usage.or(usage);
                pending = p.chunks;
            }
            Ok(None) => break None,
            Ok(Some(Err(f))) => break Some(f),
            Err(_) => break Some(expired),
        }
    };
    let latency = report.started.elapsed();
    if let Some(failure) = broken {
        let decision = args.policy.decide(&failure);
        close_span(span, &c.model, None, Some(&failure));
        log_failure(args, &call, latency, &failure, &decision);
        report.failed(latency, &failure, decision).await;
        return Attempt::Broken {
            failure,
            decision,
            usage,
            latency,
        };
    }
    let cost_usd = usage.map_or(0.0, |u| args.adapter.price(&u));
    close_span(span, &c.model, usage.as_ref(), None);
    let usage = usage.unwrap_or_default();
    log_success(args, &call, latency, usage.total_tokens);
    report
        .answered(
            latency,
            Outcome::Ok {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cost_usd,
            },
        )
        .await;
    Attempt::Answered {
        reply: ProviderReply {
            body: bytes::Bytes::new(),
            usage,
            cost_usd,
        },
        latency,
    }
}

enum Delivery {
    Sent,
    /// The caller's side of the channel is closed.
    Gone,
    /// The bound passed with the channel still full: the stream ends with this.
    Late(Failure),
}

/// Hands a chunk to the caller's side: at once when there is room (no timer on the hot path),
/// else waiting at most `limit`.
async fn deliver(
    sink: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    chunk: bytes::Bytes,
    (limit, expired): (Duration, Failure),
) -> Delivery {
    use tokio::sync::mpsc::error::TrySendError;
    let chunk = match sink.try_send(chunk) {
        Ok(()) => return Delivery::Sent,
        Err(TrySendError::Closed(_)) => return Delivery::Gone,
        Err(TrySendError::Full(chunk)) => chunk,
    };
    match tokio::time::timeout(limit, sink.send(chunk)).await {
        Ok(Ok(())) => Delivery::Sent,
        Ok(Err(_)) => Delivery::Gone,
        Err(_) => Delivery::Late(expired),
    }
}

/// Who a call's log line is about: its request and its number within it.
pub(super) struct Said<'a> {
    pub request_id: &'a str,
    pub attempt: u32,
}

impl<'a> From<&'a CallArgs> for Said<'a> {
    fn from(c: &'a CallArgs) -> Self {
        Self {
            request_id: &c.request_id,
            attempt: c.attempt,
        }
    }
}

pub(super) fn log_success<'a>(
    args: &Args,
    call: impl Into<Said<'a>>,
    latency: Duration,
    tokens: u64,
) {
    let call = call.into();
    let c = &args.adapter.config;
    // Strings as `&str`, not `%` (Display): a `&str` is written whole when it needs no escape,
    // a Display value goes through `fmt` piece by piece. A value that is not bare (a space, a
    // quote) is then quoted in the text format, as logfmt reads it.
    info!(
        request_id = call.request_id,
        deployment = &*args.name,
        provider = c.provider.as_str(),
        model = c.model.as_str(),
        attempt = call.attempt,
        status = 200,
        latency_ms = latency.as_millis() as u64,
        tokens,
        "attempt succeeded"
    );
}

pub(super) fn log_failure<'a>(
    args: &Args,
    call: impl Into<Said<'a>>,
    latency: Duration,
    f: &Failure,
    d: &Decision,
) {
    let call = call.into();
    let c = &args.adapter.config;
    warn!(
        request_id = call.request_id,
        deployment = &*args.name,
        provider = c.provider.as_str(),
        model = c.model.as_str(),
        attempt = call.attempt,
        status = f.status(),
        latency_ms = latency.as_millis() as u64,
        error = %f.describe(),
        falls_back = d.fall_back,
        "attempt failed"
    );
}

/// Reports the outcome of an admitted call exactly once, also when the caller's task is dropped.
pub(super) struct Report<'a> {
    actor: &'a ActorRef<Msg>,
    published: Arc<Published>,
    admitted: Admitted,
    /// The slot taken in the cluster-wide window, corrected with real usage at the end.
    window: Option<(Arc<ClusterWindow>, Arc<crate::cluster::Bucket>, Taken)>,
    /// This call is the cluster's half-open probe of this deployment: its claim is released at
    /// the end.
    probe_claim: Option<(Arc<crate::cluster::Bucket>, Arc<str>, u64)>,
    pub(super) started: Instant,
    sent: bool,
}

impl Report<'_> {
    /// The cluster refused what the gate admitted: no call is made; its units and probe go back
    /// without troubling the actor.
    fn refused(&mut self) {
        self.sent = true;
        let a = self.admitted;
        self.published.give_back(a.rpm, a.tpm);
        self.published.call_ended();
        if a.probe {
            self.published.release_probe();
        }
    }

    /// A failed call: reported, and waited for when it may move the breaker or start a
    /// cool-down (or was the probe), so that the caller's next request sees it.
    pub(super) async fn failed(
        &mut self,
        latency: Duration,
        failure: &Failure,
        decision: Decision,
    ) {
        let wait = decision.count || decision.cool_down.is_some() || self.admitted.probe;
        let ack = self.send(latency, Outcome::Failed(failure.clone(), decision), wait);
        if let Some(ack) = ack {
            let _ = ack.await;
        }
    }

    /// A call that answered: reported without waiting, unless it was the probe (whose success
    /// may close the circuit for the caller's next request).
    pub(super) async fn answered(&mut self, latency: Duration, outcome: Outcome) {
        if let Some(ack) = self.send(latency, outcome, self.admitted.probe) {
            let _ = ack.await;
        }
    }

    fn send(
        &mut self,
        latency: Duration,
        outcome: Outcome,
        wait: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.sent = true;
        if let Some((kv, name, revision)) = self.probe_claim.take()
            && !matches!(outcome, Outcome::Failed(..))
        {
            // The others learn the probe's outcome from the circuit record. A failed probe keeps
            // its claim until it expires, so that no other instance probes in the moment before
            // the re-opened circuit reaches it; any other outcome gives the claim back.
            tokio::spawn(async move { cluster::release_probe(&kv, &name, revision).await });
        }
        if let (
            Some((quota, kv, taken)),
            Outcome::Ok {
                prompt_tokens,
                completion_tokens,
                ..
            },
        ) = (self.window.take(), &outcome)
        {
            // The reply does not wait for the bookkeeping: the next take carries it.
            if quota.correct(taken, prompt_tokens.saturating_add(*completion_tokens)) {
                tokio::spawn(async move { quota.flush_later(&kv).await });
            }
        }
        self.published.call_ended();
        let (ack, acked) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let finished = Finished {
            admitted: self.admitted,
            latency,
            outcome,
            ack,
        };
        let message = if wait {
            Msg::Finished(Box::new(finished))
        } else {
            match self.published.reports.push(finished) {
                reports::Queued::Due => return None,
                reports::Queued::Wake => Msg::Drain,
                reports::Queued::Full(f) => Msg::Finished(f),
            }
        };
        if self.actor.send_message(message).is_err() {
            debug!("deployment actor gone before the call finished");
            return None;
        }
        acked
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.send(self.started.elapsed(), Outcome::Abandoned, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ends_at_the_first_of_its_bounds() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let max = s(600);
        let ends = now.checked_add(max);
        let b = |limit, deadline: Option<Duration>, ends| {
            stream_bound(limit, deadline.map(|d| now + d), ends, max, now)
        };
        assert_eq!(b(s(60), None, ends), (s(60), Failure::Timeout));
        assert_eq!(b(s(60), Some(s(5)), ends), (s(5), Failure::DeadlineSpent));
        assert_eq!(
            b(s(6000), Some(s(5000)), ends),
            (max, Failure::StreamDuration(max))
        );
        assert_eq!(
            b(Duration::MAX, None, ends),
            (max, Failure::StreamDuration(max))
        );
        // An `Instant` cannot hold the end: the other bounds alone.
        assert_eq!(b(s(60), None, None), (s(60), Failure::Timeout));
        // Later in the stream, less is left.
        let later = stream_bound(s(60), None, ends, max, now + s(590));
        assert_eq!(later, (s(10), Failure::StreamDuration(max)));
    }
}
