//! Shared support code for the integration tests.
//!
//! Every test binary includes this with `mod common;` and uses only part of
//! it, hence the blanket `dead_code` and `unused_imports` allowances.
//!
//! - [`NatsServer`]: a private `nats-server` with JetStream on a free port.
//! - [`NatsCluster`]: several of them clustered over loopback routes.
//! - [`FakeProvider`]: a scriptable provider endpoint (OpenAI, Anthropic or Gemini dialect) that can
//!   answer, fail, stall or break the connection on demand ([`Fault`]).
#![allow(dead_code, unused_imports)]

pub mod fake;
pub mod fake_batch;
pub mod harness;
pub mod nats;
pub mod python;

pub use fake::{Dialect, FakeProvider, Fault, Recorded};
pub use nats::{NatsCluster, NatsServer};
pub mod cluster;
pub mod jobs;
