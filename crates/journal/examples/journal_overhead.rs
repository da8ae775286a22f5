//! What recording costs the engine: the fan-out/fan-in shape (1 → N → 1) of empty tasks with a
//! `Recorder` attached to the executor's bus, against the same runs without it.
//!
//! `cargo run --release -p nerv-journal --example journal_overhead -- [--tasks N] [--runs R] [--persist] [--only-on] [--normal]`
//! prints one JSON line per mode, `{"journal": "off"|"on", "tasks": N, "ns_per_task": X}`
//! (median of R runs, default 5; each "on" run in a fresh journal file, timed from start to
//! the run's end, which includes the final flush: everything is durable when it returns),
//! then the ratio. `--persist` makes every task's output (a u64) persisted, so that each
//! completion carries 9 bytes to store.

use nerv::{EventBus, Executor, Graph, RunOptions, TaskError, Timing};
use nerv_journal::{Journal, Recorder, SqliteOptions, SqliteStore, Synchronous, DEFAULT_FILE_NAME};
use std::sync::Arc;
use std::time::Instant;

fn fanout(n: usize, persist: bool) -> Graph {
    let mut g = Graph::builder();
    g.reserve(n + 2, 2 * n);
    let src = g.task("src").run((), |_, ()| Ok::<_, TaskError>(1u64));
    let mids: Vec<_> = (0..n)
        .map(|i| {
            let h = g
                .task(format!("t{i}"))
                .run(src, move |_, x| Ok::<_, TaskError>(x + i as u64));
            if persist {
                g.persist(h);
            }
            h
        })
        .collect();
    g.task("sink")
        .after_all(mids)
        .run((), |_, ()| Ok::<_, TaskError>(()));
    g.build().expect("valid")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (mut tasks, mut runs, mut persist, mut only_on) = (100_000usize, 5usize, false, false);
    let mut sync = Synchronous::Full;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tasks" => tasks = args.next().and_then(|v| v.parse().ok()).expect("--tasks N"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs R"),
            "--persist" => persist = true,
            "--normal" => sync = Synchronous::Normal,
            // For instruction counts (`perf stat -e instructions`) of the recording alone.
            "--only-on" => only_on = true,
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let graph = fanout(tasks, persist);
    let n = graph.len() as f64;
    let opts = || RunOptions::default().timing(Timing::Off);
    let off_exec = Executor::builder().workers(2).build();
    let bus = EventBus::new();
    let on_exec = Executor::builder().workers(2).events(bus.clone()).build();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        if !only_on {
            let t = Instant::now();
            off_exec.run_with(&graph, opts());
            off.push(t.elapsed().as_nanos() as f64 / n);
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_with(
            dir.path().join(DEFAULT_FILE_NAME),
            SqliteOptions {
                synchronous: sync,
                ..SqliteOptions::default()
            },
        )
        .expect("journal");
        let journal = Arc::new(Journal::new(Arc::new(store)).expect("journal"));
        let sub = Recorder::new(journal.clone(), "fanout").attach(&bus);
        let t = Instant::now();
        let report = on_exec.run_with(&graph, opts());
        on.push(t.elapsed().as_nanos() as f64 / n);
        drop(sub);
        assert_eq!(report.counts().completed, graph.len());
        let runs = nerv_journal::JournalStore::runs(&**journal.store()).expect("read");
        assert_eq!(runs[0].counts.completed, graph.len(), "all recorded");
    }
    if only_on {
        println!(
            r#"{{"journal": "on", "tasks": {tasks}, "ns_per_task": {:.0}}}"#,
            median(on)
        );
        return;
    }
    let (a, b) = (median(off), median(on));
    println!(
        r#"{{"journal": "off", "tasks": {tasks}, "persist": {persist}, "ns_per_task": {a:.0}}}"#
    );
    println!(
        r#"{{"journal": "on", "tasks": {tasks}, "persist": {persist}, "ns_per_task": {b:.0}}}"#
    );
    println!(r#"{{"on_over_off": {:.1}}}"#, b / a);
}
