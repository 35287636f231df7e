//! Bounded edges.
//!
//! A replica's inbox (a tokio unbounded channel, see the runtime's `stage_actor`) is
//! unbounded, so every edge is a semaphore of `mailbox` permits in front of its
//! consumer. A producer takes a permit before it sends;
//! the permit travels with the message (a [`Delivery`]: directly on `block` and
//! `drop_newest` edges, inside a [`Ticket`] a producer can still empty on
//! `drop_oldest` edges) and is released when the consumer has finished with the
//! message (and sent its outputs on). So the
//! number of messages queued or in work on an edge never exceeds its capacity.
//!
//! - `block`: the producer waits for a permit (backpressure up to the source).
//! - `drop_newest`: no permit, no send; the new message is counted as dropped.
//! - `drop_oldest`: the producer empties the oldest ticket not yet taken by the
//!   consumer, counts that message as dropped and reuses its permit.
//!
//! Either drop is followed by a gap notice for the dropped frame and part, sent to
//! the consumer without a permit (the runtime's `StageMsg::Gap`; for `drop_oldest`
//! the consumer sends it itself when it finds the ticket empty), so joins
//! downstream stop waiting for it (see the `join` module).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::Semaphore;

use crate::message::{FrameId, Message, Part};
use crate::plan::WhenFull;
use dataflow_monitoring::names;

/// One edge into a consumer stage.
pub(crate) struct Edge {
    pub from: String,
    pub to: String,
    /// Index of this edge in the consumer's inputs.
    pub input: usize,
    pub capacity: usize,
    pub policy: WhenFull,
    /// Permits = free places on the edge. Held by messages queued or in work: each
    /// taken permit is forgotten and a [`Permit`] gives it back when dropped.
    sem: Semaphore,
    /// Tickets not yet taken by the consumer, oldest first (`drop_oldest` only).
    pending: Mutex<VecDeque<Weak<Ticket>>>,
    /// Drops on this edge; shared with the consumer stage's counters.
    pub dropped: Arc<AtomicU64>,
    depth: Gauge,
    blocked: Histogram,
    dropped_metric: Counter,
}

/// A place on an edge; dropping it frees the place. It holds the edge (one reference
/// count) and not an owned semaphore permit as well (a second one per message).
pub(crate) struct Permit {
    edge: Arc<Edge>,
    /// Runs when the last place held by a forwarded message is freed (see [`OnRelease`]).
    pub release: Option<Arc<OnRelease>>,
}

/// A forwarded message's release callback, shared by the places it holds on every
/// edge it went to; it runs when the last of them is dropped.
pub(crate) struct OnRelease(Mutex<Option<crate::stage::Release>>);

impl OnRelease {
    /// Wraps a callback.
    pub fn new(f: crate::stage::Release) -> Arc<OnRelease> {
        Arc::new(OnRelease(Mutex::new(Some(f))))
    }
}

impl Drop for OnRelease {
    fn drop(&mut self) {
        if let Some(f) = self.0.get_mut().ok().and_then(Option::take) {
            f();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.edge.sem.add_permits(1);
        self.edge.depth.set(self.edge.depth() as f64);
    }
}

/// A message on its way to a consumer, with the place it holds.
pub(crate) struct Ticket {
    slot: Mutex<Option<(Message, Permit)>>,
    /// Which frame and part the message is, kept when a producer empties the ticket
    /// so the consumer can send a gap notice for it downstream.
    pub frame: (FrameId, Part),
}

impl Ticket {
    /// Takes the message; `None` when a `drop_oldest` producer discarded it.
    pub fn take(&self) -> Option<(Message, Permit)> {
        self.slot.lock().ok().and_then(|mut s| s.take())
    }
}

/// What [`Edge::try_admit`] did with a message.
pub(crate) enum Admit {
    /// Admitted: the message in its place.
    Sent(Delivery),
    /// Dropped by the edge's policy (counted).
    Dropped,
    /// No free place, and the policy says wait: the message, given back.
    Full(Message),
}

/// A message admitted to an edge, as it travels in the consumer replica's inbox.
pub(crate) enum Delivery {
    /// `block` and `drop_newest` edges: nobody can take it back, so no ticket is needed.
    Direct(Message, Permit),
    /// `drop_oldest` edges: a producer may still empty the ticket.
    Queued(Arc<Ticket>),
}

impl Delivery {
    /// The message and its place, or (`Err`) the frame and part of a message a
    /// `drop_oldest` producer discarded on the way.
    #[inline]
    pub fn take(self) -> Result<(Message, Permit), (FrameId, Part)> {
        match self {
            Delivery::Direct(m, p) => Ok((m, p)),
            Delivery::Queued(t) => t.take().ok_or(t.frame),
        }
    }
}

impl Edge {
    pub fn new(
        from: &str,
        to: &str,
        input: usize,
        capacity: usize,
        policy: WhenFull,
        dropped: Arc<AtomicU64>,
    ) -> Arc<Edge> {
        let labels = [(names::LABEL_FROM, from.to_string()), (names::LABEL_TO, to.to_string())];
        metrics::gauge!(names::EDGE_CAPACITY, &labels).set(capacity as f64);
        let reason = match policy {
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop_newest",
            WhenFull::DropOldest => "drop_oldest",
        };
        Arc::new(Edge {
            from: from.into(),
            to: to.into(),
            input,
            capacity,
            policy,
            sem: Semaphore::new(capacity),
            pending: Mutex::new(VecDeque::new()),
            dropped,
            depth: metrics::gauge!(names::EDGE_QUEUE_DEPTH, &labels),
            blocked: metrics::histogram!(names::EDGE_SEND_BLOCKED_SECONDS, &labels),
            dropped_metric: metrics::counter!(names::STAGE_DROPPED, names::LABEL_STAGE => to.to_string(), names::LABEL_REASON => reason),
        })
    }

    /// Messages queued or in work on this edge now.
    pub fn depth(&self) -> usize {
        self.capacity - self.sem.available_permits()
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_metric.increment(1);
    }

    /// A place whose semaphore permit was just taken (and forgotten).
    #[inline]
    fn wrap(self: &Arc<Self>) -> Permit {
        Permit {
            edge: self.clone(),
            release: None,
        }
    }

    /// Admits `msg` according to the edge's policy, without waiting: [`Admit::Full`]
    /// gives the message back when no place is free and the policy says wait (`block`,
    /// or `drop_oldest` with every place in work); [`admit_waiting`](Self::admit_waiting)
    /// then waits for one. `release` (a forwarded message's callback) travels with the
    /// place it takes. The runtime's hot path builds no future for a hop that need not wait.
    #[inline]
    pub fn try_admit(self: &Arc<Self>, msg: Message, release: Option<&Arc<OnRelease>>) -> Admit {
        let permit = match self.sem.try_acquire() {
            Ok(p) => {
                p.forget();
                self.wrap()
            }
            Err(_) => match self.policy {
                WhenFull::Block => return Admit::Full(msg),
                WhenFull::DropNewest => {
                    self.count_drop();
                    return Admit::Dropped;
                }
                WhenFull::DropOldest => match self.steal_oldest() {
                    Some(p) => p,
                    // Every place is in work, none queued: wait like `block`.
                    None => return Admit::Full(msg),
                },
            },
        };
        Admit::Sent(self.deliver(msg, permit, release))
    }

    /// Admits a message [`try_admit`](Self::try_admit) found no place for, once a place
    /// is free; `None` when the edge closed meanwhile.
    pub async fn admit_waiting(self: &Arc<Self>, msg: Message, release: Option<&Arc<OnRelease>>) -> Option<Delivery> {
        let permit = self.wait(msg.id).await?;
        Some(self.deliver(msg, permit, release))
    }

    /// `msg` in the place `permit` holds: directly, or in a ticket on `drop_oldest` edges.
    #[inline]
    fn deliver(&self, msg: Message, mut permit: Permit, release: Option<&Arc<OnRelease>>) -> Delivery {
        permit.release = release.cloned();
        self.depth.set(self.depth() as f64);
        if self.policy != WhenFull::DropOldest {
            return Delivery::Direct(msg, permit);
        }
        let ticket = Arc::new(Ticket {
            frame: (msg.id, msg.part),
            slot: Mutex::new(Some((msg, permit))),
        });
        if let Ok(mut q) = self.pending.lock() {
            q.retain(|w| w.strong_count() > 0);
            q.push_back(Arc::downgrade(&ticket));
        }
        Delivery::Queued(ticket)
    }

    async fn wait(self: &Arc<Self>, frame: FrameId) -> Option<Permit> {
        let t0 = Instant::now();
        self.sem.acquire().await.ok()?.forget();
        // Wrapped at once, so the permit is given back whatever happens next.
        let permit = self.wrap();
        let waited = t0.elapsed();
        self.blocked.record(waited.as_secs_f64());
        tracing::trace!(from = %self.from, to = %self.to, %frame, waited_ms = waited.as_millis() as u64, "edge full, producer waited");
        Some(permit)
    }

    fn steal_oldest(&self) -> Option<Permit> {
        let mut q = self.pending.lock().ok()?;
        while let Some(w) = q.pop_front() {
            if let Some(t) = w.upgrade() {
                if let Some((old, mut permit)) = t.take() {
                    tracing::debug!(from = %self.from, to = %self.to, frame = %old.id, "drop_oldest: discarded a queued message");
                    self.count_drop();
                    // The discarded message no longer holds this place: release it now.
                    permit.release = None;
                    return Some(permit);
                }
            }
        }
        None
    }
}
