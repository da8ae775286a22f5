//! Integration tests of nerv-pool's public API: DAG validation, execution order, upstream
//! causes, cancellation, deferral (outside completion and requeue), priority bands, concurrent
//! and nested runs, output arenas, and worker shutdown.
//!
//! Sizes shrink when `NERV_SMALL` is set (the valgrind run, `.ci/valgrind.sh`). Time appears
//! only as a safety limit, so that a broken pool fails a test instead of hanging it.
#![cfg(not(loom))]

use nerv_pool::{
    ArenaLayout, Dag, DagError, NodeCx, NodeRunner, NodeState, NotDeferred, OnceArena, Pool,
    RunHandle, SlotKey, Upstream, Verdict, BANDS,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Far longer than any run here takes, even under valgrind; only reached when something is
/// broken.
const LIMIT: Duration = Duration::from_secs(300);

/// Whether to use small sizes (set by the valgrind script).
fn small() -> bool {
    std::env::var_os("NERV_SMALL").is_some()
}

/// `big`, or `little` when [`small`].
fn size(big: usize, little: usize) -> usize {
    if small() {
        little
    } else {
        big
    }
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Edges of a random DAG on `n` nodes: each node gets up to `max_preds` predecessors of lower
/// index (some repeated: `Dag::new` keeps an edge once), mostly close by, sometimes far.
fn random_edges(n: usize, max_preds: u64, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng::new(seed);
    let mut edges = Vec::new();
    for i in 1..n as u64 {
        for _ in 0..rng.below(max_preds + 1) {
            let p = if rng.below(4) == 0 {
                rng.below(i)
            } else {
                i - 1 - rng.below(i.min(16))
            };
            edges.push((p as u32, i as u32));
        }
    }
    edges
}

fn wait(h: &RunHandle<impl NodeRunner>) {
    assert!(h.wait_timeout(LIMIT), "the run did not finish in {LIMIT:?}");
}

/// What a [`Probe`] does on attempt `attempt` (0-based) of a node.
type Plan = Box<dyn Fn(&NodeCx<'_, Probe>, usize) -> Verdict + Send + Sync>;

/// A runner that checks the pool's guarantees as nodes run: each node runs only after all of
/// its predecessors finished (their `fin` flags are visible), and never twice at once. It
/// records attempts, the order of first attempts, the upstream each node saw, and follows a
/// [`Plan`].
struct Probe {
    runs: Vec<AtomicUsize>,
    fin: Vec<AtomicBool>,
    active: Vec<AtomicBool>,
    seen_upstream: Vec<Mutex<Option<Upstream>>>,
    order: Mutex<Vec<u32>>,
    bad: Mutex<Vec<String>>,
    finished_calls: AtomicUsize,
    plan: Plan,
}

impl Probe {
    fn new(n: usize, plan: Plan) -> Probe {
        Probe {
            runs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            fin: (0..n).map(|_| AtomicBool::new(false)).collect(),
            active: (0..n).map(|_| AtomicBool::new(false)).collect(),
            seen_upstream: (0..n).map(|_| Mutex::new(None)).collect(),
            order: Mutex::new(Vec::new()),
            bad: Mutex::new(Vec::new()),
            finished_calls: AtomicUsize::new(0),
            plan,
        }
    }

    fn completing(n: usize) -> Probe {
        Probe::new(n, Box::new(|_, _| Verdict::Completed))
    }

    fn runs(&self, node: u32) -> usize {
        self.runs[node as usize].load(SeqCst)
    }

    fn seen(&self, node: u32) -> Option<Upstream> {
        *self.seen_upstream[node as usize].lock().unwrap()
    }

    fn complain(&self, msg: String) {
        self.bad.lock().unwrap().push(msg);
    }

    /// Marks a node finished from outside (before `RunHandle::complete`).
    fn mark_finished(&self, node: u32) {
        self.fin[node as usize].store(true, Release);
    }

    /// Fails the test with the first problems a runner noticed.
    fn assert_clean(&self) {
        let bad = self.bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "{} problems, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
}

impl NodeRunner for Probe {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        let node = cx.node();
        let i = node as usize;
        if self.active[i].swap(true, AcqRel) {
            self.complain(format!("node {node} runs twice at once"));
        }
        for &p in cx.dag().predecessors(node) {
            if !self.fin[p as usize].load(Acquire) {
                self.complain(format!(
                    "node {node} runs before its predecessor {p} finished"
                ));
            }
        }
        if self.fin[i].load(Acquire) {
            self.complain(format!("node {node} runs after it finished"));
        }
        *self.seen_upstream[i].lock().unwrap() = Some(cx.upstream());
        let attempt = self.runs[i].fetch_add(1, SeqCst);
        if cx.is_first_run() != (attempt == 0) {
            self.complain(format!(
                "node {node}: is_first_run() is {} on run {}",
                cx.is_first_run(),
                attempt + 1
            ));
        }
        if attempt == 0 {
            self.order.lock().unwrap().push(node);
        }
        let v = (self.plan)(cx, attempt);
        self.active[i].store(false, Release);
        if v != Verdict::Deferred {
            self.fin[i].store(true, Release);
        }
        v
    }

    fn finished(&self, run: &RunHandle<Self>) {
        self.finished_calls.fetch_add(1, SeqCst);
        for n in 0..run.dag().len() as u32 {
            if !run.state(n).is_final() {
                self.complain(format!(
                    "run finished with node {n} in state {:?}",
                    run.state(n)
                ));
            }
        }
    }
}

/// Runs `dag` with `runner` on `pool` and waits for it.
fn run_to_end<R: NodeRunner>(pool: &Pool, dag: Dag, runner: R) -> RunHandle<R> {
    let h = pool.start(Arc::new(dag), runner);
    wait(&h);
    assert!(h.is_finished());
    h
}

/// Checks that every node ran exactly once, completed, and the runner saw nothing wrong.
fn assert_all_completed_once(h: &RunHandle<Probe>) {
    let p = h.runner();
    p.assert_clean();
    for n in 0..h.dag().len() as u32 {
        assert_eq!(p.runs(n), 1, "node {n} ran {} times", p.runs(n));
        assert_eq!(h.state(n), NodeState::Completed, "node {n}");
        assert_eq!(h.upstream(n), Upstream::Ok, "node {n}");
    }
    assert_eq!(
        p.finished_calls.load(SeqCst),
        1,
        "`finished` is called once"
    );
}

#[test]
fn dag_new_rejects_bad_edges_and_cycles() {
    assert_eq!(
        Dag::new(3, &[(0, 1), (1, 3)]).unwrap_err(),
        DagError::OutOfRange {
            from: 1,
            to: 3,
            nodes: 3
        }
    );
    assert_eq!(
        Dag::new(3, &[(7, 0)]).unwrap_err(),
        DagError::OutOfRange {
            from: 7,
            to: 0,
            nodes: 3
        }
    );
    assert_eq!(
        Dag::new(3, &[(0, 1), (2, 2)]).unwrap_err(),
        DagError::SelfLoop(2)
    );
    // 1 → 2 → 1 is a cycle; 3 waits behind it; 0 and 4 are fine.
    let err = Dag::new(5, &[(0, 1), (1, 2), (2, 1), (2, 3), (0, 4)]).unwrap_err();
    assert_eq!(
        err,
        DagError::Cycle {
            on_cycle: vec![1, 2, 3]
        }
    );
    for e in [
        err,
        DagError::SelfLoop(2),
        DagError::OutOfRange {
            from: 1,
            to: 3,
            nodes: 3,
        },
        DagError::TooLarge,
    ] {
        assert!(!e.to_string().is_empty());
    }
    let d = Dag::new(4, &[(0, 1), (0, 1), (1, 2)]).unwrap();
    assert_eq!(d.len(), 4);
    assert_eq!(d.edge_count(), 2, "duplicate edges are kept once");
    assert_eq!(d.roots(), &[0, 3]);
    assert!(Dag::new(0, &[]).unwrap().is_empty());
}

#[test]
fn random_dags_run_every_node_once_after_its_predecessors() {
    let n = size(1000, 200);
    let pool = Pool::new(4, "t-random");
    for seed in 1..=size(8, 2) as u64 {
        let mut dag = Dag::new(n, &random_edges(n, 3, seed)).unwrap();
        if seed % 2 == 0 {
            // Exercise every band and the successor order.
            let mut rng = Rng::new(seed ^ 0xBA5D);
            let bands: Vec<u8> = (0..n).map(|_| rng.below(BANDS as u64) as u8).collect();
            dag.set_bands(bands.iter().copied());
            dag.sort_successors_by_key(|s| bands[s as usize]);
        }
        let h = run_to_end(&pool, dag, Probe::completing(n));
        assert_all_completed_once(&h);
        let order = h.runner().order.lock().unwrap();
        assert_eq!(order.len(), n);
    }
}

#[test]
fn wide_fan_out_and_fan_in() {
    // 0 → 1..=w → w+1: more successors than one release batch (256), and a join counter of w.
    let w = size(1500, 600) as u32;
    let mut edges: Vec<(u32, u32)> = (1..=w).map(|i| (0, i)).collect();
    edges.extend((1..=w).map(|i| (i, w + 1)));
    let pool = Pool::new(3, "t-wide");
    let h = run_to_end(
        &pool,
        Dag::new(w as usize + 2, &edges).unwrap(),
        Probe::completing(w as usize + 2),
    );
    assert_all_completed_once(&h);

    // The same, with node 0 finished from outside: its successors are released from this
    // thread into the injector, in batches.
    let started = Arc::new(Barrier::new(2));
    let s2 = started.clone();
    let h = pool.start(
        Arc::new(Dag::new(w as usize + 2, &edges).unwrap()),
        Probe::new(
            w as usize + 2,
            Box::new(move |cx, _| {
                if cx.node() == 0 {
                    s2.wait();
                    Verdict::Deferred
                } else {
                    Verdict::Completed
                }
            }),
        ),
    );
    started.wait();
    h.runner().mark_finished(0);
    assert_eq!(h.complete(0, Verdict::Completed), Ok(()));
    wait(&h);
    assert_all_completed_once(&h);
}

/// A plan that fails the nodes in `failing` (unless upstream failed: then it skips) and
/// honours upstream causes like nerv does.
fn failing_plan(failing: Vec<bool>) -> Plan {
    Box::new(move |cx, _| match cx.upstream() {
        Upstream::Ok if failing[cx.node() as usize] => Verdict::Failed,
        Upstream::Ok => Verdict::Completed,
        Upstream::Failed(_) => Verdict::Skipped,
        Upstream::Cancelled => Verdict::Cancelled,
    })
}

/// `anc[i]`: the ancestors of node `i` as a bitset (edges go from lower to higher index).
fn ancestors(dag: &Dag) -> Vec<Vec<u64>> {
    let n = dag.len();
    let words = n.div_ceil(64);
    let mut anc: Vec<Vec<u64>> = vec![vec![0; words]; n];
    for i in dag.topological_order() {
        let mut a = vec![0u64; words];
        for &p in dag.predecessors(i) {
            for (x, y) in a.iter_mut().zip(&anc[p as usize]) {
                *x |= y;
            }
            a[p as usize / 64] |= 1 << (p % 64);
        }
        anc[i as usize] = a;
    }
    anc
}

fn has(bits: &[u64], i: u32) -> bool {
    bits[i as usize / 64] & (1 << (i % 64)) != 0
}

#[test]
fn failure_propagates_through_skipped_nodes_with_the_root_index() {
    // 0 → 1 → 2 → 5, 1 → 4 → 5, 0 → 3, 6 → 5; 1 fails.
    let edges = [(0, 1), (1, 2), (2, 5), (1, 4), (4, 5), (0, 3), (6, 5)];
    let pool = Pool::new(2, "t-fail");
    let mut failing = vec![false; 7];
    failing[1] = true;
    let h = run_to_end(
        &pool,
        Dag::new(7, &edges).unwrap(),
        Probe::new(7, failing_plan(failing)),
    );
    h.runner().assert_clean();
    assert_eq!(h.state(1), NodeState::Failed);
    for n in [0, 3, 6] {
        assert_eq!(h.state(n), NodeState::Completed);
        assert_eq!(h.upstream(n), Upstream::Ok);
    }
    assert_eq!(h.upstream(1), Upstream::Ok);
    for n in [2, 4, 5] {
        assert_eq!(h.state(n), NodeState::Skipped, "node {n}");
        assert_eq!(h.upstream(n), Upstream::Failed(1), "node {n}");
        assert_eq!(h.runner().seen(n), Some(Upstream::Failed(1)), "node {n}");
        assert_eq!(h.runner().runs(n), 1);
    }

    // Random DAGs with a few failing nodes: a node is skipped exactly when one of its
    // ancestors failed, and its cause is a failed ancestor.
    let n = size(1000, 200);
    for seed in 1..=size(6, 2) as u64 {
        let dag = Dag::new(n, &random_edges(n, 2, seed)).unwrap();
        let anc = ancestors(&dag);
        let mut rng = Rng::new(seed ^ 0xFA11);
        let failing: Vec<bool> = (0..n).map(|_| rng.below(40) == 0).collect();
        let h = run_to_end(&pool, dag, Probe::new(n, failing_plan(failing.clone())));
        h.runner().assert_clean();
        for i in 0..n as u32 {
            let failed_above =
                (0..n as u32).any(|a| failing[a as usize] && has(&anc[i as usize], a));
            assert_eq!(h.runner().runs(i), 1);
            match h.state(i) {
                NodeState::Completed => {
                    assert!(!failing[i as usize] && !failed_above, "node {i}");
                    assert_eq!(h.upstream(i), Upstream::Ok);
                }
                NodeState::Failed => {
                    assert!(failing[i as usize] && !failed_above, "node {i}");
                    assert_eq!(h.upstream(i), Upstream::Ok);
                }
                NodeState::Skipped => {
                    assert!(failed_above, "node {i} skipped without a failed ancestor");
                    let Upstream::Failed(r) = h.upstream(i) else {
                        panic!("node {i}: upstream {:?}", h.upstream(i));
                    };
                    assert!(
                        has(&anc[i as usize], r),
                        "node {i}: cause {r} is no ancestor"
                    );
                    assert_eq!(h.state(r), NodeState::Failed, "node {i}: cause {r}");
                    assert_eq!(h.runner().seen(i), Some(Upstream::Failed(r)));
                }
                s => panic!("node {i} in state {s:?}"),
            }
        }
    }
}

#[test]
fn a_node_skipped_by_its_own_runner_is_the_root_cause() {
    // 0 → 1 → 2: node 1 skips with no upstream problem, so 2 sees Failed(1).
    let pool = Pool::new(1, "t-skip");
    let h = run_to_end(
        &pool,
        Dag::new(3, &[(0, 1), (1, 2)]).unwrap(),
        Probe::new(
            3,
            Box::new(|cx, _| match (cx.node(), cx.upstream()) {
                (1, _) | (_, Upstream::Failed(_)) => Verdict::Skipped,
                _ => Verdict::Completed,
            }),
        ),
    );
    assert_eq!(h.state(1), NodeState::Skipped);
    assert_eq!(h.upstream(1), Upstream::Ok);
    assert_eq!(h.state(2), NodeState::Skipped);
    assert_eq!(h.upstream(2), Upstream::Failed(1));
}

#[test]
fn a_cancelled_node_gives_upstream_cancelled() {
    // 0 → 1 → 3, 0 → 2 → 3, 4 → 3: node 1 is cancelled by its runner.
    let pool = Pool::new(2, "t-cancelled");
    let h = run_to_end(
        &pool,
        Dag::new(5, &[(0, 1), (1, 3), (0, 2), (2, 3), (4, 3)]).unwrap(),
        Probe::new(
            5,
            Box::new(|cx, _| match (cx.node(), cx.upstream()) {
                (1, _) | (_, Upstream::Cancelled) => Verdict::Cancelled,
                (_, Upstream::Failed(_)) => Verdict::Skipped,
                _ => Verdict::Completed,
            }),
        ),
    );
    h.runner().assert_clean();
    assert_eq!(h.state(1), NodeState::Cancelled);
    assert_eq!(h.state(3), NodeState::Cancelled);
    assert_eq!(h.upstream(3), Upstream::Cancelled);
    assert_eq!(h.runner().seen(3), Some(Upstream::Cancelled));
    for n in [0, 2, 4] {
        assert_eq!(h.state(n), NodeState::Completed);
    }
    assert!(
        !h.is_cancelled(),
        "a cancelled node does not cancel the run"
    );
}

/// A plan that cancels nodes once the run is cancelled (or upstream was), like nerv does.
fn honour_cancel(then: impl Fn(&NodeCx<'_, Probe>) + Send + Sync + 'static) -> Plan {
    Box::new(move |cx, _| {
        if cx.is_cancelled() || cx.upstream() == Upstream::Cancelled {
            return Verdict::Cancelled;
        }
        then(cx);
        Verdict::Completed
    })
}

#[test]
fn cancel_from_a_node_stops_the_rest_of_a_chain() {
    let n = 100;
    let edges: Vec<(u32, u32)> = (1..n).map(|i| (i - 1, i)).collect();
    let pool = Pool::new(2, "t-cancel");
    let h = run_to_end(
        &pool,
        Dag::new(n as usize, &edges).unwrap(),
        Probe::new(
            n as usize,
            honour_cancel(|cx| {
                if cx.node() == 10 {
                    cx.handle().cancel();
                }
            }),
        ),
    );
    h.runner().assert_clean();
    assert!(h.is_cancelled());
    for i in 0..n {
        let want = if i <= 10 {
            NodeState::Completed
        } else {
            NodeState::Cancelled
        };
        assert_eq!(h.state(i), want, "node {i}");
        assert_eq!(
            h.runner().runs(i),
            1,
            "every node is still given to its runner once"
        );
    }
    // Node 11 was cancelled because the run was (its predecessor completed); node 12 because
    // its predecessor was.
    assert_eq!(h.upstream(11), Upstream::Ok);
    assert_eq!(h.upstream(12), Upstream::Cancelled);
}

#[test]
fn cancel_from_outside_while_nodes_run() {
    // Node 0 blocks until the test thread has cancelled; everything after it is cancelled.
    let n = size(500, 100);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g2 = gate.clone();
    let pool = Pool::new(3, "t-cancel-out");
    let h = pool.start(
        Arc::new(Dag::new(n, &random_edges(n, 2, 77)).unwrap()),
        Probe::new(
            n,
            honour_cancel(move |cx| {
                if cx.node() == 0 {
                    let (m, cv) = &*g2;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                }
            }),
        ),
    );
    h.cancel();
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    wait(&h);
    h.runner().assert_clean();
    assert!(h.is_cancelled());
    let dag = h.dag().clone();
    for i in 0..n as u32 {
        assert_eq!(h.runner().runs(i), 1);
        if i > 0 && dag.predecessors(i).contains(&0) {
            assert_eq!(h.state(i), NodeState::Cancelled, "node {i}");
        }
        assert!(h.state(i).is_final());
    }
}

/// A runner that records the order of the nodes it runs, for the band tests (one worker).
struct Order {
    order: Mutex<Vec<u32>>,
    gate: Option<Arc<Barrier>>,
}

impl NodeRunner for Order {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        if let Some(g) = &self.gate {
            // Started, then held until the test has queued its work.
            g.wait();
            g.wait();
        }
        self.order.lock().unwrap().push(cx.node());
        Verdict::Completed
    }
}

/// Runs a root releasing 1..=12 in mixed bands on one worker; returns the bands in run order
/// after the root.
fn bands_after_root(sorted: bool) -> Vec<u8> {
    let n = 13;
    let bands: Vec<u8> = (0..n as u32)
        .map(|i| [0, 3, 1, 2, 0, 1][i as usize % 6])
        .collect();
    let mut dag = Dag::new(n, &(1..n as u32).map(|i| (0, i)).collect::<Vec<_>>()).unwrap();
    dag.set_bands(bands.iter().copied());
    for i in 0..n as u32 {
        assert_eq!(dag.band(i), bands[i as usize]);
    }
    if sorted {
        dag.sort_successors_by_key(|s| bands[s as usize]);
    }
    let pool = Pool::new(1, "t-bands");
    let h = run_to_end(
        &pool,
        dag,
        Order {
            order: Mutex::new(Vec::new()),
            gate: None,
        },
    );
    let order = h.runner().order.lock().unwrap().clone();
    assert_eq!(order.len(), n);
    assert_eq!(order[0], 0);
    order[1..].iter().map(|&i| bands[i as usize]).collect()
}

#[test]
fn bands_released_by_a_node_run_highest_band_first() {
    // Successors in band order (the first released runs inline), and in edge order (a
    // successor is not run inline past a queued job of a higher band).
    for sorted in [true, false] {
        let run_bands = bands_after_root(sorted);
        assert!(
            run_bands.windows(2).all(|w| w[0] >= w[1]),
            "sorted: {sorted}, bands in run order: {run_bands:?}"
        );
    }
}

/// Logs the nodes it runs (with its run's id) in one log shared by runs; at node `spawn_at`
/// it starts a one-node run of band 3 on the same pool.
struct Spawner {
    id: u8,
    log: Arc<Mutex<Vec<(u8, u32)>>>,
    spawn_at: Option<u32>,
    pool: Pool,
    spawned: Arc<Mutex<Vec<RunHandle<Spawner>>>>,
}

impl NodeRunner for Spawner {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        self.log.lock().unwrap().push((self.id, cx.node()));
        if Some(cx.node()) == self.spawn_at {
            let mut dag = Dag::new(1, &[]).unwrap();
            dag.set_bands([3]);
            let h = self.pool.start(
                Arc::new(dag),
                Spawner {
                    id: 1,
                    log: self.log.clone(),
                    spawn_at: None,
                    pool: self.pool.clone(),
                    spawned: self.spawned.clone(),
                },
            );
            self.spawned.lock().unwrap().push(h);
        }
        Verdict::Completed
    }
}

#[test]
fn a_higher_band_job_queued_during_an_inline_chain_runs_before_the_next_link() {
    // The only worker takes the chain's first node from the injector and runs the chain
    // inline; a job of a higher band injected meanwhile must run before the next link, even
    // though the worker found the injector empty when it took the chain's first node.
    let pool = Pool::new(1, "t-bands-chain");
    let n = 20u32;
    let mut dag = Dag::new(n as usize, &(1..n).map(|i| (i - 1, i)).collect::<Vec<_>>()).unwrap();
    dag.set_bands((0..n).map(|_| 0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let spawned = Arc::new(Mutex::new(Vec::new()));
    let chain = pool.start(
        Arc::new(dag),
        Spawner {
            id: 0,
            log: log.clone(),
            spawn_at: Some(5),
            pool: pool.clone(),
            spawned: spawned.clone(),
        },
    );
    wait(&chain);
    // Taken out, so that the runs' runners (which hold the list) are freed.
    let others: Vec<_> = spawned.lock().unwrap().drain(..).collect();
    for h in &others {
        wait(h);
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), n as usize + 1);
    let at = log.iter().position(|&e| e == (0, 5)).unwrap();
    assert_eq!(log[at + 1], (1, 0), "run order: {log:?}");
}

/// Records the order nodes run in; node 0 lowers node 1's band to 0 while it runs.
struct Lowers {
    order: Mutex<Vec<u32>>,
}

impl NodeRunner for Lowers {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        if cx.node() == 0 {
            cx.handle().set_band(1, 0);
        }
        self.order.lock().unwrap().push(cx.node());
        Verdict::Completed
    }
}

#[test]
fn a_successor_rebanded_below_a_queued_job_is_queued_instead_of_run_inline() {
    // Every node starts in band 1. The root releases 1 and 2 (1 is the inline candidate, 2 is
    // queued), but 1 was lowered to band 0 meanwhile: 2, of the higher band, runs first. (The
    // inline check skips the band lookup when every queued job is of the run's one band: not
    // after a rebanding.)
    let pool = Pool::new(1, "t-reband-inline");
    let mut dag = Dag::new(3, &[(0, 1), (0, 2)]).unwrap();
    dag.set_bands([1, 1, 1]);
    let h = pool.start(
        Arc::new(dag),
        Lowers {
            order: Mutex::new(Vec::new()),
        },
    );
    wait(&h);
    assert_eq!(*h.runner().order.lock().unwrap(), [0, 2, 1]);
}

#[test]
fn bands_of_queued_roots_run_highest_band_first() {
    // While the only worker is held by another run, a run's roots are queued in the injector
    // in mixed bands; once freed, the worker takes them highest band first.
    let pool = Pool::new(1, "t-bands-inj");
    let gate = Arc::new(Barrier::new(2));
    let blocker = pool.start(
        Arc::new(Dag::new(1, &[]).unwrap()),
        Order {
            order: Mutex::new(Vec::new()),
            gate: Some(gate.clone()),
        },
    );
    gate.wait(); // The worker runs the blocker.
    let n = 16;
    let bands: Vec<u8> = (0..n as u32).map(|i| ((i * 7) % 4) as u8).collect();
    let mut dag = Dag::new(n, &[]).unwrap();
    dag.set_bands(bands.iter().copied());
    let h = pool.start(
        Arc::new(dag),
        Order {
            order: Mutex::new(Vec::new()),
            gate: None,
        },
    );
    gate.wait(); // Let the blocker finish.
    wait(&blocker);
    wait(&h);
    let order = h.runner().order.lock().unwrap().clone();
    let run_bands: Vec<u8> = order.iter().map(|&i| bands[i as usize]).collect();
    assert_eq!(order.len(), n);
    assert!(
        run_bands.windows(2).all(|w| w[0] >= w[1]),
        "bands in run order: {run_bands:?}"
    );
}

#[test]
fn an_empty_dag_finishes_at_once() {
    let pool = Pool::new(2, "t-empty");
    let h = pool.start(Arc::new(Dag::new(0, &[]).unwrap()), Probe::completing(0));
    assert!(h.is_finished());
    h.wait();
    assert_eq!(h.runner().finished_calls.load(SeqCst), 1);
    let waker = Waker::from(Arc::new(CountWakes(AtomicUsize::new(0))));
    assert_eq!(
        h.poll_finished(&mut Context::from_waker(&waker)),
        Poll::Ready(())
    );
}

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn waiting_with_a_timeout_and_with_a_waker() {
    let pool = Pool::new(1, "t-waits");
    let gate = Arc::new(Barrier::new(2));
    let h = pool.start(
        Arc::new(Dag::new(1, &[]).unwrap()),
        Order {
            order: Mutex::new(Vec::new()),
            gate: Some(gate.clone()),
        },
    );
    gate.wait();
    assert!(!h.is_finished());
    assert!(!h.wait_timeout(Duration::from_millis(10)));
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    assert_eq!(h.poll_finished(&mut cx), Poll::Pending);
    assert_eq!(h.poll_finished(&mut cx), Poll::Pending, "registered once");
    assert_eq!(h.state(0), NodeState::Running);
    gate.wait();
    wait(&h);
    // The waker is woken just after blocking waiters are.
    let t0 = Instant::now();
    while wakes.0.load(SeqCst) == 0 {
        assert!(t0.elapsed() < LIMIT, "the waker was never woken");
        std::thread::yield_now();
    }
    assert_eq!(wakes.0.load(SeqCst), 1);
    assert_eq!(h.poll_finished(&mut cx), Poll::Ready(()));
    assert_eq!(h.state(0), NodeState::Completed);
    assert!(format!("{h:?}").contains("finished: true"));
    assert_eq!(pool.workers(), 1);
    assert!(format!("{pool:?}").contains("workers: 1"));
}

#[test]
fn many_concurrent_runs_on_one_pool() {
    let pool = Pool::new(4, "t-many");
    let threads = size(6, 3);
    let runs = size(12, 3);
    let n = size(300, 60);
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let pool = pool.clone();
            s.spawn(move || {
                let handles: Vec<_> = (0..runs as u64)
                    .map(|r| {
                        let dag = Dag::new(n, &random_edges(n, 3, t * 1000 + r)).unwrap();
                        pool.start(Arc::new(dag), Probe::completing(n))
                    })
                    .collect();
                for h in &handles {
                    wait(h);
                    assert_all_completed_once(h);
                }
            });
        }
    });
}

/// What the helper thread of the deferral test does with a deferred node.
#[derive(Clone, Copy, Debug)]
enum Later {
    Complete,
    Requeue,
    Stop,
}

/// A node's behaviour in the deferral test, by `node % 8`:
/// 0: defers, completed later from another thread;
/// 1: defers, requeued from another thread, completes on its second attempt;
/// 2: requeues itself while running, completes on its second attempt;
/// 3: defers and completes itself from inside its runner (while running);
/// others: complete.
fn deferral_plan(tx: Arc<Mutex<std::sync::mpsc::Sender<(u32, Later)>>>) -> Plan {
    Box::new(move |cx, attempt| {
        let node = cx.node();
        match (node % 8, attempt) {
            (0, 0) => {
                tx.lock().unwrap().send((node, Later::Complete)).unwrap();
                Verdict::Deferred
            }
            (1, 0) => {
                tx.lock().unwrap().send((node, Later::Requeue)).unwrap();
                Verdict::Deferred
            }
            (2, 0) => {
                assert_eq!(cx.handle().requeue(node), Ok(()));
                Verdict::Deferred
            }
            (3, 0) => {
                // Still running: the worker applies this verdict when the runner returns.
                let h = cx.handle();
                h.runner().mark_finished(node);
                assert_eq!(h.complete(node, Verdict::Completed), Ok(()));
                assert_eq!(h.state(node), NodeState::Running);
                Verdict::Deferred
            }
            _ => Verdict::Completed,
        }
    })
}

#[test]
fn deferred_nodes_completed_and_requeued_from_other_threads() {
    let n = size(1000, 200);
    let pool = Pool::new(3, "t-defer");
    for seed in 1..=size(4, 2) as u64 {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, Later)>();
        let tx = Arc::new(Mutex::new(tx));
        let h = pool.start(
            Arc::new(Dag::new(n, &random_edges(n, 3, seed)).unwrap()),
            Probe::new(n, deferral_plan(tx.clone())),
        );
        let helper = {
            let h = h.clone();
            std::thread::spawn(move || {
                for (node, what) in rx {
                    match what {
                        Later::Complete => {
                            h.runner().mark_finished(node);
                            assert_eq!(h.complete(node, Verdict::Completed), Ok(()));
                            assert_eq!(
                                h.complete(node, Verdict::Failed),
                                Err(NotDeferred { node })
                            );
                        }
                        Later::Requeue => assert_eq!(h.requeue(node), Ok(())),
                        Later::Stop => return,
                    }
                }
            })
        };
        wait(&h);
        tx.lock().unwrap().send((0, Later::Stop)).unwrap();
        helper.join().unwrap();
        let p = h.runner();
        p.assert_clean();
        for i in 0..n as u32 {
            let attempts = if matches!(i % 8, 1 | 2) { 2 } else { 1 };
            assert_eq!(p.runs(i), attempts, "node {i}");
            assert_eq!(h.state(i), NodeState::Completed, "node {i}");
        }
    }
}

#[test]
fn complete_and_requeue_refuse_nodes_that_are_not_in_flight() {
    let pool = Pool::new(1, "t-refuse");
    let gate = Arc::new(Barrier::new(2));
    // 0 → 1: while 0 is held, 1 is pending.
    let h = pool.start(
        Arc::new(Dag::new(2, &[(0, 1)]).unwrap()),
        Order {
            order: Mutex::new(Vec::new()),
            gate: Some(gate.clone()),
        },
    );
    gate.wait();
    assert_eq!(h.state(1), NodeState::Pending);
    assert_eq!(
        h.complete(1, Verdict::Completed),
        Err(NotDeferred { node: 1 })
    );
    assert_eq!(h.requeue(1), Err(NotDeferred { node: 1 }));
    gate.wait();
    gate.wait();
    gate.wait();
    wait(&h);
    for node in 0..2 {
        assert_eq!(h.complete(node, Verdict::Failed), Err(NotDeferred { node }));
        assert_eq!(h.requeue(node), Err(NotDeferred { node }));
        assert_eq!(h.state(node), NodeState::Completed);
    }
    assert!(!NotDeferred { node: 1 }.to_string().is_empty());
}

#[test]
#[should_panic(expected = "final verdict")]
fn complete_with_deferred_panics() {
    let pool = Pool::new(1, "t-panic");
    let h = pool.start(Arc::new(Dag::new(1, &[]).unwrap()), Probe::completing(1));
    wait(&h);
    let _ = h.complete(0, Verdict::Deferred);
}

/// A runner whose nodes `node % 4 == 0` each start a child run (like a subgraph) and defer;
/// the child's `finished` completes the parent node.
struct Nested {
    pool: Pool,
    depth: u32,
    parent: Option<(RunHandle<Nested>, u32)>,
    ran: Arc<AtomicUsize>,
    children: Arc<AtomicUsize>,
}

impl NodeRunner for Nested {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        self.ran.fetch_add(1, SeqCst);
        if self.depth < 2 && cx.node() % 4 == 0 {
            self.children.fetch_add(1, SeqCst);
            let n = 9;
            let dag = Dag::new(n, &random_edges(n, 2, u64::from(cx.node()) + 1)).unwrap();
            // The child's handle is dropped at once: the run keeps itself alive.
            let _ = self.pool.start(
                Arc::new(dag),
                Nested {
                    pool: self.pool.clone(),
                    depth: self.depth + 1,
                    parent: Some((cx.handle(), cx.node())),
                    ran: self.ran.clone(),
                    children: self.children.clone(),
                },
            );
            Verdict::Deferred
        } else {
            Verdict::Completed
        }
    }

    fn finished(&self, _run: &RunHandle<Self>) {
        if let Some((h, node)) = &self.parent {
            assert_eq!(h.complete(*node, Verdict::Completed), Ok(()));
        }
    }
}

#[test]
fn nested_runs_finish_their_parent_nodes() {
    let pool = Pool::new(3, "t-nested");
    let n = 9;
    let ran = Arc::new(AtomicUsize::new(0));
    let children = Arc::new(AtomicUsize::new(0));
    let h = pool.start(
        Arc::new(Dag::new(n, &random_edges(n, 2, 5)).unwrap()),
        Nested {
            pool: pool.clone(),
            depth: 0,
            parent: None,
            ran: ran.clone(),
            children: children.clone(),
        },
    );
    wait(&h);
    for i in 0..n as u32 {
        assert_eq!(h.state(i), NodeState::Completed);
    }
    // Nodes 0, 4, 8 of the root start a child each, and so do nodes 0, 4, 8 of each child.
    assert_eq!(children.load(SeqCst), 3 + 9);
    assert_eq!(ran.load(SeqCst), 9 + 3 * 9 + 9 * 9);
}

/// A runner whose nodes sum their predecessors' outputs (read from the run's arena) and store
/// their own: a value read before its writer finished, or lost, changes the sums.
struct Sums {
    arena: OnceArena,
    keys: Vec<SlotKey<Vec<u64>>>,
    missing: AtomicUsize,
}

impl NodeRunner for Sums {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        let node = cx.node();
        let mut v = u64::from(node) + 1;
        for &p in cx.dag().predecessors(node) {
            match self.arena.get(self.keys[p as usize]) {
                Some(x) => v = v.wrapping_mul(31).wrapping_add(x[0]),
                None => {
                    self.missing.fetch_add(1, SeqCst);
                }
            }
        }
        // A heap value, so that a value the arena failed to drop shows up under valgrind.
        if self.arena.set(self.keys[node as usize], vec![v]).is_err() {
            self.missing.fetch_add(1, SeqCst);
        }
        Verdict::Completed
    }
}

#[test]
fn outputs_flow_along_edges_through_a_once_arena() {
    let n = size(1000, 200);
    let pool = Pool::new(4, "t-arena");
    for seed in 1..=size(4, 2) as u64 {
        let dag = Dag::new(n, &random_edges(n, 3, seed)).unwrap();
        let mut layout = ArenaLayout::new();
        let keys: Vec<SlotKey<Vec<u64>>> = (0..n).map(|_| layout.push()).collect();
        assert_eq!(layout.len(), n);
        let mut want = vec![0u64; n];
        for i in dag.topological_order() {
            let mut v = u64::from(i) + 1;
            for &p in dag.predecessors(i) {
                v = v.wrapping_mul(31).wrapping_add(want[p as usize]);
            }
            want[i as usize] = v;
        }
        let h = run_to_end(
            &pool,
            dag,
            Sums {
                arena: OnceArena::new(&layout),
                keys: keys.clone(),
                missing: AtomicUsize::new(0),
            },
        );
        let r = h.runner();
        assert_eq!(r.missing.load(SeqCst), 0);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(r.arena.get(*k).map(|x| x[0]), Some(want[i]), "node {i}");
        }
    }
}

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn once_arena_from_several_threads() {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut layout = ArenaLayout::new();
    let a = layout.push::<u8>();
    let b = layout.push::<String>();
    let c = layout.push::<()>();
    let d = layout.push::<Counted>();
    let e = layout.push::<[u64; 16]>();
    assert_eq!(layout.len(), 5);
    assert!(!layout.is_empty());
    assert!(layout.value_bytes() > 16 * 8);
    let mut arena = OnceArena::new(&layout);
    let threads = 4;
    let wins = AtomicUsize::new(0);
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (arena, drops, wins, start) = (&arena, &drops, &wins, &start);
            s.spawn(move || {
                start.wait();
                let t8 = t as u8;
                let mut won = 0;
                won += usize::from(arena.set(a, t8).is_ok());
                won += usize::from(arena.set(b, format!("thread {t}")).is_ok());
                won += usize::from(arena.set(d, Counted(drops.clone())).is_ok());
                won += usize::from(arena.set(e, [t as u64; 16]).is_ok());
                wins.fetch_add(won, SeqCst);
                // Whatever is visible is whole.
                if let Some(v) = arena.get(e) {
                    assert!(v.iter().all(|&x| x == v[0]));
                }
                if let Some(v) = arena.get(b) {
                    assert!(v.starts_with("thread "));
                }
            });
        }
    });
    assert_eq!(wins.load(SeqCst), 4, "each slot is written once");
    assert_eq!(
        drops.load(SeqCst),
        threads - 1,
        "refused values are handed back and dropped"
    );
    let w = arena.get(a).copied().unwrap();
    assert!(usize::from(w) < threads);
    let v = arena.get(e).unwrap();
    assert!(v.iter().all(|&x| x == v[0]) && v[0] < threads as u64);
    assert!(arena.is_set(0) && arena.is_set(1) && !arena.is_set(2) && arena.is_set(3));
    assert_eq!(arena.set(c, ()), Ok(()));
    assert_eq!(arena.set(c, ()), Err(()));
    assert_eq!(arena.get(c), Some(&()));
    let taken = arena.take(b).unwrap();
    assert!(taken.starts_with("thread "));
    assert_eq!(arena.take(b), None);
    assert_eq!(arena.set(b, "again".to_string()), Ok(()));
    drop(arena);
    assert_eq!(
        drops.load(SeqCst),
        threads,
        "the arena drops the value it holds"
    );
}

thread_local! {
    /// Set on a worker by the first node it runs; its drop (at thread exit) counts the exit.
    static EXIT_GUARD: RefCell<Option<ExitGuard>> = const { RefCell::new(None) };
}

struct ExitGuard(Arc<AtomicUsize>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Each node waits at a barrier of `workers` parties, so each runs on a different worker,
/// and leaves a thread-local guard there that counts the worker's exit.
struct OnEveryWorker {
    barrier: Barrier,
    exited: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl NodeRunner for OnEveryWorker {
    fn run(&self, _cx: &NodeCx<'_, Self>) -> Verdict {
        EXIT_GUARD.with(|g| {
            g.borrow_mut()
                .get_or_insert_with(|| ExitGuard(self.exited.clone()));
        });
        self.barrier.wait();
        Verdict::Completed
    }
}

impl Drop for OnEveryWorker {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

fn start_on_every_worker(
    pool: &Pool,
    workers: usize,
) -> (RunHandle<OnEveryWorker>, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let exited = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let h = pool.start(
        Arc::new(Dag::new(workers, &[]).unwrap()),
        OnEveryWorker {
            barrier: Barrier::new(workers),
            exited: exited.clone(),
            dropped: dropped.clone(),
        },
    );
    (h, exited, dropped)
}

#[test]
fn dropping_the_pool_after_its_runs_stops_every_worker() {
    // Not necessarily before `drop` returns: the last reference to the pool may be the run's
    // own, given up by the worker that finished the run just after `wait` returned; that
    // worker joins the others but cannot join itself, and exits on its own right after.
    let workers = 3;
    let pool = Pool::new(workers, "t-drop");
    let (h, exited, dropped) = start_on_every_worker(&pool, workers);
    wait(&h);
    assert_eq!(exited.load(SeqCst), 0);
    drop(h);
    pool.shutdown_and_join();
    let t0 = Instant::now();
    while !dropped.load(SeqCst) {
        assert!(t0.elapsed() < LIMIT, "the run was never dropped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    while exited.load(SeqCst) < workers {
        assert!(
            t0.elapsed() < LIMIT,
            "{} workers exited",
            exited.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(exited.load(SeqCst), workers);
}

#[test]
fn an_idle_pool_drops_cleanly() {
    for w in [0, 1, 4] {
        let pool = Pool::new(w, "t-idle");
        assert_eq!(pool.workers(), w.max(1));
        let clone = pool.clone();
        drop(pool);
        clone.shutdown_and_join();
    }
}
