//! Library side of the `nerv` command line: workflow files (TOML or YAML) of shell commands,
//! parsed, validated and expanded into [`workflow::Workflow`], and turned into a
//! [`nerv::Graph`] with [`workflow::Workflow::graph_with`].
//!
//! The binary (`src/main.rs`, one file per command under `src/cmd/`) is glue over this
//! crate and over `nerv`; anything another crate may want to reuse (a journal that re-reads
//! the workflow of an earlier run, a server that accepts workflow files) lives here.

#![forbid(unsafe_code)]

pub mod cache;
pub mod layout;
pub mod workflow;
