//! One embeddings call at one deployment: a slice of a request's inputs, admitted at the same
//! gate as a chat call (one request against `rpm`, the slice's estimated tokens against `tpm`),
//! bounded by the deployment's timeout and the caller's deadline, traced, logged and reported to
//! the actor like any call, so that breaker, limits and stats see embedding traffic as they see
//! chat.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;
use tracing::Instrument;

use super::call::{Said, admit, bound, close_span, log_failure, log_success, record_server};
use super::{Args, Attempt, Msg, Outcome};
use crate::observe::trace::int;
use crate::protocol::{EmbedRequest, Usage};
use crate::providers::embed::{EmbedCall, Embedded};

/// One call of an embeddings request at this deployment.
pub struct EmbedArgs {
    pub req: Arc<EmbedRequest>,
    /// Which of the request's inputs this call embeds.
    pub range: Range<usize>,
    pub deadline: Option<Instant>,
    pub request_id: Arc<str>,
    /// 1-based number of this call within the request.
    pub attempt: u32,
    pub batch: bool,
}

impl<'a> From<&'a EmbedArgs> for Said<'a> {
    fn from(c: &'a EmbedArgs) -> Self {
        Self {
            request_id: &c.request_id,
            attempt: c.attempt,
        }
    }
}

/// The call, in the caller's task.
pub async fn embed(actor: &ActorRef<Msg>, args: &Args, call: EmbedArgs) -> Attempt<Embedded> {
    let c = &args.adapter.config;
    let span = tracing::info_span!(
        "attempt",
        otel.name = %format_args!("embeddings {}", c.model),
        otel.kind = "client",
        gen_ai.operation.name = "embeddings",
        gen_ai.system = c.provider.gen_ai_system(),
        gen_ai.request.model = %c.model,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        llm.deployment = %args.name,
        llm.attempt = int(call.attempt),
        llm.inputs = int(call.range.len()),
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    record_server(&span, args);
    embed_inner(actor, args, call, &span)
        .instrument(span.clone())
        .await
}

async fn embed_inner(
    actor: &ActorRef<Msg>,
    args: &Args,
    call: EmbedArgs,
    span: &tracing::Span,
) -> Attempt<Embedded> {
    let inputs = call.req.inputs.get(call.range.clone()).unwrap_or_default();
    let estimate = inputs
        .iter()
        .map(|i| i.estimated_tokens())
        .fold(0u64, u64::saturating_add);
    let (fate, mut report) = match admit(actor, args, estimate, call.batch).await {
        Ok(p) => p,
        Err(skip) => return Attempt::Skipped(skip),
    };
    let one = EmbedCall {
        inputs,
        dimensions: call.req.dimensions,
        user: call.req.user.as_deref(),
    };
    let (limit, expired) = bound(args.adapter.config.timeout, call.deadline, report.started);
    let result = match tokio::time::timeout(limit, args.adapter.embed(&one, fate)).await {
        Ok(r) => r,
        Err(_) => Err(expired),
    };
    let latency = report.started.elapsed();
    match result {
        Ok(reply) => {
            let usage = Usage {
                prompt_tokens: reply.prompt_tokens,
                completion_tokens: 0,
                total_tokens: reply.prompt_tokens,
            };
            close_span(span, &reply.model, Some(&usage), None);
            log_success(args, &call, latency, reply.prompt_tokens);
            report
                .answered(
                    latency,
                    Outcome::Ok {
                        prompt_tokens: reply.prompt_tokens,
                        completion_tokens: 0,
                        cost_usd: reply.cost_usd,
                    },
                )
                .await;
            Attempt::Answered { reply, latency }
        }
        Err(failure) => {
            let decision = args.policy.decide(&failure);
            close_span(span, &args.adapter.config.model, None, Some(&failure));
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
