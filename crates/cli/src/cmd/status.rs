//! `nerv status RUN`: one run's tasks as the journal recorded them.

use crate::args::StatusArgs;
use crate::cmd::runs::{print_table, run_json};
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use crate::out::outln;
use nerv_journal::{JournalStore, TaskStatus, TaskSummary};
use serde_json::json;

/// Runs `nerv status`.
pub fn run(args: StatusArgs) -> Result<Exit, CliError> {
    let store = history::open_reader(&args.journal.dir)?;
    let run = history::find_run(&store, &args.run)?;
    let tasks = store.tasks(run.id).map_err(journal_error)?;
    if args.json {
        let tasks: Vec<_> = tasks.iter().map(task_json).collect();
        outln!("{}", json!({"run": run_json(&run), "tasks": tasks}));
        return Ok(Exit::Success);
    }
    let took = run
        .finished
        .map(|f| {
            format!(
                ", took {}",
                history::human(history::between(run.started, f))
            )
        })
        .unwrap_or_default();
    outln!(
        "run {} ({}): {}, started {}{took}",
        run.id,
        run.name,
        run.status,
        history::rfc3339(run.started)
    );
    outln!("workflow: {}", history::show_path(&run.workflow));
    if let Some(old) = run.resumed_from {
        outln!("resumes run {old}");
    }
    if let Some(e) = &run.error {
        outln!("error: {e}");
    }
    let rows: Vec<[String; 7]> = tasks
        .iter()
        .map(|t| {
            [
                t.task.clone(),
                shown_status(t).to_string(),
                t.attempts.to_string(),
                t.started
                    .map(history::rfc3339)
                    .unwrap_or_else(|| "-".into()),
                t.finished
                    .map(history::rfc3339)
                    .unwrap_or_else(|| "-".into()),
                match (t.started, t.finished) {
                    (Some(s), Some(f)) => history::human(history::between(s, f)),
                    _ => "-".into(),
                },
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    outln!();
    print_table(
        &[
            "TASK", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "DURATION", "ERROR",
        ],
        &rows,
    );
    Ok(Exit::Success)
}

/// `restored` for a task completed without running (restored by a resumed run).
fn shown_status(t: &TaskSummary) -> &'static str {
    if t.status == TaskStatus::Completed && t.attempts == 0 {
        "restored"
    } else {
        t.status.as_str()
    }
}

fn task_json(t: &TaskSummary) -> serde_json::Value {
    json!({
        "task": t.task,
        "status": t.status.as_str(),
        "restored": t.status == TaskStatus::Completed && t.attempts == 0,
        "attempts": t.attempts,
        "started": t.started.map(history::rfc3339_ms),
        "finished": t.finished.map(history::rfc3339_ms),
        "duration_ms": match (t.started, t.finished) {
            (Some(s), Some(f)) => Some(history::between(s, f).as_millis() as u64),
            _ => None,
        },
        "error": t.error,
        "needs": t.deps,
    })
}
