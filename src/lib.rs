//! Switchyard routes LLM requests across providers over NATS.
//!
//! # Floors
//! Each module names only modules on floors below its own (`tests/floors.rs` checks it, and that
//! the files of one module form no cycle). Bottom to top, in the order a request meets them from
//! the wire down to the provider and back:
//!
//! 0. `config` — the TOML file, validated into the `Config` every other floor reads.
//! 1. `protocol` — what callers see: the OpenAI-shaped request and reply, `Llm-*` headers, error kinds, subjects, circuit states.
//! 2. `observe` — what the engine tells about itself: status snapshot types, events, alert rules, spend ledger.
//! 3. `providers` — wire formats: one adapter per provider API (OpenAI-compatible, Anthropic, Gemini) and the simulator.
//! 4. `cluster` — state shared between instances through a JetStream KV bucket: circuits, cool-downs, rpm/tpm windows, leases.
//! 5. `deployment` — one actor per deployment: limits, breaker, stats; one attempt at one provider.
//! 6. `routing` — task → group, strategies, budgets, the fallback walk over deployments.
//! 7. `engine` — the whole in-process: starts the actors and the router, serves one request (`chat`) and status.
//! 8. `batch` — file batches through the engine, checkpointed in SQLite.
//! 9. `ingress` — the NATS surfaces: chat, jobs, status, batches, `$SRV`, Prometheus, the cluster sync task.
//! 10. `cli` — the command line: one clap `Args` struct per verb.
//! 11. `commands` — what each verb does, given its `Args`; `main.rs` parses the line and runs one.
//!
//! # A request's shapes
//! In: `ChatRequest` (the parsed body) with `RequestOptions` (the `Llm-*` headers; headers that
//! cannot be read never reach `Engine::chat`, `Engine::refuse` answers them) → the router's `Ask`
//! → one `CallArgs` per attempt at a deployment → beside the request, the backend's `CallContext`.
//! Back: the wire format's `Answer` → the priced `ProviderReply`, or a `Failure` and the
//! `Decision` of the failure policy (`routing::policy`, handed to each deployment) → the
//! deployment's `Attempt`, streamed or not (answered, failed, broken after its first chunk, or
//! skipped) → the walk's `Served` or `Failed` → `ChatOutcome` (with the request id, latency and
//! whether it streamed) → the `Reply` on the wire.

pub mod batch;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod deployment;
pub mod engine;
pub mod ingress;
pub mod observe;
pub mod protocol;
pub mod providers;
pub mod routing;
