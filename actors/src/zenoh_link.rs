//! Edges between machines over zenoh (DESIGN §7): the [`Bridges`] the engine asks for
//! when it cuts a graph with `dataflow run GRAPH --machine NAME`.
//!
//! # Protocol (one link per crossing edge)
//! Keys: `dataflow/<graph>/<from>/<port>/<to>/<input>/data` (transmitter → receiver)
//! and `…/ack` (receiver → transmitter). A data sample is the message written by
//! [`crate::wire`] with a small `Header` in the attachment: the transmitter's
//! epoch (random per process), the message's sequence number on this link, and the
//! first sequence number not yet acknowledged (`base`). End of stream is a header
//! with no payload, numbered like a frame.
//!
//! - **Credit.** The transmitter keeps every message until the receiver acknowledges
//!   it, and holds at most `mailbox` of them (the consumer edge's capacity): the edge's
//!   permits cross the link. The receiver acknowledges a message when its place on
//!   the receiving machine's edge is freed — when the consumer has sent its outputs
//!   on (through the engine's release callback) — with a cumulative
//!   `Ack { next }`, so a frame is never dropped between the two machines.
//! - **Backpressure.** With the window full the sending sink blocks; the engine's
//!   edge in front of it (same capacity and policy as the consumer's edge) then
//!   blocks the producer for `block`, or drops and counts for `drop_newest` /
//!   `drop_oldest`. zenoh's own congestion control follows the policy: `block` →
//!   `CongestionControl::Block`, drops → `CongestionControl::Drop`.
//! - **Start-up order.** The receiver announces itself (`Hello`, once a second);
//!   the transmitter sends only to a receiver it has heard from, logging
//!   "waiting for receiver on `<key>`" until then. zenoh itself retries the connection
//!   with backoff (250 ms doubling to 4 s).
//! - **Restarts.** When zenoh reports no subscriber on the data key any more the
//!   receiver is gone (`dataflow_link_up` = 0): the transmitter keeps what it holds
//!   and blocks. A receiver that says `Hello` with a new id gets every message not
//!   yet acknowledged again, from `base`; duplicates are discarded by sequence number.
//! - **Losses.** Sequence numbers are checked on arrival: a gap (possible with a drop
//!   policy, where zenoh may drop under congestion) is counted in
//!   `dataflow_link_lost_total` and logged, a late arrival in
//!   `dataflow_link_reordered_total`; nothing is lost silently.
//! - **Ctrl-C** on the transmitter ends its sources; end of stream crosses the link
//!   like a frame. Ctrl-C on the receiver sends `Stop` upstream: the transmitter ends
//!   its sources too and the receiver keeps receiving until that end of stream.
//!
//! # Pools
//! An edge into or out of a pool of machines (`CrossingEdge::to_pool` / `from_pool`,
//! issue 22) gets other ends: the producer's dispatching sink, a member's receiver, a
//! member's transmitter (this module's transmitter, tied to the member's book), and the
//! consumer's merging receiver. The protocol is in `actors/src/zenoh_pool.rs`.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver as ChanRx, RecvTimeoutError, Sender as ChanTx};
use dataflow_engine::registry::Configured;
use dataflow_engine::{
    BridgeError, Bridges, BuildContext, Built, CrossingEdge, FrameId, Input, MachineSpec, Outputs, Plan, PoolSpec,
    Ports, Source, SourceItem, Stage, StageError, StopFlag, TlsSpec, WhenFull,
};
use dataflow_monitoring::names;
use serde::{Deserialize, Serialize};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

use crate::wire;
use crate::zenoh_pool::{out_key, skip_key, Book, MergeReceiver, PoolReceiver, PoolSender};

/// Why the zenoh side of a distributed run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A `[machines.<name>]` value zenoh does not accept.
    #[error("{file}: [machines.{machine}]: {message}")]
    Config {
        /// Graph file.
        file: String,
        /// Machine.
        machine: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// zenoh could not open its session (e.g. a listen address in use).
    #[error("{file}: machine `{machine}`: cannot start zenoh: {message}")]
    Open {
        /// Graph file.
        file: String,
        /// Machine.
        machine: String,
        /// What zenoh said, with a hint.
        message: String,
    },
}

/// Attachment of every data sample.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Header {
    Frame { epoch: u64, seq: u64, base: u64 },
    Eos { epoch: u64, seq: u64, base: u64 },
}

/// What the receiver sends back on the ack key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Control {
    /// A receiver is subscribed (sent once a second).
    Hello { rx: u64 },
    /// Every message of `epoch` below `next` has left the receiving machine's edge.
    Ack { rx: u64, epoch: u64, next: u64 },
    /// Ctrl-C on the receiving machine: end the sources.
    Stop { rx: u64 },
    /// Under `block`, a sequence gap (zenoh lost samples when its connection dropped):
    /// send everything not acknowledged again from `from` (go-back-N).
    Resend { rx: u64, epoch: u64, from: u64 },
}

/// Reads a control message of the ack key; the error says what was ignored and why.
fn read_control(key: &str, payload: &[u8]) -> Result<Control, String> {
    postcard::from_bytes::<Control>(payload).map_err(|e| {
        format!(
            "link {key}: a malformed control message ({} bytes) was ignored: {e}; \
             check that both machines run the same dataflow version and that no other program publishes on this key",
            payload.len()
        )
    })
}

pub(crate) fn random_id() -> u64 {
    use rand::Rng;
    rand::rng().random::<u64>() | 1
}

/// One chunk of a zenoh key: stage ids may hold characters zenoh reserves.
pub(crate) fn chunk(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
            out.push(c);
        } else {
            out.push_str(&format!("%{:02X}", c as u32));
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The key prefix of a crossing edge: `dataflow/<graph>/<from>/<port>/<to>/<input>`.
pub fn link_key(edge: &CrossingEdge) -> String {
    format!(
        "dataflow/{}/{}/{}/{}/{}",
        chunk(&edge.graph),
        chunk(&edge.from),
        chunk(&edge.port),
        chunk(&edge.to),
        edge.input
    )
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn resolve(graph_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        graph_dir.join(p)
    }
}

/// The zenoh configuration of `machine` in `plan`: explicit endpoints, no multicast
/// scouting, reconnection with backoff, TLS files where given.
pub fn zenoh_config(plan: &Plan, machine: &str) -> Result<zenoh::Config, LinkError> {
    config(plan, machine, true)
}

/// What `dataflow validate` checks of `machine`: [`zenoh_config`] without looking for
/// the TLS files, which only that machine holds (each has its own key).
pub fn check_config(plan: &Plan, machine: &str) -> Result<(), LinkError> {
    config(plan, machine, false).map(|_| ())
}

fn config(plan: &Plan, machine: &str, files: bool) -> Result<zenoh::Config, LinkError> {
    let file = plan.file.display().to_string();
    let err = |message: String| LinkError::Config {
        file: file.clone(),
        machine: machine.to_string(),
        message,
    };
    let empty = MachineSpec::default();
    let spec = plan.machines.get(machine).unwrap_or(&empty);
    let mut c = zenoh::Config::default();
    let mut set = |key: &str, value: String| {
        c.insert_json5(key, &value)
            .map_err(|e| err(format!("`{key}` = {value}: {e}")))
    };
    let mut connect: Vec<String> = spec.connect.clone();
    if !plan.machines.contains_key(machine) {
        // A member joining a pool at run time: the pools' `connect` endpoints.
        for p in plan.pools.values() {
            connect.extend(
                p.connect
                    .iter()
                    .filter(|e| !connect.contains(e))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
    }
    if let Some(r) = &spec.router {
        set("mode", "\"client\"".into())?;
        connect = vec![r.clone()];
    } else {
        set("mode", "\"peer\"".into())?;
        if connect.is_empty() {
            // Connect to the other machines' listen endpoints that name a host.
            for (name, other) in &plan.machines {
                if name != machine {
                    connect.extend(
                        other
                            .listen
                            .iter()
                            .filter(|e| !e.contains("/0.0.0.0:") && !e.contains("/[::]:"))
                            .cloned(),
                    );
                }
            }
        }
    }
    for e in spec.listen.iter().chain(&connect) {
        let ok = e.split_once('/').is_some_and(|(proto, addr)| {
            !proto.is_empty()
                && addr
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        });
        if !ok {
            return Err(err(format!(
                "endpoint `{e}` is not an endpoint: write protocol/host:port, e.g. \"tcp/192.168.1.20:7447\" or \"tls/server.lan:7447\""
            )));
        }
    }
    set("scouting/multicast/enabled", "false".into())?;
    set("listen/endpoints", json_list(&spec.listen))?;
    set("connect/endpoints", json_list(&connect))?;
    // Start-up order does not matter: keep trying, with backoff, and never give up.
    set("connect/timeout_ms", "-1".into())?;
    set("connect/exit_on_failure", "false".into())?;
    set(
        "connect/retry",
        "{ period_init_ms: 250, period_max_ms: 4000, period_increase_factor: 2 }".into(),
    )?;
    check_tls_endpoints(machine, spec, &connect).map_err(err)?;
    if let Some(tls) = &spec.tls {
        for (key, value) in tls_settings(plan, tls, files).map_err(err)? {
            set(key, value)?;
        }
    }
    Ok(c)
}

/// With `tls`, every endpoint of the machine is `tls/...` (a `tcp/` one would let in
/// anyone who reaches the port); a `tls/` endpoint needs `tls`.
fn check_tls_endpoints(machine: &str, spec: &MachineSpec, connect: &[String]) -> Result<(), String> {
    for e in spec.listen.iter().chain(connect) {
        let is_tls = e.starts_with("tls/");
        if spec.tls.is_some() && !is_tls {
            return Err(format!(
                "endpoint `{e}` is not encrypted while this machine has `tls`: write it as `tls/{}` \
                 (a plain endpoint would let in anyone who reaches the port)",
                e.split_once('/').map(|(_, a)| a).unwrap_or(e)
            ));
        }
        if spec.tls.is_none() && is_tls {
            return Err(format!(
                "endpoint `{e}` is TLS but [machines.{machine}] has no `tls`: add \
                 tls = {{ root_ca = \"certs/ca.pem\", cert = \"certs/{machine}.pem\", key = \"certs/{machine}-key.pem\" }} \
                 (scripts/make-certs makes them)"
            ));
        }
    }
    Ok(())
}

/// zenoh's TLS keys for `tls`: always mutual — each side shows a certificate signed by
/// `root_ca` and checks the other's, so only machines holding one get in.
fn tls_settings(plan: &Plan, tls: &TlsSpec, files: bool) -> Result<Vec<(&'static str, String)>, String> {
    let missing: Vec<&str> = [
        ("root_ca", tls.root_ca.is_none()),
        ("cert", tls.cert.is_none()),
        ("key", tls.key.is_none()),
    ]
    .into_iter()
    .filter_map(|(k, absent)| absent.then_some(k))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "`tls` lacks {}: mutual TLS needs the private CA's certificate (root_ca) and this machine's \
             certificate and key; `scripts/make-certs` makes all three",
            missing.join(", ")
        ));
    }
    let path = |p: &Option<PathBuf>| -> Result<String, String> {
        let r = resolve(&plan.graph_dir, p.as_deref().unwrap_or(Path::new("")));
        if files && !r.is_file() {
            let given = p.as_deref().unwrap_or(Path::new("")).display().to_string();
            return Err(format!(
                "TLS file `{given}` not found (looked in the current folder and at {}): make the \
                 certificates with `scripts/make-certs` and copy this machine's to it",
                r.display()
            ));
        }
        Ok(serde_json::to_string(&r.display().to_string()).unwrap_or_default())
    };
    let (ca, cert, key) = (path(&tls.root_ca)?, path(&tls.cert)?, path(&tls.key)?);
    Ok(vec![
        ("transport/link/tls/root_ca_certificate", ca),
        ("transport/link/tls/listen_certificate", cert.clone()),
        ("transport/link/tls/connect_certificate", cert),
        ("transport/link/tls/listen_private_key", key.clone()),
        ("transport/link/tls/connect_private_key", key),
        ("transport/link/tls/enable_mtls", "true".into()),
    ])
}

/// The zenoh side of one process of a distributed run: one session, the bridges
/// for every crossing edge, and the threads that acknowledge received messages.
pub struct ZenohBridges {
    session: zenoh::Session,
    machine: String,
    stop: StopFlag,
    /// Acknowledging threads of the receiving bridges, joined by [`ZenohBridges::close`].
    ack_threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    /// Per pool this process is a member of: which frames have left it.
    books: Mutex<std::collections::HashMap<String, Arc<Book>>>,
    /// Per pool: how many crossing edges go into it (the consumer waits for each one's end).
    pool_inputs: std::collections::HashMap<String, usize>,
}

impl ZenohBridges {
    /// Opens the zenoh session of `machine`. `stop` is the run's stop flag: a
    /// receiver's Ctrl-C sets it here, and a sender gives up waiting when it is set.
    pub fn open(plan: &Plan, machine: &str, stop: StopFlag) -> Result<ZenohBridges, LinkError> {
        let config = zenoh_config(plan, machine)?;
        if let Some(r) = plan.machines.get(machine).and_then(|m| m.router.as_ref()) {
            // In client mode zenoh waits for the router before the session opens.
            tracing::warn!("machine `{machine}`: connecting to the zenoh router {r}; waiting until it answers");
        }
        let session = zenoh::open(config).wait().map_err(|e| LinkError::Open {
            file: plan.file.display().to_string(),
            machine: machine.to_string(),
            message: format!(
                "{e}; check [machines.{machine}] listen (is the port free? is the address this machine's?)"
            ),
        })?;
        let mut pool_inputs = std::collections::HashMap::new();
        for e in plan.crossing_edges() {
            if let Some(p) = &e.to_pool {
                *pool_inputs.entry(p.name.clone()).or_insert(0) += 1;
            }
        }
        Ok(ZenohBridges {
            session,
            machine: machine.to_string(),
            stop,
            ack_threads: Arc::new(Mutex::new(Vec::new())),
            books: Mutex::new(std::collections::HashMap::new()),
            pool_inputs,
        })
    }

    /// Lets the receivers send their last acknowledgements (up to `grace`), then
    /// closes the session.
    pub fn close(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let threads: Vec<_> = self
            .ack_threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let _ = self.session.close().wait();
    }
}

struct LinkConfig {
    edge: CrossingEdge,
    key: String,
    session: zenoh::Session,
    machine: String,
    stop: StopFlag,
    ack_threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    sender: bool,
    /// Which pool end this is, when the edge goes into or out of a pool.
    pool: PoolEnd,
}

/// The end of a crossing edge that touches a pool, as this process plays it.
#[derive(Clone)]
enum PoolEnd {
    /// An ordinary point-to-point link.
    None,
    /// Producer → pool: dispatch to members.
    Dispatch(PoolSpec),
    /// Pool → consumer, on a member: an ordinary transmitter tied to the member's book.
    MemberOut(PoolSpec, Arc<Book>),
    /// Producer → pool, on a member: the member's receiver.
    MemberIn(PoolSpec, Arc<Book>),
    /// Pool → consumer, on the consumer: merge the members.
    Merge(PoolSpec, usize),
}

impl Bridges for ZenohBridges {
    fn sender_kind(&self) -> &'static str {
        "zenoh_send"
    }
    fn receiver_kind(&self) -> &'static str {
        "zenoh_recv"
    }
    fn sender(&self, edge: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError> {
        Ok(Arc::new(self.link(edge, true)))
    }
    fn receiver(&self, edge: &CrossingEdge) -> Result<Arc<dyn Configured>, BridgeError> {
        Ok(Arc::new(self.link(edge, false)))
    }
}

impl ZenohBridges {
    fn book(&self, pool: &str) -> Arc<Book> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        books.entry(pool.to_string()).or_default().clone()
    }

    fn link(&self, edge: &CrossingEdge, sender: bool) -> LinkConfig {
        let (key, pool) = match (&edge.from_pool, &edge.to_pool, sender) {
            (_, Some(p), true) => (link_key(edge), PoolEnd::Dispatch(p.clone())),
            (_, Some(p), false) => (link_key(edge), PoolEnd::MemberIn(p.clone(), self.book(&p.name))),
            (Some(p), None, true) => (
                out_key(edge, p, &self.machine),
                PoolEnd::MemberOut(p.clone(), self.book(&p.name)),
            ),
            (Some(p), None, false) => {
                let inputs = self.pool_inputs.get(&p.name).copied().unwrap_or(1);
                (link_key(edge), PoolEnd::Merge(p.clone(), inputs))
            }
            (None, None, _) => (link_key(edge), PoolEnd::None),
        };
        LinkConfig {
            edge: edge.clone(),
            key,
            pool,
            session: self.session.clone(),
            machine: self.machine.clone(),
            stop: self.stop.clone(),
            ack_threads: self.ack_threads.clone(),
            sender,
        }
    }
}

impl Configured for LinkConfig {
    fn ports(&self) -> Ports {
        if self.sender {
            // Sending blocks while the window is full: run it on its own thread.
            Ports {
                heavy: true,
                ..Ports::default()
            }
        } else {
            Ports {
                outputs: vec![dataflow_engine::OutPort::new("out")],
                ..Ports::default()
            }
        }
    }
    fn check(&self, _ctx: &BuildContext) -> Vec<String> {
        Vec::new()
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Built, StageError> {
        match &self.pool {
            PoolEnd::Dispatch(p) => {
                let s = PoolSender::open(&self.edge, p, &self.session, &self.machine, &self.stop)?;
                return Ok(Built::Stage(Box::new(s)));
            }
            PoolEnd::MemberIn(p, book) => {
                let r = PoolReceiver::open(
                    &self.edge,
                    p,
                    &self.session,
                    &self.machine,
                    book.clone(),
                    &self.ack_threads,
                )?;
                return Ok(Built::Source(Box::new(r)));
            }
            PoolEnd::Merge(p, inputs) => {
                let r = MergeReceiver::open(&self.edge, p, &self.session, *inputs, self.ack_threads.clone())?;
                return Ok(Built::Source(Box::new(r)));
            }
            PoolEnd::MemberOut(..) | PoolEnd::None => {}
        }
        if self.sender {
            Ok(Built::Stage(Box::new(LinkSender::open(self)?)))
        } else {
            Ok(Built::Source(Box::new(LinkReceiver::open(self)?)))
        }
    }
}

pub(crate) fn link_error(key: &str, what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::new("link", format!("{what} on {key}: {e}"))
}

/// Link metrics, labelled by the original edge's stages.
struct LinkMetrics {
    up: metrics::Gauge,
    lost: metrics::Counter,
    reordered: metrics::Counter,
    resent: metrics::Counter,
    bytes: metrics::Counter,
}

impl LinkMetrics {
    fn new(edge: &CrossingEdge) -> Self {
        let l = [
            (names::LABEL_FROM, edge.from.clone()),
            (names::LABEL_TO, edge.to.clone()),
        ];
        let m = LinkMetrics {
            up: metrics::gauge!(names::LINK_UP, &l),
            lost: metrics::counter!(names::LINK_LOST, &l),
            reordered: metrics::counter!(names::LINK_REORDERED, &l),
            resent: metrics::counter!(
                names::LINK_RESENT,
                names::LABEL_FROM => edge.from.clone(),
                names::LABEL_TO => edge.to.clone(),
                names::LABEL_MEMBER => edge.to_machine.clone()
            ),
            bytes: metrics::counter!(names::LINK_SENT_BYTES, &l),
        };
        m.up.set(0.0);
        m
    }
}

enum Body {
    Frame(zenoh::bytes::ZBytes, usize),
    Eos,
}

struct Entry {
    seq: u64,
    body: Body,
    sent: bool,
}

/// The producer's end: a sink that publishes each message and holds it until acknowledged.
struct LinkSender {
    key: String,
    edge: CrossingEdge,
    machine: String,
    publisher: zenoh::pubsub::Publisher<'static>,
    _acks_sub: zenoh::pubsub::Subscriber<()>,
    acks: ChanRx<Control>,
    epoch: u64,
    next_seq: u64,
    /// First sequence number not yet acknowledged.
    acked: u64,
    window: usize,
    /// Messages sent or waiting to be sent, not yet acknowledged, oldest first.
    queue: VecDeque<Entry>,
    /// The receiver heard from last (its `Hello` id), while zenoh sees it subscribed.
    receiver: Option<u64>,
    waiting_since: Option<Instant>,
    last_notice: Option<Instant>,
    /// When zenoh was last asked whether the receiver is subscribed.
    last_check: Option<Instant>,
    stop: StopFlag,
    metrics: LinkMetrics,
    /// On a pool member: its book and this link's index there, and the liveliness
    /// token that tells the consumer this member sends.
    book: Option<(Arc<Book>, usize)>,
    /// On a pool member: how long to wait at the end for a consumer that went.
    pool_grace: Option<Duration>,
    /// On a pool member: the frame of each message not acknowledged yet, by sequence number.
    out_ids: Arc<Mutex<std::collections::BTreeMap<u64, FrameId>>>,
    _token: Option<zenoh::liveliness::LivelinessToken>,
}

impl LinkSender {
    fn open(c: &LinkConfig) -> Result<LinkSender, StageError> {
        let congestion = match c.edge.when_full {
            WhenFull::Block => CongestionControl::Block,
            WhenFull::DropNewest | WhenFull::DropOldest => CongestionControl::Drop,
        };
        let data_key = format!("{}/data", c.key);
        let publisher = c
            .session
            .declare_publisher(data_key.clone())
            .congestion_control(congestion)
            .wait()
            .map_err(|e| link_error(&data_key, "cannot declare the publisher", e))?;
        let (tx, acks) = crossbeam_channel::unbounded();
        let ack_key = format!("{}/ack", c.key);
        let (key, malformed) = (ack_key.clone(), AtomicU64::new(0));
        let epoch = random_id();
        // On a pool member, acknowledgements settle the member's book at once (the sink
        // may be idle after its last frame and read its own acknowledgements no more).
        let out_ids: Arc<Mutex<std::collections::BTreeMap<u64, FrameId>>> = Arc::default();
        let book = match &c.pool {
            PoolEnd::MemberOut(_, book) => Some((book.clone(), out_ids.clone())),
            _ => None,
        };
        let acks_sub = c
            .session
            .declare_subscriber(ack_key.clone())
            .callback(
                move |s: zenoh::sample::Sample| match read_control(&key, &s.payload().to_bytes()) {
                    Ok(ctl) => {
                        if let (Control::Ack { epoch: e, next, .. }, Some((book, ids))) = (&ctl, &book) {
                            if *e == epoch {
                                let done = {
                                    let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                                    let rest = ids.split_off(next);
                                    std::mem::replace(&mut *ids, rest)
                                };
                                for id in done.into_values() {
                                    book.out_acked(id);
                                }
                            }
                        }
                        let _ = tx.send(ctl);
                    }
                    Err(text) => {
                        // Logged the first time and then every 100th, so a flood cannot fill the log.
                        let n = malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        if n == 1 || n.is_multiple_of(100) {
                            tracing::warn!(link = %key, ignored = n, "{text}");
                        }
                    }
                },
            )
            .wait()
            .map_err(|e| link_error(&ack_key, "cannot subscribe to acknowledgements", e))?;
        let (book, token) = match &c.pool {
            PoolEnd::MemberOut(pool, book) => {
                let token = c
                    .session
                    .liveliness()
                    .declare_token(c.key.clone())
                    .wait()
                    .map_err(|e| link_error(&c.key, "cannot declare the member's liveliness token", e))?;
                let skip = skip_key(&c.edge, pool);
                let skip_pub = c
                    .session
                    .declare_publisher(skip.clone())
                    .congestion_control(CongestionControl::Block)
                    .wait()
                    .map_err(|e| link_error(&skip, "cannot declare the publisher", e))?;
                let index = book.add_out(c.key.clone(), skip_pub);
                (Some((book.clone(), index)), Some(token))
            }
            _ => (None, None),
        };
        Ok(LinkSender {
            book,
            _token: token,
            key: data_key,
            edge: c.edge.clone(),
            machine: c.machine.clone(),
            publisher,
            _acks_sub: acks_sub,
            acks,
            epoch,
            out_ids,
            pool_grace: match &c.pool {
                PoolEnd::MemberOut(p, _) => Some(p.ack_timeout),
                _ => None,
            },
            next_seq: 0,
            acked: 0,
            window: c.edge.mailbox.max(1),
            queue: VecDeque::new(),
            receiver: None,
            waiting_since: None,
            last_notice: None,
            last_check: None,
            stop: c.stop.clone(),
            metrics: LinkMetrics::new(&c.edge),
        })
    }

    fn on_control(&mut self, ctl: Control) {
        match ctl {
            Control::Hello { rx } => self.adopt(rx),
            Control::Ack { rx, epoch, next } => {
                if epoch != self.epoch {
                    return;
                }
                self.adopt(rx);
                while self.queue.front().is_some_and(|e| e.seq < next) {
                    self.queue.pop_front();
                }
                self.acked = self.acked.max(next);
            }
            Control::Resend { rx, epoch, from } => {
                if epoch != self.epoch || self.receiver != Some(rx) {
                    return;
                }
                let mut n = 0u64;
                for e in self.queue.iter_mut().filter(|e| e.seq >= from && e.sent) {
                    e.sent = false;
                    n += 1;
                }
                self.metrics.resent.increment(n);
                tracing::warn!(link = %self.key, machine = %self.edge.to_machine, from, resend = n,
                    "the receiver missed messages (the connection dropped?): sending them again");
            }
            Control::Stop { .. } => {
                if !self.stop.is_set() {
                    tracing::warn!(link = %self.key, machine = %self.edge.to_machine,
                        "the receiving machine `{}` asked to stop (Ctrl-C there): ending the sources here", self.edge.to_machine);
                    self.stop.set();
                }
            }
        }
    }

    /// A receiver with a new id: everything not acknowledged goes to it again.
    fn adopt(&mut self, rx: u64) {
        if self.receiver == Some(rx) {
            return;
        }
        let resend = self.queue.iter().filter(|e| e.sent).count();
        for e in self.queue.iter_mut() {
            e.sent = false;
        }
        if resend > 0 {
            self.metrics.resent.increment(resend as u64);
        }
        let waited = self
            .waiting_since
            .take()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        tracing::info!(link = %self.key, machine = %self.edge.to_machine, resend, waited_s = waited,
            "receiver for `{}` is up", self.edge.to);
        self.receiver = Some(rx);
        self.metrics.up.set(1.0);
    }

    /// Whether zenoh still sees a subscriber on the data key (asked at most every 50 ms
    /// while a receiver is there, so the hot path stays cheap).
    fn check_presence(&mut self) {
        let now = Instant::now();
        if self.receiver.is_some()
            && self
                .last_check
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(50))
        {
            return;
        }
        self.last_check = Some(now);
        let matching = self
            .publisher
            .matching_status()
            .wait()
            .map(|s| s.matching())
            .unwrap_or(false);
        if !matching && self.receiver.is_some() {
            self.receiver = None;
            self.metrics.up.set(0.0);
            tracing::warn!(link = %self.key, machine = %self.edge.to_machine, held = self.queue.len(),
                "receiver for `{}` is gone; holding the messages not acknowledged until it returns", self.edge.to);
        }
        if self.receiver.is_none() {
            let now = Instant::now();
            let since = *self.waiting_since.get_or_insert(now);
            let due = self
                .last_notice
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
            if due {
                self.last_notice = Some(now);
                tracing::warn!(
                    "waiting for receiver on {} (stage `{}` on machine `{}`, {:.0} s so far; this is machine `{}`): \
                     start `dataflow run GRAPH --machine {}` there and check that the machines reach each other's [machines] endpoints",
                    self.key,
                    self.edge.to,
                    self.edge.to_machine,
                    since.elapsed().as_secs_f64(),
                    self.machine,
                    self.edge.to_machine
                );
            }
        }
    }

    fn pump(&mut self) {
        while let Ok(c) = self.acks.try_recv() {
            self.on_control(c);
        }
    }

    /// Sends what is not sent yet, when a receiver is there.
    fn flush(&mut self) -> Result<(), StageError> {
        if self.receiver.is_none() {
            return Ok(());
        }
        let (epoch, base) = (self.epoch, self.acked);
        for e in self.queue.iter_mut().filter(|e| !e.sent) {
            let header = match e.body {
                Body::Frame(..) => Header::Frame {
                    epoch,
                    seq: e.seq,
                    base,
                },
                Body::Eos => Header::Eos {
                    epoch,
                    seq: e.seq,
                    base,
                },
            };
            let att =
                postcard::to_stdvec(&header).map_err(|err| link_error(&self.key, "cannot write a header", err))?;
            let (payload, len) = match &e.body {
                Body::Frame(z, len) => (z.clone(), *len),
                Body::Eos => (zenoh::bytes::ZBytes::new(), 0),
            };
            self.publisher
                .put(payload)
                .attachment(att)
                .wait()
                .map_err(|err| link_error(&self.key, "cannot publish", err))?;
            self.metrics.bytes.increment(len as u64);
            e.sent = true;
        }
        Ok(())
    }

    /// Waits a little for acknowledgements and for the receiver; fails when the run
    /// is stopped while no receiver is there and messages are still held (nobody would
    /// ever take them). A receiver that acknowledged everything and left (it ended its
    /// run after our end of stream) is a clean end, not a failure.
    fn wait_step(&mut self, what: &str) -> Result<(), StageError> {
        match self.acks.recv_timeout(Duration::from_millis(100)) {
            Ok(c) => self.on_control(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(link_error(&self.key, "acknowledgements stopped", "subscriber closed"))
            }
        }
        // Every acknowledgement already here counts before the receiver's presence does.
        while let Ok(c) = self.acks.try_recv() {
            self.on_control(c);
        }
        self.pump();
        self.check_presence();
        if self.stop.is_set() && self.receiver.is_none() && !self.queue.is_empty() {
            return Err(StageError::new(
                "link",
                format!(
                    "stopped while waiting for the receiver on {} (machine `{}`): {what} not delivered",
                    self.key, self.edge.to_machine
                ),
            ));
        }
        self.flush()
    }
}

impl Stage for LinkSender {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let body = wire::encode(&msg).map_err(|e| StageError::new("link", format!("{}: {e}", self.key)))?;
        let len = body.len();
        self.pump();
        self.check_presence();
        while self.queue.len() >= self.window {
            self.wait_step(&format!("frame {}", msg.id))?;
        }
        if let Some((book, index)) = &self.book {
            book.out_sent(*index, msg.id);
            if let Ok(mut ids) = self.out_ids.lock() {
                ids.insert(self.next_seq, msg.id);
            }
        }
        self.queue.push_back(Entry {
            seq: self.next_seq,
            body: Body::Frame(zenoh::bytes::ZBytes::from(body), len),
            sent: false,
        });
        self.next_seq += 1;
        self.flush()
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        self.queue.push_back(Entry {
            seq: self.next_seq,
            body: Body::Eos,
            sent: false,
        });
        self.next_seq += 1;
        self.pump();
        self.check_presence();
        self.flush()?;
        let mut gone_since: Option<Instant> = None;
        while !self.queue.is_empty() {
            if let (Some(limit), true) = (self.pool_grace, self.receiver.is_none() && self.acked > 0) {
                // A pool member whose consumer went after taking frames from it: the
                // consumer ends only once it has every frame, so what is left here are
                // copies another member delivered (it was taken for dead). Wait a little
                // in case the consumer only lost its connection, then end.
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= limit {
                    tracing::warn!(link = %self.key, left = self.queue.len() - 1,
                        "the consumer on machine `{}` has ended: {} message(s) held here were not needed (another member delivered them)",
                        self.edge.to_machine, self.queue.len() - 1);
                    break;
                }
            } else {
                gone_since = None;
            }
            let left = self.queue.len() - 1;
            self.wait_step(&format!("{left} frame(s) and end of stream"))?;
        }
        tracing::info!(link = %self.key, frames = self.next_seq - 1, "end of stream delivered and acknowledged");
        Ok(())
    }
}

pub(crate) enum AckEvent {
    /// A fresh transmitter epoch starts at `base`.
    Start { epoch: u64, base: u64 },
    /// Message `seq` left the edge (or was found missing, or was end of stream).
    Done { epoch: u64, seq: u64 },
    /// Ctrl-C here: ask the transmitter to end its sources.
    Stop,
    /// A gap under `block`: ask for everything from `from` again.
    Resend { epoch: u64, from: u64 },
}

/// Cumulative acknowledgement of one transmitter epoch.
pub(crate) struct Tracker {
    epoch: u64,
    pub(crate) next: u64,
    done: BTreeSet<u64>,
}

impl Tracker {
    pub(crate) fn new(epoch: u64, next: u64) -> Tracker {
        Tracker {
            epoch,
            next,
            done: BTreeSet::new(),
        }
    }

    pub(crate) fn done(&mut self, seq: u64) -> bool {
        if seq < self.next {
            return false;
        }
        self.done.insert(seq);
        let before = self.next;
        while self.done.remove(&self.next) {
            self.next += 1;
        }
        self.next != before
    }
}

/// Publishes `Hello` once a second and a cumulative `Ack` whenever it advances.
pub(crate) fn ack_loop(
    publisher: zenoh::pubsub::Publisher<'static>,
    events: ChanRx<AckEvent>,
    rx: u64,
    tx_present: Arc<AtomicBool>,
    up: metrics::Gauge,
) {
    let put = |c: Control| {
        if let Ok(b) = postcard::to_stdvec(&c) {
            let _ = publisher.put(b).wait();
        }
    };
    let mut tracker: Option<Tracker> = None;
    let mut last_hello: Option<Instant> = None;
    loop {
        if last_hello.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            put(Control::Hello { rx });
            last_hello = Some(Instant::now());
            let present = publisher
                .matching_status()
                .wait()
                .map(|s| s.matching())
                .unwrap_or(false);
            tx_present.store(present, Ordering::Relaxed);
            up.set(if present { 1.0 } else { 0.0 });
        }
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(AckEvent::Start { epoch, base }) => {
                tracker = Some(Tracker {
                    epoch,
                    next: base,
                    done: BTreeSet::new(),
                });
                put(Control::Ack { rx, epoch, next: base });
            }
            Ok(AckEvent::Done { epoch, seq }) => {
                // One acknowledgement for everything released meanwhile.
                let mut advanced = false;
                let mut stop = false;
                let mut event = Some((epoch, seq));
                while let Some((epoch, seq)) = event.take() {
                    if let Some(t) = tracker.as_mut().filter(|t| t.epoch == epoch) {
                        advanced |= t.done(seq);
                    }
                    match events.try_recv() {
                        Ok(AckEvent::Done { epoch, seq }) => event = Some((epoch, seq)),
                        Ok(AckEvent::Stop) => stop = true,
                        Ok(AckEvent::Resend { epoch, from }) => put(Control::Resend { rx, epoch, from }),
                        Ok(AckEvent::Start { epoch, base }) => {
                            tracker = Some(Tracker {
                                epoch,
                                next: base,
                                done: BTreeSet::new(),
                            });
                            advanced = true;
                        }
                        Err(_) => {}
                    }
                }
                if let Some(t) = tracker.as_ref().filter(|_| advanced) {
                    put(Control::Ack {
                        rx,
                        epoch: t.epoch,
                        next: t.next,
                    });
                }
                if stop {
                    put(Control::Stop { rx });
                }
            }
            Ok(AckEvent::Stop) => put(Control::Stop { rx }),
            Ok(AckEvent::Resend { epoch, from }) => put(Control::Resend { rx, epoch, from }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The last acknowledgement again, in case the first was published into a gap.
    if let Some(t) = tracker {
        put(Control::Ack {
            rx,
            epoch: t.epoch,
            next: t.next,
        });
    }
}

/// The consumer's end: a source that yields the transmitter's messages as they are.
struct LinkReceiver {
    key: String,
    edge: CrossingEdge,
    machine: String,
    data: ChanRx<(Header, Bytes)>,
    _data_sub: zenoh::pubsub::Subscriber<()>,
    events: ChanTx<AckEvent>,
    /// Epoch of the transmitter and the next sequence number expected from it.
    expected: Option<(u64, u64)>,
    /// Sequence numbers found missing, in case they arrive late (bounded).
    missing: BTreeSet<u64>,
    /// Under `block`: the sequence number last asked for again, and when.
    asked: Option<(u64, Instant)>,
    tx_present: Arc<AtomicBool>,
    /// The presence last reported in the log.
    tx_seen: bool,
    stop_sent: bool,
    started: Instant,
    last_notice: Option<Instant>,
    metrics: LinkMetrics,
}

impl LinkReceiver {
    fn open(c: &LinkConfig) -> Result<LinkReceiver, StageError> {
        let rx = random_id();
        let data_key = format!("{}/data", c.key);
        let ack_key = format!("{}/ack", c.key);
        let (dtx, data) = crossbeam_channel::unbounded();
        let data_sub = c
            .session
            .declare_subscriber(data_key.clone())
            .callback(move |s: zenoh::sample::Sample| {
                let Some(h) = s
                    .attachment()
                    .and_then(|a| postcard::from_bytes::<Header>(&a.to_bytes()).ok())
                else {
                    tracing::warn!(key = %s.key_expr(), "a sample without a readable header was ignored");
                    return;
                };
                let body = Bytes::from(s.payload().to_bytes().into_owned());
                let _ = dtx.send((h, body));
            })
            .wait()
            .map_err(|e| link_error(&data_key, "cannot subscribe", e))?;
        let publisher = c
            .session
            .declare_publisher(ack_key.clone())
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| link_error(&ack_key, "cannot declare the acknowledgement publisher", e))?;
        let (events, erx) = crossbeam_channel::unbounded();
        let tx_present = Arc::new(AtomicBool::new(false));
        let metrics = LinkMetrics::new(&c.edge);
        let present = tx_present.clone();
        let up = metrics.up.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ack {}", c.edge.to))
            .spawn(move || ack_loop(publisher, erx, rx, present, up))
            .map_err(|e| link_error(&ack_key, "cannot start the acknowledgement thread", e))?;
        if let Ok(mut t) = c.ack_threads.lock() {
            t.push(thread);
        }
        Ok(LinkReceiver {
            key: data_key,
            edge: c.edge.clone(),
            machine: c.machine.clone(),
            data,
            _data_sub: data_sub,
            events,
            expected: None,
            missing: BTreeSet::new(),
            asked: None,
            tx_present,
            tx_seen: false,
            stop_sent: false,
            started: Instant::now(),
            last_notice: None,
            metrics,
        })
    }

    /// Checks `seq` against the expected number; `false` for a duplicate to skip.
    fn check_seq(&mut self, epoch: u64, seq: u64, base: u64) -> bool {
        match self.expected {
            Some((e, _)) if e == epoch => {}
            previous => {
                if previous.is_some() {
                    tracing::warn!(link = %self.key, "the transmitter restarted (new epoch): taking its stream from sequence {base}");
                }
                self.expected = Some((epoch, base));
                self.missing.clear();
                let _ = self.events.send(AckEvent::Start { epoch, base });
            }
        }
        let next = self.expected.map(|(_, n)| n).unwrap_or(0);
        if seq < next {
            if self.missing.remove(&seq) {
                self.metrics.reordered.increment(1);
                tracing::warn!(link = %self.key, seq, expected = next, "a message arrived out of order (counted as reordered)");
                return true;
            }
            return false;
        }
        if seq > next && self.edge.when_full == WhenFull::Block {
            // Under `block` nothing may be lost: zenoh dropped samples with its connection,
            // so ask for them again (at most every 300 ms) and skip what comes before them.
            let due = self
                .asked
                .is_none_or(|(from, t)| from != next || t.elapsed() >= Duration::from_millis(300));
            if due {
                self.asked = Some((next, Instant::now()));
                tracing::warn!(link = %self.key, from = next, got = seq,
                    "sequence gap under `block`: asked the transmitter to send again from {next}");
                let _ = self.events.send(AckEvent::Resend { epoch, from: next });
            }
            return false;
        }
        if seq > next {
            let lost = seq - next;
            self.metrics.lost.increment(lost);
            tracing::warn!(link = %self.key, from = next, to = seq - 1, lost,
                "message(s) lost on the link (sequence gap), counted in dataflow_link_lost_total");
            for s in next..seq {
                if self.missing.len() < 100_000 {
                    self.missing.insert(s);
                }
                let _ = self.events.send(AckEvent::Done { epoch, seq: s });
            }
        }
        self.expected = Some((epoch, seq + 1));
        true
    }

    /// A request to send again may itself be lost with the connection: repeat it
    /// every 300 ms while the gap stays open.
    fn ask_again(&mut self) {
        let (Some((from, t)), Some((epoch, next))) = (self.asked, self.expected) else {
            return;
        };
        if from == next && t.elapsed() >= Duration::from_millis(300) {
            self.asked = Some((from, Instant::now()));
            let _ = self.events.send(AckEvent::Resend { epoch, from });
        }
    }

    fn notice_waiting(&mut self) {
        let present = self.tx_present.load(Ordering::Relaxed);
        if present != self.tx_seen {
            self.tx_seen = present;
            if present {
                tracing::info!(link = %self.key, "transmitter on machine `{}` is up", self.edge.from_machine);
            } else if self.expected.is_some() {
                tracing::warn!(link = %self.key, "transmitter on machine `{}` is gone; waiting for it to return", self.edge.from_machine);
            }
        }
        if self.expected.is_some() {
            return;
        }
        let now = Instant::now();
        let due = match self.last_notice {
            None => now.duration_since(self.started) >= Duration::from_secs(1),
            Some(t) => now.duration_since(t) >= Duration::from_secs(10),
        };
        if due {
            self.last_notice = Some(now);
            tracing::warn!(
                "waiting for transmitter on {} (stage `{}` on machine `{}`, {:.0} s so far; this is machine `{}`)",
                self.key,
                self.edge.from,
                self.edge.from_machine,
                now.duration_since(self.started).as_secs_f64(),
                self.machine
            );
        }
    }
}

impl Source for LinkReceiver {
    fn ends_on_stop(&self) -> bool {
        false
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        loop {
            if stop.is_set() && !self.stop_sent {
                self.stop_sent = true;
                let _ = self.events.send(AckEvent::Stop);
                tracing::info!(link = %self.key, "asked the transmitter on machine `{}` to stop; draining until its end of stream", self.edge.from_machine);
            }
            if self.stop_sent && !self.tx_present.load(Ordering::Relaxed) && self.data.is_empty() {
                tracing::warn!(link = %self.key, "no transmitter on machine `{}`: ending this stream", self.edge.from_machine);
                return SourceItem::End;
            }
            match self.data.recv_timeout(Duration::from_millis(50)) {
                Ok((Header::Frame { epoch, seq, base }, body)) => {
                    if !self.check_seq(epoch, seq, base) {
                        continue;
                    }
                    match wire::decode(&body) {
                        Ok(msg) => {
                            let events = self.events.clone();
                            let on_release: dataflow_engine::Release = Box::new(move || {
                                let _ = events.send(AckEvent::Done { epoch, seq });
                            });
                            return SourceItem::Forward {
                                msg,
                                on_release: Some(on_release),
                            };
                        }
                        Err(e) => {
                            let _ = self.events.send(AckEvent::Done { epoch, seq });
                            return SourceItem::Failed(StageError::new("link", format!("{}: {e}", self.key)));
                        }
                    }
                }
                Ok((Header::Eos { epoch, seq, base }, _)) => {
                    if !self.check_seq(epoch, seq, base) {
                        continue;
                    }
                    let _ = self.events.send(AckEvent::Done { epoch, seq });
                    tracing::info!(link = %self.key, frames = seq, "end of stream from machine `{}`", self.edge.from_machine);
                    return SourceItem::End;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.ask_again();
                    self.notice_waiting();
                }
                Err(RecvTimeoutError::Disconnected) => return SourceItem::End,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_control_message_is_an_error_naming_the_link() {
        let key = "dataflow/g/a.out->b/0/ack";
        let ok = postcard::to_allocvec(&Control::Stop { rx: 7 }).unwrap();
        assert!(matches!(read_control(key, &ok), Ok(Control::Stop { rx: 7 })));
        let err = read_control(key, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.contains("link dataflow/g/a.out->b/0/ack"), "{err}");
        assert!(err.contains("malformed control message (3 bytes) was ignored"), "{err}");
        assert!(err.contains("same dataflow version"), "{err}");
    }
}
