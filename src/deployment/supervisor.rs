//! The supervisor actor: starts one deployment actor per deployment, linked to itself, and
//! restarts any that dies (a panic in a handler, a kill), swapping the new actor into the routing
//! slot so requests keep flowing. Calls in flight on a dead actor still answer their callers:
//! they run in their own tasks.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, info};

use super::{DeploymentActor, Slot};

pub struct Supervisor;

pub struct Args {
    pub slots: Arc<[Slot]>,
}

pub struct State {
    slots: Arc<[Slot]>,
}

pub enum Msg {}

impl Actor for Supervisor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, me: ActorRef<Msg>, args: Args) -> Result<State, ActorProcessingErr> {
        for slot in args.slots.iter() {
            let (actor, _) =
                Actor::spawn_linked(None, DeploymentActor, slot.args.clone(), me.get_cell())
                    .await?;
            slot.actor.store(Some(Arc::new(actor)));
        }
        Ok(State { slots: args.slots })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Msg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        for slot in state.slots.iter() {
            if let Some(actor) = slot.actor.swap(None) {
                actor.stop(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<Msg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            _ => return Ok(()),
        };
        let dead = cell.get_id();
        let Some(i) = state
            .slots
            .iter()
            .position(|s| s.actor.load().as_ref().is_some_and(|a| a.get_id() == dead))
        else {
            return Ok(());
        };
        let name = &state.slots[i].name;
        error!(deployment = %name, reason = %why, "deployment actor died; restarting it");
        let (actor, _) = Actor::spawn_linked(
            None,
            DeploymentActor,
            state.slots[i].args.clone(),
            me.get_cell(),
        )
        .await?;
        state.slots[i].actor.store(Some(Arc::new(actor)));
        info!(deployment = %name, "deployment actor restarted");
        Ok(())
    }
}
