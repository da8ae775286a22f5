//! One file per command. Each takes its parsed arguments and returns the [`Exit`] or a
//! [`CliError`]; `main` turns either into the exit code.
//!
//! [`Exit`]: crate::exit::Exit
//! [`CliError`]: crate::exit::CliError

pub mod cache;
pub mod completions;
pub mod db;
pub mod graph;
pub mod import;
pub mod logs;
pub mod plan;
pub mod replay;
pub mod resume;
pub mod run;
pub mod runs;
pub mod status;
pub mod trace;
pub mod validate;
