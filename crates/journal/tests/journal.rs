//! The journal's integration tests: one binary (see `util.rs` for the helpers).

mod util;

use nerv::MemoStore;
use nerv_journal::{
    Journal, JournalError, JournalStore, Record, RunId, RunRecord, RunStatus, SqliteMemo,
    SqliteOptions, SqliteStore, Synchronous, TaskRecord, TaskStatus, APPLICATION_ID, MIGRATIONS,
    SCHEMA_VERSION,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use util::*;

// ---------------------------------------------------------------- records and reads

#[test]
fn the_front_ends_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Journal>();
    shared::<SqliteStore>();
    shared::<SqliteMemo>();
    shared::<JournalError>();
}

#[test]
fn a_run_its_tasks_and_outputs_read_back() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run = j.begin_run(&start("etl", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"A");
    j.submit(TaskRecord::new(run, "b", TaskStatus::Running, 1, t(3)));
    j.submit(TaskRecord::new(run, "b", TaskStatus::Retrying, 1, t(4)).error("flaky"));
    j.submit(TaskRecord::new(run, "b", TaskStatus::Running, 2, t(5)));
    j.submit(TaskRecord::new(run, "b", TaskStatus::Failed, 2, t(6)).error("boom"));
    j.submit(TaskRecord::new(run, "c", TaskStatus::Skipped, 0, t(6)));
    j.submit(TaskRecord::new(run, "dyn", TaskStatus::Completed, 1, t(6)));
    j.submit(RunRecord {
        run,
        status: RunStatus::Failed,
        at: t(7),
        error: Some("b failed".into()),
    });
    j.flush().unwrap();

    let s = store(&j);
    let r = s.run(run).unwrap().unwrap();
    assert_eq!((r.workflow.as_str(), r.name.as_str()), ("etl", "etl run"));
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!((r.started, r.finished), (t(0), Some(t(7))));
    assert_eq!(r.error.as_deref(), Some("b failed"));
    assert_eq!(r.counts.total(), 4);
    assert_eq!(
        (r.counts.completed, r.counts.failed, r.counts.skipped),
        (2, 1, 1)
    );

    let tasks = s.tasks(run).unwrap();
    let by: HashMap<_, _> = tasks.iter().map(|t| (t.task.as_str(), t)).collect();
    assert_eq!(by["a"].status, TaskStatus::Completed);
    assert_eq!(
        (by["a"].started, by["a"].finished),
        (Some(t(1)), Some(t(2)))
    );
    assert!(by["a"].has_output);
    assert_eq!(by["b"].deps, vec!["a".to_string()]);
    assert_eq!(by["c"].deps, vec!["a".to_string(), "b".to_string()]);
    assert_eq!((by["b"].status, by["b"].attempts), (TaskStatus::Failed, 2));
    assert_eq!(by["b"].started, Some(t(3)), "the first attempt's start");
    assert_eq!(by["b"].error.as_deref(), Some("boom"));
    assert!(!by["dyn"].has_output, "completed without a storable value");
    assert!(by["dyn"].deps.is_empty());

    assert_eq!(
        s.completed_outputs(run).unwrap(),
        vec![
            ("a".to_string(), Some(b"A".to_vec())),
            ("dyn".to_string(), None)
        ]
    );
    assert!(s.run(RunId(run.0 + 100)).unwrap().is_none());
}

#[test]
fn completion_is_recorded_once_per_task_per_run() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    let other = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"first");
    j.submit(TaskRecord::new(run, "a", TaskStatus::Completed, 2, t(9)).output(b"second".to_vec()));
    // A later transition does not undo a completion either.
    j.submit(TaskRecord::new(run, "a", TaskStatus::Running, 3, t(10)));
    complete(&j, other, "a", t(1), b"other run");
    j.flush().unwrap();
    let s = store(&j);
    assert_eq!(
        s.completed_outputs(run).unwrap(),
        vec![("a".into(), Some(b"first".to_vec()))]
    );
    assert_eq!(s.completed_outputs(other).unwrap().len(), 1);
    let a = s
        .tasks(run)
        .unwrap()
        .into_iter()
        .find(|t| t.task == "a")
        .unwrap();
    assert_eq!((a.status, a.finished), (TaskStatus::Completed, Some(t(2))));
    let history = s.history(run).unwrap();
    let statuses: Vec<(TaskStatus, u32)> = history
        .iter()
        .filter(|r| r.task == "a")
        .map(|r| (r.status, r.attempt))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (TaskStatus::Running, 1),
            (TaskStatus::Completed, 1),
            (TaskStatus::Running, 3)
        ],
        "no duplicate completion in the history either"
    );
    assert!(history.iter().all(|r| r.run == run && r.output.is_none()));
}

#[test]
fn runs_are_listed_newest_first_with_counts() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let ids: Vec<RunId> = (0..3)
        .map(|i| j.begin_run(&start("w", t(i), None)).unwrap())
        .collect();
    complete(&j, ids[1], "a", t(5), b"x");
    j.flush().unwrap();
    let runs = store(&j).runs().unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    assert_eq!((runs[1].counts.completed, runs[1].counts.pending), (1, 2));
    assert_eq!(runs[0].counts.pending, 3);
    assert!(runs
        .iter()
        .all(|r| r.status == RunStatus::Running && r.finished.is_none()));
}

#[test]
fn the_latest_resumable_run_is_found_and_marked_interrupted() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let s = store(&j);
    let done = j.begin_run(&start("w", t(0), None)).unwrap();
    j.submit(RunRecord {
        run: done,
        status: RunStatus::Completed,
        at: t(1),
        error: None,
    });
    let crashed = j.begin_run(&start("w", t(2), None)).unwrap();
    let other = j.begin_run(&start("v", t(3), None)).unwrap();
    j.submit(RunRecord {
        run: other,
        status: RunStatus::Cancelled,
        at: t(4),
        error: None,
    });
    j.flush().unwrap();

    assert_eq!(s.latest_resumable(Some("w")).unwrap().unwrap().id, crashed);
    assert_eq!(
        s.latest_resumable(None).unwrap().unwrap().id,
        crashed,
        "cancelled is not resumable"
    );
    assert!(s.latest_resumable(Some("nope")).unwrap().is_none());

    assert!(j.mark_interrupted(crashed, t(9)).unwrap());
    assert!(
        !j.mark_interrupted(crashed, t(10)).unwrap(),
        "only a running run"
    );
    assert!(!j.mark_interrupted(done, t(10)).unwrap());
    let r = s.run(crashed).unwrap().unwrap();
    assert_eq!((r.status, r.finished), (RunStatus::Interrupted, Some(t(9))));
    assert_eq!(s.latest_resumable(Some("w")).unwrap().unwrap().id, crashed);

    // Once a run resumes it, the resumer is the one to resume.
    let resumer = j.begin_run(&start("w", t(11), Some(crashed))).unwrap();
    j.submit(RunRecord {
        run: resumer,
        status: RunStatus::Failed,
        at: t(12),
        error: None,
    });
    j.flush().unwrap();
    let latest = s.latest_resumable(Some("w")).unwrap().unwrap();
    assert_eq!((latest.id, latest.resumed_from), (resumer, Some(crashed)));
    j.submit(RunRecord {
        run: resumer,
        status: RunStatus::Completed,
        at: t(13),
        error: None,
    });
    j.flush().unwrap();
    assert!(s.latest_resumable(Some("w")).unwrap().is_none());
}

#[test]
fn retention_deletes_old_runs_with_everything_recorded_of_them() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let s = store(&j);
    let mut ids = Vec::new();
    for i in 0..6 {
        let run = j.begin_run(&start("w", t(i * 100), None)).unwrap();
        complete(&j, run, "a", t(i * 100 + 1), b"x");
        if i != 4 {
            j.submit(RunRecord {
                run,
                status: RunStatus::Completed,
                at: t(i * 100 + 2),
                error: None,
            });
        }
        ids.push(run);
    }
    j.flush().unwrap();
    assert_eq!(
        s.delete_runs(None, None).unwrap(),
        0,
        "no criterion, nothing deleted"
    );
    // Older than t(150): runs 0 and 1.
    assert_eq!(s.delete_runs(Some(t(150)), None).unwrap(), 2);
    // Keep the last 2 (5 and 4): 2 and 3 go; 4 is running anyway.
    assert_eq!(s.delete_runs(None, Some(2)).unwrap(), 2);
    let left: Vec<RunId> = s.runs().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left, vec![ids[5], ids[4]]);
    // Both criteria: older than t(1000) but keep the last 1 -> 5 stays, 4 is running.
    assert_eq!(s.delete_runs(Some(t(1000)), Some(1)).unwrap(), 0);
    for gone in &ids[..4] {
        assert!(s.tasks(*gone).unwrap().is_empty());
        assert!(s.completed_outputs(*gone).unwrap().is_empty());
    }
    drop(j);
    for table in ["tasks", "history"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE run NOT IN (SELECT id FROM runs)");
        assert_eq!(count(&path, &sql), 0, "orphans in {table}");
    }
    // Ids are never reused after a deletion.
    let j = journal(&path);
    assert!(j.begin_run(&start("w", t(0), None)).unwrap() > ids[5]);
}

#[test]
fn records_of_unknown_runs_are_ignored() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, RunId(999), "a", t(1), b"x");
    j.submit(RunRecord {
        run: RunId(999),
        status: RunStatus::Failed,
        at: t(1),
        error: None,
    });
    complete(&j, run, "a", t(1), b"y");
    j.flush().unwrap();
    assert!(store(&j).tasks(RunId(999)).unwrap().is_empty());
    assert_eq!(store(&j).completed_outputs(run).unwrap().len(), 1);
}

// ---------------------------------------------------------------- the writer

#[test]
fn flush_is_a_durable_ack_and_drop_flushes() {
    let (_dir, path) = scratch();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let sqlite = Arc::new(SqliteStore::open(&path).unwrap());
    let j = Journal::builder(sqlite)
        .on_commit(move |c| seen2.lock().unwrap().push(c))
        .start()
        .unwrap();
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"a");
    assert_eq!(j.submitted(), 2);
    j.flush().unwrap();
    assert_eq!(j.committed(), 2);
    assert!(j.is_durable(2) && j.pending() == 0);
    complete(&j, run, "b", t(1), b"b");
    let last = j.submit(TaskRecord::new(run, "c", TaskStatus::Running, 1, t(3)));
    assert_eq!(last, 5);
    j.wait_for(last).unwrap();
    assert!(j.committed() >= last);
    drop(j); // flushes and joins
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "commits only grow: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&5));

    // Everything is in the file after reopening it.
    let j = journal(&path);
    let outputs = store(&j).completed_outputs(run).unwrap();
    assert_eq!(outputs.len(), 2);
    let c = store(&j)
        .tasks(run)
        .unwrap()
        .into_iter()
        .find(|t| t.task == "c")
        .unwrap();
    assert_eq!(c.status, TaskStatus::Running);
    j.close().unwrap();
}

#[test]
fn many_threads_many_records_every_completion_exactly_once() {
    let (_dir, path) = scratch();
    let j = Arc::new(journal(&path));
    let runs: Vec<RunId> = (0..3)
        .map(|i| j.begin_run(&start("w", t(i), None)).unwrap())
        .collect();
    let seed = std::env::var("NERV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    println!("seed {seed} (set NERV_TEST_SEED to replay)");
    let threads = 4;
    let tasks_per_run = 300;
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let j = Arc::clone(&j);
            let runs = runs.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed * 31 + th);
                for _ in 0..2_000 {
                    let run = runs[rng.usize(..runs.len())];
                    let task = format!("t{}", rng.usize(..tasks_per_run));
                    let status = TaskStatus::ALL[rng.usize(..TaskStatus::ALL.len())];
                    let mut r = TaskRecord::new(
                        run,
                        task.clone(),
                        status,
                        rng.u32(1..4),
                        t(rng.u64(..1000)),
                    );
                    if status == TaskStatus::Completed {
                        r = r.output(task.into_bytes());
                    }
                    j.submit(r);
                    if rng.u8(..100) == 0 {
                        j.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    j.flush().unwrap();
    assert_eq!(j.committed(), j.submitted());
    assert_eq!(j.submitted(), threads * 2_000);
    let mut completions = 0;
    for run in &runs {
        let outputs = store(&j).completed_outputs(*run).unwrap();
        let mut names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
        names.dedup();
        assert_eq!(
            names.len(),
            outputs.len(),
            "a task completed twice in run {run}"
        );
        for (task, out) in &outputs {
            assert_eq!(out.as_deref(), Some(task.as_bytes()));
        }
        let tasks = store(&j).tasks(*run).unwrap();
        for t in &tasks {
            let done = outputs.iter().any(|(n, _)| *n == t.task);
            assert_eq!(t.status == TaskStatus::Completed, done, "{}", t.task);
        }
        completions += outputs.len();
    }
    assert!(completions > 0);
    let mut history_completions = 0;
    for run in &runs {
        let mut done: Vec<String> = store(&j)
            .history(*run)
            .unwrap()
            .into_iter()
            .filter(|r| r.status == TaskStatus::Completed)
            .map(|r| r.task)
            .collect();
        let n = done.len();
        done.sort();
        done.dedup();
        assert_eq!(
            done.len(),
            n,
            "a completion twice in the history of run {run}"
        );
        history_completions += n;
    }
    assert_eq!(history_completions, completions);
}

/// A store whose first appends fail, to watch the writer keep its errors and retry.
#[derive(Debug)]
struct Flaky {
    inner: SqliteStore,
    failures_left: AtomicUsize,
    appends: AtomicU64,
    panics: bool,
}

impl JournalStore for Flaky {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn begin_run(&self, start: &nerv_journal::RunStart) -> nerv_journal::Result<RunId> {
        self.inner.begin_run(start)
    }
    fn append(&self, records: &[Record]) -> nerv_journal::Result<()> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panics, "a store that panics");
        if self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(JournalError::DiskFull {
                path: self.path().to_path_buf(),
                detail: "simulated".into(),
            });
        }
        self.inner.append(records)
    }
    fn run(&self, id: RunId) -> nerv_journal::Result<Option<nerv_journal::RunSummary>> {
        self.inner.run(id)
    }
    fn runs(&self) -> nerv_journal::Result<Vec<nerv_journal::RunSummary>> {
        self.inner.runs()
    }
    fn tasks(&self, run: RunId) -> nerv_journal::Result<Vec<nerv_journal::TaskSummary>> {
        self.inner.tasks(run)
    }
    fn history(&self, run: RunId) -> nerv_journal::Result<Vec<TaskRecord>> {
        self.inner.history(run)
    }
    fn completed_outputs(
        &self,
        run: RunId,
    ) -> nerv_journal::Result<Vec<(String, Option<Vec<u8>>)>> {
        self.inner.completed_outputs(run)
    }
    fn task_durations(
        &self,
        w: &str,
        n: usize,
    ) -> nerv_journal::Result<std::collections::HashMap<String, Duration>> {
        self.inner.task_durations(w, n)
    }
    fn latest_resumable(
        &self,
        w: Option<&str>,
    ) -> nerv_journal::Result<Option<nerv_journal::RunSummary>> {
        self.inner.latest_resumable(w)
    }
    fn delete_runs(&self, o: Option<SystemTime>, k: Option<usize>) -> nerv_journal::Result<usize> {
        self.inner.delete_runs(o, k)
    }
    fn mark_interrupted(&self, run: RunId, at: SystemTime) -> nerv_journal::Result<bool> {
        self.inner.mark_interrupted(run, at)
    }
}

#[test]
fn a_failed_commit_is_reported_by_flush_and_retried_without_loss() {
    let (_dir, path) = scratch();
    let flaky = Arc::new(Flaky {
        inner: SqliteStore::open(&path).unwrap(),
        failures_left: AtomicUsize::new(2),
        appends: AtomicU64::new(0),
        panics: false,
    });
    let j = Journal::new(flaky.clone()).unwrap();
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"a");
    let err = j.flush().unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // The batch was kept and is retried: a later flush sees it committed.
    complete(&j, run, "b", t(1), b"b");
    while j.committed() < j.submitted() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The second failure (if it happened after the first flush) is reported once, then Ok.
    let _ = j.flush();
    j.flush().unwrap();
    assert_eq!(store(&j).completed_outputs(run).unwrap().len(), 2);
    assert!(flaky.appends.load(Ordering::SeqCst) >= 3);
    j.close().unwrap();
}

#[test]
fn close_returns_an_error_it_could_not_recover_from() {
    let (_dir, path) = scratch();
    let flaky = Arc::new(Flaky {
        inner: SqliteStore::open(&path).unwrap(),
        failures_left: AtomicUsize::new(usize::MAX),
        appends: AtomicU64::new(0),
        panics: false,
    });
    let j = Journal::new(flaky).unwrap();
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"a");
    let err = j.close().unwrap_err();
    assert!(err.is_disk_full(), "{err}");
}

// ---------------------------------------------------------------- schema and migrations

/// Creates a version-1 journal at `path` as a build of that version would have, with one run.
fn create_v1(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(MIGRATIONS[0].sql).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .unwrap();
    conn.execute(
        "INSERT INTO runs (workflow, name, status, started) VALUES ('old', 'v1 run', 'completed', 5)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO tasks (run, task, status, attempts, finished, output) \
         VALUES (1, 'a', 'completed', 1, 6, x'2A')",
        [],
    )
    .unwrap();
    conn.last_insert_rowid()
}

#[test]
fn an_older_journal_is_upgraded_when_opened() {
    assert!(SCHEMA_VERSION >= 2 && MIGRATIONS.len() == SCHEMA_VERSION as usize);
    let (_dir, path) = scratch();
    create_v1(&path);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.migrated_from(), 1);
    let runs = store.runs().unwrap();
    assert_eq!((runs.len(), runs[0].workflow.as_str()), (1, "old"));
    assert_eq!(
        store.completed_outputs(runs[0].id).unwrap(),
        vec![("a".into(), Some(vec![42]))]
    );
    // Version 2's memo table is there.
    let memo = store.memo().unwrap();
    memo.put(b"k", "a", vec![1], t(0), None);
    assert_eq!(memo.get(b"k", t(1)), Some(vec![1]));
    drop((memo, store));
    assert_eq!(count(&path, "SELECT count(*) FROM pragma_user_version"), 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    drop(conn);
    // Reopening an up-to-date file migrates nothing.
    assert_eq!(
        SqliteStore::open(&path).unwrap().migrated_from(),
        SCHEMA_VERSION
    );
    // A new file starts from 0.
    let (_d2, fresh) = scratch();
    assert_eq!(SqliteStore::open(&fresh).unwrap().migrated_from(), 0);
}

#[test]
fn a_newer_journal_is_refused_and_left_untouched() {
    let (_dir, path) = scratch();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); INSERT INTO future VALUES (1);")
            .unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    println!("{err}");
    assert!(err.is_too_new(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("version {}", SCHEMA_VERSION + 1)),
        "{msg}"
    );
    assert!(msg.contains(&format!("version {SCHEMA_VERSION}")), "{msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was modified"
    );
    assert!(
        !path.with_file_name("nerv.db-wal").exists(),
        "not even switched to WAL"
    );
}

// ---------------------------------------------------------------- errors a user can act on

#[test]
fn a_corrupt_file_is_reported_with_what_to_do() {
    let (_dir, path) = scratch();
    std::fs::write(
        &path,
        b"this is not a database, just some garbage bytes ".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    println!("{err}");
    assert!(err.is_corrupt(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("move it aside"),
        "{msg}"
    );
    assert!(msg.contains("lost"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A SQLite database of something else is not a journal either.
    let (_d2, other) = scratch();
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(SqliteStore::open(&other).unwrap_err().is_corrupt());
}

#[test]
fn a_journal_open_elsewhere_in_this_process_is_locked() {
    let (_dir, path) = scratch();
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    println!("{err}");
    assert!(err.is_locked(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // The memo of the same file is locked too, unless taken from the store.
    assert!(SqliteMemo::open(&path).unwrap_err().is_locked());
    let memo = first.memo().unwrap();
    drop(first);
    assert!(
        SqliteStore::open(&path).unwrap_err().is_locked(),
        "the memo still holds the lock"
    );
    drop(memo);
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_stale_lock_file_of_a_dead_process_is_taken_over() {
    let (_dir, path) = scratch();
    let lock = path.with_file_name("nerv.db.lock");
    // Pid numbers this high are never handed out (pid_max is at most 2^22).
    std::fs::write(&lock, "pid=99999999\nhost=elsewhere\nsince=1\n").unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.lock_path(), lock);
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains(&format!("pid={}\n", std::process::id())),
        "{text}"
    );
}

/// Run by `a_journal_held_by_another_process_is_locked_until_it_dies` in a child process
/// (does nothing when run normally): opens the journal named by `NERV_JOURNAL_CHILD`, says so
/// by creating `<journal>.ready`, and holds it until killed (at most 60 s).
#[test]
fn child_holds_the_journal() {
    let Ok(path) = std::env::var("NERV_JOURNAL_CHILD") else {
        return;
    };
    let _store = SqliteStore::open(&path).unwrap();
    std::fs::write(format!("{path}.ready"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_journal_held_by_another_process_is_locked_until_it_dies() {
    let (_dir, path) = scratch();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holds_the_journal", "--test-threads", "1"])
        .env("NERV_JOURNAL_CHILD", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = path.with_file_name("nerv.db.ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never opened the journal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        JournalError::Locked {
            owner: Some(owner), ..
        } => assert_eq!(owner.pid, child.id()),
        other => panic!("expected locked by the child, got {other}"),
    }
    assert!(
        err.to_string().contains(&format!("process {}", child.id())),
        "{err}"
    );
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let store = SqliteStore::open(&path).expect("the dead child's lock is taken over");
    drop(store);
}

#[test]
fn a_full_disk_is_reported() {
    let (_dir, path) = scratch();
    // The size limit is SQLite's max_page_count: a deterministic full disk.
    let options = SqliteOptions::default().max_size(128 * 1024);
    let store = Arc::new(SqliteStore::open_with(&path, options).unwrap());
    let run = store.begin_run(&start("w", t(0), None)).unwrap();
    let big: Vec<Record> = (0..100)
        .map(|i| {
            TaskRecord::new(run, format!("t{i}"), TaskStatus::Completed, 1, t(1))
                .output(vec![7; 8 * 1024])
                .into()
        })
        .collect();
    let err = store.append(&big).unwrap_err();
    println!("{err}");
    assert!(err.is_disk_full(), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        store.completed_outputs(run).unwrap().is_empty(),
        "the batch is all or nothing"
    );

    // Through the journal, the next flush reports it.
    let j = Journal::new(store).unwrap();
    for r in big {
        j.submit(r);
    }
    assert!(j.flush().unwrap_err().is_disk_full());
    assert!(j.close().unwrap_err().is_disk_full());
}

#[cfg(unix)]
#[test]
fn permission_denied_names_the_file_or_directory() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = scratch();
    if permissions_ignored(dir.path()) {
        println!("skipped: this process ignores file permissions (running as root)");
        return;
    }
    // A read-only directory: the journal cannot be created.
    let ro_dir = dir.path().join("ro");
    std::fs::create_dir(&ro_dir).unwrap();
    std::fs::set_permissions(&ro_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let err = SqliteStore::open_in(&ro_dir).unwrap_err();
    println!("{err}");
    assert!(err.is_permission_denied(), "{err}");
    assert!(
        err.to_string().contains(&ro_dir.display().to_string()),
        "{err}"
    );
    std::fs::set_permissions(&ro_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A read-only file.
    drop(SqliteStore::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    println!("{err}");
    assert!(err.is_permission_denied(), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------- durability settings

#[test]
fn both_durability_levels_open_and_commit() {
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let (_dir, path) = scratch();
        let store =
            SqliteStore::open_with(&path, SqliteOptions::default().synchronous(sync)).unwrap();
        let j = Journal::new(Arc::new(store)).unwrap();
        let run = j.begin_run(&start("w", t(0), None)).unwrap();
        complete(&j, run, "a", t(1), b"a");
        j.close().unwrap();
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM tasks WHERE status = 'completed'"
            ),
            1,
            "{sync:?}"
        );
    }
}

// ---------------------------------------------------------------- the memo store

#[test]
fn memo_ttl_listing_removal_and_restart() {
    let (_dir, path) = scratch();
    {
        let memo = SqliteMemo::open(&path).unwrap();
        memo.put(b"k1", "a", vec![1, 2], t(10), Some(t(20)));
        memo.put(b"k2", "b", vec![3], t(11), None);
        memo.put(b"k3", "b", vec![4, 5, 6], t(12), None);
        assert_eq!(memo.get(b"k1", t(15)), Some(vec![1, 2]));
        assert_eq!(memo.get(b"nope", t(15)), None);
        let e = memo.entries(t(16));
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].key.as_slice(), e[0].task.as_str(), e[0].size),
            (&b"k1"[..], "a", 2)
        );
        assert_eq!(
            (e[0].created, e[0].last_used, e[0].expires),
            (t(10), t(15), Some(t(20)))
        );
        // Expired: a miss, and deleted.
        assert_eq!(memo.get(b"k1", t(20)), None);
        assert_eq!(
            memo.entries(t(0)).len(),
            2,
            "k1 was deleted when found expired"
        );
        memo.put(b"k4", "c", vec![9], t(13), Some(t(14)));
        assert_eq!(
            memo.entries(t(30)).len(),
            2,
            "listing drops expired entries"
        );
        assert!(memo.take_error().is_none());
    }
    // A hit survives reopening the file.
    let memo = SqliteMemo::open(&path).unwrap();
    assert_eq!(memo.get(b"k3", t(40)), Some(vec![4, 5, 6]));
    assert_eq!(
        memo.entries(t(40))
            .iter()
            .find(|e| e.key == b"k3")
            .unwrap()
            .last_used,
        t(40)
    );
    // Overwrite keeps one entry.
    memo.put(b"k3", "b", vec![7], t(41), None);
    assert_eq!(memo.get(b"k3", t(42)), Some(vec![7]));
    assert!(memo.remove(b"k2"));
    assert!(!memo.remove(b"k2"));
    memo.put(b"k5", "b", vec![], t(43), None);
    memo.put(b"k6", "d", vec![1], t(43), None);
    assert_eq!(memo.remove_task("b"), 2);
    assert_eq!(memo.entries(t(44)).len(), 1);
    memo.clear();
    assert!(memo.entries(t(44)).is_empty());
    assert!(memo.take_error().is_none());
}

#[test]
fn the_memo_is_usable_as_nervs_memo_store() {
    let (_dir, path) = scratch();
    let store = SqliteStore::open(&path).unwrap();
    let memo: Arc<dyn MemoStore> = Arc::new(store.memo().unwrap());
    memo.put(b"k", "t", vec![1], SystemTime::now(), None);
    assert_eq!(memo.get(b"k", SystemTime::now()), Some(vec![1]));
    assert!(format!("{memo:?}").contains("nerv.db"));
}

#[test]
fn a_reader_sees_what_a_live_writer_committed() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"a");
    j.flush().unwrap();
    // The writer holds the lock; a reader does not need it.
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.completed_outputs(run).unwrap().len(), 1);
    complete(&j, run, "b", t(2), b"b");
    j.flush().unwrap();
    assert_eq!(
        reader.completed_outputs(run).unwrap().len(),
        2,
        "sees later commits"
    );
    assert!(reader.begin_run(&start("w", t(3), None)).is_err());
    assert!(reader.memo().is_err());
    drop(j);
    assert_eq!(reader.runs().unwrap().len(), 1);
    drop(reader);
    // After the writer is gone (its WAL checkpointed and removed) too.
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(reader.runs().unwrap().len(), 1);
    // And a writer can open while a reader is open.
    let writer = SqliteStore::open(&path).unwrap();
    drop((writer, reader));
    let (_d2, missing) = scratch();
    assert!(SqliteStore::open_read_only(&missing).is_err());
}

// ---------------------------------------------------------------- crashes

/// Run by `kill_9_at_random_points_loses_nothing_acknowledged` in a child process (does
/// nothing when run normally): submits completions of tasks `t{i % 3000}` (so that after 3000
/// it re-completes tasks) to the run named by `NERV_JOURNAL_CRASH_RUN`, flushing every 25
/// tasks and then appending the number of tasks flushed to `<journal>.acked`, until killed.
#[test]
fn child_writes_until_killed() {
    let (Ok(path), Ok(run), Ok(life)) = (
        std::env::var("NERV_JOURNAL_CRASH_CHILD"),
        std::env::var("NERV_JOURNAL_CRASH_RUN"),
        std::env::var("NERV_JOURNAL_CRASH_LIFE"),
    ) else {
        return;
    };
    let run = RunId(run.parse().unwrap());
    let life: usize = life.parse().unwrap();
    let j = journal(Path::new(&path));
    let mut acked = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{path}.acked"))
        .unwrap();
    for i in 0..1_000_000usize {
        let task = format!("t{}", i % 3000);
        j.submit(TaskRecord::new(
            run,
            task.clone(),
            TaskStatus::Running,
            1,
            t(i as u64),
        ));
        j.submit(
            TaskRecord::new(run, task.clone(), TaskStatus::Completed, 1, t(i as u64))
                .output(task.into_bytes()),
        );
        if (i + 1) % 25 == 0 {
            j.flush().unwrap();
            use std::io::Write;
            writeln!(acked, "{life} {}", i + 1).unwrap();
        }
    }
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged() {
    let (_dir, path) = scratch();
    let mut previous = None;
    let seed = std::env::var("NERV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11u64);
    println!("seed {seed} (set NERV_TEST_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let acked_file = path.with_file_name("nerv.db.acked");
    let mut total_acked = 0;
    for life in 0..20usize {
        // Each life resumes the last one, in a run of its own.
        let run = {
            let j = journal(&path);
            if let Some(p) = previous {
                j.mark_interrupted(p, t(1)).unwrap();
            }
            j.begin_run(&start("crash", t(0), previous)).unwrap()
        };
        previous = Some(run);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_writes_until_killed",
                "--test-threads",
                "1",
            ])
            .env("NERV_JOURNAL_CRASH_CHILD", &path)
            .env("NERV_JOURNAL_CRASH_RUN", run.0.to_string())
            .env("NERV_JOURNAL_CRASH_LIFE", life.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(5..150)));
        child.kill().unwrap(); // SIGKILL, anywhere: mid-batch, mid-commit, mid-checkpoint
        child.wait().unwrap();

        // The file is sound and everything acknowledged in this life is there, once.
        let store = SqliteStore::open(&path).expect("reopen after kill -9");
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "life {life}");
        drop(conn);
        let outputs: HashMap<String, Option<Vec<u8>>> =
            store.completed_outputs(run).unwrap().into_iter().collect();
        let acked = std::fs::read_to_string(&acked_file).unwrap_or_default();
        let flushed = acked
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(l, _)| l.parse() == Ok(life))
            .filter_map(|(_, n)| n.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        for i in 0..flushed {
            let task = format!("t{}", i % 3000);
            assert_eq!(
                outputs.get(&task).cloned().flatten().as_deref(),
                Some(task.as_bytes()),
                "life {life}: task {task} was acknowledged but is not recorded"
            );
        }
        let mut done: Vec<String> = store
            .history(run)
            .unwrap()
            .into_iter()
            .filter(|r| r.status == TaskStatus::Completed)
            .map(|r| r.task)
            .collect();
        let n = done.len();
        done.sort();
        done.dedup();
        assert_eq!(done.len(), n, "life {life}: a completion recorded twice");
        assert_eq!(
            n,
            outputs.len(),
            "life {life}: history and completions disagree"
        );
        let tasks = store.tasks(run).unwrap();
        let completed = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Completed)
            .count();
        assert_eq!(completed, outputs.len(), "life {life}");
        println!("life {life}: {flushed} tasks acknowledged, {n} of 3000 recorded completed");
        total_acked += flushed;
    }
    assert!(
        total_acked > 0,
        "no child got as far as a flush: the test proved nothing"
    );
}

#[test]
fn a_writer_that_died_is_reported() {
    let (_dir, path) = scratch();
    let flaky = Arc::new(Flaky {
        inner: SqliteStore::open(&path).unwrap(),
        failures_left: AtomicUsize::new(0),
        appends: AtomicU64::new(0),
        panics: true,
    });
    let j = Journal::new(flaky).unwrap();
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    complete(&j, run, "a", t(1), b"a");
    let err = j.flush().unwrap_err();
    assert!(matches!(err, JournalError::WriterStopped { .. }), "{err}");
    complete(&j, run, "b", t(1), b"b");
    assert!(
        j.flush().is_err(),
        "records submitted after its death are reported lost"
    );
    assert!(j.close().is_err());
}

#[test]
fn duration_estimates_average_the_recent_runs_of_a_workflow() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run_with = |workflow: &str, secs: u64| {
        let run = j.begin_run(&start(workflow, t(0), None)).unwrap();
        j.submit(TaskRecord::new(run, "a", TaskStatus::Running, 1, t(10)));
        j.submit(TaskRecord::new(
            run,
            "a",
            TaskStatus::Completed,
            1,
            t(10 + secs),
        ));
        // Restored (never started in this run): not a measurement.
        j.submit(TaskRecord::new(run, "b", TaskStatus::Completed, 0, t(50)));
        run
    };
    run_with("w", 100); // oldest: out of a window of 2
    run_with("w", 2);
    run_with("w", 4);
    run_with("other", 1000);
    j.flush().unwrap();
    let est = store(&j).task_durations("w", 2).unwrap();
    assert_eq!(est.get("a"), Some(&Duration::from_secs(3)));
    assert_eq!(est.get("b"), None, "restored tasks are not measured");
    let all = store(&j).task_durations("w", 10).unwrap();
    // (100 + 2 + 4) / 3 s.
    assert_eq!(all["a"].as_millis(), 35_333);
    assert!(store(&j).task_durations("nobody", 5).unwrap().is_empty());
}

// ---------------------------------------------------------------- schema version 3

/// Creates a version-2 journal at `path` as a build of that version would have: a run with
/// task `a` completed, `b` (after `a`) pending, and a history row in MessagePack.
fn create_v2(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(MIGRATIONS[0].sql).unwrap();
    conn.execute_batch(MIGRATIONS[1].sql).unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .unwrap();
    conn.execute(
        "INSERT INTO runs (workflow, name, status, started) VALUES ('old', 'v2 run', 'running', 5)",
        [],
    )
    .unwrap();
    let run = conn.last_insert_rowid();
    let deps = rmp_serde::to_vec(&vec!["a".to_string()]).unwrap();
    conn.execute(
        "INSERT INTO tasks (run, task, deps, status, attempts, started, finished, output) \
         VALUES (?1, 'a', NULL, 'completed', 1, 6, 7, x'2A'), \
                (?1, 'b', ?2, 'pending', 0, NULL, NULL, NULL)",
        rusqlite::params![run, deps],
    )
    .unwrap();
    let at = |s: u64| {
        t(s).duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    let legacy: Vec<(&str, &str, u32, i64, Option<&str>)> = vec![
        ("a", "running", 1, at(1), None),
        ("a", "completed", 1, at(2), None),
    ];
    conn.execute(
        "INSERT INTO history (run, batch, transitions) VALUES (?1, 1, ?2)",
        rusqlite::params![run, rmp_serde::to_vec(&legacy).unwrap()],
    )
    .unwrap();
    run
}

#[test]
fn a_version_2_journal_is_upgraded_and_its_runs_go_on() {
    let (_dir, path) = scratch();
    let run = RunId(create_v2(&path));
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.migrated_from(), 2);
    let tasks = store.tasks(run).unwrap();
    let names: Vec<(&str, TaskStatus, &[String])> = tasks
        .iter()
        .map(|t| (t.task.as_str(), t.status, t.deps.as_slice()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("a", TaskStatus::Completed, &[][..]),
            ("b", TaskStatus::Pending, &["a".to_string()][..])
        ]
    );
    assert_eq!(
        store.completed_outputs(run).unwrap(),
        vec![("a".into(), Some(vec![42]))]
    );
    // The run goes on in the upgraded file: `a` completed again is ignored, `b` and a task
    // added at run time are recorded; the history reads the old row, then the new ones.
    let j = Journal::new(Arc::new(store)).unwrap();
    j.submit(TaskRecord::new(run, "a", TaskStatus::Completed, 2, t(3)).output(vec![1]));
    complete(&j, run, "b", t(4), b"B");
    complete(&j, run, "new", t(6), b"N");
    j.flush().unwrap();
    let s = store_of(&j);
    assert_eq!(
        s.completed_outputs(run).unwrap(),
        vec![
            ("a".into(), Some(vec![42])),
            ("b".into(), Some(b"B".to_vec())),
            ("new".into(), Some(b"N".to_vec()))
        ]
    );
    let history: Vec<(String, TaskStatus, SystemTime)> = s
        .history(run)
        .unwrap()
        .into_iter()
        .map(|r| (r.task, r.status, r.at))
        .collect();
    assert_eq!(
        history,
        vec![
            ("a".into(), TaskStatus::Running, t(1)),
            ("a".into(), TaskStatus::Completed, t(2)),
            ("b".into(), TaskStatus::Running, t(4)),
            ("b".into(), TaskStatus::Completed, t(5)),
            ("new".into(), TaskStatus::Running, t(6)),
            ("new".into(), TaskStatus::Completed, t(7)),
        ]
    );
    let b = s
        .tasks(run)
        .unwrap()
        .into_iter()
        .find(|t| t.task == "b")
        .unwrap();
    assert_eq!(b.deps, vec!["a".to_string()], "the declaration is kept");
}

fn store_of(j: &Journal) -> &dyn JournalStore {
    &**j.store()
}

/// A run declared through the writer whose transitions are spread over many small batches,
/// then continued by a second store on the same file (which reads the task numbers back):
/// every task is recorded once, with its declaration, its last state and its history.
#[test]
fn a_large_run_over_many_batches_and_two_writers() {
    let (_dir, path) = scratch();
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let j = Journal::builder(Arc::new(SqliteStore::open(&path).unwrap()))
        .max_batch(7)
        .linger(Duration::ZERO)
        .start()
        .unwrap();
    let run = j.begin_run(&start("big", t(0), None)).unwrap();
    j.submit(nerv_journal::DeclareRecord {
        run,
        tasks: ids
            .iter()
            .map(|id| nerv_journal::TaskSpec::new(id.as_str(), ["a"]))
            .collect(),
    });
    for id in &ids[..n / 2] {
        complete(&j, run, id, t(1), id.as_bytes());
    }
    j.close().unwrap();
    let j = journal(&path);
    for id in &ids {
        // The first half again (ignored), then the second half.
        complete(&j, run, id, t(2), b"again");
    }
    j.flush().unwrap();
    let s = store_of(&j);
    let tasks = s.tasks(run).unwrap();
    assert_eq!(
        tasks.len(),
        n + 3,
        "a, b, c and the declared tasks, once each"
    );
    let outputs: HashMap<String, Option<Vec<u8>>> =
        s.completed_outputs(run).unwrap().into_iter().collect();
    assert_eq!(outputs.len(), n);
    for (i, id) in ids.iter().enumerate() {
        let want = if i < n / 2 { id.as_bytes() } else { b"again" };
        assert_eq!(outputs[id].as_deref(), Some(want), "{id}");
        let task = tasks.iter().find(|t| &t.task == id).unwrap();
        assert_eq!(task.deps, vec!["a".to_string()], "{id}");
    }
    let completions = s
        .history(run)
        .unwrap()
        .into_iter()
        .filter(|r| r.status == TaskStatus::Completed)
        .count();
    assert_eq!(completions, n, "each completion once in the history");
}

#[test]
fn a_flush_does_not_wait_for_the_linger_and_a_batch_lingers_boundedly() {
    let (_dir, path) = scratch();
    let j = Journal::builder(Arc::new(SqliteStore::open(&path).unwrap()))
        .linger(Duration::from_secs(60))
        .max_linger(Duration::from_millis(50))
        .start()
        .unwrap();
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    let began = std::time::Instant::now();
    complete(&j, run, "a", t(1), b"a");
    j.flush().unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the flush woke the writer"
    );
    // Nobody flushes: the batch is committed once it has lingered 50 ms.
    let seq = j.submit(TaskRecord::new(run, "b", TaskStatus::Running, 1, t(2)));
    let began = std::time::Instant::now();
    while !j.is_durable(seq) {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "committed without a flush"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The log is checkpointed into the database file after commits (not only when the journal
/// closes), off the commits' latency.
#[test]
fn the_log_is_checkpointed_after_large_commits() {
    let (_dir, path) = scratch();
    let j = journal(&path);
    let run = j.begin_run(&start("w", t(0), None)).unwrap();
    let initial = std::fs::metadata(&path).unwrap().len();
    for i in 0..20_000 {
        j.submit(
            TaskRecord::new(run, format!("t{i}"), TaskStatus::Completed, 1, t(1))
                .output(vec![7; 100]),
        );
    }
    j.flush().unwrap();
    let began = std::time::Instant::now();
    while std::fs::metadata(&path).unwrap().len() < initial + 2_000_000 {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the database file still has {} bytes",
            std::fs::metadata(&path).unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store_of(&j).completed_outputs(run).unwrap().len(), 20_000);
}
