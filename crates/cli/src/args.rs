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
    after_help = "Examples:\n  nerv run pipeline.toml -j 4\n  nerv runs\n  nerv resume\n  nerv plan pipeline.yaml --json\n  nerv graph pipeline.toml --format dot | dot -Tsvg > graph.svg"
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
    /// workflow file (created at the task's first output: a silent task has none); commands
    /// run in the workflow file's folder unless `cwd` says otherwise.
    /// Every run is recorded in the journal .nerv/nerv.db beside the workflow file (see
    /// `nerv runs`, `nerv resume`); `nerv run` refuses to start when the journal cannot be
    /// opened (another nerv is running in that folder, a full disk, ...), unless
    /// `--no-journal` is given.
    ///
    /// A task with `cache = true` (or `cache = { ttl = "1d" }`) is not run again when an
    /// earlier run completed it with the same key: its id, command, `env`, working directory
    /// and the contents of the files listed in its `inputs` (see `nerv cache`).
    #[command(
        after_help = "Examples:\n  nerv run pipeline.toml\n  nerv run pipeline.toml -j 8 --fail-fast\n  nerv run pipeline.yaml --json | jq -c 'select(.type == \"task_failed\")'\n\nExit codes: 0 all tasks completed, 1 a task failed (or the journal cannot be opened), 2 invalid file, 130 interrupted."
    )]
    Run(RunArgs),
    /// Resume an interrupted or failed run: tasks that completed are not run again.
    ///
    /// Without RUN: the most recent interrupted or failed run recorded in this folder's
    /// journal (.nerv/nerv.db) that no later run resumed. The workflow file is read again from
    /// where the run found it: tasks no longer in it are ignored, new ones run.
    #[command(
        after_help = "Examples:\n  nerv resume\n  nerv resume 12 -j 4\n  nerv resume 20261129T022437Z-4f2a --json\n\nExit codes: as `nerv run`."
    )]
    Resume(ResumeArgs),
    /// List recorded runs, newest first (or delete old ones: `nerv runs rm`).
    #[command(
        after_help = "Examples:\n  nerv runs\n  nerv runs --json | jq -r 'select(.status == \"failed\") | .id'\n  nerv runs rm --older-than 7d\n  nerv runs rm --keep 20"
    )]
    Runs(RunsArgs),
    /// Show one run's tasks: status, attempts, times, errors.
    #[command(after_help = "Examples:\n  nerv status 12\n  nerv status last --json")]
    Status(StatusArgs),
    /// Print a task's log (stdout and stderr of every attempt) from a run.
    #[command(after_help = "Examples:\n  nerv logs 12 build\n  nerv logs last 'compress[a]'")]
    Logs(LogsArgs),
    /// Write a run's timeline as a Chrome trace-event JSON file (Perfetto, chrome://tracing).
    ///
    /// One "X" event per task attempt, one lane (thread) per worker. The journal does not
    /// record which worker ran a task, so lanes are assigned from the recorded start and end
    /// times by interval partitioning (each attempt takes the lowest free lane): this uses the
    /// fewest lanes possible, which is the run's peak concurrency and never more than `-j`.
    #[command(
        after_help = "Examples:\n  nerv trace 12              # writes nerv-trace-12.json\n  nerv trace last -o run.json\n  nerv trace last -o - | jq '.traceEvents | length'\n\nOpen the file in https://ui.perfetto.dev or chrome://tracing."
    )]
    Trace(TraceArgs),
    /// List or remove cached task results (tasks with `cache = true`).
    #[command(
        after_help = "Examples:\n  nerv cache ls\n  nerv cache rm fetch\n  nerv cache rm --all"
    )]
    Cache(CacheArgs),
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
    /// Run tasks of workflows submitted to PostgreSQL (`nerv run FILE --db URL`) until
    /// Ctrl-C; start as many as you like, on as many machines.
    #[command(
        after_help = "Examples:\n  nerv worker --db postgres://nerv@db.example/nerv -j 8\n  NERV_DB=postgres://postgres@127.0.0.1/test nerv worker --tags gpu"
    )]
    Worker(WorkerArgs),
    /// Cancel a run on PostgreSQL (its running commands are stopped by their workers).
    #[command(after_help = "Example:\n  nerv cancel 42 --db postgres://postgres@127.0.0.1/test")]
    Cancel(CancelArgs),
    /// Convert a WfCommons trace (WfFormat JSON, schema 1.4 to 1.6) into a workflow file.
    ///
    /// Each task becomes a command (`sleep` for its recorded runtime times --scale, unless
    /// --command names another program), its parents its `needs`, its runtime its `estimate`.
    #[command(
        after_help = "Examples:\n  nerv import montage.json -o montage.toml --scale 0.01\n  nerv import trace.json --command 'my-sim --seconds' --memory-limit 8000000000 > wf.toml"
    )]
    Import(ImportArgs),
    /// Benchmarks: `nerv bench replay` replays WfCommons traces against the lower bound.
    #[command(
        subcommand,
        after_help = "Examples:\n  nerv bench replay traces/ -j 4\n  nerv bench replay trace.json --scale 0.001 --json"
    )]
    Bench(BenchCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    ///
    /// The script goes to standard output; install it where your shell looks for
    /// completions (see below), then open a new shell.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
}

/// How to install each shell's completion script (`nerv completions --help`).
const COMPLETIONS_HELP: &str = "\
Examples (install for your user, then open a new shell):
  bash:        mkdir -p ~/.local/share/bash-completion/completions
               nerv completions bash > ~/.local/share/bash-completion/completions/nerv
               (needs the bash-completion package; or add to ~/.bashrc:
                source <(nerv completions bash))
  zsh:         mkdir -p ~/.zfunc && nerv completions zsh > ~/.zfunc/_nerv
               and in ~/.zshrc, before compinit:
                fpath=(~/.zfunc $fpath); autoload -Uz compinit && compinit
  fish:        nerv completions fish > ~/.config/fish/completions/nerv.fish
  elvish:      add to ~/.config/elvish/rc.elv:
                eval (nerv completions elvish | slurp)
  powershell:  nerv completions powershell | Out-String | Invoke-Expression
               (add that line to the file named by $PROFILE to keep it)";

/// `nerv completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `nerv worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The PostgreSQL server (postgres://USER@HOST:PORT/DB).
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: String,
    /// Tasks run at once by this worker.
    #[arg(short = 'j', long = "jobs", default_value_t = 4)]
    pub jobs: usize,
    /// Tags of this worker (tasks that require tags run only on workers that have them).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
}

/// `nerv cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run's number on the server.
    pub run: String,
    /// The PostgreSQL server.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: String,
}

/// `nerv import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The WfFormat trace (.json).
    pub file: PathBuf,
    /// Where to write the workflow file (default: standard output; `-` too).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Runtimes are multiplied by this.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// The program (and leading arguments) each task runs, given its scaled runtime in
    /// seconds as the last argument (default `sleep`).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// A memory budget in bytes: `[resources] memory` and, per task, `uses = { memory = … }`
    /// from its recorded memory, so that tasks wait until they fit.
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
}

/// `nerv bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Replay WfCommons traces (sleeping their runtimes x scale on -j workers) and report each
    /// makespan against the lower bound max(critical path, work / P) and first-come-first-served
    /// order.
    #[command(
        after_help = "Examples:\n  nerv bench replay traces/ -j 4\n  nerv bench replay traces/ --scale 0.001 -j 4 --json"
    )]
    Replay(BenchReplayArgs),
}

/// `nerv bench replay`.
#[derive(Debug, Args)]
pub struct BenchReplayArgs {
    /// Traces (.json), or folders of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Workers P.
    #[arg(short = 'j', long = "jobs", default_value_t = 4)]
    pub jobs: usize,
    /// Runtimes are multiplied by this (default: the scale at which the bound is --target).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Seconds the lower bound should take when --scale is not given.
    #[arg(long, default_value_t = 2.0)]
    pub target: f64,
    /// A memory budget in bytes (tasks wait until their recorded memory fits).
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
    /// Ready order: `ranked` (longest remaining critical path first) or `searched` (the best
    /// of many list schedules simulated with the trace's runtimes, searched before the run).
    #[arg(long, value_enum, default_value_t = ReadyOrder::Ranked)]
    pub order: ReadyOrder,
    /// One JSON object per trace.
    #[arg(long)]
    pub json: bool,
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
    /// How to run it.
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Do not record the run in the journal (it cannot be resumed; `cache` is off).
    #[arg(long)]
    pub no_journal: bool,
    /// Run on PostgreSQL instead of this machine alone (postgres://USER@HOST:PORT/DB): the
    /// workflow is submitted, `nerv worker --db URL` processes on any machine run its tasks,
    /// and this command watches it (Ctrl-C cancels it).
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// With --db: submit, print the run id and return (the run goes on).
    #[arg(long, requires = "db")]
    pub detach: bool,
    /// FILE is a WfCommons trace (WfFormat JSON): replay it in this process (each task sleeps
    /// its runtime x --scale on -j workers, default 4) and report the makespan against the
    /// lower bound and first-come-first-served order.
    #[arg(long)]
    pub replay: bool,
    /// With --replay: runtimes are multiplied by this (default: the scale at which the lower
    /// bound is --target seconds).
    #[arg(long, requires = "replay")]
    pub scale: Option<f64>,
    /// With --replay: seconds the lower bound should take when --scale is not given.
    #[arg(long, default_value_t = 2.0, requires = "replay")]
    pub target: f64,
    /// With --replay: a memory budget in bytes (tasks wait until their recorded memory fits).
    #[arg(long, value_name = "BYTES", requires = "replay")]
    pub memory_limit: Option<u64>,
}

/// The ready order of a run or a replay (`--order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadyOrder {
    /// Longest remaining critical path first.
    Ranked,
    /// Searched by simulation (never worse than `ranked` in simulation).
    Searched,
}

/// The folder whose journal a command reads.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The folder of the workflow files whose journal (DIR/.nerv/nerv.db) to use.
    #[arg(short = 'C', long = "dir", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// `nerv resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run: its number in `nerv runs`, its run id, or `last` [default: the most recent
    /// interrupted or failed run].
    pub run: Option<String>,
    /// How to run it.
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv runs`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    /// Delete old runs instead of listing them.
    #[command(subcommand)]
    pub action: Option<RunsAction>,
    /// Print one JSON object per run per line.
    #[arg(long)]
    pub json: bool,
    /// List the runs on this PostgreSQL server instead of the local journal.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv runs rm`.
#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// Delete finished runs (their records and log folders); a running run is never deleted.
    #[command(
        after_help = "Examples:\n  nerv runs rm --older-than 7d\n  nerv runs rm --keep 20\n  nerv runs rm --older-than 30d --keep 5   # both must hold\n  nerv runs rm --keep 100 --db postgres://postgres@127.0.0.1/test"
    )]
    Rm(RunsRmArgs),
}

/// `nerv runs rm`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["older_than", "keep"])))]
pub struct RunsRmArgs {
    /// Delete runs that started longer ago than this ("7d", "12h").
    #[arg(long, value_name = "AGE", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Keep the N newest runs, delete the rest.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Delete the runs on this PostgreSQL server (with their events) instead of the local
    /// journal's.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run: its number in `nerv runs`, its run id, or `last`.
    pub run: String,
    /// Print one JSON object: the run and its tasks.
    #[arg(long)]
    pub json: bool,
    /// The run is on this PostgreSQL server (its number there).
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run: its number in `nerv runs`, its run id, or `last`.
    pub run: String,
    /// The task's id (`compress[a]` for an expansion of a `for_each` task).
    pub task: String,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The run: its number in `nerv runs`, its run id, or `last`.
    pub run: String,
    /// The file to write (`-`: standard output) [default: nerv-trace-RUN.json].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
}

/// `nerv cache ls | rm`.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List the cached task results: task, key, size, created, last used, expiry.
    #[command(
        after_help = "Examples:\n  nerv cache ls\n  nerv cache ls -C examples --json | jq -r .task\n  nerv cache ls --db postgres://postgres@127.0.0.1/test"
    )]
    Ls(CacheLsArgs),
    /// Remove the cached results of a task (all its `for_each` expansions, by its name), or
    /// all of them.
    #[command(
        after_help = "Examples:\n  nerv cache rm fetch\n  nerv cache rm 'compress[a]'\n  nerv cache rm --all\n  nerv cache rm --all --db postgres://postgres@127.0.0.1/test"
    )]
    Rm(CacheRmArgs),
}

/// `nerv cache ls`.
#[derive(Debug, Args)]
pub struct CacheLsArgs {
    /// Print one JSON object per entry per line.
    #[arg(long)]
    pub json: bool,
    /// List the cache shared by the workers on this PostgreSQL server instead of the local
    /// journal's.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `nerv cache rm`.
#[derive(Debug, Args)]
pub struct CacheRmArgs {
    /// The task whose entries to remove.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub task: Option<String>,
    /// Remove every entry.
    #[arg(long)]
    pub all: bool,
    /// Remove from the cache shared by the workers on this PostgreSQL server instead of the
    /// local journal's.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
    /// Where the journal is.
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// How a run goes (`nerv run` and `nerv resume`).
#[derive(Debug, Args)]
pub struct ExecArgs {
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
    /// Ready order among tasks of equal priority: `ranked` (longest remaining critical path
    /// first, from estimates) or `searched` (the best of many list schedules simulated from
    /// the estimates on -j workers, searched before the run). With --db, -j N is how many
    /// tasks the workers run at once in all.
    #[arg(long, value_enum, default_value_t = ReadyOrder::Ranked)]
    pub order: ReadyOrder,
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
    /// Name every task of every level (a level of many tasks is abbreviated otherwise).
    #[arg(long)]
    pub full: bool,
    /// Also estimate the makespan of this order (`searched`: the best of many list schedules
    /// simulated from the estimates, as `nerv run --order searched` runs).
    #[arg(long, value_enum, default_value_t = ReadyOrder::Ranked)]
    pub order: ReadyOrder,
    /// Estimate tasks without an `estimate` from this PostgreSQL server's history of the
    /// workflow (its last 10 runs), as `nerv run --db` does, instead of this machine's journal.
    #[arg(long, value_name = "URL", env = "NERV_DB")]
    pub db: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command and subcommand (but clap's own `help`) shows examples in its `--help`.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Example") || !help.contains("nerv ") {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "nerv", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
    }
}
