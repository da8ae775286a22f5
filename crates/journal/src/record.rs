//! The plain records a journal stores and returns: no engine types, so that every store (SQLite
//! now, PostgreSQL later) and every tool reading a journal shares one vocabulary.
//!
//! Invariants:
//! - A run is identified by a [`RunId`] the store assigns in increasing order: a later run has a
//!   larger id, and ids are never reused, even after the run is deleted.
//! - A task is identified within its run by its id (a string, as nerv's `TaskId`).
//! - Statuses are stored as their lowercase names ([`TaskStatus::as_str`]); these names are part
//!   of the file format.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// A run's id in a journal: assigned by the store, increasing, never reused.
///
/// An integer rather than a UUID: it orders runs by age for free, is what SQLite
/// (`INTEGER PRIMARY KEY AUTOINCREMENT`) and PostgreSQL (`bigserial`) hand out cheaply, and is
/// short enough to type (`nerv runs show 42`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A task of a run, as declared when the run begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The task's id.
    pub id: String,
    /// The ids of the tasks it depends on.
    pub deps: Vec<String>,
}

impl TaskSpec {
    /// A task with its dependencies.
    pub fn new(id: impl Into<String>, deps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        TaskSpec {
            id: id.into(),
            deps: deps.into_iter().map(Into::into).collect(),
        }
    }
}

/// What a run is when it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    /// The workflow's id (a name or a file's path: whatever identifies it across runs).
    pub workflow: String,
    /// The run's name, for people.
    pub name: String,
    /// Its tasks; each is recorded as pending. Tasks not declared here (added at run time) are
    /// recorded when their first transition arrives.
    pub tasks: Vec<TaskSpec>,
    /// When it started.
    pub started: SystemTime,
    /// The run this one resumes, if any.
    pub resumed_from: Option<RunId>,
}

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every status, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The status's name as stored.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownStatus(s.to_string())),
                }
            }
        }
    };
}

/// A status name that no status has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

status_enum! {
    /// A task's status in a transition.
    TaskStatus {
        /// Declared, not started.
        Pending = "pending",
        /// An attempt is running.
        Running = "running",
        /// Finished with an output. Final within a run: recorded once, later transitions of
        /// the task in the same run do not change it.
        Completed = "completed",
        /// Finished with an error.
        Failed = "failed",
        /// Not run (its trigger rule or a branch skipped it).
        Skipped = "skipped",
        /// Cancelled before finishing.
        Cancelled = "cancelled",
        /// An attempt failed; another will follow.
        Retrying = "retrying",
    }
}

impl TaskStatus {
    /// Whether the task is done (completed, failed, skipped or cancelled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Skipped
                | TaskStatus::Cancelled
        )
    }
}

status_enum! {
    /// A run's status.
    RunStatus {
        /// Running (or its process died without saying otherwise).
        Running = "running",
        /// Every task finished and the run succeeded.
        Completed = "completed",
        /// The run failed.
        Failed = "failed",
        /// The run was cancelled.
        Cancelled = "cancelled",
        /// The run's process was found dead while the run was running.
        Interrupted = "interrupted",
    }
}

impl RunStatus {
    /// Whether the run is over (any status but running).
    pub fn is_finished(self) -> bool {
        self != RunStatus::Running
    }

    /// Whether a later run may resume it (running, failed or interrupted).
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Failed | RunStatus::Interrupted
        )
    }
}

/// A task's transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The run.
    pub run: RunId,
    /// The task's id.
    pub task: String,
    /// Its new status.
    pub status: TaskStatus,
    /// The attempt (1 for the first).
    pub attempt: u32,
    /// When.
    pub at: SystemTime,
    /// The error, for failed and retrying.
    pub error: Option<String>,
    /// The serialized output, for completed (`None`: completed without a storable value,
    /// for instance because its type cannot be serialized).
    pub output: Option<Vec<u8>>,
}

impl TaskRecord {
    /// A transition with no error and no output.
    pub fn new(
        run: RunId,
        task: impl Into<String>,
        status: TaskStatus,
        attempt: u32,
        at: SystemTime,
    ) -> Self {
        TaskRecord {
            run,
            task: task.into(),
            status,
            attempt,
            at,
            error: None,
            output: None,
        }
    }

    /// With an error.
    pub fn error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// With an output.
    pub fn output(mut self, output: Vec<u8>) -> Self {
        self.output = Some(output);
        self
    }
}

/// A run's transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run.
    pub run: RunId,
    /// Its new status.
    pub status: RunStatus,
    /// When.
    pub at: SystemTime,
    /// The error, for failed.
    pub error: Option<String>,
}

/// Tasks of a run declared after [`begin_run`](crate::JournalStore::begin_run), through the
/// writer: recorded pending (with their dependencies) unless a transition of theirs is
/// recorded already. Submitted right after `begin_run` (with no tasks), it keeps the
/// declaration of a large run off the thread that starts it, and lets the writer fold each
/// task's declaration and first transitions into one row write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclareRecord {
    /// The run.
    pub run: RunId,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
}

/// One thing to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A task's transition.
    Task(TaskRecord),
    /// A run's transition.
    Run(RunRecord),
    /// Tasks declared.
    Declare(DeclareRecord),
}

impl From<DeclareRecord> for Record {
    fn from(r: DeclareRecord) -> Self {
        Record::Declare(r)
    }
}

impl From<TaskRecord> for Record {
    fn from(r: TaskRecord) -> Self {
        Record::Task(r)
    }
}

impl From<RunRecord> for Record {
    fn from(r: RunRecord) -> Self {
        Record::Run(r)
    }
}

/// How many tasks of a run are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Pending.
    pub pending: usize,
    /// Running.
    pub running: usize,
    /// Completed.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
    /// Cancelled.
    pub cancelled: usize,
    /// Retrying.
    pub retrying: usize,
}

impl TaskCounts {
    /// All tasks.
    pub fn total(&self) -> usize {
        self.pending
            + self.running
            + self.completed
            + self.failed
            + self.skipped
            + self.cancelled
            + self.retrying
    }

    /// Adds `n` tasks of `status`.
    pub fn add(&mut self, status: TaskStatus, n: usize) {
        let slot = match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Running => &mut self.running,
            TaskStatus::Completed => &mut self.completed,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Skipped => &mut self.skipped,
            TaskStatus::Cancelled => &mut self.cancelled,
            TaskStatus::Retrying => &mut self.retrying,
        };
        *slot += n;
    }
}

/// A run, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Its id.
    pub id: RunId,
    /// Its workflow.
    pub workflow: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: RunStatus,
    /// When it started.
    pub started: SystemTime,
    /// When it finished, if it did.
    pub finished: Option<SystemTime>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// The run it resumed, if any.
    pub resumed_from: Option<RunId>,
    /// Its tasks by status.
    pub counts: TaskCounts,
}

/// A task of a run, as it stands after its latest transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    /// The task's id.
    pub task: String,
    /// Its dependencies, as declared when the run began (empty for tasks added at run time).
    pub deps: Vec<String>,
    /// Its latest status (completed stays completed).
    pub status: TaskStatus,
    /// The highest attempt seen (0: never started).
    pub attempts: u32,
    /// When its first attempt started.
    pub started: Option<SystemTime>,
    /// When it finished (its latest finishing transition).
    pub finished: Option<SystemTime>,
    /// Its latest transition's error.
    pub error: Option<String>,
    /// Whether a completion with an output is recorded.
    pub has_output: bool,
}
