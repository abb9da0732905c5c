//! What the engine tells about itself: the status snapshot, the event stream, and how its trace
//! spans carry numbers and failures (`trace`).

pub mod alerts;
pub mod events;
pub mod keys;
pub mod log_line;
pub mod log_writer;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod spend;
pub mod status;
pub mod trace;

pub use events::{Event, EventBus};
pub use status::{DeploymentStatus, StatusSnapshot};
