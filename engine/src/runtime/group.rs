//! Groups and dispatch: all replicas of one stage as producers see them, the
//! messages their replicas handle, and routing a stage's outputs over its edges.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

use super::sequencer::Sequencer;
use super::shared::RunShared;
use super::stats::StageStats;
use crate::edge::{Delivery, Edge, OnRelease};
use crate::message::{FrameId, Message, Part};
use crate::plan::Plan;
use crate::stage::Role;

/// A replica's inbox: the sending end of the one queue its stage loop reads (see
/// `stage_actor`). Data and control share it, so a replica sees them in the order they
/// were sent: end of stream never overtakes the data sent before it, nor a gap notice
/// the message it stands for. Unbounded: the data in it is bounded by the permits of
/// the edges into the stage; control messages hold no place.
pub(super) type Inbox = tokio::sync::mpsc::UnboundedSender<StageMsg>;

/// Messages a stage replica handles.
pub(crate) enum StageMsg {
    /// A data message from input edge `input`, number `order` in the group's arrival order.
    Data {
        input: usize,
        order: u64,
        delivery: Delivery,
    },
    /// Gap notice (no permit): part `part` of frame `frame` will not come on input
    /// edge `input`, because an edge upstream dropped it or a stage failed it.
    Gap { input: usize, frame: FrameId, part: Part },
    /// End of stream on one input edge.
    Eos,
    /// Time to expire incomplete joins.
    Tick,
    /// `wait_ms` has passed since the first message of batch number `batch` (batched
    /// stages only; stale when that batch was already called).
    Flush { batch: u64 },
}

/// All replicas of one stage, as seen by producers and by the replicas themselves.
/// Held through an `Arc` by every producer's group (in `outputs`), by each of its
/// replicas' actors and by `run`; it lives until the last of them stops.
pub(super) struct Group {
    pub(super) index: usize,
    pub(super) role: Role,
    /// The replicas' inboxes, set once by the spawner after every replica has
    /// started (before any source starts). Holding or dropping them neither keeps a
    /// replica running nor stops it; a send to a stopped replica fails and is ignored
    /// (its message and the permit in it are dropped).
    pub(super) replicas: OnceLock<Vec<Inbox>>,
    /// Serialises numbering and enqueueing, so numbers follow inbox order (sequenced
    /// groups only). Held by a producer for one enqueue; never across an await.
    pub(super) dispatch_lock: Mutex<u64>,
    /// Present when replicas > 1: restores arrival order downstream. A replica holds
    /// the lock while it routes the outputs that are next in order (across awaits on
    /// full edges: the stage's output order is also its backpressure order).
    pub(super) sequencer: Option<tokio::sync::Mutex<Sequencer>>,
    /// Edges out of each output port, with the consuming groups.
    pub(super) outputs: Vec<Vec<(Arc<Edge>, Arc<Group>)>>,
    /// Edges into this stage (for EOS counting and drop accounting).
    pub(super) input_edges: usize,
    /// Replicas that have seen EOS on every input and finished. Each replica adds one
    /// as it stops; the one that brings it to `n_replicas` sends EOS downstream and
    /// marks the stage finished, exactly once.
    pub(super) finished_replicas: AtomicUsize,
    /// Replicas of the stage (1 for a source).
    pub(super) n_replicas: usize,
}

impl Group {
    pub(super) fn dispatch(&self, input: usize, delivery: Delivery, part: Part, seq: u64) {
        let Some(refs) = self.replicas.get() else { return };
        let replica = if refs.len() == 1 {
            0
        } else if part.count > 1 {
            part.index as usize % refs.len()
        } else {
            (seq % refs.len() as u64) as usize
        };
        if self.sequencer.is_none() {
            // Arrival numbers only matter to a sequencer.
            let _ = refs[replica].send(StageMsg::Data {
                input,
                order: 0,
                delivery,
            });
        } else if let Ok(mut next) = self.dispatch_lock.lock() {
            let order = *next;
            *next += 1;
            let _ = refs[replica].send(StageMsg::Data { input, order, delivery });
        }
    }

    /// Tells the replica that would have got `part` of `frame` that it will not come.
    pub(super) fn gap(&self, input: usize, frame: FrameId, part: Part) {
        let Some(refs) = self.replicas.get() else { return };
        let replica = if part.count > 1 {
            part.index as usize % refs.len().max(1)
        } else {
            (frame.seq % refs.len().max(1) as u64) as usize
        };
        if let Some(r) = refs.get(replica) {
            let _ = r.send(StageMsg::Gap { input, frame, part });
        }
    }

    /// Sends a gap notice for `part` of `frame` on every outgoing edge.
    pub(super) fn gap_downstream(&self, frame: FrameId, part: Part) {
        for port in &self.outputs {
            for (edge, consumer) in port {
                consumer.gap(edge.input, frame, part);
            }
        }
    }

    pub(super) fn send_eos_downstream(&self) {
        for port in &self.outputs {
            for (_, consumer) in port {
                if let Some(refs) = consumer.replicas.get() {
                    for r in refs {
                        let _ = r.send(StageMsg::Eos);
                    }
                }
            }
        }
    }
}

/// Routes a stage's outputs to its consumers, waiting for room per policy; gives the
/// emptied list back (its allocation can carry the next message's outputs).
pub(super) async fn route(group: &Group, shared: &RunShared, outputs: Vec<(usize, Message)>) -> Vec<(usize, Message)> {
    route_released(group, shared, outputs, None).await
}

/// [`route`], with a forwarded message's release callback riding on every place it takes.
pub(super) async fn route_released(
    group: &Group,
    shared: &RunShared,
    mut outputs: Vec<(usize, Message)>,
    release: Option<Arc<OnRelease>>,
) -> Vec<(usize, Message)> {
    let stats = &shared.stats[group.index];
    for (port, msg) in outputs.drain(..) {
        stats.on_sent(1);
        let Some(edges) = group.outputs.get(port) else { continue };
        let last = edges.len().saturating_sub(1);
        let mut msg = Some(msg);
        for (k, (edge, consumer)) in edges.iter().enumerate() {
            let m = if k == last { msg.take() } else { msg.clone() };
            let Some(m) = m else { continue };
            let (part, id) = (m.part, m.id);
            match edge.admit(m, release.as_ref()).await {
                Some(delivery) => consumer.dispatch(edge.input, delivery, part, id.seq),
                // Dropped by policy (counted by the edge): tell the consumer, so joins
                // downstream stop waiting for it.
                None => consumer.gap(edge.input, id, part),
            }
        }
    }
    outputs
}

/// Groups of every stage and every edge, built consumers first, so producers can hold
/// their consumers' groups.
pub(super) fn build(plan: &Plan, stats: &[Arc<StageStats>]) -> (Vec<Arc<Group>>, Vec<Arc<Edge>>) {
    let n = plan.stages.len();
    let mut groups: Vec<Option<Arc<Group>>> = vec![None; n];
    let mut all_edges: Vec<Arc<Edge>> = Vec::new();
    for i in (0..n).rev() {
        let s = &plan.stages[i];
        let outputs = s
            .consumers
            .iter()
            .map(|cons| {
                cons.iter()
                    .filter_map(|&(c, input)| {
                        let cs = &plan.stages[c];
                        let g = groups[c].clone()?;
                        let e = Edge::new(&s.id, &cs.id, input, cs.mailbox, cs.when_full, stats[c].dropped.clone());
                        all_edges.push(e.clone());
                        Some((e, g))
                    })
                    .collect()
            })
            .collect();
        groups[i] = Some(Arc::new(Group {
            index: i,
            role: s.role,
            replicas: OnceLock::new(),
            dispatch_lock: Mutex::new(0),
            sequencer: (s.replicas > 1 && s.ports.join.is_none())
                .then(|| tokio::sync::Mutex::new(Sequencer::default())),
            outputs,
            input_edges: s.inputs.len(),
            finished_replicas: AtomicUsize::new(0),
            n_replicas: if s.role == Role::Source { 1 } else { s.replicas },
        }));
    }
    (groups.into_iter().flatten().collect(), all_edges)
}
