//! Per-task overhead of the executor on the four standard shapes, with empty tasks.
//!
//! `cargo run --release -p nerv --example shapes -- --json` prints one JSON object per shape:
//! `{"shape": ..., "tasks": N, "workers": W, "ns_per_task": X}`, the median of `--runs` runs
//! (default 5) of a 10^6-task graph on 2 workers; graphs are built outside the timed region.
//! Options: `--tasks N`, `--workers W`, `--runs R`, `--shape NAME` (repeatable), `--timing`
//! (record per-task timestamps, as runs do by default; off here, as for the competitors),
//! `--observed` (attach an event bus with one subscriber counting TASK_COMPLETED events and
//! the engine's state projector; the count and the projected state are checked against the
//! task count). `--observed-only counter` or `--observed-only projector` attaches only one
//! of the two (to see what each costs).

use nerv::{
    EngineProjector, EventBus, EventFilter, EventKind, Executor, Graph, GraphBuilder, RunOptions,
    TaskId, TaskStatus, Timing,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

fn empty(g: &mut GraphBuilder, i: usize, deps: &[TaskId]) -> TaskId {
    g.task(format!("t{i}"))
        .after_all(deps.iter().copied())
        .run((), |_, ()| Ok(()))
        .id()
}

/// Builds one of the shapes with about `n` tasks.
fn build(shape: &str, n: usize) -> Graph {
    let mut g = Graph::builder();
    g.reserve(n, 2 * n);
    match shape {
        "chain" => {
            let mut prev = empty(&mut g, 0, &[]);
            for i in 1..n {
                prev = empty(&mut g, i, &[prev]);
            }
        }
        "fanout" => {
            let src = empty(&mut g, 0, &[]);
            let mid: Vec<TaskId> = (1..n - 1).map(|i| empty(&mut g, i, &[src])).collect();
            empty(&mut g, n - 1, &mid);
        }
        "tree" => {
            let mut ids: Vec<TaskId> = Vec::with_capacity(n);
            for i in 0..n {
                let deps: &[TaskId] = if i == 0 {
                    &[]
                } else {
                    &ids[(i - 1) / 2..=(i - 1) / 2]
                };
                let id = empty(&mut g, i, deps);
                ids.push(id);
            }
        }
        "wavefront" => {
            let k = (n as f64).sqrt().round() as usize;
            let mut ids: Vec<TaskId> = Vec::with_capacity(k * k);
            for r in 0..k {
                for c in 0..k {
                    let mut deps = Vec::with_capacity(2);
                    if r > 0 {
                        deps.push(ids[(r - 1) * k + c]);
                    }
                    if c > 0 {
                        deps.push(ids[r * k + c - 1]);
                    }
                    let id = empty(&mut g, r * k + c, &deps);
                    ids.push(id);
                }
            }
        }
        other => panic!("unknown shape {other} (chain, fanout, tree, wavefront)"),
    }
    g.build().expect("valid shape")
}

fn main() {
    let mut json = false;
    let mut tasks = 1_000_000usize;
    let mut workers = 2usize;
    let mut runs = 5usize;
    let mut shapes: Vec<String> = Vec::new();
    let mut timing = Timing::Off;
    let mut observed = false;
    let (mut counter_on, mut projector_on) = (true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option needs a value");
        match a.as_str() {
            "--json" => json = true,
            "--tasks" => tasks = val().parse().expect("--tasks N"),
            "--workers" => workers = val().parse().expect("--workers W"),
            "--runs" => runs = val().parse().expect("--runs R"),
            "--shape" => shapes.push(val()),
            "--timing" => timing = Timing::Tasks,
            "--observed" => observed = true,
            "--observed-only" => {
                observed = true;
                match val().as_str() {
                    "counter" => projector_on = false,
                    "projector" => counter_on = false,
                    other => panic!("--observed-only counter|projector, not {other}"),
                }
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown option {other}"),
        }
    }
    if shapes.is_empty() {
        shapes = ["chain", "fanout", "tree", "wavefront"]
            .map(String::from)
            .to_vec();
    }
    let bus = EventBus::new();
    let completed = Arc::new(AtomicU64::new(0));
    let projector = EngineProjector::new();
    let mut builder = Executor::builder().workers(workers);
    let _subscriptions = observed.then(|| {
        builder = Executor::builder().workers(workers).events(bus.clone());
        let c = completed.clone();
        let counter = counter_on.then(|| {
            bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |_| {
                c.fetch_add(1, Relaxed);
            })
        });
        (counter, projector_on.then(|| projector.attach(&bus)))
    });
    let exec = builder.build();
    for shape in &shapes {
        let graph = build(shape, tasks);
        let n = graph.len();
        let mut samples: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                completed.store(0, Relaxed);
                let t = Instant::now();
                let report = exec.run_with(&graph, RunOptions::default().timing(timing));
                let ns = t.elapsed().as_nanos() as f64 / n as f64;
                assert_eq!(report.counts().completed, n, "every task completes");
                if observed && counter_on {
                    assert_eq!(completed.load(Relaxed), n as u64, "one event per task");
                }
                if observed && projector_on {
                    let state = projector.get_state();
                    let wf = state
                        .workflow(report.run_id())
                        .expect("the run is projected");
                    assert_eq!(wf.count(TaskStatus::Completed), n, "projected state");
                    projector.forget(report.run_id());
                }
                ns
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        if json {
            println!(
                "{{\"shape\": \"{shape}\", \"tasks\": {n}, \"workers\": {workers}, \"ns_per_task\": {median:.1}}}"
            );
        } else {
            println!(
                "{shape:>10}: {n} tasks, {workers} workers: {median:.1} ns/task (median of {}; min {:.1}, max {:.1})",
                samples.len(),
                samples[0],
                samples[samples.len() - 1]
            );
        }
    }
}
