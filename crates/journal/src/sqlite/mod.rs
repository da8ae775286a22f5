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
//! - `append` writes, per batch: one `tasks` upsert per task, its transitions (and its
//!   declaration) in the batch folded first ([`Fold`]), its output in the same row; the upsert
//!   never changes a completed row, so completion (and its output) is recorded exactly once;
//!   and one `history` row per run, a MessagePack array of the batch's transitions of that run
//!   (duplicate completions left out). Statement count per batch thus grows with tasks, not
//!   with transitions: a task that starts and completes within one batch costs one row write.
//!
//! Opening, in order (nothing is written before step 5):
//! 1. refuse a path whose file or directory this process cannot write (`PermissionDenied`);
//! 2. take the writer lock (`Locked`, naming the holder);
//! 3. open the connection; read `user_version` and `application_id` (`Corrupt` for a file that
//!    is not a SQLite database or not a journal, `TooNew` for a newer schema);
//! 4. set WAL mode and the synchronous level;
//! 5. apply pending migrations in one transaction ([`schema`]).

pub(crate) mod schema;

use schema::SCHEMA_VERSION;

use crate::error::{JournalError, Result};
use crate::lock::WriterLock;
use crate::memo::SqliteMemo;
use crate::record::{
    Record, RunId, RunRecord, RunStart, RunSummary, TaskCounts, TaskRecord, TaskStatus, TaskSummary,
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
    write: Mutex<Connection>,
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
        let read = connect(&path, &options, true)?;
        Ok(SqliteStore {
            path,
            options,
            lock: Some(lock),
            write: Mutex::new(write),
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
            write: Mutex::new(write),
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

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self, conn: &Connection, run: Option<RunId>) -> Result<HashMap<i64, TaskCounts>> {
        let mut out: HashMap<i64, TaskCounts> = HashMap::new();
        let mut stmt = conn
            .prepare_cached(
                "SELECT run, status, count(*) FROM tasks WHERE ?1 IS NULL OR run = ?1 \
                 GROUP BY run, status",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run.map(|r| r.0)], |r| {
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

/// One transition in a history row: task, status, attempt, time, error.
type HistoryEntry<'a> = (&'a str, &'a str, u32, i64, Option<&'a str>);

/// A task's transitions within one batch, folded into the row they leave behind (the same
/// rules as the upsert's: completion is final; attempts only grow; `started` is the first
/// start; `finished` and `error` are the latest transition's).
#[derive(Default)]
struct Fold<'a> {
    /// The dependencies, if the batch declares the task.
    deps: Option<&'a [String]>,
    status: Option<TaskStatus>,
    attempts: u32,
    started: Option<i64>,
    finished: Option<i64>,
    error: Option<&'a str>,
    /// The output of the batch's (first) completion.
    output: Option<&'a [u8]>,
}

impl<'a> Fold<'a> {
    fn apply(&mut self, r: &'a TaskRecord, at: i64) {
        self.attempts = self.attempts.max(r.attempt);
        if r.status == TaskStatus::Running && self.started.is_none() {
            self.started = Some(at);
        }
        if self.status == Some(TaskStatus::Completed) {
            return;
        }
        self.status = Some(r.status);
        self.finished = r.status.is_finished().then_some(at);
        self.error = r.error.as_deref();
        if r.status == TaskStatus::Completed {
            self.output = r.output.as_deref();
        }
    }
}

const RUN_COLUMNS: &str = "id, workflow, name, status, started, finished, error, resumed_from";

impl JournalStore for SqliteStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn begin_run(&self, start: &RunStart) -> Result<RunId> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO runs (workflow, name, status, started, resumed_from) \
             VALUES (?1, ?2, 'running', ?3, ?4)",
            params![
                start.workflow,
                start.name,
                to_ns(start.started),
                start.resumed_from.map(|r| r.0)
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO tasks (run, task, deps, status) \
                     VALUES (?1, ?2, ?3, 'pending')",
                )
                .map_err(|e| self.err(e))?;
            for t in &start.tasks {
                let deps = if t.deps.is_empty() {
                    None
                } else {
                    Some(
                        rmp_serde::to_vec(&t.deps).map_err(|e| JournalError::Sqlite {
                            path: self.path.clone(),
                            detail: format!("cannot encode the dependencies of task {}: {e}", t.id),
                        })?,
                    )
                };
                stmt.execute(params![id, t.id, deps])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(RunId(id))
    }

    fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        {
            // Per run of the batch: `None` if the store does not hold it, else its
            // transitions in this batch, each with whether it is a completion (one history
            // row per run per batch).
            let mut runs: FxHashMap<i64, Option<Vec<(HistoryEntry<'_>, bool)>>> =
                FxHashMap::default();
            let mut run_order: Vec<i64> = Vec::new();
            // Per task of the batch: its transitions folded (see `Fold`), in first-seen order.
            let mut folds: FxHashMap<(i64, &str), Fold<'_>> = FxHashMap::default();
            let mut order: Vec<(i64, &str)> = Vec::new();
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut run = tx
                .prepare_cached(
                    "UPDATE runs SET status = ?2, finished = ?3, error = ?4 WHERE id = ?1",
                )
                .map_err(|e| self.err(e))?;
            for record in records {
                let run_id = match record {
                    Record::Task(t) => t.run.0,
                    Record::Run(r) => r.run.0,
                    Record::Declare(d) => d.run.0,
                };
                let history = match runs.entry(run_id) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let held = exists.exists(params![run_id]).map_err(|e| self.err(e))?;
                        run_order.push(run_id);
                        v.insert(held.then(Vec::new))
                    }
                };
                let Some(history) = history else {
                    continue; // a run the store does not hold
                };
                match record {
                    Record::Task(r) => {
                        let at = to_ns(r.at);
                        let key = (run_id, r.task.as_str());
                        let fold = folds.entry(key).or_insert_with(|| {
                            order.push(key);
                            Fold::default()
                        });
                        let completion = r.status == TaskStatus::Completed;
                        if completion && fold.status == Some(TaskStatus::Completed) {
                            continue; // completed earlier in this batch: exactly once
                        }
                        fold.apply(r, at);
                        history.push((
                            (
                                &r.task,
                                r.status.as_str(),
                                r.attempt,
                                at,
                                r.error.as_deref(),
                            ),
                            completion,
                        ));
                    }
                    Record::Declare(d) => {
                        for t in &d.tasks {
                            let key = (run_id, t.id.as_str());
                            folds
                                .entry(key)
                                .or_insert_with(|| {
                                    order.push(key);
                                    Fold::default()
                                })
                                .deps = Some(&t.deps);
                        }
                    }
                    Record::Run(RunRecord {
                        run: _,
                        status,
                        at,
                        error,
                    }) => {
                        let finished = status.is_finished().then_some(to_ns(*at));
                        run.execute(params![run_id, status.as_str(), finished, error])
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            // One upsert per task of the batch, merging its fold into the stored row exactly
            // as applying its transitions one by one would. A completed row is never changed:
            // a fold that completes a task completed by an earlier batch changes nothing, and
            // its completion is left out of the history (exactly once).
            let mut task = tx
                .prepare_cached(
                    "INSERT INTO tasks \
                       (run, task, deps, status, attempts, started, finished, error, output) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (run, task) DO UPDATE SET \
                       deps = coalesce(excluded.deps, tasks.deps), \
                       status = CASE WHEN excluded.status = 'pending' THEN tasks.status \
                                ELSE excluded.status END, \
                       attempts = max(tasks.attempts, excluded.attempts), \
                       started = coalesce(tasks.started, excluded.started), \
                       finished = CASE WHEN excluded.status = 'pending' THEN tasks.finished \
                                  ELSE excluded.finished END, \
                       error = CASE WHEN excluded.status = 'pending' THEN tasks.error \
                               ELSE excluded.error END, \
                       output = excluded.output \
                     WHERE tasks.status != 'completed'",
                )
                .map_err(|e| self.err(e))?;
            let mut refused: Vec<(i64, &str)> = Vec::new();
            for key in &order {
                let f = &folds[key];
                let status = f.status.unwrap_or(TaskStatus::Pending);
                let deps = match f.deps {
                    Some(d) if !d.is_empty() => {
                        Some(rmp_serde::to_vec(d).map_err(|e| JournalError::Sqlite {
                            path: self.path.clone(),
                            detail: format!(
                                "cannot encode the dependencies of task {}: {e}",
                                key.1
                            ),
                        })?)
                    }
                    _ => None,
                };
                let changed = task
                    .execute(params![
                        key.0,
                        key.1,
                        deps,
                        status.as_str(),
                        f.attempts,
                        f.started,
                        f.finished,
                        f.error,
                        f.output
                    ])
                    .map_err(|e| self.err(e))?;
                if changed == 0 && status == TaskStatus::Completed {
                    refused.push(*key);
                }
            }
            let mut history = tx
                .prepare_cached(
                    "INSERT INTO history (run, batch, transitions) VALUES (?1, \
                       (SELECT coalesce(max(batch), 0) + 1 FROM history WHERE run = ?1), ?2)",
                )
                .map_err(|e| self.err(e))?;
            for id in &run_order {
                if let Some(Some(entries)) = runs.get(id) {
                    let kept: Vec<&HistoryEntry<'_>> = entries
                        .iter()
                        .filter(|(e, completion)| !(*completion && refused.contains(&(*id, e.0))))
                        .map(|(e, _)| e)
                        .collect();
                    if kept.is_empty() {
                        continue;
                    }
                    let blob = rmp_serde::to_vec(&kept).map_err(|e| JournalError::Sqlite {
                        path: self.path.clone(),
                        detail: format!("cannot encode the history of run {id}: {e}"),
                    })?;
                    history
                        .execute(params![id, blob])
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
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
            .prepare_cached(
                "SELECT task, deps, status, attempts, started, finished, error, \
                        output IS NOT NULL \
                 FROM tasks WHERE run = ?1 ORDER BY task",
            )
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
        let mut out = Vec::new();
        for row in rows {
            let blob = row.map_err(|e| self.err(e))?;
            let entries: Vec<(String, String, u32, i64, Option<String>)> =
                rmp_serde::from_slice(&blob).map_err(|e| JournalError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("a history row of run {run} does not decode: {e}"),
                })?;
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
            .prepare_cached(
                "SELECT task, output FROM tasks WHERE run = ?1 AND status = 'completed' \
                 ORDER BY task",
            )
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
                "SELECT t.task, avg(t.finished - t.started) FROM tasks t \
                 WHERE t.run IN (SELECT id FROM runs WHERE workflow = ?1 \
                                 ORDER BY id DESC LIMIT ?2) \
                   AND t.status = 'completed' \
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
        let mut conn = self.writer();
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
            for table in ["history", "tasks"] {
                tx.execute(&format!("DELETE FROM {table} WHERE run = ?1"), params![id])
                    .map_err(|e| self.err(e))?;
            }
            tx.execute("DELETE FROM runs WHERE id = ?1", params![id])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ids.len())
    }

    fn mark_interrupted(&self, run: RunId, at: SystemTime) -> Result<bool> {
        let conn = self.writer();
        let n = conn
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
    if let Ok(kib) = std::env::var("NERV_JOURNAL_CACHE_KIB") {
        conn.pragma_update(None, "cache_size", format!("-{kib}"))
            .map_err(err)?;
    }
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
