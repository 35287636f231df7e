//! Integration tests of dataflow: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod batching;
mod cli;
mod detect;
mod distributed;
mod engine;
mod fading;
mod graphs;
mod invariants;
mod live;
mod live_ffmpeg;
mod monitoring;
mod multisc;
mod newcomer;
mod noisy_channel;
mod outcomes;
mod paper;
mod pool;
mod pool_graph;
mod python_stage;
mod python_torch;
mod receiver;
mod support;
mod sweep;
mod sweep_bandwidth;
mod sweep_seeds;
mod thumbnail;
mod tls;
