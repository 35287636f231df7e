//! Sources: each runs on a thread of its own, asks its [`Source`] for frames, stamps
//! them and routes them, blocking on full edges (backpressure).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::group::{route, route_released, Group};
use super::shared::RunShared;
use super::worker::panic_text;
use crate::edge::OnRelease;
use crate::message::{FrameId, Message, Part};
use crate::registry::Configured;
use crate::stage::{BuildContext, Built, Source, SourceItem};

pub(super) struct SourceActor;

pub(super) struct SourceArgs {
    pub(super) group: Arc<Group>,
    pub(super) shared: Arc<RunShared>,
    pub(super) config: Arc<dyn Configured>,
    pub(super) ctx: BuildContext,
    pub(super) stream: u32,
    /// Turns true when every actor is spawned, so no frame is sent into a half-built graph.
    pub(super) start: tokio::sync::watch::Receiver<bool>,
    pub(super) totals: Arc<Mutex<Vec<Option<u64>>>>,
}

impl Actor for SourceActor {
    type Msg = ();
    type State = ();
    type Arguments = SourceArgs;

    async fn pre_start(&self, _myself: ActorRef<()>, a: SourceArgs) -> Result<Self::State, ActorProcessingErr> {
        let (config, ctx) = (a.config.clone(), a.ctx.clone());
        let built = tokio::task::spawn_blocking(move || config.build(&ctx)).await??;
        let Built::Source(source) = built else {
            return Err(format!("stage `{}` is not a source", a.ctx.stage).into());
        };
        let mut source = super::contract::source(source, &a.ctx);
        if let Ok(mut t) = a.totals.lock() {
            t.push(source.total());
        }
        let handle = tokio::runtime::Handle::current();
        let a_shared = a.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-source", a.ctx.stage))
            .spawn(move || {
                let mut start = a.start.clone();
                if handle.block_on(start.wait_for(|go| *go)).is_err() {
                    return;
                }
                run_source(source.as_mut(), &a, &handle);
            })?;
        // `run` joins the thread after the stream ends (see the shutdown protocol).
        a_shared.keep_thread(thread);
        Ok(())
    }

    async fn handle(&self, _m: ActorRef<()>, _msg: (), _s: &mut ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

pub(super) fn run_source(source: &mut dyn Source, a: &SourceArgs, handle: &tokio::runtime::Handle) {
    let stats = a.shared.stats[a.group.index].clone();
    let mut seq = 0u64;
    let ends_on_stop = source.ends_on_stop();
    // The one-message output list, reused frame after frame.
    let mut spare = Vec::with_capacity(1);
    loop {
        // A fatal error also sets the stop token: only then is the lock worth taking.
        if a.shared.stop.is_set() && (ends_on_stop || a.shared.is_fatal()) {
            break;
        }
        let t0 = Instant::now();
        let item = std::panic::catch_unwind(AssertUnwindSafe(|| source.next(&a.shared.stop)));
        let dt = t0.elapsed();
        stats.busy_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        match item {
            Ok(SourceItem::Frame(fields)) => {
                let msg = Message {
                    id: FrameId { stream: a.stream, seq },
                    part: Part::WHOLE,
                    captured: SystemTime::now(),
                    born: Instant::now(),
                    fields,
                };
                seq += 1;
                stats.on_received();
                stats.m_processing.record(dt.as_secs_f64());
                spare.push((0, msg));
                spare = handle.block_on(route(&a.group, &a.shared, spare));
            }
            Ok(SourceItem::Forward { msg, on_release }) => {
                stats.on_received();
                a.shared.link_messages.fetch_add(1, Ordering::Relaxed);
                stats.m_processing.record(dt.as_secs_f64());
                // The callback runs when the last place it holds is freed (or right
                // here, when every edge dropped the message).
                let release = on_release.map(OnRelease::new);
                handle.block_on(route_released(&a.group, &a.shared, vec![(0, msg)], release));
            }
            Ok(SourceItem::Failed(e)) => a.shared.record_error(a.group.index, None, &e),
            Ok(SourceItem::End) => break,
            Err(p) => {
                let text = panic_text(p);
                a.shared
                    .set_fatal(format!("source `{}` panicked after frame {seq}: {text}", a.ctx.stage));
                break;
            }
        }
    }
    a.group.send_eos_downstream();
    a.shared.stage_finished();
}
