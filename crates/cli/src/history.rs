//! The journal as the commands use it: opening it (to write, for `run`/`resume`/`runs rm`/
//! `cache`; to read, for `runs`/`status`/`logs`/`trace`), finding a run from what the user
//! typed, and formatting times.
//!
//! Invariants:
//! 1. The journal of workflows in folder D is `D/.nerv/nerv.db` (see `nerv_cli::layout`); a run
//!    is recorded under the canonical path of its workflow file, named with the CLI's run id
//!    (which is also the name of its log folder `D/.nerv/runs/<run-id>`).
//! 2. Readers open the journal read-only, without its writer lock: they work while a run
//!    goes on in the same folder. Writers take the lock; a second writer gets the journal's
//!    `Locked` error, which names the process holding it.
//! 3. A writer holds the journal's lock, so a run still recorded as running when a writer
//!    opens the journal belongs to a nerv that died (kill -9, power loss): `open_writer`
//!    marks it interrupted (at the time it is found), which makes it resumable.
//! 4. A RUN argument is a journal run number (`12`), a CLI run id (`20261129T022437Z-4f2a`)
//!    or `last` (the newest run).

use crate::exit::CliError;
use nerv_journal::{
    Journal, JournalError, JournalStore, RunId, RunStatus, RunSummary, SqliteMemo, SqliteStore,
    DEFAULT_FILE_NAME,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A journal error, as printed (its message names the file and says what to do).
pub fn journal_error(e: JournalError) -> CliError {
    CliError::Other(e.to_string())
}

/// The journal file of workflows in `dir`.
pub fn journal_path(dir: &Path) -> PathBuf {
    nerv_cli::layout::state_dir(dir).join(DEFAULT_FILE_NAME)
}

/// A journal opened to write, with its memo store.
pub struct Writer {
    /// The journal (shared with the run's recorder).
    pub journal: Arc<Journal>,
    /// The durable memo store in the same file.
    pub memo: Arc<SqliteMemo>,
}

/// Opens (creating) the journal of workflows in `dir` to write; fails with the journal's
/// message when it cannot (locked by another live nerv, disk full, corrupt, permission).
/// Runs left `running` by a dead nerv are marked interrupted (invariant 3).
pub fn open_writer(dir: &Path) -> Result<Writer, CliError> {
    let state = nerv_cli::layout::state_dir(dir);
    std::fs::create_dir_all(&state).map_err(|e| {
        CliError::Other(format!(
            "cannot create nerv's folder {}: {e}",
            state.display()
        ))
    })?;
    let ignore = state.join(".gitignore");
    if !ignore.exists() {
        let _ = std::fs::write(ignore, "*\n");
    }
    let store = Arc::new(SqliteStore::open_in(&state).map_err(journal_error)?);
    let memo = Arc::new(store.memo().map_err(journal_error)?);
    let journal = Arc::new(Journal::new(store).map_err(journal_error)?);
    let now = SystemTime::now();
    for r in journal.store().runs().map_err(journal_error)? {
        if r.status == RunStatus::Running {
            journal.mark_interrupted(r.id, now).map_err(journal_error)?;
        }
    }
    Ok(Writer { journal, memo })
}

/// Opens the journal of workflows in `dir` to read.
pub fn open_reader(dir: &Path) -> Result<SqliteStore, CliError> {
    let path = journal_path(dir);
    if !path.is_file() {
        return Err(CliError::Other(format!(
            "no runs recorded in {}: `nerv run FILE` records its runs beside FILE (use -C DIR for \
             the folder of another workflow file)",
            path.display()
        )));
    }
    SqliteStore::open_read_only(&path).map_err(journal_error)
}

/// The run `arg` names (see the module's invariant 4).
pub fn find_run(store: &dyn JournalStore, arg: &str) -> Result<RunSummary, CliError> {
    let err = |e| journal_error(e);
    let found = if arg == "last" || arg == "latest" {
        store.runs().map_err(err)?.into_iter().next()
    } else if let Ok(n) = arg.parse::<i64>() {
        store.run(RunId(n)).map_err(err)?
    } else {
        store
            .runs()
            .map_err(err)?
            .into_iter()
            .find(|r| r.name == arg)
    };
    found.ok_or_else(|| {
        CliError::Other(format!(
            "no run `{arg}` in journal {} (`nerv runs` lists them)",
            store.path().display()
        ))
    })
}

/// `2026-11-29T02:24:37Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2026-11-29T02:24:37.123Z`, for JSON.
pub fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time between two instants (zero if `end` is before `start`).
pub fn between(start: SystemTime, end: SystemTime) -> Duration {
    end.duration_since(start).unwrap_or_default()
}

/// `0.42s`, `3m05.0s`, `2h03m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.2}s")
    } else if s < 3600.0 {
        let m = (s / 60.0).floor();
        format!("{m:.0}m{:04.1}s", s - m * 60.0)
    } else {
        let h = (s / 3600.0).floor();
        format!("{h:.0}h{:02.0}m", ((s - h * 3600.0) / 60.0).floor())
    }
}

/// A path shown relative to the current folder when it is inside it.
pub fn show_path(p: &str) -> String {
    let path = Path::new(p);
    match std::env::current_dir()
        .ok()
        .and_then(|c| c.canonicalize().ok())
        .and_then(|c| path.strip_prefix(c).ok().map(Path::to_path_buf))
    {
        Some(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => p.to_owned(),
    }
}
