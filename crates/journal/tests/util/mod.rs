//! Shared helpers of the journal's integration tests.

use nerv_journal::{
    Journal, JournalStore, RunId, RunStart, SqliteStore, TaskRecord, TaskSpec, TaskStatus,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `s` seconds after the epoch plus a fixed offset (a plausible date).
pub fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

/// A fresh directory and the journal path in it.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nerv.db");
    (dir, path)
}

/// A run start of `workflow` with tasks `a`, `b` (after `a`), `c` (after `a`, `b`).
pub fn start(workflow: &str, started: SystemTime, resumed_from: Option<RunId>) -> RunStart {
    RunStart {
        workflow: workflow.into(),
        name: format!("{workflow} run"),
        tasks: vec![
            TaskSpec::new("a", Vec::<String>::new()),
            TaskSpec::new("b", ["a"]),
            TaskSpec::new("c", ["a", "b"]),
        ],
        started,
        resumed_from,
    }
}

/// A journal over a SQLite store at `path`.
pub fn journal(path: &Path) -> Journal {
    Journal::new(Arc::new(SqliteStore::open(path).expect("open"))).expect("journal")
}

/// Submits pending, running, completed for `task`, with `output`.
pub fn complete(j: &Journal, run: RunId, task: &str, at: SystemTime, output: &[u8]) {
    j.submit(TaskRecord::new(run, task, TaskStatus::Running, 1, at));
    j.submit(
        TaskRecord::new(
            run,
            task,
            TaskStatus::Completed,
            1,
            at + Duration::from_secs(1),
        )
        .output(output.to_vec()),
    );
}

/// Counts the rows of `sql` (a `SELECT count(*) ...`) in the journal at `path`, read-only.
pub fn count(path: &Path, sql: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

/// Whether this process ignores file permissions (root): permission tests are skipped then.
#[cfg(unix)]
pub fn permissions_ignored(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).unwrap();
    let writable = std::fs::OpenOptions::new().write(true).open(&probe).is_ok();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(&probe).unwrap();
    writable
}

/// The store behind a journal, for reads.
pub fn store(j: &Journal) -> &dyn JournalStore {
    &**j.store()
}
