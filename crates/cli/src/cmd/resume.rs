//! `nerv resume [RUN]`: continues an interrupted or failed run.
//!
//! Steps:
//! 1. Open the journal of the folder (`-C DIR`, default `.`) to write (so no other nerv runs
//!    there meanwhile).
//! 2. Find the run: RUN, or the most recent resumable run that no later run resumed
//!    (`latest_resumable`). A completed or cancelled run is refused; a run whose nerv died
//!    (kill -9) was marked interrupted when the journal was opened.
//! 3. Re-read the workflow file recorded as the run's workflow (error if it is gone; exit 2 if
//!    it is now invalid); warn about tasks that were added or removed since.
//! 4. Run it as `nerv run` does, with `resume_options`: the tasks the old run completed are
//!    restored (completed with attempt 0, their commands not run), tasks that no longer exist
//!    are ignored, the rest run. The new run is recorded as resuming the old one, in a new log
//!    folder.

use crate::args::ResumeArgs;
use crate::cmd::run::execute;
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use nerv_cli::workflow::Workflow;
use nerv_journal::{RunStatus, TaskStatus};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// Runs `nerv resume`.
pub fn run(args: ResumeArgs) -> Result<Exit, CliError> {
    let writer = history::open_writer(&args.journal.dir)?;
    let store = writer.journal.store().clone();
    let run = match &args.run {
        Some(arg) => history::find_run(store.as_ref(), arg)?,
        None => store
            .latest_resumable(None)
            .map_err(journal_error)?
            .ok_or_else(|| {
                CliError::Other(format!(
                    "nothing to resume: journal {} has no interrupted or failed run that was not resumed already (`nerv runs` lists the runs)",
                    store.path().display()
                ))
            })?,
    };
    match run.status {
        RunStatus::Completed => {
            return Err(CliError::Other(format!(
                "run {} ({}) completed: nothing to resume (`nerv run {}` runs it again)",
                run.id,
                run.name,
                history::show_path(&run.workflow)
            )))
        }
        RunStatus::Cancelled => {
            return Err(CliError::Other(format!(
            "run {} ({}) was cancelled on purpose, not interrupted: `nerv run {}` runs it again",
            run.id,
            run.name,
            history::show_path(&run.workflow)
        )))
        }
        // `open_writer` marked runs of dead nervs interrupted; `running` cannot remain.
        RunStatus::Running | RunStatus::Failed | RunStatus::Interrupted => {}
    }
    let file = Path::new(&run.workflow);
    if !file.is_file() {
        return Err(CliError::Other(format!(
            "run {} ({}) ran workflow file {}, which no longer exists: put it back to resume the run",
            run.id, run.name, run.workflow
        )));
    }
    let wf = Workflow::load(file)?;
    let tasks = store.tasks(run.id).map_err(journal_error)?;
    let before: BTreeSet<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
    let now: BTreeSet<&str> = wf.tasks.iter().map(|t| t.id.as_str()).collect();
    let gone: Vec<&str> = before.difference(&now).copied().collect();
    let added: Vec<&str> = now.difference(&before).copied().collect();
    if !gone.is_empty() {
        eprintln!(
            "nerv: warning: {} changed since run {}: no longer has {} (ignored)",
            run.workflow,
            run.id,
            gone.join(", ")
        );
    }
    if !added.is_empty() {
        eprintln!(
            "nerv: warning: {} changed since run {}: new tasks {} (they run)",
            run.workflow,
            run.id,
            added.join(", ")
        );
    }
    let done = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Completed && now.contains(t.task.as_str()))
        .count();
    if !args.exec.json {
        // Like the run's display: a reader that went away does not stop the resume.
        let _ = writeln!(
            std::io::stdout(),
            "nerv: resuming run {} ({}, {}): {} of {} tasks completed, the rest runs",
            run.id,
            run.name,
            run.status,
            done,
            wf.tasks.len()
        );
    }
    let id = run.workflow.clone();
    execute(wf, id, &args.exec, Some(writer), Some(run.id))
}
