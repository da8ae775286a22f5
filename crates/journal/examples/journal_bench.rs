//! Group-commit throughput of the SQLite journal: 100 000 tasks, three transitions each
//! (pending, running, completed with a 16-byte output), submitted from one thread as fast as
//! possible, then one flush. Prints ns per record and per task for `synchronous = FULL` and
//! `NORMAL`.
//!
//! `cargo run --release -p nerv-journal --example journal_bench [tasks]`
//!
//! The time runs from the first submit to the flush's return (everything durable); declaring
//! the run's tasks (`begin_run`) is timed apart.

use nerv_journal::{
    Journal, RunStart, SqliteOptions, SqliteStore, Synchronous, TaskRecord, TaskSpec, TaskStatus,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

fn main() {
    let tasks: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    println!("{tasks} tasks, 3 records each");
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_with(
            dir.path().join("nerv.db"),
            SqliteOptions::default().synchronous(sync),
        )
        .expect("open");
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let journal = Journal::builder(Arc::new(store))
            .on_commit(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            })
            .start()
            .expect("journal");
        let ids: Vec<String> = (0..tasks).map(|i| format!("task-{i}")).collect();
        let now = SystemTime::now();
        let begin = Instant::now();
        let run = journal
            .begin_run(&RunStart {
                workflow: "bench".into(),
                name: "bench".into(),
                tasks: ids
                    .iter()
                    .map(|id| TaskSpec::new(id.clone(), Vec::<String>::new()))
                    .collect(),
                started: now,
                resumed_from: None,
            })
            .expect("begin");
        let begin = begin.elapsed();

        let start = Instant::now();
        for id in &ids {
            journal.submit(TaskRecord::new(
                run,
                id.clone(),
                TaskStatus::Pending,
                0,
                now,
            ));
            journal.submit(TaskRecord::new(
                run,
                id.clone(),
                TaskStatus::Running,
                1,
                now,
            ));
            journal.submit(
                TaskRecord::new(run, id.clone(), TaskStatus::Completed, 1, now)
                    .output(vec![0xAB; 16]),
            );
        }
        let submitted = start.elapsed();
        journal.flush().expect("flush");
        let total = start.elapsed();
        let records = (tasks * 3) as f64;
        journal.close().expect("close"); // after the last `on_commit`: the count is complete
        println!(
            "synchronous={:<6}  {:>7.0} ns/record  {:>7.0} ns/task  (submit alone {:.0} ns/record; \
             {} commits; begin_run declaring the tasks {:.0} ns/task)",
            format!("{sync:?}").to_uppercase(),
            total.as_nanos() as f64 / records,
            total.as_nanos() as f64 / tasks as f64,
            submitted.as_nanos() as f64 / records,
            commits.load(Ordering::Relaxed),
            begin.as_nanos() as f64 / tasks as f64,
        );
    }
}
