//! The write side of a [`SqliteStore`](super::SqliteStore): its connection, the task numbers
//! of the runs it writes, and `append` (a batch of records in one transaction).
//!
//! Invariants:
//! - A task's row is keyed by the rowid `(run << 32) | seq` ([`key`]): `seq` is the task's
//!   number in its run, handed out in the order tasks are first recorded (declared or seen in
//!   a transition), from 0. The integer key makes a row write one cheap B-tree step (rows of a
//!   run are appended in key order) where the `(run, task text)` key of schema versions 1-2
//!   cost a record comparison with a string at every level. Run ids above [`MAX_RUN`] are
//!   refused.
//! - [`TaskIndex`] maps `(run, task id)` to `seq` for the runs written lately. It lives beside
//!   the connection, behind the same mutex, and every write of the `tasks` table goes through
//!   it; the writer lock makes this store the file's only writer. So the index and the table
//!   agree, and `(run, task)` stays unique without a text index. A run missing from the index
//!   is loaded from the table when a batch first names it (its rows' numbers and ids); a run that
//!   finished is dropped from it after its batch commits (a later record reloads it).
//! - A batch that fails (an error before or at its commit) clears the whole index: it may hold
//!   numbers of rows that were rolled back; it is reloaded from what is committed.
//! - Per batch, each task of the batch costs one row write: an `INSERT` for a task first
//!   recorded in this batch (64 rows to a statement), an `UPDATE` by key for one recorded
//!   before; its transitions (and its declaration) in the batch are folded in memory first
//!   ([`Fold`]). The `UPDATE` never
//!   changes a completed row, so completion (and its output) is recorded exactly once.
//! - Each run of the batch gets one `history` row: the batch's transitions of that run, in
//!   order, in the compact format ([`super::history`]), duplicate completions left out.

use super::history::Encoder;
use super::{to_ns, OF_RUN};
use crate::error::{JournalError, Result};
use crate::record::{Record, RunRecord, RunStart, TaskRecord, TaskStatus};
use rusqlite::{params, Connection, ToSql, Transaction};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

/// The largest run id: a task's key is `(run << 32) | seq`.
pub(crate) const MAX_RUN: i64 = (1 << 31) - 1;

/// A task's row id: its run in the high 32 bits, its number in the run in the low 32.
pub(crate) fn key(run: i64, seq: u32) -> i64 {
    (run << 32) | i64::from(seq)
}

/// A run's task numbers: task ids by number in one string, and a map from a hash of the id
/// to its number (ids whose hash another id took first go to `collided`). Compared with a
/// map keyed by boxed strings: no allocation per task, and the ids are compared in an
/// arena laid out in number order, which is also about the order transitions name them.
#[derive(Default)]
pub(crate) struct RunTasks {
    /// Every id, concatenated in number order; the id numbered `n` ends at `ends[n]`.
    names: String,
    ends: Vec<usize>,
    by_hash: FxHashMap<u64, u32>,
    collided: FxHashMap<Box<str>, u32>,
    /// The number last looked up: transitions name tasks in about the order they were
    /// numbered, so the tasks near it are tried before the hash map (whose probes miss the
    /// cache in a large run).
    recent: u32,
}

fn hash_of(task: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(task.as_bytes());
    h.finish()
}

impl RunTasks {
    fn name(&self, seq: u32) -> &str {
        let n = seq as usize;
        let start = if n == 0 { 0 } else { self.ends[n - 1] };
        &self.names[start..self.ends[n]]
    }

    fn next(&self) -> u32 {
        self.ends.len() as u32
    }

    /// Records that `task` has number `seq` (the next one).
    fn push(&mut self, task: &str, hash: u64) -> u32 {
        let seq = self.next();
        self.names.push_str(task);
        self.ends.push(self.names.len());
        match self.by_hash.entry(hash) {
            Entry::Vacant(v) => {
                v.insert(seq);
            }
            Entry::Occupied(_) => {
                self.collided.insert(task.into(), seq);
            }
        }
        seq
    }

    /// The task's number and whether it was handed out now (no row holds it yet).
    fn number(&mut self, task: &str) -> (u32, bool) {
        let next = if task.is_empty() { 0 } else { self.next() }; // "" could name a gap
        for step in [0i64, 1, 2, -1, 3, -2, 4, -3] {
            let guess = i64::from(self.recent) + step;
            if (0..i64::from(next)).contains(&guess) && self.name(guess as u32) == task {
                self.recent = guess as u32;
                return (guess as u32, false);
            }
        }
        let (seq, new) = self.number_by_hash(task);
        self.recent = seq;
        (seq, new)
    }

    fn number_by_hash(&mut self, task: &str) -> (u32, bool) {
        let hash = hash_of(task);
        if let Some(&seq) = self.by_hash.get(&hash) {
            if self.name(seq) == task {
                return (seq, false);
            }
            if let Some(&seq) = self.collided.get(task) {
                return (seq, false);
            }
        }
        (self.push(task, hash), true)
    }

    /// Adds a task read from the table, numbered `seq`; numbers not read (none, unless the
    /// file was edited) are left empty.
    fn load(&mut self, seq: u32, task: &str) {
        while self.next() < seq {
            self.ends.push(self.names.len());
        }
        if self.next() == seq {
            self.push(task, hash_of(task));
        }
    }
}

/// The task numbers of the runs written lately (see the module's invariants).
#[derive(Default)]
pub(crate) struct TaskIndex {
    runs: FxHashMap<i64, RunTasks>,
}

/// More runs than this in the index: it is emptied before the next batch (runs that never
/// finish, e.g. recorders dropped mid-run, must not grow it forever).
const MAX_INDEXED_RUNS: usize = 64;

impl TaskIndex {
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }

    pub(crate) fn insert(&mut self, run: i64, tasks: RunTasks) {
        self.runs.insert(run, tasks);
    }

    pub(crate) fn forget(&mut self, run: i64) {
        self.runs.remove(&run);
    }
}

/// The connection that writes, and the index of the rows it wrote.
pub(crate) struct WriteSide {
    pub(crate) conn: Connection,
    pub(crate) index: TaskIndex,
    /// Records appended since the log was last checkpointed.
    pub(crate) unchecked: usize,
}

/// A task's transitions within one batch, folded into the row they leave behind (the same
/// rules as the `UPDATE`'s: completion is final; attempts only grow; `started` is the first
/// start; `finished` and `error` are the latest transition's).
struct Fold<'a> {
    run: i64,
    seq: u32,
    task: &'a str,
    /// Its number was handed out in this batch: its row is inserted.
    new: bool,
    /// Its completion was refused (the stored row was completed already).
    refused: bool,
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
    fn new(run: i64, seq: u32, task: &'a str, new: bool) -> Self {
        Fold {
            run,
            seq,
            task,
            new,
            refused: false,
            deps: None,
            status: None,
            attempts: 0,
            started: None,
            finished: None,
            error: None,
            output: None,
        }
    }

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

/// A transition kept for the history: its fold, status, attempt, time, error.
type Transition<'a> = (u32, TaskStatus, u32, i64, Option<&'a str>);

/// A run named by the batch.
struct BatchRun<'a> {
    id: i64,
    /// The store holds it (else its records are ignored).
    held: bool,
    transitions: Vec<Transition<'a>>,
    /// The index in the batch's folds of each task of the run, by task number
    /// ([`NO_FOLD`]: none yet).
    fold_at: Vec<u32>,
}

const NO_FOLD: u32 = u32::MAX;

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |e| JournalError::sqlite(path, &e)
}

fn encode_deps(path: &Path, task: &str, deps: &[String], buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    rmp_serde::encode::write(buf, deps).map_err(|e| JournalError::Sqlite {
        path: path.to_path_buf(),
        detail: format!("cannot encode the dependencies of task {task}: {e}"),
    })
}

/// Records a new run and its declared tasks in `tx`; returns its id and its task numbers (to
/// put in the index once `tx` commits).
pub(crate) fn begin_run(
    tx: &Transaction<'_>,
    path: &Path,
    start: &RunStart,
) -> Result<(i64, RunTasks)> {
    let err = sqlite_err(path);
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
    .map_err(&err)?;
    let id = tx.last_insert_rowid();
    if id > MAX_RUN {
        return Err(JournalError::Sqlite {
            path: path.to_path_buf(),
            detail: format!("run ids are exhausted (the next is {id}): start a new journal file"),
        });
    }
    let mut tasks = RunTasks::default();
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO tasks (id, run, task, deps, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
        )
        .map_err(&err)?;
    let mut buf = Vec::new();
    for t in &start.tasks {
        let (seq, new) = tasks.number(&t.id);
        if !new {
            continue; // declared twice: the first declaration stands
        }
        let deps = if t.deps.is_empty() {
            None
        } else {
            encode_deps(path, &t.id, &t.deps, &mut buf)?;
            Some(buf.as_slice())
        };
        stmt.execute(params![key(id, seq), id, t.id, deps])
            .map_err(&err)?;
    }
    Ok((id, tasks))
}

/// Loads a run's task numbers from the table; `None` if the store does not hold the run.
fn load(tx: &Transaction<'_>, path: &Path, run: i64) -> Result<Option<RunTasks>> {
    let err = sqlite_err(path);
    if !(0..=MAX_RUN).contains(&run) {
        return Ok(None); // no run has such an id (begin_run refuses them)
    }
    let held = tx
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
        .and_then(|mut s| s.exists(params![run]))
        .map_err(&err)?;
    if !held {
        return Ok(None);
    }
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT id & 0xffffffff, task FROM tasks WHERE {OF_RUN}"
        ))
        .map_err(&err)?;
    let rows = stmt
        .query_map(params![run], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(&err)?;
    let mut rows: Vec<(u32, String)> = rows.collect::<rusqlite::Result<_>>().map_err(&err)?;
    rows.sort_unstable_by_key(|r| r.0);
    let mut tasks = RunTasks::default();
    for (seq, task) in &rows {
        tasks.load(*seq, task);
    }
    Ok(Some(tasks))
}

/// Appends `records` in `tx` (not committed here); returns the runs the batch finished, to
/// drop from the index once `tx` commits. On `Err` the caller must clear the index.
pub(crate) fn append(
    tx: &Transaction<'_>,
    index: &mut TaskIndex,
    path: &Path,
    records: &[Record],
) -> Result<Vec<i64>> {
    let err = sqlite_err(path);
    if index.runs.len() > MAX_INDEXED_RUNS {
        index.clear();
    }
    let mut runs: Vec<BatchRun<'_>> = Vec::new();
    let mut slots: FxHashMap<i64, usize> = FxHashMap::default();
    let mut folds: Vec<Fold<'_>> = Vec::with_capacity(records.len());
    let mut finished: Vec<i64> = Vec::new();
    let mut last: Option<(i64, usize)> = None;
    let mut run_update = tx
        .prepare_cached("UPDATE runs SET status = ?2, finished = ?3, error = ?4 WHERE id = ?1")
        .map_err(&err)?;
    for record in records {
        let run_id = match record {
            Record::Task(t) => t.run.0,
            Record::Run(r) => r.run.0,
            Record::Declare(d) => d.run.0,
        };
        let slot = match last {
            Some((id, slot)) if id == run_id => slot,
            _ => {
                let slot = match slots.get(&run_id) {
                    Some(&s) => s,
                    None => {
                        let held = match index.runs.entry(run_id) {
                            Entry::Occupied(_) => true,
                            Entry::Vacant(v) => match load(tx, path, run_id)? {
                                Some(tasks) => {
                                    v.insert(tasks);
                                    true
                                }
                                None => false,
                            },
                        };
                        runs.push(BatchRun {
                            id: run_id,
                            held,
                            transitions: Vec::new(),
                            fold_at: Vec::new(),
                        });
                        slots.insert(run_id, runs.len() - 1);
                        runs.len() - 1
                    }
                };
                last = Some((run_id, slot));
                slot
            }
        };
        let run = &mut runs[slot];
        if !run.held {
            continue; // a run the store does not hold
        }
        let tasks = index.runs.entry(run_id).or_default();
        match record {
            Record::Task(r) => {
                let at = to_ns(r.at);
                let f = fold_index(tasks, &mut folds, &mut run.fold_at, run_id, &r.task);
                let fold = &mut folds[f as usize];
                let completion = r.status == TaskStatus::Completed;
                if completion && fold.status == Some(TaskStatus::Completed) {
                    continue; // completed earlier in this batch: exactly once
                }
                fold.apply(r, at);
                run.transitions
                    .push((f, r.status, r.attempt, at, r.error.as_deref()));
            }
            Record::Declare(d) => {
                for t in &d.tasks {
                    let f = fold_index(tasks, &mut folds, &mut run.fold_at, run_id, &t.id);
                    folds[f as usize].deps = Some(&t.deps);
                }
            }
            Record::Run(RunRecord {
                run: _,
                status,
                at,
                error,
            }) => {
                let end = status.is_finished().then_some(to_ns(*at));
                run_update
                    .execute(params![run_id, status.as_str(), end, error])
                    .map_err(&err)?;
                if end.is_some() {
                    finished.push(run_id);
                }
            }
        }
    }
    write_folds(tx, path, &mut folds)?;
    let mut history = tx
        .prepare_cached(
            "INSERT INTO history (run, batch, transitions) VALUES (?1, \
               (SELECT coalesce(max(batch), 0) + 1 FROM history WHERE run = ?1), ?2)",
        )
        .map_err(&err)?;
    for run in &runs {
        let mut blob = Encoder::new();
        for &(f, status, attempt, at, error) in &run.transitions {
            let fold = &folds[f as usize];
            if status == TaskStatus::Completed && fold.refused {
                continue; // a duplicate completion: not recorded
            }
            blob.push(fold.seq, status, attempt, at, error);
        }
        if !blob.is_empty() {
            history
                .execute(params![run.id, blob.finish()])
                .map_err(&err)?;
        }
    }
    Ok(finished)
}

/// The index in `folds` of the fold of `task` of run `run`, created if the batch had none.
fn fold_index<'a>(
    tasks: &mut RunTasks,
    folds: &mut Vec<Fold<'a>>,
    fold_at: &mut Vec<u32>,
    run: i64,
    task: &'a str,
) -> u32 {
    let (seq, new) = tasks.number(task);
    let at = seq as usize;
    if at >= fold_at.len() {
        fold_at.resize(at + 1, NO_FOLD);
    }
    if fold_at[at] == NO_FOLD {
        fold_at[at] = folds.len() as u32;
        folds.push(Fold::new(run, seq, task, new));
    }
    fold_at[at]
}

/// Rows per multi-row `INSERT` of new tasks (10 parameters a row: SQLite allows 32 766).
const ROWS_PER_INSERT: usize = 64;

/// The `INSERT` of `n` new task rows.
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO tasks \
           (id, run, task, deps, status, attempts, started, finished, error, output) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// Writes the batch's folds: one `UPDATE` by key for each task recorded before, merging the
/// fold into the stored row exactly as applying its transitions one by one would (and marking
/// the folds whose completion the stored row refused); and the rows of new tasks, inserted
/// [`ROWS_PER_INSERT`] to a statement (a statement's fixed cost, spread over its rows).
fn write_folds(tx: &Transaction<'_>, path: &Path, folds: &mut [Fold<'_>]) -> Result<()> {
    let err = sqlite_err(path);
    let mut update = tx
        .prepare_cached(
            "UPDATE tasks SET \
               deps = coalesce(?2, deps), \
               status = CASE WHEN ?3 = 'pending' THEN status ELSE ?3 END, \
               attempts = max(attempts, ?4), \
               started = coalesce(started, ?5), \
               finished = CASE WHEN ?3 = 'pending' THEN finished ELSE ?6 END, \
               error = CASE WHEN ?3 = 'pending' THEN error ELSE ?7 END, \
               output = ?8 \
             WHERE id = ?1 AND status != 'completed'",
        )
        .map_err(&err)?;
    let mut buf = Vec::new();
    for f in folds.iter_mut().filter(|f| !f.new) {
        let status = f.status.unwrap_or(TaskStatus::Pending);
        let deps = match f.deps {
            Some(d) if !d.is_empty() => {
                encode_deps(path, f.task, d, &mut buf)?;
                Some(buf.as_slice())
            }
            _ => None,
        };
        let changed = update
            .execute(params![
                key(f.run, f.seq),
                deps,
                status.as_str(),
                f.attempts,
                f.started,
                f.finished,
                f.error,
                f.output
            ])
            .map_err(&err)?;
        f.refused = changed == 0 && status == TaskStatus::Completed;
    }
    let new: Vec<&Fold<'_>> = folds.iter().filter(|f| f.new).collect();
    // Full chunks, then the rest a row at a time: two cached statements in all.
    let full = new.len() / ROWS_PER_INSERT * ROWS_PER_INSERT;
    let chunks = new[..full]
        .chunks(ROWS_PER_INSERT)
        .chain(new[full..].chunks(1));
    for chunk in chunks {
        // Each row's parameters; the encoded dependencies of the chunk in one buffer.
        buf.clear();
        let mut spans = Vec::with_capacity(chunk.len());
        for f in chunk {
            spans.push(match f.deps {
                Some(d) if !d.is_empty() => {
                    let start = buf.len();
                    rmp_serde::encode::write(&mut buf, d).map_err(|e| JournalError::Sqlite {
                        path: path.to_path_buf(),
                        detail: format!("cannot encode the dependencies of task {}: {e}", f.task),
                    })?;
                    Some(start..buf.len())
                }
                _ => None,
            });
        }
        let keys: Vec<i64> = chunk.iter().map(|f| key(f.run, f.seq)).collect();
        let statuses: Vec<&str> = chunk
            .iter()
            .map(|f| f.status.unwrap_or(TaskStatus::Pending).as_str())
            .collect();
        let deps: Vec<Option<&[u8]>> = spans.into_iter().map(|s| s.map(|s| &buf[s])).collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 10);
        for (i, f) in chunk.iter().enumerate() {
            values.extend_from_slice(&[
                &keys[i] as &dyn ToSql,
                &f.run,
                &f.task,
                &deps[i],
                &statuses[i],
                &f.attempts,
                &f.started,
                &f.finished,
                &f.error,
                &f.output,
            ]);
        }
        tx.prepare_cached(&insert_sql(chunk.len()))
            .and_then(|mut stmt| stmt.execute(&*values))
            .map_err(&err)?;
    }
    Ok(())
}
