//! `dataflow top`: a terminal view of a running pipeline, read from its Prometheus
//! endpoint. Per stage: message rate, input queue, utilization, errors, drops and
//! restarts, with the bottleneck marked.
//!
//! The pure parts are separate so they test without a network: [`parse_exposition`]
//! (text format to samples), [`compute`] (two scrapes to rows) and [`render`] (rows
//! to a table). [`run`] scrapes over plain HTTP and redraws every interval.
//!
//! # Definitions
//! - *rate*: increase of `dataflow_stage_messages_received_total` (messages taken in;
//!   a source's frames produced), or of `dataflow_stage_messages_sent_total` for a
//!   stage without the former, summed over the stage's series, divided by the time
//!   between two scrapes (a counter that went down, i.e. a restarted process, counts
//!   from zero). [`run`] shows rates from the second scrape on, measured against the
//!   oldest scrape of the last [`RATE_WINDOW`], so a stage that takes seconds per
//!   frame shows its mean rate rather than 0 in most refreshes;
//! - *queue*: sum of `dataflow_edge_queue_depth` over the edges into the stage
//!   (`to = stage`) against the sum of their `dataflow_edge_capacity`;
//! - *utilization*: `dataflow_stage_utilization`;
//! - *bottleneck*: the stage with the highest utilization (compared as shown, to the
//!   percent), ties broken by the fullest input queue; none when every stage is idle.
//! - *pools* (issue 22; [`pool_rows`], [`render_pools`]): under the stage table, one line per
//!   pool member of an edge into or out of a pool, from `dataflow_pool_sent_total`
//!   (frames sent to it and their rate), `dataflow_pool_credits` (free places seen by the
//!   producer), `dataflow_link_resent_total` (frames re-sent after it was found dead)
//!   and `dataflow_link_duplicates_total` (copies of it the consumer discarded), and
//!   `dataflow_pool_members` per pool.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::names::{
    EDGE_CAPACITY, EDGE_QUEUE_DEPTH, LABEL_FROM, LABEL_KIND, LABEL_MEMBER, LABEL_POOL, LABEL_STAGE, LABEL_TO,
    LINK_DUPLICATES, LINK_RESENT, POOL_CREDITS, POOL_MEMBERS, POOL_SENT, STAGE_DROPPED, STAGE_ERRORS,
    STAGE_MESSAGES_RECEIVED, STAGE_MESSAGES_SENT, STAGE_RESTARTS, STAGE_UTILIZATION,
};
use crate::MonitoringError;

/// The longest span a rate in [`run`] is measured over: the oldest scrape kept.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One sample of the text exposition format: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written (histograms keep their `_bucket`/`_sum`/`_count`).
    pub name: String,
    /// Label pairs, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// One line of the table: what [`compute`] knows about a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// Stage id.
    pub stage: String,
    /// Stage kind(s) from the `kind` label, comma-joined; empty when unknown.
    pub kind: String,
    /// Messages taken in per second (see the module's definitions); `None` until
    /// there are two scrapes.
    pub rate: Option<f64>,
    /// Messages waiting on the edges into the stage; `None` for a stage with no
    /// input edge (a source).
    pub queue_depth: Option<f64>,
    /// Total capacity of the edges into the stage; `None` when not exported.
    pub queue_capacity: Option<f64>,
    /// Busy fraction 0..1; `None` when not exported.
    pub utilization: Option<f64>,
    /// Messages received in total.
    pub received: f64,
    /// Frames failed in total.
    pub errors: f64,
    /// Messages dropped at the stage's inputs in total.
    pub dropped: f64,
    /// Restarts after a panic in total.
    pub restarts: f64,
    /// Whether this is the bottleneck.
    pub bottleneck: bool,
}

impl StageRow {
    /// Input queue fill, depth / capacity, when both are known and capacity > 0.
    pub fn queue_fill(&self) -> Option<f64> {
        match (self.queue_depth, self.queue_capacity) {
            (Some(depth), Some(cap)) if cap > 0.0 => Some(depth / cap),
            _ => None,
        }
    }
}

/// Options of [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct TopOptions {
    /// Metrics URL: `http://127.0.0.1:9464/metrics`, or just `127.0.0.1:9464`.
    pub endpoint: String,
    /// Time between scrapes (and redraws).
    pub interval: Duration,
    /// Print one table (from two scrapes `interval` apart) and return, without
    /// clearing the screen: for scripts and tests.
    pub once: bool,
}

impl Default for TopOptions {
    fn default() -> Self {
        Self {
            endpoint: format!("http://{}/metrics", crate::DEFAULT_LISTEN),
            interval: Duration::from_secs(1),
            once: false,
        }
    }
}

/// Parses the Prometheus text exposition format (version 0.0.4): comments and
/// blank lines are skipped, label values are unescaped, a trailing timestamp is
/// ignored.
///
/// # Errors
/// [`MonitoringError::Parse`] with the line number for a malformed line.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, MonitoringError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| MonitoringError::Parse { line: i + 1, reason })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a metric name at the start of `{line}`"));
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or_else(|| format!("no value for `{name}`"))?;
    let value = parse_value(value_text).ok_or_else(|| format!("`{value_text}` is not a number"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("`{ts}` is not a timestamp"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the value"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` (the part after `{`), returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let key_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label set")?;
        let key = &s[..key_end];
        if key.is_empty() {
            return Err(format!("expected a label name at `{s}`"));
        }
        s = s[key_end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label `{key}`"))?;
        s = s.trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected `\"` to open label `{key}`"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of label `{key}`")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value of label `{key}`")),
            }
        };
        labels.insert(key.to_owned(), value);
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label `{key}`"));
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Turns a scrape (and, for rates, the one before it, `elapsed` earlier) into one
/// row per stage, in pipeline order (sources first, following the edges; ties and
/// cycles alphabetical), with the bottleneck marked.
pub fn compute(previous: Option<&[Sample]>, current: &[Sample], elapsed: Duration) -> Vec<StageRow> {
    let mut rows: BTreeMap<String, StageRow> = BTreeMap::new();
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();

    for s in current {
        let name = s.name.as_str();
        if let Some(stage) = s.label(LABEL_STAGE).filter(|_| name.starts_with("dataflow_stage_")) {
            let row = rows.entry(stage.to_owned()).or_insert_with(|| empty_row(stage));
            if let Some(kind) = s.label(LABEL_KIND) {
                kinds.entry(stage.to_owned()).or_default().insert(kind.to_owned());
            }
            match name {
                STAGE_MESSAGES_RECEIVED => row.received += s.value,
                STAGE_ERRORS => row.errors += s.value,
                STAGE_DROPPED => row.dropped += s.value,
                STAGE_RESTARTS => row.restarts += s.value,
                STAGE_UTILIZATION => row.utilization = Some(s.value),
                _ => {}
            }
        }
        if name == EDGE_QUEUE_DEPTH || name == EDGE_CAPACITY {
            let (Some(from), Some(to)) = (s.label(LABEL_FROM), s.label(LABEL_TO)) else {
                continue;
            };
            edges.insert((from.to_owned(), to.to_owned()));
            rows.entry(from.to_owned()).or_insert_with(|| empty_row(from));
            let row = rows.entry(to.to_owned()).or_insert_with(|| empty_row(to));
            let slot = if name == EDGE_QUEUE_DEPTH {
                &mut row.queue_depth
            } else {
                &mut row.queue_capacity
            };
            *slot = Some(slot.unwrap_or(0.0) + s.value);
        }
    }

    if let Some(previous) = previous {
        let secs = elapsed.as_secs_f64();
        // Messages taken in (what RECEIVED counts; a source's frames); a stage that
        // exports no such series is measured by what it sent.
        let received = increases(previous, current, STAGE_MESSAGES_RECEIVED);
        let sent = increases(previous, current, STAGE_MESSAGES_SENT);
        if secs > 0.0 {
            for (stage, row) in rows.iter_mut() {
                let increase = received.get(stage).or_else(|| sent.get(stage)).copied();
                // Stages that moved nothing in either scrape still had a rate: zero.
                row.rate = Some(increase.unwrap_or(0.0) / secs);
            }
        }
    }

    for (stage, set) in kinds {
        if let Some(row) = rows.get_mut(&stage) {
            row.kind = set.into_iter().collect::<Vec<_>>().join(",");
        }
    }

    let mut ordered: Vec<StageRow> = topological(&rows, &edges)
        .into_iter()
        .filter_map(|stage| rows.remove(&stage))
        .collect();
    mark_bottleneck(&mut ordered);
    ordered
}

/// Increase of counter `name` per stage between two scrapes, summed over the stage's
/// series (a new series or a counter that went down counts from zero).
fn increases(previous: &[Sample], current: &[Sample], name: &str) -> BTreeMap<String, f64> {
    let before: BTreeMap<&BTreeMap<String, String>, f64> = previous
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (&s.labels, s.value))
        .collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for s in current.iter().filter(|s| s.name == name) {
        let Some(stage) = s.label(LABEL_STAGE) else { continue };
        let increase = match before.get(&s.labels) {
            Some(&old) if s.value >= old => s.value - old,
            _ => s.value,
        };
        *out.entry(stage.to_owned()).or_default() += increase;
    }
    out
}

fn empty_row(stage: &str) -> StageRow {
    StageRow {
        stage: stage.to_owned(),
        kind: String::new(),
        rate: None,
        queue_depth: None,
        queue_capacity: None,
        utilization: None,
        received: 0.0,
        errors: 0.0,
        dropped: 0.0,
        restarts: 0.0,
        bottleneck: false,
    }
}

/// Kahn's algorithm, always taking the alphabetically first ready stage; stages left
/// in a cycle follow alphabetically.
fn topological(rows: &BTreeMap<String, StageRow>, edges: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut indegree: BTreeMap<&str, usize> = rows.keys().map(|k| (k.as_str(), 0)).collect();
    for (_, to) in edges {
        *indegree.entry(to.as_str()).or_default() += 1;
    }
    let mut ready: BTreeSet<&str> = indegree.iter().filter(|(_, &d)| d == 0).map(|(&k, _)| k).collect();
    let mut order = Vec::with_capacity(rows.len());
    while let Some(stage) = ready.pop_first() {
        order.push(stage.to_owned());
        indegree.remove(stage);
        for (from, to) in edges {
            if from == stage {
                if let Some(d) = indegree.get_mut(to.as_str()) {
                    *d = d.saturating_sub(1);
                    if *d == 0 {
                        ready.insert(to.as_str());
                    }
                }
            }
        }
    }
    order.extend(indegree.keys().map(|k| (*k).to_owned()));
    order
}

fn mark_bottleneck(rows: &mut [StageRow]) {
    // Utilization compared in whole percent, as the table shows it.
    let key = |r: &StageRow| {
        let util = r.utilization.unwrap_or(0.0);
        let util = if util.is_finite() {
            (util * 100.0).round() as i64
        } else {
            0
        };
        let fill = r.queue_fill().filter(|f| f.is_finite()).unwrap_or(0.0);
        (util, fill)
    };
    let mut best: Option<(usize, (i64, f64))> = None;
    for (i, row) in rows.iter().enumerate() {
        let k = key(row);
        let better = match best {
            None => true,
            Some((_, b)) => k.0 > b.0 || (k.0 == b.0 && k.1 > b.1),
        };
        if better {
            best = Some((i, k));
        }
    }
    if let Some((i, (util, fill))) = best {
        if util > 0 || fill > 0.0 {
            rows[i].bottleneck = true;
        }
    }
}

/// Renders rows as a fixed-width table with a header naming `source`, and a last
/// line naming the bottleneck.
pub fn render(rows: &[StageRow], source: &str) -> String {
    let header = [
        "", "STAGE", "KIND", "MSG/S", "QUEUE", "FILL", "UTIL", "RECEIVED", "ERRORS", "DROPPED", "RESTARTS",
    ];
    let mut table: Vec<[String; 11]> = vec![header.map(str::to_owned)];
    for r in rows {
        table.push([
            if r.bottleneck { "*".into() } else { String::new() },
            r.stage.clone(),
            if r.kind.is_empty() { "-".into() } else { r.kind.clone() },
            r.rate.map_or("-".into(), |v| format!("{v:.1}")),
            match (r.queue_depth, r.queue_capacity) {
                (Some(d), Some(c)) => format!("{d:.0}/{c:.0}"),
                (Some(d), None) => format!("{d:.0}"),
                _ => "-".into(),
            },
            r.queue_fill().map_or("-".into(), percent),
            r.utilization.map_or("-".into(), percent),
            format!("{:.0}", r.received),
            format!("{:.0}", r.errors),
            format!("{:.0}", r.dropped),
            format!("{:.0}", r.restarts),
        ]);
    }
    let mut widths = [0usize; 11];
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("dataflow top  {source}  {} stages\n", rows.len());
    for line in &table {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            // Names left-aligned, numbers right-aligned.
            if i <= 2 {
                let _ = write!(text, "{cell:<w$} ");
            } else {
                let _ = write!(text, "{cell:>w$} ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    match rows.iter().find(|r| r.bottleneck) {
        Some(r) => {
            let _ = writeln!(
                out,
                "bottleneck: {} (utilization {}, input queue {})",
                r.stage,
                r.utilization.map_or("-".into(), percent),
                r.queue_fill().map_or("-".into(), percent)
            );
        }
        None => out.push_str("bottleneck: none (every stage idle)\n"),
    }
    out
}

/// One pool member of one edge into or out of a pool, as `dataflow top` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    /// The edge, `from->to`.
    pub edge: String,
    /// The member (its machine name).
    pub member: String,
    /// Frames sent to it per second (from the second scrape on).
    pub rate: Option<f64>,
    /// Frames sent to it so far.
    pub sent: f64,
    /// Free places the producer sees at it.
    pub credits: Option<f64>,
    /// Frames re-sent to other members after it was found dead.
    pub resent: f64,
    /// Copies from it the consumer discarded.
    pub duplicates: f64,
}

/// Pool members from two scrapes (see the module's definitions), and the members per
/// pool from `dataflow_pool_members`.
pub fn pool_rows(
    previous: Option<&[Sample]>,
    current: &[Sample],
    elapsed: Duration,
) -> (Vec<PoolRow>, BTreeMap<String, f64>) {
    let key = |s: &Sample| -> Option<(String, String)> {
        let (from, to, member) = (s.label(LABEL_FROM)?, s.label(LABEL_TO)?, s.label(LABEL_MEMBER)?);
        Some((format!("{from}->{to}"), member.to_owned()))
    };
    let mut rows: BTreeMap<(String, String), PoolRow> = BTreeMap::new();
    let mut pools = BTreeMap::new();
    // Members appear through the pool-only series; re-sends count only for them.
    for s in current {
        if s.name == POOL_MEMBERS {
            if let Some(p) = s.label(LABEL_POOL) {
                pools.insert(p.to_owned(), s.value);
            }
            continue;
        }
        if ![POOL_SENT, POOL_CREDITS, LINK_DUPLICATES].contains(&s.name.as_str()) {
            continue;
        }
        let Some((edge, member)) = key(s) else { continue };
        let row = rows.entry((edge.clone(), member.clone())).or_insert_with(|| PoolRow {
            edge,
            member,
            rate: None,
            sent: 0.0,
            credits: None,
            resent: 0.0,
            duplicates: 0.0,
        });
        match s.name.as_str() {
            POOL_SENT => row.sent += s.value,
            POOL_CREDITS => row.credits = Some(row.credits.unwrap_or(0.0) + s.value),
            _ => row.duplicates += s.value,
        }
    }
    for s in current.iter().filter(|s| s.name == LINK_RESENT) {
        if let Some(row) = key(s).and_then(|k| rows.get_mut(&k)) {
            row.resent += s.value;
        }
    }
    if let (Some(previous), true) = (previous, elapsed > Duration::ZERO) {
        for row in rows.values_mut() {
            let before: f64 = previous
                .iter()
                .filter(|s| s.name == POOL_SENT && key(s).is_some_and(|(e, m)| e == row.edge && m == row.member))
                .map(|s| s.value)
                .sum();
            let increase = if row.sent >= before {
                row.sent - before
            } else {
                row.sent
            };
            row.rate = Some(increase / elapsed.as_secs_f64());
        }
    }
    (rows.into_values().collect(), pools)
}

/// The pool lines under the stage table; empty when the endpoint shows no pool.
pub fn render_pools(rows: &[PoolRow], pools: &BTreeMap<String, f64>) -> String {
    if rows.is_empty() && pools.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for (pool, n) in pools {
        let _ = writeln!(out, "pool {pool}: {n:.0} member(s)");
    }
    let mut table = vec![["EDGE", "MEMBER", "FRAMES/S", "SENT", "CREDITS", "RESENT", "DUPLICATES"].map(str::to_owned)];
    for r in rows {
        table.push([
            r.edge.clone(),
            r.member.clone(),
            r.rate.map_or("-".into(), |v| format!("{v:.1}")),
            format!("{:.0}", r.sent),
            r.credits.map_or("-".into(), |v| format!("{v:.0}")),
            format!("{:.0}", r.resent),
            format!("{:.0}", r.duplicates),
        ]);
    }
    let mut widths = [0usize; 7];
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in &table {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            if i <= 1 {
                let _ = write!(text, "{cell:<w$} ");
            } else {
                let _ = write!(text, "{cell:>w$} ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// Fetches and parses one scrape of `endpoint` (see [`TopOptions::endpoint`]).
///
/// # Errors
/// [`MonitoringError::Http`] when the endpoint cannot be read,
/// [`MonitoringError::Parse`] when the page is not exposition text.
pub fn scrape(endpoint: &str, timeout: Duration) -> Result<Vec<Sample>, MonitoringError> {
    let (authority, path) = crate::http::split_url(endpoint)?;
    parse_exposition(&crate::http::get(&authority, &path, timeout)?)
}

/// Runs `top`: scrapes `options.endpoint` every `options.interval` and redraws the
/// table on `out` (clearing the screen with ANSI codes). With `options.once`, takes
/// two scrapes one interval apart, writes one table and returns. Scrape errors end a
/// `once` run; otherwise they are shown and the next interval tries again.
///
/// # Errors
/// The scrape error in `once` mode; [`MonitoringError::Io`] when `out` fails.
pub fn run(options: &TopOptions, out: &mut impl Write) -> Result<(), MonitoringError> {
    let timeout = options.interval.max(Duration::from_secs(1));
    // Earlier scrapes, oldest first, none older than RATE_WINDOW but the last one.
    let mut history: VecDeque<(Instant, Vec<Sample>)> = VecDeque::new();
    if options.once {
        history.push_back((Instant::now(), scrape(&options.endpoint, timeout)?));
        std::thread::sleep(options.interval);
    }
    loop {
        let started = Instant::now();
        let frame = match scrape(&options.endpoint, timeout) {
            Ok(current) => {
                let now = Instant::now();
                let (rows, (members, pools)) = match history.front() {
                    Some((at, before)) => (
                        compute(Some(before), &current, now.duration_since(*at)),
                        pool_rows(Some(before), &current, now.duration_since(*at)),
                    ),
                    None => (
                        compute(None, &current, Duration::ZERO),
                        pool_rows(None, &current, Duration::ZERO),
                    ),
                };
                history.push_back((now, current));
                while history.len() > 1
                    && history
                        .front()
                        .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
                {
                    history.pop_front();
                }
                render(&rows, &options.endpoint) + &render_pools(&members, &pools)
            }
            Err(e) if options.once => return Err(e),
            Err(e) => format!("dataflow top  {}\n{e}\n(retrying)\n", options.endpoint),
        };
        if options.once {
            out.write_all(frame.as_bytes())?;
            out.flush()?;
            return Ok(());
        }
        write!(out, "\x1b[2J\x1b[H{frame}")?;
        out.flush()?;
        std::thread::sleep(options.interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP dataflow_stage_messages_sent_total Messages a stage sent downstream.
# TYPE dataflow_stage_messages_sent_total counter
dataflow_stage_messages_sent_total{stage="src",kind="synthetic"} 100
dataflow_stage_messages_sent_total{stage="slow",kind="delay"} 10
dataflow_stage_messages_sent_total{stage="sink",kind="null_sink"} 0
dataflow_stage_messages_received_total{stage="slow",kind="delay"} 14
"#;

    const AFTER: &str = r#"# HELP dataflow_stage_messages_sent_total Messages a stage sent downstream.
# TYPE dataflow_stage_messages_sent_total counter
dataflow_stage_messages_sent_total{stage="src",kind="synthetic"} 300
dataflow_stage_messages_sent_total{stage="slow",kind="delay"} 30
dataflow_stage_messages_sent_total{stage="sink",kind="null_sink"} 0
dataflow_stage_messages_received_total{stage="slow",kind="delay"} 34
dataflow_stage_errors_total{stage="slow",kind="delay",error="timeout"} 2
dataflow_stage_errors_total{stage="slow",kind="delay",error="decode"} 1
dataflow_stage_dropped_total{stage="sink",reason="drop_oldest"} 5
dataflow_stage_restarts_total{stage="slow"} 1
# TYPE dataflow_stage_utilization gauge
dataflow_stage_utilization{stage="src"} 0.2
dataflow_stage_utilization{stage="slow"} 0.996
dataflow_stage_utilization{stage="sink"} 1.0
dataflow_edge_queue_depth{from="src",to="slow"} 4
dataflow_edge_capacity{from="src",to="slow"} 4
dataflow_edge_queue_depth{from="slow",to="sink"} 0
dataflow_edge_capacity{from="slow",to="sink"} 8
dataflow_stage_processing_seconds_bucket{stage="slow",kind="delay",le="+Inf"} 30 1700000000000
dataflow_stage_processing_seconds_sum{stage="slow",kind="delay"} 29.5
"#;

    #[test]
    fn pool_members_show_rates_credits_resends_and_duplicates() {
        let before = parse_exposition(
            "dataflow_pool_sent_total{from=\"src\",to=\"work\",member=\"gpu1\"} 10\n\
             dataflow_pool_sent_total{from=\"src\",to=\"work\",member=\"gpu2\"} 10\n",
        )
        .unwrap();
        let after = parse_exposition(
            "dataflow_pool_sent_total{from=\"src\",to=\"work\",member=\"gpu1\"} 30\n\
             dataflow_pool_sent_total{from=\"src\",to=\"work\",member=\"gpu2\"} 14\n\
             dataflow_pool_credits{from=\"src\",to=\"work\",member=\"gpu1\"} 3\n\
             dataflow_link_resent_total{from=\"src\",to=\"work\",member=\"gpu2\"} 4\n\
             dataflow_link_resent_total{from=\"a\",to=\"b\",member=\"rx\"} 9\n\
             dataflow_link_duplicates_total{from=\"work\",to=\"sink\",member=\"gpu2\"} 2\n\
             dataflow_pool_members{pool=\"gpus\"} 2\n",
        )
        .unwrap();
        let (rows, pools) = pool_rows(Some(&before), &after, Duration::from_secs(2));
        assert_eq!(pools.get("gpus"), Some(&2.0));
        // A point-to-point link's re-sends (a->b) make no pool row.
        assert_eq!(rows.len(), 3, "{rows:?}");
        let g1 = rows
            .iter()
            .find(|r| r.edge == "src->work" && r.member == "gpu1")
            .unwrap();
        assert_eq!(
            (g1.rate, g1.sent, g1.credits, g1.resent),
            (Some(10.0), 30.0, Some(3.0), 0.0)
        );
        let g2 = rows
            .iter()
            .find(|r| r.edge == "src->work" && r.member == "gpu2")
            .unwrap();
        assert_eq!((g2.rate, g2.resent), (Some(2.0), 4.0));
        let d = rows.iter().find(|r| r.edge == "work->sink").unwrap();
        assert_eq!(d.duplicates, 2.0);
        let text = render_pools(&rows, &pools);
        assert!(text.starts_with("pool gpus: 2 member(s)\nEDGE"), "{text}");
        assert!(text.contains("src->work  gpu1"), "{text}");
        assert_eq!(render_pools(&[], &BTreeMap::new()), "");
    }

    #[test]
    fn parses_labels_escapes_and_specials() {
        let text = "m{a=\"x\\\"y\\\\z\\n\",b=\"\",} +Inf\nn NaN 123\n  \n# c\no{le=\"0.5\"} -1.5e3\n";
        let s = parse_exposition(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("a"), Some("x\"y\\z\n"));
        assert_eq!(s[0].label("b"), Some(""));
        assert_eq!(s[0].value, f64::INFINITY);
        assert!(s[1].value.is_nan() && s[1].labels.is_empty());
        assert_eq!(s[2].value, -1500.0);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let err = parse_exposition("ok 1\nbad{a=\"1\" 2\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2 of the exposition text"), "{err}");
        assert!(parse_exposition("m{a=\"1\"}\n").is_err());
        assert!(parse_exposition("m one\n").is_err());
    }

    fn rows() -> Vec<StageRow> {
        let before = parse_exposition(BEFORE).unwrap();
        let after = parse_exposition(AFTER).unwrap();
        compute(Some(&before), &after, Duration::from_secs(2))
    }

    #[test]
    fn computes_rates_queues_and_totals_in_pipeline_order() {
        let rows = rows();
        let names: Vec<&str> = rows.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(names, ["src", "slow", "sink"]);
        let slow = &rows[1];
        assert_eq!(slow.kind, "delay");
        assert_eq!(slow.rate, Some(10.0));
        assert_eq!((slow.queue_depth, slow.queue_capacity), (Some(4.0), Some(4.0)));
        assert_eq!(slow.queue_fill(), Some(1.0));
        assert_eq!((slow.errors, slow.restarts, slow.received), (3.0, 1.0, 34.0));
        assert_eq!(rows[0].rate, Some(100.0));
        assert_eq!(rows[0].queue_depth, None, "a source has no input queue");
        assert_eq!(rows[2].rate, Some(0.0));
        assert_eq!(rows[2].dropped, 5.0);
    }

    #[test]
    fn bottleneck_is_highest_utilization_ties_by_fullest_queue() {
        // slow (99.6% -> 100%) and sink (100%) tie; slow's input queue is full.
        let rows = rows();
        let marked: Vec<&str> = rows.iter().filter(|r| r.bottleneck).map(|r| r.stage.as_str()).collect();
        assert_eq!(marked, ["slow"]);

        let mut idle = rows.clone();
        for r in &mut idle {
            r.utilization = Some(0.0);
            r.queue_depth = r.queue_depth.map(|_| 0.0);
            r.bottleneck = false;
        }
        mark_bottleneck(&mut idle);
        assert!(idle.iter().all(|r| !r.bottleneck));
    }

    #[test]
    fn first_scrape_has_no_rate() {
        let rows = compute(None, &parse_exposition(AFTER).unwrap(), Duration::ZERO);
        assert!(rows.iter().all(|r| r.rate.is_none()));
    }

    #[test]
    fn a_sink_rate_is_what_it_takes_in() {
        // Regression (issue 16): sinks send nothing, so a sent-based rate read 0.0.
        let before =
            parse_exposition("dataflow_stage_messages_received_total{stage=\"sink\",kind=\"csv_sink\"} 10\n").unwrap();
        let after =
            parse_exposition("dataflow_stage_messages_received_total{stage=\"sink\",kind=\"csv_sink\"} 30\n").unwrap();
        let rows = compute(Some(&before), &after, Duration::from_secs(2));
        assert_eq!(rows[0].rate, Some(10.0));
    }

    #[test]
    fn counter_reset_counts_from_zero() {
        let before = parse_exposition("dataflow_stage_messages_sent_total{stage=\"a\",kind=\"k\"} 500\n").unwrap();
        let after = parse_exposition("dataflow_stage_messages_sent_total{stage=\"a\",kind=\"k\"} 20\n").unwrap();
        let rows = compute(Some(&before), &after, Duration::from_secs(1));
        assert_eq!(rows[0].rate, Some(20.0));
    }

    #[test]
    fn renders_an_aligned_table() {
        let text = render(&rows(), "http://127.0.0.1:9464/metrics");
        let expected = "\
dataflow top  http://127.0.0.1:9464/metrics  3 stages
  STAGE KIND      MSG/S QUEUE FILL UTIL RECEIVED ERRORS DROPPED RESTARTS
  src   synthetic 100.0     -    -  20%        0      0       0        0
* slow  delay      10.0   4/4 100% 100%       34      3       0        1
  sink  null_sink   0.0   0/8   0% 100%        0      0       5        0
bottleneck: slow (utilization 100%, input queue 100%)
";
        assert_eq!(text, expected);
    }
}
