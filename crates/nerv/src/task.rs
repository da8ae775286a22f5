//! The task model: priorities, statuses, errors, metadata and per-task results (the seed's
//! TaskPriority, TaskStatus, TaskMetadata and TaskResult).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How urgent a task is: among ready tasks, a higher priority runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Runs after everything else that is ready.
    Low = 0,
    /// The default.
    #[default]
    Medium = 1,
    /// Runs before medium and low.
    High = 2,
    /// Runs first.
    Critical = 3,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Medium,
        Priority::High,
        Priority::Critical,
    ];

    /// The lowercase name (`low`, `medium`, `high`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown priority {s:?} (expected low, medium, high or critical)")
            })
    }
}

/// Where a task is in its life. `Completed`, `Failed`, `Skipped` and `Cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Waiting for its dependencies (or for a worker).
    Pending,
    /// Being run (including waiting for an async result or a retry delay).
    Running,
    /// Finished with its output.
    Completed,
    /// Failed for good (after its retries).
    Failed,
    /// Not run because an upstream task failed.
    Skipped,
    /// Not run, or stopped, because the run was cancelled.
    Cancelled,
}

impl TaskStatus {
    /// The seed's upper-case name (`PENDING`, `COMPLETED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Skipped => "SKIPPED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }

    /// Whether the status is final.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<nerv_pool::NodeState> for TaskStatus {
    fn from(s: nerv_pool::NodeState) -> Self {
        use nerv_pool::NodeState as N;
        match s {
            N::Pending => TaskStatus::Pending,
            N::Running => TaskStatus::Running,
            N::Completed => TaskStatus::Completed,
            N::Failed => TaskStatus::Failed,
            N::Skipped => TaskStatus::Skipped,
            N::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// What kind of failure a [`TaskError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The task's work returned an error.
    Failed,
    /// The task's work panicked.
    Panicked,
    /// The task ran past its timeout.
    TimedOut,
    /// The run was cancelled while the task ran.
    Cancelled,
    /// A subgraph added by the task was invalid.
    InvalidGraph,
    /// An input the task reads was not produced (its producer did not complete).
    MissingInput,
    /// The task's circuit breaker was open: the task was not run.
    CircuitOpen,
}

struct ErrorInner {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Why a task failed: a kind, a message, and the original error if there was one.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it, so task code can use `?`.
/// (For that reason it does not itself implement `std::error::Error`; use
/// [`TaskError::into_std`] where one is needed.)
#[derive(Clone)]
pub struct TaskError(Arc<ErrorInner>);

impl TaskError {
    fn new(kind: ErrorKind, message: String) -> Self {
        TaskError(Arc::new(ErrorInner {
            kind,
            message,
            source: None,
        }))
    }

    /// A failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Failed, message.to_string())
    }

    /// A failure of the given kind.
    pub fn with_kind(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self::new(kind, message.to_string())
    }

    /// A timeout after `limit`.
    pub fn timeout(limit: Duration) -> Self {
        Self::new(ErrorKind::TimedOut, format!("timed out after {limit:?}"))
    }

    /// A panic with its message.
    pub fn panic(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Panicked, format!("panicked: {message}"))
    }

    /// The run was cancelled.
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled".to_string())
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The original error, if the failure came from one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.0.source.as_deref()
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        self.0.kind == ErrorKind::Panicked
    }

    /// Whether the task timed out.
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::TimedOut
    }

    /// Whether the task was stopped by a cancellation.
    pub fn is_cancelled(&self) -> bool {
        self.0.kind == ErrorKind::Cancelled
    }

    /// Converts into a boxed standard error.
    pub fn into_std(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(StdTaskError(self))
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError(Arc::new(ErrorInner {
            kind: ErrorKind::Failed,
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }))
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .finish()
    }
}

#[derive(Debug)]
struct StdTaskError(TaskError);
impl fmt::Display for StdTaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl std::error::Error for StdTaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
             .0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Descriptive data about a task (the seed's TaskMetadata). Per-run timestamps, retry counts
/// and the like are in its [`TaskResult`].
#[derive(Debug, Clone, Default)]
pub struct TaskMetadata {
    /// When the task was added to its graph.
    pub created_at: Option<SystemTime>,
    /// Who created it.
    pub creator: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Free-form key/value pairs.
    pub extra: BTreeMap<String, String>,
}

/// The outcome of one task in one run (the seed's TaskResult). The task's typed output is read
/// from the [`RunReport`](crate::RunReport) with its handle.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// The task's id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its final (or current) status.
    pub status: TaskStatus,
    /// The error of a failed (or cancelled while running) task.
    pub error: Option<TaskError>,
    /// For a skipped task: the id of the failed upstream task that caused the skip.
    pub skipped_because: Option<String>,
    /// When the task became ready to run, if recorded.
    pub scheduled_at: Option<SystemTime>,
    /// When its first attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached its final status.
    pub completed_at: Option<SystemTime>,
    /// Time from the start of its first attempt to its end.
    pub execution_time: Duration,
    /// Attempts made (0 if it never ran).
    pub attempts: u32,
    /// For a task completed by its fallback: the error that made its work fail for good.
    pub fallback: Option<TaskError>,
}
