//! The report of a finished run: its status, timings, every task's result, typed outputs.

use super::runner::Runner;
use crate::graph::{Handle, TaskId};
use crate::task::{TaskResult, TaskStatus};
use nerv_pool::RunHandle;
use std::fmt;
use std::time::{Duration, SystemTime};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every task completed.
    Completed,
    /// At least one task failed (or was skipped because of one).
    Failed,
    /// The run was cancelled.
    Cancelled,
}

impl RunStatus {
    /// Upper-case name, as the seed writes workflow statuses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many tasks ended in each final status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Completed tasks.
    pub completed: usize,
    /// Failed tasks.
    pub failed: usize,
    /// Skipped tasks.
    pub skipped: usize,
    /// Cancelled tasks.
    pub cancelled: usize,
    /// Tasks not in a final status (none in a finished run).
    pub other: usize,
}

/// Counts the final statuses of a run's tasks.
pub(crate) fn count(handle: &RunHandle<Runner>) -> StatusCounts {
    let mut c = StatusCounts::default();
    let n = handle.dag().len();
    // The common case, a run where everything completed, in one tight pass.
    if handle.completed_count() == n {
        c.completed = n;
        return c;
    }
    for i in 0..n as u32 {
        match TaskStatus::from(handle.state(i)) {
            TaskStatus::Completed => c.completed += 1,
            TaskStatus::Failed => c.failed += 1,
            TaskStatus::Skipped => c.skipped += 1,
            TaskStatus::Cancelled => c.cancelled += 1,
            _ => c.other += 1,
        }
    }
    c
}

/// A finished run's status from its counts: a failure makes it FAILED, else a cancellation
/// CANCELLED, else COMPLETED (tasks skipped by a branch or a trigger rule are not failures;
/// tasks skipped because of a failure come with that failure).
pub(crate) fn run_status(c: &StatusCounts, cancelled: bool) -> RunStatus {
    if c.failed > 0 {
        RunStatus::Failed
    } else if c.cancelled > 0 || c.other > 0 || cancelled {
        RunStatus::Cancelled
    } else {
        RunStatus::Completed
    }
}

/// The report of a finished run. Outputs stay readable as long as the report lives.
pub struct RunReport {
    handle: RunHandle<Runner>,
    counts: StatusCounts,
}

impl fmt::Debug for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunReport")
            .field("status", &self.status())
            .field("counts", &self.counts)
            .finish()
    }
}

impl RunReport {
    pub(crate) fn new(handle: RunHandle<Runner>) -> Self {
        let counts = count(&handle);
        RunReport { handle, counts }
    }

    fn runner(&self) -> &Runner {
        self.handle.runner()
    }

    /// The run's id.
    pub fn run_id(&self) -> u64 {
        self.runner().run_id
    }

    /// How the run ended: failed if a task failed (even when fail-fast then cancelled the
    /// rest), else cancelled if it was cancelled, else completed (tasks skipped by a branch
    /// or a trigger rule do not fail a run).
    pub fn status(&self) -> RunStatus {
        run_status(&self.counts, self.runner().cancel.is_cancelled())
    }

    /// Counts of final statuses over the graph's own tasks.
    pub fn counts(&self) -> StatusCounts {
        self.counts
    }

    /// When the run started.
    pub fn started_at(&self) -> SystemTime {
        self.runner().sys0
    }

    /// How long the run took.
    pub fn duration(&self) -> Duration {
        let r = self.runner();
        let end = r.t_end.load(std::sync::atomic::Ordering::Acquire);
        if end == 0 {
            Duration::ZERO
        } else {
            r.env.clock.delta(r.t0, end)
        }
    }

    /// When the run ended.
    pub fn completed_at(&self) -> SystemTime {
        self.started_at() + self.duration()
    }

    /// The output of a task, if it completed.
    ///
    /// # Panics
    /// If the handle belongs to another graph.
    pub fn output<T: Send + Sync + 'static>(&self, h: Handle<T>) -> Option<&T> {
        assert!(self.runner().graph.owns(h.id()), "handle of another graph");
        crate::graph::inputs::Outputs::new(&self.runner().arena, &self.handle).get(&h)
    }

    /// The result of a task of the graph.
    ///
    /// # Panics
    /// If the id belongs to another graph.
    pub fn result(&self, task: impl Into<TaskId>) -> TaskResult {
        let id = task.into();
        assert!(self.runner().graph.owns(id), "task id of another graph");
        self.runner().result(&self.handle, id.index() as u32)
    }

    /// The result of a task by id (including subgraph tasks, `parent/child`).
    pub fn task(&self, id: &str) -> Option<TaskResult> {
        match self.runner().graph.find(id) {
            Some(t) => Some(self.result(t)),
            None => self
                .runner()
                .child_results()
                .into_iter()
                .find(|r| r.id == id),
        }
    }

    /// Every task's result: the graph's tasks in insertion order, then subgraph tasks.
    pub fn results(&self) -> Vec<TaskResult> {
        let r = self.runner();
        let mut v: Vec<TaskResult> = (0..r.graph.len() as u32)
            .map(|i| r.result(&self.handle, i))
            .collect();
        v.extend(r.child_results());
        v
    }

    /// Results of the tasks that failed, in insertion order.
    pub fn failures(&self) -> Vec<TaskResult> {
        self.results()
            .into_iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .collect()
    }
}

impl fmt::Display for RunReport {
    /// A summary: status, counts, duration, then one line per task that did not complete.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.counts;
        writeln!(
            f,
            "run {} {} in {:?}: {} completed, {} failed, {} skipped, {} cancelled",
            self.run_id(),
            self.status(),
            self.duration(),
            c.completed,
            c.failed,
            c.skipped,
            c.cancelled
        )?;
        for t in self.results() {
            match t.status {
                TaskStatus::Completed => {}
                TaskStatus::Skipped => writeln!(
                    f,
                    "  {} SKIPPED (upstream `{}` failed)",
                    t.id,
                    t.skipped_because.as_deref().unwrap_or("?")
                )?,
                s => writeln!(
                    f,
                    "  {} {s} after {} attempt(s){}",
                    t.id,
                    t.attempts,
                    t.error.map(|e| format!(": {e}")).unwrap_or_default()
                )?,
            }
        }
        Ok(())
    }
}
