//! The event bus (the seed's Blinker integration): signals, subscriptions, middleware, history,
//! async streams.
//!
//! Invariants:
//! - The set of subscriptions, streams and middleware is an immutable [`Registry`] behind an
//!   `ArcSwap`: publishing reads it without a lock; changing it copies it under `write`.
//! - `wanted` has a bit per [`EventKind`] that someone receives (a handler, a stream, the
//!   history) and that is not muted. It is recomputed under `write` after every change, so a
//!   publisher that reads a clear bit may skip building the event.
//! - `generation` counts the registries published; it is bumped (under `write`) after each
//!   new registry is stored. A publisher may keep a copy of the registry with the generation
//!   it read *before* loading it ([`Receivers`]: the executor keeps one per run) and use the
//!   copy while the generation has not moved: no read-modify-write on a shared line per
//!   event. Once it moves, the copy is stale and the publisher loads the registry again. (A
//!   copy keeps its registry's handlers alive while it lives, which is why a run keeps it no
//!   longer than itself; a handler removed meanwhile is not called: the generation moved.)
//! - No lock is held while a handler runs: handlers may publish, subscribe and unsubscribe.
//!
//! Publishing (`EventBus::publish`):
//! 1. a muted kind (or muted named signal) is dropped;
//! 2. middleware runs in the order added; each may transform the event or drop it;
//! 3. the event is appended to the bounded history (if the bus keeps one);
//! 4. every matching handler runs on the publishing thread, in subscription order; a panic
//!    in one is caught, reported through `tracing`, and the others still run;
//! 5. every matching stream gets a clone; a full stream overwrites its oldest event and its
//!    reader is told how many it missed ([`Lagged`]): publishing never blocks on a reader;
//! 6. a weak subscription whose owner is gone, and a stream whose reader is gone, are
//!    removed.
//!
//! The executor publishes its task events through `publish_task`, which follows the same steps
//! but builds the [`Event`] only when someone needs one: a handler subscribed with a task hook
//! (`subscribe_task`, the engine projector's) reads the event's parts where the executor keeps
//! them ([`TaskView`]), so a task event that only such handlers receive costs no allocation, no
//! id and no reference count. With middleware or a history, `publish_task` builds the event
//! first and publishes it as above.
//!
//! Such a subscriber may also have a receiver per run ([`RunHook`]): the first task event of a
//! run that the publisher's registry copy delivers asks the subscriber for it (`per_run`), the
//! copy keeps it in a cell beside the subscription for the rest of the run, and each task event
//! goes to it first; the task hook gets the events it declines. (The engine projector's is the
//! run's live table: a task event becomes a store into the task's slot.) The copy also lists,
//! per kind, the subscriptions that take it, so a task event visits only those; a kind whose
//! only receiver is a task hook goes straight to it. An event that a handler or a stream takes
//! is built once per publish, before any receiver gets it, into the publishing thread's scratch
//! event (its fields overwritten in place; `TaskView::with_event`): handlers borrow it, streams
//! get clones, and its data (a task's output, an error) is dropped once delivery ends.

use super::{Event, EventData, EventKind, Payload, Source, TaskRef};
use arc_swap::ArcSwap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::broadcast;

type HandlerFn = dyn Fn(&Event) -> bool + Send + Sync;
type TaskHookFn = dyn Fn(&TaskView<'_>) + Send + Sync;
type PerRunFn = dyn Fn(u64) -> Option<Arc<dyn RunHook>> + Send + Sync;
/// A subscription's receiver for one run, made at its first task event.
type RunCell = OnceLock<Option<Arc<dyn RunHook>>>;

/// A handler that never asks to be removed (a strong subscription's).
fn strong(handler: impl Fn(&Event) + Send + Sync + 'static) -> Box<HandlerFn> {
    Box::new(move |e| {
        handler(e);
        true
    })
}

/// A subscriber's receiver of one run's task events, unbuilt (see the module doc).
pub(crate) trait RunHook: Send + Sync {
    /// Takes the event, or declines it (false): it then goes to the subscriber's task hook.
    fn take(&self, v: &TaskView<'_>) -> bool;
}

/// How a subscriber takes the executor's task events unbuilt.
struct TaskHook {
    /// Every task event its run's receiver (if any) declines.
    take: Box<TaskHookFn>,
    /// Makes the receiver for a run (by its top run's id), if the subscriber has one.
    per_run: Box<PerRunFn>,
}

/// A task event before it is built: its parts, borrowed from the executor (see the module
/// doc). [`to_event`](Self::to_event) builds the [`Event`] it stands for.
#[derive(Debug)]
pub(crate) struct TaskView<'a> {
    /// The top run's id.
    pub(crate) workflow: u64,
    /// The full ids of its graph's tasks, by index.
    pub(crate) names: &'a Arc<[Arc<str>]>,
    /// Its index in its graph (in range of `names`).
    pub(crate) index: u32,
    /// Whether it belongs to a subgraph.
    pub(crate) subgraph: bool,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub(crate) ts: u64,
    /// What it says.
    pub(crate) data: &'a EventData,
}

impl TaskView<'_> {
    /// The task's full id.
    #[inline]
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.names[self.index as usize]
    }

    /// The event (with a fresh id).
    ///
    /// Built as one expression, inlined into its caller, so that the event is written where
    /// the caller keeps it: an `Event` is some 150 bytes, and one built in a local and then
    /// returned or moved was copied (a `memcpy` call per event, with store-forwarding stalls
    /// on what had just been stored narrowly, seen in profiles). The executor's plain data is
    /// copied without a call to `EventData::clone`.
    #[inline(always)]
    pub(crate) fn to_event(&self) -> Event {
        Event {
            id: super::next_id(),
            timestamp: UNIX_EPOCH + Duration::from_nanos(self.ts),
            source: Source {
                workflow: Some(self.workflow),
                task: Some(TaskRef::in_table(
                    self.names,
                    self.index,
                    self.index,
                    self.subgraph,
                )),
            },
            data: self.data(),
        }
    }

    /// A copy of the data: the executor's plain data without a call to `EventData::clone`.
    #[inline(always)]
    fn data(&self) -> EventData {
        match *self.data {
            EventData::TaskStarted { attempt } => EventData::TaskStarted { attempt },
            EventData::TaskCompleted {
                attempt,
                output: None,
            } => EventData::TaskCompleted {
                attempt,
                output: None,
            },
            EventData::TaskPending => EventData::TaskPending,
            ref data => data.clone(),
        }
    }

    /// Lends the event to `f`, built in this thread's scratch event where it can be: the
    /// scratch's fields are overwritten in place (no 150-byte event assembled and then moved;
    /// see [`to_event`](Self::to_event)), and its data is cleared after `f`, so that it keeps
    /// no task output alive. A publish from inside `f` (a handler running a run of its own)
    /// finds the scratch lent and builds a fresh event.
    #[inline]
    pub(crate) fn with_event<R>(&self, f: impl FnOnce(&Event) -> R) -> R {
        thread_local! {
            static SCRATCH: RefCell<Option<Event>> = const { RefCell::new(None) };
        }
        SCRATCH.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return f(&self.to_event());
            };
            let event = match &mut *slot {
                Some(e) => {
                    self.refill(e);
                    e
                }
                empty => empty.insert(self.to_event()),
            };
            let r = f(event);
            if !matches!(
                event.data,
                EventData::TaskStarted { .. }
                    | EventData::TaskPending
                    | EventData::TaskCompleted { output: None, .. }
            ) {
                event.data = EventData::TaskPending;
            }
            r
        })
    }

    /// Overwrites `e` with this event (and a fresh id), field by field.
    #[inline(always)]
    fn refill(&self, e: &mut Event) {
        e.id = super::next_id();
        e.timestamp = UNIX_EPOCH + Duration::from_nanos(self.ts);
        e.source.workflow = Some(self.workflow);
        match &mut e.source.task {
            Some(t) => {
                t.point_into(self.names, self.index);
                t.index = self.index;
                t.subgraph = self.subgraph;
            }
            none => {
                *none = Some(TaskRef::in_table(
                    self.names,
                    self.index,
                    self.index,
                    self.subgraph,
                ))
            }
        }
        // The executor's plain data over the same kind is one field written in place: the
        // data built aside and copied in was a wide load of narrow stores just made (a
        // store-forwarding stall per event, seen in profiles) and a call to its drop glue.
        match (&mut e.data, self.data) {
            (
                EventData::TaskCompleted {
                    attempt,
                    output: None,
                },
                &EventData::TaskCompleted {
                    attempt: a,
                    output: None,
                },
            )
            | (EventData::TaskStarted { attempt }, &EventData::TaskStarted { attempt: a }) => {
                *attempt = a
            }
            (data, _) => *data = self.data(),
        }
    }
}

type Middleware = dyn Fn(Event) -> Option<Event> + Send + Sync;

/// Which events a subscription, stream or history query wants: kinds, and optionally one
/// named signal, one workflow, one task (Blinker's `sender=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    kinds: u32,
    name: Option<Arc<str>>,
    workflow: Option<u64>,
    task: Option<Arc<str>>,
}

impl EventFilter {
    /// Every kind, from any source.
    pub fn all() -> Self {
        EventFilter {
            kinds: EventKind::ALL.iter().fold(0, |m, k| m | k.bit()),
            ..Default::default()
        }
    }

    /// Events of one kind.
    pub fn kind(kind: EventKind) -> Self {
        EventFilter {
            kinds: kind.bit(),
            ..Default::default()
        }
    }

    /// Events of any of these kinds.
    pub fn kinds(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        EventFilter {
            kinds: kinds.into_iter().fold(0, |m, k| m | k.bit()),
            ..Default::default()
        }
    }

    /// Events of the named user-defined signal `name`.
    pub fn named(name: &str) -> Self {
        EventFilter {
            kinds: EventKind::Custom.bit(),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// Only events of this workflow run.
    pub fn workflow(mut self, id: u64) -> Self {
        self.workflow = Some(id);
        self
    }

    /// Only events about this task (by id; `parent/child` for a subgraph's task).
    pub fn task(mut self, id: &str) -> Self {
        self.task = Some(id.into());
        self
    }

    /// Whether the task event `v` (of kind `kind`, not a custom one) passes the filter:
    /// [`matches`](Self::matches) without the event.
    #[inline]
    fn matches_task(&self, kind: EventKind, v: &TaskView<'_>) -> bool {
        if self.kinds & kind.bit() == 0 || self.name.is_some() {
            // A named filter takes only custom events.
            return false;
        }
        if self.workflow.is_some_and(|w| w != v.workflow) {
            return false;
        }
        match &self.task {
            Some(task) => Arc::ptr_eq(v.name(), task) || **v.name() == **task,
            None => true,
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let kind = event.kind();
        if self.kinds & kind.bit() == 0 {
            return false;
        }
        if let Some(name) = &self.name {
            match &event.data {
                EventData::Custom { name: n, .. } if n == name => {}
                _ => return false,
            }
        }
        if self.workflow.is_some() && self.workflow != event.source.workflow {
            return false;
        }
        if let Some(task) = &self.task {
            match &event.source.task {
                Some(t) if t.is(task) => {}
                _ => return false,
            }
        }
        true
    }
}

/// A subscription in the registry.
struct Sub {
    id: u64,
    filter: EventFilter,
    /// Runs the handler; `false` means its owner is gone (weak subscription).
    handler: Box<HandlerFn>,
    /// For a weak subscription: whether its owner is still alive.
    alive: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Takes the executor's task events unbuilt (`publish_task`); `handler` takes the others.
    task_hook: Option<TaskHook>,
}

/// An async stream's sending side.
struct StreamSub {
    id: u64,
    filter: EventFilter,
    tx: broadcast::Sender<Event>,
}

/// The immutable set of receivers; replaced as a whole on every change.
#[derive(Default)]
struct Registry {
    subs: Vec<Arc<Sub>>,
    streams: Vec<Arc<StreamSub>>,
    middleware: Vec<Arc<Middleware>>,
    muted_names: Vec<Arc<str>>,
}

struct BusInner {
    wanted: AtomicU32,
    /// Bumped after every new registry (see the module doc).
    generation: AtomicU64,
    muted: AtomicU32,
    registry: ArcSwap<Registry>,
    write: Mutex<()>,
    history: Option<(usize, Mutex<VecDeque<Event>>)>,
    next_sub: AtomicU64,
}

impl BusInner {
    /// Replaces the registry with `f(copy of it)` and recomputes `wanted`.
    fn change(&self, f: impl FnOnce(&mut Registry)) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.registry.load();
        let mut next = Registry {
            subs: cur.subs.clone(),
            streams: cur.streams.clone(),
            middleware: cur.middleware.clone(),
            muted_names: cur.muted_names.clone(),
        };
        f(&mut next);
        self.publish_registry(next);
    }

    fn publish_registry(&self, reg: Registry) {
        let mut want = reg
            .subs
            .iter()
            .map(|s| s.filter.kinds)
            .chain(reg.streams.iter().map(|s| s.filter.kinds))
            .fold(0, |m, k| m | k);
        if self.history.is_some() {
            want = EventFilter::all().kinds;
        }
        self.registry.store(Arc::new(reg));
        self.generation.fetch_add(1, Release);
        self.wanted.store(want & !self.muted.load(Relaxed), Release);
    }

    fn remove(&self, ids: &[u64]) {
        self.change(|r| {
            r.subs.retain(|s| !ids.contains(&s.id));
            r.streams.retain(|s| !ids.contains(&s.id));
        });
    }
}

/// A publisher's copy of a bus's registry (see the module doc).
pub(crate) struct Receivers {
    generation: u64,
    registry: Arc<Registry>,
    /// The bus it was taken from (a copy from another bus is never used).
    bus: Weak<BusInner>,
    /// Per subscription of `registry`, its receiver for the run (see the module doc), made at
    /// the first task event it gets.
    runs: Box<[RunCell]>,
    /// Whether every event takes the general path (middleware or a history).
    general: bool,
    /// Per kind (by its number), the subscriptions whose filter takes it: a task event
    /// visits only those.
    by_kind: Box<[Box<[Taker]>]>,
    /// Per kind (by its number), whether one of `by_kind`'s handlers takes every event of the
    /// kind (its filter names no workflow and no task): the event is then built without
    /// asking the filters.
    always_built: u32,
    /// The kinds some stream takes.
    stream_kinds: u32,
    /// Per kind (by its number), the subscription that is its only receiver, if that has a
    /// task hook (`NO_SUB` otherwise): such an event goes straight to the hook.
    solo: Box<[u32]>,
}

/// No subscription (in [`Receivers::solo`]).
const NO_SUB: u32 = u32::MAX;

/// A subscription that may take a kind of task event (in [`Receivers::by_kind`]).
#[derive(Debug, Clone, Copy)]
struct Taker {
    /// Its index in the registry.
    sub: u32,
    /// Whether it takes events unbuilt (a task hook).
    hook: bool,
    /// Whether its filter takes every event of the kind (no workflow, no task named).
    open: bool,
}

impl Taker {
    /// Subscription `sub` of `reg`, if its filter takes kind `k` (by its number) of task event.
    fn of(reg: &Registry, sub: u32, k: u32) -> Option<Taker> {
        let s = &reg.subs[sub as usize];
        let f = &s.filter;
        // A named filter takes only custom events, which take the general path.
        (f.kinds & (1 << k) != 0 && f.name.is_none()).then_some(Taker {
            sub,
            hook: s.task_hook.is_some(),
            open: f.workflow.is_none() && f.task.is_none(),
        })
    }

    /// Whether it takes task event `v`.
    #[inline(always)]
    fn takes(self, reg: &Registry, kind: EventKind, v: &TaskView<'_>) -> bool {
        self.open || reg.subs[self.sub as usize].filter.matches_task(kind, v)
    }
}

impl fmt::Debug for Receivers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receivers")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Configures an [`EventBus`].
#[derive(Debug, Default)]
pub struct EventBusBuilder {
    history: usize,
}

impl EventBusBuilder {
    /// Keeps the last `limit` events (the seed's `history_limit`; default 0: an engine
    /// publishes millions of events, so history is opt-in).
    pub fn history(mut self, limit: usize) -> Self {
        self.history = limit;
        self
    }

    /// Builds the bus.
    pub fn build(self) -> EventBus {
        let history = (self.history > 0).then(|| {
            (
                self.history,
                Mutex::new(VecDeque::with_capacity(self.history.min(4096))),
            )
        });
        let want = if history.is_some() {
            EventFilter::all().kinds
        } else {
            0
        };
        EventBus {
            inner: Arc::new(BusInner {
                wanted: AtomicU32::new(want),
                generation: AtomicU64::new(0),
                muted: AtomicU32::new(0),
                registry: ArcSwap::from_pointee(Registry::default()),
                write: Mutex::new(()),
                history,
                next_sub: AtomicU64::new(1),
            }),
        }
    }
}

/// Central event dispatch: one signal per [`EventKind`], named signals for user events,
/// synchronous handlers, async streams, middleware and history. Cheap to clone (clones share
/// everything).
///
/// ```
/// use nerv::{EventBus, EventKind, EventFilter};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let bus = EventBus::new();
/// let seen = Arc::new(AtomicUsize::new(0));
/// let s = seen.clone();
/// let sub = bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |_| {
///     s.fetch_add(1, Ordering::Relaxed);
/// });
/// assert!(bus.wants(EventKind::TaskCompleted));
/// assert!(!bus.wants(EventKind::TaskStarted));
/// drop(sub); // unsubscribes
/// assert!(!bus.wants(EventKind::TaskCompleted));
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = self.inner.registry.load();
        f.debug_struct("EventBus")
            .field("subscriptions", &reg.subs.len())
            .field("streams", &reg.streams.len())
            .field("middleware", &reg.middleware.len())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus without history.
    pub fn new() -> Self {
        EventBusBuilder::default().build()
    }

    /// Configures a bus.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::default()
    }

    /// Whether anyone receives events of `kind` (a handler, a stream or the history) and the
    /// kind is not muted: one atomic load, so that publishers can skip building events
    /// nobody wants.
    #[inline]
    pub fn wants(&self, kind: EventKind) -> bool {
        self.inner.wanted.load(Relaxed) & kind.bit() != 0
    }

    /// The signal of a built-in kind.
    pub fn signal(&self, kind: EventKind) -> Signal {
        Signal {
            bus: self.clone(),
            filter: EventFilter::kind(kind),
        }
    }

    /// The named signal for user-defined events called `name`.
    pub fn named(&self, name: &str) -> Signal {
        Signal {
            bus: self.clone(),
            filter: EventFilter::named(name),
        }
    }

    /// Starts a subscription to events that pass `filter`.
    pub fn on(&self, filter: EventFilter) -> SubscribeBuilder {
        SubscribeBuilder {
            bus: self.clone(),
            filter,
        }
    }

    /// Runs `handler` on the publishing thread for every event that passes `filter`, until
    /// the returned [`Subscription`] is dropped or [`Subscription::unsubscribe`]d.
    pub fn subscribe(
        &self,
        filter: EventFilter,
        handler: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Subscription {
        self.add_sub(filter, strong(handler), None, None)
    }

    /// Like [`EventBus::subscribe`], but the executor's task events reach `task_hook` unbuilt
    /// (see the module doc); every other event reaches `handler`. `task_hook` must do what
    /// `handler` would do with the event [`TaskView::to_event`] builds.
    ///
    /// `per_run(run)` may give a receiver for the run `run`'s task events (see the module doc):
    /// it is asked once per run and publisher, at the first task event of the run.
    pub(crate) fn subscribe_task(
        &self,
        filter: EventFilter,
        handler: impl Fn(&Event) + Send + Sync + 'static,
        task_hook: impl Fn(&TaskView<'_>) + Send + Sync + 'static,
        per_run: impl Fn(u64) -> Option<Arc<dyn RunHook>> + Send + Sync + 'static,
    ) -> Subscription {
        self.add_sub(
            filter,
            strong(handler),
            None,
            Some(TaskHook {
                take: Box::new(task_hook),
                per_run: Box::new(per_run),
            }),
        )
    }

    /// Like [`EventBus::subscribe`], but the subscription lives only as long as `owner`
    /// (Blinker's `weak=True`): the bus holds a weak reference, the handler gets the owner,
    /// and once the owner is dropped the subscription is removed at the next matching event
    /// (or by [`EventBus::prune`]). Keep or [`Subscription::detach`] the returned handle.
    pub fn subscribe_weak<O: Send + Sync + 'static>(
        &self,
        filter: EventFilter,
        owner: &Arc<O>,
        handler: impl Fn(&O, &Event) + Send + Sync + 'static,
    ) -> Subscription {
        let weak: Weak<O> = Arc::downgrade(owner);
        let probe = weak.clone();
        self.add_sub(
            filter,
            Box::new(move |e| match weak.upgrade() {
                Some(o) => {
                    handler(&o, e);
                    true
                }
                None => false,
            }),
            Some(Box::new(move || probe.strong_count() > 0)),
            None,
        )
    }

    fn add_sub(
        &self,
        filter: EventFilter,
        handler: Box<HandlerFn>,
        alive: Option<Box<dyn Fn() -> bool + Send + Sync>>,
        task_hook: Option<TaskHook>,
    ) -> Subscription {
        let id = self.inner.next_sub.fetch_add(1, Relaxed);
        let sub = Arc::new(Sub {
            id,
            filter,
            handler,
            alive,
            task_hook,
        });
        self.inner.change(|r| r.subs.push(sub));
        Subscription {
            bus: Arc::downgrade(&self.inner),
            id,
            active: true,
        }
    }

    /// An async stream of the events that pass `filter`, holding at most `capacity` unread
    /// events: a reader that falls behind loses the oldest and is told how many
    /// ([`Lagged`]); the publisher never waits for it.
    pub fn stream(&self, filter: EventFilter, capacity: usize) -> EventStream {
        let (tx, rx) = broadcast::channel(capacity.max(1));
        let id = self.inner.next_sub.fetch_add(1, Relaxed);
        self.inner
            .change(|r| r.streams.push(Arc::new(StreamSub { id, filter, tx })));
        EventStream { rx }
    }

    /// Adds a middleware: it sees every published event (after those added before it) and
    /// returns it, a transformed event, or `None` to drop it.
    pub fn add_middleware(&self, m: impl Fn(Event) -> Option<Event> + Send + Sync + 'static) {
        let m: Arc<Middleware> = Arc::new(m);
        self.inner.change(|r| r.middleware.push(m));
    }

    /// Runs `body` with `handler` subscribed to `filter`, and unsubscribes it afterwards
    /// (Blinker's `connected_to`).
    pub fn connected_to<R>(
        &self,
        filter: EventFilter,
        handler: impl Fn(&Event) + Send + Sync + 'static,
        body: impl FnOnce() -> R,
    ) -> R {
        let _sub = self.subscribe(filter, handler);
        body()
    }

    /// Mutes a built-in kind until the guard is dropped: its events are dropped on publish
    /// and the executor stops building them.
    pub fn mute(&self, kind: EventKind) -> MuteGuard {
        self.inner.muted.fetch_or(kind.bit(), Relaxed);
        self.inner.change(|_| {});
        MuteGuard {
            bus: self.clone(),
            what: Muted::Kind(kind),
        }
    }

    /// Mutes a named signal until the guard is dropped.
    pub fn mute_named(&self, name: &str) -> MuteGuard {
        let name: Arc<str> = name.into();
        let n = name.clone();
        self.inner.change(|r| r.muted_names.push(n));
        MuteGuard {
            bus: self.clone(),
            what: Muted::Name(name),
        }
    }

    /// Number of handlers and streams that would receive `event`.
    pub fn receivers(&self, event: &Event) -> usize {
        let reg = self.inner.registry.load();
        reg.subs.iter().filter(|s| s.filter.matches(event)).count()
            + reg
                .streams
                .iter()
                .filter(|s| s.filter.matches(event))
                .count()
    }

    /// Number of live subscriptions (handlers) and streams on the bus.
    pub fn subscription_count(&self) -> usize {
        let reg = self.inner.registry.load();
        reg.subs.len() + reg.streams.len()
    }

    /// Publishes `data` from `source`, stamped now; returns the event's id.
    pub fn emit(&self, source: Source, data: EventData) -> u64 {
        self.publish(Event::new(source, data))
    }

    /// Publishes a user-defined event on the named signal `name`.
    pub fn emit_named(&self, name: &str, source: Source, payload: Payload) -> u64 {
        self.publish(Event::new(
            source,
            EventData::Custom {
                name: name.into(),
                payload,
            },
        ))
    }

    /// Publishes an event (see the module doc for the steps); returns its id. Events of a
    /// muted kind are dropped.
    pub fn publish(&self, event: Event) -> u64 {
        let id = event.id;
        let kind = event.kind();
        if self.inner.muted.load(Relaxed) & kind.bit() != 0 {
            return id;
        }
        let reg = self.inner.registry.load();
        if kind == EventKind::Custom && !reg.muted_names.is_empty() {
            if let EventData::Custom { name, .. } = &event.data {
                if reg.muted_names.iter().any(|m| m == name) {
                    return id;
                }
            }
        }
        let mut event = event;
        for m in &reg.middleware {
            match call_guarded(kind, || m(event)) {
                Some(Some(e)) => event = e,
                // Dropped by the middleware, or it panicked (reported).
                _ => return id,
            }
        }
        if let Some((limit, h)) = &self.inner.history {
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == *limit {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        let mut dead: Vec<u64> = Vec::new();
        for s in &reg.subs {
            if s.filter.matches(&event) && call_guarded(kind, || (s.handler)(&event)) == Some(false)
            {
                dead.push(s.id);
            }
        }
        for s in &reg.streams {
            if s.filter.matches(&event) && s.tx.send(event.clone()).is_err() {
                dead.push(s.id);
            }
        }
        drop(reg);
        if !dead.is_empty() {
            self.inner.remove(&dead);
        }
        id
    }

    /// Publishes the executor's task event `v`: [`publish`](Self::publish) of
    /// [`v.to_event()`](TaskView::to_event), building the event only if a receiver needs it
    /// (see the module doc).
    ///
    /// `cache`, if it was taken from this bus ([`EventBus::receivers_cache`]) and is still
    /// current, saves loading the registry.
    pub(crate) fn publish_task(&self, cache: Option<&Receivers>, v: &TaskView<'_>) {
        let kind = v.data.kind();
        if self.inner.muted.load(Relaxed) & kind.bit() != 0 {
            return;
        }
        let current = cache.filter(|c| {
            c.generation == self.inner.generation.load(Acquire)
                && std::ptr::eq(c.bus.as_ptr(), Arc::as_ptr(&self.inner))
        });
        let Some(c) = current else {
            let reg = self.inner.registry.load();
            if kind == EventKind::Custom
                || !reg.middleware.is_empty()
                || self.inner.history.is_some()
            {
                self.publish(v.to_event());
            } else {
                let takers: Vec<Taker> = (0..reg.subs.len() as u32)
                    .filter_map(|i| Taker::of(&reg, i, kind as u32))
                    .collect();
                self.deliver_task(&reg, &takers, &[], (true, false), kind, v);
            }
            return;
        };
        if c.general || kind == EventKind::Custom {
            // Named signals and their mutes, middleware, history: the general path.
            self.publish(v.to_event());
            return;
        }
        let k = kind as usize;
        if let Some(&i) = c.solo.get(k).filter(|&&i| i != NO_SUB) {
            // One receiver, a task hook: straight to it.
            let s = &c.registry.subs[i as usize];
            if let (true, Some(hook)) = (s.filter.matches_task(kind, v), &s.task_hook) {
                to_hook(kind, hook, c.runs.get(i as usize), v);
            }
            return;
        }
        let flags = (
            c.stream_kinds & kind.bit() != 0,
            c.always_built & kind.bit() != 0,
        );
        self.deliver_task(&c.registry, &c.by_kind[k], &c.runs, flags, kind, v);
    }

    /// Delivers task event `v` of kind `kind` to the subscriptions `takers` (in order; each
    /// is still matched against its filter, unless open), with their per-run receivers
    /// `runs` (by subscription; empty: none), and to the matching streams if `streams`.
    /// `built`: some open handler takes it (the event is built without asking the filters).
    #[inline]
    fn deliver_task(
        &self,
        reg: &Registry,
        takers: &[Taker],
        runs: &[RunCell],
        (streams, built): (bool, bool),
        kind: EventKind,
        v: &TaskView<'_>,
    ) {
        // Built once, before delivering, if a handler or a stream takes it (built into a
        // variable that is then only lent: no copy of the event per receiver).
        let wanted = built
            || takers.iter().any(|t| !t.hook && t.takes(reg, kind, v))
            || (streams && reg.streams.iter().any(|s| s.filter.matches_task(kind, v)));
        if wanted {
            v.with_event(|e| self.deliver_to(reg, takers, runs, streams, kind, v, Some(e)));
        } else {
            self.deliver_to(reg, takers, runs, false, kind, v, None);
        }
    }

    /// [`deliver_task`](Self::deliver_task)'s deliveries, with the event if it was built.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn deliver_to(
        &self,
        reg: &Registry,
        takers: &[Taker],
        runs: &[RunCell],
        streams: bool,
        kind: EventKind,
        v: &TaskView<'_>,
        event: Option<&Event>,
    ) {
        let mut dead: Vec<u64> = Vec::new();
        for &t in takers {
            if !t.takes(reg, kind, v) {
                continue;
            }
            let s = &reg.subs[t.sub as usize];
            match (&s.task_hook, event) {
                (Some(hook), _) => to_hook(kind, hook, runs.get(t.sub as usize), v),
                (None, Some(e)) => {
                    if call_guarded(kind, || (s.handler)(e)) == Some(false) {
                        dead.push(s.id);
                    }
                }
                (None, None) => unreachable!("a handler took the event: it was built"),
            }
        }
        if let (true, Some(e)) = (streams, event) {
            for s in &reg.streams {
                if s.filter.matches_task(kind, v) && s.tx.send(e.clone()).is_err() {
                    dead.push(s.id);
                }
            }
        }
        if !dead.is_empty() {
            self.inner.remove(&dead);
        }
    }

    /// A copy of the current registry for [`publish_task`](Self::publish_task), valid until
    /// the next change of subscriptions, streams, middleware or mutes. It keeps the
    /// registry's handlers alive while it lives: keep it no longer than a run.
    pub(crate) fn receivers_cache(&self) -> Receivers {
        // The generation first: a change between the two loads leaves the copy marked stale.
        let generation = self.inner.generation.load(Acquire);
        let registry = self.inner.registry.load_full();
        // Per kind, the subscriptions that may take it (a named filter takes custom events
        // only, which take the general path).
        let by_kind: Box<[Box<[Taker]>]> = (0..u32::BITS)
            .map(|k| {
                (0..registry.subs.len() as u32)
                    .filter_map(|i| Taker::of(&registry, i, k))
                    .collect()
            })
            .collect();
        let always_built = (0..u32::BITS)
            .filter(|&k| by_kind[k as usize].iter().any(|t| t.open && !t.hook))
            .fold(0, |m, k| m | 1 << k);
        let stream_kinds = registry.streams.iter().fold(0, |m, s| m | s.filter.kinds);
        let solo = by_kind
            .iter()
            .enumerate()
            .map(|(k, takers)| match **takers {
                [t] if t.hook && stream_kinds & (1 << k) == 0 => t.sub,
                _ => NO_SUB,
            })
            .collect();
        Receivers {
            generation,
            solo,
            stream_kinds,
            runs: registry.subs.iter().map(|_| OnceLock::new()).collect(),
            general: !registry.middleware.is_empty() || self.inner.history.is_some(),
            by_kind,
            always_built,
            registry,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Removes weak subscriptions whose owner is gone and streams whose reader is gone.
    pub fn prune(&self) {
        let reg = self.inner.registry.load();
        let dead: Vec<u64> = reg
            .streams
            .iter()
            .filter(|s| s.tx.receiver_count() == 0)
            .map(|s| s.id)
            .chain(
                reg.subs
                    .iter()
                    .filter(|s| s.alive.as_ref().is_some_and(|a| !a()))
                    .map(|s| s.id),
            )
            .collect();
        drop(reg);
        if !dead.is_empty() {
            self.inner.remove(&dead);
        }
    }

    /// The events in the history, oldest first (empty without history).
    pub fn history(&self) -> Vec<Event> {
        self.history_matching(&EventFilter::all())
    }

    /// The events in the history that pass `filter`, oldest first.
    pub fn history_matching(&self, filter: &EventFilter) -> Vec<Event> {
        match &self.inner.history {
            Some((_, h)) => h
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|e| filter.matches(e))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Empties the history.
    pub fn clear_history(&self) {
        if let Some((_, h)) = &self.inner.history {
            h.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// Runs `f`, catching a panic: a panicking handler or middleware is reported and never
/// breaks the publisher.
/// Gives task event `v` to a subscription's task hook: to its receiver for the run (`cell`,
/// made here at the run's first event) first, to `hook.take` if that declines it.
#[inline]
fn to_hook(kind: EventKind, hook: &TaskHook, cell: Option<&RunCell>, v: &TaskView<'_>) {
    call_guarded(kind, || {
        let run = cell.and_then(|c| c.get_or_init(|| (hook.per_run)(v.workflow)).as_deref());
        if !run.is_some_and(|r| r.take(v)) {
            (hook.take)(v);
        }
    });
}

fn call_guarded<R>(kind: EventKind, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let msg = crate::exec::runner::panic_message(&*p);
            tracing::error!(event = %kind, panic = %msg, "an event handler panicked");
            None
        }
    }
}

/// One event type's signal (or a named user signal): connect handlers, send, mute, ask
/// whether anyone listens.
#[derive(Clone, Debug)]
pub struct Signal {
    bus: EventBus,
    filter: EventFilter,
}

impl Signal {
    /// Runs `handler` for every event of this signal until the subscription is dropped.
    pub fn connect(&self, handler: impl Fn(&Event) + Send + Sync + 'static) -> Subscription {
        self.bus.subscribe(self.filter.clone(), handler)
    }

    /// Starts a filtered subscription to this signal (by workflow, task, weak owner).
    pub fn on(&self) -> SubscribeBuilder {
        self.bus.on(self.filter.clone())
    }

    /// Whether any handler or stream receives this signal (and it is not muted).
    pub fn has_receivers(&self) -> bool {
        let reg = self.bus.inner.registry.load();
        let k = self.filter.kinds;
        let named =
            |f: &EventFilter| f.kinds & k != 0 && (f.name.is_none() || f.name == self.filter.name);
        !self.is_muted()
            && (reg.subs.iter().any(|s| named(&s.filter))
                || reg.streams.iter().any(|s| named(&s.filter)))
    }

    /// Whether the signal is muted.
    pub fn is_muted(&self) -> bool {
        match &self.filter.name {
            Some(n) => self
                .bus
                .inner
                .registry
                .load()
                .muted_names
                .iter()
                .any(|m| m == n),
            None => self.bus.inner.muted.load(Relaxed) & self.filter.kinds != 0,
        }
    }

    /// Mutes the signal until the guard is dropped.
    pub fn mute(&self) -> MuteGuard {
        match &self.filter.name {
            Some(n) => self.bus.mute_named(n),
            None => {
                let kind = EventKind::ALL
                    .into_iter()
                    .find(|k| k.bit() == self.filter.kinds)
                    .unwrap_or(EventKind::Custom);
                self.bus.mute(kind)
            }
        }
    }

    /// Sends a user-defined event on a named signal; returns its id (`None` for a built-in
    /// kind's signal: those carry typed data, publish them with [`EventBus::emit`]).
    pub fn send(&self, source: Source, payload: Payload) -> Option<u64> {
        let name = self.filter.name.as_deref()?;
        Some(self.bus.emit_named(name, source, payload))
    }
}

/// Builds a subscription: add sender filters, then connect a handler or open a stream.
#[derive(Debug)]
pub struct SubscribeBuilder {
    bus: EventBus,
    filter: EventFilter,
}

impl SubscribeBuilder {
    /// Only events of this workflow run.
    pub fn workflow(mut self, id: u64) -> Self {
        self.filter = self.filter.workflow(id);
        self
    }

    /// Only events about this task.
    pub fn task(mut self, id: &str) -> Self {
        self.filter = self.filter.task(id);
        self
    }

    /// Connects a handler.
    pub fn connect(self, handler: impl Fn(&Event) + Send + Sync + 'static) -> Subscription {
        self.bus.subscribe(self.filter, handler)
    }

    /// Connects a handler that lives as long as `owner` ([`EventBus::subscribe_weak`]).
    pub fn connect_weak<O: Send + Sync + 'static>(
        self,
        owner: &Arc<O>,
        handler: impl Fn(&O, &Event) + Send + Sync + 'static,
    ) -> Subscription {
        self.bus.subscribe_weak(self.filter, owner, handler)
    }

    /// Opens an async stream ([`EventBus::stream`]).
    pub fn stream(self, capacity: usize) -> EventStream {
        self.bus.stream(self.filter, capacity)
    }
}

/// A subscription: unsubscribes when dropped, unless [`Subscription::detach`]ed.
#[must_use = "dropping a Subscription unsubscribes it at once; call .detach() to keep it"]
pub struct Subscription {
    bus: Weak<BusInner>,
    id: u64,
    active: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Subscription {
    /// Unsubscribes now.
    pub fn unsubscribe(mut self) {
        self.end();
    }

    /// Keeps the subscription for the bus's lifetime (a weak one: for its owner's).
    pub fn detach(mut self) {
        self.active = false;
    }

    /// Whether the subscription is still on the bus (a weak one ends with its owner).
    pub fn is_active(&self) -> bool {
        self.bus
            .upgrade()
            .is_some_and(|b| b.registry.load().subs.iter().any(|s| s.id == self.id))
    }

    fn end(&mut self) {
        if std::mem::take(&mut self.active) {
            if let Some(b) = self.bus.upgrade() {
                b.remove(&[self.id]);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.end();
    }
}

enum Muted {
    Kind(EventKind),
    Name(Arc<str>),
}

/// Keeps a signal muted; unmutes it when dropped.
#[must_use = "the signal is unmuted when the guard is dropped"]
pub struct MuteGuard {
    bus: EventBus,
    what: Muted,
}

impl fmt::Debug for MuteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MuteGuard")
    }
}

impl Drop for MuteGuard {
    fn drop(&mut self) {
        match &self.what {
            Muted::Kind(k) => {
                self.bus.inner.muted.fetch_and(!k.bit(), Relaxed);
                self.bus.inner.change(|_| {});
            }
            Muted::Name(n) => self.bus.inner.change(|r| {
                if let Some(i) = r.muted_names.iter().position(|m| m == n) {
                    r.muted_names.remove(i);
                }
            }),
        }
    }
}

/// A reader that fell behind: `missed` events were dropped from its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream lagged: {missed} events were missed")]
pub struct Lagged {
    /// How many events were lost.
    pub missed: u64,
}

/// An async stream of events from an [`EventBus`] (bounded; see [`EventBus::stream`]).
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Event>,
}

impl EventStream {
    /// The next event; `Err(Lagged)` once after events were lost; `None` when the bus is
    /// gone and every event was read.
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.recv().await {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Lagged { missed: n })),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting, without blocking (`None`: nothing waiting, or the
    /// bus is gone).
    pub fn try_recv(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.try_recv() {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(Lagged { missed: n })),
            Err(_) => None,
        }
    }

    /// Blocks the thread for the next event (not for use inside async code).
    pub fn blocking_recv(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.blocking_recv() {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Lagged { missed: n })),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The stream as a `futures` `Stream`.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Event, Lagged>> {
        futures_util::stream::unfold(self, |mut s| async move {
            let item = s.recv().await?;
            Some((item, s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A graph's names, task 3 being `id` (the task of `view`).
    fn table(id: &str) -> Arc<[Arc<str>]> {
        let id: Arc<str> = id.into();
        (0..4).map(|_| id.clone()).collect()
    }

    fn view<'a>(names: &'a Arc<[Arc<str>]>, workflow: u64, data: &'a EventData) -> TaskView<'a> {
        TaskView {
            workflow,
            names,
            index: 3,
            subgraph: false,
            ts: 5,
            data,
        }
    }

    fn counter(n: &Arc<AtomicUsize>) -> impl Fn(&Event) + Send + Sync + 'static {
        let n = n.clone();
        move |_| {
            n.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn lent_events_are_whole_when_built_inside_one_another() {
        let (a, b) = (table("a"), table("b"));
        let started = EventData::TaskStarted { attempt: 2 };
        let failed = EventData::TaskFailed {
            attempt: 1,
            error: crate::TaskError::msg("boom"),
        };
        let check = |e: &Event, name: &str, workflow: u64, kind: EventKind| {
            assert_eq!(e.source.task_id(), Some(name));
            assert_eq!(e.source.workflow, Some(workflow));
            assert_eq!(e.kind(), kind);
            assert_eq!(e.timestamp, UNIX_EPOCH + Duration::from_nanos(5));
        };
        // The scratch is filled, then refilled with another task's event and data.
        let first = view(&a, 1, &started).with_event(|e| e.id);
        view(&b, 2, &failed).with_event(|outer| {
            assert_ne!(outer.id, first);
            check(outer, "b", 2, EventKind::TaskFailed);
            // Built while the scratch is lent: a fresh event, and the lent one is untouched.
            let inner = view(&a, 7, &started).with_event(|inner| {
                check(inner, "a", 7, EventKind::TaskStarted);
                inner.clone()
            });
            assert_ne!(inner.id, outer.id);
            check(outer, "b", 2, EventKind::TaskFailed);
            match &outer.data {
                EventData::TaskFailed { error, attempt: 1 } => {
                    assert!(error.to_string().contains("boom"))
                }
                d => panic!("{d:?}"),
            }
        });
    }

    #[test]
    fn a_refilled_event_carries_the_new_attempt_and_data() {
        // Events of one kind one after the other (the scratch's data written in place), then
        // of other kinds: each lent event is the one its view stands for.
        let a = table("a");
        let completed = |attempt| EventData::TaskCompleted {
            attempt,
            output: None,
        };
        let with_output = EventData::TaskCompleted {
            attempt: 4,
            output: Some(Arc::from(&b"out"[..])),
        };
        let datas = [
            completed(1),
            completed(3),
            EventData::TaskStarted { attempt: 2 },
            EventData::TaskStarted { attempt: 5 },
            with_output.clone(),
            completed(6),
            EventData::TaskPending,
            completed(7),
        ];
        for d in &datas {
            let got = view(&a, 1, d).with_event(|e| e.data.clone());
            assert_eq!(format!("{got:?}"), format!("{d:?}"));
        }
    }

    #[test]
    fn publish_task_filters_like_publish_and_builds_the_event_for_handlers_and_streams() {
        let bus = EventBus::new();
        let (all, only_a, only_run2, named) = Default::default();
        let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
        let hooked = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let _subs = [
            bus.subscribe(EventFilter::kind(EventKind::TaskStarted), counter(&all)),
            bus.on(EventFilter::all())
                .task("a")
                .connect(counter(&only_a)),
            bus.on(EventFilter::all())
                .workflow(2)
                .connect(counter(&only_run2)),
            bus.named("x").connect(counter(&named)),
            bus.subscribe(EventFilter::all(), move |e| {
                s.lock().unwrap().push(e.clone())
            }),
            {
                let h = hooked.clone();
                bus.subscribe_task(
                    EventFilter::all(),
                    |_| {},
                    move |v| {
                        assert_eq!(v.data.kind(), EventKind::TaskStarted);
                        h.fetch_add(1, Relaxed);
                    },
                    |_| None,
                )
            },
        ];
        let mut stream = bus.stream(EventFilter::all().task("b"), 8);
        let (a, b) = (table("a"), table("b"));
        let data = EventData::TaskStarted { attempt: 2 };
        let cache = bus.receivers_cache();
        bus.publish_task(Some(&cache), &view(&a, 1, &data));
        bus.publish_task(Some(&cache), &view(&b, 2, &data));
        bus.publish_task(None, &view(&table("a"), 2, &data));
        let count = |n: &AtomicUsize| n.load(Relaxed);
        assert_eq!(count(&all), 3);
        assert_eq!(count(&only_a), 2, "by id, not only by pointer");
        assert_eq!(count(&only_run2), 2);
        assert_eq!(count(&named), 0);
        assert_eq!(count(&hooked), 3);
        let e = seen.lock().unwrap()[0].clone();
        assert_eq!(e.kind(), EventKind::TaskStarted);
        assert_eq!(e.source.workflow, Some(1));
        assert_eq!(e.source.task_id(), Some("a"));
        assert_eq!(e.source.task.as_ref().map(|t| t.index), Some(3));
        assert_eq!(e.timestamp, UNIX_EPOCH + Duration::from_nanos(5));
        let got = stream.try_recv().unwrap().unwrap();
        assert_eq!(got.source.task_id(), Some("b"));
        assert!(stream.try_recv().is_none());
    }

    /// Takes the events of run 1's task 3 that are not `TaskCompleted`.
    struct Picky(AtomicUsize);

    impl RunHook for Picky {
        fn take(&self, v: &TaskView<'_>) -> bool {
            let mine = v.workflow == 1 && v.data.kind() != EventKind::TaskCompleted;
            if mine {
                self.0.fetch_add(1, Relaxed);
            }
            mine
        }
    }

    #[test]
    fn a_run_s_receiver_is_made_once_per_run_and_its_declined_events_reach_the_task_hook() {
        let bus = EventBus::new();
        let made = Arc::new(AtomicUsize::new(0));
        let hooked = Arc::new(AtomicUsize::new(0));
        let picky = Arc::new(Picky(AtomicUsize::new(0)));
        let (m, h, p) = (made.clone(), hooked.clone(), picky.clone());
        let _sub = bus.subscribe_task(
            EventFilter::all(),
            |_| {},
            move |_| {
                h.fetch_add(1, Relaxed);
            },
            move |run| {
                m.fetch_add(1, Relaxed);
                (run == 1).then(|| p.clone() as Arc<dyn RunHook>)
            },
        );
        let name = table("t");
        let started = EventData::TaskStarted { attempt: 1 };
        let done = EventData::TaskCompleted {
            attempt: 1,
            output: None,
        };
        let run1 = bus.receivers_cache();
        for _ in 0..3 {
            bus.publish_task(Some(&run1), &view(&name, 1, &started));
        }
        bus.publish_task(Some(&run1), &view(&name, 1, &done));
        assert_eq!(made.load(Relaxed), 1, "asked once for the run");
        assert_eq!(picky.0.load(Relaxed), 3);
        assert_eq!(hooked.load(Relaxed), 1, "the declined completion");
        let run2 = bus.receivers_cache();
        bus.publish_task(Some(&run2), &view(&name, 2, &started));
        bus.publish_task(Some(&run2), &view(&name, 2, &started));
        assert_eq!(made.load(Relaxed), 2, "asked once for run 2: none");
        assert_eq!(hooked.load(Relaxed), 3);
        bus.publish_task(None, &view(&name, 1, &started));
        assert_eq!(made.load(Relaxed), 2, "no copy: no receiver");
        assert_eq!((picky.0.load(Relaxed), hooked.load(Relaxed)), (3, 4));
    }

    #[test]
    fn a_kind_s_only_receiver_still_has_its_filter_and_a_stream_gets_its_copy() {
        let bus = EventBus::new();
        let hooked = Arc::new(AtomicUsize::new(0));
        let h = hooked.clone();
        let _sub = bus.subscribe_task(
            EventFilter::kind(EventKind::TaskStarted).workflow(2),
            |_| {},
            move |_| {
                h.fetch_add(1, Relaxed);
            },
            |_| None,
        );
        let name = table("t");
        let started = EventData::TaskStarted { attempt: 1 };
        let cache = bus.receivers_cache();
        assert_ne!(cache.solo[EventKind::TaskStarted as usize], NO_SUB);
        bus.publish_task(Some(&cache), &view(&name, 1, &started));
        bus.publish_task(Some(&cache), &view(&name, 2, &started));
        assert_eq!(hooked.load(Relaxed), 1, "run 2's event only");
        let mut stream = bus.stream(EventFilter::kind(EventKind::TaskStarted), 8);
        let cache = bus.receivers_cache();
        assert_eq!(cache.solo[EventKind::TaskStarted as usize], NO_SUB);
        bus.publish_task(Some(&cache), &view(&name, 2, &started));
        assert_eq!(hooked.load(Relaxed), 2);
        assert_eq!(
            stream.try_recv().unwrap().unwrap().kind(),
            EventKind::TaskStarted
        );
    }

    #[test]
    fn a_stale_cache_is_not_used() {
        let bus = EventBus::new();
        let cache = bus.receivers_cache();
        let n = Arc::new(AtomicUsize::new(0));
        let sub = bus.subscribe(EventFilter::all(), counter(&n));
        let name = table("t");
        let data = EventData::TaskCompleted {
            attempt: 1,
            output: None,
        };
        bus.publish_task(Some(&cache), &view(&name, 1, &data));
        assert_eq!(
            n.load(Relaxed),
            1,
            "subscribed after the copy: still reached"
        );
        let cache = bus.receivers_cache();
        drop(sub);
        bus.publish_task(Some(&cache), &view(&name, 1, &data));
        assert_eq!(
            n.load(Relaxed),
            1,
            "unsubscribed after the copy: not reached"
        );
        let _sub = bus.subscribe(EventFilter::all(), counter(&n));
        let other_bus = EventBus::new();
        while other_bus.inner.generation.load(Relaxed) < bus.inner.generation.load(Relaxed) {
            other_bus.inner.change(|_| {});
        }
        let other = other_bus.receivers_cache();
        assert_eq!(other.generation, bus.receivers_cache().generation);
        bus.publish_task(Some(&other), &view(&name, 1, &data));
        assert_eq!(n.load(Relaxed), 2, "another bus's copy is not used");
    }

    #[test]
    fn publish_task_takes_the_general_path_for_middleware_history_and_mutes() {
        let bus = EventBus::builder().history(4).build();
        let n = Arc::new(AtomicUsize::new(0));
        let _sub = bus.subscribe(EventFilter::all(), counter(&n));
        bus.add_middleware(|e| (e.source.task_id() != Some("drop")).then_some(e));
        let data = EventData::TaskStarted { attempt: 1 };
        let (keep, dropped) = (table("keep"), table("drop"));
        let cache = bus.receivers_cache();
        bus.publish_task(Some(&cache), &view(&keep, 1, &data));
        bus.publish_task(Some(&cache), &view(&dropped, 1, &data));
        assert_eq!(n.load(Relaxed), 1);
        assert_eq!(bus.history().len(), 1);
        let _mute = bus.mute(EventKind::TaskStarted);
        bus.publish_task(Some(&cache), &view(&keep, 1, &data));
        assert_eq!(n.load(Relaxed), 1);
    }
}
