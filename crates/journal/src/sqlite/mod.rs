//! [`SqliteStore`]: the embedded journal, one SQLite file (bundled SQLite, WAL mode).
//!
//! Invariants:
//! - One process writes a journal at a time: opening takes the writer lock ([`crate::lock`])
//!   before touching the database, and holds it as long as the store or any [`SqliteMemo`]
//!   made from it lives.
//! - The store holds two connections: `write` (every write, serialized by its mutex) and
//!   `read` (queries). In WAL mode readers never block the writer nor see a half-committed
//!   batch.
//! - Durability is [`Synchronous::Full`] by default: with WAL, SQLite syncs the log on every
//!   commit, so a batch is on disk (power loss included) when `append` returns. With
//!   [`Synchronous::Normal`] the log is synced only at checkpoints: a commit survives the
//!   process being killed (it is in the OS's cache) but the latest commits can be lost if the
//!   machine loses power. Group commit makes FULL cheap (one sync per batch, not per record).
//! - Times are stored as signed nanoseconds since the Unix epoch; statuses as their names;
//!   dependencies as MessagePack arrays of strings (NULL: none).
//! - A task's row is keyed by an integer, `(run << 32) | seq` (`seq`: the task's number in its
//!   run), not by its text id; the rows of a run are a range of the key (`OF_RUN`).
//!   `(run, task)` is unique because every write of `tasks` goes through the write side's
//!   index of task numbers (`append.rs`, which states that protocol and how a batch is
//!   written: one statement per task of the batch, its transitions folded first; one
//!   `history` row per run in the compact format of `history.rs`).
//! - The connections that write use a 32 MiB page cache (a batch of a large run stays in it
//!   until it commits).
//!
//! Opening, in order (nothing is written before step 5):
//! 1. refuse a path whose file or directory this process cannot write (`PermissionDenied`);
//! 2. take the writer lock (`Locked`, naming the holder);
//! 3. open the connection; read `user_version` and `application_id` (`Corrupt` for a file that
//!    is not a SQLite database or not a journal, `TooNew` for a newer schema);
//! 4. set WAL mode and the synchronous level;
//! 5. apply pending migrations in one transaction ([`schema`]).

mod append;
mod history;
pub(crate) mod schema;

use append::{TaskIndex, WriteSide};

use schema::SCHEMA_VERSION;

use crate::error::{JournalError, Result};
use crate::lock::WriterLock;
use crate::memo::SqliteMemo;
use crate::record::{
    Record, RunId, RunStart, RunSummary, TaskCounts, TaskRecord, TaskStatus, TaskSummary,
};
use crate::store::JournalStore;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The journal's file name in a directory ([`SqliteStore::open_in`]).
pub const DEFAULT_FILE_NAME: &str = "nerv.db";

/// How hard SQLite syncs a commit to disk (`PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is synced: durable across power loss when `append` returns.
    #[default]
    Full,
    /// Synced at checkpoints only: durable across a process kill, not a power loss.
    Normal,
}

impl Synchronous {
    pub(crate) fn pragma_name(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of commits (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// An upper bound on the file's size in bytes (`None`: the disk's); writes past it fail
    /// with a disk-full error, as they would on a full disk.
    pub max_size: Option<u64>,
    /// How long a statement waits for a lock held by another connection (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            max_size: None,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteOptions {
    /// With this durability.
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// With a size limit in bytes.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }
}

/// A journal in a SQLite file. See the module's invariants.
pub struct SqliteStore {
    path: PathBuf,
    options: SqliteOptions,
    /// The writer lock (`None`: opened read-only).
    lock: Option<Arc<WriterLock>>,
    write: Mutex<WriteSide>,
    read: Mutex<Connection>,
    migrated_from: u32,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating or upgrading) the journal at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the journal [`DEFAULT_FILE_NAME`] in `dir`.
    pub fn open_in(dir: impl AsRef<Path>) -> Result<SqliteStore> {
        Self::open(dir.as_ref().join(DEFAULT_FILE_NAME))
    }

    /// Opens (creating or upgrading) the journal at `path` (see the module's steps).
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(denied) = unwritable(&path) {
            return Err(JournalError::PermissionDenied {
                detail: format!("needed by journal {}", path.display()),
                path: denied,
            });
        }
        let lock = Arc::new(WriterLock::acquire(&path)?);
        let mut write = connect(&path, &options, false)?;
        let migrated_from = schema::migrate(&mut write, &path)?;
        // Checkpoints run after commits are published (`after_commit`); SQLite's own, inside
        // a commit, only past a larger log.
        write
            .pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)
            .map_err(|e| JournalError::sqlite(&path, &e))?;
        let read = connect(&path, &options, true)?;
        Ok(SqliteStore {
            path,
            options,
            lock: Some(lock),
            write: Mutex::new(WriteSide {
                conn: write,
                index: TaskIndex::default(),
                unchecked: 0,
            }),
            read: Mutex::new(read),
            migrated_from,
        })
    }

    /// Opens the journal at `path` to read it, without the writer lock: while another
    /// process runs a workflow on it, for instance (WAL mode lets it read what is committed
    /// while the writer goes on). Every write fails. The file must exist and have this build's
    /// schema version (an older file is upgraded by opening it for writing once).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteOptions::default();
        if !path.is_file() {
            return Err(JournalError::Io {
                detail: "no journal file there".into(),
                path,
            });
        }
        let read = connect(&path, &options, true)?;
        let version = schema::check(&read, &path)?;
        if version < SCHEMA_VERSION {
            return Err(JournalError::Sqlite {
                detail: format!(
                    "schema version {version} is older than this build's {SCHEMA_VERSION}: open \
                     it for writing once (any nerv command that runs a workflow) to upgrade it"
                ),
                path,
            });
        }
        let write = connect(&path, &options, true)?;
        Ok(SqliteStore {
            path,
            options,
            lock: None,
            write: Mutex::new(WriteSide {
                conn: write,
                index: TaskIndex::default(),
                unchecked: 0,
            }),
            read: Mutex::new(read),
            migrated_from: version,
        })
    }

    /// Whether it was opened with [`open_read_only`](Self::open_read_only).
    pub fn is_read_only(&self) -> bool {
        self.lock.is_none()
    }

    /// The lock file's path (`<journal>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        WriterLock::path_for(&self.path)
    }

    /// The schema version the file had when opened (0: created now; less than
    /// [`SCHEMA_VERSION`]: upgraded).
    pub fn migrated_from(&self) -> u32 {
        self.migrated_from
    }

    /// A durable memo store in the same file, sharing this store's writer lock.
    /// Fails on a store opened read-only.
    pub fn memo(&self) -> Result<SqliteMemo> {
        let Some(lock) = &self.lock else {
            return Err(JournalError::Sqlite {
                path: self.path.clone(),
                detail: "opened read-only: it has no memo store to write".into(),
            });
        };
        let conn = connect(&self.path, &self.options, false)?;
        Ok(SqliteMemo::from_parts(
            self.path.clone(),
            Arc::clone(lock),
            conn,
        ))
    }

    /// The memo entries not expired at `now`, oldest first — also on a store opened
    /// read-only, e.g. to list the cache while a run holds the journal.
    pub fn memo_entries(&self, now: SystemTime) -> Result<Vec<nerv::MemoEntry>> {
        crate::memo::entries_on(&self.reader(), &self.path, now)
    }

    fn err(&self, e: rusqlite::Error) -> JournalError {
        JournalError::sqlite(&self.path, &e)
    }

    fn writer(&self) -> MutexGuard<'_, WriteSide> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self, conn: &Connection, run: Option<RunId>) -> Result<HashMap<i64, TaskCounts>> {
        let mut out: HashMap<i64, TaskCounts> = HashMap::new();
        let mut stmt = conn
            .prepare_cached(&match run {
                Some(_) => format!(
                    "SELECT run, status, count(*) FROM tasks WHERE {OF_RUN} GROUP BY run, status"
                ),
                None => "SELECT run, status, count(*) FROM tasks GROUP BY run, status".into(),
            })
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(run.map(|r| r.0)), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, status, n) = row.map_err(|e| self.err(e))?;
            let status = self.status::<TaskStatus>(&status)?;
            out.entry(id).or_default().add(status, n as usize);
        }
        Ok(out)
    }

    /// The names of `run`'s tasks by number (`tasks.seq`).
    fn task_names(&self, conn: &Connection, run: RunId) -> Result<FxHashMap<u32, String>> {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id & 0xffffffff, task FROM tasks WHERE {OF_RUN}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    fn status<S: std::str::FromStr>(&self, s: &str) -> Result<S> {
        s.parse().map_err(|_| JournalError::Corrupt {
            path: self.path.clone(),
            detail: format!("unknown status {s:?}"),
        })
    }

    fn summaries(
        &self,
        conn: &Connection,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<RunSummary>> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, workflow, name, status, started, finished, error, resumed_from) =
                row.map_err(|e| self.err(e))?;
            out.push(RunSummary {
                id: RunId(id),
                workflow,
                name,
                status: self.status(&status)?,
                started: from_ns(started),
                finished: finished.map(from_ns),
                error,
                resumed_from: resumed_from.map(RunId),
                counts: TaskCounts::default(),
            });
        }
        drop(stmt);
        let single = if out.len() == 1 {
            Some(out[0].id)
        } else {
            None
        };
        if !out.is_empty() {
            let counts = self.counts(conn, single)?;
            for s in &mut out {
                s.counts = counts.get(&s.id.0).copied().unwrap_or_default();
            }
        }
        Ok(out)
    }
}

/// Records appended between two checkpoints of the log (`after_commit`): with a few rows
/// per record and tens of rows per page, on the order of SQLite's default of 1 000 pages.
const CHECKPOINT_RECORDS: usize = 16 * 1024;

/// The store's writing connection checkpoints the log by itself (inside a commit) only past
/// this many pages (SQLite's default: 1 000): `after_commit` does it first.
const AUTOCHECKPOINT_PAGES: u32 = 8 * 1024;

/// The page cache of a connection that writes, in KiB (`NERV_JOURNAL_CACHE_KIB` overrides it).
const WRITE_CACHE_KIB: u32 = 32 * 1024;

/// The rows of run `?1` in `tasks`: a range of their integer key (see `append::key`).
const OF_RUN: &str = "id >= (?1 << 32) AND id < ((?1 + 1) << 32)";

const RUN_COLUMNS: &str = "id, workflow, name, status, started, finished, error, resumed_from";

impl JournalStore for SqliteStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn begin_run(&self, start: &RunStart) -> Result<RunId> {
        let mut w = self.writer();
        let WriteSide { conn, index, .. } = &mut *w;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let (id, tasks) = append::begin_run(&tx, &self.path, start)?;
        tx.commit().map_err(|e| self.err(e))?;
        index.insert(id, tasks);
        Ok(RunId(id))
    }

    fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        let WriteSide {
            conn,
            index,
            unchecked,
        } = &mut *w;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let finished = append::append(&tx, index, &self.path, records)
            .and_then(|finished| tx.commit().map_err(|e| self.err(e)).map(|()| finished));
        match finished {
            Ok(finished) => {
                for run in finished {
                    index.forget(run);
                }
                *unchecked += records.len();
                Ok(())
            }
            Err(e) => {
                index.clear(); // it may number rows that were rolled back
                Err(e)
            }
        }
    }

    /// Checkpoints the log (PASSIVE: readers are not waited for) once
    /// `CHECKPOINT_RECORDS` (16 384) records were appended since the last one. SQLite would do it
    /// inside the commit of the batch that grows the log past 1 000 pages, before the
    /// journal can report that batch durable; here it runs after.
    fn after_commit(&self) {
        let mut w = self.writer();
        if w.unchecked < CHECKPOINT_RECORDS {
            return;
        }
        w.unchecked = 0;
        if let Err(e) = w
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %self.err(e), "a checkpoint of the journal failed; SQLite retries it later");
        }
    }

    fn run(&self, id: RunId) -> Result<Option<RunSummary>> {
        let conn = self.reader();
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        Ok(self.summaries(&conn, &sql, params![id.0])?.pop())
    }

    fn runs(&self) -> Result<Vec<RunSummary>> {
        let conn = self.reader();
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC");
        self.summaries(&conn, &sql, [])
    }

    fn tasks(&self, run: RunId) -> Result<Vec<TaskSummary>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT task, deps, status, attempts, started, finished, error, \
                        output IS NOT NULL \
                 FROM tasks WHERE {OF_RUN} ORDER BY task"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run.0], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, bool>(7)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (task, deps, status, attempts, started, finished, error, has_output) =
                row.map_err(|e| self.err(e))?;
            let deps = match deps {
                Some(bytes) => {
                    rmp_serde::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("the dependencies of task {task} do not decode: {e}"),
                    })?
                }
                None => Vec::new(),
            };
            out.push(TaskSummary {
                status: self.status(&status)?,
                task,
                deps,
                attempts,
                started: started.map(from_ns),
                finished: finished.map(from_ns),
                error,
                has_output,
            });
        }
        Ok(out)
    }

    fn history(&self, run: RunId) -> Result<Vec<TaskRecord>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT transitions FROM history WHERE run = ?1 ORDER BY batch")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run.0], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let corrupt = |e: &dyn fmt::Display| JournalError::Corrupt {
            path: self.path.clone(),
            detail: format!("a history row of run {run} does not decode: {e}"),
        };
        // Task names by number, read when the first compact row needs them.
        let mut names: Option<FxHashMap<u32, String>> = None;
        let mut out = Vec::new();
        for row in rows {
            let blob = row.map_err(|e| self.err(e))?;
            if blob.first() == Some(&history::COMPACT) {
                let entries = history::decode(&blob).map_err(|e| corrupt(&e))?;
                let names = match &mut names {
                    Some(n) => n,
                    None => names.insert(self.task_names(&conn, run)?),
                };
                for (seq, status, attempt, at, error) in entries {
                    let task = names
                        .get(&seq)
                        .ok_or_else(|| corrupt(&format_args!("no task numbered {seq}")))?;
                    out.push(TaskRecord {
                        run,
                        task: task.clone(),
                        status,
                        attempt,
                        at: from_ns(at),
                        error,
                        output: None,
                    });
                }
                continue;
            }
            // Written by schema version 1 or 2 (see `history`).
            let entries: Vec<(String, String, u32, i64, Option<String>)> =
                rmp_serde::from_slice(&blob).map_err(|e| corrupt(&e))?;
            for (task, status, attempt, at, error) in entries {
                out.push(TaskRecord {
                    run,
                    task,
                    status: self.status(&status)?,
                    attempt,
                    at: from_ns(at),
                    error,
                    output: None,
                });
            }
        }
        Ok(out)
    }

    fn completed_outputs(&self, run: RunId) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT task, output FROM tasks WHERE {OF_RUN} AND status = 'completed' \
                 ORDER BY task"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    fn task_durations(
        &self,
        workflow: &str,
        last_runs: usize,
    ) -> Result<HashMap<String, Duration>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT t.task, avg(t.finished - t.started) \
                 FROM (SELECT id FROM runs WHERE workflow = ?1 ORDER BY id DESC LIMIT ?2) r \
                 JOIN tasks t ON t.id >= (r.id << 32) AND t.id < ((r.id + 1) << 32) \
                 WHERE t.status = 'completed' \
                   AND t.started IS NOT NULL AND t.finished IS NOT NULL \
                 GROUP BY t.task",
            )
            .map_err(|e| self.err(e))?;
        let window = i64::try_from(last_runs).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![workflow, window], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (task, ns) = row.map_err(|e| self.err(e))?;
            out.insert(task, Duration::from_nanos(ns.max(0.0) as u64));
        }
        Ok(out)
    }

    fn latest_resumable(&self, workflow: Option<&str>) -> Result<Option<RunSummary>> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r \
             WHERE status IN ('running', 'failed', 'interrupted') \
               AND (?1 IS NULL OR workflow = ?1) \
               AND NOT EXISTS (SELECT 1 FROM runs s WHERE s.resumed_from = r.id) \
             ORDER BY id DESC LIMIT 1"
        );
        Ok(self.summaries(&conn, &sql, params![workflow])?.pop())
    }

    fn delete_runs(
        &self,
        older_than: Option<SystemTime>,
        keep_last: Option<usize>,
    ) -> Result<usize> {
        if older_than.is_none() && keep_last.is_none() {
            return Ok(0);
        }
        let mut w = self.writer();
        let WriteSide { conn, index, .. } = &mut *w;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let ids: Vec<i64> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id FROM runs WHERE status != 'running' \
                       AND (?1 IS NULL OR started < ?1) \
                       AND (?2 IS NULL OR id NOT IN \
                            (SELECT id FROM runs ORDER BY id DESC LIMIT ?2))",
                )
                .map_err(|e| self.err(e))?;
            let keep = keep_last.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
            let rows = stmt
                .query_map(params![older_than.map(to_ns), keep], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        for id in &ids {
            tx.execute("DELETE FROM history WHERE run = ?1", params![id])
                .map_err(|e| self.err(e))?;
            tx.execute(&format!("DELETE FROM tasks WHERE {OF_RUN}"), params![id])
                .map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM runs WHERE id = ?1", params![id])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        for id in &ids {
            index.forget(*id);
        }
        Ok(ids.len())
    }

    fn mark_interrupted(&self, run: RunId, at: SystemTime) -> Result<bool> {
        let n = self
            .writer()
            .conn
            .execute(
                "UPDATE runs SET status = 'interrupted', finished = ?2 \
                 WHERE id = ?1 AND status = 'running'",
                params![run.0, to_ns(at)],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }
}

/// Opens one connection to the journal at `path` (steps 3 and 4 of the module's protocol);
/// the read connection is read-only and skips the pragmas that write.
pub(crate) fn connect(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection> {
    let err = |e: rusqlite::Error| JournalError::sqlite(path, &e);
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(options.busy_timeout).map_err(err)?;
    schema::check(&conn, path)?;
    if read_only {
        return Ok(conn);
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Sqlite {
            path: path.to_path_buf(),
            detail: format!(
                "cannot use WAL mode (SQLite kept {mode:?}); is the file on a network file system?"
            ),
        });
    }
    conn.pragma_update(None, "synchronous", options.synchronous.pragma_name())
        .map_err(err)?;

    // A batch is one transaction: its pages stay in the cache until it commits. SQLite's
    // default cache (2 MiB) is smaller than a batch of a large run (100 000 tasks: about
    // 8 MiB), and a cache that overflows mid-transaction writes pages to the log early and
    // reads them back. The cache grows only as far as it is used.
    let kib = std::env::var("NERV_JOURNAL_CACHE_KIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(WRITE_CACHE_KIB);
    conn.pragma_update(None, "cache_size", format!("-{kib}"))
        .map_err(err)?;
    if let Some(max) = options.max_size {
        let page: u64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(err)?;
        let pages = (max / page.max(1)).max(1);
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(err)?;
    }
    Ok(conn)
}

/// The first of the journal's file (and its WAL files) or directory that this process cannot
/// write, if any. Probes by opening for writing (the directory: by creating and removing a
/// probe file), so it answers for this user, root included.
pub(crate) fn unwritable(path: &Path) -> Option<PathBuf> {
    use std::fs::OpenOptions;
    let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let file = PathBuf::from(name);
        if file.exists() {
            if let Err(e) = OpenOptions::new().read(true).write(true).open(&file) {
                if denied(&e) {
                    return Some(file);
                }
            }
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(".nerv-journal-probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if denied(&e) => Some(dir),
        Err(_) => None,
    }
}

/// Nanoseconds since the Unix epoch (negative before it; saturating).
pub(crate) fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The inverse of [`to_ns`].
pub(crate) fn from_ns(n: i64) -> SystemTime {
    if n >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            SystemTime::UNIX_EPOCH - Duration::from_secs(5),
        ] {
            assert_eq!(from_ns(to_ns(t)), t);
        }
    }
}
