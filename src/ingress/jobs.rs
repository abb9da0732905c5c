//! Durable async jobs (docs/contract.md §1b): `llm.submit.<task>` → `llm.result.<job_id>`.
//!
//! Jobs wait in a JetStream stream (`[jobs] stream`, capturing `llm.submit.>`) and every `serve`
//! instance pulls from one shared durable consumer, at most `[jobs] concurrency` at a time. Each
//! job runs in its own tracked task, through `Engine::chat` exactly like a synchronous request;
//! its reply (same body and `Llm-*` headers, plus `Llm-Job-Id`) is published through JetStream to
//! the result subject, captured by the results stream, and the job is acked only once that
//! publish was acknowledged. So:
//! - an engine that dies mid-call leaves its jobs unacked: they are redelivered after `ack_wait`;
//! - a job whose result is already stored (the crash window between "result stored" and "job
//!   acked", or the same job id submitted again) is acked without a provider call: before
//!   routing, the last message on the result subject is read and compared by `Llm-Job-Id`; the
//!   result is also published with `Nats-Msg-Id = <job id>`, so a retried publish is dropped;
//! - a call longer than `ack_wait / 2` sends in-progress acks, so a slow provider is not mistaken
//!   for a dead engine.
//!
//! The fetch loop survives NATS restarts: every error is logged and retried with backoff, and
//! the streams and the consumer are looked up (or created) again after a failure.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::chat::header;
use crate::config::{Config, JobsConfig};
use crate::engine::Engine;
use crate::protocol::headers::{JOB_ID, RESULT_SUBJECT, settle_request_id};
use crate::protocol::{RequestOptions, Subjects};

/// How long one pull request waits for jobs. Also bounds how long shutdown waits for the
/// current pull to end (jobs it brings are still run), so it is kept short.
const FETCH_EXPIRES: Duration = Duration::from_millis(500);
/// How often the fetch loop looks at the connection, to drop a pull the server forgot (a
/// restarted server keeps no pull requests).
const CONNECTION_CHECK: Duration = Duration::from_millis(250);
/// How long a job keeps retrying the stored-result lookup and the result publish while NATS is
/// unreachable before it gives up and leaves the job to be redelivered.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// What every job task needs.
struct Jobs {
    js: jetstream::Context,
    client: Client,
    engine: Arc<Engine>,
    subjects: Subjects,
    config: JobsConfig,
    /// `[cluster] replicas`: copies of the two streams when they are created here.
    replicas: usize,
    /// Job ids running on this instance.
    running: RunningJobs,
    /// Shutdown ran out of time: jobs still running stop unacked, to be redelivered elsewhere.
    abort: CancellationToken,
}

/// The streams and consumer, as looked up (or created) by `setup`.
struct Bound {
    consumer: consumer::PullConsumer,
    results: stream::Stream,
    direct: bool,
}

/// Pulls and runs jobs until `stop`; then lets the current pull end, its jobs being run on
/// `tracker` like those already in flight.
pub fn serve(
    client: Client,
    engine: Arc<Engine>,
    config: &Config,
    tracker: TaskTracker,
    stop: CancellationToken,
    abort: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let jobs = Arc::new(Jobs {
        js: jetstream::new(client.clone()),
        client,
        engine,
        subjects: Subjects::new(&config.nats.prefix),
        config: config.jobs.clone(),
        replicas: config.cluster.replicas,
        running: RunningJobs::default(),
        abort,
    });
    serve_jobs(jobs, tracker, stop)
}

async fn serve_jobs(jobs: Arc<Jobs>, tracker: TaskTracker, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(jobs.config.concurrency));
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let bound = match jobs.setup().await {
            Ok(b) => {
                info!(
                    stream = %jobs.config.stream,
                    consumer = %jobs.config.consumer,
                    subject = %jobs.subjects.submit_wildcard(),
                    "taking async jobs"
                );
                Arc::new(b)
            }
            Err(e) => {
                warn!(error = %e, replicas = jobs.replicas, "async jobs: cannot set up the JetStream streams and consumer; retrying");
                backoff.wait(&stop).await;
                continue;
            }
        };
        if let Err(e) = jobs
            .pull(&bound, &slots, &tracker, &stop, &mut backoff)
            .await
        {
            warn!(error = %e, "async jobs: pulling failed; retrying");
            backoff.wait(&stop).await;
        }
    }
}

impl Jobs {
    /// Looks up the streams and the durable consumer, creating what is missing.
    async fn setup(&self) -> Result<Bound, async_nats::Error> {
        let c = &self.config;
        let jobs = super::get_or_create_stream(
            &self.js,
            stream::Config {
                name: c.stream.clone(),
                subjects: vec![self.subjects.submit_wildcard()],
                storage: stream::StorageType::File,
                max_age: c.jobs_max_age,
                duplicate_window: c.duplicate_window,
                num_replicas: self.replicas,
                ..Default::default()
            },
        )
        .await?;
        let mut results = super::get_or_create_stream(
            &self.js,
            stream::Config {
                name: c.results_stream.clone(),
                subjects: vec![self.subjects.result_wildcard()],
                storage: stream::StorageType::File,
                max_age: c.results_max_age,
                duplicate_window: c.duplicate_window,
                allow_direct: true,
                num_replicas: self.replicas,
                ..Default::default()
            },
        )
        .await?;
        // A results stream made elsewhere may not allow direct gets.
        let direct = results.info().await?.config.allow_direct;
        let consumer = jobs
            .get_or_create_consumer(
                &c.consumer,
                consumer::pull::Config {
                    durable_name: Some(c.consumer.clone()),
                    description: Some("switchyard async jobs, shared by every serve".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: c.ack_wait,
                    max_deliver: c.max_deliver,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Bound {
            consumer,
            results,
            direct,
        })
    }

    /// Pull requests sized to the free job slots, until `stop` or an error. A pull that ends
    /// cleanly resets `backoff`.
    async fn pull(
        self: &Arc<Self>,
        bound: &Arc<Bound>,
        slots: &Arc<Semaphore>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), async_nats::Error> {
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p?,
                _ = stop.cancelled() => return Ok(()),
            };
            wait_connected(&self.client, stop).await;
            if stop.is_cancelled() {
                return Ok(());
            }
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let mut batch = bound
                .consumer
                .batch()
                .max_messages(permits.len())
                .expires(FETCH_EXPIRES)
                .messages()
                .await?;
            let mut check = tokio::time::interval(CONNECTION_CHECK);
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    _ = check.tick() => {
                        if self.client.connection_state() != async_nats::connection::State::Connected {
                            debug!("async jobs: connection lost; dropping the pull");
                            break;
                        }
                        continue;
                    }
                };
                match next {
                    None => {
                        backoff.reset();
                        break;
                    }
                    Some(Err(e)) => return Err(e),
                    Some(Ok(msg)) => {
                        let Some(permit) = permits.pop() else {
                            // The server never sends more than asked; if it did, the job is
                            // left for redelivery rather than run beyond `concurrency`.
                            warn!("async jobs: more jobs than asked for in one pull");
                            continue;
                        };
                        let (jobs, bound) = (self.clone(), bound.clone());
                        tracker.spawn(async move { jobs.run(&bound, msg, permit).await });
                    }
                }
            }
        }
    }

    /// One job, start to ack, with in-progress acks while it runs long.
    async fn run(&self, bound: &Bound, msg: jetstream::Message, _slot: OwnedSemaphorePermit) {
        let every = self.config.ack_wait / 2;
        let work = self.process(bound, &msg);
        tokio::pin!(work);
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = &mut work => return,
                () = self.abort.cancelled() => {
                    // Not acked, not nacked: redelivered to another instance after `ack_wait`.
                    warn!(subject = %msg.subject, "shutdown deadline passed: job left unacked for redelivery");
                    return;
                }
                _ = progress.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        warn!(error = %e, "async jobs: could not send an in-progress ack");
                    }
                }
            }
        }
    }

    async fn process(&self, bound: &Bound, msg: &jetstream::Message) {
        let (sequence, delivered) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(e) => {
                warn!(error = %e, subject = %msg.subject, "async jobs: not a JetStream message; ignored");
                return;
            }
        };
        let job = Job::read(msg, sequence, &self.subjects);
        if delivered > 1 {
            info!(job = %job.id, delivered, "async jobs: job redelivered");
        }
        // Delivered again while still running here (a NATS server that lost the consumer's
        // state, or an instance that fell behind on progress acks): the task already running
        // stores the result and acks the stream sequence for both deliveries.
        let Some(_running) = self.running.claim(&job.id) else {
            info!(job = %job.id, "async jobs: job already running here; this delivery is left to it");
            return;
        };
        if job.problem.is_none() {
            match retry("look up a stored result", || {
                stored(bound, &job.result_subject, &job.id)
            })
            .await
            {
                Some(true) => {
                    info!(job = %job.id, "async jobs: result already stored; acked without a call");
                    ack(msg).await;
                    return;
                }
                Some(false) => {}
                // NATS unreachable for a long time: leave the job to be redelivered.
                None => return,
            }
        }
        let task = self
            .subjects
            .submit_task_of(&msg.subject)
            .unwrap_or_default();
        let mut options = match job.problem {
            Some(p) => Err(p),
            None => RequestOptions::from_lookup(
                |name| header(msg.headers.as_ref(), name),
                self.engine.limits().max_deadline,
            )
            .map(|mut o| {
                // The job id names the request in logs unless the caller named it.
                o.request_id.get_or_insert_with(|| job.id.clone());
                o.endpoints = self.subjects.endpoints();
                o
            }),
        };
        let request_id = settle_request_id(&mut options);
        let outcome = match options {
            Ok(options) => {
                let served = self.engine.chat(task, options, &msg.payload, None);
                super::chat::guarded(served, &self.engine, &request_id, false).await
            }
            Err(why) => self.engine.refuse(task, request_id, why),
        };
        // A result too large for one NATS message is stored as the error that says so: a
        // redelivery would pay the provider again for the same too-large answer.
        let reply = outcome
            .fit(self.client.server_info().max_payload)
            .into_reply();
        let mut headers = HeaderMap::new();
        for (name, value) in reply.headers {
            headers.insert(name, value.as_str());
        }
        headers.insert(JOB_ID, job.id.as_str());
        let publish = || {
            let p = PublishMessage::build()
                .headers(headers.clone())
                .payload(reply.body.clone())
                .message_id(job.id.as_str());
            let subject = job.result_subject.clone();
            async move {
                let ack = self.js.send_publish(subject, p).await?.await?;
                Ok::<_, async_nats::Error>(ack)
            }
        };
        match retry("publish a result", publish).await {
            Some(stored) => {
                debug!(job = %job.id, subject = %job.result_subject, duplicate = stored.duplicate, "async jobs: result stored");
                ack(msg).await;
            }
            None => {
                warn!(job = %job.id, "async jobs: result not stored; the job will be redelivered")
            }
        }
    }
}

/// The set of job ids running on this instance, in shards so that jobs rarely share a lock.
#[derive(Default)]
struct RunningJobs([Mutex<HashSet<String>>; 16]);

/// Holds a job id in `RunningJobs` until dropped.
struct Claim<'a>(&'a Mutex<HashSet<String>>, &'a str);

impl RunningJobs {
    fn claim<'a>(&'a self, id: &'a str) -> Option<Claim<'a>> {
        let shard = &self.0[crate::config::stable_hash(id.as_bytes()) as usize % self.0.len()];
        let mut set = shard.lock().unwrap_or_else(PoisonError::into_inner);
        // `then`, not `then_some`: a Claim built and dropped here would lock the shard twice.
        set.insert(id.to_string()).then(|| Claim(shard, id))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.1);
    }
}

/// What a job message says about itself.
struct Job {
    id: String,
    result_subject: String,
    /// Why the job cannot be run; it still gets an `invalid_request` result.
    problem: Option<String>,
}

impl Job {
    fn read(msg: &async_nats::Message, sequence: u64, subjects: &Subjects) -> Job {
        let headers = msg.headers.as_ref();
        let fallback_id = format!("seq-{sequence}");
        let custom = header(headers, RESULT_SUBJECT).map(str::trim);
        let custom_ok = custom.filter(|s| subjects.is_result(s));
        let id = header(headers, async_nats::header::NATS_MESSAGE_ID.as_ref())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let (id, mut problem) = match id {
            None => (
                fallback_id.clone(),
                Some(format!(
                    "the job has no Nats-Msg-Id header: publish every job with its job id (this one was given job id {fallback_id})"
                )),
            ),
            Some(id) if custom_ok.is_none() && !crate::config::is_token(id) => (
                fallback_id.clone(),
                Some(format!(
                    "Nats-Msg-Id `{id}` cannot end a result subject: no '.', '*', '>' or spaces (this job was given job id {fallback_id})"
                )),
            ),
            Some(id) => (id.to_string(), None),
        };
        let result_subject = match (custom, custom_ok) {
            (_, Some(s)) => s.to_string(),
            (Some(bad), None) => {
                problem.get_or_insert_with(|| {
                    format!(
                        "{RESULT_SUBJECT} `{bad}` must be a subject under {} (where results are stored)",
                        subjects.result_wildcard()
                    )
                });
                subjects.result(&id)
            }
            (None, None) => subjects.result(&id),
        };
        Job {
            id,
            result_subject,
            problem,
        }
    }
}

/// Whether the last message on `subject` in the results stream is the result of job `id`.
async fn stored(bound: &Bound, subject: &str, id: &str) -> Result<bool, async_nats::Error> {
    let found = if bound.direct {
        match bound.results.direct_get_last_for_subject(subject).await {
            Ok(m) => Some(m.headers),
            Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        match bound.results.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Some(m.headers),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => None,
            Err(e) => return Err(e.into()),
        }
    };
    Ok(found.is_some_and(|h| h.get(JOB_ID).is_some_and(|v| v.as_str() == id)))
}

async fn ack(msg: &jetstream::Message) {
    // A lost ack is harmless: the redelivered job finds its stored result and is acked then.
    if let Err(e) = msg.ack().await {
        warn!(error = %e, "async jobs: could not ack a job");
    }
}

/// Runs `op` until it succeeds, backing off between failures, for up to `RETRY_FOR`.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, async_nats::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                warn!(error = %e, "async jobs: could not {what}; giving up");
                return None;
            }
            Err(e) => {
                warn!(error = %e, "async jobs: could not {what}; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Waits until the client is connected (or `stop`).
async fn wait_connected(client: &Client, stop: &CancellationToken) {
    while client.connection_state() != async_nats::connection::State::Connected
        && !stop.is_cancelled()
    {
        tokio::select! {
            _ = tokio::time::sleep(CONNECTION_CHECK) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }

    async fn wait(&mut self, stop: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(self.next()) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &[(&str, &str)]) -> async_nats::Message {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        async_nats::Message {
            subject: "llm.submit.chat".into(),
            reply: None,
            payload: "{}".into(),
            headers: Some(h),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_job_runs_once_at_a_time_here() {
        let running = RunningJobs::default();
        let first = running.claim("j1").expect("free");
        assert!(running.claim("j1").is_none(), "already running");
        assert!(running.claim("j2").is_some());
        drop(first);
        assert!(running.claim("j1").is_some(), "free again once done");
    }

    #[test]
    fn a_job_id_names_its_result_subject() {
        let s = Subjects::new("llm");
        let j = Job::read(&msg(&[("Nats-Msg-Id", "j-1")]), 7, &s);
        assert_eq!(
            (j.id.as_str(), j.result_subject.as_str()),
            ("j-1", "llm.result.j-1")
        );
        assert!(j.problem.is_none());
        let j = Job::read(
            &msg(&[("Nats-Msg-Id", "a.b"), (RESULT_SUBJECT, "llm.result.app.x")]),
            7,
            &s,
        );
        assert_eq!(j.result_subject, "llm.result.app.x");
        assert!(j.problem.is_none());
    }

    #[test]
    fn jobs_without_a_usable_id_or_subject_get_an_error_result_by_sequence() {
        let s = Subjects::new("llm");
        let j = Job::read(&msg(&[]), 7, &s);
        assert_eq!(j.result_subject, "llm.result.seq-7");
        assert!(j.problem.unwrap().contains("no Nats-Msg-Id"));
        let j = Job::read(&msg(&[("Nats-Msg-Id", "a.b")]), 8, &s);
        assert_eq!(j.result_subject, "llm.result.seq-8");
        assert!(j.problem.is_some());
        let j = Job::read(
            &msg(&[("Nats-Msg-Id", "j2"), (RESULT_SUBJECT, "elsewhere.x")]),
            9,
            &s,
        );
        assert_eq!(j.result_subject, "llm.result.j2");
        assert!(j.problem.unwrap().contains("llm.result.>"));
    }
}
