//! The client-side commands: `demo` (engine in-process), `status` (gather every instance's
//! snapshot), `request` (one chat request over NATS, as a program would send it) and `submit`
//! (one durable async job over JetStream).

pub mod batch_client;
pub mod demo;
pub mod request;
pub mod status;
pub mod submit;
