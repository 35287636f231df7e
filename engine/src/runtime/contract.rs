//! The port contract at run time, in debug builds: every message a stage sends carries
//! only fields its port declares, each with the declared type. Validation worked out
//! what each port carries ([`crate::stage::OutPort::carries`]: the fields it adds, and
//! on a passthrough port its inputs' fields too); a built stage or source is wrapped so
//! that a message breaking that contract panics inside the stage's call, naming the
//! stage, the port, the field and both types. The engine reports that panic as any
//! other (`restart` decides what follows), so an integration test run in a debug build
//! fails on a kind that emits an undeclared field. Release builds do not wrap.

use crate::message::{Fields, Message};
use crate::stage::{BuildContext, Input, OutPort, Outputs, Source, SourceItem, Stage, StageError, StopFlag};

/// What a message on `port` of the stage `ctx` describes breaks, if anything.
fn violation(ctx: &BuildContext, port: usize, fields: &Fields) -> Option<String> {
    let who = format!("stage `{}` (kind `{}`)", ctx.stage, ctx.kind);
    let Some(p) = ctx.outputs.get(port) else {
        return Some(format!(
            "{who} sent a message on output port number {port}, but its kind declares {} port(s); resolve ports by name with BuildContext::output",
            ctx.outputs.len()
        ));
    };
    let carries = p.carries.as_ref()?;
    for (name, value) in fields.iter() {
        let got = value.field_type();
        match carries.get(name) {
            None => {
                return Some(format!(
                    "{who} sent field `{name}` ({got}) on port `{}`, which does not declare it (the port carries {{{}}}); declare it in the kind's ports() or do not send it",
                    p.name,
                    listing(p)
                ))
            }
            Some(&declared) if !declared.accepts(got) => {
                return Some(format!(
                    "{who} sent field `{name}` as {got} on port `{}`, which declares it as {declared}; fix the kind's ports() or the value it sends",
                    p.name
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// `name: type, ...` of what a port carries.
fn listing(p: &OutPort) -> String {
    p.carries
        .iter()
        .flatten()
        .map(|(n, t)| format!("{n}: {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Panics on the first message of `items` that breaks the contract.
fn enforce(ctx: &BuildContext, items: &[(usize, Message)]) {
    for (port, msg) in items {
        if let Some(text) = violation(ctx, *port, &msg.fields) {
            panic!("{text}");
        }
    }
}

/// A stage whose outputs are held to its ports.
struct CheckedStage {
    inner: Box<dyn Stage>,
    ctx: BuildContext,
}

impl Stage for CheckedStage {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let from = out.items.len();
        self.inner.process(input, out)?;
        enforce(&self.ctx, &out.items[from..]);
        Ok(())
    }

    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let results = self.inner.process_batch(inputs, outs);
        for (out, r) in outs.iter().zip(&results) {
            if r.is_ok() {
                enforce(&self.ctx, &out.items);
            }
        }
        results
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), StageError> {
        let from = out.items.len();
        self.inner.finish(out)?;
        enforce(&self.ctx, &out.items[from..]);
        Ok(())
    }
}

/// A source whose frames are held to its first port.
struct CheckedSource {
    inner: Box<dyn Source>,
    ctx: BuildContext,
}

impl Source for CheckedSource {
    fn total(&self) -> Option<u64> {
        self.inner.total()
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        let item = self.inner.next(stop);
        if let SourceItem::Frame(fields) = &item {
            if let Some(text) = violation(&self.ctx, 0, fields) {
                panic!("{text}");
            }
        }
        item
    }

    fn ends_on_stop(&self) -> bool {
        self.inner.ends_on_stop()
    }
}

/// `stage`, held to its ports in debug builds.
pub(super) fn stage(stage: Box<dyn Stage>, ctx: &BuildContext) -> Box<dyn Stage> {
    if cfg!(debug_assertions) {
        Box::new(CheckedStage {
            inner: stage,
            ctx: ctx.clone(),
        })
    } else {
        stage
    }
}

/// `source`, held to its first port in debug builds (frames it forwards from another
/// machine were checked there).
pub(super) fn source(source: Box<dyn Source>, ctx: &BuildContext) -> Box<dyn Source> {
    if cfg!(debug_assertions) {
        Box::new(CheckedSource {
            inner: source,
            ctx: ctx.clone(),
        })
    } else {
        source
    }
}

#[cfg(test)]
#[cfg(debug_assertions)]
mod tests {
    use std::path::Path;

    use schemars::JsonSchema;
    use serde::Deserialize;

    use crate::graph::GraphSource;
    use crate::message::{FieldType, Value};
    use crate::registry::Registry;
    use crate::runtime::test_kinds::{Count, Sink};
    use crate::runtime::{run, RunOptions};
    use crate::stage::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind};

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct LeakyConfig {
        /// The field it adds to the input's.
        field: String,
        /// Adds it as a text instead of a number.
        #[serde(default)]
        text: bool,
        /// Its port does not carry the input's fields along.
        #[serde(default)]
        fresh: bool,
    }

    /// Declares `tag: number` on `out`; sends the input's fields and `field`.
    struct Leaky;
    struct Adding(String, bool);
    impl Stage for Adding {
        fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
            let Some(m) = input.message() else { return Ok(()) };
            let mut f = m.fields.clone();
            let v = if self.1 {
                Value::Text("t".into())
            } else {
                Value::Number(1.0)
            };
            f.insert(self.0.clone(), v);
            out.emit(m.derive(f));
            Ok(())
        }
    }
    impl StageKind for Leaky {
        type Config = LeakyConfig;
        const NAME: &'static str = "leaky";
        const ROLE: Role = Role::Transform;
        const DOC: &'static str = "adds a field";
        fn ports(c: &LeakyConfig) -> Ports {
            let port = if c.fresh {
                OutPort::new("out")
            } else {
                OutPort::forwarding("out")
            };
            Ports {
                outputs: vec![port.with("tag", FieldType::Number)],
                requires: vec![crate::stage::Field::new("n", FieldType::Number)],
                ..Ports::default()
            }
        }
        fn build(c: &LeakyConfig, _: &BuildContext) -> Result<Built, StageError> {
            Ok(Built::Stage(Box::new(Adding(c.field.clone(), c.text))))
        }
    }

    /// Runs `count (source keys) -> leaky (leaky keys) -> sink`, restart = "never":
    /// the run's fatal error, if any, and the frames that reached the sink.
    fn run_graph(source_keys: &str, leaky_keys: &str) -> (Option<String>, u64) {
        let mut reg = Registry::new();
        reg.register::<Count>().register::<Leaky>().register::<Sink>();
        let text = format!(
            "[stage.src]\nkind = \"count\"\nframes = 3\n{source_keys}\n[stage.add]\nkind = \"leaky\"\nrestart = \"never\"\ninputs = [\"src\"]\n{leaky_keys}\n[stage.out]\nkind = \"sink\"\ninputs = [\"add\"]\n"
        );
        let src = GraphSource::from_text(Path::new("contract.toml"), text, &[]).expect("the graph parses");
        let plan = crate::plan::plan(&src, &reg).expect("the graph is valid");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut opts = RunOptions::new(dir.path().to_path_buf());
        opts.progress = false;
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let summary = rt.block_on(run(&plan, opts)).expect("the run starts");
        (summary.fatal, summary.frames_out)
    }

    #[test]
    fn a_passthrough_port_carries_the_inputs_fields_and_its_own() {
        assert_eq!(run_graph("", "field = \"tag\""), (None, 3));
    }

    #[test]
    fn sending_an_undeclared_field_panics_naming_stage_port_field_and_type() {
        let (fatal, _) = run_graph("", "field = \"secret\"");
        let fatal = fatal.expect("the stage panicked and restart = \"never\" ended the run");
        assert!(
            fatal.contains("stage `add` (kind `leaky`) sent field `secret` (number) on port `out`, which does not declare it (the port carries {n: number, tag: number})"),
            "{fatal}"
        );
    }

    #[test]
    fn sending_a_field_of_another_type_panics_naming_both_types() {
        let (fatal, _) = run_graph("", "field = \"tag\"\ntext = true");
        let fatal = fatal.expect("the stage panicked");
        assert!(
            fatal.contains(
                "stage `add` (kind `leaky`) sent field `tag` as text on port `out`, which declares it as number"
            ),
            "{fatal}"
        );
    }

    #[test]
    fn a_fresh_port_does_not_carry_the_inputs_fields() {
        let (fatal, _) = run_graph("", "field = \"tag\"\nfresh = true");
        let fatal = fatal.expect("the stage panicked");
        assert!(
            fatal.contains("sent field `n` (number) on port `out`, which does not declare it"),
            "{fatal}"
        );
    }

    #[test]
    fn a_source_sending_an_undeclared_field_panics() {
        let (fatal, _) = run_graph("extra = true", "field = \"tag\"");
        let fatal = fatal.expect("the source panicked");
        assert!(
            fatal.contains(
                "source `src` panicked after frame 0: stage `src` (kind `count`) sent field `x` (number) on port `out`"
            ),
            "{fatal}"
        );
    }
}
