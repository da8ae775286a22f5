//! `nerv logs RUN TASK`: prints a task's log file (stdout and stderr of all its attempts).
//!
//! The log is `.nerv/runs/<run-id>/logs/<task>.log` (see `nerv_cli::layout`), created at the
//! command's first byte of output: a task that printed nothing has none. A task that a
//! resumed run restored did not run in that run: its log is the one of the run it was
//! restored from (followed back through the runs resumed).

use crate::args::LogsArgs;
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use nerv_cli::layout::RunLayout;
use nerv_journal::{JournalStore, TaskStatus};
use std::io::Write;

/// Runs `nerv logs`.
pub fn run(args: LogsArgs) -> Result<Exit, CliError> {
    let store = history::open_reader(&args.journal.dir)?;
    let mut run = history::find_run(&store, &args.run)?;
    let asked = run.id;
    loop {
        let tasks = store.tasks(run.id).map_err(journal_error)?;
        let Some(task) = tasks.iter().find(|t| t.task == args.task) else {
            let mut ids: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
            ids.truncate(20);
            return Err(CliError::Other(format!(
                "run {} ({}) has no task `{}`; its tasks: {}",
                run.id,
                run.name,
                args.task,
                ids.join(", ")
            )));
        };
        let layout = RunLayout::new(
            &args.journal.dir,
            &run.name,
            tasks.iter().map(|t| t.task.as_str()),
        );
        let path = layout.log_file(&task.task);
        if let Ok(bytes) = std::fs::read(&path) {
            if run.id != asked {
                eprintln!(
                    "nerv: `{}` was restored from run {} ({}); its log there:",
                    task.task, run.id, run.name
                );
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes);
            let _ = out.flush();
            return Ok(Exit::Success);
        }
        let restored = task.status == TaskStatus::Completed && task.attempts == 0;
        match run.resumed_from {
            Some(old) if restored => {
                run = store
                    .run(old)
                    .map_err(journal_error)?
                    .ok_or_else(|| {
                        CliError::Other(format!(
                            "task `{}` of run {asked} was restored from run {old}, which was deleted: its log is gone",
                            args.task
                        ))
                    })?;
            }
            _ if task.attempts > 0 && layout.logs_dir.is_dir() => {
                // The log file is created at a command's first byte of output.
                eprintln!(
                    "nerv: `{}` printed nothing in run {} ({})",
                    task.task, run.id, run.name
                );
                return Ok(Exit::Success);
            }
            _ => {
                let why = if task.attempts == 0 {
                    format!("it never ran (status {})", task.status)
                } else {
                    format!("expected {}, which is missing", path.display())
                };
                return Err(CliError::Other(format!(
                    "task `{}` of run {} ({}) has no log: {why}",
                    args.task, run.id, run.name
                )));
            }
        }
    }
}
