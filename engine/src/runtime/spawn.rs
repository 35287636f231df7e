//! Spawning a run: one actor per source and per replica of every other stage (each
//! replica's actor starts its stage loop, reading the replica's inbox),
//! consumers first, so no frame is sent to a stage that is not there yet.

use std::sync::{Arc, Mutex};

use ractor::Actor;

use super::group::Group;
use super::shared::RunShared;
use super::shutdown::{RunError, Spawned};
use super::source::{SourceActor, SourceArgs};
use super::stage_actor::{ActorArgs, StageActor};
use crate::plan::Plan;
use crate::stage::Role;

/// The actors of a started run.
pub(super) struct Started {
    /// Every actor and its task, for the shutdown's joins.
    pub(super) actors: Vec<Spawned>,
    /// Frames the sources will produce, when every source knows.
    pub(super) total: Option<u64>,
}

/// Spawns every stage's actors (building each stage). On a failure, the error and the
/// actors spawned so far, for the caller to stop and join.
pub(super) async fn spawn_all(
    plan: &Plan,
    out_dir: &std::path::Path,
    groups: &[Arc<Group>],
    shared: &Arc<RunShared>,
    start: tokio::sync::watch::Receiver<bool>,
) -> Result<Started, (RunError, Vec<Spawned>)> {
    let totals = Arc::new(Mutex::new(Vec::new()));
    let mut actors: Vec<Spawned> = Vec::new();
    for i in (0..plan.stages.len()).rev() {
        let s = &plan.stages[i];
        let group = groups[i].clone();
        let failed = |e: ractor::SpawnErr| RunError::Build {
            stage: s.id.clone(),
            message: spawn_text(&e),
        };
        if s.role == Role::Source {
            let args = SourceArgs {
                group: group.clone(),
                shared: shared.clone(),
                config: s.config.clone(),
                ctx: plan.context(i, 0, out_dir),
                stream: s.stream,
                start: start.clone(),
                totals: totals.clone(),
            };
            match Actor::spawn(None, SourceActor, args).await {
                Ok((r, task)) => actors.push((r.get_cell(), task)),
                Err(e) => return Err((failed(e), actors)),
            }
            continue;
        }
        let mut refs = Vec::new();
        let mut error = None;
        for r in 0..s.replicas {
            let (inbox, receiver) = tokio::sync::mpsc::unbounded_channel();
            let args = ActorArgs {
                group: group.clone(),
                shared: shared.clone(),
                config: s.config.clone(),
                ctx: plan.context(i, r, out_dir),
                restart: s.restart,
                heavy: s.ports.heavy,
                join: s.ports.join,
                n_inputs: s.inputs.len(),
                mailbox: s.mailbox,
                batch: s.batch,
                inbox: inbox.clone(),
                receiver: Some(receiver),
            };
            match Actor::spawn(None, StageActor, args).await {
                Ok((a, task)) => {
                    actors.push((a.get_cell(), task));
                    refs.push(inbox);
                }
                Err(e) => {
                    error = Some(failed(e));
                    break;
                }
            }
        }
        let _ = group.replicas.set(refs);
        if let Some(e) = error {
            return Err((e, actors));
        }
    }
    let total = totals.lock().ok().and_then(|t| t.iter().copied().sum::<Option<u64>>());
    Ok(Started { actors, total })
}

fn spawn_text(e: &ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
