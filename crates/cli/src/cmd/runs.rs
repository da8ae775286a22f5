//! `nerv runs`: the journal's run history, newest first; `nerv runs rm`: retention.

use crate::args::{RunsAction, RunsArgs, RunsRmArgs};
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use crate::out::outln;
use nerv_journal::{JournalStore, RunSummary};
use serde_json::json;
use std::collections::HashSet;
use std::time::SystemTime;

/// Runs `nerv runs`.
pub fn run(args: RunsArgs) -> Result<Exit, CliError> {
    if let Some(RunsAction::Rm(rm)) = args.action {
        return match &rm.db {
            Some(url) => crate::cmd::db::runs_rm(url, rm.older_than, rm.keep),
            None => remove(rm),
        };
    }
    let store = history::open_reader(&args.journal.dir)?;
    let runs = store.runs().map_err(journal_error)?;
    if args.json {
        for r in &runs {
            outln!("{}", run_json(r));
        }
        return Ok(Exit::Success);
    }
    if runs.is_empty() {
        outln!("no runs recorded in {}", store.path().display());
        return Ok(Exit::Success);
    }
    let rows: Vec<[String; 8]> = runs
        .iter()
        .map(|r| {
            let c = &r.counts;
            let mut tasks = format!("{}/{} completed", c.completed, c.total());
            for (n, what) in [
                (c.failed, "failed"),
                (c.skipped, "skipped"),
                (c.cancelled, "cancelled"),
                (c.running + c.retrying, "running"),
            ] {
                if n > 0 {
                    tasks.push_str(&format!(", {n} {what}"));
                }
            }
            let status = match r.resumed_from {
                Some(old) => format!("{} (resumes {old})", r.status),
                None => r.status.to_string(),
            };
            [
                r.id.to_string(),
                r.name.clone(),
                status,
                history::rfc3339(r.started),
                r.finished
                    .map(history::rfc3339)
                    .unwrap_or_else(|| "-".into()),
                r.finished
                    .map(|f| history::human(history::between(r.started, f)))
                    .unwrap_or_else(|| "-".into()),
                tasks,
                history::show_path(&r.workflow),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "RUN", "STATUS", "STARTED", "FINISHED", "DURATION", "TASKS", "WORKFLOW",
        ],
        &rows,
    );
    Ok(Exit::Success)
}

/// One run as a JSON object (times in RFC 3339, UTC).
pub fn run_json(r: &RunSummary) -> serde_json::Value {
    let c = &r.counts;
    json!({
        "id": r.id.0,
        "name": r.name,
        "workflow": r.workflow,
        "status": r.status.as_str(),
        "started": history::rfc3339_ms(r.started),
        "finished": r.finished.map(history::rfc3339_ms),
        "duration_ms": r.finished.map(|f| history::between(r.started, f).as_millis() as u64),
        "error": r.error,
        "resumed_from": r.resumed_from.map(|x| x.0),
        "counts": {
            "total": c.total(), "pending": c.pending, "running": c.running + c.retrying,
            "completed": c.completed, "failed": c.failed, "skipped": c.skipped,
            "cancelled": c.cancelled,
        },
    })
}

/// Prints rows under a header, columns padded to their widest cell (the last one not).
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        width[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        outln!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn remove(args: RunsRmArgs) -> Result<Exit, CliError> {
    let writer = history::open_writer(&args.journal.dir)?;
    let store = writer.journal.store();
    let before = store.runs().map_err(journal_error)?;
    let older_than =
        match args.older_than {
            Some(age) => Some(SystemTime::now().checked_sub(age).ok_or_else(|| {
                CliError::Other(format!("--older-than {age:?} reaches before 1970"))
            })?),
            None => None,
        };
    let n = store
        .delete_runs(older_than, args.keep)
        .map_err(journal_error)?;
    let after: HashSet<i64> = store
        .runs()
        .map_err(journal_error)?
        .iter()
        .map(|r| r.id.0)
        .collect();
    // Their log folders go too (run names are the CLI's run ids: plain file names).
    let state = nerv_cli::layout::state_dir(&args.journal.dir);
    for r in before.iter().filter(|r| !after.contains(&r.id.0)) {
        let plain = !r.name.is_empty()
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if plain {
            let dir = nerv_cli::layout::RunLayout::run_dir_in(&state, &r.name);
            if dir.is_dir() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    eprintln!(
                        "nerv: warning: cannot remove the logs of run {} ({}): {e}",
                        r.id,
                        dir.display()
                    );
                }
            }
        }
    }
    outln!(
        "deleted {n} run{} ({} left)",
        if n == 1 { "" } else { "s" },
        after.len()
    );
    Ok(Exit::Success)
}
