//! Tests of [`Plan::crossing_edges`], [`Plan::check_machine`] and [`Plan::partition`]
//! on a graph with a pool (DESIGN §7), with the validation tests' kinds. The bridges
//! are the engine's own test transport: a `src` stage receives and a `sink` stage
//! sends; the cut itself is what is tested here, the zenoh ends live in `dataflow-actors`.

use std::sync::Arc;

use super::testkit::{registry, source};
use super::Plan;
use crate::partition::{BridgeError, Bridges, CrossingEdge, PartitionError, Placement};
use crate::registry::Configured;

/// Bridges made of the test kinds `src` (receiving end) and `sink` (sending end).
struct TestBridges;

impl TestBridges {
    fn config(kind: &str) -> Result<Arc<dyn Configured>, BridgeError> {
        let k = registry().get(kind).cloned().ok_or_else(|| BridgeError {
            what: format!("no test kind `{kind}`"),
            source: None,
        })?;
        k.configure(toml::Table::new()).map_err(|e| BridgeError {
            what: format!("test kind `{kind}`: {e:?}"),
            source: None,
        })
    }
}

impl Bridges for TestBridges {
    fn sender_kind(&self) -> &'static str {
        "test_sender"
    }
    fn receiver_kind(&self) -> &'static str {
        "test_receiver"
    }
    fn sender(&self, _: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError> {
        Self::config("sink")
    }
    fn receiver(&self, _: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError> {
        Self::config("src")
    }
}

/// A camera on `cam` feeds `a` and `b` on pool `gpus` (gpu1, gpu2 listed; up to 4
/// members), whose output goes to `out` on `srv`; `fixed` lists `spare` and has no stage.
const GRAPH: &str = r#"
[graph]
name = "pooled"
[machines.cam]
listen = ["tcp/0.0.0.0:7447"]
[machines.gpu1]
[machines.gpu2]
[machines.spare]
[machines.srv]
[pools.gpus]
machines = ["gpu1", "gpu2"]
max = 4
connect = ["tcp/cam:7447"]
ack_timeout_ms = 500
[pools.fixed]
machines = ["spare"]
[stage.cam]
kind = "src"
machine = "cam"
[stage.a]
kind = "map"
inputs = ["cam"]
machine = { pool = "gpus" }
[stage.b]
kind = "map"
inputs = ["a"]
machine = { pool = "gpus" }
[stage.out]
kind = "sink"
inputs = ["b"]
machine = "srv"
"#;

fn plan() -> Plan {
    super::plan(&source(GRAPH), &registry()).unwrap_or_else(|d| panic!("{d}"))
}

/// `(id, kind, machine)` of each stage of a partition.
fn stages(p: &Plan) -> Vec<(String, String, String)> {
    p.stages
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone(), s.machine.clone().unwrap_or_default()))
        .collect()
}

fn row(id: &str, kind: &str, machine: &str) -> (String, String, String) {
    (id.into(), kind.into(), machine.into())
}

#[test]
fn the_edges_into_and_out_of_a_pool_cross_and_name_the_pool() {
    let plan = plan();
    let crossing = plan.crossing_edges();
    let ids: Vec<String> = crossing.iter().map(CrossingEdge::stage_id).collect();
    assert_eq!(ids, ["cam.out->a", "b.out->out"]);
    let (into, out) = (&crossing[0], &crossing[1]);
    assert_eq!((into.from_machine.as_str(), into.to_machine.as_str()), ("cam", "gpus"));
    assert_eq!(into.from_pool, None);
    let gpus = into.to_pool.as_ref().expect("the consumer is on a pool");
    assert_eq!(gpus.machines, ["gpu1", "gpu2"]);
    assert_eq!((gpus.min, gpus.max, gpus.dynamic), (1, 4, true));
    assert_eq!(gpus.connect, ["tcp/cam:7447"]);
    assert_eq!(gpus.ack_timeout, std::time::Duration::from_millis(500));
    assert_eq!((out.from_machine.as_str(), out.to_machine.as_str()), ("gpus", "srv"));
    assert_eq!(out.from_pool.as_ref().map(|p| p.name.as_str()), Some("gpus"));
    assert_eq!(out.to_pool, None);
}

#[test]
fn the_producer_sends_into_the_pool_and_the_consumer_receives_from_it() {
    let plan = plan();
    assert_eq!(plan.check_machine("cam").expect("cam runs stages"), "cam");
    let part = plan.partition("cam", &TestBridges).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        stages(&part),
        [row("cam", "src", "cam"), row("cam.out->a", "test_sender", "cam")]
    );
    assert_eq!(part.stages[0].consumers, [vec![(1, 0)]]);
    assert_eq!(part.stages[1].inputs[0].from, 0);

    assert_eq!(plan.check_machine("srv").expect("srv runs stages"), "srv");
    let part = plan.partition("srv", &TestBridges).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        stages(&part),
        [row("b.out->out", "test_receiver", "srv"), row("out", "sink", "srv")]
    );
    assert_eq!(part.stages[0].consumers, [vec![(1, 0)]]);
    assert_eq!(part.stages[1].inputs[0].from, 0);
}

#[test]
fn a_static_and_a_dynamic_member_run_the_pools_stages() {
    let plan = plan();
    let expected = [
        row("cam.out->a", "test_receiver", "gpus"),
        row("a", "map", "gpus"),
        row("b", "map", "gpus"),
        row("b.out->out", "test_sender", "gpus"),
    ];
    for at in [
        Placement::machine("gpu1"),
        Placement::member("gpu1", "gpus"),
        Placement::member("gpu7", "gpus"),
    ] {
        assert_eq!(plan.check_machine(&at).expect("a member"), "gpus", "{at:?}");
        let part = plan
            .partition(&at, &TestBridges)
            .unwrap_or_else(|e| panic!("{at:?}: {e}"));
        assert_eq!(stages(&part), expected, "{at:?}");
        assert_eq!(part.stages[0].consumers, [vec![(1, 0)]]);
        assert_eq!(part.stages[1].consumers[0], [(2, 0)]);
        assert_eq!(part.stages[2].consumers[0], [(3, 0)]);
        assert_eq!(part.stages[3].inputs[0].from, 2);
        assert_eq!(part.pools.len(), 2);
    }
}

#[test]
fn joining_a_pool_that_cannot_take_the_machine_is_refused_with_what_to_do() {
    let plan = plan();
    let err = |at: Placement| match plan.check_machine(&at) {
        Ok(u) => panic!("{at:?} was accepted as {u}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err(Placement::member("gpu3", "gpu")),
        "test.toml: --pool gpu: the graph has no pool `gpu` (pools: fixed, gpus); did you mean `gpus`?"
    );
    assert_eq!(
        err(Placement::member("gpu3", "fixed")),
        "test.toml: machine `gpu3` is not a member of pool `fixed` (members: spare) and the pool takes no members at run time; add `gpu3` to [pools.fixed] machines, or give the pool `min`/`max` so that machines may join with --pool fixed"
    );
    assert_eq!(
        err(Placement::member("cam", "gpus")),
        "test.toml: machine `cam` cannot join pool `gpus`: it runs its own stages; a pool member runs only the pool's stages, so give this process another machine name"
    );
    assert_eq!(
        err(Placement::member("spare", "gpus")),
        "test.toml: machine `spare` cannot join pool `gpus`: it runs pool `fixed`; a pool member runs only the pool's stages, so give this process another machine name"
    );
    assert_eq!(
        err(Placement::machine("gpu3")),
        "test.toml: machine `gpu3` is not in the graph's [machines] (cam, gpu1, gpu2, spare, srv); did you mean `gpu2`?; to join a pool at run time, add --pool gpus"
    );
    assert_eq!(
        err(Placement::machine("spare")),
        "test.toml: machine `spare` is a member of pool `fixed`, but no stage is placed on the pool; placed machines and pools: cam, gpus, srv"
    );
    assert!(matches!(
        plan.check_machine("gpu9"),
        Err(PartitionError::UnknownMachine { .. })
    ));
}
