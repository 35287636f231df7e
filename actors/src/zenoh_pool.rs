//! Edges into and out of a pool of machines over zenoh (issue 22): the ends
//! [`crate::zenoh_link::ZenohBridges`] picks when a crossing edge has `to_pool` or
//! `from_pool`.
//!
//! # Protocol
//! Keys under `dataflow/<graph>/pool/<pool>/…`, per crossing edge `<from>/<port>/<to>/<input>`:
//! - **Into a pool.** Each member declares a liveliness token `in/<edge>/member/<m>`,
//!   subscribes `in/<edge>/member/<m>/data` and publishes [`Credit`] (its window and a
//!   cumulative acknowledgement of the producer's epoch) on `in/<edge>/ack`. The producer's
//!   [`PoolSender`] keeps a window per member and sends each frame to the member with the
//!   most free places (ties: least recently used), so a slow member gets a share in
//!   proportion to its speed. Before a frame goes to a member its id is announced on
//!   `entered/<edge>` ([`Entered`]) so the consumer knows exactly what to expect.
//! - **Failover.** A member is dead when its token goes, or when it holds frames and
//!   acknowledged none for the pool's `ack_timeout` (a slow stage that keeps finishing
//!   frames does not trip it): its unacknowledged frames go to the front of the queue
//!   for the others (`dataflow_link_resent_total`).
//! - **A member acknowledges a frame only when the frame has left it**: the outputs it
//!   made were acknowledged by the consumer on every edge out of the pool ([`Book`]), or
//!   it made none (then the consumer is told on `out/<edge>/skip`). So `kill -9` of a
//!   member loses nothing; the consumer discards the duplicates a slow-but-alive member
//!   still delivers (`dataflow_link_duplicates_total`).
//! - **Out of a pool.** Each member is an ordinary link transmitter on
//!   `out/<edge>/from/<m>` (with a liveliness token there); the consumer's
//!   [`MergeReceiver`] takes every member, keeps the first copy of a frame, and releases
//!   frames in frame-id order per stream, waiting only for ids announced as entered.
//! - **End of stream.** The producer sends `Eos` to every member after its last
//!   acknowledgement and announces `Ended` on `entered/<edge>`; the consumer ends when
//!   every pool input ended and every id that entered was released or skipped.
//! - **Elastic.** A member may join at any time (its first [`Credit`] brings it in);
//!   Ctrl-C on a member sends window 0, finishes what it holds, then leaves. `min`
//!   members must be present before frames flow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver as ChanRx, RecvTimeoutError, Sender as ChanTx};
use dataflow_engine::{
    CrossingEdge, FrameId, Input, Message, Outputs, PoolSpec, Source, SourceItem, Stage, StageError, StopFlag, WhenFull,
};
use dataflow_monitoring::names;
use serde::{Deserialize, Serialize};
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zenoh::Wait;

use crate::wire;
use crate::zenoh_link::{ack_loop, chunk, link_error, random_id, AckEvent, Header};

/// `dataflow/<graph>/pool/<pool>`.
pub(crate) fn pool_prefix(graph: &str, pool: &str) -> String {
    format!("dataflow/{}/pool/{}", chunk(graph), chunk(pool))
}

/// `<from>/<port>/<to>/<input>` of a crossing edge.
fn edge_part(edge: &CrossingEdge) -> String {
    format!(
        "{}/{}/{}/{}",
        chunk(&edge.from),
        chunk(&edge.port),
        chunk(&edge.to),
        edge.input
    )
}

/// The key prefix of a member's out-of-pool link: `…/out/<edge>/from/<member>`.
pub(crate) fn out_key(edge: &CrossingEdge, pool: &PoolSpec, member: &str) -> String {
    format!(
        "{}/out/{}/from/{}",
        pool_prefix(&edge.graph, &pool.name),
        edge_part(edge),
        chunk(member)
    )
}

pub(crate) fn skip_key(edge: &CrossingEdge, pool: &PoolSpec) -> String {
    format!("{}/out/{}/skip", pool_prefix(&edge.graph, &pool.name), edge_part(edge))
}

/// Attachment of a sample sent into a pool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum InHeader {
    Frame {
        epoch: u64,
        seq: u64,
        stream: u32,
        frame: u64,
    },
    Eos {
        epoch: u64,
        seq: u64,
    },
}

/// A member's credit, published on `in/<edge>/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credit {
    member: String,
    /// The member process (random): a restarted member is a new one.
    rx: u64,
    /// Every message of the producer's `epoch` below `next` has left the member.
    epoch: u64,
    next: u64,
    /// Frames the member takes at once; 0 when it leaves.
    window: u32,
}

/// What the producer tells the consumer on `entered/<edge>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Entered {
    /// These frames were sent into the pool.
    Frames { ids: Vec<(u32, u64)> },
    /// No more frames come on this edge.
    Ended { edge: String, frames: u64 },
    /// Ctrl-C on the consumer: end the sources.
    Stop,
    /// The consumer `consumer` released (or skipped) this many frames so far.
    Released { consumer: String, frames: u64 },
}

/// Frames a member made no output for on one edge out of the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Skip {
    ids: Vec<(u32, u64)>,
}

fn fid(id: FrameId) -> (u32, u64) {
    (id.stream, id.seq)
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, StageError> {
    postcard::to_stdvec(v).map_err(|e| link_error(key, "cannot encode a control message", e))
}

fn pool_labels(edge: &CrossingEdge, member: &str) -> [(&'static str, String); 3] {
    [
        (names::LABEL_FROM, edge.from.clone()),
        (names::LABEL_TO, edge.to.clone()),
        (names::LABEL_MEMBER, member.to_string()),
    ]
}

// ---------------------------------------------------------------------------
// The member's book: which received frames have left the member.

/// How a member acknowledges one received frame to the producer.
struct AckTo {
    events: ChanTx<AckEvent>,
    epoch: u64,
    seq: u64,
}

#[derive(Default)]
struct Held {
    acks: Vec<AckTo>,
    /// When the engine freed the frame's places on the member's edges, and the how-many-th
    /// release that was on this member.
    released: Option<(Instant, u64)>,
    /// Outputs handed to an out-of-pool link and not acknowledged by the consumer yet.
    outstanding: usize,
    /// Out-of-pool links (by index) that carried an output of the frame.
    seen: BTreeSet<usize>,
}

/// One edge out of the pool, as the member's book sees it.
struct OutEnd {
    key: String,
    skip: zenoh::pubsub::Publisher<'static>,
}

#[derive(Default)]
struct BookInner {
    frames: HashMap<(u32, u64), Held>,
    outs: Vec<OutEnd>,
    /// Releases so far.
    releases: u64,
    /// The latest release number of a frame whose output an out-of-pool link took.
    latest_out: u64,
}

/// Per pool and member process: ties the frames the pool receivers took in to the
/// outputs the member's out-of-pool links sent, so that a frame is acknowledged to the
/// producer only once it has left the member.
#[derive(Default)]
pub(crate) struct Book {
    inner: Mutex<BookInner>,
}

/// A frame released with no output is taken as one that made none after this long
/// with every out-of-pool link idle.
const NO_OUTPUT_AFTER: Duration = Duration::from_millis(200);

impl Book {
    /// Registers an out-of-pool link; returns its index.
    pub(crate) fn add_out(&self, key: String, skip: zenoh::pubsub::Publisher<'static>) -> usize {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.outs.push(OutEnd { key, skip });
        b.outs.len() - 1
    }

    fn received(&self, id: (u32, u64), ack: AckTo) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.frames.entry(id).or_default().acks.push(ack);
    }

    fn released(&self, id: (u32, u64)) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.releases += 1;
        let n = b.releases;
        let mut out = None;
        if let Some(h) = b.frames.get_mut(&id) {
            h.released = Some((Instant::now(), n));
            out = (!h.seen.is_empty()).then_some(n);
        }
        if let Some(n) = out {
            b.latest_out = b.latest_out.max(n);
        }
        Self::settle(&mut b, id, false);
    }

    /// An out-of-pool link took an output of frame `id`.
    pub(crate) fn out_sent(&self, out: usize, id: FrameId) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut released = None;
        if let Some(h) = b.frames.get_mut(&fid(id)) {
            h.outstanding += 1;
            h.seen.insert(out);
            released = h.released.map(|(_, n)| n);
        }
        if let Some(n) = released {
            b.latest_out = b.latest_out.max(n);
        }
    }

    /// The consumer acknowledged an output of frame `id`.
    pub(crate) fn out_acked(&self, id: FrameId) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = b.frames.get_mut(&fid(id)) {
            h.outstanding = h.outstanding.saturating_sub(1);
        }
        Self::settle(&mut b, fid(id), false);
    }

    /// Frames still held (received and not acknowledged to the producer).
    fn held(&self) -> usize {
        self.inner.lock().map(|b| b.frames.len()).unwrap_or(0)
    }

    /// Settles released frames that made no output (see [`NO_OUTPUT_AFTER`]).
    fn tick(&self) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<_> = b
            .frames
            .iter()
            .filter(|(_, h)| h.released.is_some() && h.seen.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            Self::settle(&mut b, id, true);
        }
    }

    /// Acknowledges frame `id` to the producer when it has left the member.
    fn settle(b: &mut BookInner, id: (u32, u64), timer: bool) {
        let Some(h) = b.frames.get(&id) else {
            return;
        };
        let Some((released, number)) = h.released else {
            return;
        };
        if h.outstanding > 0 {
            return;
        }
        if h.seen.is_empty() && !b.outs.is_empty() {
            // No output yet. The engine puts a stage's outputs on the next edge before it
            // frees the input's place, and an out link takes them in order: so the frame
            // made none when the output of a frame released after it went out already, or
            // (a fallback) when every out link has been idle a while since its release.
            let later = b.latest_out > number;
            let idle = b.frames.values().all(|h| h.outstanding == 0);
            if !(later || (timer && idle && released.elapsed() >= NO_OUTPUT_AFTER)) {
                return;
            }
        }
        let Some(h) = b.frames.remove(&id) else {
            return;
        };
        for (i, out) in b.outs.iter().enumerate() {
            if !h.seen.contains(&i) {
                if let Ok(bytes) = postcard::to_stdvec(&Skip { ids: vec![id] }) {
                    if let Err(e) = out.skip.put(bytes).wait() {
                        tracing::warn!(link = %out.key, "cannot tell the consumer that frame {}:{} made no output: {e}", id.0, id.1);
                    }
                }
            }
        }
        for a in h.acks {
            let _ = a.events.send(AckEvent::Done {
                epoch: a.epoch,
                seq: a.seq,
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Producer: the pool sender.

/// One frame on its way into the pool.
struct Pending {
    id: FrameId,
    body: zenoh::bytes::ZBytes,
    /// Announced to the consumer already (a re-sent frame is not announced again).
    announced: bool,
}

struct InFlight {
    frame: Pending,
}

/// The producer's view of one member process.
struct Member {
    name: String,
    rx: u64,
    window: usize,
    next_seq: u64,
    inflight: BTreeMap<u64, InFlight>,
    last_used: Instant,
    /// When it last acknowledged a frame, or got one while holding none: a member
    /// holding frames that made no progress for `ack_timeout` is taken for dead (a slow
    /// stage does not trip it as long as it keeps finishing frames).
    progress: Instant,
    publisher: zenoh::pubsub::Publisher<'static>,
    /// Sequence number of the end of stream sent to it.
    eos: Option<u64>,
    credits: metrics::Gauge,
    sent: metrics::Counter,
    resent: metrics::Counter,
}

impl Member {
    fn free(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }
}

enum InEvent {
    Credit(Credit),
    Token { member: String, alive: bool },
    Stop,
    Released { consumer: String, frames: u64 },
}

/// The producer's end of an edge into a pool: dispatches each frame to one member.
pub(crate) struct PoolSender {
    key: String,
    edge: CrossingEdge,
    pool: PoolSpec,
    session: zenoh::Session,
    machine: String,
    congestion: CongestionControl,
    events: ChanRx<InEvent>,
    _subs: Vec<zenoh::pubsub::Subscriber<()>>,
    entered: zenoh::pubsub::Publisher<'static>,
    epoch: u64,
    members: BTreeMap<String, Member>,
    /// Member processes declared dead (their late credits are ignored).
    dead: HashSet<u64>,
    /// Members declared dead by `ack_timeout` whose process may still run: they get the
    /// end of stream too, so that they end.
    zombies: BTreeMap<String, Member>,
    /// Members whose liveliness token zenoh reports.
    tokens: HashSet<String>,
    queue: VecDeque<Pending>,
    frames: u64,
    /// Frames announced as entered, and per consumer the frames it released: the
    /// consumer acknowledges frames on arrival, so this bounds what waits there for
    /// its turn (a frame sent again is not counted twice).
    announced: u64,
    released: HashMap<String, u64>,
    started: bool,
    last_notice: Option<Instant>,
    stop: StopFlag,
    members_gauge: metrics::Gauge,
}

impl PoolSender {
    pub(crate) fn open(
        edge: &CrossingEdge,
        pool: &PoolSpec,
        session: &zenoh::Session,
        machine: &str,
        stop: &StopFlag,
    ) -> Result<PoolSender, StageError> {
        let prefix = pool_prefix(&edge.graph, &pool.name);
        let key = format!("{prefix}/in/{}", edge_part(edge));
        let (tx, events) = crossbeam_channel::unbounded();
        let t1 = tx.clone();
        let ack_key = format!("{key}/ack");
        let k1 = ack_key.clone();
        let acks = session
            .declare_subscriber(ack_key.clone())
            .callback(move |s: zenoh::sample::Sample| {
                match postcard::from_bytes::<Credit>(&s.payload().to_bytes()) {
                    Ok(c) => {
                        let _ = t1.send(InEvent::Credit(c));
                    }
                    Err(e) => tracing::warn!(link = %k1, "a malformed credit was ignored: {e}; check that every machine runs the same dataflow version"),
                }
            })
            .wait()
            .map_err(|e| link_error(&ack_key, "cannot subscribe to credits", e))?;
        let t2 = tx.clone();
        let member_key = format!("{key}/member/*");
        let tokens = session
            .liveliness()
            .declare_subscriber(member_key.clone())
            .history(true)
            .callback(move |s: zenoh::sample::Sample| {
                let member = s.key_expr().as_str().rsplit('/').next().unwrap_or_default().to_string();
                let alive = s.kind() == SampleKind::Put;
                let _ = t2.send(InEvent::Token { member, alive });
            })
            .wait()
            .map_err(|e| link_error(&member_key, "cannot watch the pool's members", e))?;
        let entered_key = format!("{prefix}/entered/{}", edge_part(edge));
        let stop_key = format!("{prefix}/stop/**");
        let stops = session
            .declare_subscriber(stop_key.clone())
            .callback(
                move |s: zenoh::sample::Sample| match postcard::from_bytes::<Entered>(&s.payload().to_bytes()) {
                    Ok(Entered::Stop) => {
                        let _ = tx.send(InEvent::Stop);
                    }
                    Ok(Entered::Released { consumer, frames }) => {
                        let _ = tx.send(InEvent::Released { consumer, frames });
                    }
                    _ => {}
                },
            )
            .wait()
            .map_err(|e| link_error(&stop_key, "cannot subscribe", e))?;
        let entered = session
            .declare_publisher(entered_key.clone())
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| link_error(&entered_key, "cannot declare the publisher", e))?;
        let congestion = match edge.when_full {
            WhenFull::Block => CongestionControl::Block,
            WhenFull::DropNewest | WhenFull::DropOldest => CongestionControl::Drop,
        };
        Ok(PoolSender {
            key,
            edge: edge.clone(),
            pool: pool.clone(),
            session: session.clone(),
            machine: machine.to_string(),
            congestion,
            events,
            _subs: vec![acks, tokens, stops],
            entered,
            epoch: random_id(),
            members: BTreeMap::new(),
            dead: HashSet::new(),
            zombies: BTreeMap::new(),
            tokens: HashSet::new(),
            queue: VecDeque::new(),
            frames: 0,
            announced: 0,
            released: HashMap::new(),
            started: false,
            last_notice: None,
            stop: stop.clone(),
            members_gauge: metrics::gauge!(names::POOL_MEMBERS, names::LABEL_POOL => pool.name.clone()),
        })
    }

    fn on_event(&mut self, ev: InEvent) {
        match ev {
            InEvent::Credit(c) => self.on_credit(c),
            InEvent::Token { member, alive } => {
                if alive {
                    self.tokens.insert(member);
                } else {
                    self.tokens.remove(&member);
                    self.zombies.remove(&member);
                    if self.members.contains_key(&member) {
                        self.fail(&member, "its liveliness token went (process ended or connection lost)");
                    }
                }
            }
            InEvent::Released { consumer, frames } => {
                let r = self.released.entry(consumer).or_insert(0);
                *r = (*r).max(frames);
            }
            InEvent::Stop => {
                if !self.stop.is_set() {
                    tracing::warn!(link = %self.key, "the consumer `{}` asked to stop (Ctrl-C there): ending the sources here", self.edge.to);
                    self.stop.set();
                }
            }
        }
    }

    fn on_credit(&mut self, c: Credit) {
        if self.dead.contains(&c.rx) {
            return;
        }
        if self.members.get(&c.member).is_some_and(|m| m.rx != c.rx) {
            self.fail(&c.member, "it restarted (a new process took its name)");
        }
        if !self.members.contains_key(&c.member) {
            if c.window == 0 {
                return;
            }
            let data_key = format!("{}/member/{}/data", self.key, c.member);
            let publisher = match self
                .session
                .declare_publisher(data_key.clone())
                .congestion_control(self.congestion)
                .wait()
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(link = %data_key, "cannot declare the publisher for member `{}`: {e}", c.member);
                    return;
                }
            };
            let l = pool_labels(&self.edge, &c.member);
            tracing::info!(link = %self.key, pool = %self.pool.name, member = %c.member, window = c.window,
                "member `{}` joined pool `{}`", c.member, self.pool.name);
            self.members.insert(
                c.member.clone(),
                Member {
                    name: c.member.clone(),
                    rx: c.rx,
                    window: 0,
                    next_seq: 0,
                    inflight: BTreeMap::new(),
                    last_used: Instant::now() - Duration::from_secs(3600),
                    progress: Instant::now(),
                    publisher,
                    eos: None,
                    credits: metrics::gauge!(names::POOL_CREDITS, &l),
                    sent: metrics::counter!(names::POOL_SENT, &l),
                    resent: metrics::counter!(names::LINK_RESENT, &l),
                },
            );
            self.members_gauge.set(self.members.len() as f64);
        }
        let epoch = self.epoch;
        let Some(m) = self.members.get_mut(&c.member) else {
            return;
        };
        if c.window == 0 && m.window > 0 {
            tracing::info!(link = %self.key, member = %m.name, held = m.inflight.len(),
                "member `{}` is leaving pool `{}`: no more frames go to it", m.name, self.pool.name);
        }
        m.window = c.window as usize;
        if c.epoch == epoch {
            let before = m.inflight.len();
            m.inflight = m.inflight.split_off(&c.next);
            if m.inflight.len() < before {
                m.progress = Instant::now();
            }
            if m.eos.is_some_and(|s| s < c.next) {
                m.eos = None;
                m.window = 0;
            }
        }
        m.credits.set(m.free() as f64);
    }

    /// Takes member `name` out; its unacknowledged frames go to the front of the queue.
    fn fail(&mut self, name: &str, why: &str) {
        let Some(mut m) = self.members.remove(name) else {
            return;
        };
        self.dead.insert(m.rx);
        let n = m.inflight.len();
        for (_, f) in std::mem::take(&mut m.inflight).into_iter().rev() {
            self.queue.push_front(f.frame);
        }
        m.resent.increment(n as u64);
        m.credits.set(0.0);
        self.members_gauge.set(self.members.len() as f64);
        if n > 0 || m.eos.is_none() {
            tracing::warn!(link = %self.key, pool = %self.pool.name, member = %name, resend = n,
                "member `{name}` of pool `{}` is gone ({why}): {n} frame(s) it held go to the other members",
                self.pool.name);
        }
        if self.tokens.contains(name) {
            self.zombies.insert(name.to_string(), m);
        } else {
            self.zombies.remove(name);
        }
    }

    /// Declares dead every member that holds frames and acknowledged none for
    /// `ack_timeout`.
    fn check_timeouts(&mut self) {
        let limit = self.pool.ack_timeout;
        let late: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.inflight.is_empty() && m.progress.elapsed() > limit)
            .map(|m| m.name.clone())
            .collect();
        for name in late {
            let why = format!(
                "no acknowledgement for {} ms, the pool's ack_timeout_ms",
                limit.as_millis()
            );
            self.fail(&name, &why);
        }
    }

    fn pump(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
        }
        self.check_timeouts();
    }

    /// Whether frames may flow: `min` members and the consumer are there.
    fn ready(&mut self) -> bool {
        if self.started {
            return true;
        }
        let present = self.members.values().filter(|m| m.window > 0).count();
        let consumer = self
            .entered
            .matching_status()
            .wait()
            .map(|s| s.matching())
            .unwrap_or(false);
        if present >= self.pool.min.max(1) && consumer {
            tracing::info!(link = %self.key, pool = %self.pool.name, members = present, "pool `{}` is ready: sending frames", self.pool.name);
            self.started = true;
            return true;
        }
        let due = self.last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            self.last_notice = Some(Instant::now());
            let what = if consumer {
                String::new()
            } else {
                format!(" and for the consumer `{}` on `{}`", self.edge.to, self.edge.to_machine)
            };
            tracing::warn!(
                "waiting for {present} of min {} members of pool {}{what} (this is machine `{}`): start \
                 `dataflow run GRAPH --machine <member>` on the pool's machines",
                self.pool.min.max(1),
                self.pool.name,
                self.machine
            );
        }
        false
    }

    /// Sends queued frames to the members with free places.
    fn dispatch(&mut self) -> Result<(), StageError> {
        if !self.ready() {
            return Ok(());
        }
        while !self.queue.is_empty() {
            let Some(name) = self
                .members
                .values()
                .filter(|m| m.free() > 0 && m.eos.is_none())
                .max_by(|a, b| a.free().cmp(&b.free()).then(b.last_used.cmp(&a.last_used)))
                .map(|m| m.name.clone())
            else {
                self.notice_no_member();
                return Ok(());
            };
            if self.queue.front().is_some_and(|f| !f.announced) && self.in_pool() >= self.in_pool_limit() {
                return Ok(());
            }
            let Some(mut frame) = self.queue.pop_front() else {
                return Ok(());
            };
            if !frame.announced {
                self.announced += 1;
                let ids = vec![fid(frame.id)];
                let bytes = encode(&self.key, &Entered::Frames { ids })?;
                self.entered
                    .put(bytes)
                    .wait()
                    .map_err(|e| link_error(&self.key, "cannot announce a frame", e))?;
                frame.announced = true;
            }
            let epoch = self.epoch;
            let Some(m) = self.members.get_mut(&name) else {
                self.queue.push_front(frame);
                return Ok(());
            };
            let header = InHeader::Frame {
                epoch,
                seq: m.next_seq,
                stream: frame.id.stream,
                frame: frame.id.seq,
            };
            let att = encode(&self.key, &header)?;
            m.publisher
                .put(frame.body.clone())
                .attachment(att)
                .wait()
                .map_err(|e| link_error(&self.key, "cannot publish", e))?;
            m.sent.increment(1);
            m.last_used = Instant::now();
            if m.inflight.is_empty() {
                m.progress = Instant::now();
            }
            m.inflight.insert(m.next_seq, InFlight { frame });
            m.next_seq += 1;
            m.credits.set(m.free() as f64);
        }
        Ok(())
    }

    /// Says so every 10 s while frames wait and no member takes any (all left or died).
    fn notice_no_member(&mut self) {
        if self.members.values().any(|m| m.window > 0) {
            return;
        }
        if self.last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            self.last_notice = Some(Instant::now());
            tracing::warn!(
                "pool `{}` has no member taking frames: {} frame(s) wait here (this is machine `{}`); start \
                 `dataflow run GRAPH --machine <member>` on one of the pool's machines",
                self.pool.name,
                self.queue.len(),
                self.machine
            );
        }
    }

    /// Frames announced and not yet released by the slowest consumer.
    fn in_pool(&self) -> u64 {
        let released = self.released.values().copied().min().unwrap_or(0);
        self.announced.saturating_sub(released)
    }

    /// Frames that may be in the pool at once: 4 times the members' windows, at least 16.
    fn in_pool_limit(&self) -> u64 {
        let windows: usize = self.members.values().map(|m| m.window).sum();
        (windows as u64 * 4).max(16)
    }

    fn held(&self) -> usize {
        self.queue.len() + self.members.values().map(|m| m.inflight.len()).sum::<usize>()
    }

    /// Waits a little for credits; fails when the run is stopped while frames are held
    /// and no member is there to take them.
    fn wait_step(&mut self, what: &str) -> Result<(), StageError> {
        match self.events.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => self.on_event(ev),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(link_error(&self.key, "credits stopped", "subscriber closed"))
            }
        }
        self.pump();
        if self.stop.is_set() && self.members.is_empty() && self.held() > 0 {
            return Err(StageError::new(
                "link",
                format!(
                    "stopped while no member of pool `{}` was there ({}): {what} not delivered",
                    self.pool.name, self.key
                ),
            ));
        }
        self.dispatch()
    }

    /// End of stream: to every member once all frames are acknowledged.
    fn end(&mut self) -> Result<(), StageError> {
        while self.held() > 0 {
            let held = self.held();
            self.wait_step(&format!("{held} frame(s)"))?;
        }
        let epoch = self.epoch;
        for m in self.members.values_mut().chain(self.zombies.values_mut()) {
            let att = encode(&self.key, &InHeader::Eos { epoch, seq: m.next_seq })?;
            m.publisher
                .put(zenoh::bytes::ZBytes::new())
                .attachment(att)
                .wait()
                .map_err(|e| link_error(&self.key, "cannot publish", e))?;
            m.eos = Some(m.next_seq);
            m.next_seq += 1;
        }
        let ended = Entered::Ended {
            edge: edge_part(&self.edge),
            frames: self.frames,
        };
        self.entered
            .put(encode(&self.key, &ended)?)
            .wait()
            .map_err(|e| link_error(&self.key, "cannot announce the end of stream", e))?;
        // Members acknowledge the end of stream (or go); bounded by the ack timeout.
        let t0 = Instant::now();
        while self.members.values().any(|m| m.eos.is_some()) && t0.elapsed() < self.pool.ack_timeout * 2 {
            self.wait_step("end of stream")?;
        }
        tracing::info!(link = %self.key, pool = %self.pool.name, frames = self.frames, "end of stream sent into pool `{}`", self.pool.name);
        Ok(())
    }
}

impl Stage for PoolSender {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let body = wire::encode(&msg).map_err(|e| StageError::new("link", format!("{}: {e}", self.key)))?;
        self.frames += 1;
        self.queue.push_back(Pending {
            id: msg.id,
            body: zenoh::bytes::ZBytes::from(body),
            announced: false,
        });
        self.pump();
        self.dispatch()?;
        while !self.queue.is_empty() {
            self.wait_step(&format!("frame {}", msg.id))?;
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        self.pump();
        self.dispatch()?;
        self.end()
    }
}

// ---------------------------------------------------------------------------
// Member: the pool receiver.

/// A member's end of an edge into a pool: a source of the frames the producer sends it.
pub(crate) struct PoolReceiver {
    key: String,
    pool: String,
    member: String,
    data: ChanRx<(InHeader, Bytes)>,
    _data_sub: zenoh::pubsub::Subscriber<()>,
    _token: zenoh::liveliness::LivelinessToken,
    events: ChanTx<AckEvent>,
    credit: ChanTx<u32>,
    book: Arc<Book>,
    /// Producer epochs with the sequence numbers seen (duplicates are skipped).
    seen: HashMap<u64, BTreeSet<u64>>,
    leaving: Option<Instant>,
    last_data: Instant,
    got_frames: bool,
    started: Instant,
    last_notice: Option<Instant>,
}

impl PoolReceiver {
    pub(crate) fn open(
        edge: &CrossingEdge,
        pool: &PoolSpec,
        session: &zenoh::Session,
        member: &str,
        book: Arc<Book>,
        threads: &Mutex<Vec<std::thread::JoinHandle<()>>>,
    ) -> Result<PoolReceiver, StageError> {
        let key = format!("{}/in/{}", pool_prefix(&edge.graph, &pool.name), edge_part(edge));
        let token_key = format!("{key}/member/{}", chunk(member));
        let data_key = format!("{token_key}/data");
        let (dtx, data) = crossbeam_channel::unbounded();
        let data_sub = session
            .declare_subscriber(data_key.clone())
            .callback(move |s: zenoh::sample::Sample| {
                let Some(h) = s
                    .attachment()
                    .and_then(|a| postcard::from_bytes::<InHeader>(&a.to_bytes()).ok())
                else {
                    tracing::warn!(key = %s.key_expr(), "a sample without a readable header was ignored");
                    return;
                };
                let _ = dtx.send((h, Bytes::from(s.payload().to_bytes().into_owned())));
            })
            .wait()
            .map_err(|e| link_error(&data_key, "cannot subscribe", e))?;
        let ack_key = format!("{key}/ack");
        let publisher = session
            .declare_publisher(ack_key.clone())
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| link_error(&ack_key, "cannot declare the credit publisher", e))?;
        let (events, erx) = crossbeam_channel::unbounded();
        let (credit, crx) = crossbeam_channel::unbounded();
        let window = edge.mailbox.max(1) as u32;
        let (name, rx) = (chunk(member), random_id());
        let thread = std::thread::Builder::new()
            .name(format!("credit {}", edge.to))
            .spawn(move || credit_loop(publisher, erx, crx, name, rx, window))
            .map_err(|e| link_error(&ack_key, "cannot start the credit thread", e))?;
        if let Ok(mut t) = threads.lock() {
            t.push(thread);
        }
        let token = session
            .liveliness()
            .declare_token(token_key.clone())
            .wait()
            .map_err(|e| link_error(&token_key, "cannot declare the member's liveliness token", e))?;
        tracing::info!(link = %key, pool = %pool.name, member, "member `{member}` offers {window} place(s) in pool `{}`", pool.name);
        Ok(PoolReceiver {
            key,
            pool: pool.name.clone(),
            member: member.to_string(),
            data,
            _data_sub: data_sub,
            _token: token,
            events,
            credit,
            book,
            seen: HashMap::new(),
            leaving: None,
            last_data: Instant::now(),
            got_frames: false,
            started: Instant::now(),
            last_notice: None,
        })
    }

    fn notice_waiting(&mut self) {
        if self.got_frames || self.started.elapsed() < Duration::from_secs(2) {
            return;
        }
        if self.last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            self.last_notice = Some(Instant::now());
            tracing::warn!(
                "member `{}` of pool `{}`: no frame yet on {} ({:.0} s); waiting for the producer",
                self.member,
                self.pool,
                self.key,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Publishes the member's [`Credit`] once a second and whenever its acknowledgement
/// advances; a window sent on `credit` replaces the current one (0 to leave).
fn credit_loop(
    publisher: zenoh::pubsub::Publisher<'static>,
    events: ChanRx<AckEvent>,
    credit: ChanRx<u32>,
    member: String,
    rx: u64,
    mut window: u32,
) {
    let mut trackers: HashMap<u64, crate::zenoh_link::Tracker> = HashMap::new();
    let mut current = 0u64;
    let mut last: Option<Instant> = None;
    let put = |epoch: u64, next: u64, window: u32| {
        let c = Credit {
            member: member.clone(),
            rx,
            epoch,
            next,
            window,
        };
        if let Ok(b) = postcard::to_stdvec(&c) {
            let _ = publisher.put(b).wait();
        }
    };
    loop {
        let mut advanced = false;
        while let Ok(w) = credit.try_recv() {
            window = w;
            advanced = true;
        }
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => {
                let mut ev = Some(ev);
                while let Some(e) = ev.take() {
                    if let AckEvent::Done { epoch, seq } = e {
                        current = epoch;
                        advanced |= trackers
                            .entry(epoch)
                            .or_insert_with(|| crate::zenoh_link::Tracker::new(epoch, 0))
                            .done(seq);
                    }
                    ev = events.try_recv().ok();
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if advanced || last.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            let next = trackers.get(&current).map(|t| t.next).unwrap_or(0);
            put(current, next, window);
            last = Some(Instant::now());
        }
    }
    let next = trackers.get(&current).map(|t| t.next).unwrap_or(0);
    put(current, next, 0);
}

impl Source for PoolReceiver {
    fn ends_on_stop(&self) -> bool {
        false
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        loop {
            self.book.tick();
            if stop.is_set() && self.leaving.is_none() {
                self.leaving = Some(Instant::now());
                let _ = self.credit.send(0);
                tracing::info!(link = %self.key, pool = %self.pool, held = self.book.held(),
                    "member `{}` leaves pool `{}` (Ctrl-C): finishing the frames it holds", self.member, self.pool);
            }
            if self.leaving.is_some()
                && self.book.held() == 0
                && self.data.is_empty()
                && self.last_data.elapsed() >= Duration::from_millis(500)
            {
                tracing::info!(link = %self.key, "member `{}` left pool `{}` with nothing held", self.member, self.pool);
                return SourceItem::End;
            }
            match self.data.recv_timeout(Duration::from_millis(50)) {
                Ok((
                    InHeader::Frame {
                        epoch,
                        seq,
                        stream,
                        frame,
                    },
                    body,
                )) => {
                    self.last_data = Instant::now();
                    if !self.seen.entry(epoch).or_default().insert(seq) {
                        continue;
                    }
                    self.got_frames = true;
                    let id = (stream, frame);
                    let ack = AckTo {
                        events: self.events.clone(),
                        epoch,
                        seq,
                    };
                    match wire::decode(&body) {
                        Ok(msg) => {
                            self.book.received(id, ack);
                            let book = self.book.clone();
                            let on_release: dataflow_engine::Release = Box::new(move || book.released(id));
                            return SourceItem::Forward {
                                msg,
                                on_release: Some(on_release),
                            };
                        }
                        Err(e) => {
                            let _ = self.events.send(AckEvent::Done { epoch, seq });
                            return SourceItem::Failed(StageError::new(
                                "link",
                                format!("{}: frame {stream}:{frame}: {e}", self.key),
                            ));
                        }
                    }
                }
                Ok((InHeader::Eos { epoch, seq }, _)) => {
                    let _ = self.events.send(AckEvent::Done { epoch, seq });
                    tracing::info!(link = %self.key, pool = %self.pool, "end of stream from the producer: member `{}` ends its part", self.member);
                    return SourceItem::End;
                }
                Err(RecvTimeoutError::Timeout) => self.notice_waiting(),
                Err(RecvTimeoutError::Disconnected) => return SourceItem::End,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Consumer: the merge receiver.

enum OutEvent {
    Data {
        member: String,
        header: Header,
        body: Bytes,
    },
    Token {
        member: String,
        alive: bool,
    },
    Entered(Entered),
    Skip(Skip),
}

/// The consumer's view of one member transmitter.
struct FromMember {
    events: ChanTx<AckEvent>,
    /// Transmitter epoch and next sequence number expected.
    expected: Option<(u64, u64)>,
    duplicates: metrics::Counter,
}

/// A frame's messages waiting for their turn.
struct Arrived {
    msgs: Vec<(Message, dataflow_engine::Release)>,
    at: Instant,
}

#[derive(Default)]
struct StreamState {
    /// Announced as entered, not released yet: seq → when announced.
    expected: BTreeMap<u64, Instant>,
    arrived: BTreeMap<u64, Arrived>,
    skipped: BTreeSet<u64>,
    /// Released (bounded: the oldest are forgotten).
    done: BTreeSet<u64>,
}

/// The consumer's end of an edge out of a pool: merges the members' streams, drops
/// duplicates and releases frames in frame-id order.
pub(crate) struct MergeReceiver {
    key: String,
    edge: CrossingEdge,
    pool: PoolSpec,
    session: zenoh::Session,
    events: ChanRx<OutEvent>,
    _subs: Vec<zenoh::pubsub::Subscriber<()>>,
    stop_pub: zenoh::pubsub::Publisher<'static>,
    members: HashMap<String, FromMember>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    streams: BTreeMap<u32, StreamState>,
    owner: HashMap<(u32, u64), String>,
    ready: VecDeque<(Message, dataflow_engine::Release)>,
    /// Pool inputs that announced their end, and how many there are.
    ended: BTreeSet<String>,
    inputs: usize,
    last_event: Instant,
    stop_sent: bool,
    /// Members whose liveliness token is there, and those that sent their end of stream.
    alive: BTreeSet<String>,
    eos_from: BTreeSet<String>,
    /// When every expected frame was released and every input ended.
    all_done: Option<Instant>,
    /// Frames released or skipped so far, and when that count was last published.
    released: u64,
    published: Option<(u64, Instant)>,
    skipped_metric: metrics::Counter,
}

impl MergeReceiver {
    pub(crate) fn open(
        edge: &CrossingEdge,
        pool: &PoolSpec,
        session: &zenoh::Session,
        inputs: usize,
        threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    ) -> Result<MergeReceiver, StageError> {
        let prefix = pool_prefix(&edge.graph, &pool.name);
        let key = format!("{prefix}/out/{}", edge_part(edge));
        let (tx, events) = crossbeam_channel::unbounded();
        let member_of = |k: &str, tail: usize| -> String {
            let parts: Vec<&str> = k.split('/').collect();
            parts
                .get(parts.len().saturating_sub(tail))
                .copied()
                .unwrap_or_default()
                .to_string()
        };
        let t = tx.clone();
        let data_key = format!("{key}/from/*/data");
        let data = session
            .declare_subscriber(data_key.clone())
            .callback(move |s: zenoh::sample::Sample| {
                let Some(header) = s
                    .attachment()
                    .and_then(|a| postcard::from_bytes::<Header>(&a.to_bytes()).ok())
                else {
                    tracing::warn!(key = %s.key_expr(), "a sample without a readable header was ignored");
                    return;
                };
                let member = member_of(s.key_expr().as_str(), 2);
                let body = Bytes::from(s.payload().to_bytes().into_owned());
                let _ = t.send(OutEvent::Data { member, header, body });
            })
            .wait()
            .map_err(|e| link_error(&data_key, "cannot subscribe", e))?;
        let t = tx.clone();
        let token_key = format!("{key}/from/*");
        let tokens = session
            .liveliness()
            .declare_subscriber(token_key.clone())
            .history(true)
            .callback(move |s: zenoh::sample::Sample| {
                let member = member_of(s.key_expr().as_str(), 1);
                let _ = t.send(OutEvent::Token {
                    member,
                    alive: s.kind() == SampleKind::Put,
                });
            })
            .wait()
            .map_err(|e| link_error(&token_key, "cannot watch the pool's members", e))?;
        let t = tx.clone();
        let entered_key = format!("{prefix}/entered/**");
        let entered = session
            .declare_subscriber(entered_key.clone())
            .callback(move |s: zenoh::sample::Sample| {
                if let Ok(e) = postcard::from_bytes::<Entered>(&s.payload().to_bytes()) {
                    let _ = t.send(OutEvent::Entered(e));
                }
            })
            .wait()
            .map_err(|e| link_error(&entered_key, "cannot subscribe", e))?;
        let sk = skip_key(edge, pool);
        let skips = session
            .declare_subscriber(sk.clone())
            .callback(move |s: zenoh::sample::Sample| {
                if let Ok(k) = postcard::from_bytes::<Skip>(&s.payload().to_bytes()) {
                    let _ = tx.send(OutEvent::Skip(k));
                }
            })
            .wait()
            .map_err(|e| link_error(&sk, "cannot subscribe", e))?;
        let stop_key = format!("{prefix}/stop/{}", edge_part(edge));
        let stop_pub = session
            .declare_publisher(stop_key.clone())
            .wait()
            .map_err(|e| link_error(&stop_key, "cannot declare the publisher", e))?;
        Ok(MergeReceiver {
            key,
            edge: edge.clone(),
            pool: pool.clone(),
            session: session.clone(),
            events,
            _subs: vec![data, tokens, entered, skips],
            stop_pub,
            members: HashMap::new(),
            threads,
            streams: BTreeMap::new(),
            owner: HashMap::new(),
            ready: VecDeque::new(),
            ended: BTreeSet::new(),
            inputs: inputs.max(1),
            last_event: Instant::now(),
            stop_sent: false,
            released: 0,
            published: None,
            alive: BTreeSet::new(),
            eos_from: BTreeSet::new(),
            all_done: None,
            skipped_metric: metrics::counter!(names::LINK_LOST, names::LABEL_FROM => edge.from.clone(), names::LABEL_TO => edge.to.clone()),
        })
    }

    /// A member transmitter seen for the first time: its acknowledgement thread.
    fn add_member(&mut self, member: &str) {
        if self.members.contains_key(member) {
            return;
        }
        let ack_key = format!("{}/from/{member}/ack", self.key);
        let publisher = match self
            .session
            .declare_publisher(ack_key.clone())
            .congestion_control(CongestionControl::Block)
            .wait()
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(link = %ack_key, "cannot declare the acknowledgement publisher for member `{member}`: {e}");
                return;
            }
        };
        let (events, erx) = crossbeam_channel::unbounded();
        let up = metrics::gauge!(names::LINK_UP, names::LABEL_FROM => self.edge.from.clone(), names::LABEL_TO => self.edge.to.clone());
        let present = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spawned = std::thread::Builder::new()
            .name(format!("ack {member}"))
            .spawn(move || ack_loop(publisher, erx, random_id(), present, up));
        match spawned {
            Ok(t) => {
                if let Ok(mut v) = self.threads.lock() {
                    v.push(t);
                }
            }
            Err(e) => tracing::warn!(link = %ack_key, "cannot start the acknowledgement thread: {e}"),
        }
        tracing::info!(link = %self.key, pool = %self.pool.name, member, "member `{member}` of pool `{}` is sending", self.pool.name);
        self.members.insert(
            member.to_string(),
            FromMember {
                events,
                expected: None,
                duplicates: metrics::counter!(names::LINK_DUPLICATES, &pool_labels(&self.edge, member)),
            },
        );
    }

    fn on_event(&mut self, ev: OutEvent) {
        self.last_event = Instant::now();
        match ev {
            OutEvent::Token { member, alive } => {
                if alive {
                    self.alive.insert(member.clone());
                    self.add_member(&member);
                } else {
                    self.alive.remove(&member);
                    tracing::info!(link = %self.key, member = %member, "member `{member}` of pool `{}` stopped sending", self.pool.name);
                }
            }
            OutEvent::Entered(Entered::Frames { ids }) => {
                for (stream, seq) in ids {
                    let s = self.streams.entry(stream).or_default();
                    if !s.done.contains(&seq) {
                        s.expected.entry(seq).or_insert_with(Instant::now);
                    }
                }
            }
            OutEvent::Entered(Entered::Ended { edge, frames }) => {
                tracing::info!(link = %self.key, input = %edge, frames, "the producer into pool `{}` ended", self.pool.name);
                self.ended.insert(edge);
            }
            OutEvent::Entered(Entered::Stop | Entered::Released { .. }) => {}
            OutEvent::Skip(Skip { ids }) => {
                for (stream, seq) in ids {
                    let s = self.streams.entry(stream).or_default();
                    if !s.done.contains(&seq) && !s.arrived.contains_key(&seq) {
                        s.skipped.insert(seq);
                    }
                }
            }
            OutEvent::Data { member, header, body } => self.on_data(&member, header, body),
        }
    }

    /// Checks a member's sequence number; `None` for a message to skip.
    fn check(&mut self, member: &str, epoch: u64, seq: u64, base: u64) -> Option<ChanTx<AckEvent>> {
        self.add_member(member);
        let block = self.edge.when_full == WhenFull::Block;
        let m = self.members.get_mut(member)?;
        if m.expected.is_none_or(|(e, _)| e != epoch) {
            m.expected = Some((epoch, base));
            let _ = m.events.send(AckEvent::Start { epoch, base });
        }
        let next = m.expected.map(|(_, n)| n).unwrap_or(0);
        if seq < next {
            return None;
        }
        if seq > next {
            if block {
                let _ = m.events.send(AckEvent::Resend { epoch, from: next });
                return None;
            }
            for s in next..seq {
                let _ = m.events.send(AckEvent::Done { epoch, seq: s });
            }
        }
        m.expected = Some((epoch, seq + 1));
        Some(m.events.clone())
    }

    fn on_data(&mut self, member: &str, header: Header, body: Bytes) {
        let (epoch, seq, base, eos) = match header {
            Header::Frame { epoch, seq, base } => (epoch, seq, base, false),
            Header::Eos { epoch, seq, base } => (epoch, seq, base, true),
        };
        let Some(events) = self.check(member, epoch, seq, base) else {
            return;
        };
        let done = {
            let events = events.clone();
            move || {
                let _ = events.send(AckEvent::Done { epoch, seq });
            }
        };
        if eos {
            self.eos_from.insert(member.to_string());
            done();
            return;
        }
        let msg = match wire::decode(&body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(link = %self.key, member, "a message that cannot be read was dropped: {e}");
                done();
                return;
            }
        };
        let id = fid(msg.id);
        let owner = self.owner.entry(id).or_insert_with(|| member.to_string()).clone();
        // A frame here has left the member: acknowledge it at once, so one slow member
        // does not hold back the others' windows. What waits here for its turn is bounded
        // by the producer, from the released counts this receiver publishes.
        done();
        let release: dataflow_engine::Release = Box::new(|| {});
        let s = self.streams.entry(id.0).or_default();
        if owner != member {
            if let Some(m) = self.members.get(member) {
                m.duplicates.increment(1);
            }
            tracing::info!(link = %self.key, member, owner = %owner, "frame {} arrived again from member `{member}` (first from `{owner}`): duplicate discarded", msg.id);
            release();
            return;
        }
        if s.done.contains(&id.1) {
            // A further message of a frame already released: it follows at once.
            self.ready.push_back((msg, release));
            return;
        }
        s.skipped.remove(&id.1);
        s.arrived
            .entry(id.1)
            .or_insert_with(|| Arrived {
                msgs: Vec::new(),
                at: Instant::now(),
            })
            .msgs
            .push((msg, release));
    }

    /// Moves the frames whose turn it is to `ready`.
    fn release(&mut self) {
        let all_ended = self.ended.len() >= self.inputs;
        let patience = self.pool.ack_timeout * 2;
        for (stream, s) in self.streams.iter_mut() {
            loop {
                let head = s.expected.keys().next().copied();
                let first_arrived = s.arrived.keys().next().copied();
                let take = match (head, first_arrived) {
                    (Some(h), Some(a)) if a <= h => Some(a),
                    (None, Some(a)) => Some(a),
                    _ => None,
                };
                if let Some(seq) = take {
                    if let Some(a) = s.arrived.remove(&seq) {
                        self.ready.extend(a.msgs);
                    }
                    s.expected.remove(&seq);
                    s.done.insert(seq);
                    self.released += 1;
                    continue;
                }
                let Some(h) = head else { break };
                if s.skipped.remove(&h) {
                    s.expected.remove(&h);
                    s.done.insert(h);
                    self.released += 1;
                    continue;
                }
                // Missing: skipped only when frames behind it waited too long.
                let stuck = s.arrived.values().next().is_some_and(|a| a.at.elapsed() > patience)
                    || (all_ended && s.arrived.is_empty() && self.last_event.elapsed() > patience);
                if stuck {
                    self.skipped_metric.increment(1);
                    tracing::warn!(link = %self.key, pool = %self.pool.name,
                        "frame {stream}:{h} entered pool `{}` but no member delivered it within {} ms: skipped \
                         (counted in dataflow_link_lost_total; see the members' logs for a failure)",
                        self.pool.name, patience.as_millis());
                    s.expected.remove(&h);
                    s.done.insert(h);
                    self.released += 1;
                    continue;
                }
                break;
            }
            while s.done.len() > 100_000 {
                if let Some(q) = s.done.pop_first() {
                    self.owner.remove(&(*stream, q));
                }
            }
            s.skipped.retain(|q| s.expected.contains_key(q));
        }
    }

    /// Tells the producer how many frames were released here: when it changed (at most
    /// every 2 ms) and every 500 ms.
    fn publish_released(&mut self) {
        let due = match self.published {
            None => true,
            Some((n, t)) => {
                (n != self.released && t.elapsed() >= Duration::from_millis(2))
                    || t.elapsed() >= Duration::from_millis(500)
            }
        };
        if !due {
            return;
        }
        self.published = Some((self.released, Instant::now()));
        let msg = Entered::Released {
            consumer: self.key.clone(),
            frames: self.released,
        };
        if let Ok(b) = postcard::to_stdvec(&msg) {
            let _ = self.stop_pub.put(b).wait();
        }
    }

    fn finished(&mut self) -> bool {
        let all = self.ended.len() >= self.inputs
            && self.ready.is_empty()
            && self
                .streams
                .values()
                .all(|s| s.expected.is_empty() && s.arrived.is_empty());
        if !all {
            return false;
        }
        // Every member still there sends its end of stream: acknowledge it before leaving,
        // so the members end too (bounded: a member that never sends it is not waited for).
        let since = *self.all_done.get_or_insert_with(Instant::now);
        let waiting: Vec<&String> = self.alive.iter().filter(|m| !self.eos_from.contains(*m)).collect();
        if !waiting.is_empty() && since.elapsed() < self.pool.ack_timeout {
            return false;
        }
        if !waiting.is_empty() {
            tracing::warn!(link = %self.key, "ending without the end of stream of member(s) {waiting:?} of pool `{}`", self.pool.name);
        }
        true
    }
}

impl Source for MergeReceiver {
    fn ends_on_stop(&self) -> bool {
        false
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        loop {
            if stop.is_set() && !self.stop_sent {
                self.stop_sent = true;
                if let Ok(b) = postcard::to_stdvec(&Entered::Stop) {
                    let _ = self.stop_pub.put(b).wait();
                }
                tracing::info!(link = %self.key, "asked the producer into pool `{}` to stop; draining until its end of stream", self.pool.name);
            }
            if let Some((msg, release)) = self.ready.pop_front() {
                return SourceItem::Forward {
                    msg,
                    on_release: Some(release),
                };
            }
            if self.finished() {
                tracing::info!(link = %self.key, pool = %self.pool.name, "end of stream from pool `{}`", self.pool.name);
                return SourceItem::End;
            }
            // Before waiting: the producer may be waiting for this count to send more.
            self.publish_released();
            let pending = self.published.is_some_and(|(n, _)| n != self.released);
            let wait = Duration::from_millis(if pending { 2 } else { 50 });
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    self.on_event(ev);
                    while let Ok(ev) = self.events.try_recv() {
                        self.on_event(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return SourceItem::End,
            }
            self.release();
            self.publish_released();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn session() -> zenoh::Session {
        let mut c = zenoh::Config::default();
        c.insert_json5("mode", "\"peer\"").unwrap();
        c.insert_json5("scouting/multicast/enabled", "false").unwrap();
        c.insert_json5("listen/endpoints", "[]").unwrap();
        zenoh::open(c).wait().unwrap()
    }

    fn ack(tx: &ChanTx<AckEvent>, seq: u64) -> AckTo {
        AckTo {
            events: tx.clone(),
            epoch: 7,
            seq,
        }
    }

    fn done(rx: &ChanRx<AckEvent>) -> Vec<u64> {
        rx.try_iter()
            .filter_map(|e| match e {
                AckEvent::Done { seq, .. } => Some(seq),
                _ => None,
            })
            .collect()
    }

    fn id(seq: u64) -> FrameId {
        FrameId { stream: 0, seq }
    }

    #[test]
    fn without_out_links_a_frame_has_left_when_released() {
        let book = Book::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        book.received((0, 1), ack(&tx, 0));
        assert_eq!(done(&rx), Vec::<u64>::new());
        book.released((0, 1));
        assert_eq!(done(&rx), vec![0]);
        assert_eq!(book.held(), 0);
    }

    #[test]
    fn a_frame_is_acknowledged_only_once_its_outputs_are_and_one_without_output_is_found() {
        let s = session();
        let book = Book::default();
        let skips = Arc::new(Mutex::new(Vec::new()));
        let seen = skips.clone();
        let _sub = s
            .declare_subscriber("t/skip")
            .callback(move |x: zenoh::sample::Sample| {
                let k: Skip = postcard::from_bytes(&x.payload().to_bytes()).unwrap();
                seen.lock().unwrap().extend(k.ids);
            })
            .wait()
            .unwrap();
        let out = book.add_out("t".into(), s.declare_publisher("t/skip").wait().unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        for q in 0..3 {
            book.received((0, q), ack(&tx, q));
        }
        // Frame 0: its output went out before its place was freed; acknowledged by the
        // consumer only after the release.
        book.out_sent(out, id(0));
        book.released((0, 0));
        assert_eq!(done(&rx), Vec::<u64>::new(), "output not acknowledged yet");
        book.out_acked(id(0));
        assert_eq!(done(&rx), vec![0]);
        // Frame 1 made no output: known once the output of frame 2, released after it,
        // went out.
        book.released((0, 1));
        book.tick();
        assert_eq!(done(&rx), Vec::<u64>::new(), "frame 1's output may still be on its way");
        book.released((0, 2));
        book.out_sent(out, id(2));
        book.tick();
        assert_eq!(done(&rx), vec![1]);
        book.out_acked(id(2));
        assert_eq!(done(&rx), vec![2]);
        assert_eq!(book.held(), 0);
        let t0 = Instant::now();
        while skips.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            *skips.lock().unwrap(),
            vec![(0, 1)],
            "the consumer is told frame 1 made nothing"
        );
    }

    #[test]
    fn a_released_frame_without_output_is_settled_after_a_quiet_while() {
        let s = session();
        let book = Book::default();
        book.add_out("t".into(), s.declare_publisher("t2/skip").wait().unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        book.received((0, 5), ack(&tx, 3));
        book.released((0, 5));
        book.tick();
        assert_eq!(done(&rx), Vec::<u64>::new());
        std::thread::sleep(NO_OUTPUT_AFTER + Duration::from_millis(20));
        book.tick();
        assert_eq!(done(&rx), vec![3]);
    }
}
