//! Why a graph is invalid, naming the tasks at fault.

use thiserror::Error;

/// A problem found while building a [`Graph`](crate::Graph). Each variant names the tasks
/// involved by id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// A task depends on an id that no task has.
    #[error("task `{task}` depends on `{dependency}`, which is not a task of this graph")]
    UnknownDependency {
        /// The task that names the dependency.
        task: String,
        /// The missing id.
        dependency: String,
    },
    /// Two tasks have the same id.
    #[error("duplicate task id `{id}` (tasks #{first} and #{second})")]
    DuplicateId {
        /// The id.
        id: String,
        /// Position of the first task with it (in insertion order).
        first: usize,
        /// Position of the second.
        second: usize,
    },
    /// A task depends on itself.
    #[error("task `{task}` depends on itself")]
    SelfDependency {
        /// The task.
        task: String,
    },
    /// The dependencies form a cycle; `path` starts and ends with the same task.
    #[error("dependency cycle: {}", path.join(" → "))]
    Cycle {
        /// The tasks around the cycle, `a → b → … → a` (each depends on the one before it).
        path: Vec<String>,
    },
    /// A task's id is empty.
    #[error("task #{position} has an empty id")]
    EmptyId {
        /// Its position in insertion order.
        position: usize,
    },
    /// A task refers to a handle made by another graph builder.
    #[error("task `{task}` refers to a task of another graph (handle {handle})")]
    ForeignHandle {
        /// The task.
        task: String,
        /// The foreign handle, as `graph#index`.
        handle: String,
    },
    /// The graph is larger than nerv's 32-bit indices allow.
    #[error("graph too large: {0}")]
    TooLarge(String),
}

impl GraphError {
    /// The ids of the tasks this error is about.
    pub fn tasks(&self) -> Vec<&str> {
        match self {
            GraphError::UnknownDependency { task, .. }
            | GraphError::SelfDependency { task }
            | GraphError::ForeignHandle { task, .. } => vec![task],
            GraphError::DuplicateId { id, .. } => vec![id],
            GraphError::Cycle { path } => path.iter().map(String::as_str).collect(),
            GraphError::EmptyId { .. } | GraphError::TooLarge(_) => vec![],
        }
    }
}
