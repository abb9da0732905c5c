//! The client-side commands: `demo` (engine in-process), `status` (gather every instance's
//! snapshot) and `request` (one chat request over NATS, as a program would send it).

pub mod batch_client;
pub mod demo;
pub mod request;
pub mod status;
