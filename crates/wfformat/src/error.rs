//! Import errors: every error names the file it came from (or the origin given to
//! [`parse_str`](crate::parse_str)) and, when one task is at fault, that task.

use std::path::{Path, PathBuf};

/// An error reading or validating a WfFormat file.
///
/// `Display` gives `FILE: what is wrong`, naming the task (and, for a cycle, the whole path).
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", .file.display())]
pub struct Error {
    file: PathBuf,
    kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(file: &Path, kind: ErrorKind) -> Self {
        Error {
            file: file.to_path_buf(),
            kind,
        }
    }

    /// The file (or origin) the error is about.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The task at fault, if the error is about one task (for a cycle: its first task).
    pub fn task(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::DuplicateTask { task }
            | ErrorKind::UnknownParent { task, .. }
            | ErrorKind::UnknownChild { task, .. }
            | ErrorKind::SelfDependency { task }
            | ErrorKind::MissingRuntime { task }
            | ErrorKind::InvalidRuntime { task, .. }
            | ErrorKind::InvalidMeasure { task, .. }
            | ErrorKind::UnknownExecutionTask { task } => Some(task),
            ErrorKind::Cycle { path } => path.first().map(String::as_str),
            _ => None,
        }
    }

    /// Whether the file could not be read.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, ErrorKind::Io(_))
    }

    /// Whether the file is not JSON, or not shaped like a WfFormat instance.
    pub fn is_syntax(&self) -> bool {
        matches!(self.kind, ErrorKind::Json(_) | ErrorKind::MissingTasks)
    }

    /// Whether the file declares a schema version this crate does not read.
    pub fn is_unsupported_version(&self) -> bool {
        matches!(self.kind, ErrorKind::UnsupportedVersion { .. })
    }

    /// Whether the dependencies form a cycle.
    pub fn is_cycle(&self) -> bool {
        matches!(self.kind, ErrorKind::Cycle { .. })
    }
}

/// What is wrong with a WfFormat file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// Not JSON, or a value of the wrong type (the message has the line and column).
    #[error("invalid WfFormat JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `schemaVersion` is not one of 1.4, 1.5, 1.6.
    #[error("unsupported schemaVersion {version:?} (supported: 1.4, 1.5, 1.6)")]
    UnsupportedVersion {
        /// The version found.
        version: String,
    },
    /// Neither `workflow.specification.tasks` (1.5+) nor `workflow.tasks` (1.4) is present.
    #[error("no task list: expected `workflow.specification.tasks` (1.5, 1.6) or `workflow.tasks` (1.4)")]
    MissingTasks,
    /// A task has an empty id.
    #[error("task #{position} has an empty id")]
    EmptyId {
        /// Its position in the task list.
        position: usize,
    },
    /// Two tasks share an id.
    #[error("task {task:?} is defined twice")]
    DuplicateTask {
        /// The id.
        task: String,
    },
    /// A task names a parent that is not a task of the file.
    #[error("task {task:?} has unknown parent {parent:?}")]
    UnknownParent {
        /// The task.
        task: String,
        /// The parent id that matches no task.
        parent: String,
    },
    /// A task names a child that is not a task of the file.
    #[error("task {task:?} has unknown child {child:?}")]
    UnknownChild {
        /// The task.
        task: String,
        /// The child id that matches no task.
        child: String,
    },
    /// A task is its own parent or child.
    #[error("task {task:?} depends on itself")]
    SelfDependency {
        /// The task.
        task: String,
    },
    /// The dependencies form a cycle.
    #[error("dependency cycle: {}", .path.join(" -> "))]
    Cycle {
        /// The tasks on the cycle, each a parent of the next; the first is repeated at the end.
        path: Vec<String>,
    },
    /// A task has no `runtimeInSeconds` (no execution record, or the field is absent).
    #[error("task {task:?} has no runtimeInSeconds")]
    MissingRuntime {
        /// The task.
        task: String,
    },
    /// A runtime that is negative or not finite.
    #[error("task {task:?} has invalid runtimeInSeconds {value}")]
    InvalidRuntime {
        /// The task.
        task: String,
        /// The value found.
        value: f64,
    },
    /// A memory or core count that is negative or not finite.
    #[error("task {task:?} has invalid {field} {value}")]
    InvalidMeasure {
        /// The task.
        task: String,
        /// The field (`memoryInBytes`, `coreCount`, `cores`).
        field: &'static str,
        /// The value found.
        value: f64,
    },
    /// `workflow.execution.tasks` has a record whose id is not in the specification.
    #[error("execution record for unknown task {task:?}")]
    UnknownExecutionTask {
        /// The id of the record.
        task: String,
    },
}
