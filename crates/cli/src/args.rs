//! The command line, as clap parses it. One variant per command; each command's code is in
//! `cmd/<name>.rs`. New commands (runs, status, logs, resume, cache, trace) add a variant here
//! and a file there.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// nerv: run workflow files of shell commands in parallel, as their dependencies allow.
#[derive(Debug, Parser)]
#[command(name = "nerv", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  nerv run pipeline.toml -j 4\n  nerv plan pipeline.yaml --json\n  nerv graph pipeline.toml --format dot | dot -Tsvg > graph.svg"
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Commands,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run a workflow file.
    ///
    /// Each task's stdout and stderr go to .nerv/runs/RUN-ID/logs/TASK.log beside the
    /// workflow file; commands run in the workflow file's folder unless `cwd` says otherwise.
    #[command(
        after_help = "Examples:\n  nerv run pipeline.toml\n  nerv run pipeline.toml -j 8 --fail-fast\n  nerv run pipeline.yaml --json | jq -c 'select(.type == \"task_failed\")'\n\nExit codes: 0 all tasks completed, 1 a task failed, 2 invalid file, 130 interrupted."
    )]
    Run(RunArgs),
    /// Check a workflow file: syntax, keys, values, dependencies, cycles.
    #[command(after_help = "Example:\n  nerv validate pipeline.toml && echo ok")]
    Validate(FileArgs),
    /// Show the execution plan: levels, critical path and lower bound (from `estimate` keys).
    #[command(
        after_help = "Examples:\n  nerv plan pipeline.toml\n  nerv plan pipeline.toml -j 8 --json"
    )]
    Plan(PlanArgs),
    /// Print the task graph as Graphviz DOT or a Mermaid flowchart.
    #[command(
        after_help = "Examples:\n  nerv graph pipeline.toml | dot -Tsvg > graph.svg\n  nerv graph pipeline.toml --format mermaid"
    )]
    Graph(GraphArgs),
}

/// A workflow file.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// The workflow file (.toml, .yaml or .yml).
    pub file: PathBuf,
}

/// `nerv run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file (.toml, .yaml or .yml).
    pub file: PathBuf,
    /// Run at most N commands at once [default: the number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Stop at the first failure: running commands are terminated, the rest is cancelled.
    #[arg(long, conflicts_with = "keep_going")]
    pub fail_fast: bool,
    /// Run everything that does not depend on a failed task (the default).
    #[arg(long)]
    pub keep_going: bool,
    /// Print events as JSON lines (one object per line) instead of the display.
    #[arg(long)]
    pub json: bool,
    /// Time between SIGTERM and SIGKILL when a command is stopped.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
}

/// `nerv plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The workflow file (.toml, .yaml or .yml).
    pub file: PathBuf,
    /// Workers assumed for the lower bound [default: the number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Print the plan as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Output format of `nerv graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// `nerv graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The workflow file (.toml, .yaml or .yml).
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. \"5s\" or \"500ms\")"))
}

/// The number of CPUs (at least 1).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
