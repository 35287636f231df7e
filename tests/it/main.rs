//! Integration tests of dataflow: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod distributed;
mod engine;
mod graphs;
mod live;
mod live_ffmpeg;
mod monitoring;
mod multisc;
mod paper;
mod receiver;
mod support;
mod sweep;
