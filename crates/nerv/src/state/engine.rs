//! The engine's state: every run the bus reports on and each of its tasks, as the projection of
//! the executor's events ([`EngineState::apply`] is the transition).
//!
//! Invariants:
//! - Runs are keyed by run id in an `OrdMap`, so they list in id (creation) order.
//! - A run's top-graph tasks are a dense vector (`Tasks`, `tasks.rs`) indexed like the graph. It is created
//!   all PENDING by the first of `WorkflowCreated` (its task count) and `WorkflowStarted` (its
//!   graph), and extended, never shrunk, if the graph turns out larger (so a top-graph
//!   `TaskPending` event changes nothing). The tasks of subgraphs
//!   (events with `subgraph: true`) are in a `HashMap` keyed by their `parent/child` id, created by
//!   their first event.
//! - A task's state ([`TaskState`], `task.rs`) does not depend on the order in which its events
//!   are applied. A run's status only moves forward: CREATED → RUNNING → COMPLETED, FAILED or
//!   CANCELLED.
//! - The run's live counts by status (of its top-graph tasks) change with every status change,
//!   so [`WorkflowState::count`] is O(1).
//! - `apply` never panics and depends only on the state and the event:
//!   an event without a workflow and a custom event change nothing; an event for an unknown run
//!   creates the run (CREATED for `WorkflowCreated`, otherwise RUNNING, with no name and no
//!   graph); a top-graph task event whose index is out of range (its run's graph unknown, or a
//!   bogus index) is ignored and counted in [`WorkflowState::ignored`] (but for `TaskPending`).
//! - Times are kept as nanoseconds since the Unix epoch in a `u64` (0: not yet).

use super::task::{nanos, time, Hot, TaskState};
use super::tasks::Tasks;
use crate::event::{Event, EventData, TaskRef};
use crate::exec::StatusCounts;
use crate::graph::Graph;
use crate::manager::WorkflowStatus;
use crate::task::TaskStatus;
use imbl::OrdMap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One workflow run: its name, status, times, graph, tasks, counts and error.
#[derive(Debug, Clone)]
pub struct WorkflowState {
    name: Arc<str>,
    status: WorkflowStatus,
    created: u64,
    started: u64,
    ended: u64,
    graph: Option<Graph>,
    tasks: Tasks,
    subtasks: imbl::HashMap<Arc<str>, TaskState>,
    /// Top-graph tasks by status (indexed by `TaskStatus as usize`).
    live: [u32; 6],
    counts: Option<StatusCounts>,
    elapsed: Option<Duration>,
    error: Option<Arc<str>>,
    ignored: u64,
}

fn is_final(s: WorkflowStatus) -> bool {
    !matches!(s, WorkflowStatus::Created | WorkflowStatus::Running)
}

impl WorkflowState {
    fn new(status: WorkflowStatus) -> Self {
        WorkflowState {
            name: Arc::from(""),
            status,
            created: 0,
            started: 0,
            ended: 0,
            graph: None,
            tasks: Tasks::default(),
            subtasks: imbl::HashMap::new(),
            live: [0; 6],
            counts: None,
            elapsed: None,
            error: None,
            ignored: 0,
        }
    }

    /// The run's name (empty if it has none, or if its `WorkflowCreated` was not seen).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its status.
    pub fn status(&self) -> WorkflowStatus {
        self.status
    }

    /// Whether it ended (completed, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        is_final(self.status)
    }

    /// When it was created.
    pub fn created(&self) -> Option<SystemTime> {
        time(self.created)
    }

    /// When it started.
    pub fn started(&self) -> Option<SystemTime> {
        time(self.started)
    }

    /// When it ended.
    pub fn ended(&self) -> Option<SystemTime> {
        time(self.ended)
    }

    /// Time from start to end, as the executor measured it.
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed
    }

    /// Its graph (known from `WorkflowStarted`).
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// For a failed run, the executor's message naming the first failed task.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Number of top-graph tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it has no top-graph task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Number of top-graph tasks in `status`, in O(1).
    pub fn count(&self, status: TaskStatus) -> usize {
        self.live[status as usize] as usize
    }

    /// The final counts the executor reported when the run ended; before that, the counts
    /// of its top-graph tasks so far (pending and running ones in `other`).
    pub fn counts(&self) -> StatusCounts {
        self.counts.unwrap_or_else(|| StatusCounts {
            completed: self.count(TaskStatus::Completed),
            failed: self.count(TaskStatus::Failed),
            skipped: self.count(TaskStatus::Skipped),
            cancelled: self.count(TaskStatus::Cancelled),
            other: self.count(TaskStatus::Pending) + self.count(TaskStatus::Running),
        })
    }

    /// How many task events (other than `TaskPending`) were ignored because their index was
    /// out of range.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The top-graph task at `index`.
    pub fn task_at(&self, index: usize) -> Option<&TaskState> {
        self.tasks.get(index)
    }

    /// The task `id`: a top-graph task (found through the graph), or a subgraph's
    /// (`parent/child`).
    pub fn task(&self, id: &str) -> Option<&TaskState> {
        self.graph
            .as_ref()
            .and_then(|g| g.find(id))
            .and_then(|t| self.tasks.get(t.index()))
            .or_else(|| self.subtasks.get(id))
    }

    /// Every task with its id: the top graph's in graph order (named `#index` while the graph
    /// is unknown), then the subgraphs' sorted by id.
    pub fn tasks(&self) -> impl Iterator<Item = (Cow<'_, str>, &TaskState)> + '_ {
        let named = self
            .graph
            .as_ref()
            .map_or(0, Graph::len)
            .min(self.tasks.len());
        let ids = self
            .graph
            .iter()
            .flat_map(|g| g.tasks().map(|t| Cow::Borrowed(t.id())))
            .take(named)
            .chain((named..self.tasks.len()).map(|i| Cow::Owned(format!("#{i}"))));
        let mut subs: Vec<(&Arc<str>, &TaskState)> = self.subtasks.iter().collect();
        subs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        ids.zip(self.tasks.iter())
            .chain(subs.into_iter().map(|(k, t)| (Cow::Borrowed(&**k), t)))
    }

    /// Ids of the tasks in `status`, in the order of [`tasks`](Self::tasks).
    pub fn tasks_in(&self, status: TaskStatus) -> Vec<String> {
        self.tasks()
            .filter(|(_, t)| t.status() == status)
            .map(|(id, _)| id.into_owned())
            .collect()
    }

    /// Sets the run's status unless it already ended.
    fn advance(&mut self, status: WorkflowStatus) {
        let back = status == WorkflowStatus::Created && self.status == WorkflowStatus::Running;
        if !is_final(self.status) && !back {
            self.status = status;
        }
    }

    /// Makes sure there are `n` top-graph tasks (new ones PENDING).
    fn ensure_tasks(&mut self, n: usize) {
        let more = n.saturating_sub(self.tasks.len());
        self.live[TaskStatus::Pending as usize] += more as u32;
        self.tasks.grow(n);
    }

    fn end(
        &mut self,
        status: WorkflowStatus,
        counts: StatusCounts,
        elapsed: Duration,
        error: Option<&str>,
        ts: u64,
    ) {
        if is_final(self.status) {
            return;
        }
        self.status = status;
        self.counts = Some(counts);
        self.elapsed = Some(elapsed);
        self.error = error.map(Arc::from);
        self.ended = ts;
    }

    /// A plain top-graph task event (see [`Hot`]).
    #[inline]
    pub(crate) fn apply_hot(&mut self, index: u32, hot: Hot, attempt: u32, ts: u64) {
        if hot == Hot::Pending {
            // A top-graph task is created pending: the event changes nothing.
            return;
        }
        match self.tasks.get_mut(index as usize) {
            Some(t) => counted(&mut self.live, t, |t| t.apply_hot(hot, attempt, ts)),
            None => self.ignored += 1,
        }
    }

    /// Plain top-graph task events, best in an order where neighbours in the task vector
    /// follow each other: one cursor (`tasks.rs`) walks the vector of blocks, so events of
    /// tasks in the block it points at reach it without walking the tree again (each event
    /// still checks that its block is its own: one atomic operation).
    pub(crate) fn apply_hot_many(&mut self, ops: impl Iterator<Item = (u32, Hot, u32, u64)>) {
        let mut cursor = self.tasks.cursor();
        for (index, hot, attempt, ts) in ops {
            if hot == Hot::Pending {
                continue;
            }
            match cursor.get_mut(index as usize) {
                Some(t) => counted(&mut self.live, t, |t| t.apply_hot(hot, attempt, ts)),
                None => self.ignored += 1,
            }
        }
    }

    /// Merges live-table slots of top-graph tasks (`live.rs`): `read(i)` is task `i`'s slot,
    /// for every `i` of the `ranges` (ascending, disjoint). A leaf of the task vector at a time
    /// (one copy-on-write and one lookup per leaf, not per task).
    pub(crate) fn merge_plain(
        &mut self,
        ranges: impl Iterator<Item = std::ops::Range<usize>>,
        read: impl Fn(usize) -> Option<super::live::Plain>,
    ) {
        let len = self.tasks.len();
        let mut cursor = self.tasks.cursor();
        for r in ranges {
            let mut i = r.start;
            while i < r.end.min(len) {
                let Some(block) = cursor.rest_of_block(i) else {
                    break;
                };
                let stop = r.end.min(i + block.len());
                for (j, t) in (i..stop).zip(block) {
                    if let Some(p) = read(j) {
                        counted(&mut self.live, t, |t| t.merge_plain(p));
                    }
                }
                i = stop;
            }
            self.ignored += (i..r.end).filter(|&j| read(j).is_some()).count() as u64;
        }
    }

    /// A running run of `n` pending top-graph tasks (for tests).
    #[cfg(test)]
    pub(crate) fn with_pending(n: usize) -> Self {
        let mut wf = WorkflowState::new(WorkflowStatus::Running);
        wf.ensure_tasks(n);
        wf
    }

    fn apply_task(&mut self, task: &TaskRef, data: &EventData, ts: u64) {
        if task.subgraph {
            self.subtasks
                .entry(task.shared_id())
                .or_insert(TaskState::PENDING)
                .apply(data, ts);
            return;
        }
        if let Some((hot, attempt)) = Hot::of(data) {
            return self.apply_hot(task.index, hot, attempt, ts);
        }
        match self.tasks.get_mut(task.index as usize) {
            Some(t) => counted(&mut self.live, t, |t| t.apply(data, ts)),
            None => self.ignored += 1,
        }
    }
}

/// Runs `f` on a top-graph task and moves it between the live counts if its status changed.
#[inline]
fn counted(live: &mut [u32; 6], t: &mut TaskState, f: impl FnOnce(&mut TaskState)) {
    let before = t.status();
    f(t);
    let after = t.status();
    if before != after {
        live[before as usize] -= 1;
        live[after as usize] += 1;
    }
}

/// The state of every run the bus reported on: the projection of the executor's events.
///
/// Cloning is O(1) (persistent maps); [`apply`](Self::apply) is the transition.
#[derive(Clone, Default)]
pub struct EngineState {
    runs: OrdMap<u64, WorkflowState>,
}

impl fmt::Debug for EngineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineState")
            .field("runs", &self.runs)
            .finish()
    }
}

impl EngineState {
    /// No run.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transition: the state after `event` (see the module doc for events that do not
    /// fit the state; none panics).
    pub fn apply(&mut self, event: &Event) {
        let Some(run) = event.source.workflow else {
            return;
        };
        let ts = nanos(event.timestamp);
        match &event.data {
            EventData::Custom { .. } => {}
            EventData::WorkflowCreated { name, tasks } => {
                let wf = self
                    .runs
                    .entry(run)
                    .or_insert_with(|| WorkflowState::new(WorkflowStatus::Created));
                wf.advance(WorkflowStatus::Created);
                wf.name = name.clone();
                wf.created = ts;
                wf.ensure_tasks(*tasks);
            }
            EventData::WorkflowStarted { graph, .. } => {
                let wf = self
                    .runs
                    .entry(run)
                    .or_insert_with(|| WorkflowState::new(WorkflowStatus::Running));
                wf.advance(WorkflowStatus::Running);
                wf.started = ts;
                wf.ensure_tasks(graph.len());
                wf.graph = Some(graph.clone());
            }
            EventData::WorkflowCompleted { counts, elapsed } => {
                self.workflow_mut(run)
                    .end(WorkflowStatus::Completed, *counts, *elapsed, None, ts);
            }
            EventData::WorkflowFailed {
                counts,
                elapsed,
                error,
            } => {
                self.workflow_mut(run).end(
                    WorkflowStatus::Failed,
                    *counts,
                    *elapsed,
                    Some(error),
                    ts,
                );
            }
            EventData::WorkflowCancelled { counts, elapsed } => {
                self.workflow_mut(run)
                    .end(WorkflowStatus::Cancelled, *counts, *elapsed, None, ts);
            }
            data => {
                if let Some(task) = &event.source.task {
                    self.workflow_mut(run).apply_task(task, data, ts);
                }
            }
        }
    }

    /// The pure form of [`apply`](Self::apply), for
    /// [`StateProjector::update`](crate::StateProjector::update): a new state, this one
    /// unchanged.
    pub fn with_event(&self, event: &Event) -> Self {
        let mut next = self.clone();
        next.apply(event);
        next
    }

    /// The run `run`, created (RUNNING) if unknown.
    #[inline]
    pub(crate) fn workflow_mut(&mut self, run: u64) -> &mut WorkflowState {
        self.runs
            .entry(run)
            .or_insert_with(|| WorkflowState::new(WorkflowStatus::Running))
    }

    /// The run `run`, if it is known with at least `tasks` top-graph tasks.
    #[inline]
    pub(crate) fn workflow_mut_if(&mut self, run: u64, tasks: usize) -> Option<&mut WorkflowState> {
        self.runs.get_mut(&run).filter(|wf| wf.tasks.len() >= tasks)
    }

    /// Forgets the run `run` (to bound memory in a long-lived process); returns it.
    pub fn remove(&mut self, run: u64) -> Option<WorkflowState> {
        self.runs.remove(&run)
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether no run is known.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The run `run`.
    pub fn workflow(&self, run: u64) -> Option<&WorkflowState> {
        self.runs.get(&run)
    }

    /// Every run, by id.
    pub fn workflows(&self) -> impl Iterator<Item = (u64, &WorkflowState)> + '_ {
        self.runs.iter().map(|(id, wf)| (*id, wf))
    }

    /// The run's status.
    pub fn workflow_status(&self, run: u64) -> Option<WorkflowStatus> {
        self.workflow(run).map(WorkflowState::status)
    }

    /// Every task of the run by id, with its status (empty for an unknown run).
    pub fn task_status(&self, run: u64) -> HashMap<String, TaskStatus> {
        self.workflow(run)
            .map(|wf| {
                wf.tasks()
                    .map(|(id, t)| (id.into_owned(), t.status()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ids of the run's completed tasks, in graph order (then its subgraphs' by id).
    pub fn completed_tasks(&self, run: u64) -> Vec<String> {
        self.tasks_in(run, TaskStatus::Completed)
    }

    /// Ids of the run's failed tasks, in graph order (then its subgraphs' by id).
    pub fn failed_tasks(&self, run: u64) -> Vec<String> {
        self.tasks_in(run, TaskStatus::Failed)
    }

    /// Ids of the run's tasks in `status`, in graph order (then its subgraphs' by id).
    pub fn tasks_in(&self, run: u64, status: TaskStatus) -> Vec<String> {
        self.workflow(run)
            .map(|wf| wf.tasks_in(status))
            .unwrap_or_default()
    }

    /// The task `id` of the run.
    pub fn task(&self, run: u64, id: &str) -> Option<&TaskState> {
        self.workflow(run)?.task(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use std::time::UNIX_EPOCH;

    /// Every status, in `TaskStatus as usize` order.
    const STATUSES: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Skipped,
        TaskStatus::Cancelled,
    ];

    #[test]
    fn status_index_matches_the_table() {
        for (i, s) in STATUSES.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
    }

    fn ev(run: u64, index: u32, data: EventData) -> Event {
        Event::at(
            UNIX_EPOCH + Duration::from_secs(10 + u64::from(index)),
            Source {
                workflow: Some(run),
                task: Some(TaskRef::new(format!("t{index}"), index, false)),
            },
            data,
        )
    }

    #[test]
    fn unknown_runs_and_bad_indices_do_not_panic() {
        let mut s = EngineState::new();
        s.apply(&ev(9, 3, EventData::TaskStarted { attempt: 1 }));
        let wf = s.workflow(9).unwrap();
        assert_eq!(wf.status(), WorkflowStatus::Running);
        assert_eq!(wf.ignored(), 1);
        s.apply(&Event::new(
            Source::default(),
            EventData::TaskStarted { attempt: 1 },
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn live_counts_follow_statuses() {
        let mut s = EngineState::new();
        s.apply(&Event::new(
            Source::workflow(1),
            EventData::WorkflowCreated {
                name: "r".into(),
                tasks: 3,
            },
        ));
        s.apply(&ev(1, 0, EventData::TaskStarted { attempt: 1 }));
        s.apply(&ev(
            1,
            0,
            EventData::TaskCompleted {
                attempt: 1,
                output: None,
            },
        ));
        s.apply(&ev(1, 0, EventData::TaskStarted { attempt: 2 })); // after final: stays final
        s.apply(&ev(1, 1, EventData::TaskStarted { attempt: 1 }));
        let wf = s.workflow(1).unwrap();
        let counts: Vec<usize> = STATUSES.iter().map(|&st| wf.count(st)).collect();
        assert_eq!(counts, [1, 1, 1, 0, 0, 0]);
        assert_eq!(wf.task_at(0).unwrap().status(), TaskStatus::Completed);
        assert_eq!(wf.task_at(0).unwrap().attempts(), 2);
        assert_eq!(wf.counts().other, 2);
        assert_eq!(wf.tasks_in(TaskStatus::Running), ["#1"]);
        assert_eq!(
            wf.task_at(0).unwrap().duration(),
            Some(Duration::ZERO),
            "both events of t0 carry the same timestamp"
        );
    }
}
