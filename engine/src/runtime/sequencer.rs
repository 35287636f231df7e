//! The sequencer of a replicated stage: outputs finished out of order by its
//! replicas go downstream in the order their inputs arrived.

use std::collections::BTreeMap;

use super::group::{route, Group};
use super::shared::RunShared;
use crate::edge::Permit;
use crate::message::Message;

/// Messages finished out of order by replicas, released in arrival order.
/// Outputs of one input, with the place the input holds until they are sent.
pub(super) type Finished = (Vec<(usize, Message)>, Option<Permit>);

#[derive(Default)]
pub(super) struct Sequencer {
    /// Arrival number of the next input whose outputs may go downstream.
    pub(super) next: u64,
    /// Outputs finished ahead of their turn, each with its input's permit. The permit
    /// stays here (holding its place on the input edge) until the outputs are routed,
    /// so a slow replica holds its siblings' frames back instead of letting the edge
    /// overfill; dropping an entry frees that place.
    pub(super) ready: BTreeMap<u64, Finished>,
}

/// Sends outputs on, in arrival order when the stage is replicated, then frees the
/// input's place. Gives back the emptied output list (unsequenced stages), for reuse.
pub(super) async fn complete(
    group: &Group,
    shared: &RunShared,
    order: u64,
    outputs: Vec<(usize, Message)>,
    permit: Option<Permit>,
) -> Vec<(usize, Message)> {
    match &group.sequencer {
        None => {
            let emptied = route(group, shared, outputs).await;
            drop(permit);
            emptied
        }
        Some(seq) => {
            let mut s = seq.lock().await;
            s.ready.insert(order, (outputs, permit));
            loop {
                let next = s.next;
                let Some((outs, p)) = s.ready.remove(&next) else { break };
                s.next += 1;
                route(group, shared, outs).await;
                drop(p);
            }
            Vec::new()
        }
    }
}
