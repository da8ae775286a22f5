//! Property tests: random DAGs with random task behaviour, run under random policies, checked
//! against a sequential reference.
//!
//! Graphs have up to ~2000 tasks; edges only go from a lower to a higher index (so every
//! generated graph is acyclic). Each task's output is its index folded with its inputs' values
//! (read through a typed `Gather`, in order, by an order-sensitive `mix`), so a value that went
//! astray or arrived out of order anywhere shows up downstream.

mod util;

use nerv::{
    FailurePolicy, Graph, GraphBuilder, Handle, RetryPolicy, RunOptions, RunReport, RunStatus,
    Subgraph, TaskContext, TaskError, TaskStatus,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::{exec, quiet_expected_panics, PANIC_MARKER};

/// Global event sequence: task starts and completions take numbers from it.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// Upper bound on the number of tasks of a generated graph.
const MAX_TASKS: usize = 2000;

/// Folds one input into a task's value (order-sensitive, so inputs swapped are noticed).
fn mix(acc: u64, x: u64) -> u64 {
    acc.wrapping_mul(0x0000_0100_0000_01b3).wrapping_add(x) ^ (x >> 29)
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Returns its value.
    Ok,
    /// Returns an error.
    Fail,
    /// Panics.
    Panic,
    /// Fails its first `fails` attempts, with a retry policy of `attempts` attempts.
    Flaky {
        fails: u32,
        attempts: u32,
        backoff_ms: u64,
    },
    /// Async work that returns its value.
    AsyncOk,
    /// Async work that returns an error.
    AsyncFail,
}

impl Kind {
    /// Whether the task fails for good when it runs.
    fn fails(self) -> bool {
        match self {
            Kind::Ok | Kind::AsyncOk => false,
            Kind::Fail | Kind::Panic | Kind::AsyncFail => true,
            Kind::Flaky {
                fails, attempts, ..
            } => attempts <= fails,
        }
    }

    /// Attempts made by the task when it runs undisturbed.
    fn attempts(self) -> u32 {
        match self {
            Kind::Flaky {
                fails, attempts, ..
            } => attempts.min(fails + 1),
            _ => 1,
        }
    }
}

fn flaky(fails: u32, attempts: u32, backoff_ms: u64) -> Kind {
    Kind::Flaky {
        fails,
        attempts,
        backoff_ms,
    }
}

/// Behaviours that end in success.
fn succeeding() -> impl Strategy<Value = Kind> {
    prop_oneof![
        80 => Just(Kind::Ok),
        8 => Just(Kind::AsyncOk),
        // Fails `fails` times, then succeeds within its attempts.
        4 => (1u32..=2, 0u32..=1, 0u64..=1)
            .prop_map(|(fails, extra, backoff)| flaky(fails, fails + 1 + extra, backoff)),
    ]
}

/// Behaviours that end in failure.
fn failing() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Fail),
        Just(Kind::Panic),
        Just(Kind::AsyncFail),
        // Runs out of attempts.
        (1u32..=2, 0u64..=1).prop_map(|(fails, backoff)| flaky(fails, fails, backoff)),
    ]
}

/// A behaviour; about one task in `1000 / per_mille` fails.
fn kind(per_mille: u32) -> BoxedStrategy<Kind> {
    if per_mille == 0 {
        succeeding().boxed()
    } else {
        prop_oneof![1000 - per_mille => succeeding(), per_mille => failing()].boxed()
    }
}

/// One task: its behaviour and its dependencies (indices into the tasks before it).
#[derive(Debug, Clone)]
struct Spec {
    kind: Kind,
    deps: Vec<Index>,
}

/// A graph of 1 to `max` tasks: no failures, rare failures (about 1 task in 500), or
/// frequent ones (about 1 in 25).
fn specs(max: usize) -> impl Strategy<Value = Vec<Spec>> {
    prop_oneof![Just(0u32), Just(2), Just(40)].prop_flat_map(move |per_mille| {
        prop::collection::vec(
            (kind(per_mille), prop::collection::vec(any::<Index>(), 0..4))
                .prop_map(|(kind, deps)| Spec { kind, deps }),
            1..max,
        )
    })
}

/// The dependencies of each task, as indices (duplicates kept: a task may read an input twice).
fn resolve(specs: &[Spec]) -> Vec<Vec<usize>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == 0 {
                Vec::new()
            } else {
                s.deps.iter().map(|d| d.index(i)).collect()
            }
        })
        .collect()
}

/// What the tasks of one run observed.
struct Observed {
    /// Sequence number of the first start of each task (0: never started).
    started: Vec<AtomicU64>,
    /// Sequence number at which each task's work succeeded (0: never).
    done: Vec<AtomicU64>,
    /// Successful completions of each task's work.
    completions: Vec<AtomicU32>,
    /// Attempts each task's work saw.
    attempts: Vec<AtomicU32>,
    /// Task starts in this run.
    starts: AtomicU64,
    /// Dependency-order violations seen by starting tasks.
    violations: Mutex<Vec<String>>,
}

impl Observed {
    fn new(n: usize) -> Self {
        Observed {
            started: (0..n).map(|_| AtomicU64::new(0)).collect(),
            done: (0..n).map(|_| AtomicU64::new(0)).collect(),
            completions: (0..n).map(|_| AtomicU32::new(0)).collect(),
            attempts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            starts: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
        }
    }

    /// Forgets what was observed (before another run of the same graph).
    fn reset(&self) {
        let all = [&self.started, &self.done];
        for v in all.into_iter().flatten() {
            v.store(0, SeqCst);
        }
        let all = [&self.completions, &self.attempts];
        for v in all.into_iter().flatten() {
            v.store(0, SeqCst);
        }
        self.starts.store(0, SeqCst);
        self.violations.lock().unwrap().clear();
    }

    /// Called when an attempt at task `i` starts: checks that every dependency finished.
    fn start(&self, i: usize, deps: &[usize], cx: &TaskContext<'_>) {
        let me = SEQ.fetch_add(1, SeqCst);
        let _ = self.started[i].compare_exchange(0, me, SeqCst, SeqCst);
        self.starts.fetch_add(1, SeqCst);
        let seen = self.attempts[i].fetch_add(1, SeqCst) + 1;
        let mut bad = Vec::new();
        if seen != cx.attempt() {
            bad.push(format!(
                "task {i}: attempt {} but {seen} attempts seen",
                cx.attempt()
            ));
        }
        if cx.index() != i {
            bad.push(format!("task {i}: context says index {}", cx.index()));
        }
        for &d in deps {
            let dn = self.done[d].load(SeqCst);
            if dn == 0 || dn >= me {
                bad.push(format!(
                    "task {i} started (#{me}) before dependency {d} was done (#{dn})"
                ));
            }
        }
        if !bad.is_empty() {
            self.violations.lock().unwrap().extend(bad);
        }
    }

    /// Called when task `i`'s work succeeded.
    fn finish(&self, i: usize) {
        self.completions[i].fetch_add(1, SeqCst);
        self.done[i].store(SEQ.fetch_add(1, SeqCst), SeqCst);
    }
}

/// Builds the graph for `specs`; the tasks report to `obs`.
fn build(specs: &[Spec], deps: &[Vec<usize>], obs: &Arc<Observed>) -> (Graph, Vec<Handle<u64>>) {
    let mut g = Graph::builder();
    let hs = add_tasks(&mut g, specs, deps, obs);
    (g.build().expect("a DAG by construction"), hs)
}

/// Adds the tasks of `specs` to `g` (ids `t0`, `t1`, ...); the tasks report to `obs`.
fn add_tasks(
    g: &mut GraphBuilder,
    specs: &[Spec],
    deps: &[Vec<usize>],
    obs: &Arc<Observed>,
) -> Vec<Handle<u64>> {
    g.reserve(specs.len(), specs.len() * 3);
    let mut hs: Vec<Handle<u64>> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let inputs: Vec<Handle<u64>> = deps[i].iter().map(|&d| hs[d]).collect();
        let my_deps = deps[i].clone();
        let obs = obs.clone();
        let tb = g.task(format!("t{i}"));
        let value = move |xs: &nerv::Gather<'_, u64>| xs.iter().fold(i as u64, |a, x| mix(a, *x));
        let h = match s.kind {
            Kind::Ok => tb.run(inputs, move |cx, xs| {
                obs.start(i, &my_deps, cx);
                let v = value(&xs);
                obs.finish(i);
                Ok(v)
            }),
            Kind::Fail => tb.run(inputs, move |cx, _| {
                obs.start(i, &my_deps, cx);
                Err(TaskError::msg(format!("task {i} fails")))
            }),
            Kind::Panic => tb.run(inputs, move |cx, _| -> Result<u64, TaskError> {
                obs.start(i, &my_deps, cx);
                panic!("{PANIC_MARKER} in task {i}")
            }),
            Kind::Flaky {
                fails,
                attempts,
                backoff_ms,
            } => tb
                .retry(RetryPolicy::attempts(attempts).backoff(Duration::from_millis(backoff_ms)))
                .run(inputs, move |cx, xs| {
                    obs.start(i, &my_deps, cx);
                    if cx.attempt() <= fails {
                        return Err(TaskError::msg(format!("task {i} attempt {}", cx.attempt())));
                    }
                    let v = value(&xs);
                    obs.finish(i);
                    Ok(v)
                }),
            Kind::AsyncOk => tb.run_async(inputs, move |cx, xs| {
                obs.start(i, &my_deps, cx);
                let v = value(&xs);
                let obs = obs.clone();
                async move {
                    tokio::task::yield_now().await;
                    obs.finish(i);
                    Ok(v)
                }
            }),
            Kind::AsyncFail => tb.run_async(inputs, move |cx, _| {
                obs.start(i, &my_deps, cx);
                async move {
                    tokio::task::yield_now().await;
                    Err(TaskError::msg(format!("async task {i} fails")))
                }
            }),
        };
        hs.push(h);
    }
    hs
}

/// The sequential reference: each task's value if it completes when nothing is cancelled,
/// and whether it is a descendant of a failing task.
struct Reference {
    value: Vec<u64>,
    fails: Vec<bool>,
    /// Some failing proper ancestor.
    below_failure: Vec<bool>,
    /// The dependencies of each task (ancestry is computed on demand by `is_ancestor`).
    deps: Vec<Vec<usize>>,
}

impl Reference {
    fn new(specs: &[Spec], deps: &[Vec<usize>]) -> Self {
        let n = specs.len();
        let mut value = vec![0u64; n];
        let mut below_failure = vec![false; n];
        let fails: Vec<bool> = specs.iter().map(|s| s.kind.fails()).collect();
        for i in 0..n {
            value[i] = deps[i].iter().fold(i as u64, |a, &d| mix(a, value[d]));
            below_failure[i] = deps[i].iter().any(|&d| fails[d] || below_failure[d]);
        }
        Reference {
            value,
            fails,
            below_failure,
            deps: deps.to_vec(),
        }
    }

    /// Whether `a` is a proper ancestor of `b`.
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        if a >= b {
            return false;
        }
        let mut seen = vec![false; b + 1];
        let mut stack = vec![b];
        while let Some(x) = stack.pop() {
            for &d in &self.deps[x] {
                if d == a {
                    return true;
                }
                if d > a && !seen[d] {
                    seen[d] = true;
                    stack.push(d);
                }
            }
        }
        false
    }
}

/// Properties that hold for every run, whatever the policy and cancellation.
fn check_common(
    specs: &[Spec],
    r: &Reference,
    obs: &Observed,
    report: &RunReport,
    hs: &[Handle<u64>],
) -> Result<(), TestCaseError> {
    let n = specs.len();
    let v = obs.violations.lock().unwrap();
    prop_assert!(v.is_empty(), "violations: {:?}", &v[..v.len().min(5)]);
    let results = report.results();
    prop_assert_eq!(results.len(), n);
    let c = report.counts();
    prop_assert_eq!(c.other, 0);
    prop_assert_eq!(c.completed + c.failed + c.skipped + c.cancelled, n);
    for (i, res) in results.iter().enumerate() {
        prop_assert_eq!(&res.id, &format!("t{i}"));
        prop_assert!(res.status.is_final(), "t{} is {}", i, res.status);
        let completions = obs.completions[i].load(SeqCst);
        prop_assert!(completions <= 1, "t{} completed {} times", i, completions);
        prop_assert_eq!(
            res.status == TaskStatus::Completed,
            completions == 1,
            "t{} is {} but its work completed {} times",
            i,
            res.status,
            completions
        );
        prop_assert_eq!(
            res.attempts,
            obs.attempts[i].load(SeqCst),
            "attempts of t{}",
            i
        );
        match res.status {
            TaskStatus::Completed => {
                prop_assert_eq!(report.output(hs[i]), Some(&r.value[i]), "value of t{}", i);
                prop_assert!(!r.fails[i], "t{} ({:?}) completed", i, specs[i].kind);
                for &d in &r.deps[i] {
                    prop_assert_eq!(results[d].status, TaskStatus::Completed);
                }
            }
            TaskStatus::Failed => {
                prop_assert!(r.fails[i], "t{} ({:?}) failed", i, specs[i].kind);
                prop_assert_eq!(report.output(hs[i]), None);
                prop_assert_eq!(res.attempts, specs[i].kind.attempts());
                let err = res.error.as_ref().expect("a failed task has an error");
                prop_assert_eq!(err.is_panic(), specs[i].kind == Kind::Panic, "{:?}", err);
            }
            TaskStatus::Skipped => {
                prop_assert_eq!(res.attempts, 0);
                prop_assert_eq!(report.output(hs[i]), None);
                let why = res.skipped_because.as_deref().expect("skipped because");
                let root: usize = why
                    .strip_prefix('t')
                    .and_then(|s| s.parse().ok())
                    .expect("a task id");
                prop_assert_eq!(results[root].status, TaskStatus::Failed);
                prop_assert!(r.is_ancestor(root, i), "t{} is not above t{}", root, i);
            }
            TaskStatus::Cancelled => {
                prop_assert_eq!(report.output(hs[i]), None);
            }
            s => prop_assert!(false, "t{} ended {}", i, s),
        }
    }
    Ok(())
}

/// Runs `graph` with `opts`, cancelling it from another thread once `cancel_after` tasks have
/// started (if given); returns the report and whether `cancel` was called.
fn run(
    workers: usize,
    graph: &Graph,
    opts: RunOptions,
    obs: &Observed,
    cancel_after: Option<u64>,
) -> Result<(RunReport, bool), TestCaseError> {
    let exec = exec(workers);
    let run = exec.start_with(graph, opts);
    let cancelled = AtomicBool::new(false);
    let finished = std::thread::scope(|s| {
        if let Some(k) = cancel_after {
            let (run, cancelled) = (&run, &cancelled);
            s.spawn(move || {
                while obs.starts.load(SeqCst) < k && !run.is_finished() {
                    std::thread::yield_now();
                }
                if !run.is_finished() {
                    cancelled.store(true, SeqCst);
                    run.cancel();
                }
            });
        }
        run.wait_timeout(Duration::from_secs(30))
    });
    prop_assert!(finished, "the run did not finish within 30 s");
    Ok((run.wait(), cancelled.load(SeqCst)))
}

/// Fail-fast or continue, cancelled from another thread after `cancel_after` task starts (if
/// given): every task ends in one final status, dependencies are respected, values that were
/// produced are right, and the run's status agrees with its tasks'.
fn check_any_policy(
    specs: &[Spec],
    workers: usize,
    fail_fast: bool,
    cancel_after: Option<u64>,
) -> Result<(), TestCaseError> {
    quiet_expected_panics();
    let deps = resolve(specs);
    let r = Reference::new(specs, &deps);
    let obs = Arc::new(Observed::new(specs.len()));
    let (graph, hs) = build(specs, &deps, &obs);
    let opts = if fail_fast {
        RunOptions::default().fail_fast()
    } else {
        RunOptions::default()
    };
    prop_assert_eq!(
        opts.failure,
        if fail_fast {
            FailurePolicy::FailFast
        } else {
            FailurePolicy::Continue
        }
    );
    let (report, cancelled) = run(workers, &graph, opts, &obs, cancel_after)?;
    check_common(specs, &r, &obs, &report, &hs)?;
    let c = report.counts();
    let want = if c.failed + c.skipped > 0 {
        RunStatus::Failed
    } else if cancelled {
        RunStatus::Cancelled
    } else {
        RunStatus::Completed
    };
    prop_assert_eq!(report.status(), want, "{}", report);
    if !cancelled && !fail_fast {
        // Nothing was cancelled: the exact outcome is known.
        prop_assert_eq!(c.cancelled, 0);
        for (i, res) in report.results().iter().enumerate() {
            let completes = !r.fails[i] && !r.below_failure[i];
            prop_assert_eq!(res.status == TaskStatus::Completed, completes, "t{}", i);
        }
    }
    if !cancelled {
        // Without a cancellation from outside, only a failure can cancel tasks (under
        // fail-fast), and a failing task that runs is seen failing.
        if c.failed == 0 {
            prop_assert_eq!(c.completed, specs.len());
        }
        let must_fail = (0..specs.len()).any(|i| r.fails[i] && !r.below_failure[i]);
        prop_assert_eq!(c.failed > 0, must_fail);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 2000,
        max_shrink_time: 30_000,
        // Minimal failing inputs are printed; no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Continue, no cancellation: exactly the descendants of failed tasks are skipped, every
    /// other task completes with the reference value; running the graph again gives the same.
    #[test]
    fn continue_policy_matches_the_sequential_reference(
        specs in specs(MAX_TASKS),
        workers in 1usize..=4,
    ) {
        quiet_expected_panics();
        let deps = resolve(&specs);
        let r = Reference::new(&specs, &deps);
        let mut previous: Option<Vec<TaskStatus>> = None;
        let obs = Arc::new(Observed::new(specs.len()));
        let (graph, hs) = build(&specs, &deps, &obs);
        for round in 0..2 {
            if round == 1 {
                // Same graph, fresh observations.
                obs.reset();
            }
            let (report, _) = run(workers, &graph, RunOptions::default(), &obs, None)?;
            check_common(&specs, &r, &obs, &report, &hs)?;
            for (i, res) in report.results().iter().enumerate() {
                let want = if r.below_failure[i] {
                    TaskStatus::Skipped
                } else if r.fails[i] {
                    TaskStatus::Failed
                } else {
                    TaskStatus::Completed
                };
                prop_assert_eq!(res.status, want, "t{} ({:?})", i, specs[i].kind);
                if want != TaskStatus::Skipped {
                    prop_assert_eq!(res.attempts, specs[i].kind.attempts(), "attempts of t{}", i);
                }
            }
            let want = if r.fails.iter().any(|&f| f) { RunStatus::Failed } else { RunStatus::Completed };
            prop_assert_eq!(report.status(), want);
            let statuses: Vec<TaskStatus> = report.results().iter().map(|t| t.status).collect();
            if let Some(p) = &previous {
                prop_assert_eq!(p, &statuses);
            }
            previous = Some(statuses);
        }
    }

    /// Fail-fast or continue, sometimes cancelled from another thread after some task
    /// starts: every task ends in one final status, dependencies are respected, values that
    /// were produced are right, and the run's status agrees with its tasks'.
    #[test]
    fn any_policy_with_or_without_cancel_stays_consistent(
        specs in specs(MAX_TASKS),
        workers in 1usize..=4,
        fail_fast in any::<bool>(),
        cancel_after in prop::option::weighted(0.6, 0u64..400),
    ) {
        check_any_policy(&specs, workers, fail_fast, cancel_after)?;
    }

    /// A dynamic task builds the random graph at run time (plus a fan-in of every task):
    /// its subgraph's tasks match the reference, its output is the fan-in's value, and its
    /// dependents see it.
    #[test]
    fn dynamic_subgraph_matches_the_sequential_reference(
        specs in specs(400),
        workers in 1usize..=4,
    ) {
        quiet_expected_panics();
        let deps = resolve(&specs);
        let r = Reference::new(&specs, &deps);
        let obs = Arc::new(Observed::new(specs.len()));
        let n = specs.len();
        let mut g = Graph::builder();
        let size = g.task("size").run((), move |_, ()| Ok(n));
        let shared = Arc::new((specs.clone(), deps.clone()));
        let o = obs.clone();
        let dynamic = g.task("dyn").run_dynamic(size, move |_, &n| {
            let (specs, deps) = &*shared;
            assert_eq!(specs.len(), n);
            let mut sb = Graph::builder();
            let hs = add_tasks(&mut sb, specs, deps, &o);
            let all = sb.task("all").run(hs, |_, xs| Ok(xs.iter().fold(0, |a, x| mix(a, *x))));
            Ok(Subgraph::new(sb, all))
        });
        let after = g.task("after").run(dynamic, |_, v| Ok(*v ^ 1));
        let graph = g.build().unwrap();
        let run = exec(workers).start(&graph);
        prop_assert!(run.wait_timeout(Duration::from_secs(30)), "the run did not finish");
        let report = run.wait();
        let v = obs.violations.lock().unwrap();
        prop_assert!(v.is_empty(), "violations: {:?}", &v[..v.len().min(5)]);
        let any_fails = r.fails.iter().any(|&f| f);
        for (i, spec) in specs.iter().enumerate() {
            let res = report.task(&format!("dyn/t{i}"));
            prop_assert!(res.is_some(), "no result for dyn/t{}", i);
            let res = res.unwrap();
            let want = if r.below_failure[i] {
                TaskStatus::Skipped
            } else if r.fails[i] {
                TaskStatus::Failed
            } else {
                TaskStatus::Completed
            };
            prop_assert_eq!(res.status, want, "dyn/t{} ({:?})", i, spec.kind);
            prop_assert_eq!(obs.completions[i].load(SeqCst), u32::from(want == TaskStatus::Completed));
            if let Some(why) = res.skipped_because {
                let root: usize = why
                    .strip_prefix("dyn/t")
                    .and_then(|s| s.parse().ok())
                    .expect("a subgraph task id");
                prop_assert!(r.fails[root] && r.is_ancestor(root, i));
            }
        }
        let all = report.task("dyn/all").expect("the fan-in");
        let dyn_result = report.result(dynamic);
        if any_fails {
            prop_assert_eq!(all.status, TaskStatus::Skipped);
            prop_assert_eq!(dyn_result.status, TaskStatus::Failed);
            let below = report.result(after);
            prop_assert_eq!(below.status, TaskStatus::Skipped);
            prop_assert_eq!(below.skipped_because.as_deref(), Some("dyn"));
            prop_assert_eq!(report.status(), RunStatus::Failed);
        } else {
            let want = r.value.iter().fold(0, |a, x| mix(a, *x));
            prop_assert_eq!(all.status, TaskStatus::Completed);
            prop_assert_eq!(report.output(dynamic), Some(&want));
            prop_assert_eq!(report.output(after), Some(&(want ^ 1)));
            prop_assert_eq!(report.status(), RunStatus::Completed);
        }
        prop_assert_eq!(report.results().len(), 3 + n + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2000,
        max_shrink_time: 30_000,
        // Minimal failing inputs are printed; no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Small graphs, always cancelled early: many more interleavings of cancellation with
    /// task starts, retries, async completions and failures.
    #[test]
    fn small_graphs_cancelled_early_stay_consistent(
        specs in specs(48),
        workers in 1usize..=3,
        fail_fast in any::<bool>(),
        cancel_after in 0u64..24,
    ) {
        check_any_policy(&specs, workers, fail_fast, Some(cancel_after))?;
    }
}
