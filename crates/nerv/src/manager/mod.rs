//! The workflow manager (the seed's `WorkflowManager`): define workflows task by task,
//! execute them on a shared engine, and ask how they are doing.
//!
//! Invariants:
//! - A workflow definition is only ever added to; an execution runs the definition as it was
//!   when `execute_workflow` was called (later `add_task`s affect later executions only).
//! - Executions run on the manager's one executor: many at once share its workers, its
//!   resources and its event bus.
//! - Workflow ids and execution ids come from one sequence (with run ids of the executor),
//!   so an event's `source.workflow` names either unambiguously: the manager's
//!   `WorkflowCreated` carries the workflow's id, every later event of an execution the
//!   execution's id.
//!
//! Executing (`execute_workflow`):
//! 1. the definition is turned into a [`Graph`] (validated: unknown dependency, duplicate,
//!    cycle are errors naming the tasks); each task's output is a JSON [`Value`] that its
//!    dependents read by id;
//! 2. the run starts on the executor and the call returns its [`ExecutionId`] at once;
//! 3. the run publishes its events (started, every task transition, the end) on the bus.

mod task_def;

pub use task_def::{OwnedInputs, TaskDef, TaskInputs};

use crate::event::{Event, EventBus, EventData, Source, Subscription};
use crate::exec::runner::next_id;
use crate::exec::{Executor, ExecutorBuilder, Run, RunOptions, RunReport, RunStatus};
use crate::graph::{Graph, GraphError, Handle};
use crate::plan::Plan;
use crate::state::EngineProjector;
use crate::task::{TaskResult, TaskStatus};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use task_def::Work;

/// The id of a workflow definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkflowId(pub u64);

/// The id of one execution of a workflow (the id of its run and of its events' source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(pub u64);

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workflow {}", self.0)
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "execution {}", self.0)
    }
}

/// Where a workflow (or one execution of it) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowStatus {
    /// Defined, never executed.
    Created,
    /// Executing.
    Running,
    /// Every task completed.
    Completed,
    /// A task failed (its dependents were skipped).
    Failed,
    /// Cancelled.
    Cancelled,
}

impl WorkflowStatus {
    /// Upper-case name, as the seed writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Created => "CREATED",
            WorkflowStatus::Running => "RUNNING",
            WorkflowStatus::Completed => "COMPLETED",
            WorkflowStatus::Failed => "FAILED",
            WorkflowStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RunStatus> for WorkflowStatus {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Completed => WorkflowStatus::Completed,
            RunStatus::Failed => WorkflowStatus::Failed,
            RunStatus::Cancelled => WorkflowStatus::Cancelled,
        }
    }
}

/// What went wrong with a manager call.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No workflow has this id.
    #[error("workflow not found: {0}")]
    UnknownWorkflow(WorkflowId),
    /// No execution has this id.
    #[error("execution not found: {0}")]
    UnknownExecution(ExecutionId),
    /// The workflow already has a task with this id.
    #[error("workflow `{workflow}` already has a task `{task}`")]
    DuplicateTask {
        /// The workflow's name.
        workflow: String,
        /// The task's id.
        task: String,
    },
    /// The task combines options that do not go together.
    #[error("task `{task}`: {why}")]
    InvalidTask {
        /// The task's id.
        task: String,
        /// What does not go together.
        why: &'static str,
    },
    /// The workflow's tasks do not make a valid graph.
    #[error("workflow `{workflow}` is invalid: {error}")]
    InvalidWorkflow {
        /// The workflow's name.
        workflow: String,
        /// What is wrong.
        error: GraphError,
    },
    /// The execution has no task with this id.
    #[error("{execution} has no task `{task}`")]
    UnknownTask {
        /// The execution.
        execution: ExecutionId,
        /// The task's id.
        task: String,
    },
}

impl ManagerError {
    /// Whether the error is about an id that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ManagerError::UnknownWorkflow(_)
                | ManagerError::UnknownExecution(_)
                | ManagerError::UnknownTask { .. }
        )
    }
}

/// A workflow's (or an execution's) status report (the seed's `get_workflow_status`).
#[derive(Debug, Clone)]
pub struct WorkflowReport {
    /// The workflow.
    pub id: WorkflowId,
    /// The execution reported on (the latest one), if it was executed.
    pub execution: Option<ExecutionId>,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its status.
    pub status: WorkflowStatus,
    /// When it was defined.
    pub created_at: SystemTime,
    /// When the execution started.
    pub started_at: Option<SystemTime>,
    /// When the execution ended.
    pub completed_at: Option<SystemTime>,
    /// How long the execution took (so far, while running).
    pub duration: Option<Duration>,
    /// Number of tasks.
    pub task_count: usize,
    /// Each task's result (current status while running).
    pub results: Vec<TaskResult>,
    /// The first failure, for a failed execution.
    pub error: Option<String>,
}

/// One line of [`WorkflowManager::list_workflows`].
#[derive(Debug, Clone)]
pub struct WorkflowSummary {
    /// The workflow.
    pub id: WorkflowId,
    /// Its name.
    pub name: String,
    /// Number of tasks defined.
    pub task_count: usize,
    /// Its latest execution's status (`Created` if never executed).
    pub status: WorkflowStatus,
    /// Its executions, oldest first.
    pub executions: Vec<ExecutionId>,
}

/// One line of [`WorkflowManager::list_executions`].
#[derive(Debug, Clone)]
pub struct ExecutionSummary {
    /// The execution.
    pub id: ExecutionId,
    /// Its workflow.
    pub workflow: WorkflowId,
    /// Its status.
    pub status: WorkflowStatus,
    /// When it started.
    pub started_at: SystemTime,
}

struct Definition {
    name: String,
    description: String,
    created_at: SystemTime,
    tasks: Vec<TaskDef>,
    executions: Vec<ExecutionId>,
}

/// Each task's output handle, by task id.
type Outputs = HashMap<String, Handle<Value>>;

struct Execution {
    workflow: WorkflowId,
    run: Run,
    outputs: Outputs,
}

impl Execution {
    fn status(&self) -> WorkflowStatus {
        if self.run.is_finished() {
            self.run.report().status().into()
        } else {
            WorkflowStatus::Running
        }
    }
}

struct Inner {
    executor: Executor,
    bus: EventBus,
    /// The projection of every event on the bus: what `get_task_status` reads.
    projector: EngineProjector,
    _projection: Subscription,
    defaults: RunOptions,
    workflows: RwLock<BTreeMap<WorkflowId, Definition>>,
    executions: RwLock<BTreeMap<ExecutionId, Execution>>,
}

/// Configures a [`WorkflowManager`].
#[derive(Debug, Default)]
pub struct WorkflowManagerBuilder {
    executor: ExecutorBuilder,
    bus: Option<EventBus>,
    defaults: RunOptions,
}

impl WorkflowManagerBuilder {
    /// Number of worker threads (default: the available cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.executor = self.executor.workers(n);
        self
    }

    /// Defines a named resource limit shared by all executions.
    pub fn resource(mut self, name: &str, capacity: u64) -> Self {
        self.executor = self.executor.resource(name, capacity);
        self
    }

    /// Uses this tokio runtime for async tasks and timers.
    pub fn tokio_handle(mut self, h: tokio::runtime::Handle) -> Self {
        self.executor = self.executor.tokio_handle(h);
        self
    }

    /// The most workers [`WorkflowManager::resize`] can grow to (see
    /// [`ExecutorBuilder::max_workers`]).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.executor = self.executor.max_workers(n);
        self
    }

    /// Sizes the engine for a kind of work (see [`Workload`](crate::Workload)).
    pub fn preset(mut self, w: crate::exec::Workload) -> Self {
        self.executor = self.executor.preset(w);
        self
    }

    /// The container tasks obtain their dependencies from (see
    /// [`ExecutorBuilder::container`]).
    pub fn container(mut self, c: crate::container::Container) -> Self {
        self.executor = self.executor.container(c);
        self
    }

    /// The circuit breakers of tasks that name one (see
    /// [`ExecutorBuilder::circuit_breakers`]).
    pub fn circuit_breakers(mut self, b: crate::policy::circuit_breaker::CircuitBreakers) -> Self {
        self.executor = self.executor.circuit_breakers(b);
        self
    }

    /// Limits the starts of tasks that name `key` (see [`ExecutorBuilder::rate_limit`]).
    pub fn rate_limit(mut self, key: &str, limit: crate::policy::rate_limit::RateLimit) -> Self {
        self.executor = self.executor.rate_limit(key, limit);
        self
    }

    /// Publishes on this bus (default: a new one, see [`WorkflowManager::events`]).
    pub fn events(mut self, bus: EventBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Default options of every execution (retry policy, timeout, failure policy).
    pub fn defaults(mut self, opts: RunOptions) -> Self {
        self.defaults = opts;
        self
    }

    /// Starts the manager's engine.
    pub fn build(self) -> WorkflowManager {
        let bus = self.bus.unwrap_or_default();
        let projector = EngineProjector::new();
        let projection = projector.attach(&bus);
        WorkflowManager {
            inner: Arc::new(Inner {
                executor: self.executor.events(bus.clone()).build(),
                bus,
                projector,
                _projection: projection,
                defaults: self.defaults,
                workflows: RwLock::new(BTreeMap::new()),
                executions: RwLock::new(BTreeMap::new()),
            }),
        }
    }
}

/// Defines and executes workflows on one engine (the seed's `WorkflowManager`). Cheap to
/// clone (clones share everything).
///
/// ```
/// use nerv::{TaskDef, WorkflowManager, WorkflowStatus};
/// use serde_json::json;
///
/// let m = WorkflowManager::builder().workers(2).build();
/// let wf = m.create_workflow("greet", "says hello");
/// m.add_task(wf, TaskDef::new("who", |_, inp| Ok(inp.context()["name"].clone()))).unwrap();
/// m.add_task(
///     wf,
///     TaskDef::new("hello", |_, inp| {
///         let who: String = inp.get_as("who")?;
///         Ok(json!(format!("hello, {who}")))
///     })
///     .depends_on("who"),
/// )
/// .unwrap();
/// let ex = m.execute_workflow(wf, json!({"name": "nerv"})).unwrap();
/// m.wait(ex).unwrap();
/// assert_eq!(m.get_workflow_status(wf).unwrap().status, WorkflowStatus::Completed);
/// assert_eq!(m.output(ex, "hello").unwrap(), Some(json!("hello, nerv")));
/// ```
#[derive(Clone)]
pub struct WorkflowManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for WorkflowManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowManager")
            .field("workflows", &self.read_workflows().len())
            .field("executions", &self.read_executions().len())
            .finish()
    }
}

impl Default for WorkflowManager {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkflowManager {
    /// A manager with one worker per core and a new event bus.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a manager.
    pub fn builder() -> WorkflowManagerBuilder {
        WorkflowManagerBuilder::default()
    }

    /// The bus every execution publishes on.
    pub fn events(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The engine.
    pub fn executor(&self) -> &Executor {
        &self.inner.executor
    }

    fn read_workflows(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<WorkflowId, Definition>> {
        self.inner
            .workflows
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write_workflows(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<WorkflowId, Definition>> {
        self.inner
            .workflows
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn read_executions(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ExecutionId, Execution>> {
        self.inner
            .executions
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Defines a new, empty workflow; publishes `WorkflowCreated`.
    pub fn create_workflow(&self, name: &str, description: &str) -> WorkflowId {
        let id = WorkflowId(next_id());
        let created_at = SystemTime::now();
        self.write_workflows().insert(
            id,
            Definition {
                name: name.to_string(),
                description: description.to_string(),
                created_at,
                tasks: Vec::new(),
                executions: Vec::new(),
            },
        );
        if self
            .inner
            .bus
            .wants(crate::event::EventKind::WorkflowCreated)
        {
            self.inner.bus.publish(Event::at(
                created_at,
                Source::workflow(id.0),
                EventData::WorkflowCreated {
                    name: name.into(),
                    tasks: 0,
                },
            ));
        }
        id
    }

    /// Adds a task to a workflow; returns its id. Fails for an unknown workflow or a task id
    /// the workflow already has (other mistakes, such as an unknown dependency or a cycle,
    /// are reported when the workflow is executed, since tasks may be added in any order).
    pub fn add_task(&self, workflow: WorkflowId, task: TaskDef) -> Result<String, ManagerError> {
        let mut wfs = self.write_workflows();
        let def = wfs
            .get_mut(&workflow)
            .ok_or(ManagerError::UnknownWorkflow(workflow))?;
        if task.memo.is_some() && (matches!(task.work, Work::Async(_)) || task.fallback.is_some()) {
            return Err(ManagerError::InvalidTask {
                task: task.id,
                why: "memoization is for sync work without a fallback",
            });
        }
        if def.tasks.iter().any(|t| t.id == task.id) {
            return Err(ManagerError::DuplicateTask {
                workflow: def.name.clone(),
                task: task.id,
            });
        }
        let id = task.id.clone();
        def.tasks.push(task);
        Ok(id)
    }

    /// The workflow as a validated graph (each call builds a new one).
    pub fn graph(&self, workflow: WorkflowId) -> Result<Graph, ManagerError> {
        self.build(workflow, Arc::new(Value::Null)).map(|b| b.0)
    }

    /// The workflow's execution plan (levels, critical path).
    pub fn plan(&self, workflow: WorkflowId) -> Result<Plan, ManagerError> {
        Ok(self.graph(workflow)?.plan())
    }

    fn build(
        &self,
        workflow: WorkflowId,
        context: Arc<Value>,
    ) -> Result<(Graph, Outputs, String), ManagerError> {
        let wfs = self.read_workflows();
        let def = wfs
            .get(&workflow)
            .ok_or(ManagerError::UnknownWorkflow(workflow))?;
        let (graph, outputs) =
            build_graph(&def.tasks, context).map_err(|error| ManagerError::InvalidWorkflow {
                workflow: def.name.clone(),
                error,
            })?;
        Ok((graph, outputs, def.name.clone()))
    }

    /// Starts executing a workflow with `context` (tasks read it from their inputs); returns
    /// at once with the execution's id while it runs on the engine.
    pub fn execute_workflow(
        &self,
        workflow: WorkflowId,
        context: Value,
    ) -> Result<ExecutionId, ManagerError> {
        self.execute_with(workflow, context, self.inner.defaults.clone())
    }

    /// Like [`WorkflowManager::execute_workflow`], with options for this execution.
    pub fn execute_with(
        &self,
        workflow: WorkflowId,
        context: Value,
        opts: RunOptions,
    ) -> Result<ExecutionId, ManagerError> {
        let (graph, outputs, name) = self.build(workflow, Arc::new(context))?;
        let opts = RunOptions {
            name: Some(opts.name.clone().unwrap_or(name)),
            ..opts
        };
        // The run is recorded before its first event is published (so that a subscriber
        // asking about it finds it), and no lock is held while the events are published (so
        // that a subscriber may call the manager).
        let prepared = self.inner.executor.prepare(&graph, opts);
        let run = Run {
            handle: prepared.handle().clone(),
        };
        let id = ExecutionId(run.id());
        self.inner
            .executions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Execution {
                    workflow,
                    run,
                    outputs,
                },
            );
        if let Some(def) = self.write_workflows().get_mut(&workflow) {
            def.executions.push(id);
        }
        prepared.handle().runner().publish_start(None);
        prepared.launch();
        Ok(id)
    }

    /// Executes a workflow `n` times, one after the other (Taskflow's `run_n`); returns each
    /// execution's report. Stops early at a failed execution.
    pub fn run_n(
        &self,
        workflow: WorkflowId,
        context: Value,
        n: usize,
    ) -> Result<Vec<RunReport>, ManagerError> {
        let mut reports = Vec::with_capacity(n);
        for _ in 0..n {
            let ex = self.execute_workflow(workflow, context.clone())?;
            let r = self.wait(ex)?;
            let failed = r.status() != RunStatus::Completed;
            reports.push(r);
            if failed {
                break;
            }
        }
        Ok(reports)
    }

    /// Executes a workflow again and again until `done` holds for an execution's report
    /// (Taskflow's `run_until`); returns that report and how many executions it took.
    pub fn run_until(
        &self,
        workflow: WorkflowId,
        context: Value,
        mut done: impl FnMut(&RunReport) -> bool,
    ) -> Result<(RunReport, usize), ManagerError> {
        let mut n = 0;
        loop {
            let ex = self.execute_workflow(workflow, context.clone())?;
            let r = self.wait(ex)?;
            n += 1;
            if done(&r) {
                return Ok((r, n));
            }
        }
    }

    fn with_execution<R>(
        &self,
        ex: ExecutionId,
        f: impl FnOnce(&Execution) -> R,
    ) -> Result<R, ManagerError> {
        self.read_executions()
            .get(&ex)
            .map(f)
            .ok_or(ManagerError::UnknownExecution(ex))
    }

    /// Blocks until the execution ends; returns its report.
    pub fn wait(&self, ex: ExecutionId) -> Result<RunReport, ManagerError> {
        // A handle of the run, so that no lock is held while waiting.
        let run = self.with_execution(ex, |e| Run {
            handle: e.run.handle.clone(),
        })?;
        Ok(run.wait())
    }

    /// Cancels an execution (see [`Run::cancel`]).
    pub fn cancel(&self, ex: ExecutionId) -> Result<(), ManagerError> {
        self.with_execution(ex, |e| e.run.cancel())
    }

    /// The status of a workflow: its latest execution's, or `Created` if it never ran.
    pub fn get_workflow_status(
        &self,
        workflow: WorkflowId,
    ) -> Result<WorkflowReport, ManagerError> {
        let (last, mut report) = {
            let wfs = self.read_workflows();
            let def = wfs
                .get(&workflow)
                .ok_or(ManagerError::UnknownWorkflow(workflow))?;
            (
                def.executions.last().copied(),
                WorkflowReport {
                    id: workflow,
                    execution: None,
                    name: def.name.clone(),
                    description: def.description.clone(),
                    status: WorkflowStatus::Created,
                    created_at: def.created_at,
                    started_at: None,
                    completed_at: None,
                    duration: None,
                    task_count: def.tasks.len(),
                    results: Vec::new(),
                    error: None,
                },
            )
        };
        if let Some(ex) = last {
            self.fill(ex, &mut report)?;
        }
        Ok(report)
    }

    /// The status of one execution.
    pub fn get_execution_status(&self, ex: ExecutionId) -> Result<WorkflowReport, ManagerError> {
        let workflow = self.with_execution(ex, |e| e.workflow)?;
        let mut report = self.get_workflow_status(workflow)?;
        self.fill(ex, &mut report)?;
        Ok(report)
    }

    fn fill(&self, ex: ExecutionId, out: &mut WorkflowReport) -> Result<(), ManagerError> {
        self.with_execution(ex, |e| {
            let report = e.run.report();
            let finished = e.run.is_finished();
            out.execution = Some(ex);
            out.status = if finished {
                report.status().into()
            } else {
                WorkflowStatus::Running
            };
            out.started_at = Some(report.started_at());
            out.completed_at = finished.then(|| report.completed_at());
            out.duration = Some(if finished {
                report.duration()
            } else {
                report.started_at().elapsed().unwrap_or_default()
            });
            out.results = report.results();
            out.task_count = out.results.len();
            out.error = out
                .results
                .iter()
                .find(|r| r.status == TaskStatus::Failed)
                .map(|r| match &r.error {
                    Some(e) => format!("task `{}` failed: {e}", r.id),
                    None => format!("task `{}` failed", r.id),
                });
        })
    }

    /// A task's current status in an execution, as the engine's state projection (every
    /// event of the execution so far, in order) has it.
    pub fn get_task_status(&self, ex: ExecutionId, task: &str) -> Result<TaskStatus, ManagerError> {
        let run = self.with_execution(ex, |e| e.run.id())?;
        let state = self.inner.projector.flush();
        let status = match state.state().workflow(run) {
            Some(w) => w.task(task).map(|t| t.status()),
            // Not projected (yet, or forgotten): the run's own record.
            None => self.with_execution(ex, |e| e.run.report().task(task).map(|r| r.status))?,
        };
        status.ok_or_else(|| ManagerError::UnknownTask {
            execution: ex,
            task: task.to_string(),
        })
    }

    /// Changes the number of workers while executions go on (see [`Executor::resize`]);
    /// returns the number set.
    pub fn resize(&self, workers: usize) -> usize {
        self.inner.executor.resize(workers)
    }

    /// The engine's state projector: the state of every execution, projected from the
    /// manager's events (snapshots, history, the seed's named projections).
    pub fn projector(&self) -> &EngineProjector {
        &self.inner.projector
    }

    /// A task's output in an execution (`None` until it completed).
    pub fn output(&self, ex: ExecutionId, task: &str) -> Result<Option<Value>, ManagerError> {
        self.with_execution(ex, |e| {
            let h = e.outputs.get(task).copied();
            h.map(|h| e.run.report().output(h).cloned())
        })?
        .ok_or_else(|| ManagerError::UnknownTask {
            execution: ex,
            task: task.to_string(),
        })
    }

    /// Every workflow, oldest first.
    pub fn list_workflows(&self) -> Vec<WorkflowSummary> {
        let wfs = self.read_workflows();
        let exs = self.read_executions();
        wfs.iter()
            .map(|(id, d)| WorkflowSummary {
                id: *id,
                name: d.name.clone(),
                task_count: d.tasks.len(),
                status: d
                    .executions
                    .last()
                    .and_then(|e| exs.get(e))
                    .map_or(WorkflowStatus::Created, Execution::status),
                executions: d.executions.clone(),
            })
            .collect()
    }

    /// Every execution, oldest first.
    pub fn list_executions(&self) -> Vec<ExecutionSummary> {
        self.read_executions()
            .iter()
            .map(|(id, e)| ExecutionSummary {
                id: *id,
                workflow: e.workflow,
                status: e.status(),
                started_at: e.run.report().started_at(),
            })
            .collect()
    }
}

/// Turns task definitions into a graph whose tasks pass JSON values by dependency id.
///
/// Tasks are added in dependency order (Kahn), so that each one's dependencies already have
/// handles. Dependencies that cannot be resolved that way (unknown ids, cycles) are added by
/// name, so that the builder reports them with its usual errors.
fn build_graph(tasks: &[TaskDef], context: Arc<Value>) -> Result<(Graph, Outputs), GraphError> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = tasks
        .iter()
        .map(|t| {
            t.dependencies
                .iter()
                .filter(|d| index.contains_key(d.as_str()))
                .count()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.dependencies {
            if let Some(&j) = index.get(d.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut order: Vec<usize> = Vec::with_capacity(tasks.len());
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &k in &dependents[i] {
            indegree[k] -= 1;
            if indegree[k] == 0 {
                ready.push_back(k);
            }
        }
    }
    let mut done = vec![false; tasks.len()];
    for &i in &order {
        done[i] = true;
    }
    // Tasks left over are on (or behind) a cycle: the builder will report it.
    order.extend((0..tasks.len()).filter(|&i| !done[i]));

    let mut g = Graph::builder();
    let mut handles: Vec<Option<Handle<Value>>> = vec![None; tasks.len()];
    for i in order {
        let t = &tasks[i];
        let mut tb = g.task(&t.id);
        let mut ids: Vec<String> = Vec::new();
        let mut inputs: Vec<crate::graph::Optional<Value>> = Vec::new();
        for d in &t.dependencies {
            match index.get(d.as_str()).and_then(|&j| handles[j]) {
                Some(h) => {
                    ids.push(d.clone());
                    inputs.push(h.optional());
                }
                None => tb = tb.depends_on(d),
            }
        }
        if let Some(n) = &t.name {
            tb = tb.name(n);
        }
        if let Some(d) = &t.description {
            tb = tb.description(d);
        }
        tb = tb.priority(t.priority).trigger(t.trigger);
        if let Some(x) = t.timeout {
            tb = tb.timeout(x);
        }
        if let Some(r) = &t.retry {
            tb = tb.retry(r.clone());
        }
        if let Some(e) = t.estimate {
            tb = tb.estimate(e);
        }
        for (name, n) in &t.uses {
            tb = tb.uses(name, *n);
        }
        if let Some(k) = &t.circuit {
            tb = tb.circuit_breaker(k);
        }
        if let Some(k) = &t.rate_limit {
            tb = tb.rate_limit(k);
        }
        if let Some(c) = &t.meta.creator {
            tb = tb.creator(c);
        }
        for tag in &t.meta.tags {
            tb = tb.tag(tag);
        }
        let ids: Arc<[String]> = ids.into();
        let ctx = context.clone();
        let sync = |f: Arc<task_def::SyncWork>| sync_work(f, ctx.clone(), ids.clone());
        let h = match (&t.work, &t.fallback) {
            (Work::Sync(f), None) => match &t.memo {
                // The context is part of the key: it is an input like the others.
                Some(memo) => {
                    let key_memo = crate::memo::Memo {
                        version: format!("{}\u{0}{}", memo.version, context),
                        ttl: memo.ttl,
                    };
                    tb.run_memo(inputs, key_memo, sync(f.clone()))
                }
                None => tb.run(inputs, sync(f.clone())),
            },
            (Work::Sync(f), Some(g)) => {
                tb.run_with_fallback(inputs, sync(f.clone()), sync(g.clone()))
            }
            (Work::Async(f), Some(g)) => {
                let f = f.clone();
                let (ctx, ids) = (ctx.clone(), ids.clone());
                tb.run_async_with_fallback(
                    inputs,
                    move |cx, values| {
                        let owned = TaskInputs {
                            context: &ctx,
                            ids: &ids,
                            values,
                        }
                        .to_owned();
                        f(cx, owned)
                    },
                    sync(g.clone()),
                )
            }
            (Work::Async(f), None) => {
                let f = f.clone();
                tb.run_async(inputs, move |cx, values| {
                    let owned = TaskInputs {
                        context: &ctx,
                        ids: &ids,
                        values,
                    }
                    .to_owned();
                    f(cx, owned)
                })
            }
        };
        handles[i] = Some(h);
    }
    let graph = g.build()?;
    let outputs = tasks
        .iter()
        .zip(handles)
        .filter_map(|(t, h)| Some((t.id.clone(), h?)))
        .collect();
    Ok((graph, outputs))
}

/// A managed task's sync work (or fallback) as a typed task function.
fn sync_work(
    f: Arc<task_def::SyncWork>,
    ctx: Arc<Value>,
    ids: Arc<[String]>,
) -> impl for<'a> Fn(
    &crate::TaskContext<'_>,
    Vec<Option<&'a Value>>,
) -> Result<Value, crate::TaskError>
       + Send
       + Sync
       + 'static {
    move |cx, values| {
        f(
            cx,
            &TaskInputs {
                context: &ctx,
                ids: &ids,
                values,
            },
        )
    }
}
