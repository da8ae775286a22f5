//! The work-stealing pool: `N` worker threads, each with one LIFO deque per priority band, a
//! shared injector per band for work coming from outside, and the sleep protocol.
//!
//! A worker's order of search (habit 10): the shared ready heap of ranked runs → its own deques
//! (highest band first) → the injector (highest band first) → the other workers' deques
//! (random start) → a few spin rounds → sleep.
//!
//! Ranked runs (a DAG with [`Dag::set_ranks`](crate::Dag::set_ranks): graphs of coarse tasks
//! with known durations) do not use the deques: their roots and every successor that becomes
//! ready go to one shared heap ordered by (band, rank, first come), none runs inline, and every
//! worker takes the best ready job of all — a global list schedule (critical path first) at
//! the price of one short lock per task. Unranked runs never touch the heap's lock (an empty
//! heap costs one relaxed load per search).
//! Running a job may release successors: the first one runs inline on the same worker (no queue
//! touched), the others go to the worker's own deques and one sleeper per pushed job is woken.
//!
//! Resizing: a pool starts `max` threads, of which the first `active` take work; the others
//! are parked (on their own condvar, outside the sleep protocol). A worker checks `active` at
//! the top of its loop: one that finds itself beyond it retires its batch, hands its queued
//! jobs and any wake-up it may have consumed on to the others (`notify`), and parks until
//! `active` grows again or the pool stops. `set_active` wakes every sleeper, so that a worker
//! asleep when it became inactive parks instead of absorbing a later wake-up.
//!
//! Job counting: a run completes when all of its nodes are finished. Workers count the nodes
//! they finish in a private batch (no shared write per task) and retire the batch into the run's
//! `remaining` counter when they switch to another run or go idle; completions from outside the
//! pool (deferred nodes) retire one node at once. Retiring the last node finishes the run.

use crate::dag::BANDS;
use crate::queue::{self, Injector, Local, Stealer};
use crate::sleep::Sleep;
use crate::sync::{
    lock, spin_hint, thread, Arc, AtomicBool, AtomicU8, AtomicUsize, Condvar, Mutex, SPIN_ROUNDS,
};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// A unit of work in a queue: one node of one run. The run outlives the job because the pool
/// holds a reference to the run until every node of the run has been retired, and a job exists
/// only for a node that has not been retired.
#[derive(Clone, Copy)]
pub(crate) struct Job {
    pub(crate) run: NonNull<dyn Execute>,
    pub(crate) node: u32,
    /// 0: run `node`. `r > 0`: `node` is finished; release its successors from index `r` on
    /// (a high fan-out is released in batches, see `run::RELEASE_BATCH`).
    pub(crate) resume: u32,
}

// SAFETY: `Job` only points to an `Execute` (which is `Send + Sync`) kept alive by the pool's
// reference as explained on the type.
unsafe impl Send for Job {}

/// What the pool asks of a run (implemented by `run::RunInner`).
pub(crate) trait Execute: Send + Sync {
    /// Runs `node` (or resumes releasing its successors from index `resume > 0`) and whatever
    /// that releases inline; counts finished nodes in `w`'s batch.
    fn execute(&self, node: u32, resume: u32, w: &mut WorkerCtx<'_>);
    /// Subtracts `n` finished nodes from the run. The call that reaches zero finishes the run
    /// and returns true: its caller must then give up the pool's reference with
    /// [`Execute::dropper`], and touch the run no more.
    fn retire(&self, n: usize) -> bool;
    /// The function that gives up the pool's reference to this run (called without any
    /// reference to the run alive, since it may free it).
    fn dropper(&self) -> unsafe fn(NonNull<()>);
}

/// Retires `n` nodes of `run` and, if that finished it, gives up the pool's reference.
///
/// # Safety
/// `run` must point to a live run of which at least `n` finished nodes are not yet retired.
pub(crate) unsafe fn retire(run: NonNull<dyn Execute>, n: usize) {
    // SAFETY: the caller guarantees the run is alive (unretired nodes keep the pool's
    // reference). The borrow ends before `dropper` runs.
    let dropper = unsafe {
        let r = run.as_ref();
        if !r.retire(n) {
            return;
        }
        r.dropper()
    };
    // SAFETY: this retirement reached zero, so this thread owns the pool's reference, and no
    // reference to the run is alive here.
    unsafe { dropper(run.cast()) };
}

/// State shared by the workers of one pool.
pub(crate) struct Shared {
    injector: [Injector<Job>; BANDS],
    /// Bit `b` set: the injector of band `b` may hold jobs (set after each push, cleared by a
    /// worker that found it empty; a stale bit costs one look, a missing one only delays that
    /// band until the worker's own deques are empty).
    injected: AtomicU8,
    stealers: Box<[[Stealer<Job>; BANDS]]>,
    pub(crate) sleep: Sleep,
    shutdown: AtomicBool,
    /// Workers with an index below this take work; the others are parked.
    active: AtomicUsize,
    park: Mutex<()>,
    park_cv: Condvar,
    /// Ready jobs of ranked runs, best (band, rank) first; FIFO among equals.
    ready: Mutex<ReadyHeap>,
    /// Jobs in `ready` (read without the lock to skip it when empty: a stale zero is
    /// covered by the sleep protocol exactly as a stale `injected` bit is).
    ready_len: AtomicUsize,
}

/// The shared ready heap of ranked runs.
#[derive(Default)]
pub(crate) struct ReadyHeap {
    heap: std::collections::BinaryHeap<Ranked>,
    seq: u64,
}

/// A job in the ready heap, ordered by band, then rank, then first come.
struct Ranked {
    band: u8,
    rank: u64,
    seq: std::cmp::Reverse<u64>,
    job: Job,
}

impl Ranked {
    fn key(&self) -> (u8, u64, std::cmp::Reverse<u64>) {
        (self.band, self.rank, self.seq)
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl Shared {
    /// Queues the ready jobs of a ranked run (`(job, band, rank)`) in the shared heap and
    /// wakes as many sleepers.
    pub(crate) fn push_ranked(&self, jobs: &[(Job, u8, u64)]) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut r = lock(&self.ready);
            for &(job, band, rank) in jobs {
                r.seq += 1;
                let seq = std::cmp::Reverse(r.seq);
                r.heap.push(Ranked {
                    band,
                    rank,
                    seq,
                    job,
                });
            }
            self.ready_len.store(r.heap.len(), Release);
        }
        self.sleep.notify(jobs.len());
    }

    /// The best ready job of the ranked runs, if any.
    #[inline]
    fn pop_ranked(&self) -> Option<Job> {
        if self.ready_len.load(Relaxed) == 0 {
            return None;
        }
        let mut r = lock(&self.ready);
        let j = r.heap.pop().map(|x| x.job);
        self.ready_len.store(r.heap.len(), Release);
        j
    }
    /// Queues a job from outside the pool (or not on a worker's fast path) and wakes a sleeper.
    pub(crate) fn inject(&self, job: Job, band: u8) {
        self.injector[band as usize].push(job);
        if self.injected.load(Relaxed) & (1 << band) == 0 {
            self.injected.fetch_or(1 << band, Release);
        }
        self.sleep.notify(1);
    }

    /// Whether some queue this worker knows of may hold a job of a band above `band`.
    #[inline]
    fn has_above(&self, band: u8, local: u8) -> bool {
        let above = !0u8 << (band + 1);
        (local | self.injected.load(Relaxed)) & above != 0
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Acquire)
    }

    /// Parks worker `index` while it is beyond the active count.
    fn park(&self, index: usize) {
        let mut g = lock(&self.park);
        while index >= self.active.load(Acquire) && !self.stopping() {
            g = match self.park_cv.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    fn unpark_all(&self) {
        let _g = lock(&self.park);
        self.park_cv.notify_all();
    }
}

/// A worker's private state, handed to the code that runs jobs.
pub(crate) struct WorkerCtx<'a> {
    index: usize,
    locals: &'a [Local<Job>; BANDS],
    shared: &'a Shared,
    /// The run whose finished nodes are counted in `done`.
    batch_run: Option<NonNull<dyn Execute>>,
    /// Finished nodes of `batch_run` not yet retired.
    pub(crate) done: usize,
    /// Bit `b` set: band `b` of this worker's deques may hold jobs.
    bands_used: u8,
    rng: u32,
}

impl WorkerCtx<'_> {
    /// Pushes a released job to this worker's own deque (no wake-up yet: see `notify`).
    #[inline]
    pub(crate) fn push(&mut self, job: Job, band: u8) {
        self.locals[band as usize].push(job);
        self.bands_used |= 1 << band;
    }

    /// Whether a job of a higher band than `band` may be waiting (then a released successor
    /// of band `band` should be queued rather than run inline).
    #[inline]
    pub(crate) fn has_above(&self, band: u8) -> bool {
        band + 1 < BANDS as u8 && self.shared.has_above(band, self.bands_used)
    }

    /// The bands in which a job may be queued, in this worker's deques or the injector (a bit
    /// per band): when none, no released successor needs its band compared.
    #[inline]
    pub(crate) fn queued_bands(&self) -> u8 {
        self.bands_used | self.shared.injected.load(Relaxed)
    }

    /// Wakes up to `k` sleepers after pushes.
    #[inline]
    pub(crate) fn notify(&self, k: usize) {
        self.shared.sleep.notify(k);
    }

    /// Retires the batch of finished nodes into its run.
    fn flush(&mut self) {
        if let Some(run) = self.batch_run.take() {
            let n = std::mem::take(&mut self.done);
            if n > 0 {
                // SAFETY: `done > 0` nodes of this run are finished but not retired, so the
                // pool's reference to the run is still held and the run is alive.
                unsafe { retire(run, n) };
            }
        }
    }

    /// Notes what taking a job from band `b`'s injector left behind: this worker's deque of
    /// that band holds the rest of the batch, if any; an injector left empty has its bit
    /// cleared (as by a worker that finds it empty). So that a worker running a long chain
    /// inline, its first job taken from the injector, sees no queued job (and looks up no
    /// band) per task.
    fn took_injected(&mut self, b: usize) {
        let bit = 1u8 << b;
        if !self.locals[b].is_empty() {
            self.bands_used |= bit;
        }
        if self.shared.injector[b].is_empty() {
            self.shared.injected.fetch_and(!bit, Relaxed);
        }
    }

    fn steal(&mut self) -> Option<Job> {
        for b in (0..BANDS).rev() {
            if let Some(j) = queue::steal_injector(&self.shared.injector[b], &self.locals[b]) {
                self.took_injected(b);
                return Some(j);
            }
            let n = self.shared.stealers.len();
            if n > 1 {
                // xorshift: a cheap random victim order.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 17;
                self.rng ^= self.rng << 5;
                let start = self.rng as usize % n;
                for k in 0..n {
                    let v = (start + k) % n;
                    if v != self.index {
                        if let Some(j) = queue::steal(&self.shared.stealers[v][b]) {
                            return Some(j);
                        }
                    }
                }
            }
        }
        None
    }

    /// Own deques and the injector, band by band from the highest: work queued from outside
    /// (subgraph roots, requeued retries, successors of async work) is not starved by a deque
    /// of lower-priority local jobs, and local jobs go first within a band.
    fn pop_local_or_injected(&mut self) -> Option<Job> {
        let inj = self.shared.injected.load(Relaxed);
        let mut mask = self.bands_used | inj;
        while mask != 0 {
            let b = 7 - mask.leading_zeros() as usize;
            let bit = 1u8 << b;
            if self.bands_used & bit != 0 {
                if let Some(j) = self.locals[b].pop() {
                    return Some(j);
                }
                self.bands_used &= !bit;
            }
            if inj & bit != 0 {
                if let Some(j) = queue::steal_injector(&self.shared.injector[b], &self.locals[b]) {
                    self.took_injected(b);
                    return Some(j);
                }
                self.shared.injected.fetch_and(!bit, Relaxed);
            }
            mask &= !bit;
        }
        None
    }

    fn find_work(&mut self) -> Option<Job> {
        self.shared
            .pop_ranked()
            .or_else(|| self.pop_local_or_injected())
            .or_else(|| self.steal())
    }

    fn run_job(&mut self, job: Job) {
        if self.batch_run.map(|r| r.cast::<u8>()) != Some(job.run.cast::<u8>()) {
            self.flush();
        }
        // Always take the job's pointer: with nothing counted, the old one may point to a
        // finished (freed) run that a new run now occupies.
        self.batch_run = Some(job.run);
        // SAFETY: a queued job's node is not retired, so its run is alive (see `Job`).
        let run = unsafe { job.run.as_ref() };
        run.execute(job.node, job.resume, self);
    }
}

/// Aborts the process if an engine section unwinds (a user's panic is caught long before it
/// could reach here; anything else means the pool's own invariants are broken).
struct AbortOnUnwind;
impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        // Not under loom: when a model fails on the test thread, loom unwinds the workers,
        // and the failure must reach the test harness.
        if cfg!(not(loom)) && thread::panicking() {
            eprintln!("nerv-pool: a worker panicked outside a task; aborting");
            std::process::abort();
        }
    }
}

fn worker_main(shared: Arc<Shared>, index: usize, locals: [Local<Job>; BANDS]) {
    let guard = AbortOnUnwind;
    let mut w = WorkerCtx {
        index,
        locals: &locals,
        shared: &shared,
        batch_run: None,
        done: 0,
        bands_used: 0,
        rng: 0x9E37_79B9 ^ (index as u32 + 1).wrapping_mul(0x85EB_CA6B),
    };
    'outer: loop {
        if index >= shared.active.load(Relaxed) && !shared.stopping() {
            w.flush();
            // Queued jobs stay stealable: make sure someone looks (and pass on a wake-up this
            // worker may have taken while it slept).
            shared
                .sleep
                .notify(if w.bands_used != 0 { usize::MAX } else { 1 });
            w.bands_used = 0;
            shared.park(index);
            continue;
        }
        if let Some(job) = w.find_work() {
            w.run_job(job);
            continue;
        }
        w.flush();
        for round in 0..SPIN_ROUNDS {
            spin_hint(round);
            if let Some(job) = w.find_work() {
                w.run_job(job);
                continue 'outer;
            }
        }
        if shared.stopping() {
            break;
        }
        let epoch = shared.sleep.prepare();
        if let Some(job) = w.find_work() {
            shared.sleep.cancel();
            w.run_job(job);
            continue;
        }
        shared.sleep.sleep(epoch, || shared.stopping());
    }
    w.flush();
    drop(guard);
}

struct PoolInner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    workers: usize,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Release);
        self.shared.sleep.notify_all();
        self.shared.unpark_all();
        let me = thread::current().id();
        for t in std::mem::take(&mut *lock(&self.threads)) {
            // The last reference may be dropped by one of the pool's own workers (when it
            // finishes the last run): it cannot join itself, so it is left to exit on its own.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// A pool of worker threads that run task graphs (see [`Pool::start`](crate::Pool::start)).
///
/// Cloning is cheap and shares the workers. The threads stop when the last clone is dropped
/// and every run started on the pool has finished (a run keeps its pool alive).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("max_workers", &self.inner.workers)
            .finish()
    }
}

impl Pool {
    /// Starts a pool of `workers` threads (at least one), named `{name}-{i}`.
    pub fn new(workers: usize, name: &str) -> Pool {
        Self::with_max(workers, workers, name)
    }

    /// Starts a pool that can grow to `max` workers, with `workers` of them active (see
    /// [`Pool::set_workers`]); the threads beyond `workers` are parked until needed.
    pub fn with_max(workers: usize, max: usize, name: &str) -> Pool {
        let active = workers.max(1);
        let workers = max.max(active);
        let locals: Vec<[Local<Job>; BANDS]> = (0..workers)
            .map(|_| std::array::from_fn(|_| queue::local()))
            .collect();
        let stealers = locals
            .iter()
            .map(|l| std::array::from_fn(|b| l[b].stealer()))
            .collect();
        let shared = Arc::new(Shared {
            injector: std::array::from_fn(|_| Injector::new()),
            injected: AtomicU8::new(0),
            stealers,
            sleep: Sleep::new(),
            shutdown: AtomicBool::new(false),
            active: AtomicUsize::new(active),
            park: Mutex::new(()),
            park_cv: Condvar::new(),
            ready: Mutex::new(ReadyHeap::default()),
            ready_len: AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(workers);
        for (i, l) in locals.into_iter().enumerate() {
            let s = shared.clone();
            #[cfg(not(loom))]
            let t = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker_main(s, i, l))
                .expect("failed to spawn a pool worker thread");
            #[cfg(loom)]
            let t = {
                let _ = name;
                thread::spawn(move || worker_main(s, i, l))
            };
            threads.push(t);
        }
        Pool {
            inner: Arc::new(PoolInner {
                shared,
                threads: Mutex::new(threads),
                workers,
            }),
        }
    }

    /// Number of workers taking work now.
    pub fn workers(&self) -> usize {
        self.inner.shared.active.load(Acquire)
    }

    /// The most workers the pool can have (threads started).
    pub fn max_workers(&self) -> usize {
        self.inner.workers
    }

    /// Changes the number of workers taking work, between 1 and [`Pool::max_workers`];
    /// returns the number set. A worker beyond the new count finishes the job it runs, then
    /// parks; its queued jobs are taken by the others.
    pub fn set_workers(&self, n: usize) -> usize {
        let n = n.clamp(1, self.inner.workers);
        let shared = &self.inner.shared;
        shared.active.store(n, Release);
        shared.unpark_all();
        // A worker asleep when it became inactive must wake up to park, rather than take a
        // wake-up meant for an active one.
        shared.sleep.notify_all();
        n
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Stops the workers once they run out of work and waits for them (loom tests end their
    /// model this way; ordinary users just drop the pool).
    pub fn shutdown_and_join(self) {
        drop(self);
    }
}
