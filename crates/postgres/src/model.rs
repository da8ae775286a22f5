//! The submission model: plain serde structs for a workflow, its tasks, and what the database
//! reports back (runs, statuses, events).
//!
//! Invariants: a [`Workflow`] is only data; it is validated once, by
//! [`Engine::submit`](crate::Engine::submit), before anything is stored (unique task ids, known
//! dependencies, no cycle, positive attempts). Task ids are the user's strings; the database
//! numbers tasks `0..n` in submission order and keeps the string as `name`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::memo::Cache;

/// Identifier of a run in the database (`runs.id`).
pub type RunId = i64;

/// A workflow to submit: a name, its tasks, and optional capacities of the resources they use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workflow {
    /// Human name of the workflow.
    pub name: String,
    /// Tasks, in any order; dependencies name other tasks' ids.
    pub tasks: Vec<TaskSpec>,
    /// Capacities to set for named resources (shared by every run in the schema).
    #[serde(default)]
    pub resources: BTreeMap<String, i64>,
}

impl Workflow {
    /// An empty workflow named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Workflow {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds a task (builder style).
    pub fn task(mut self, task: TaskSpec) -> Self {
        self.tasks.push(task);
        self
    }

    /// Sets the capacity of a resource (builder style).
    pub fn resource(mut self, name: impl Into<String>, capacity: i64) -> Self {
        self.resources.insert(name.into(), capacity);
        self
    }
}

/// Scheduling priority: higher runs first among ready tasks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Before medium.
    High,
    /// Before everything else.
    Critical,
}

impl Priority {
    pub(crate) fn as_i16(self) -> i16 {
        match self {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Work {
    /// A command line run by `sh -c`.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
    /// A Rust function registered on the worker under `name`, called with `input`.
    Function {
        /// The registered name.
        name: String,
        /// JSON input handed to the function.
        #[serde(default)]
        input: Value,
    },
}

/// Retry policy: how many attempts in all, and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Attempts in all, at least 1 (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Multiplier applied to the delay after each further failure.
    pub factor: f64,
    /// Upper bound of the delay.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 1,
            backoff: Duration::from_millis(100),
            factor: 2.0,
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// `attempts` attempts in all with the default backoff (100 ms, doubling, capped at 60 s).
    pub fn attempts(attempts: u32) -> Self {
        Retry {
            max_attempts: attempts,
            ..Default::default()
        }
    }

    /// The delay before the attempt that follows failed attempt number `attempt` (1-based);
    /// the same formula the database applies when it re-queues a task.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.saturating_sub(1) as i32);
        let ms = (self.backoff.as_millis() as f64 * exp).min(self.max_backoff.as_millis() as f64);
        Duration::from_millis(ms.max(0.0) as u64)
    }
}

/// One task of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique id within the workflow.
    pub id: String,
    /// Ids of the tasks that must succeed first.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: Priority,
    /// What to run.
    pub work: Work,
    /// Retry policy.
    #[serde(default)]
    pub retry: Retry,
    /// Time limit of one attempt; `None` = no limit.
    #[serde(default, with = "opt_millis")]
    pub timeout: Option<Duration>,
    /// Resource amounts held while the task runs (across every worker).
    #[serde(default)]
    pub uses: BTreeMap<String, i64>,
    /// Worker tags required to run this task (a worker must have all of them).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Estimated duration, used to rank tasks by their remaining critical path.
    #[serde(default, with = "opt_millis")]
    pub estimate: Option<Duration>,
    /// The task's place in the ready order, for a schedule worked out ahead of time (e.g. by
    /// `nerv::Plan::search_order`). Once any task of the workflow has one, workers take
    /// ready tasks by priority, then highest key (a task without one counts as 0), instead of
    /// by remaining critical path: as the local executor does with `TaskBuilder::order_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_key: Option<u64>,
    /// Cached command: the worker that claims the task computes its key (reading its inputs
    /// there) and completes it from the shared cache on a hit (see [`Cache`]). Functions are
    /// memoized by their registration instead ([`WorkerBuilder::register_memo`](crate::WorkerBuilder::register_memo)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
}

impl TaskSpec {
    /// A task with `id` running `work` and defaults elsewhere.
    pub fn new(id: impl Into<String>, work: Work) -> Self {
        TaskSpec {
            id: id.into(),
            deps: Vec::new(),
            priority: Priority::Medium,
            work,
            retry: Retry::default(),
            timeout: None,
            uses: BTreeMap::new(),
            tags: Vec::new(),
            estimate: None,
            order_key: None,
            cache: None,
        }
    }

    /// A task running a shell command line.
    pub fn shell(id: impl Into<String>, command: impl Into<String>) -> Self {
        Self::new(id, Work::Shell(command.into()))
    }

    /// A task calling a registered Rust function.
    pub fn function(id: impl Into<String>, name: impl Into<String>, input: Value) -> Self {
        Self::new(
            id,
            Work::Function {
                name: name.into(),
                input,
            },
        )
    }

    /// Adds dependencies (builder style).
    pub fn after<I, S>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.deps.extend(deps.into_iter().map(Into::into));
        self
    }

    /// Sets the priority (builder style).
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// Sets the retry policy (builder style).
    pub fn retry(mut self, r: Retry) -> Self {
        self.retry = r;
        self
    }

    /// Sets the time limit of one attempt (builder style).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Holds `amount` of `resource` while running (builder style).
    pub fn uses(mut self, resource: impl Into<String>, amount: i64) -> Self {
        self.uses.insert(resource.into(), amount);
        self
    }

    /// Requires a worker tag (builder style).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the estimated duration (builder style).
    pub fn estimate(mut self, d: Duration) -> Self {
        self.estimate = Some(d);
        self
    }

    /// Sets the task's order key (builder style; see [`TaskSpec::order_key`]).
    pub fn order_key(mut self, key: u64) -> Self {
        self.order_key = Some(key);
        self
    }

    /// Caches the command's result under the key `cache` describes (builder style).
    pub fn cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }
}

/// State of a task in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for dependencies.
    Pending,
    /// Claimable (possibly after a backoff delay).
    Ready,
    /// Leased by a worker.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed its last attempt.
    Failed,
    /// Not run because a dependency failed.
    Skipped,
    /// Not run (or stopped) because its run was cancelled.
    Cancelled,
}

impl TaskState {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Ready => "ready",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskState::Pending,
            "ready" => TaskState::Ready,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "skipped" => TaskState::Skipped,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// True for states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Tasks remain to be run.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Some task failed (and its dependents were skipped).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl RunState {
    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    /// True once the run can change no more (apart from cancelled tasks still stopping).
    pub fn is_finished(self) -> bool {
        self != RunState::Running
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        })
    }
}

/// One row of `runs`, as listed by [`Engine::runs`](crate::Engine::runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id.
    pub id: RunId,
    /// The workflow name.
    pub name: String,
    /// Current state.
    pub state: RunState,
    /// Number of tasks.
    pub tasks: i64,
    /// Tasks not yet in a terminal state.
    pub unfinished: i64,
}

/// One task as reported by [`Engine::status`](crate::Engine::status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The user's task id.
    pub id: String,
    /// Current state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempt: i32,
    /// Worker holding the lease, if running.
    pub worker: Option<String>,
    /// Output of the successful attempt.
    pub output: Option<Value>,
    /// Error of the last failed attempt.
    pub error: Option<String>,
    /// Completed from the cache, without running.
    #[serde(default)]
    pub cached: bool,
}

/// A run and all its tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStatus {
    /// The run row.
    pub run: RunSummary,
    /// Its tasks, in submission order.
    pub tasks: Vec<TaskStatus>,
}

impl RunStatus {
    /// Number of tasks in `state`.
    pub fn count(&self, state: TaskState) -> usize {
        self.tasks.iter().filter(|t| t.state == state).count()
    }
}

/// One row of the append-only `events` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Position in the table (`events.id`).
    pub id: i64,
    /// The run it belongs to.
    pub run: RunId,
    /// The task's user id, for task events.
    pub task: Option<String>,
    /// What happened: `run_submitted`, `task_ready`, `task_started`, `task_succeeded`,
    /// `task_failed`, `task_retrying`, `task_skipped`, `task_cancelled`, `task_cached` (a
    /// cache hit: its `task_succeeded` follows, not run), `lease_expired`, `completion_ignored`,
    /// `run_succeeded`, `run_failed`, `run_cancelled`.
    pub kind: String,
    /// Attempt number, for task events.
    pub attempt: Option<i32>,
    /// Worker involved, if any.
    pub worker: Option<String>,
    /// Extra detail (error text, output).
    pub data: Option<Value>,
}

impl Event {
    /// True for the events that end a run.
    pub fn ends_run(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "run_succeeded" | "run_failed" | "run_cancelled"
        )
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

pub(crate) mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_caps() {
        let r = Retry {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            factor: 2.0,
            max_backoff: Duration::from_millis(300),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(300));
    }

    #[test]
    fn workflow_round_trips_through_json() {
        let wf = Workflow::new("w")
            .task(TaskSpec::shell("a", "true").priority(Priority::High))
            .task(
                TaskSpec::function("b", "f", serde_json::json!({"x": 1}))
                    .after(["a"])
                    .uses("gpu", 1),
            );
        let s = serde_json::to_string(&wf).unwrap();
        let back: Workflow = serde_json::from_str(&s).unwrap();
        assert_eq!(back.tasks.len(), 2);
        assert_eq!(back.tasks[1].deps, vec!["a".to_string()]);
        assert_eq!(back.tasks[0].priority, Priority::High);
    }
}
