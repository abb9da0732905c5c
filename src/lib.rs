//! Switchyard routes LLM requests across providers over NATS. The request path, in the order a
//! request meets it: `ingress` (NATS subjects) → `engine` → `routing` (classify, strategy,
//! fallback walk) → `deployment` (one actor per deployment: limits, breaker, stats) →
//! `providers` (wire formats). `config` and `protocol` are shared vocabulary; `observe` is what
//! the engine tells about itself. `batch` sends the records of a file through the same engine,
//! one chat request per record, and checks each answer against the job's output rule.

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
