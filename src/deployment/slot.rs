//! A deployment's place in the engine: its config and actor arguments, what its actor publishes,
//! and the actor itself, swapped by the supervisor when it restarts one. Routing reads slots;
//! only the supervisor writes the actor handle.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ractor::ActorRef;

use super::{Args, Msg, Published};
use crate::config::DeploymentConfig;

/// One deployment as routing sees it: its config, what its actor publishes, and the actor itself
/// (swapped by the supervisor when it restarts one).
pub struct Slot {
    pub name: Arc<str>,
    /// What the actor is started with: adapter, breaker policy, published state, event bus.
    pub args: Args,
    pub published: Arc<Published>,
    pub actor: ArcSwapOption<ActorRef<Msg>>,
    /// A stable number per name for affinity hashing.
    pub name_hash: u64,
}

impl Slot {
    pub fn config(&self) -> &DeploymentConfig {
        &self.args.adapter.config
    }
}
