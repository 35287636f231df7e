//! Joins: the parts of one frame gathered from every input of a joining stage.
//!
//! A [`JoinTable`] holds, per frame id, the parts that have arrived and the places
//! they hold on their edges, until the frame is *ready*: every part of every input
//! has arrived or is known lost, or the join's timeout has passed, or the stream
//! ends. A frame is ready once only:
//!
//! - **Gaps.** When an edge drops a message (by its policy) or a stage fails a frame,
//!   the consumers downstream get a permit-free gap notice for that frame and part
//!   (as GStreamer's GAP event). A join marks the part lost, so a frame whose other
//!   parts are all here is ready at once instead of holding its places until the
//!   timeout. A gap for a whole part (`count = 1`) means no part of that frame will
//!   come on that input (a frame dropped before a `split` loses every tile).
//! - **Timeout.** It counts from the frame's first part, or from the last arrival on
//!   an input the frame still waits for, whichever is later: the join waits as long
//!   as that input is moving, so a slow branch that is still delivering earlier frames
//!   (a diffusion model behind a queue) does not lose the later ones; an input silent
//!   for the whole timeout does.
//! - **Late parts.** Once a frame is ready (complete, timed out or gapped), its id is
//!   remembered; a part that arrives later, or a second copy of a part the join
//!   already holds, is refused ([`Arrival::Late`]): the caller frees its place and
//!   counts it as dropped with reason `late`. It never opens a second entry, so a
//!   frame is never emitted, or failed, twice.
//! - **Forgetting.** An id is forgotten once every input has delivered a later frame
//!   of the same stream (edges deliver each stream in order, so no part of it can
//!   come any more), or, for inputs that never carry that stream, when more than
//!   [`DONE_CAP`] ids are remembered (the oldest go first).
//!
//! The table holds the places as an opaque `P` (the runtime's edge permits), so the
//! logic is tested here without a runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::message::{FrameId, Message, Part};
use crate::stage::Joined;

/// Most frame ids a join remembers as already emitted.
pub(crate) const DONE_CAP: usize = 65_536;

/// How often the remembered ids are pruned (every this many emissions).
const PRUNE_EVERY: usize = 256;

/// One frame waiting for its other parts.
struct Pending<P> {
    first_seen: Instant,
    /// `parts[input][part]`.
    parts: Vec<Vec<Option<Message>>>,
    /// Part count announced on each input (by a part or a part gap).
    expected: Vec<Option<u32>>,
    /// Inputs on which no part of this frame will come (a whole-frame gap).
    whole_lost: Vec<bool>,
    /// Part indices known lost, per input.
    lost: Vec<BTreeSet<u32>>,
    /// Places held by the parts that arrived, per input (the edges' permits). Owned by
    /// the joining replica's table until the frame is emitted, expired or flushed at
    /// EOS; they go out in [`Ready::held`] and dropping them frees the places on the
    /// edges, which is what lets the producers send more (backpressure).
    held: Vec<Vec<P>>,
}

impl<P> Pending<P> {
    fn new(n: usize) -> Self {
        Pending {
            first_seen: Instant::now(),
            parts: vec![Vec::new(); n],
            expected: vec![None; n],
            whole_lost: vec![false; n],
            lost: vec![BTreeSet::new(); n],
            held: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    fn announce(&mut self, input: usize, count: u32) {
        let count = count.max(1);
        self.expected[input] = Some(count);
        if self.parts[input].len() < count as usize {
            self.parts[input].resize(count as usize, None);
        }
    }

    fn complete(&self) -> bool {
        (0..self.parts.len()).all(|i| self.input_complete(i))
    }

    /// Whether every part of input `i` has arrived or is known lost.
    fn input_complete(&self, i: usize) -> bool {
        self.whole_lost[i]
            || matches!(self.expected[i], Some(c) if self.parts[i].len() == c as usize
                && self.parts[i].iter().enumerate().all(|(k, p)| p.is_some() || self.lost[i].contains(&(k as u32))))
    }

    /// When the frame's timeout starts: its first part, or the last arrival on an input
    /// it still waits for, whichever is later.
    fn waiting_since(&self, last_arrival: &[Option<Instant>]) -> Instant {
        (0..self.parts.len())
            .filter(|&i| !self.input_complete(i))
            .filter_map(|i| last_arrival[i])
            .fold(self.first_seen, Instant::max)
    }
}

/// A frame ready to be handed to the stage, with the places its parts hold.
pub(crate) struct Ready<P> {
    /// The parts; an input with nothing has one `None`.
    pub joined: Joined,
    /// Places held by the parts: freed once the stage's outputs are sent on.
    pub held: Vec<P>,
}

/// What became of an arriving part.
pub(crate) enum Arrival<P> {
    /// Kept; the frame is ready when `Some`.
    Kept(Option<Ready<P>>),
    /// Refused: the frame was already emitted, or this part is already here. The
    /// place comes back so the caller frees it and counts the drop.
    Late(P),
}

/// The frames a joining stage replica is gathering.
pub(crate) struct JoinTable<P> {
    n_inputs: usize,
    timeout: Duration,
    /// Places of each input edge (the stage's `mailbox`).
    capacity: usize,
    /// Places given back early because one frame had more parts than `capacity`.
    pub released: u64,
    pending: BTreeMap<FrameId, Pending<P>>,
    /// Frames already emitted.
    done: BTreeSet<FrameId>,
    /// Highest sequence number per stream delivered on each input (data only).
    high: Vec<HashMap<u32, u64>>,
    /// When each input last delivered a part or a gap (the timeout waits while the
    /// input a frame misses is still moving).
    last_arrival: Vec<Option<Instant>>,
    emitted: usize,
}

impl<P> JoinTable<P> {
    /// A table for `n_inputs` inputs of `capacity` places each, emitting incomplete
    /// frames after `timeout`.
    pub fn new(n_inputs: usize, timeout: Duration, capacity: usize) -> Self {
        JoinTable {
            n_inputs: n_inputs.max(1),
            timeout,
            capacity: capacity.max(1),
            released: 0,
            pending: BTreeMap::new(),
            done: BTreeSet::new(),
            high: vec![HashMap::new(); n_inputs.max(1)],
            last_arrival: vec![None; n_inputs.max(1)],
            emitted: 0,
        }
    }

    /// Frames waiting now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// A part of a frame arrived on `input`.
    pub fn part(&mut self, input: usize, msg: Message, place: P) -> Arrival<P> {
        let input = input.min(self.n_inputs - 1);
        self.last_arrival[input] = Some(Instant::now());
        let (id, part) = (msg.id, msg.part);
        let high = self.high[input].entry(id.stream).or_insert(id.seq);
        *high = (*high).max(id.seq);
        if self.done.contains(&id) {
            return Arrival::Late(place);
        }
        let n = self.n_inputs;
        let entry = self.pending.entry(id).or_insert_with(|| Pending::new(n));
        entry.announce(input, part.count);
        let idx = (part.index as usize).min(entry.parts[input].len() - 1);
        if entry.parts[input][idx].is_some() {
            return Arrival::Late(place);
        }
        entry.parts[input][idx] = Some(msg);
        entry.held[input].push(place);
        let ready = self.take_if_complete(id);
        if ready.is_none() {
            self.release_if_stuck(id, input);
        }
        Arrival::Kept(ready)
    }

    /// A gap notice: `part` of frame `id` will not come on `input`.
    pub fn gap(&mut self, input: usize, id: FrameId, part: Part) -> Option<Ready<P>> {
        let input = input.min(self.n_inputs - 1);
        self.last_arrival[input] = Some(Instant::now());
        if self.done.contains(&id) {
            return None;
        }
        let n = self.n_inputs;
        let entry = self.pending.entry(id).or_insert_with(|| Pending::new(n));
        if part.count <= 1 {
            entry.whole_lost[input] = true;
        } else {
            entry.announce(input, part.count);
            entry.lost[input].insert(part.index);
        }
        self.take_if_complete(id)
    }

    /// Frames whose timeout has passed (`all`: every frame, at the end of the stream).
    pub fn due(&mut self, all: bool) -> Vec<Ready<P>> {
        let now = Instant::now();
        let last = &self.last_arrival;
        let ids: Vec<FrameId> = self
            .pending
            .iter()
            .filter(|(_, p)| all || now.duration_since(p.waiting_since(last)) >= self.timeout)
            .map(|(k, _)| *k)
            .collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// A frame with more parts on one input than the input has places would hold every
    /// place and wait for a part its producer can never send (under `block`, and under
    /// `drop_oldest` with nothing queued to evict). Its places on that input are given
    /// back; the join keeps the parts, so the frame is bounded by its part count.
    fn release_if_stuck(&mut self, id: FrameId, input: usize) {
        let Some(entry) = self.pending.get_mut(&id) else { return };
        if entry.held[input].len() >= self.capacity {
            self.released += entry.held[input].len() as u64;
            entry.held[input].clear();
        }
    }

    fn take_if_complete(&mut self, id: FrameId) -> Option<Ready<P>> {
        if self.pending.get(&id).is_some_and(Pending::complete) {
            self.take(id)
        } else {
            None
        }
    }

    fn take(&mut self, id: FrameId) -> Option<Ready<P>> {
        let mut p = self.pending.remove(&id)?;
        for parts in p.parts.iter_mut() {
            if parts.is_empty() {
                parts.push(None);
            }
        }
        self.done.insert(id);
        self.emitted += 1;
        if self.emitted.is_multiple_of(PRUNE_EVERY) || self.done.len() > DONE_CAP {
            self.prune();
        }
        Some(Ready {
            joined: Joined { id, parts: p.parts },
            held: p.held.into_iter().flatten().collect(),
        })
    }

    /// Forgets ids no part can come for any more; keeps at most [`DONE_CAP`].
    fn prune(&mut self) {
        let high = &self.high;
        self.done
            .retain(|id| !high.iter().all(|h| h.get(&id.stream).is_some_and(|&s| s > id.seq)));
        while self.done.len() > DONE_CAP {
            self.done.pop_first();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::message::Fields;
    use std::time::SystemTime;

    fn msg(seq: u64, part: Part) -> Message {
        Message {
            id: FrameId { stream: 0, seq },
            part,
            captured: SystemTime::now(),
            born: Instant::now(),
            fields: Fields::new(),
        }
    }

    fn kept(a: Arrival<u32>) -> Option<Ready<u32>> {
        match a {
            Arrival::Kept(r) => r,
            Arrival::Late(_) => panic!("refused as late"),
        }
    }

    #[test]
    fn a_frame_with_every_part_is_ready_once() {
        let mut t = JoinTable::new(2, Duration::from_secs(60), 4);
        assert!(kept(t.part(0, msg(0, Part::WHOLE), 1)).is_none());
        let r = kept(t.part(1, msg(0, Part::WHOLE), 2)).expect("complete");
        assert_eq!(r.joined.lost(), 0);
        assert_eq!(r.held, vec![1, 2]);
        assert!(matches!(t.part(1, msg(0, Part::WHOLE), 3), Arrival::Late(3)));
    }

    #[test]
    fn join_late_part_after_timeout_is_refused_not_a_second_entry() {
        let mut t = JoinTable::new(2, Duration::ZERO, 4);
        assert!(kept(t.part(0, msg(5, Part::WHOLE), 1)).is_none());
        let due = t.due(false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].joined.lost(), 1);
        assert!(matches!(t.part(1, msg(5, Part::WHOLE), 2), Arrival::Late(2)));
        assert_eq!(t.waiting(), 0, "no second entry for frame 5");
        assert!(t.due(true).is_empty());
    }

    #[test]
    fn the_timeout_waits_while_the_missing_input_is_still_delivering() {
        let timeout = Duration::from_millis(1000);
        let mut t = JoinTable::new(2, timeout, 8);
        // Frames 0..3 arrive on input 0 at once; input 1 (the slow branch) delivers
        // frame 0, 1, 2 every 400 ms: the last has waited longer than the timeout
        // since its first part, but its input was never silent that long.
        for seq in 0..3 {
            assert!(kept(t.part(0, msg(seq, Part::WHOLE), 0)).is_none());
        }
        for seq in 0..3 {
            std::thread::sleep(Duration::from_millis(400));
            assert!(t.due(false).is_empty(), "frame {seq} expired while input 1 was moving");
            let r = kept(t.part(1, msg(seq, Part::WHOLE), 1)).expect("complete");
            assert_eq!(r.joined.lost(), 0);
        }
        // Input 1 goes silent: the next frame expires once the timeout has passed.
        assert!(kept(t.part(0, msg(3, Part::WHOLE), 0)).is_none());
        std::thread::sleep(timeout + Duration::from_millis(50));
        let due = t.due(false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].joined.lost(), 1);
    }

    #[test]
    fn join_gap_completes_the_frame_at_once() {
        let mut t = JoinTable::new(2, Duration::from_secs(60), 4);
        assert!(kept(t.part(0, msg(0, Part::WHOLE), 1)).is_none());
        let r = t.gap(1, FrameId { stream: 0, seq: 0 }, Part::WHOLE).expect("ready");
        assert_eq!(r.joined.lost(), 1);
        assert_eq!(r.held, vec![1], "the held place comes back with the frame");
        // A gap first, then the part: ready on the part.
        assert!(t.gap(0, FrameId { stream: 0, seq: 1 }, Part::WHOLE).is_none());
        assert!(kept(t.part(1, msg(1, Part::WHOLE), 2)).is_some());
    }

    #[test]
    fn join_gap_of_one_tile_loses_that_tile_only() {
        let mut t = JoinTable::new(1, Duration::from_secs(60), 4);
        let part = |index| Part { index, count: 3 };
        assert!(kept(t.part(0, msg(0, part(0)), 0)).is_none());
        assert!(t.gap(0, FrameId { stream: 0, seq: 0 }, part(1)).is_none());
        let r = kept(t.part(0, msg(0, part(2)), 2)).expect("ready");
        assert_eq!(r.joined.lost(), 1);
        assert!(r.joined.parts[0][1].is_none());
    }

    #[test]
    fn join_with_more_parts_than_places_gives_its_places_back() {
        let mut t = JoinTable::new(1, Duration::from_secs(60), 3);
        let part = |index| Part { index, count: 4 };
        for k in 0..3 {
            assert!(kept(t.part(0, msg(0, part(k)), k)).is_none());
        }
        assert_eq!(t.released, 3, "three places of a four-part frame: all given back");
        let r = kept(t.part(0, msg(0, part(3)), 3)).expect("complete");
        assert_eq!(r.joined.lost(), 0);
        assert_eq!(r.held, vec![3]);
    }

    #[test]
    fn remembered_ids_are_forgotten_once_every_input_moved_on() {
        let mut t = JoinTable::new(1, Duration::from_secs(60), 4);
        for seq in 0..(PRUNE_EVERY as u64 * 2) {
            assert!(kept(t.part(0, msg(seq, Part::WHOLE), 0)).is_some());
        }
        assert!(t.done.len() <= PRUNE_EVERY, "{} ids remembered", t.done.len());
    }
}
