//! What the engine tells about itself: the status snapshot and the event stream.

pub mod alerts;
pub mod events;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod spend;
pub mod status;

pub use events::{Event, EventBus};
pub use status::{DeploymentStatus, StatusSnapshot};
