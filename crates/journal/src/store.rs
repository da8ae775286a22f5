//! The store behind a journal: what any durable backend (SQLite here, PostgreSQL later) must do.
//!
//! Invariants every implementation keeps:
//! 1. `append` is atomic: a batch is recorded whole or not at all (one transaction), and it is
//!    durable (to the store's configured level) when `append` returns `Ok`.
//! 2. Completion is recorded exactly once per task per run: a second `completed` transition of
//!    the same `(run, task)` is ignored (not an error, not a duplicate, its output is not kept),
//!    and no later transition in the same run changes a completed task's status.
//! 3. Records naming a run the store does not hold (never begun, or deleted) are ignored.
//! 4. Run ids increase with time and are never reused ([`RunId`]).
//! 5. Deleting a run deletes everything recorded of it.
//!
//! Methods take `&self`: a store is shared by the journal's writer thread and its readers; an
//! implementation serializes what it must inside.

use crate::error::Result;
use crate::record::{Record, RunId, RunStart, RunSummary, TaskRecord, TaskSummary};
use std::fmt;
use std::path::Path;
use std::time::SystemTime;

/// A durable store of runs, task transitions and outputs.
pub trait JournalStore: Send + Sync + fmt::Debug {
    /// Where the store lives, for messages: a file's path (a server store: its address).
    fn path(&self) -> &Path;

    /// Records a new run (status running) and its declared tasks (pending); returns its id.
    fn begin_run(&self, start: &RunStart) -> Result<RunId>;

    /// Records a batch of transitions in one transaction (see the module's invariants).
    fn append(&self, records: &[Record]) -> Result<()>;

    /// The run `id`, if the store holds it.
    fn run(&self, id: RunId) -> Result<Option<RunSummary>>;

    /// Every run, newest first.
    fn runs(&self) -> Result<Vec<RunSummary>>;

    /// The tasks of `run` as they stand, ordered by task id.
    fn tasks(&self, run: RunId) -> Result<Vec<TaskSummary>>;

    /// Every transition recorded of `run`'s tasks, in the order recorded (outputs left out:
    /// see [`completed_outputs`](Self::completed_outputs)). A duplicate completion is not
    /// recorded here either.
    fn history(&self, run: RunId) -> Result<Vec<TaskRecord>>;

    /// The tasks `run` completed, with their outputs (`None`: completed without a stored
    /// value), ordered by task id. This is what a resumed run restores; it holds only `run`'s
    /// own completions, so a resuming run should record the tasks it restores as completed
    /// too, keeping every run self-contained (and retention free to delete old runs).
    fn completed_outputs(&self, run: RunId) -> Result<Vec<(String, Option<Vec<u8>>)>>;

    /// The most recent run that may be resumed (running, failed or interrupted) of
    /// `workflow` (`None`: of any workflow), leaving out runs that a later run already resumed.
    fn latest_resumable(&self, workflow: Option<&str>) -> Result<Option<RunSummary>>;

    /// Deletes finished runs (never a running one) with everything recorded of them; returns
    /// how many. A run is deleted when it started before `older_than` (if given) and is not one
    /// of the `keep_last` newest runs (if given); with neither given nothing is deleted.
    fn delete_runs(
        &self,
        older_than: Option<SystemTime>,
        keep_last: Option<usize>,
    ) -> Result<usize>;

    /// Duration estimates from history: for each task of `workflow` that completed by running
    /// (not restored) in one of its `last_runs` most recent runs, the mean of those runs'
    /// durations (a moving average over the window). The planner uses them for tasks that
    /// have no estimate of their own.
    fn task_durations(
        &self,
        workflow: &str,
        last_runs: usize,
    ) -> Result<std::collections::HashMap<String, std::time::Duration>>;

    /// Marks `run` interrupted at `at` if it is still running (its process was found dead);
    /// returns whether it was.
    fn mark_interrupted(&self, run: RunId, at: SystemTime) -> Result<bool>;

    /// Upkeep that no commit needs in order to be durable (SQLite: checkpointing its log),
    /// which the journal's writer runs after publishing a commit, off the commit's latency.
    /// Errors are the store's to report (they lose nothing). The default does nothing.
    fn after_commit(&self) {}
}
