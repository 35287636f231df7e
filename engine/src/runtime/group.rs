//! Groups and dispatch: all replicas of one stage as producers see them, the
//! messages their replicas handle, and routing a stage's outputs over its edges.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

use super::sequencer::Sequencer;
use super::shared::RunShared;
use super::stats::StageStats;
use crate::edge::{Admit, Delivery, Edge, OnRelease};
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
    #[inline]
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
    if let Some(stuck) = route_now(group, shared, &mut outputs, release.as_ref()) {
        route_stuck(group, shared, stuck, release).await;
    }
    outputs
}

/// Where [`route_now`] stopped: the message for edge `edge` of output port `port` must
/// wait for a place; `rest` is the output's message for the port's edges after it
/// (`None` when `edge` is the last) and `later` the outputs not yet started.
pub(super) struct Stuck {
    port: usize,
    edge: usize,
    msg: Message,
    rest: Option<Message>,
    later: Vec<(usize, Message)>,
}

/// Sends `outputs` on, in order, as far as the edges have room without waiting (the hot
/// path: no future is built for a hop that need not wait). Empties the list; `Some`
/// when a message must wait for a place, to be finished by [`route_stuck`].
pub(super) fn route_now(
    group: &Group,
    shared: &RunShared,
    outputs: &mut Vec<(usize, Message)>,
    release: Option<&Arc<OnRelease>>,
) -> Option<Stuck> {
    let stats = &shared.stats[group.index];
    let mut it = outputs.drain(..);
    while let Some((port, msg)) = it.next() {
        stats.on_sent(1);
        if let Some((edge, msg, rest)) = send_now(group, port, 0, Some(msg), release) {
            return Some(Stuck {
                port,
                edge,
                msg,
                rest,
                later: it.collect(),
            });
        }
    }
    None
}

/// Finishes what [`route_now`] started: waits for the stuck message's place, then sends
/// the rest, waiting wherever an edge is full.
pub(super) async fn route_stuck(group: &Group, shared: &RunShared, stuck: Stuck, release: Option<Arc<OnRelease>>) {
    let stats = &shared.stats[group.index];
    let Stuck {
        mut port,
        mut edge,
        mut msg,
        mut rest,
        later,
    } = stuck;
    let mut later = later.into_iter();
    loop {
        let Some((e, consumer)) = group.outputs.get(port).and_then(|edges| edges.get(edge)) else {
            return;
        };
        let (part, id) = (msg.part, msg.id);
        match e.admit_waiting(msg, release.as_ref()).await {
            Some(delivery) => consumer.dispatch(e.input, delivery, part, id.seq),
            // The edge closed while we waited: as dropped, tell the consumer.
            None => consumer.gap(e.input, id, part),
        }
        // This output's edges after the stuck one, then the later outputs, until one
        // must wait again.
        let mut next = send_now(group, port, edge + 1, rest.take(), release.as_ref()).map(|s| (port, s));
        let (p, (k, m, r)) = loop {
            if let Some(stuck) = next {
                break stuck;
            }
            let Some((p, m)) = later.next() else { return };
            stats.on_sent(1);
            next = send_now(group, p, 0, Some(m), release.as_ref()).map(|s| (p, s));
        };
        (port, edge, msg, rest) = (p, k, m, r);
    }
}

/// Sends `msg` over the edges of output port `port` from edge `first` on, a copy per
/// edge (the message itself to the last), without waiting: dispatched when admitted, a
/// gap notice when dropped by policy (counted by the edge; joins downstream stop
/// waiting for it). Gives back the first edge that has no place and would have the
/// producer wait, with the message for it and the one for the edges after it.
#[inline]
fn send_now(
    group: &Group,
    port: usize,
    first: usize,
    mut msg: Option<Message>,
    release: Option<&Arc<OnRelease>>,
) -> Option<(usize, Message, Option<Message>)> {
    let edges = group.outputs.get(port)?;
    let last = edges.len().saturating_sub(1);
    for (k, (edge, consumer)) in edges.iter().enumerate().skip(first) {
        let m = if k == last { msg.take() } else { msg.clone() };
        let Some(m) = m else { continue };
        let (part, id) = (m.part, m.id);
        match edge.try_admit(m, release) {
            Admit::Sent(delivery) => consumer.dispatch(edge.input, delivery, part, id.seq),
            Admit::Dropped => consumer.gap(edge.input, id, part),
            Admit::Full(m) => return Some((k, m, msg)),
        }
    }
    None
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
