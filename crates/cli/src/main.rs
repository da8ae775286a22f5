//! `nerv`: runs workflow files of shell commands in parallel, as their dependencies allow.
//!
//! Glue over the `nerv` library and this package's library (`nerv_cli::workflow`): argument
//! parsing (`args`), one file per command (`cmd/`), the display (`display`), processes and
//! process groups (`process`), and exit codes decided in one place (`exit`).

#![forbid(unsafe_code)]

mod args;
mod cmd;
mod display;
mod exit;
mod process;

use args::{Cli, Commands};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Run(a) => cmd::run::run(a),
        Commands::Validate(a) => cmd::validate::run(a),
        Commands::Plan(a) => cmd::plan::run(a),
        Commands::Graph(a) => cmd::graph::run(a),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprint!("{e}");
            e.exit().into()
        }
    }
}
