//! One execution of a [`Dag`] on a [`Pool`]: per-node join counters, states and upstream
//! causes, and the protocol that moves a node from pending to finished.
//!
//! Node states (one byte each; who moves a node out of a state is listed after the arrow):
//! - `PENDING`: waiting for predecessors → the releaser whose count is the node's last one
//!   (or the start of the run, for roots) runs or queues it, and the worker
//!   that runs it CASes it to `RUNNING`.
//! - `RUNNING`: its runner is executing on a worker → the worker, with the runner's verdict: a
//!   final state (a plain store: nobody else writes a `RUNNING` node's final state), or
//!   `DEFERRED` (a CAS); [`RunHandle::complete`] may meanwhile CAS it to `COMPLETING+f`, which
//!   the worker applies instead of `DEFERRED`; [`RunHandle::requeue`] may CAS it to `REQUEUE`.
//! - `DEFERRED`: finishes later, from anywhere → `complete` (CAS to a final state: that thread
//!   releases the node) or `requeue` (`QUEUED`).
//! - `COMPLETING+f`: finished from outside while running → the worker stores `f`.
//! - `REQUEUE`: asked to run again while still running → the worker, after the runner returns,
//!   makes it `QUEUED` and queues it.
//! - `QUEUED`: queued to run again → a worker CASes it to `RUNNING`.
//! - `COMPLETED`, `FAILED`, `SKIPPED`, `CANCELLED`: final. Exactly one CAS reaches a final state
//!   per node and run, and only that thread releases the node's successors and counts it.
//!
//! Releasing a finished node: for each successor in order, record the upstream cause if the
//! node did not complete (first cause wins; the run's `any_cause` flag is set before the
//! first one, so that a run without causes never reads them), then count the node on the
//! successor's join counter, which counts finished predecessors up from zero (AcqRel; a
//! successor with a single predecessor is ready without touching its counter, and a counter
//! already at `in_degree - 1`, all others arrived, is not incremented: this release is the
//! last); the best successor that becomes ready is returned to run inline, the others are
//! queued and sleepers are woken. A run's counters, states and causes start as zeroed memory:
//! setting up a run writes nothing per node, and pages nobody writes are never touched.

use crate::dag::{Dag, NODE_BITS, NODE_MASK};
use crate::pool::{Execute, Job, Pool, Shared, WorkerCtx};
use crate::sync::{
    lock, zeroed_u32, zeroed_u8, Arc, AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Condvar, Mutex,
};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::task::{Context, Poll, Waker};
#[cfg(not(loom))]
use std::time::Duration;

const PENDING: u8 = 0;
const QUEUED: u8 = 1;
const RUNNING: u8 = 2;
const DEFERRED: u8 = 3;
const REQUEUE: u8 = 4;
const COMPLETED: u8 = 5;
const FAILED: u8 = 6;
const SKIPPED: u8 = 7;
const CANCELLED: u8 = 8;
/// `COMPLETING + (f - COMPLETED)`: finished with final state `f` by [`RunHandle::complete`]
/// while its runner was still running; the worker applies it when the runner returns.
const COMPLETING: u8 = 9;

/// No upstream problem. A failed root `r` is recorded as `r + 1` (node indices stop below
/// `2^30`, see `Dag::new`), so that a run's causes start as zeroed memory.
const NO_CAUSE: u32 = 0;
/// Most successors one call of `release` makes ready (see there).
const RELEASE_BATCH: usize = 256;
/// An upstream node was cancelled.
const CANCEL_CAUSE: u32 = u32::MAX;
// A run's records start as zeroed memory (`Pool::prepare`).
const _: () = assert!(PENDING == 0 && NO_CAUSE == 0);

/// What a runner says about one attempt at a node.
// Each final verdict's value is its node state, so that recording it is a store of that value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// The node produced its output.
    Completed = COMPLETED,
    /// The node failed for good; its descendants see it as their upstream cause.
    Failed = FAILED,
    /// The node was not run because of an upstream failure (see [`NodeCx::upstream`]).
    Skipped = SKIPPED,
    /// The node was not run (or stopped) because the run was cancelled.
    Cancelled = CANCELLED,
    /// The node finishes later through [`RunHandle::complete`] or runs again after
    /// [`RunHandle::requeue`] (async work, a retry after a delay, a subgraph).
    Deferred = DEFERRED,
}

/// A node's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Waiting for predecessors (or queued).
    Pending,
    /// Being run, or deferred (in flight).
    Running,
    /// Finished with its output.
    Completed,
    /// Failed.
    Failed,
    /// Skipped because of an upstream failure.
    Skipped,
    /// Cancelled.
    Cancelled,
}

impl NodeState {
    /// Whether the node reached a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, NodeState::Pending | NodeState::Running)
    }
}

/// Why a node's predecessors did not all complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Every predecessor completed.
    Ok,
    /// The failure of this node (a failed node, not a skipped one) is the root cause.
    Failed(u32),
    /// A predecessor was cancelled.
    Cancelled,
}

/// The work of a run's nodes, supplied by the layer above the pool.
pub trait NodeRunner: Send + Sync + Sized + 'static {
    /// Runs one attempt at the node `cx.node()`. Called once per attempt, never concurrently
    /// for the same node. Panics must be caught by the runner (a panic here aborts).
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict;

    /// Called once when every node of the run is finished, before waiters are woken.
    fn finished(&self, _run: &RunHandle<Self>) {}

    /// Runs the claimed node of `lp` and the nodes the worker runs inline after it, through
    /// [`Inline::run_each`]. The default calls [`run`](Self::run) for each. A runner overrides
    /// it to keep this loop in code compiled for the work it runs (the work of every node
    /// inline, not a call through a pointer per node); an override hands `lp` to `run_each`
    /// (a claimed node that is never run never finishes, and neither does its run).
    #[inline]
    fn run_inline(&self, lp: Inline<'_, '_, Self>) {
        lp.run_each(|cx| self.run(cx))
    }
}

/// A worker's loop over the nodes it runs one after another: the node it claimed, then the
/// best successor each finished node made ready, as long as no queued job of a higher band
/// waits. Handed to [`NodeRunner::run_inline`].
pub struct Inline<'a, 'w, R: NodeRunner> {
    run: &'a RunInner<R>,
    w: &'a mut WorkerCtx<'w>,
    node: u32,
    first: bool,
}

impl<R: NodeRunner> Inline<'_, '_, R> {
    /// Runs `f` (one attempt, returning the runner's verdict) on the claimed node, then, as
    /// long as the node it finished made a successor ready to run inline, on that successor:
    /// each verdict is recorded, a final node's successors are released, and the best one
    /// that became ready is claimed, unless a queued job of a higher band waits (then it is
    /// queued). The loop's state stays in registers, and `f` is compiled into the loop.
    #[inline(always)]
    pub fn run_each(self, mut f: impl FnMut(&NodeCx<'_, R>) -> Verdict) {
        let Inline {
            run,
            w,
            mut node,
            mut first,
        } = self;
        loop {
            let verdict = f(&NodeCx { run, node, first });
            let Some(fin) = run.conclude(node, verdict) else {
                return;
            };
            w.done += 1;
            let Some(next) = run.release(node, fin, 0, Sink::Worker(w)) else {
                return;
            };
            // A queued job of higher priority goes first: queue the successor instead. With
            // no job queued (a chain), or only jobs of the band every node of the run has (a
            // grid, whose other ready cell waits in the deque), the successor's band is not
            // even looked up.
            let queued = w.queued_bands();
            if queued != 0 && (queued & !run.uniform_bit != 0 || run.rebanded.load(Relaxed)) {
                let band = run.band(next);
                if queued & (!0u8 << (band + 1)) != 0 {
                    w.push(run.job(next), band);
                    return;
                }
            }
            run.claim_released(next);
            node = next;
            first = true;
        }
    }
}

/// What a runner may ask about the node it runs.
pub struct NodeCx<'a, R: NodeRunner> {
    run: &'a RunInner<R>,
    node: u32,
    first: bool,
}

impl<R: NodeRunner> NodeCx<'_, R> {
    /// The node being run.
    #[inline]
    pub fn node(&self) -> u32 {
        self.node
    }

    /// Whether this is the node's first run in this run: it was claimed ready, not re-queued
    /// after a [`Verdict::Deferred`]. Nothing the runner did for the node before can have
    /// happened, so a runner may skip reading its own per-node records (a cache line per node
    /// on the hot path).
    #[inline]
    pub fn is_first_run(&self) -> bool {
        self.first
    }

    /// Why the node's predecessors did not all complete, if they did not.
    #[inline]
    pub fn upstream(&self) -> Upstream {
        self.run.upstream(self.node)
    }

    /// Whether the run was cancelled.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.run.cancelled.load(Relaxed)
    }

    /// The state of another node of the run (as [`RunHandle::state`], without a handle).
    #[inline]
    pub fn state_of(&self, node: u32) -> NodeState {
        self.run.node_state(node)
    }

    /// The run's topology.
    #[inline]
    pub fn dag(&self) -> &Dag {
        &self.run.dag
    }

    /// A handle to the run, to finish a [`Verdict::Deferred`] node later.
    pub fn handle(&self) -> RunHandle<R> {
        let ptr: *const RunInner<R> = self.run;
        // SAFETY: every `RunInner` lives in an `Arc` (made by `Pool::start`), and `self.run`
        // borrows it, so the count is at least one while we add ours.
        unsafe {
            Arc::increment_strong_count(ptr);
            RunHandle {
                inner: Arc::from_raw(ptr),
            }
        }
    }
}

/// A run's completion signal: a flag, a condvar for blocking waiters, wakers for async ones.
struct Completion {
    state: Mutex<(bool, Vec<Waker>)>,
    cv: Condvar,
}

pub(crate) struct RunInner<R: NodeRunner> {
    dag: Arc<Dag>,
    runner: R,
    counters: Box<[AtomicU32]>,
    state: Box<[AtomicU8]>,
    cause: Box<[AtomicU32]>,
    /// Whether some node has recorded an upstream cause (set before the first cause is
    /// written): until then `upstream` answers without touching `cause`, so that a run where
    /// everything completes reads one array fewer per task.
    any_cause: AtomicBool,
    remaining: AtomicUsize,
    cancelled: AtomicBool,
    finished: AtomicBool,
    completion: Completion,
    pool: Pool,
    /// Whether some node's band was changed while the run goes on (then `bands` holds every
    /// node's band); read on every push, set once.
    rebanded: AtomicBool,
    bands: Mutex<Option<Box<[u8]>>>,
    /// The bit of the run's one band if every node has it as the run starts (0 if the nodes'
    /// bands differ): while the run is not rebanded, a successor released inline cannot be
    /// of a lower band than a queued job of that band, whose band need not be looked up.
    uniform_bit: u8,
}

/// Where released jobs go: a worker's own deques, or the shared injector.
enum Sink<'s, 'w> {
    Worker(&'s mut WorkerCtx<'w>),
    Injector(&'s Shared),
}

impl<R: NodeRunner> RunInner<R> {
    /// The state of `node` (Acquire: a `Completed` node's writes are visible).
    fn node_state(&self, node: u32) -> NodeState {
        match self.state[node as usize].load(Acquire) {
            PENDING | QUEUED => NodeState::Pending,
            RUNNING | DEFERRED | REQUEUE => NodeState::Running,
            c if c >= COMPLETING => NodeState::Running,
            COMPLETED => NodeState::Completed,
            FAILED => NodeState::Failed,
            SKIPPED => NodeState::Skipped,
            _ => NodeState::Cancelled,
        }
    }

    /// The priority band `node` is queued at.
    #[inline(always)]
    fn band(&self, node: u32) -> u8 {
        if !self.rebanded.load(Acquire) {
            return self.dag.band(node);
        }
        self.band_slow(node)
    }

    #[cold]
    #[inline(never)]
    fn band_slow(&self, node: u32) -> u8 {
        match &*lock(&self.bands) {
            Some(b) => b[node as usize],
            None => self.dag.band(node),
        }
    }

    /// Why `node`'s predecessors did not all complete.
    ///
    /// The runner of `node` sees every cause its predecessors recorded: each of them stored
    /// `any_cause` and then the cause before its releasing decrement (or its own run of `node`
    /// inline), and `node` is claimed after the last of those.
    #[inline(always)]
    fn upstream(&self, node: u32) -> Upstream {
        if !self.any_cause.load(Relaxed) {
            return Upstream::Ok;
        }
        match self.cause[node as usize].load(Relaxed) {
            NO_CAUSE => Upstream::Ok,
            CANCEL_CAUSE => Upstream::Cancelled,
            c => Upstream::Failed(c - 1),
        }
    }

    fn job(&self, node: u32) -> Job {
        Job {
            run: NonNull::from(self as &dyn Execute),
            node,
            resume: 0,
        }
    }

    /// Makes `node` runnable again by a worker (it must have been moved to `QUEUED`).
    fn queue(&self, node: u32) {
        self.pool.shared().inject(self.job(node), self.band(node));
    }

    /// Claims a ready (or re-queued) node for running: `Some(true)` if it was ready for the
    /// first time (`PENDING`), `Some(false)` if re-queued (`QUEUED`), `None` if it is not
    /// this job's to run. No other thread writes the state of a `PENDING` node whose counter
    /// reached zero or of a `QUEUED` node (only the one job that exists for it runs this), so
    /// a plain store suffices.
    #[inline(always)]
    fn claim(&self, node: u32) -> Option<bool> {
        let st = &self.state[node as usize];
        let prior = st.load(Acquire);
        match prior {
            PENDING | QUEUED => {
                st.store(RUNNING, Relaxed);
                Some(prior == PENDING)
            }
            _ => None,
        }
    }

    /// Claims a node that the caller's release just made ready: it is `PENDING`, and no other
    /// thread writes its state before it is claimed (see [`claim`](Self::claim)).
    #[inline(always)]
    fn claim_released(&self, node: u32) {
        debug_assert_eq!(self.state[node as usize].load(Relaxed), PENDING);
        self.state[node as usize].store(RUNNING, Relaxed);
    }

    /// Records the runner's verdict on an attempt at a claimed node; returns its final state,
    /// or `None` if the node is deferred (someone else will finish it).
    #[inline(always)]
    fn conclude(&self, node: u32, verdict: Verdict) -> Option<u8> {
        let st = &self.state[node as usize];
        let fin = match verdict {
            Verdict::Deferred => {
                return match st.compare_exchange(RUNNING, DEFERRED, AcqRel, Acquire) {
                    Ok(_) => None,
                    Err(REQUEUE) => match st.compare_exchange(REQUEUE, QUEUED, AcqRel, Acquire) {
                        Ok(_) => {
                            self.queue(node);
                            None
                        }
                        // `complete` won over the requeue: apply its verdict.
                        Err(c) if c >= COMPLETING => {
                            let f = COMPLETED + (c - COMPLETING);
                            st.store(f, Release);
                            Some(f)
                        }
                        Err(_) => None,
                    },
                    Err(c) if c >= COMPLETING => {
                        let f = COMPLETED + (c - COMPLETING);
                        st.store(f, Release);
                        Some(f)
                    }
                    Err(_) => None,
                };
            }
            // A final verdict's value is its state.
            final_verdict => final_verdict as u8,
        };
        // A `COMPLETING` or `REQUEUE` written meanwhile by `complete`/`requeue` is overridden:
        // the runner's own final verdict wins, and the node is still released once, here.
        st.store(fin, Release);
        Some(fin)
    }

    /// Releases the successors of a node that reached final state `fin`, from successor index
    /// `from` on; returns the best one that became ready (to run inline) and queues the rest.
    ///
    /// At most `RELEASE_BATCH` successors are released per call: if more remain, a job that
    /// resumes the release is queued first (at the old end of the deque, where thieves take
    /// it), so a node with a million successors never fills a deque with a million jobs, and
    /// other workers help release them.
    #[inline(always)]
    fn release(&self, node: u32, fin: u8, from: usize, mut sink: Sink<'_, '_>) -> Option<u32> {
        let all = self.dag.release_list(node);
        if from >= all.len() {
            return None;
        }
        // An only successor (a chain's next link) runs inline if it is ready.
        if let [t] = *all {
            if !self.dag.is_ranked() {
                let s = t & NODE_MASK;
                if fin != COMPLETED {
                    self.record_cause_cold(node, fin, s);
                }
                return self.count_release(t).then_some(s);
            }
        }
        // Two successors of a completed node (a tree's children, a grid cell's right and lower
        // neighbours): as the loop below does it, without a cause to record or a batch to
        // resume. The first ready one runs inline, the other is queued.
        if let [a, b] = *all {
            if fin == COMPLETED && from == 0 && !self.dag.is_ranked() {
                let (sa, sb) = (a & NODE_MASK, b & NODE_MASK);
                let ready_b = self.count_release(b);
                return match (self.count_release(a), ready_b) {
                    (true, true) => {
                        match &mut sink {
                            Sink::Worker(w) => {
                                w.push(self.job(sb), self.band(sb));
                                w.notify(1);
                            }
                            Sink::Injector(sh) => sh.inject(self.job(sb), self.band(sb)),
                        }
                        Some(sa)
                    }
                    (true, false) => Some(sa),
                    (false, true) => Some(sb),
                    (false, false) => None,
                };
            }
        }
        let end = all.len().min(from + RELEASE_BATCH);
        let succ = &all[from..end];
        let cause = self.cause_of(node, fin);
        let mut pushed = 0;
        if end < all.len() {
            let resume = Job {
                resume: end as u32,
                ..self.job(node)
            };
            // Queued at the band of the best successor it will release.
            let band = self.band(all[end] & NODE_MASK);
            match &mut sink {
                Sink::Worker(w) => w.push(resume, band),
                Sink::Injector(sh) => sh.inject(resume, band),
            }
            pushed += 1;
        }
        if self.dag.is_ranked() {
            self.release_ranked(succ, cause);
            if pushed > 0 {
                if let Sink::Worker(w) = &sink {
                    w.notify(pushed);
                }
            }
            return None;
        }
        // Successors are sorted best first. Walking them backwards, each newly ready one
        // becomes the inline candidate and the previous candidate is queued: the best ready
        // successor runs inline, and the LIFO deque pops the others best first.
        let mut next: Option<u32> = None;
        for &t in succ.iter().rev() {
            let s = t & NODE_MASK;
            self.record_cause(s, cause);
            let ready = self.count_release(t);
            if ready {
                if let Some(prev) = next.replace(s) {
                    match &mut sink {
                        Sink::Worker(w) => w.push(self.job(prev), self.band(prev)),
                        Sink::Injector(sh) => sh.inject(self.job(prev), self.band(prev)),
                    }
                    pushed += 1;
                }
            }
        }
        if pushed > 0 {
            if let Sink::Worker(w) = &sink {
                w.notify(pushed);
            }
        }
        next
    }

    /// What the successors of `node`, finished in state `fin`, record as their upstream cause
    /// (`NO_CAUSE` if it completed); sets `any_cause` before the first cause is recorded.
    #[inline(always)]
    fn cause_of(&self, node: u32, fin: u8) -> u32 {
        let cause = match fin {
            COMPLETED => NO_CAUSE,
            FAILED => node + 1,
            SKIPPED => match self.cause[node as usize].load(Relaxed) {
                NO_CAUSE => node + 1, // skipped by its runner's own choice: it is the root
                c => c,
            },
            _ => CANCEL_CAUSE,
        };
        if cause != NO_CAUSE && !self.any_cause.load(Relaxed) {
            self.any_cause.store(true, Relaxed);
        }
        cause
    }

    /// Records the cause of `node`'s final state `fin` (not `COMPLETED`) for its successor `s`:
    /// out of the hot path, where a chain's links complete.
    #[cold]
    #[inline(never)]
    fn record_cause_cold(&self, node: u32, fin: u8, s: u32) {
        self.record_cause(s, self.cause_of(node, fin));
    }

    /// Records `cause` as `s`'s upstream cause unless it has one (the first cause wins).
    #[inline(always)]
    fn record_cause(&self, s: u32, cause: u32) {
        if cause != NO_CAUSE {
            let _ = self.cause[s as usize].compare_exchange(NO_CAUSE, cause, Relaxed, Relaxed);
        }
    }

    /// Counts one predecessor of the node of successor entry `t` (see [`NODE_BITS`]) as
    /// finished; returns whether it was the last one.
    ///
    /// A counter counts the predecessors that finished, up from zero (a run's counters start
    /// as zeroed memory, so that setting up a run writes nothing per node), and compares with
    /// the in-degree that the entry carries (read from the Dag only when it is 4 or more). A
    /// node with one predecessor is ready at once, without touching its counter. For an
    /// in-degree of 2 or 3, a counter that reads `in_degree - 1` means every other
    /// predecessor has already counted itself: this release is the last one and needs no RMW
    /// (the Acquire load pairs with the other predecessors' releasing increments). A node of
    /// higher in-degree (a fan-in) is counted by the RMW alone: there the load would almost
    /// never find the last release, and it costs a second transfer of a contended line
    /// (read shared, then owned).
    #[inline(always)]
    fn count_release(&self, t: u32) -> bool {
        let (s, small) = (t & NODE_MASK, t >> NODE_BITS);
        if small == 1 {
            return true;
        }
        let c = &self.counters[s as usize];
        if small == 0 {
            return c.fetch_add(1, AcqRel) == self.dag.in_degree(s) - 1;
        }
        let last = small - 1;
        c.load(Acquire) == last || c.fetch_add(1, AcqRel) == last
    }

    /// [`release`](Self::release) for a ranked run: every successor that became ready goes to
    /// the pool's shared ready heap, and none runs inline, so that the next job of every
    /// worker is the best ready one of all (a list schedule by band, then rank). Ranked graphs
    /// are graphs of coarse tasks with known durations: one short lock per task is nothing
    /// beside them, and a small `Vec` per release is allowed here.
    #[cold]
    #[inline(never)]
    fn release_ranked(&self, succ: &[u32], cause: u32) {
        let mut ready = Vec::new();
        for &t in succ {
            let s = t & NODE_MASK;
            self.record_cause(s, cause);
            if self.count_release(t) {
                ready.push((self.job(s), self.band(s), self.dag.rank(s).unwrap_or(0)));
            }
        }
        self.pool.shared().push_ranked(&ready);
    }

    /// Finishes the run: tells the runner, wakes waiters. Called once, by whoever retired
    /// the last node, while the pool's reference is still held.
    fn finish(&self) {
        self.finished.store(true, Release);
        let handle = NodeCx {
            run: self,
            node: 0,
            first: false,
        }
        .handle();
        self.runner.finished(&handle);
        drop(handle);
        let wakers = {
            let mut st = lock(&self.completion.state);
            st.0 = true;
            std::mem::take(&mut st.1)
        };
        self.completion.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }
}

impl<R: NodeRunner> Execute for RunInner<R> {
    fn execute(&self, mut node: u32, resume: u32, w: &mut WorkerCtx<'_>) {
        if resume > 0 {
            let fin = self.state[node as usize].load(Acquire);
            match self.release(node, fin, resume as usize, Sink::Worker(w)) {
                Some(next) if w.has_above(self.band(next)) => {
                    w.push(self.job(next), self.band(next));
                    return;
                }
                Some(next) => node = next,
                None => return,
            }
        }
        let Some(first) = self.claim(node) else {
            return;
        };
        self.runner.run_inline(Inline {
            run: self,
            w,
            node,
            first,
        });
    }

    fn retire(&self, n: usize) -> bool {
        if self.remaining.fetch_sub(n, AcqRel) == n {
            self.finish();
            true
        } else {
            false
        }
    }

    fn dropper(&self) -> unsafe fn(NonNull<()>) {
        drop_pool_ref::<R>
    }
}

/// Gives up the pool's reference to a run.
///
/// # Safety
/// `p` must be the pointer of a `RunInner<R>` whose pool reference (made by `Arc::into_raw` in
/// `Pool::start`) has not been given up yet; it is given up here, once.
unsafe fn drop_pool_ref<R: NodeRunner>(p: NonNull<()>) {
    // SAFETY: guaranteed by the caller.
    unsafe { drop(Arc::from_raw(p.cast::<RunInner<R>>().as_ptr())) }
}

/// A handle to a run started with [`Pool::start`]: wait for it, cancel it, inspect node states,
/// and finish deferred nodes. Cloning is cheap.
pub struct RunHandle<R: NodeRunner> {
    inner: Arc<RunInner<R>>,
}

impl<R: NodeRunner> Clone for RunHandle<R> {
    fn clone(&self) -> Self {
        RunHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<R: NodeRunner> std::fmt::Debug for RunHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("nodes", &self.inner.dag.len())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Error from [`RunHandle::complete`] and [`RunHandle::requeue`]: the node was not in a state
/// that allows it (already finished, or not deferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotDeferred {
    /// The node.
    pub node: u32,
}

impl std::fmt::Display for NotDeferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} is not running or deferred", self.node)
    }
}
impl std::error::Error for NotDeferred {}

impl<R: NodeRunner> RunHandle<R> {
    /// The runner given to [`Pool::start`].
    pub fn runner(&self) -> &R {
        &self.inner.runner
    }

    /// The run's topology.
    pub fn dag(&self) -> &Arc<Dag> {
        &self.inner.dag
    }

    /// Asks the run to stop: nodes not yet started are given to their runner with
    /// [`NodeCx::is_cancelled`] true; running nodes can poll the same flag.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Release);
    }

    /// Whether [`RunHandle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Acquire)
    }

    /// Whether every node reached a final state.
    pub fn is_finished(&self) -> bool {
        self.inner.finished.load(Acquire)
    }

    /// Blocks until the run is finished.
    pub fn wait(&self) {
        let mut st = lock(&self.inner.completion.state);
        while !st.0 {
            st = match self.inner.completion.cv.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Blocks until the run is finished or `timeout` passed; returns whether it finished.
    #[cfg(not(loom))]
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = lock(&self.inner.completion.state);
        while !st.0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.inner.completion.cv.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Polls for completion, registering `cx`'s waker (for an async wait).
    pub fn poll_finished(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.inner.completion.state);
        if st.0 {
            return Poll::Ready(());
        }
        if !st.1.iter().any(|w| w.will_wake(cx.waker())) {
            st.1.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The state of `node`.
    pub fn state(&self, node: u32) -> NodeState {
        self.inner.node_state(node)
    }

    /// Whether `node` is deferred: its runner returned [`Verdict::Deferred`] and it waits for
    /// [`complete`](Self::complete) or [`requeue`](Self::requeue) (a
    /// [`NodeState::Running`] node that no worker is running now).
    pub fn is_deferred(&self, node: u32) -> bool {
        self.inner.state[node as usize].load(Acquire) == DEFERRED
    }

    /// How many nodes are [`NodeState::Completed`] now: one tight pass over the node states
    /// (a finished run's report checks this before counting every state one by one).
    pub fn completed_count(&self) -> usize {
        self.inner
            .state
            .iter()
            .filter(|s| s.load(Acquire) == COMPLETED)
            .count()
    }

    /// Moves `node` to priority band `band` (clamped to the highest band) for the rest of the
    /// run: it takes effect when the node becomes ready (a node already queued keeps its
    /// place).
    pub fn set_band(&self, node: u32, band: u8) {
        let inner = &*self.inner;
        let mut b = lock(&inner.bands);
        let bands = b.get_or_insert_with(|| {
            (0..inner.dag.len() as u32)
                .map(|i| inner.dag.band(i))
                .collect()
        });
        bands[node as usize] = band.min(crate::dag::BANDS as u8 - 1);
        inner.rebanded.store(true, Release);
    }

    /// Why `node`'s predecessors did not all complete (the root failure for a skipped node).
    pub fn upstream(&self, node: u32) -> Upstream {
        self.inner.upstream(node)
    }

    /// Finishes a running or deferred node with a final verdict, releasing its successors
    /// (they are queued on the pool). Fails if the node is not running or deferred, so that a
    /// node is finished exactly once.
    ///
    /// # Panics
    /// If `verdict` is [`Verdict::Deferred`].
    pub fn complete(&self, node: u32, verdict: Verdict) -> Result<(), NotDeferred> {
        let fin = match verdict {
            Verdict::Completed => COMPLETED,
            Verdict::Failed => FAILED,
            Verdict::Skipped => SKIPPED,
            Verdict::Cancelled => CANCELLED,
            Verdict::Deferred => panic!("complete() needs a final verdict"),
        };
        let st = &self.inner.state[node as usize];
        let mut cur = st.load(Acquire);
        loop {
            let (next, ours) = match cur {
                DEFERRED => (fin, true),
                RUNNING | REQUEUE => (COMPLETING + (fin - COMPLETED), false),
                _ => return Err(NotDeferred { node }),
            };
            match st.compare_exchange(cur, next, AcqRel, Acquire) {
                Ok(_) if ours => break,
                // Still running: the worker applies the verdict when its runner returns.
                Ok(_) => return Ok(()),
                Err(c) => cur = c,
            }
        }
        let shared = self.inner.pool.shared().clone();
        if let Some(next) = self.inner.release(node, fin, 0, Sink::Injector(&shared)) {
            shared.inject(self.inner.job(next), self.inner.band(next));
        }
        if self.inner.retire(1) {
            // SAFETY: this retirement reached zero, so the pool's reference made in
            // `Pool::start` is ours to give up; our own `Arc` keeps the run alive meanwhile.
            unsafe { drop_pool_ref::<R>(NonNull::from(&*self.inner).cast()) };
        }
        Ok(())
    }

    /// Runs a deferred node's runner again (e.g. a retry after a back-off delay).
    pub fn requeue(&self, node: u32) -> Result<(), NotDeferred> {
        let st = &self.inner.state[node as usize];
        if st
            .compare_exchange(DEFERRED, QUEUED, AcqRel, Acquire)
            .is_ok()
        {
            self.inner.queue(node);
            return Ok(());
        }
        match st.compare_exchange(RUNNING, REQUEUE, AcqRel, Acquire) {
            Ok(_) => Ok(()),
            // The worker turned RUNNING into DEFERRED between our two CASes.
            Err(DEFERRED) => self.requeue(node),
            Err(_) => Err(NotDeferred { node }),
        }
    }
}

impl Pool {
    /// Starts running `dag` with `runner` doing each node's work; returns at once.
    ///
    /// Every root is queued; each node runs once its predecessors are all finished (whatever
    /// their outcome: the runner decides what an upstream failure means, see
    /// [`NodeCx::upstream`]).
    pub fn start<R: NodeRunner>(&self, dag: Arc<Dag>, runner: R) -> RunHandle<R> {
        self.prepare(dag, runner).launch()
    }

    /// Sets up a run of `dag` without starting it: its handle exists (for a caller that
    /// must record it before the run's first event), but no node is queued until
    /// [`Prepared::launch`]. Dropping it unlaunched drops the run.
    pub fn prepare<R: NodeRunner>(&self, dag: Arc<Dag>, runner: R) -> Prepared<R> {
        let n = dag.len();
        let uniform_bit = dag.uniform_bit();
        // Zeroed memory (PENDING, no count, NO_CAUSE): nothing is written per node here, and
        // a page nobody writes during the run is never touched.
        let counters = zeroed_u32(n);
        let state = zeroed_u8(n);
        let cause = zeroed_u32(n);
        let inner = Arc::new(RunInner {
            dag,
            runner,
            counters,
            state,
            cause,
            any_cause: AtomicBool::new(false),
            remaining: AtomicUsize::new(n),
            cancelled: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            completion: Completion {
                state: Mutex::new((false, Vec::new())),
                cv: Condvar::new(),
            },
            pool: self.clone(),
            rebanded: AtomicBool::new(false),
            bands: Mutex::new(None),
            uniform_bit,
        });
        Prepared {
            handle: RunHandle { inner },
        }
    }
}

/// A run set up by [`Pool::prepare`] and not started yet.
///
/// Before launch every node is PENDING: [`RunHandle::complete`] and [`RunHandle::requeue`]
/// refuse every node, so the handle can be shared but not misused.
pub struct Prepared<R: NodeRunner> {
    handle: RunHandle<R>,
}

impl<R: NodeRunner> Prepared<R> {
    /// The run's handle (the run is not started yet).
    pub fn handle(&self) -> &RunHandle<R> {
        &self.handle
    }

    /// Starts the run: queues every root; returns the handle.
    pub fn launch(self) -> RunHandle<R> {
        let handle = self.handle;
        let inner = &handle.inner;
        if inner.dag.is_empty() {
            inner.finish();
            return handle;
        }
        // The pool's reference, given up by the retirement of the last node.
        let run: &RunInner<R> = inner;
        let _pool_ref = Arc::into_raw(inner.clone());
        let shared = run.pool.shared();
        if run.dag.is_ranked() {
            let roots: Vec<(Job, u8, u64)> = run
                .dag
                .roots()
                .iter()
                .map(|&r| (run.job(r), run.band(r), run.dag.rank(r).unwrap_or(0)))
                .collect();
            shared.push_ranked(&roots);
        } else {
            for &r in run.dag.roots() {
                shared.inject(run.job(r), run.band(r));
            }
        }
        handle
    }
}
