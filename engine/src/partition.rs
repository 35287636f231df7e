//! One machine's part of a distributed graph (DESIGN §7).
//!
//! Stages carry `machine = "<name>"`. [`Plan::partition`] keeps the stages placed on
//! one machine and replaces every edge that crosses machines by a bridge pair: a
//! sending sink on the producer's machine and a receiving source on the consumer's,
//! made by a [`Bridges`] implementation (the engine knows no transport; the zenoh one
//! lives in `dataflow-actors`). The consumer keeps its input order, sources keep
//! their stream numbers and stages their ids, so frame ids, joins and seeded noise
//! are the same as in a one-process run of the whole graph.

use std::sync::Arc;

use crate::plan::{InputEdge, Plan, PlannedStage, PoolSpec, WhenFull};
use crate::registry::Configured;
use crate::stage::Role;

/// An edge whose producer and consumer sit on different machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossingEdge {
    /// Graph name (part of the link's key, so two graphs never mix).
    pub graph: String,
    /// Producing stage id.
    pub from: String,
    /// Output port name of the producer.
    pub port: String,
    /// Consuming stage id.
    pub to: String,
    /// Index of the edge in the consumer's `inputs`.
    pub input: usize,
    /// Placement unit of the producer: its machine, or its pool's name.
    pub from_machine: String,
    /// Placement unit of the consumer: its machine, or its pool's name.
    pub to_machine: String,
    /// The producer's pool, when it runs on one (`from_machine` is then the pool's name).
    pub from_pool: Option<PoolSpec>,
    /// The consumer's pool, when it runs on one (`to_machine` is then the pool's name).
    pub to_pool: Option<PoolSpec>,
    /// Capacity of the consumer's input edge: the messages the link may hold.
    pub mailbox: usize,
    /// Policy of the consumer's input edge.
    pub when_full: WhenFull,
}

impl CrossingEdge {
    /// Id of the bridge stages on both machines: `<from>.<port>-><to>`.
    pub fn stage_id(&self) -> String {
        format!("{}.{}->{}", self.from, self.port, self.to)
    }
}

/// Which part of a distributed graph this process runs (`dataflow run G --machine M
/// [--pool P]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The machine this process runs as (`--machine`): a machine of `[machines]`, or
    /// any name for a member that joins a pool with `min`/`max` at run time.
    pub machine: String,
    /// The pool it joins (`--pool`); `None` for a machine's own stages or a static
    /// member (the pool is then found from `[pools]`).
    pub pool: Option<String>,
}

impl Placement {
    /// `--machine machine`, without `--pool`.
    pub fn machine(machine: impl Into<String>) -> Self {
        Placement {
            machine: machine.into(),
            pool: None,
        }
    }

    /// `--machine machine --pool pool`.
    pub fn member(machine: impl Into<String>, pool: impl Into<String>) -> Self {
        Placement {
            machine: machine.into(),
            pool: Some(pool.into()),
        }
    }
}

impl From<&str> for Placement {
    fn from(machine: &str) -> Self {
        Placement::machine(machine)
    }
}

impl From<&String> for Placement {
    fn from(machine: &String) -> Self {
        Placement::machine(machine.as_str())
    }
}

impl From<&Placement> for Placement {
    fn from(p: &Placement) -> Self {
        p.clone()
    }
}

/// Makes the two ends of a crossing edge. Implemented by a transport.
pub trait Bridges {
    /// Kind name shown for the sending end (summary, metrics).
    fn sender_kind(&self) -> &'static str;
    /// Kind name shown for the receiving end.
    fn receiver_kind(&self) -> &'static str;
    /// The sink that takes the producer's messages and sends them to the other machine.
    /// Its ports must mark it `heavy` when sending may block (it usually does).
    fn sender(&self, edge: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError>;
    /// The source that receives them on the consumer's machine; it yields
    /// [`crate::SourceItem::Forward`] messages.
    fn receiver(&self, edge: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError>;
}

/// Why a transport could not make one end of a crossing edge.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct BridgeError {
    /// What went wrong and what to do, for the user.
    pub what: String,
    /// The transport's own error, when there is one.
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BridgeError {
    /// An error with the transport's `source`.
    pub fn new(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        BridgeError {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// Why a graph could not be cut for a machine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PartitionError {
    /// `--machine` names a machine the graph does not describe.
    #[error("{file}: machine `{machine}` is not in the graph's [machines] ({known}){hint}")]
    UnknownMachine {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
        /// Known machines.
        known: String,
        /// "did you mean" text, or empty.
        hint: String,
    },
    /// The graph places no stage on machines.
    #[error("{file}: --machine {machine} was given but no stage has `machine = \"...\"`; run without --machine, or place the stages")]
    NotPlaced {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
    },
    /// No stage is placed on the machine.
    #[error("{file}: no stage is placed on machine `{machine}`; placed machines: {placed}")]
    Empty {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
        /// Machines that have stages.
        placed: String,
    },
    /// The pool that `--machine` is a member of has no stage placed on it.
    #[error("{file}: machine `{machine}` is a member of pool `{pool}`, but no stage is placed on the pool; placed machines and pools: {placed}")]
    EmptyPool {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
        /// Its pool.
        pool: String,
        /// Machines and pools that have stages.
        placed: String,
    },
    /// `--pool` names no pool of the graph.
    #[error("{file}: --pool {pool}: the graph has no pool `{pool}` (pools: {known}){hint}")]
    UnknownPool {
        /// Graph file.
        file: String,
        /// The pool asked for.
        pool: String,
        /// Known pools.
        known: String,
        /// "did you mean" text, or empty.
        hint: String,
    },
    /// `--machine M --pool P` where P lists its members and M is not one of them.
    #[error("{file}: machine `{machine}` is not a member of pool `{pool}` (members: {members}) and the pool takes no members at run time; add `{machine}` to [pools.{pool}] machines, or give the pool `min`/`max` so that machines may join with --pool {pool}")]
    NotAMember {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
        /// The pool asked for.
        pool: String,
        /// The pool's static members.
        members: String,
    },
    /// `--machine M --pool P` where M already runs other stages.
    #[error("{file}: machine `{machine}` cannot join pool `{pool}`: it runs {runs}; a pool member runs only the pool's stages, so give this process another machine name")]
    Taken {
        /// Graph file.
        file: String,
        /// The machine asked for.
        machine: String,
        /// The pool asked for.
        pool: String,
        /// What the machine runs already: "its own stages" or "pool `<name>`".
        runs: String,
    },
    /// The transport could not make a bridge.
    #[error("{file}: edge `{edge}` ({from_machine} -> {to_machine}): {source}")]
    Bridge {
        /// Graph file.
        file: String,
        /// The edge, as a bridge id.
        edge: String,
        /// Producer's machine.
        from_machine: String,
        /// Consumer's machine.
        to_machine: String,
        /// What the transport said.
        #[source]
        source: Box<BridgeError>,
    },
}

impl Plan {
    /// Whether any stage is placed on a machine.
    pub fn is_distributed(&self) -> bool {
        self.stages.iter().any(|s| s.machine.is_some())
    }

    /// Every edge whose two ends are placed on different placement units (machines
    /// or pools), in plan order.
    pub fn crossing_edges(&self) -> Vec<CrossingEdge> {
        let mut out = Vec::new();
        for consumer in &self.stages {
            for (input, e) in consumer.inputs.iter().enumerate() {
                let producer = &self.stages[e.from];
                let (Some(fm), Some(tm)) = (&producer.machine, &consumer.machine) else {
                    continue;
                };
                if fm != tm {
                    out.push(CrossingEdge {
                        graph: self.name.clone(),
                        from: producer.id.clone(),
                        port: producer
                            .ports
                            .outputs
                            .get(e.port)
                            .map(|p| p.name.clone())
                            .unwrap_or_default(),
                        to: consumer.id.clone(),
                        input,
                        from_machine: fm.clone(),
                        to_machine: tm.clone(),
                        from_pool: self.pools.get(fm).cloned(),
                        to_pool: self.pools.get(tm).cloned(),
                        mailbox: consumer.mailbox,
                        when_full: consumer.when_full,
                    });
                }
            }
        }
        out
    }

    /// Whether `at` can run a part of this graph, and the placement unit whose stages
    /// it runs: its own machine name, or the name of the pool it is a member of (a
    /// static member listed in the pool's `machines`, or a member that joins a pool
    /// with `min`/`max` through `at.pool`).
    pub fn check_machine(&self, at: impl Into<Placement>) -> Result<String, PartitionError> {
        let at = at.into();
        let file = self.file.display().to_string();
        let machine = at.machine.as_str();
        let unit = match &at.pool {
            Some(pool) => self.member_of(&file, machine, pool)?,
            None => {
                if !self.machines.contains_key(machine) {
                    return Err(self.unknown_machine(file, machine));
                }
                match self.pools.values().find(|p| p.machines.iter().any(|m| m == machine)) {
                    Some(p) => p.name.clone(),
                    None => machine.to_string(),
                }
            }
        };
        if !self.stages.iter().any(|s| s.machine.as_deref() == Some(unit.as_str())) {
            let mut placed: Vec<&str> = self.stages.iter().filter_map(|s| s.machine.as_deref()).collect();
            placed.sort();
            placed.dedup();
            let placed = placed.join(", ");
            if unit != machine {
                return Err(PartitionError::EmptyPool {
                    file,
                    machine: machine.into(),
                    pool: unit,
                    placed,
                });
            }
            return Err(PartitionError::Empty {
                file,
                machine: unit,
                placed,
            });
        }
        Ok(unit)
    }

    /// `--machine` names no machine of `[machines]` (and no `--pool` was given).
    fn unknown_machine(&self, file: String, machine: &str) -> PartitionError {
        if !self.is_distributed() {
            return PartitionError::NotPlaced {
                file,
                machine: machine.into(),
            };
        }
        let known: Vec<&str> = self.machines.keys().map(String::as_str).collect();
        let mut hint = crate::graph::did_you_mean(machine, known.iter().copied())
            .map(|h| format!("; did you mean `{h}`?"))
            .unwrap_or_default();
        let open: Vec<&str> = self
            .pools
            .values()
            .filter(|p| p.dynamic)
            .map(|p| p.name.as_str())
            .collect();
        if !open.is_empty() {
            hint.push_str(&format!(
                "; to join a pool at run time, add --pool {}",
                open.join(" | ")
            ));
        }
        PartitionError::UnknownMachine {
            file,
            machine: machine.into(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
            hint,
        }
    }

    /// The pool `pool` that `machine` joins with `--pool`: it must exist, and take
    /// `machine` (a listed member, or any machine when it has `min`/`max`); a machine
    /// that runs stages of its own or belongs to another pool cannot join.
    fn member_of(&self, file: &str, machine: &str, pool: &str) -> Result<String, PartitionError> {
        let Some(spec) = self.pools.get(pool) else {
            let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
            return Err(PartitionError::UnknownPool {
                file: file.into(),
                pool: pool.into(),
                known: if known.is_empty() {
                    "the graph has none".into()
                } else {
                    known.join(", ")
                },
                hint: crate::graph::did_you_mean(pool, known.iter().copied())
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_default(),
            });
        };
        let listed = spec.machines.iter().any(|m| m == machine);
        if !listed && !spec.dynamic {
            return Err(PartitionError::NotAMember {
                file: file.into(),
                machine: machine.into(),
                pool: pool.into(),
                members: spec.machines.join(", "),
            });
        }
        let elsewhere = self
            .pools
            .values()
            .find(|p| p.name != pool && p.machines.iter().any(|m| m == machine))
            .map(|p| format!("pool `{}`", p.name))
            .or_else(|| {
                self.stages
                    .iter()
                    .any(|s| s.machine.as_deref() == Some(machine))
                    .then(|| "its own stages".to_string())
            });
        if let Some(runs) = elsewhere {
            return Err(PartitionError::Taken {
                file: file.into(),
                machine: machine.into(),
                pool: pool.into(),
                runs,
            });
        }
        Ok(pool.to_string())
    }

    /// The part of the graph that `at` runs (see [`Plan::check_machine`]), with a
    /// bridge for every crossing edge. A pool member runs the pool's stages; its
    /// bridges are those of the edges into and out of the pool.
    pub fn partition(&self, at: impl Into<Placement>, bridges: &dyn Bridges) -> Result<Plan, PartitionError> {
        let unit = self.check_machine(at)?;
        let machine = unit.as_str();
        let file = self.file.display().to_string();
        let local: Vec<bool> = self
            .stages
            .iter()
            .map(|s| s.machine.as_deref() == Some(machine))
            .collect();
        let crossing = self.crossing_edges();
        let bridge_err = |e: &CrossingEdge, source: BridgeError| PartitionError::Bridge {
            file: file.clone(),
            edge: e.stage_id(),
            from_machine: e.from_machine.clone(),
            to_machine: e.to_machine.clone(),
            source: Box::new(source),
        };

        // New order: receiving bridges (sources), the local stages in plan order,
        // then sending bridges (sinks): producers stay before consumers.
        let incoming: Vec<&CrossingEdge> = crossing.iter().filter(|e| e.to_machine == machine).collect();
        let outgoing: Vec<&CrossingEdge> = crossing.iter().filter(|e| e.from_machine == machine).collect();
        let mut new_index = vec![usize::MAX; self.stages.len()];
        let mut next = incoming.len();
        for (i, l) in local.iter().enumerate() {
            if *l {
                new_index[i] = next;
                next += 1;
            }
        }
        let first_sender = next;

        let mut stages: Vec<PlannedStage> = Vec::with_capacity(next + outgoing.len());
        for (k, e) in incoming.iter().enumerate() {
            let config = bridges.receiver(e).map_err(|m| bridge_err(e, m))?;
            let ports = config.ports();
            let to = self.index(&e.to).map(|i| new_index[i]).unwrap_or(usize::MAX);
            stages.push(PlannedStage {
                id: e.stage_id(),
                kind: bridges.receiver_kind().into(),
                role: Role::Source,
                config,
                ports,
                inputs: Vec::new(),
                consumers: vec![vec![(to, e.input)]],
                mailbox: e.mailbox,
                when_full: e.when_full,
                replicas: 1,
                restart: crate::plan::Restart::Never,
                machine: Some(machine.into()),
                batch: None,
                stream: u32::MAX - k as u32,
            });
        }
        let cut = Cut {
            local: &local,
            new_index: &new_index,
            incoming: &incoming,
            outgoing: &outgoing,
            first_sender,
        };
        for (i, s) in self.stages.iter().enumerate() {
            if local[i] {
                stages.push(self.local_stage(s, &cut));
            }
        }
        for e in &outgoing {
            let config = bridges.sender(e).map_err(|m| bridge_err(e, m))?;
            let ports = config.ports();
            let from = self.index(&e.from).map(|i| new_index[i]).unwrap_or(usize::MAX);
            let port = self
                .index(&e.from)
                .and_then(|i| self.stages[i].ports.outputs.iter().position(|p| p.name == e.port));
            stages.push(PlannedStage {
                id: e.stage_id(),
                kind: bridges.sender_kind().into(),
                role: Role::Sink,
                config,
                ports,
                inputs: vec![InputEdge {
                    from,
                    port: port.unwrap_or(0),
                    text: format!("{}.{}", e.from, e.port),
                }],
                consumers: Vec::new(),
                // The local queue in front of the link has the consumer's capacity and
                // policy, so drops by policy happen (and are counted) here.
                mailbox: e.mailbox,
                when_full: e.when_full,
                replicas: 1,
                restart: crate::plan::Restart::Never,
                machine: Some(machine.into()),
                batch: None,
                stream: 0,
            });
        }
        Ok(Plan { stages, ..self.clone() })
    }

    /// Stage `s` of this machine, its edges renumbered to the partition (`cut`): inputs
    /// from other machines come from receiving bridges, outputs to them go to sending ones.
    fn local_stage(&self, s: &PlannedStage, cut: &Cut) -> PlannedStage {
        let mut st = s.clone();
        st.inputs = s
            .inputs
            .iter()
            .enumerate()
            .map(|(input, e)| {
                if cut.local[e.from] {
                    InputEdge {
                        from: cut.new_index[e.from],
                        port: e.port,
                        text: e.text.clone(),
                    }
                } else {
                    let k = cut
                        .incoming
                        .iter()
                        .position(|c| c.to == s.id && c.input == input)
                        .unwrap_or(usize::MAX);
                    InputEdge {
                        from: k,
                        port: 0,
                        text: e.text.clone(),
                    }
                }
            })
            .collect();
        st.consumers = s
            .consumers
            .iter()
            .map(|list| {
                list.iter()
                    .map(|&(c, input)| {
                        if cut.local[c] {
                            (cut.new_index[c], input)
                        } else {
                            let k = cut
                                .outgoing
                                .iter()
                                .position(|o| o.to == self.stages[c].id && o.input == input)
                                .unwrap_or(usize::MAX);
                            (cut.first_sender + k, 0)
                        }
                    })
                    .collect()
            })
            .collect();
        st
    }
}

/// How a partition renumbers the stages (see [`Plan::partition`]).
struct Cut<'a> {
    /// Whether each stage of the whole plan runs on this machine.
    local: &'a [bool],
    /// Each local stage's index in the partition.
    new_index: &'a [usize],
    /// Edges into this machine, in the order of their receiving bridges.
    incoming: &'a [&'a CrossingEdge],
    /// Edges out of this machine, in the order of their sending bridges.
    outgoing: &'a [&'a CrossingEdge],
    /// Index of the first sending bridge.
    first_sender: usize,
}
