//! Task definitions for the workflow manager (the seed's `TaskDef`): tasks named by string
//! id, dependencies by id, values passed as JSON.
//!
//! The typed [`GraphBuilder`](crate::GraphBuilder) is the zero-cost way to build a graph in
//! Rust; a `TaskDef` is for workflows assembled at run time (from a file, a request, an agent):
//! each task's output is a [`Value`], its dependents read it by the dependency's id (as JSON,
//! or deserialized into any type).

use crate::context::TaskContext;
use crate::policy::retry::RetryPolicy;
use crate::task::{Priority, TaskError, TaskMetadata};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) type SyncWork =
    dyn Fn(&TaskContext<'_>, &TaskInputs<'_>) -> Result<Value, TaskError> + Send + Sync;
type AsyncWork = dyn Fn(
        &TaskContext<'_>,
        OwnedInputs,
    ) -> Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>
    + Send
    + Sync;

/// The work of a [`TaskDef`].
#[derive(Clone)]
pub(crate) enum Work {
    Sync(Arc<SyncWork>),
    Async(Arc<AsyncWork>),
}

/// A task of a managed workflow: id, name, description, dependencies, the work, priority,
/// timeout, retry policy, resources and metadata (the seed's `TaskDef`).
#[derive(Clone)]
pub struct TaskDef {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) dependencies: Vec<String>,
    pub(crate) priority: Priority,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) estimate: Option<Duration>,
    pub(crate) uses: Vec<(String, u64)>,
    pub(crate) meta: TaskMetadata,
    pub(crate) work: Work,
    pub(crate) fallback: Option<Arc<SyncWork>>,
    pub(crate) trigger: crate::graph::TriggerRule,
    pub(crate) memo: Option<crate::memo::Memo>,
    pub(crate) circuit: Option<String>,
    pub(crate) rate_limit: Option<String>,
}

impl fmt::Debug for TaskDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDef")
            .field("id", &self.id)
            .field("dependencies", &self.dependencies)
            .field("priority", &self.priority)
            .finish()
    }
}

impl TaskDef {
    fn with_work(id: impl Into<String>, work: Work) -> Self {
        TaskDef {
            id: id.into(),
            name: None,
            description: None,
            dependencies: Vec::new(),
            priority: Priority::Medium,
            timeout: None,
            retry: None,
            estimate: None,
            uses: Vec::new(),
            meta: TaskMetadata::default(),
            work,
            fallback: None,
            trigger: crate::graph::TriggerRule::AllSuccess,
            memo: None,
            circuit: None,
            rate_limit: None,
        }
    }

    /// Passes each attempt through the engine's circuit breaker `kind` (see
    /// [`TaskBuilder::circuit_breaker`](crate::TaskBuilder::circuit_breaker)).
    pub fn circuit_breaker(mut self, kind: impl Into<String>) -> Self {
        self.circuit = Some(kind.into());
        self
    }

    /// Takes a permit of the engine's rate limit `key` before each attempt (see
    /// [`TaskBuilder::rate_limit`](crate::TaskBuilder::rate_limit)).
    pub fn rate_limit(mut self, key: impl Into<String>) -> Self {
        self.rate_limit = Some(key.into());
        self
    }

    /// A task `id` whose work runs on a worker thread: it gets the task's context and its
    /// inputs (the execution's context and its dependencies' outputs) and returns its output.
    pub fn new(
        id: impl Into<String>,
        f: impl Fn(&TaskContext<'_>, &TaskInputs<'_>) -> Result<Value, TaskError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self::with_work(id, Work::Sync(Arc::new(f)))
    }

    /// A task `id` whose work is async (IO-bound): the function gets owned inputs and returns
    /// a future, run on tokio.
    pub fn new_async<Fut>(
        id: impl Into<String>,
        f: impl Fn(&TaskContext<'_>, OwnedInputs) -> Fut + Send + Sync + 'static,
    ) -> Self
    where
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        Self::with_work(
            id,
            Work::Async(Arc::new(move |cx, inputs| Box::pin(f(cx, inputs)))),
        )
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The ids of the tasks it depends on.
    pub fn dependencies(&self) -> &[String] {
        &self.dependencies
    }

    /// A display name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// Runs after the task `id`, and reads its output.
    pub fn depends_on(mut self, id: impl Into<String>) -> Self {
        self.dependencies.push(id.into());
        self
    }

    /// Runs after each of `ids`, and reads their outputs.
    pub fn depends_on_all<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.dependencies.extend(ids.into_iter().map(Into::into));
        self
    }

    /// The priority (default medium).
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// The timeout of one attempt.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The retry policy.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = Some(p);
        self
    }

    /// A duration estimate, for the planner.
    pub fn estimate(mut self, d: Duration) -> Self {
        self.estimate = Some(d);
        self
    }

    /// Holds `amount` of the engine's resource `name` while running.
    pub fn uses(mut self, name: impl Into<String>, amount: u64) -> Self {
        self.uses.push((name.into(), amount));
        self
    }

    /// Computes the task's output another way when its work fails for good (after its
    /// retries): dependents then receive the fallback's output.
    pub fn fallback(
        mut self,
        f: impl Fn(&TaskContext<'_>, &TaskInputs<'_>) -> Result<Value, TaskError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.fallback = Some(Arc::new(f));
        self
    }

    /// When the task runs, given how its dependencies ended (a dependency that did not
    /// complete is absent from the inputs).
    pub fn trigger(mut self, rule: crate::graph::TriggerRule) -> Self {
        self.trigger = rule;
        self
    }

    /// Memoizes the task's output by its id, `memo`'s version and its inputs (the context
    /// and its dependencies' outputs), with `memo`'s TTL, in the engine's memo store. For
    /// sync work without a fallback (`add_task` refuses other combinations).
    pub fn memoize(mut self, memo: crate::memo::Memo) -> Self {
        self.memo = Some(memo);
        self
    }

    /// Who created it.
    pub fn creator(mut self, c: impl Into<String>) -> Self {
        self.meta.creator = Some(c.into());
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.meta.tags.push(t.into());
        self
    }
}

/// What a managed task's work reads: the execution's context and its dependencies' outputs.
pub struct TaskInputs<'a> {
    pub(crate) context: &'a Value,
    pub(crate) ids: &'a [String],
    pub(crate) values: Vec<Option<&'a Value>>,
}

impl fmt::Debug for TaskInputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInputs")
            .field("dependencies", &self.ids)
            .finish()
    }
}

impl<'a> TaskInputs<'a> {
    /// The context given to `execute_workflow`.
    pub fn context(&self) -> &'a Value {
        self.context
    }

    /// The output of dependency `id` (`None` if `id` is not a dependency of this task, or
    /// did not complete: possible only with a trigger rule).
    pub fn get(&self, id: &str) -> Option<&'a Value> {
        let i = self.ids.iter().position(|d| d == id)?;
        self.values[i]
    }

    /// The output of dependency `id`, deserialized; the error names the dependency.
    pub fn get_as<T: DeserializeOwned>(&self, id: &str) -> Result<T, TaskError> {
        deserialize(id, self.get(id))
    }

    /// Every completed dependency's id and output, in the order they were declared.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Value)> + '_ {
        self.ids
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
            .filter_map(|(k, v)| Some((k, (*v)?)))
    }

    /// Owned copies, for work that must outlive the borrow.
    pub fn to_owned(&self) -> OwnedInputs {
        OwnedInputs {
            context: Arc::new(self.context.clone()),
            deps: self
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}

/// Owned inputs of an async managed task.
#[derive(Debug, Clone)]
pub struct OwnedInputs {
    context: Arc<Value>,
    deps: Vec<(String, Value)>,
}

impl OwnedInputs {
    /// The context given to `execute_workflow`.
    pub fn context(&self) -> &Value {
        &self.context
    }

    /// The output of dependency `id`.
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.deps.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// The output of dependency `id`, deserialized; the error names the dependency.
    pub fn get_as<T: DeserializeOwned>(&self, id: &str) -> Result<T, TaskError> {
        deserialize(id, self.get(id))
    }

    /// Every dependency's id and output.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.deps.iter().map(|(k, v)| (k.as_str(), v))
    }
}

fn deserialize<T: DeserializeOwned>(id: &str, v: Option<&Value>) -> Result<T, TaskError> {
    let v = v.ok_or_else(|| TaskError::msg(format!("`{id}` is not a dependency of this task")))?;
    T::deserialize(v).map_err(|e| {
        TaskError::msg(format!(
            "the output of `{id}` does not have the expected shape: {e}"
        ))
    })
}
