//! The bridge from nerv's event bus to a journal: every run, task transition and persisted
//! output of an executor is recorded, and a recorded run can be resumed.
//!
//! Invariants:
//! - A run is recorded from its `WorkflowStarted` event on: that event carries the graph (the
//!   declared tasks and their dependencies) and, for a resumed run, the journal id of the run
//!   it resumes; `begin_run` is called synchronously there (on the thread starting the run,
//!   before any task of it can start), so every later event of the run finds its journal id.
//!   The tasks are declared through the writer ([`DeclareRecord`]), submitted with the run's
//!   first task event (under the recorder's lock, so ahead of every transition of the run) or
//!   at its end if it has none: a declaration is as durable as the transitions that follow
//!   it, and the writer folds each task's declaration and first transitions into one row.
//!   Runs already going when the recorder was attached are not recorded.
//! - Task transitions become [`TaskRecord`]s submitted to the journal's group-committing
//!   writer: the publishing worker never waits for the disk. A completion carries the task's
//!   serialized output when the task is persisted (`GraphBuilder::persist`); others are
//!   recorded as completed without a value, and run again when the run is resumed.
//! - A task restored by a resumed run (its `TaskCompleted` has attempt 0) is recorded as
//!   completed in the new run with the output it was restored from, so that every run of the
//!   journal is self-contained (retention may delete the old one).
//! - The run's end is recorded, then the journal is flushed before the end event's handler
//!   returns: when `Executor::run` returns, the whole run is durable. (The flush waits on the
//!   thread that finished the run; other runs' workers are not held.)

use crate::error::{JournalError, Result};
use crate::record::{
    DeclareRecord, RunId, RunRecord, RunStart, RunStatus, TaskRecord, TaskSpec, TaskStatus,
};
use crate::writer::Journal;
use nerv::{Event, EventBus, EventData, EventFilter, EventKind, Restore, RunOptions, Subscription};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The kinds of events a [`Recorder`] reads.
const KINDS: [EventKind; 11] = [
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
];

#[derive(Default)]
struct Runs {
    /// Names of created runs not started yet, by engine run id.
    names: FxHashMap<u64, String>,
    /// Journal ids of the runs being recorded, by engine run id; and the outputs they
    /// restore (to record restored tasks with their value).
    live: FxHashMap<u64, Live>,
}

struct Live {
    id: RunId,
    restore: Option<Arc<HashMap<String, Vec<u8>>>>,
    /// The run's declaration, until its first task event (or its end) submits it.
    declare: Option<DeclareRecord>,
}

/// Records an executor's runs into a [`Journal`]: attach it to the executor's bus.
///
/// ```
/// use nerv::{EventBus, Executor, Graph, TaskError};
/// use nerv_journal::{Journal, JournalStore, Recorder};
/// use std::sync::Arc;
///
/// let dir = tempfile::tempdir().unwrap();
/// let journal = Arc::new(Journal::open_in(dir.path()).unwrap());
/// let bus = EventBus::new();
/// let _recording = Recorder::new(journal.clone(), "etl").attach(&bus);
/// let exec = Executor::builder().events(bus).build();
///
/// let mut g = Graph::builder();
/// let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(21u32));
/// g.persist(a);
/// g.task("b").run(a, |_, x| Ok::<_, TaskError>(x * 2));
/// exec.run(&g.build().unwrap());
///
/// let runs = journal.store().runs().unwrap();
/// assert_eq!(runs[0].counts.completed, 2);
/// ```
#[derive(Clone)]
pub struct Recorder {
    journal: Arc<Journal>,
    workflow: Arc<str>,
    runs: Arc<Mutex<Runs>>,
    interrupted: Arc<AtomicBool>,
    /// The first error met since the last `take_error`.
    error: Arc<Mutex<Option<JournalError>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("workflow", &self.workflow)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder of the runs of `workflow` (the name that identifies the workflow across
    /// runs, e.g. its file's path) into `journal`.
    pub fn new(journal: Arc<Journal>, workflow: impl Into<Arc<str>>) -> Recorder {
        Recorder {
            journal,
            workflow: workflow.into(),
            runs: Arc::default(),
            interrupted: Arc::default(),
            error: Arc::default(),
        }
    }

    /// The first error the recorder met since the last call (a run it could not begin, a
    /// flush that failed at a run's end), if any. They are also reported through `tracing`.
    pub fn take_error(&self) -> Option<JournalError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn keep(&self, e: JournalError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Says that the process is being interrupted (Ctrl-C, SIGTERM): runs that end cancelled
    /// from now on are recorded as [`RunStatus::Interrupted`], which a later run may resume,
    /// rather than as cancelled on purpose.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    /// Subscribes to `bus` until the returned subscription is dropped.
    pub fn attach(&self, bus: &EventBus) -> Subscription {
        let me = self.clone();
        bus.subscribe(EventFilter::kinds(KINDS), move |e| me.handle(e))
    }

    /// The journal recorded into.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one event (what [`attach`](Self::attach) calls).
    pub fn handle(&self, e: &Event) {
        let Some(engine_run) = e.source.workflow else {
            return;
        };
        match &e.data {
            EventData::WorkflowCreated { name, .. } => {
                self.lock().names.insert(engine_run, name.to_string());
            }
            EventData::WorkflowStarted { graph, resumes } => {
                let name = self.lock().names.remove(&engine_run).unwrap_or_default();
                let resumed_from = resumes
                    .as_deref()
                    .and_then(|k| k.parse::<i64>().ok())
                    .map(RunId);
                // The run row now (its id is needed), its tasks through the writer: a large
                // graph's declaration does not hold up the run's start. The declaration is
                // submitted with the run's first task event rather than now: the engine's
                // set-up of a large run outlasts the writer's linger, and a declaration
                // committed alone costs every task a second row write (its insert as pending,
                // then the update by its transitions); submitted right before the
                // transitions, each task's declaration folds with them into one.
                let start = RunStart {
                    workflow: self.workflow.to_string(),
                    name,
                    tasks: Vec::new(),
                    started: e.timestamp,
                    resumed_from,
                };
                match self.journal.begin_run(&start) {
                    Ok(id) => {
                        let declare = DeclareRecord {
                            run: id,
                            tasks: graph
                                .tasks()
                                .map(|t| TaskSpec::new(t.id(), t.dependencies()))
                                .collect(),
                        };
                        let restore = match resumed_from {
                            Some(old) => self.restored_outputs(old),
                            None => None,
                        };
                        self.lock().live.insert(
                            engine_run,
                            Live {
                                id,
                                restore,
                                declare: Some(declare),
                            },
                        );
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the journal could not record a run; it runs unrecorded");
                        self.keep(err);
                    }
                }
            }
            EventData::WorkflowCompleted { .. }
            | EventData::WorkflowFailed { .. }
            | EventData::WorkflowCancelled { .. } => {
                let Some(mut live) = self.lock().live.remove(&engine_run) else {
                    return;
                };
                if let Some(declare) = live.declare.take() {
                    self.journal.submit(declare); // a run that ended before any task event
                }
                let (status, error) = match &e.data {
                    EventData::WorkflowCompleted { .. } => (RunStatus::Completed, None),
                    EventData::WorkflowFailed { error, .. } => {
                        (RunStatus::Failed, Some(error.clone()))
                    }
                    _ if self.interrupted.load(Ordering::SeqCst) => {
                        (RunStatus::Interrupted, Some("interrupted".to_string()))
                    }
                    _ => (RunStatus::Cancelled, None),
                };
                self.journal.submit(RunRecord {
                    run: live.id,
                    status,
                    at: e.timestamp,
                    error,
                });
                if let Err(err) = self.journal.flush() {
                    tracing::error!(error = %err, run = %live.id, "the journal could not make a run durable");
                    self.keep(err);
                }
            }
            data => {
                let Some(task) = e.source.task_id() else {
                    return;
                };
                let (id, restore) = {
                    let mut runs = self.lock();
                    let Some(l) = runs.live.get_mut(&engine_run) else {
                        return;
                    };
                    if let Some(declare) = l.declare.take() {
                        // Under the lock: no task record of the run is numbered before it.
                        self.journal.submit(declare);
                    }
                    // The restored outputs are needed by restored completions only.
                    let restored = matches!(data, EventData::TaskCompleted { attempt: 0, .. });
                    (l.id, if restored { l.restore.clone() } else { None })
                };
                let rec = |status, attempt| TaskRecord::new(id, task, status, attempt, e.timestamp);
                let record = match data {
                    EventData::TaskStarted { attempt } => rec(TaskStatus::Running, *attempt),
                    EventData::TaskCompleted { attempt, output } => {
                        let r = rec(TaskStatus::Completed, *attempt);
                        let bytes = match (output, *attempt) {
                            (Some(b), _) => Some(b.to_vec()),
                            (None, 0) => restore.as_ref().and_then(|m| m.get(task).cloned()),
                            (None, _) => None,
                        };
                        match bytes {
                            Some(b) => r.output(b),
                            None => r,
                        }
                    }
                    EventData::TaskFailed { attempt, error } => {
                        rec(TaskStatus::Failed, *attempt).error(error.to_string())
                    }
                    EventData::TaskRetrying { attempt, error, .. } => {
                        rec(TaskStatus::Retrying, *attempt).error(error.to_string())
                    }
                    EventData::TaskSkipped { cause } => {
                        let r = rec(TaskStatus::Skipped, 0);
                        match cause {
                            Some(c) => r.error(format!("skipped: `{c}` did not complete")),
                            None => r,
                        }
                    }
                    EventData::TaskCancelled { attempt } => rec(TaskStatus::Cancelled, *attempt),
                    _ => return,
                };
                self.journal.submit(record);
            }
        }
    }

    fn restored_outputs(&self, old: RunId) -> Option<Arc<HashMap<String, Vec<u8>>>> {
        let outputs = self.journal.store().completed_outputs(old).ok()?;
        Some(Arc::new(
            outputs
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
        ))
    }
}

/// The [`Restore`] of journal run `run`: the outputs of its completed tasks that have one.
pub fn restore_of(journal: &Journal, run: RunId) -> Result<Restore> {
    Ok(journal
        .store()
        .completed_outputs(run)?
        .into_iter()
        .filter_map(|(task, output)| output.map(|o| (task, o)))
        .collect())
}

/// Run options that resume journal run `run`: its completed, persisted tasks are restored,
/// the rest run; the new run is recorded as resuming `run`.
pub fn resume_options(journal: &Journal, run: RunId, opts: RunOptions) -> Result<RunOptions> {
    let restore = restore_of(journal, run)?;
    Ok(opts.resume(run.0.to_string(), restore))
}
