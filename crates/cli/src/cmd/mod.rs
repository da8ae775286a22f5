//! One file per command. Each takes its parsed arguments and returns the [`Exit`] or a
//! [`CliError`]; `main` turns either into the exit code.
//!
//! [`Exit`]: crate::exit::Exit
//! [`CliError`]: crate::exit::CliError

pub mod graph;
pub mod plan;
pub mod run;
pub mod validate;
