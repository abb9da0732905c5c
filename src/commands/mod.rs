//! The client-side commands: `demo` (engine in-process), `status` (gather every instance's
//! snapshot), `request` (one chat request over NATS, as a program would send it) and `submit`
//! (one durable async job over JetStream); `import` (another gateway's config as ours).

pub mod batch_client;
pub mod demo;
pub mod import;
pub mod request;
pub mod status;
pub mod submit;
