//! What the kinds' unit tests build stages with: a build context in a folder and one
//! message as a stage's input.

use std::path::Path;

use dataflow_engine::{BuildContext, Fields, FrameId, Input, Message, OutPort, Part, Restart};

/// The context of replica 0 of 1 of stage `stage` (kind `kind`), writing to and resolving
/// paths in `dir`, with one input named `src` and one output port `out` (a test of a
/// kind with more ports sets `outputs` to the kind's `ports(..).outputs`).
pub fn context(stage: &str, kind: &str, dir: &Path) -> BuildContext {
    BuildContext {
        stage: stage.into(),
        kind: kind.into(),
        replica: 0,
        replicas: 1,
        graph: "t".into(),
        seed: 1,
        out_dir: dir.to_path_buf(),
        graph_dir: dir.to_path_buf(),
        inputs: vec!["src".into()],
        restart: Restart::OnFailure,
        outputs: vec![OutPort::forwarding("out")],
    }
}

/// Frame `seq` of stream 0, whole, with `fields`, on input 0.
pub fn input(seq: u64, fields: Fields) -> Input {
    Input::Message {
        input: 0,
        msg: Message {
            id: FrameId { stream: 0, seq },
            part: Part::WHOLE,
            captured: std::time::SystemTime::now(),
            born: std::time::Instant::now(),
            fields,
        },
    }
}
