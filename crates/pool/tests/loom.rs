//! Loom models of the pool's protocol: join counters, node states (deferral, requeue, outside
//! completion), the sleep/wake protocol, run completion and pool shutdown.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p nerv-pool --release --test loom` (or
//! `.ci/loom.sh`). Under loom the pool's deques are mutex-protected queues and idle workers do
//! not spin (see `src/queue.rs`, `src/sync.rs`), so every model explores the real protocol code.
//!
//! Each model keeps its state space small: at most two workers, a handful of nodes, and a
//! preemption bound (`LOOM_MAX_PREEMPTIONS` overrides it). Workers never assert: a runner
//! records what it saw in [`Probe`], and the model's main thread checks it after `wait()`, so a
//! violation is reported as a test failure instead of aborting the process (a panic on a
//! worker aborts by design).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::{Arc, Notify};
use nerv_pool::{Dag, NodeCx, NodeRunner, NodeState, NotDeferred, Pool, Upstream, Verdict};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Runs `f` under loom with at most `preemptions` preemptions per execution (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemptions);
    }
    b.check(f);
}

/// A one-shot event (loom's `Notify` alone may wake spuriously).
struct Signal {
    flag: AtomicBool,
    notify: Notify,
}

impl Signal {
    fn new() -> Signal {
        Signal {
            flag: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    fn set(&self) {
        self.flag.store(true, Release);
        self.notify.notify();
    }

    /// Blocks until `set` was called (by one waiter at a time).
    fn wait(&self) {
        while !self.flag.load(Acquire) {
            self.notify.wait();
        }
    }
}

/// What a [`Probe`] runner does on attempt `attempt` (0-based) of a node.
type Plan = fn(&Seen, &NodeCx<'_, Probe>, usize) -> Verdict;

/// Observations of a run, written by the runner on the workers and checked by the model.
struct Seen {
    /// Attempts per node.
    runs: Vec<AtomicUsize>,
    /// Upstream seen by each node's last attempt: 0 none yet, 1 Ok, 2 Cancelled, 3 + i Failed(i).
    upstream: Vec<AtomicUsize>,
    /// Protocol violations seen on a worker (a node that ran before a predecessor finished).
    bad: AtomicUsize,
    /// Calls of `NodeRunner::finished`.
    finished: AtomicUsize,
    /// Signalled by the first attempt of the node a model acts on from outside.
    started: Signal,
    /// Signalled by the second attempt of that node.
    again: Signal,
}

impl Seen {
    fn new(nodes: usize) -> Arc<Seen> {
        Arc::new(Seen {
            runs: (0..nodes).map(|_| AtomicUsize::new(0)).collect(),
            upstream: (0..nodes).map(|_| AtomicUsize::new(0)).collect(),
            bad: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            started: Signal::new(),
            again: Signal::new(),
        })
    }

    fn runs(&self, node: u32) -> usize {
        self.runs[node as usize].load(Relaxed)
    }

    fn upstream(&self, node: u32) -> usize {
        self.upstream[node as usize].load(Relaxed)
    }
}

fn encode(u: Upstream) -> usize {
    match u {
        Upstream::Ok => 1,
        Upstream::Cancelled => 2,
        Upstream::Failed(i) => 3 + i as usize,
    }
}

/// A runner that counts attempts, checks that every predecessor has run (its count must be
/// visible: Relaxed loads, so only the pool's own happens-before edges make it so) and
/// follows a [`Plan`].
struct Probe {
    seen: Arc<Seen>,
    plan: Plan,
}

impl NodeRunner for Probe {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        let node = cx.node();
        for &p in cx.dag().predecessors(node) {
            if self.seen.runs(p) == 0 {
                self.seen.bad.fetch_add(1, Relaxed);
            }
        }
        self.seen.upstream[node as usize].store(encode(cx.upstream()), Relaxed);
        let attempt = self.seen.runs[node as usize].fetch_add(1, Relaxed);
        // Only a node's first run is claimed ready; every later one was re-queued.
        if cx.is_first_run() != (attempt == 0) {
            self.seen.bad.fetch_add(1, Relaxed);
        }
        (self.plan)(&self.seen, cx, attempt)
    }

    fn finished(&self, _run: &nerv_pool::RunHandle<Self>) {
        self.seen.finished.fetch_add(1, Relaxed);
    }
}

fn dag(nodes: usize, edges: &[(u32, u32)]) -> Arc<Dag> {
    Arc::new(Dag::new(nodes, edges).unwrap())
}

fn complete_all(_: &Seen, _: &NodeCx<'_, Probe>, _: usize) -> Verdict {
    Verdict::Completed
}

/// Node 0's first attempt signals `started` and defers; every other attempt completes.
fn defer_first_of_0(seen: &Seen, cx: &NodeCx<'_, Probe>, attempt: usize) -> Verdict {
    if cx.node() == 0 && attempt == 0 {
        seen.started.set();
        Verdict::Deferred
    } else {
        Verdict::Completed
    }
}

/// Every attempt of node 0 defers (it finishes only through `complete`); the first one signals
/// `started`, the second one `again`.
fn defer_all_of_0(seen: &Seen, cx: &NodeCx<'_, Probe>, attempt: usize) -> Verdict {
    if cx.node() == 0 {
        match attempt {
            0 => seen.started.set(),
            1 => seen.again.set(),
            _ => {}
        }
        Verdict::Deferred
    } else {
        Verdict::Completed
    }
}

/// Diamond 0→1, 0→2, 1→3, 2→3 on two workers: every node runs exactly once, after its
/// predecessors; the run finishes once; `wait` returns; dropping the pool joins the workers.
#[test]
fn loom_diamond() {
    model(2, || {
        let pool = Pool::new(2, "loom");
        let seen = Seen::new(4);
        let h = pool.start(
            dag(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]),
            Probe {
                seen: seen.clone(),
                plan: complete_all,
            },
        );
        h.wait();
        assert!(h.is_finished());
        for n in 0..4 {
            assert_eq!(seen.runs(n), 1, "node {n} ran once");
            assert_eq!(h.state(n), NodeState::Completed);
            assert_eq!(seen.upstream(n), 1);
        }
        assert_eq!(seen.bad.load(Relaxed), 0, "a node ran before a predecessor");
        drop(h);
        pool.shutdown_and_join();
        // `finished` ran before `wait` returned.
        assert_eq!(seen.finished.load(Relaxed), 1);
    });
}

/// The diamond of a ranked graph on two workers: ready nodes go through the shared ready heap
/// (no inline successor); every node runs once, after its predecessors, and no wake-up is lost
/// between a push to the heap and a worker going to sleep.
#[test]
fn loom_ranked_diamond() {
    model(2, || {
        let pool = Pool::new(2, "loom");
        let seen = Seen::new(4);
        let mut d = Dag::new(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]).expect("valid");
        d.set_ranks([3, 2, 1, 0]);
        let h = pool.start(
            Arc::new(d),
            Probe {
                seen: seen.clone(),
                plan: complete_all,
            },
        );
        h.wait();
        for n in 0..4 {
            assert_eq!(seen.runs(n), 1, "node {n} ran once");
            assert_eq!(h.state(n), NodeState::Completed);
        }
        assert_eq!(seen.bad.load(Relaxed), 0, "a node ran before a predecessor");
        drop(h);
        pool.shutdown_and_join();
    });
}

/// The sleep protocol: the only worker runs node 0, which defers, and goes to sleep; the test
/// thread completes node 0, which injects node 1 and must wake the worker (a lost wake-up
/// leaves the worker asleep and `wait` blocked: loom reports a deadlock).
#[test]
fn loom_sleep_wake_on_outside_completion() {
    model(3, || {
        let pool = Pool::new(1, "loom");
        let seen = Seen::new(2);
        let h = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen.clone(),
                plan: defer_first_of_0,
            },
        );
        seen.started.wait();
        // Running (the worker applies the verdict) or deferred (released from here).
        assert_eq!(h.complete(0, Verdict::Completed), Ok(()));
        h.wait();
        assert_eq!(seen.runs(0), 1);
        assert_eq!(seen.runs(1), 1);
        assert_eq!(seen.upstream(1), 1);
        assert_eq!(seen.bad.load(Relaxed), 0);
        assert_eq!(
            h.complete(0, Verdict::Completed),
            Err(NotDeferred { node: 0 })
        );
        drop(h);
        drop(pool);
    });
}

/// The sleep protocol with two workers: both may be asleep (or going to sleep) when the
/// completion from outside injects the two successors of node 0.
///
/// One preemption only: two idle workers cycling through the protocol make the state space
/// explode (about 15 minutes at two). The one-worker model above explores the sleeper's side
/// with three.
#[test]
fn loom_sleep_wake_two_workers() {
    model(1, || {
        let pool = Pool::new(2, "loom");
        let seen = Seen::new(3);
        let h = pool.start(
            dag(3, &[(0, 1), (0, 2)]),
            Probe {
                seen: seen.clone(),
                plan: defer_first_of_0,
            },
        );
        seen.started.wait();
        assert_eq!(h.complete(0, Verdict::Completed), Ok(()));
        h.wait();
        for n in 0..3 {
            assert_eq!(seen.runs(n), 1, "node {n} ran once");
        }
        assert_eq!(seen.bad.load(Relaxed), 0);
        drop(h);
        drop(pool);
    });
}

/// Requeue from outside, racing the worker's RUNNING → DEFERRED transition (loom explores
/// both orders: REQUEUE applied by the worker, or DEFERRED → QUEUED by `requeue`): node 0 runs
/// exactly once more, then its successor once.
#[test]
fn loom_requeue_racing_deferral() {
    model(3, || {
        let pool = Pool::new(1, "loom");
        let seen = Seen::new(2);
        let h = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen.clone(),
                plan: defer_first_of_0,
            },
        );
        seen.started.wait();
        assert_eq!(h.requeue(0), Ok(()));
        h.wait();
        assert_eq!(seen.runs(0), 2, "node 0 ran again exactly once");
        assert_eq!(seen.runs(1), 1);
        assert_eq!(h.state(0), NodeState::Completed);
        assert_eq!(seen.bad.load(Relaxed), 0);
        assert_eq!(h.requeue(0), Err(NotDeferred { node: 0 }));
        drop(h);
        drop(pool);
    });
}

/// Node 0's first attempt requeues itself while still running (state REQUEUE, applied by the
/// worker when the runner returns Deferred); the second attempt completes.
fn requeue_self_first_of_0(_: &Seen, cx: &NodeCx<'_, Probe>, attempt: usize) -> Verdict {
    if cx.node() == 0 && attempt == 0 {
        match cx.handle().requeue(0) {
            Ok(()) => Verdict::Deferred,
            // Never: the node is running. Completing makes the model's count check fail.
            Err(_) => Verdict::Completed,
        }
    } else {
        Verdict::Completed
    }
}

/// Requeue while running, on two workers (either may pick the requeued job up).
#[test]
fn loom_requeue_while_running() {
    model(2, || {
        let pool = Pool::new(2, "loom");
        let seen = Seen::new(2);
        let h = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen.clone(),
                plan: requeue_self_first_of_0,
            },
        );
        h.wait();
        assert_eq!(seen.runs(0), 2);
        assert_eq!(seen.runs(1), 1);
        assert_eq!(seen.bad.load(Relaxed), 0);
        drop(h);
        drop(pool);
    });
}

/// Two threads complete node 0 (with different verdicts) while its runner returns Deferred:
/// exactly one completion is accepted, the other gets `NotDeferred`; the accepted verdict is
/// node 0's final state; node 1 runs once and sees it as its upstream.
#[test]
fn loom_complete_racing() {
    model(2, || {
        let pool = Pool::new(1, "loom");
        let seen = Seen::new(2);
        let h = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen.clone(),
                plan: defer_all_of_0,
            },
        );
        seen.started.wait();
        let h2 = h.clone();
        let t = loom::thread::spawn(move || h2.complete(0, Verdict::Failed));
        let mine = h.complete(0, Verdict::Completed);
        let theirs = t.join().unwrap();
        assert!(
            mine.is_ok() != theirs.is_ok(),
            "exactly one completion is accepted: {mine:?} {theirs:?}"
        );
        assert_eq!(mine.err().or(theirs.err()), Some(NotDeferred { node: 0 }));
        h.wait();
        assert_eq!(seen.runs(0), 1);
        assert_eq!(seen.runs(1), 1, "the successor ran once");
        if mine.is_ok() {
            assert_eq!(h.state(0), NodeState::Completed);
            assert_eq!(seen.upstream(1), 1);
            assert_eq!(h.upstream(1), Upstream::Ok);
        } else {
            assert_eq!(h.state(0), NodeState::Failed);
            assert_eq!(seen.upstream(1), 3);
            assert_eq!(h.upstream(1), Upstream::Failed(0));
        }
        drop(h);
        drop(pool);
    });
}

/// The test thread drops its `Pool` right after starting a run: the run's own clone keeps the
/// pool alive, and whoever drops the run last (possibly the worker that retires the last node,
/// which must not join itself) shuts the pool down.
#[test]
fn loom_pool_dropped_during_run() {
    model(3, || {
        let pool = Pool::new(1, "loom");
        let seen = Seen::new(2);
        let h = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen.clone(),
                plan: complete_all,
            },
        );
        drop(pool);
        h.wait();
        drop(h);
        assert_eq!(seen.runs(0), 1);
        assert_eq!(seen.runs(1), 1);
    });
}

/// Node 0's first attempt requeues itself while running, signals `started` and defers;
/// every later attempt signals `again` and defers: node 0 finishes only through `complete`.
fn requeue_self_then_defer_0(seen: &Seen, cx: &NodeCx<'_, Probe>, attempt: usize) -> Verdict {
    if cx.node() == 0 {
        if attempt == 0 {
            if cx.handle().requeue(0).is_err() {
                seen.bad.fetch_add(1, Relaxed);
            }
            seen.started.set();
        } else {
            seen.again.set();
        }
        Verdict::Deferred
    } else {
        Verdict::Completed
    }
}

/// Regression model of a fixed bug (aec75af): a completion accepted by `complete` while the
/// node is in state REQUEUE was lost.
///
/// Node 0 finishes only through `complete` (every attempt defers). Its first attempt requeues
/// itself while running; the test thread then completes it, or, when that is refused because
/// the node is already queued again, completes its second attempt. Every accepted completion
/// must finish the node. The interleaving that failed (one preemption):
///
/// 1. worker: claims node 0 (RUNNING); the runner calls `requeue(0)`: CAS RUNNING → REQUEUE;
///    it returns Deferred;
/// 2. worker, `RunInner::attempt`: CAS RUNNING → DEFERRED fails, having read REQUEUE;
/// 3. test thread, `RunHandle::complete(0, Completed)`: reads REQUEUE, CAS REQUEUE →
///    COMPLETING+0 succeeds, returns `Ok(())` ("the worker applies the verdict");
/// 4. worker: a plain `store(QUEUED)` overwrote COMPLETING and queued node 0 again;
/// 5. the second attempt deferred (state DEFERRED): the accepted completion was lost, nobody
///    completed node 0 again, the run never finished and `wait` blocked forever (loom reported
///    a deadlock).
///
/// The fix: in `attempt`, the `store(QUEUED)` after `Err(REQUEUE)` is a CAS REQUEUE → QUEUED
/// now, and when it fails with `c >= COMPLETING` the worker applies `COMPLETED + (c -
/// COMPLETING)` as on the `Err(c) if c >= COMPLETING` arm (the completion wins over the requeue, as it does when
/// it comes before the worker's first CAS).
#[test]
fn loom_bug_complete_lost_after_requeue() {
    model(2, || {
        let pool = Pool::new(1, "loom");
        let seen = Seen::new(1);
        let h = pool.start(
            dag(1, &[]),
            Probe {
                seen: seen.clone(),
                plan: requeue_self_then_defer_0,
            },
        );
        seen.started.wait();
        if h.complete(0, Verdict::Completed).is_err() {
            // Already queued again: complete the second attempt instead.
            seen.again.wait();
            assert_eq!(h.complete(0, Verdict::Completed), Ok(()));
        }
        h.wait();
        assert_eq!(h.state(0), NodeState::Completed);
        assert_eq!(seen.bad.load(Relaxed), 0);
        drop(h);
        drop(pool);
    });
}

/// A zero-sized output with drop glue (a token whose drop matters).
struct Token;

impl Drop for Token {
    fn drop(&mut self) {}
}

/// BUG: two racing `OnceArena::set` of a zero-sized value are both accepted.
///
/// For a zero-sized `T`, `set` skips the CAS: it loads the slot state (EMPTY), forgets the
/// value and stores FULL. Two threads can both load EMPTY before either stores FULL: both get
/// `Ok(())` (the module promises that "a second `set` is refused"), both values are forgotten,
/// and the arena drops only one of them (the other's `Drop` never runs).
///
/// Fix: for zero-sized `T`, replace the load + store with
/// `st.compare_exchange(EMPTY, FULL, Release, Relaxed)`, forgetting the value only on success
/// (and returning `Err(value)` on failure).
#[test]
fn loom_bug_arena_zero_sized_set_twice() {
    model(2, || {
        let mut layout = nerv_pool::ArenaLayout::new();
        let k = layout.push::<Token>();
        let arena = Arc::new(nerv_pool::OnceArena::new(&layout));
        let a2 = arena.clone();
        let t = loom::thread::spawn(move || a2.set(k, Token).is_ok());
        let mine = arena.set(k, Token).is_ok();
        let theirs = t.join().unwrap();
        assert!(
            mine != theirs,
            "exactly one set is accepted: {mine} {theirs}"
        );
    });
}

/// Counts `finished` calls per runner type, for the stale-batch model below.
struct Finishes {
    a: AtomicUsize,
    b: AtomicUsize,
    started: Signal,
}

/// Defers its only node (signalling `started`); counts its `finished` calls in `a`.
struct DeferA(Arc<Finishes>);

impl NodeRunner for DeferA {
    fn run(&self, _cx: &NodeCx<'_, Self>) -> Verdict {
        self.0.started.set();
        Verdict::Deferred
    }

    fn finished(&self, _run: &nerv_pool::RunHandle<Self>) {
        self.0.a.fetch_add(1, Relaxed);
    }
}

/// Same layout as [`DeferA`]; completes; counts its `finished` calls in `b`.
struct CompleteB(Arc<Finishes>);

impl NodeRunner for CompleteB {
    fn run(&self, _cx: &NodeCx<'_, Self>) -> Verdict {
        Verdict::Completed
    }

    fn finished(&self, _run: &nerv_pool::RunHandle<Self>) {
        self.0.b.fetch_add(1, Relaxed);
    }
}

/// Regression model of a fixed bug (aec75af): a worker's batch kept a dangling `dyn Execute`
/// pointer (with the vtable of the run it was set for), and reused it for a new run of another
/// runner type allocated at the same address. Undefined behaviour; observable here as the
/// wrong `finished` being called.
///
/// `WorkerCtx::run_job` compares `batch_run` and `job.run` by address only and, when they
/// matched, kept the old fat pointer. `batch_run` stays set, with `done == 0`, after a job that
/// counted nothing (an attempt that deferred, a resume job that made nothing ready), and the
/// run it points to may then finish and be freed elsewhere. The interleaving that failed (one
/// worker):
///
/// 1. worker: runs node 0 of run R1 (runner type `A`): `batch_run = R1` (vtable of
///    `RunInner<A>`), the runner defers, CAS RUNNING → DEFERRED, `done` stays 0; the worker
///    is preempted before its next `find_work`;
/// 2. test thread: `complete(0)` (DEFERRED → COMPLETED) retires the last node of R1 and gives
///    up the pool's reference; dropping its handle frees R1;
/// 3. test thread: starts run R2 with runner type `B`; its `RunInner<B>` (same size) is
///    allocated where R1 was, and its root is injected;
/// 4. worker: finds R2's job; same address as `batch_run`, so no flush and `batch_run` keeps
///    `RunInner<A>`'s vtable; runs node 0 of R2 (through the job's correct pointer), `done = 1`;
/// 5. worker, idle: `flush` calls `retire(batch_run, 1)`: `<RunInner<A> as Execute>::retire`
///    on a `RunInner<B>`: `A::finished` runs on `B`'s runner, `drop_pool_ref::<A>` releases a
///    `RunInner<B>` as an `Arc<RunInner<A>>` (with different layouts: arbitrary memory
///    corruption).
///
/// Whether step 3 reuses the address depends on the allocator (glibc's does, here). Not
/// reachable through nerv, which has a single `NodeRunner` type (then the vtables agree).
///
/// The fix (`pool.rs`, `run_job`): `self.batch_run = Some(job.run)` on every job, not only
/// when the address changed (when the address is the same and `done > 0`, the run is
/// alive and is the same run, so the new pointer is equivalent; when `done == 0`, the old
/// pointer may dangle and must be replaced).
#[test]
fn loom_bug_stale_batch_run_vtable() {
    model(1, || {
        let pool = Pool::new(1, "loom");
        let f = Arc::new(Finishes {
            a: AtomicUsize::new(0),
            b: AtomicUsize::new(0),
            started: Signal::new(),
        });
        let h1 = pool.start(dag(1, &[]), DeferA(f.clone()));
        f.started.wait();
        assert_eq!(h1.complete(0, Verdict::Completed), Ok(()));
        drop(h1);
        let h2 = pool.start(dag(1, &[]), CompleteB(f.clone()));
        h2.wait();
        drop(h2);
        drop(pool);
        assert_eq!(
            (f.a.load(Relaxed), f.b.load(Relaxed)),
            (1, 1),
            "each run's own `finished` is called once"
        );
    });
}

/// Resizing: two workers, the test thread shrinks the pool to one while a fan-out runs, then
/// grows it back. Every node runs once, the run finishes (a worker that parks hands its queued
/// jobs and any wake-up it took to the other; a lost one leaves `wait` blocked: a deadlock),
/// and the pool shuts down with a worker parked.
#[test]
fn loom_resize_during_run() {
    // Preemption bound 1: bound 2 explores for about 12 minutes here.
    model(1, || {
        let pool = Pool::new(2, "loom");
        let seen = Seen::new(3);
        let h = pool.start(
            dag(3, &[(0, 1), (0, 2)]),
            Probe {
                seen: seen.clone(),
                plan: complete_all,
            },
        );
        assert_eq!(pool.set_workers(1), 1);
        h.wait();
        for n in 0..3 {
            assert_eq!(seen.runs(n), 1, "node {n} ran once");
        }
        assert_eq!(seen.bad.load(Relaxed), 0);
        // A second run on the shrunk pool, then grown back.
        let seen2 = Seen::new(2);
        let h2 = pool.start(
            dag(2, &[(0, 1)]),
            Probe {
                seen: seen2.clone(),
                plan: complete_all,
            },
        );
        assert_eq!(pool.set_workers(5), 2);
        h2.wait();
        assert_eq!(seen2.runs(1), 1);
        drop((h, h2));
        pool.shutdown_and_join();
    });
}
