//! Events: every change in a run, as a value (the seed's `Event` and `EventType`).
//!
//! Invariants:
//! - An event is immutable once published; handlers, history and streams share it.
//! - Event ids are unique within the process (not dense, not ordered across threads).
//! - For one task, events are published in causal order (pending → started → retrying …
//!   → completed / failed / skipped / cancelled), and a task's final event is published before
//!   any of its dependents' `TaskStarted`. The run's final workflow event is published after
//!   every task's final event and before [`Run::wait`](crate::Run::wait) returns.
//! - The executor builds an event only when the bus has a listener for its kind
//!   ([`EventBus::wants`]); with none, publishing costs one atomic load.

mod bus;

pub use bus::{
    EventBus, EventBusBuilder, EventFilter, EventStream, Lagged, MuteGuard, Signal,
    SubscribeBuilder, Subscription,
};
pub(crate) use bus::{Receivers, RunHook, TaskView};

use crate::exec::StatusCounts;
use crate::graph::Graph;
use crate::task::TaskError;
use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The type of an event: one signal per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A run was created (its graph is known, nothing started).
    WorkflowCreated,
    /// A run started executing.
    WorkflowStarted,
    /// Every task of the run completed.
    WorkflowCompleted,
    /// The run ended with a failed (or skipped) task.
    WorkflowFailed,
    /// The run was cancelled.
    WorkflowCancelled,
    /// A task is waiting for its dependencies (published once per task at run start).
    TaskPending,
    /// An attempt at a task started.
    TaskStarted,
    /// A task completed.
    TaskCompleted,
    /// A task failed for good (no retry left).
    TaskFailed,
    /// A task was skipped because an upstream task failed.
    TaskSkipped,
    /// A task was cancelled (run cancelled, or fail-fast).
    TaskCancelled,
    /// An attempt failed and the task will run again.
    TaskRetrying,
    /// A running task reported progress.
    TaskProgress,
    /// A memoized task found its output in the memo store (its work did not run).
    MemoHit,
    /// A memoized task did not find its output: its work runs.
    MemoMiss,
    /// A user-defined event on a named signal.
    Custom,
}

impl EventKind {
    /// Every built-in kind, in declaration order.
    pub const ALL: [EventKind; 16] = [
        EventKind::WorkflowCreated,
        EventKind::WorkflowStarted,
        EventKind::WorkflowCompleted,
        EventKind::WorkflowFailed,
        EventKind::WorkflowCancelled,
        EventKind::TaskPending,
        EventKind::TaskStarted,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskSkipped,
        EventKind::TaskCancelled,
        EventKind::TaskRetrying,
        EventKind::TaskProgress,
        EventKind::MemoHit,
        EventKind::MemoMiss,
        EventKind::Custom,
    ];

    /// The seed's upper-case name (`TASK_COMPLETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::WorkflowCreated => "WORKFLOW_CREATED",
            EventKind::WorkflowStarted => "WORKFLOW_STARTED",
            EventKind::WorkflowCompleted => "WORKFLOW_COMPLETED",
            EventKind::WorkflowFailed => "WORKFLOW_FAILED",
            EventKind::WorkflowCancelled => "WORKFLOW_CANCELLED",
            EventKind::TaskPending => "TASK_PENDING",
            EventKind::TaskStarted => "TASK_STARTED",
            EventKind::TaskCompleted => "TASK_COMPLETED",
            EventKind::TaskFailed => "TASK_FAILED",
            EventKind::TaskSkipped => "TASK_SKIPPED",
            EventKind::TaskCancelled => "TASK_CANCELLED",
            EventKind::TaskRetrying => "TASK_RETRYING",
            EventKind::TaskProgress => "TASK_PROGRESS",
            EventKind::MemoHit => "MEMO_HIT",
            EventKind::MemoMiss => "MEMO_MISS",
            EventKind::Custom => "CUSTOM",
        }
    }

    /// Whether this kind is about a task (the others are about a workflow, or custom).
    pub fn is_task(self) -> bool {
        matches!(
            self,
            EventKind::TaskPending
                | EventKind::TaskStarted
                | EventKind::TaskCompleted
                | EventKind::TaskFailed
                | EventKind::TaskSkipped
                | EventKind::TaskCancelled
                | EventKind::TaskRetrying
                | EventKind::TaskProgress
                | EventKind::MemoHit
                | EventKind::MemoMiss
        )
    }

    /// The kind's bit in a listener mask.
    #[inline]
    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event comes from: a workflow run and, for task events, one of its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The run's id ([`Run::id`](crate::Run::id)); for a subgraph's task, the id of the top
    /// run. `None` for user events published outside a run.
    pub workflow: Option<u64>,
    /// The task, for task events.
    pub task: Option<TaskRef>,
}

impl Source {
    /// A source naming a workflow only.
    pub fn workflow(id: u64) -> Self {
        Source {
            workflow: Some(id),
            task: None,
        }
    }

    /// The task's id, if any.
    pub fn task_id(&self) -> Option<&str> {
        self.task.as_ref().map(TaskRef::id)
    }
}

/// A task as named in events.
///
/// Its id is read with [`id`](Self::id). The executor's events share their graph's table of
/// task names instead of holding one name each, so that rebuilding an event for the next
/// task costs no reference count of the task's name (an atomic increment and decrement, and
/// a cache line of the name, per event and task, seen in profiles).
#[derive(Clone)]
pub struct TaskRef {
    name: TaskName,
    /// Its index in its graph (the top graph's index when `subgraph` is false).
    pub index: u32,
    /// Whether it belongs to a subgraph added at run time (its index is then in that
    /// subgraph's own graph).
    pub subgraph: bool,
}

/// Where a [`TaskRef`]'s id is.
#[derive(Clone)]
enum TaskName {
    /// The id itself.
    Own(Arc<str>),
    /// Entry `at` of a graph's names (the executor's; `at` is always in range).
    Table { names: Arc<[Arc<str>]>, at: u32 },
}

impl TaskRef {
    /// The task `id` (`parent/child` for a task of a subgraph), at `index` in its graph.
    pub fn new(id: impl Into<Arc<str>>, index: u32, subgraph: bool) -> Self {
        TaskRef {
            name: TaskName::Own(id.into()),
            index,
            subgraph,
        }
    }

    /// The task of entry `at` of `names` (in range).
    pub(crate) fn in_table(names: &Arc<[Arc<str>]>, at: u32, index: u32, subgraph: bool) -> Self {
        debug_assert!((at as usize) < names.len());
        TaskRef {
            name: TaskName::Table {
                names: names.clone(),
                at,
            },
            index,
            subgraph,
        }
    }

    /// Makes this the task of entry `at` of `names` (in range), without touching the names'
    /// reference counts when it already points into `names`.
    #[inline(always)]
    pub(crate) fn point_into(&mut self, names: &Arc<[Arc<str>]>, at: u32) {
        debug_assert!((at as usize) < names.len());
        match &mut self.name {
            TaskName::Table { names: n, at: a } if Arc::ptr_eq(n, names) => *a = at,
            other => {
                *other = TaskName::Table {
                    names: names.clone(),
                    at,
                }
            }
        }
    }

    /// The task's id; `parent/child` for a task of a subgraph.
    #[inline]
    pub fn id(&self) -> &str {
        match &self.name {
            TaskName::Own(id) => id,
            TaskName::Table { names, at } => &names[*at as usize],
        }
    }

    /// The task's id, shared (no copy of the string).
    pub fn shared_id(&self) -> Arc<str> {
        match &self.name {
            TaskName::Own(id) => id.clone(),
            TaskName::Table { names, at } => names[*at as usize].clone(),
        }
    }

    /// Whether the id is `id`, compared by pointer first.
    pub(crate) fn is(&self, id: &Arc<str>) -> bool {
        let mine = match &self.name {
            TaskName::Own(own) => own,
            TaskName::Table { names, at } => &names[*at as usize],
        };
        Arc::ptr_eq(mine, id) || **mine == **id
    }
}

impl PartialEq for TaskRef {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.subgraph == other.subgraph && self.id() == other.id()
    }
}

impl Eq for TaskRef {}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRef")
            .field("id", &self.id())
            .field("index", &self.index)
            .field("subgraph", &self.subgraph)
            .finish()
    }
}

/// A running task's report of how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, if known.
    pub total: Option<u64>,
    /// What it is doing.
    pub message: Option<String>,
}

/// The payload of a user-defined event: any shareable value, read back by type.
#[derive(Clone)]
pub struct Payload(Arc<dyn Any + Send + Sync>);

impl Payload {
    /// Wraps a value.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Payload(Arc::new(value))
    }

    /// The value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Payload(..)")
    }
}

/// What an event says; its variant determines the event's [`EventKind`].
#[derive(Debug, Clone)]
pub enum EventData {
    /// See [`EventKind::WorkflowCreated`].
    WorkflowCreated {
        /// The run's name ([`RunOptions::name`](crate::RunOptions::name), or empty).
        name: Arc<str>,
        /// Number of tasks in the graph.
        tasks: usize,
    },
    /// See [`EventKind::WorkflowStarted`]. Carries the graph, so that observers can name
    /// and count its tasks without an event per task.
    WorkflowStarted {
        /// The run's graph.
        graph: Graph,
        /// The durable key of the earlier run this run resumes, if it resumes one (see
        /// [`RunOptions::resume`](crate::RunOptions::resume)).
        resumes: Option<Arc<str>>,
    },
    /// See [`EventKind::WorkflowCompleted`].
    WorkflowCompleted {
        /// Final statuses of the top graph's tasks.
        counts: StatusCounts,
        /// Time from start to end.
        elapsed: Duration,
    },
    /// See [`EventKind::WorkflowFailed`].
    WorkflowFailed {
        /// Final statuses of the top graph's tasks.
        counts: StatusCounts,
        /// Time from start to end.
        elapsed: Duration,
        /// The first failed task and its error.
        error: String,
    },
    /// See [`EventKind::WorkflowCancelled`].
    WorkflowCancelled {
        /// Final statuses of the top graph's tasks.
        counts: StatusCounts,
        /// Time from start to end.
        elapsed: Duration,
    },
    /// See [`EventKind::TaskPending`].
    TaskPending,
    /// See [`EventKind::TaskStarted`].
    TaskStarted {
        /// Which attempt (1 for the first).
        attempt: u32,
    },
    /// See [`EventKind::TaskCompleted`].
    TaskCompleted {
        /// The attempt that completed (0: restored from a journal, not run).
        attempt: u32,
        /// The output, serialized (MessagePack), if the task is persisted
        /// ([`GraphBuilder::persist`](crate::GraphBuilder::persist)) and it serialized.
        output: Option<Arc<[u8]>>,
    },
    /// See [`EventKind::TaskFailed`].
    TaskFailed {
        /// The last attempt.
        attempt: u32,
        /// Why it failed.
        error: TaskError,
    },
    /// See [`EventKind::TaskSkipped`].
    TaskSkipped {
        /// The id of the failed upstream task that caused the skip.
        cause: Option<Arc<str>>,
    },
    /// See [`EventKind::TaskCancelled`].
    TaskCancelled {
        /// Attempts made before the cancellation (0 if it never started).
        attempt: u32,
    },
    /// See [`EventKind::TaskRetrying`].
    TaskRetrying {
        /// The attempt that failed.
        attempt: u32,
        /// Its error.
        error: TaskError,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// See [`EventKind::TaskProgress`].
    TaskProgress(Progress),
    /// See [`EventKind::MemoHit`].
    MemoHit,
    /// See [`EventKind::MemoMiss`].
    MemoMiss,
    /// A user-defined event on the named signal `name`.
    Custom {
        /// The signal's name.
        name: Arc<str>,
        /// The value sent.
        payload: Payload,
    },
}

impl EventData {
    /// The kind of event this data makes.
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::WorkflowCreated { .. } => EventKind::WorkflowCreated,
            EventData::WorkflowStarted { .. } => EventKind::WorkflowStarted,
            EventData::WorkflowCompleted { .. } => EventKind::WorkflowCompleted,
            EventData::WorkflowFailed { .. } => EventKind::WorkflowFailed,
            EventData::WorkflowCancelled { .. } => EventKind::WorkflowCancelled,
            EventData::TaskPending => EventKind::TaskPending,
            EventData::TaskStarted { .. } => EventKind::TaskStarted,
            EventData::TaskCompleted { .. } => EventKind::TaskCompleted,
            EventData::TaskFailed { .. } => EventKind::TaskFailed,
            EventData::TaskSkipped { .. } => EventKind::TaskSkipped,
            EventData::TaskCancelled { .. } => EventKind::TaskCancelled,
            EventData::TaskRetrying { .. } => EventKind::TaskRetrying,
            EventData::TaskProgress(_) => EventKind::TaskProgress,
            EventData::MemoHit => EventKind::MemoHit,
            EventData::MemoMiss => EventKind::MemoMiss,
            EventData::Custom { .. } => EventKind::Custom,
        }
    }
}

/// One event: an id, a type, data, a timestamp and a source (the seed's `Event`).
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique in this process.
    pub id: u64,
    /// When it happened.
    pub timestamp: SystemTime,
    /// The workflow and task it is about.
    pub source: Source,
    /// What it says.
    pub data: EventData,
}

impl Event {
    /// A new event with a fresh id, stamped now.
    pub fn new(source: Source, data: EventData) -> Self {
        Event::at(SystemTime::now(), source, data)
    }

    /// A new event with a fresh id and the given timestamp.
    pub fn at(timestamp: SystemTime, source: Source, data: EventData) -> Self {
        Event {
            id: next_id(),
            timestamp,
            source,
            data,
        }
    }

    /// The event's type.
    #[inline]
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// The name of its signal: the kind's name, or a custom event's signal name.
    pub fn signal_name(&self) -> &str {
        match &self.data {
            EventData::Custom { name, .. } => name,
            d => d.kind().as_str(),
        }
    }
}

/// Ids are handed out to each thread in blocks, so that threads publishing at once do not
/// contend on one counter.
pub(super) fn next_id() -> u64 {
    const BLOCK: u64 = 1024;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    RANGE.with(|r| {
        let (mut next, mut end) = r.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Relaxed);
            end = next + BLOCK;
        }
        r.set((next + 1, end));
        next
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_threads() {
        let ids: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..3000).map(|_| next_id()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn kind_follows_data() {
        let e = Event::new(Source::workflow(3), EventData::TaskStarted { attempt: 1 });
        assert_eq!(e.kind(), EventKind::TaskStarted);
        assert_eq!(e.signal_name(), "TASK_STARTED");
        assert!(e.kind().is_task());
        assert!(!EventKind::WorkflowFailed.is_task());
    }

    #[test]
    fn a_task_ref_into_a_names_table_reads_and_compares_as_its_own_id() {
        let names: Arc<[Arc<str>]> = ["a", "b", "c"].map(Arc::<str>::from).into();
        let mut t = TaskRef::in_table(&names, 1, 1, false);
        assert_eq!(t.id(), "b");
        assert_eq!(&*t.shared_id(), "b");
        assert_eq!(t, TaskRef::new("b", 1, false));
        assert_ne!(t, TaskRef::new("c", 1, false));
        assert!(t.is(&Arc::from("b")) && !t.is(&names[0]));
        assert!(format!("{t:?}").contains("\"b\""));
        // Pointed at another task of the same table: no reference taken to the table.
        let refs = Arc::strong_count(&names);
        t.point_into(&names, 2);
        assert_eq!((t.id(), Arc::strong_count(&names)), ("c", refs));
        // Into another table (or from an id of its own): that table is held.
        let other: Arc<[Arc<str>]> = ["x"].map(Arc::<str>::from).into();
        t.point_into(&other, 0);
        assert_eq!((t.id(), Arc::strong_count(&names)), ("x", refs - 1));
        let mut own = TaskRef::new("z", 0, true);
        own.point_into(&names, 0);
        assert_eq!(own.id(), "a");
    }
}
