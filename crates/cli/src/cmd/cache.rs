//! `nerv cache ls` / `nerv cache rm [TASK|--all]`: the durable cache of `cache = true` tasks,
//! kept in the journal's memo table (`.nerv/nerv.db`). `ls` reads the journal read-only (it
//! works while a run goes on); `rm` takes the writer lock, so it waits for no run: it fails
//! while one goes on in the folder.

use crate::args::{CacheAction, CacheArgs, CacheLsArgs, CacheRmArgs};
use crate::cmd::runs::print_table;
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use crate::out::outln;
use nerv::MemoEntry;
use serde_json::json;
use std::time::SystemTime;

/// Runs `nerv cache`.
pub fn run(args: CacheArgs) -> Result<Exit, CliError> {
    match args.action {
        CacheAction::Ls(a) => match &a.db {
            Some(url) => crate::cmd::db::cache_ls(url, a.json),
            None => ls(a),
        },
        CacheAction::Rm(a) => match &a.db {
            Some(url) => crate::cmd::db::cache_rm(url, a.task.as_deref()),
            None => rm(a),
        },
    }
}

fn entries(memo: &nerv_journal::SqliteMemo) -> Result<Vec<MemoEntry>, CliError> {
    memo.try_entries(SystemTime::now()).map_err(journal_error)
}

fn ls(args: CacheLsArgs) -> Result<Exit, CliError> {
    let store = history::open_reader(&args.journal.dir)?;
    let entries = store
        .memo_entries(SystemTime::now())
        .map_err(journal_error)?;
    if args.json {
        for e in &entries {
            outln!(
                "{}",
                json!({
                    "task": e.task, "key": nerv_cli::cache::short_hex(&e.key), "size": e.size,
                    "created": history::rfc3339_ms(e.created),
                    "last_used": history::rfc3339_ms(e.last_used),
                    "expires": e.expires.map(history::rfc3339_ms),
                })
            );
        }
        return Ok(Exit::Success);
    }
    if entries.is_empty() {
        outln!(
            "the cache is empty ({}); tasks with `cache = true` fill it",
            nerv_journal::JournalStore::path(&store).display()
        );
        return Ok(Exit::Success);
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.task.clone(),
                nerv_cli::cache::short_hex(&e.key),
                format!("{} B", e.size),
                history::rfc3339(e.created),
                history::rfc3339(e.last_used),
                e.expires
                    .map(history::rfc3339)
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(
        &["TASK", "KEY", "SIZE", "CREATED", "LAST USED", "EXPIRES"],
        &rows,
    );
    Ok(Exit::Success)
}

fn rm(args: CacheRmArgs) -> Result<Exit, CliError> {
    let w = history::open_writer(&args.journal.dir)?;
    let n = match &args.task {
        None => w.memo.try_clear().map_err(journal_error)?,
        Some(task) => {
            // The task itself, or every expansion of a `for_each` task named `task`.
            let prefix = format!("{task}[");
            let mut n = 0;
            let mut tasks: Vec<String> = entries(&w.memo)?
                .into_iter()
                .map(|e| e.task)
                .filter(|t| t == task || t.starts_with(&prefix))
                .collect();
            tasks.sort();
            tasks.dedup();
            for t in tasks {
                n += w.memo.try_remove_task(&t).map_err(journal_error)?;
            }
            if n == 0 {
                return Err(CliError::Other(format!(
                    "no cache entry for task `{task}` in {} (`nerv cache ls` lists them)",
                    w.journal.store().path().display()
                )));
            }
            n
        }
    };
    outln!("removed {n} cache entr{}", if n == 1 { "y" } else { "ies" });
    Ok(Exit::Success)
}
