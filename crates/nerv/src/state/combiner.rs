//! The engine projector: an [`EngineState`] kept up to date from the event bus by the threads
//! that publish the events (the executor's workers), by flat combining: whoever finds the
//! combiner free applies everyone's queued events in one batch. `README.md` beside this file
//! explains why each step is there, and cites the source (Hendler et al., SPAA 2010).
//!
//! Invariants:
//! - Each publishing thread pushes its events onto one of a few queues (shards, chosen by the
//!   thread; `op.rs`), so that threads do not write to the same cache lines. A shard is a
//!   mutex-protected `Vec<Op>` holding its ops in push order; each op is tagged, under the
//!   shard's lock, with the current `epoch`, so tags never decrease within a shard.
//! - The combiner mutex owns the working copy: the state after every op applied so far. Only its
//!   holder drains shards, applies ops, publishes and bumps `epoch`. Applying mutates the working
//!   copy in place; only nodes it shares with a published snapshot are copied first.
//! - A round bumps `epoch` from `e` to `e + 1`, then drains every shard, and applies exactly the
//!   ops tagged `e` or before; it holds back the others (pushed during the round) for the next
//!   round. So if event `a` was handled before event `b` (or happened before it), `b` is never
//!   applied in an earlier round than `a`: `b`'s tag is at least `a`'s, and had `a`'s push come
//!   after its shard's drain, `a`'s tag would be `e + 1` (its push locked the shard after the
//!   round did, so it saw the bump).
//! - Within a round, ops are applied as: workflow created/started events, then every task event
//!   (each shard's in order, shards one after the other), then workflow final events. Events
//!   related across shards within one round are a run's start and its tasks (applied first), its
//!   tasks and its end (applied last), and the events of one task published from two threads,
//!   which commute (`task.rs`). So the state after a round is the state after applying its
//!   events in the order they were handled.
//! - The executor's plain top-graph task events (nearly all of them) do not take a queue: from
//!   a run's `WorkflowStarted` until its end is applied, the run has a live table (`live.rs`)
//!   with a slot per task, and the bus hands each publisher the run's table (`live_for`, once
//!   per run and publisher), so such an event is a few stores into its task's slot and a mark
//!   in the writer's bitmap. Every round folds every live table's marked chunks into the
//!   working copy, after the round's task events and before its final ones; a run's final
//!   event was published after every event of its tasks, so the round that applies it folds
//!   them all, then detaches and forgets the table. A slot holds the merge of its task's plain
//!   events, which commutes with the task's other events, so folding it in any round gives the
//!   same state. Every `64 × batch` writes a writer asks for a round (as a full shard does), so
//!   folding keeps pace with the run (`README.md` says why not more often).
//! - `dirty` is set, under a shard lock, by every push; cleared by a publishing round before it
//!   drains the shards, and set again by a round that held ops back or that leaves a run
//!   started and not ended (its live table may get writes at any time): while it is clear, the
//!   current snapshot (or the one the round is about to publish) holds every handled event.
//! - `as_of` is when the last publishing round began: that snapshot holds every event handled
//!   before then.
//! - A version is one published round; versions only increase.
//!
//! Guarantees (W is the publish interval, [`EngineProjector::DEFAULT_INTERVAL`] unless set;
//! with W = 0 every round and every read publishes):
//! 1. When [`handle`](EngineProjector::handle) returns for a `WorkflowCompleted`,
//!    `WorkflowFailed` or `WorkflowCancelled` event, the current snapshot holds that event and
//!    every event whose `handle` returned before it was called (the run's waiters are woken right
//!    after that event).
//! 2. [`get_state`](EngineProjector::get_state) never waits. If no thread holds the combiner,
//!    the snapshot it returns holds every event whose `handle` returned more than W before the
//!    call (with W = 0: before the call).
//! 3. If a thread holds the combiner, `get_state` returns the last published snapshot at once
//!    and has the holder publish at the end of its current round (or, if the holder had already
//!    decided not to, of one more round right after), so a read after that has guarantee 2.
//! 4. No event stays unpublished forever: its run's final event, the first read that finds the
//!    last publish W old, or the first round that begins W after it, publishes it.
//! 5. [`flush`](EngineProjector::flush) waits for the combiner and returns a snapshot holding
//!    every event whose `handle` returned before it was called.
//!
//! `handle(event)`, step by step:
//! 1. Reduce the event to an op: a top-graph task event that carries only an attempt number
//!    becomes plain values (no clone of the event); any other is cloned. Custom events, events
//!    without a run and top-graph `TaskPending` events change nothing: they are dropped.
//!    ([`attach`](EngineProjector::attach) takes the executor's task events unbuilt, from the
//!    bus's task hook: a plain top-graph one goes to its run's live table, see the invariants;
//!    another plain one is reduced from the executor's values, no event is built.)
//!    A `WorkflowStarted` event also notes the run, for its live table.
//! 2. Lock the thread's shard, tag the op with `epoch`, push it, set `dirty`, note the shard's
//!    length, unlock.
//! 3. For a run's final event, lock the combiner (waiting) and run a forced round (steps 4–9).
//!    Otherwise, if the shard holds at least `batch` ops and `full` is clear: if `try_lock` gets
//!    the combiner, run a round; if not, set `full`, fence (SeqCst) and `try_lock` once more; if
//!    the combiner is still busy, return: its holder sees `full` in step 10. (If `full` is set,
//!    return: a round is coming.)
//!
//! A round, with the combiner held:
//! 4. Take the time `now`. The round publishes if it is forced, if a reader asked (`wanted`),
//!    or if the last publishing round began W ago or more; if it does, clear `dirty`. Clear
//!    `full`.
//! 5. Bump `epoch` from `e` to `e + 1`.
//! 6. Take the ops held back by the last round; lock each shard in turn, take its ops (swap
//!    its vector with an empty spare), unlock; keep the ops tagged up to `e`, hold back the
//!    rest.
//! 7. Apply the kept ops to the working copy in the order of the invariants, folding the live
//!    tables between the task events and the final ones; detach the tables of runs that ended.
//! 8. If ops were held back, set `dirty`. If the round publishes: clear `wanted`; if the working
//!    copy changed since the last publish, publish a clone of it (O(1)) as the next version; set
//!    `as_of = now`.
//! 9. Release the combiner.
//! 10. Fence (SeqCst); if `wanted` or `full` is set, `try_lock` again and run another round
//!     (forced if `wanted`), at most `MAX_ROUNDS` (8) times; after that many, clear `full`, so
//!     that the next push finding its shard full runs a round itself.
//!
//! `get_state()`, step by step:
//! 1. If `dirty` is clear, or W > 0 and the last publishing round began less than W ago, go
//!    to 4.
//! 2. If `try_lock` gets the combiner, run a forced round, release it (steps 9 and 10), go to 4.
//! 3. Set `wanted`, fence (SeqCst), `try_lock` again: if free, as in 2. If busy, its holder
//!    reads `wanted` in step 4 or in step 10 of its round: the two fences make sure that it
//!    does, or that this `try_lock` sees the combiner free.
//! 4. Load the current snapshot.

use super::engine::EngineState;
use super::live::{LiveRun, Slots, Took};
use super::op::{apply_batch, thread_slot, Op, Phase, Shard};
use super::{lock, ProjectionError, Snapshot, StateProjector, DEFAULT_HISTORY};
use crate::event::{
    Event, EventBus, EventData, EventFilter, EventKind, RunHook, Subscription, TaskView,
};
use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

/// Rounds a thread runs in a row after releasing the combiner (step 10), so that a worker
/// thread is not kept from its own work for long.
const MAX_ROUNDS: usize = 8;

/// Keeps its value on cache lines of its own, so that the threads pushing to their shards,
/// the combiner and the readers do not slow each other down through false sharing.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Read by every push, written about once per round.
struct Flags {
    /// Some handled event may be missing from the current snapshot (see the module doc).
    dirty: AtomicBool,
    /// A reader found the combiner busy and asks its holder to publish.
    wanted: AtomicBool,
    /// A thread found its shard full and the combiner busy, and asks its holder for a round.
    full: AtomicBool,
    /// The current epoch (see the module doc).
    epoch: AtomicU32,
    /// When the last publishing round began, in nanoseconds since `Shared::base`.
    as_of: AtomicU64,
}

/// What the combiner's holder owns.
struct Combiner {
    /// The working copy.
    state: EngineState,
    /// Ops held back by the last round (pushed during it), in shard order.
    held: Vec<Op>,
    /// The ops of a round (emptied after it, kept for its allocation).
    ops: Vec<Op>,
    /// Empty vectors to swap into the shards.
    spares: Vec<Vec<Op>>,
    /// The working copy changed since the last publish.
    unpublished: bool,
    /// `Flags::as_of`, for the holder.
    as_of: u64,
}

/// A run started, whose tasks' plain events may go to a live table (`live.rs`).
struct LiveEntry {
    run: u64,
    tasks: usize,
    /// Made when an executor's publisher first asks for it.
    table: Option<Arc<LiveHook>>,
}

/// A run's live table as its publishers see it: a write that makes a fold due runs a round
/// (as a full shard does, step 3); the last one dropped gives its slots back for the next
/// table.
struct LiveHook {
    table: LiveRun,
    shared: Weak<Shared>,
}

impl RunHook for LiveHook {
    #[inline]
    fn take(&self, v: &TaskView<'_>) -> bool {
        match self.table.take(v) {
            Took::No => false,
            Took::Yes => true,
            Took::FoldDue => {
                if let Some(shared) = self.shared.upgrade() {
                    EngineProjector { shared }.combine();
                }
                true
            }
        }
    }
}

impl Drop for LiveHook {
    fn drop(&mut self) {
        if let Some(sh) = self.shared.upgrade() {
            let slots = self.table.recycle();
            let mut spare = lock(&sh.spare_slots);
            if spare.len() < MAX_SPARE_SLOTS {
                spare.push(slots);
            }
        }
    }
}

/// Recycled live-table slots kept for the next runs.
const MAX_SPARE_SLOTS: usize = 2;

struct Shared {
    shards: Box<[Padded<Shard>]>,
    /// The runs started and not yet ended, with their live tables (few: a linear search).
    live: Mutex<Vec<LiveEntry>>,
    /// Zeroed slots of ended runs' tables, for the next ones.
    spare_slots: Mutex<Vec<Slots>>,
    combiner: Padded<Mutex<Combiner>>,
    flags: Padded<Flags>,
    projector: StateProjector<EngineState>,
    base: Instant,
    /// W, in nanoseconds.
    interval: u64,
    batch: usize,
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Configures an [`EngineProjector`].
#[derive(Debug, Clone)]
pub struct EngineProjectorBuilder {
    history: usize,
    interval: Duration,
    batch: usize,
}

impl Default for EngineProjectorBuilder {
    fn default() -> Self {
        EngineProjectorBuilder {
            history: EngineProjector::DEFAULT_HISTORY,
            interval: EngineProjector::DEFAULT_INTERVAL,
            batch: EngineProjector::DEFAULT_BATCH,
        }
    }
}

impl EngineProjectorBuilder {
    /// Past snapshots (batches) kept for [`EngineProjector::at_version`]
    /// ([`EngineProjector::DEFAULT_HISTORY`] by default).
    pub fn history(mut self, n: usize) -> Self {
        self.history = n;
        self
    }

    /// W: how often, at most, a busy projector publishes unless a read, a final event or a
    /// flush asks ([`EngineProjector::DEFAULT_INTERVAL`] by default). Zero publishes every
    /// round and makes every read exact, at the cost of copying the changed nodes of the state
    /// after each publish.
    pub fn publish_interval(mut self, w: Duration) -> Self {
        self.interval = w;
        self
    }

    /// How many events queued in its shard make a publishing thread run a round
    /// ([`EngineProjector::DEFAULT_BATCH`] by default; at least 1).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// The projector, with no run.
    pub fn build(self) -> EngineProjector {
        // Twice the cores, rounded up to a power of two (a thread's shard is its number masked),
        // at most 32 (a round locks every shard): threads beyond that share shards (correct, a
        // little slower).
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| 2 * n.get())
            .clamp(2, 32)
            .next_power_of_two();
        EngineProjector {
            shared: Arc::new(Shared {
                shards: (0..shards).map(|_| Padded(Shard::new())).collect(),
                live: Mutex::new(Vec::new()),
                spare_slots: Mutex::new(Vec::new()),
                combiner: Padded(Mutex::new(Combiner {
                    state: EngineState::new(),
                    held: Vec::new(),
                    ops: Vec::new(),
                    spares: (0..shards).map(|_| Vec::new()).collect(),
                    unpublished: false,
                    as_of: 0,
                })),
                flags: Padded(Flags {
                    dirty: AtomicBool::new(false),
                    wanted: AtomicBool::new(false),
                    full: AtomicBool::new(false),
                    epoch: AtomicU32::new(0),
                    as_of: AtomicU64::new(0),
                }),
                projector: StateProjector::new(EngineState::new()).with_history(self.history),
                base: Instant::now(),
                interval: u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX),
                batch: self.batch,
            }),
        }
    }
}

/// The engine's state, fed from the event bus by the threads that publish the events: the
/// projector to attach to an executor's bus (see the module doc for its guarantees).
///
/// Cheap to clone (one `Arc`), `Send + Sync`. [`handle`](Self::handle) costs a queue push per
/// event; the events are applied in batches by whichever thread finds the combiner free, and
/// published as versioned snapshots at most once per publish interval, except that a run's
/// final event is published before its `handle` returns.
///
/// ```
/// use nerv::{EngineProjector, EventBus, Executor, Graph, TaskError, TaskStatus};
///
/// let bus = EventBus::new();
/// let state = EngineProjector::new();
/// let _sub = state.attach(&bus);
///
/// let mut g = Graph::builder();
/// g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
/// let graph = g.build().unwrap();
/// let run = Executor::builder().workers(2).events(bus).build().start(&graph);
/// let id = run.id();
/// run.wait();
///
/// let s = state.get_state();
/// assert_eq!(s.completed_tasks(id), ["a"]);
/// assert_eq!(s.task(id, "a").map(|t| t.status()), Some(TaskStatus::Completed));
/// ```
#[derive(Clone)]
pub struct EngineProjector {
    shared: Arc<Shared>,
}

impl Default for EngineProjector {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EngineProjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineProjector")
            .field("version", &self.shared.projector.version())
            .field("shards", &self.shared.shards.len())
            .finish_non_exhaustive()
    }
}

impl EngineProjector {
    /// How often, at most, a busy projector publishes a snapshot unless asked (reads, final
    /// events and [`flush`](Self::flush) publish at once): W in the module doc.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1);

    /// Queued events that make a publishing thread try to apply them.
    pub const DEFAULT_BATCH: usize = 256;

    /// Past snapshots (batches) kept by default.
    pub const DEFAULT_HISTORY: usize = DEFAULT_HISTORY;

    /// The event kinds [`attach`](Self::attach) subscribes to: all but custom events and
    /// `TaskPending`. A top-graph task is pending from its run's start without it, so leaving it
    /// out spares the executor one event per task at run start (unless someone else wants it);
    /// the cost is that a subgraph's task appears in the state at its first other event.
    /// [`handle`](Self::handle) takes every kind.
    pub const KINDS: [EventKind; 14] = [
        EventKind::WorkflowCreated,
        EventKind::WorkflowStarted,
        EventKind::WorkflowCompleted,
        EventKind::WorkflowFailed,
        EventKind::WorkflowCancelled,
        EventKind::TaskStarted,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskSkipped,
        EventKind::TaskCancelled,
        EventKind::TaskRetrying,
        EventKind::TaskProgress,
        EventKind::MemoHit,
        EventKind::MemoMiss,
    ];

    /// A projector with the default history, publish interval and batch.
    pub fn new() -> Self {
        EngineProjectorBuilder::default().build()
    }

    /// Configures a projector.
    pub fn builder() -> EngineProjectorBuilder {
        EngineProjectorBuilder::default()
    }

    /// Subscribes [`handle`](Self::handle) to `bus` for the kinds it reads
    /// ([`KINDS`](Self::KINDS)), until the returned subscription is dropped.
    pub fn attach(&self, bus: &EventBus) -> Subscription {
        let me = self.clone();
        let hook = self.clone();
        let runs = self.clone();
        // The executor's task events come unbuilt: step 1 reads their parts; a run's plain ones
        // go to its live table.
        bus.subscribe_task(
            EventFilter::kinds(Self::KINDS),
            move |e| me.handle(e),
            move |v| hook.take_task(v),
            move |run| runs.live_for(run),
        )
    }

    /// The live table of run `run` (made now if it is the first ask), if the run started and
    /// has not ended: step 1 for the executor's publishers.
    fn live_for(&self, run: u64) -> Option<Arc<dyn RunHook>> {
        let sh = &*self.shared;
        let mut live = lock(&sh.live);
        let e = live.iter_mut().find(|e| e.run == run)?;
        let n = e.tasks;
        let table = e.table.get_or_insert_with(|| {
            // Recycled slots if some fit (not more than twice the size needed).
            let slots = {
                let mut spare = lock(&sh.spare_slots);
                let fit = spare
                    .iter()
                    .position(|s| s.len() >= n && s.len() <= n.saturating_mul(2).max(4096));
                fit.map(|i| spare.swap_remove(i))
            };
            let fold_every = 64 * sh.batch as u64;
            Arc::new(LiveHook {
                table: LiveRun::new(run, n, sh.shards.len(), slots, fold_every),
                shared: Arc::downgrade(&self.shared),
            })
        });
        Some(table.clone())
    }

    /// Notes a run's start (its live table is made at the first ask, `live_for`).
    #[cold]
    fn started(&self, run: u64, tasks: usize) {
        let mut live = lock(&self.shared.live);
        if !live.iter().any(|e| e.run == run) {
            live.push(LiveEntry {
                run,
                tasks,
                table: None,
            });
        }
        // Reads fold live tables: while one may exist, the state counts as dirty.
        self.shared.flags.dirty.store(true, Release);
    }

    /// Forgets live entries (all, or one run's) and detaches their tables.
    fn drop_live(&self, run: Option<u64>) {
        lock(&self.shared.live).retain(|e| {
            let keep = run.is_some_and(|r| r != e.run);
            if !keep {
                if let Some(t) = &e.table {
                    t.table.detach();
                }
            }
            keep
        });
    }

    /// Takes one event into the state (steps 1–3 of the module doc). Called by the bus on the
    /// publishing threads, concurrently; returns at once except for a run's final event, which
    /// is published before it returns.
    pub fn handle(&self, event: &Event) {
        if let (Some(run), EventData::WorkflowStarted { graph, .. }) =
            (event.source.workflow, &event.data)
        {
            self.started(run, graph.len());
        }
        if let Some(op) = Op::of(event) {
            self.push(op);
        }
    }

    /// [`handle`](Self::handle) of an executor's task event, unbuilt (see the bus's module
    /// doc): a plain top-graph event is pushed from its fields.
    #[inline]
    fn take_task(&self, v: &TaskView<'_>) {
        if let Some(op) = Op::of_task(v) {
            self.push(op);
        }
    }

    /// The calling thread's shard (their number is a power of two).
    #[inline]
    fn shard(&self) -> &Shard {
        let shards = &self.shared.shards;
        &shards[thread_slot() & (shards.len() - 1)]
    }

    /// Steps 2–3 of `handle`.
    fn push(&self, op: Op) {
        let is_final = op.phase() == Phase::End;
        let sh = &*self.shared;
        let queued = self.shard().push(op, &sh.flags.epoch, &sh.flags.dirty);
        if is_final {
            self.flush();
        } else {
            self.pushed(queued);
        }
    }

    /// Step 3 of `handle` for an event that is not a run's final one, after a push that left
    /// `queued` ops in its shard.
    #[inline]
    fn pushed(&self, queued: usize) {
        if queued >= self.shared.batch {
            self.combine();
        }
    }

    /// Step 3 for a full shard.
    #[cold]
    #[inline(never)]
    fn combine(&self) {
        let sh = &*self.shared;
        if sh.flags.full.load(Relaxed) {
            // Asked already: the holder will run a round. (Not even `try_lock`: it would
            // pull the combiner's cache line away from its holder on every push.)
            return;
        }
        let mut c = try_lock(&sh.combiner);
        if c.is_none() {
            sh.flags.full.store(true, Relaxed);
            fence(SeqCst);
            c = try_lock(&sh.combiner);
        }
        if let Some(mut c) = c {
            self.round(&mut c, false);
            drop(c);
            self.settle();
        }
    }

    /// Waits for the combiner, applies every queued event and publishes: the snapshot
    /// returned holds every event whose `handle` returned before this call.
    pub fn flush(&self) -> Snapshot<EngineState> {
        let mut c = lock(&self.shared.combiner);
        self.round(&mut c, true);
        let snap = self.shared.projector.get_state();
        drop(c);
        self.settle();
        snap
    }

    /// The current snapshot, without waiting (see the module doc for how fresh it is).
    pub fn get_state(&self) -> Snapshot<EngineState> {
        self.refresh();
        self.shared.projector.get_state()
    }

    /// The current version (one per published batch).
    pub fn version(&self) -> u64 {
        self.get_state().version()
    }

    /// The snapshot of version `v`, if it is the current one or one of the kept past ones.
    pub fn at_version(&self, v: u64) -> Option<Snapshot<EngineState>> {
        self.refresh();
        self.shared.projector.at_version(v)
    }

    /// The kept past snapshots, oldest first.
    pub fn history(&self) -> Vec<Snapshot<EngineState>> {
        self.shared.projector.history()
    }

    /// Forgets every run, and every event handled but not yet applied; publishes the empty
    /// state as the next version.
    pub fn reset(&self) -> Snapshot<EngineState> {
        let sh = &*self.shared;
        let mut c = lock(&sh.combiner);
        sh.flags.dirty.store(false, Relaxed);
        sh.flags.full.store(false, Relaxed);
        for shard in sh.shards.iter() {
            shard.clear();
        }
        c.held.clear();
        self.drop_live(None);
        c.state = EngineState::new();
        c.unpublished = false;
        let snap = sh.projector.publish(EngineState::new());
        let now = self.now();
        c.as_of = now;
        sh.flags.as_of.store(now, Release);
        snap
    }

    /// Forgets the run `run` (to bound memory in a long-lived process) after applying the
    /// events queued before; returns whether it was known. An event of it handled later
    /// brings it back, as an unknown run.
    pub fn forget(&self, run: u64) -> bool {
        let mut c = lock(&self.shared.combiner);
        self.round(&mut c, false);
        self.drop_live(Some(run));
        let removed = c.state.remove(run).is_some();
        c.unpublished |= removed;
        self.round(&mut c, true);
        drop(c);
        self.settle();
        removed
    }

    /// Registers (or replaces) the named projection `name` (see
    /// [`StateProjector::add_projection`]).
    pub fn add_projection<R, F>(&self, name: &str, f: F) -> bool
    where
        R: Any + Send,
        F: Fn(&EngineState) -> R + Send + Sync + 'static,
    {
        self.shared.projector.add_projection(name, f)
    }

    /// Evaluates the named projection `name` on the current snapshot.
    ///
    /// # Errors
    /// As [`StateProjector::project`].
    pub fn project<R: Any>(&self, name: &str) -> Result<R, ProjectionError> {
        self.shared.projector.project_at(name, &self.get_state())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.shared.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Steps 4–8 (the combiner is held: `c`).
    fn round(&self, c: &mut Combiner, force: bool) {
        let sh = &*self.shared;
        let now = self.now();
        let publish =
            force || sh.flags.wanted.load(Relaxed) || now.saturating_sub(c.as_of) >= sh.interval;
        if publish {
            sh.flags.dirty.store(false, Relaxed);
        }
        if sh.flags.full.load(Relaxed) {
            sh.flags.full.store(false, Relaxed);
        }
        let e = sh.flags.epoch.fetch_add(1, Relaxed);
        let mut ops = std::mem::take(&mut c.ops);
        ops.append(&mut c.held);
        let mut held = std::mem::take(&mut c.held);
        for shard in sh.shards.iter() {
            let spare = c.spares.pop().unwrap_or_default();
            let mut v = shard.drain(e, &mut ops, &mut held, spare);
            if v.capacity() > 16 * sh.batch {
                v.shrink_to(sh.batch);
            }
            c.spares.push(v);
        }
        c.held = held;
        // Live tables are folded between the round's task events and its runs' ends.
        let live = lock(&sh.live);
        let mut folded = false;
        let fold = |state: &mut EngineState| {
            for e in live.iter() {
                if let Some(t) = &e.table {
                    if let Some(wf) = state.workflow_mut_if(e.run, t.table.len()) {
                        folded |= t.table.fold(wf);
                    }
                }
            }
        };
        let ended = apply_batch(&mut c.state, &ops, fold);
        drop(live);
        if !ops.is_empty() || folded {
            c.unpublished = true;
        }
        if ended {
            let ends: Vec<u64> = ops
                .iter()
                .filter(|op| op.phase() == Phase::End)
                .filter_map(Op::run)
                .collect();
            for run in ends {
                self.drop_live(Some(run));
            }
        }
        ops.clear();
        c.ops = ops;
        if !c.held.is_empty() || !lock(&sh.live).is_empty() {
            sh.flags.dirty.store(true, Relaxed);
        }
        if publish {
            if sh.flags.wanted.load(Relaxed) {
                sh.flags.wanted.store(false, Relaxed);
            }
            if c.unpublished {
                sh.projector.publish(c.state.clone());
                c.unpublished = false;
            }
            c.as_of = now;
            sh.flags.as_of.store(now, Release);
        }
    }

    /// Step 10, after releasing the combiner.
    fn settle(&self) {
        let sh = &*self.shared;
        for _ in 0..MAX_ROUNDS {
            fence(SeqCst);
            let wanted = sh.flags.wanted.load(Relaxed);
            if !wanted && !sh.flags.full.load(Relaxed) {
                return;
            }
            // Busy: its holder runs this step after releasing it.
            let Some(mut c) = try_lock(&sh.combiner) else {
                return;
            };
            self.round(&mut c, wanted);
        }
        // Enough: the next push that finds its shard full takes the (free) combiner itself.
        sh.flags.full.store(false, Relaxed);
    }

    /// Steps 1–3 of `get_state`.
    fn refresh(&self) {
        let sh = &*self.shared;
        if !sh.flags.dirty.load(Acquire) {
            return;
        }
        if sh.interval > 0 && self.now().saturating_sub(sh.flags.as_of.load(Acquire)) < sh.interval
        {
            return;
        }
        let mut c = try_lock(&sh.combiner);
        if c.is_none() {
            sh.flags.wanted.store(true, Relaxed);
            fence(SeqCst);
            c = try_lock(&sh.combiner);
        }
        if let Some(mut c) = c {
            self.round(&mut c, true);
            drop(c);
            self.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventData, Source, TaskRef};
    use crate::task::TaskStatus;

    fn send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn the_projector_is_send_sync_and_clone() {
        send_sync::<EngineProjector>();
    }

    fn task(run: u64, index: u32, data: EventData) -> Event {
        Event::new(
            Source {
                workflow: Some(run),
                task: Some(TaskRef::new(format!("t{index}"), index, false)),
            },
            data,
        )
    }

    #[test]
    fn reads_see_queued_events_with_a_zero_interval() {
        let p = EngineProjector::builder()
            .publish_interval(Duration::ZERO)
            .build();
        p.handle(&Event::new(
            Source::workflow(1),
            EventData::WorkflowCreated {
                name: "x".into(),
                tasks: 2,
            },
        ));
        p.handle(&task(1, 1, EventData::TaskStarted { attempt: 1 }));
        let s = p.get_state();
        assert_eq!(s.version(), 1);
        let wf = s.workflow(1).unwrap();
        assert_eq!(wf.task_at(1).unwrap().status(), TaskStatus::Running);
        assert_eq!(wf.name(), "x");
        // Nothing new: no new version.
        assert_eq!(p.get_state().version(), 1);
    }

    #[test]
    fn a_round_holds_back_what_was_pushed_after_its_bump() {
        let p = EngineProjector::new();
        p.handle(&Event::new(
            Source::workflow(1),
            EventData::WorkflowCreated {
                name: "x".into(),
                tasks: 1,
            },
        ));
        // As if pushed between the next round's bump and its drain of the shard.
        let sh = &*p.shared;
        let op = Op::of(&task(1, 0, EventData::TaskStarted { attempt: 1 })).unwrap();
        let next = AtomicU32::new(sh.flags.epoch.load(Relaxed).wrapping_add(1));
        sh.shards[0].push(op, &next, &sh.flags.dirty);
        let s = p.flush();
        let status = |s: &EngineState| s.workflow(1).unwrap().task_at(0).unwrap().status();
        assert_eq!(status(&s), TaskStatus::Pending, "held back");
        assert!(
            sh.flags.dirty.load(Relaxed),
            "a held-back op leaves the state dirty"
        );
        assert_eq!(
            status(&p.flush()),
            TaskStatus::Running,
            "applied by the next round"
        );
    }

    #[test]
    fn a_round_applies_starts_first_and_ends_last() {
        let p = EngineProjector::new();
        let sh = &*p.shared;
        let push = |shard: usize, e: Event| {
            let op = Op::of(&e).unwrap();
            sh.shards[shard % sh.shards.len()].push(op, &sh.flags.epoch, &sh.flags.dirty);
        };
        // One round, with the run's end in the first shard, its task in the second and its
        // creation in the last.
        let created = Event::new(
            Source::workflow(1),
            EventData::WorkflowCreated {
                name: "x".into(),
                tasks: 1,
            },
        );
        let completed = Event::new(
            Source::workflow(1),
            EventData::WorkflowCompleted {
                counts: Default::default(),
                elapsed: Duration::ZERO,
            },
        );
        push(0, completed);
        push(1, task(1, 0, EventData::TaskStarted { attempt: 1 }));
        push(sh.shards.len() - 1, created);
        let s = p.flush();
        let w = s.workflow(1).unwrap();
        assert_eq!(w.task_at(0).unwrap().status(), TaskStatus::Running);
        assert_eq!(w.ignored(), 0);
        assert_eq!(w.status(), crate::manager::WorkflowStatus::Completed);
    }

    #[test]
    fn reset_and_forget() {
        let p = EngineProjector::new();
        p.handle(&task(1, 0, EventData::TaskStarted { attempt: 1 }));
        p.handle(&task(2, 0, EventData::TaskStarted { attempt: 1 }));
        assert_eq!(p.flush().len(), 2);
        assert!(p.forget(1));
        assert!(!p.forget(1));
        assert_eq!(
            p.get_state()
                .workflows()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            [2]
        );
        p.handle(&task(3, 0, EventData::TaskStarted { attempt: 1 }));
        let r = p.reset();
        assert!(r.is_empty());
        assert!(p.flush().is_empty(), "the queued event was dropped");
    }
}
