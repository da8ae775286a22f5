//! `nerv`: runs workflow files of shell commands in parallel, as their dependencies allow.
//!
//! Glue over the `nerv` library, the journal (`nerv_journal`) and this package's library
//! (`nerv_cli::workflow`, `nerv_cli::cache`): argument parsing (`args`), one file per command
//! (`cmd/`), the display (`display`), processes and process groups (`process`), the journal
//! as the commands use it (`history`), and exit codes decided in one place (`exit`).

#![forbid(unsafe_code)]

mod args;
mod cmd;
mod display;
mod exit;
mod history;
mod out;
mod process;

use args::{BenchCommand, Cli, Commands};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors reported inside the engine and the journal's recorder (a journal that cannot
    // record a run, a cache entry that cannot be written) go to stderr; `NERV_LOG` overrides.
    init_tracing();
    let result = match cli.command {
        Commands::Run(a) if a.replay => cmd::replay::run(&a),
        Commands::Run(a) if a.db.is_some() => {
            let url = a.db.clone().unwrap_or_default();
            match (a.exec.order, a.exec.jobs) {
                (args::ReadyOrder::Ranked, _) => {
                    cmd::db::submit(&a.file, &url, a.detach, a.exec.json, None)
                }
                (args::ReadyOrder::Searched, Some(j)) => {
                    cmd::db::submit(&a.file, &url, a.detach, a.exec.json, Some(j as usize))
                }
                (args::ReadyOrder::Searched, None) => Err(exit::CliError::Other(
                    "--order searched with --db needs -j N: how many tasks the workers run at \
                     once in all (the order is searched for that many)"
                        .into(),
                )),
            }
        }
        Commands::Runs(a) if a.db.is_some() && a.action.is_none() => {
            cmd::db::runs(a.db.as_deref().unwrap_or_default(), a.json)
        }
        Commands::Status(a) if a.db.is_some() => {
            cmd::db::status(a.db.as_deref().unwrap_or_default(), &a.run, a.json)
        }
        Commands::Worker(a) => cmd::db::worker(&a.db, a.jobs, &a.tags),
        Commands::Cancel(a) => cmd::db::cancel(&a.db, &a.run),
        Commands::Run(a) => cmd::run::run(a),
        Commands::Import(a) => cmd::import::run(a),
        Commands::Bench(BenchCommand::Replay(a)) => cmd::replay::bench(a),
        Commands::Resume(a) => cmd::resume::run(a),
        Commands::Runs(a) => cmd::runs::run(a),
        Commands::Status(a) => cmd::status::run(a),
        Commands::Logs(a) => cmd::logs::run(a),
        Commands::Trace(a) => cmd::trace::run(a),
        Commands::Cache(a) => cmd::cache::run(a),
        Commands::Validate(a) => cmd::validate::run(a),
        Commands::Plan(a) => cmd::plan::run(a),
        Commands::Graph(a) => cmd::graph::run(a),
        Commands::Completions(a) => cmd::completions::run(a),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprint!("{e}");
            e.exit().into()
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = match std::env::var("NERV_LOG").as_deref() {
        Ok("warn") => tracing::Level::WARN,
        Ok("info") => tracing::Level::INFO,
        Ok("debug") => tracing::Level::DEBUG,
        _ => tracing::Level::ERROR,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time();
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init();
}
