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
//! of the two (to see what each costs). The counting subscriber keeps one counter per
//! publishing thread (on a cache line of its own), as a subscriber that counts on a hot path
//! would; `--shared-counter` makes it count on one atomic shared by every worker instead (that
//! line then moves between the workers' caches on every event: it measures the subscriber more
//! than the engine). `--paired` (with `--observed`) also runs each shape on a bare executor,
//! alternating bare and observed runs, and adds `bare_ns_per_task` and `ratio` (the median of
//! the observed/bare ratios of the pairs) to each line: this machine's speed drifts between
//! phases that last seconds, which a ratio of two separate medians takes for overhead.
//! `--samples` prints every run's figure to stderr.

use nerv::{
    EngineProjector, EventBus, EventFilter, EventKind, Executor, Graph, GraphBuilder, RunOptions,
    TaskId, TaskStatus, Timing,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// A count kept per thread, on cache lines of their own, summed when read.
#[derive(Default)]
struct Counter {
    shared: bool,
    stripes: [Stripe; 16],
}

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Counter {
    fn add(&self) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Relaxed);
        }
        let i = if self.shared {
            0
        } else {
            STRIPE.with(|s| *s) % 16
        };
        self.stripes[i].0.fetch_add(1, Relaxed);
    }

    fn take(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.swap(0, Relaxed)).sum()
    }
}

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
    let mut shared_counter = false;
    let mut paired = false;
    let mut print_samples = false;
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
            "--shared-counter" => shared_counter = true,
            "--paired" => paired = true,
            "--samples" => print_samples = true,
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
    let completed = Arc::new(Counter {
        shared: shared_counter,
        ..Counter::default()
    });
    let projector = EngineProjector::new();
    let mut builder = Executor::builder().workers(workers);
    let _subscriptions = observed.then(|| {
        builder = Executor::builder().workers(workers).events(bus.clone());
        let c = completed.clone();
        let counter = counter_on.then(|| {
            bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |_| {
                c.add();
            })
        });
        (counter, projector_on.then(|| projector.attach(&bus)))
    });
    let exec = builder.build();
    // For `--paired`: a bare executor, run alternately with the observed one.
    let bare = paired.then(|| Executor::builder().workers(workers).build());
    let one = |exec: &Executor, graph: &Graph, observed: bool| -> f64 {
        let n = graph.len();
        completed.take();
        let t = Instant::now();
        let report = exec.run_with(graph, RunOptions::default().timing(timing));
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(report.counts().completed, n, "every task completes");
        if observed && counter_on {
            assert_eq!(completed.take(), n as u64, "one event per task");
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
    };
    for shape in &shapes {
        let graph = build(shape, tasks);
        let n = graph.len();
        let mut samples = Vec::new();
        let mut bare_samples = Vec::new();
        let mut ratios = Vec::new();
        for i in 0..runs.max(1) {
            match &bare {
                Some(b) => {
                    // Alternate which goes first, so that neither always runs on a warmer cache.
                    let (o, b) = if i % 2 == 0 {
                        let b = one(b, &graph, false);
                        (one(&exec, &graph, observed), b)
                    } else {
                        let o = one(&exec, &graph, observed);
                        (o, one(b, &graph, false))
                    };
                    samples.push(o);
                    bare_samples.push(b);
                    ratios.push(o / b);
                }
                None => samples.push(one(&exec, &graph, observed)),
            }
        }
        if print_samples {
            eprintln!("{shape}: observed {samples:.1?}, bare {bare_samples:.1?}");
        }
        let median = median_of(&mut samples);
        if bare.is_some() {
            let (b, r) = (median_of(&mut bare_samples), median_of(&mut ratios));
            if json {
                println!(
                    "{{\"shape\": \"{shape}\", \"tasks\": {n}, \"workers\": {workers}, \"ns_per_task\": {median:.1}, \"bare_ns_per_task\": {b:.1}, \"ratio\": {r:.2}}}"
                );
            } else {
                println!(
                    "{shape:>10}: {n} tasks, {workers} workers: {median:.1} ns/task, bare {b:.1} (median ratio of {} pairs: {r:.2})",
                    ratios.len()
                );
            }
        } else if json {
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

/// The median (sorts `v`).
fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
