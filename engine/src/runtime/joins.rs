//! Joins in a stage actor: parts of a frame gathered from every input, emitted when
//! complete, when their gaps are known, or when the join's timeout passes.

use std::sync::atomic::Ordering;

use super::batch::Held;
use super::group::route;
use super::stage_actor::ActorState;
use crate::edge::Permit;
use crate::join::{Arrival, Ready};
use crate::message::{FrameId, Message, Part};
use crate::stage::{Input, Role};

impl ActorState {
    /// Hands a ready joined frame to the stage, sends its outputs on, then frees the
    /// places its parts held. A frame of which nothing arrived is not run: its gap
    /// goes on downstream. A batched joining stage keeps the frame, with its places, for
    /// its batch instead (`batch::flush_batch` routes it and frees them).
    pub(super) async fn emit_join(&mut self, ready: Ready<Permit>) {
        let (group, shared) = (self.args.group.clone(), self.args.shared.clone());
        let id = ready.joined.id;
        if ready.joined.any().is_none() {
            group.gap_downstream(id, Part::WHOLE);
            return;
        }
        if ready.joined.lost() > 0 {
            shared.stats[group.index].incomplete.fetch_add(1, Ordering::Relaxed);
        }
        if self.gathering.is_some() {
            let held = Held::Joined(ready.held);
            return Box::pin(self.gather_input(Input::Joined(ready.joined), held)).await;
        }
        match self.run_input(Some(Input::Joined(ready.joined))).await {
            Some(outs) => {
                route(&group, &shared, outs).await;
            }
            None => group.gap_downstream(id, Part::WHOLE),
        }
        drop(ready.held);
    }

    /// A part arrived at a joining stage: kept (and counted received), or refused as
    /// late when its frame was already emitted.
    pub(super) async fn on_join(&mut self, input: usize, msg: Message, permit: Permit) {
        let (group, shared) = (self.args.group.clone(), self.args.shared.clone());
        let (born, id, released) = (msg.born, msg.id, self.joins.released);
        let arrival = self.joins.part(input, msg, permit);
        if released == 0 && self.joins.released > 0 {
            tracing::warn!(
                stage = %shared.stats[group.index].id, frame = %id,
                "a frame has more parts on one input than the stage's mailbox has places; the join keeps them without places (raise `mailbox` to at least the number of parts to keep the bound)"
            );
        }
        match arrival {
            Arrival::Late(place) => {
                drop(place);
                shared.stats[group.index].on_late();
            }
            Arrival::Kept(ready) => {
                shared.stats[group.index].on_received();
                if group.role == Role::Sink {
                    shared.latency.record(born.elapsed().as_secs_f64());
                    shared.at_sink(id);
                }
                if let Some(r) = ready {
                    self.emit_join(r).await;
                }
            }
        }
    }

    /// A gap notice: a join marks the part lost; other stages pass it on downstream.
    pub(super) async fn on_gap(&mut self, input: usize, frame: FrameId, part: Part) {
        if self.args.join.is_some() {
            if let Some(r) = self.joins.gap(input, frame, part) {
                self.emit_join(r).await;
            }
        } else {
            self.args.group.gap_downstream(frame, part);
        }
    }

    /// Emits the frames whose timeout has passed, or (`all`, at the end of the stream)
    /// every frame still waiting; then, at the end, a batched stage's partial batch.
    pub(super) async fn expire_joins(&mut self, all: bool) {
        if self.args.join.is_none() {
            return;
        }
        for r in self.joins.due(all) {
            self.emit_join(r).await;
        }
        if all {
            Box::pin(self.flush_batch()).await;
        }
    }
}
