//! Integration tests of dataflow: one binary, one module per area.

mod cli;
mod engine;
mod support;
