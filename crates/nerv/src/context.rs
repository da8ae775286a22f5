//! What a task's work can see and ask while it runs.

use crate::container::{ResolveError, Scope};
use crate::event::{EventData, EventKind, Payload, Progress};
use crate::exec::runner::Runner;
use crate::graph::TaskId;
use nerv_pool::{NodeCx, OnceArena, RunHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The context of one attempt at a task: its identity, its attempt number, and cancellation.
///
/// Sync work that may run long should poll [`TaskContext::is_cancelled`]: it turns true when
/// the run is cancelled (or fails fast) and when the task's timeout has passed.
pub struct TaskContext<'a> {
    pub(crate) ncx: &'a NodeCx<'a, Runner>,
    pub(crate) runner: &'a Runner,
    pub(crate) attempt: u32,
    pub(crate) deadline: Option<(quanta::Instant, Duration)>,
}

impl std::fmt::Debug for TaskContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.task_id())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl<'a> TaskContext<'a> {
    /// The id of the task (for a task of a subgraph: `parent/child`).
    pub fn task_id(&self) -> String {
        self.runner.full_id(self.ncx.node())
    }

    /// The task's index in its graph.
    pub fn index(&self) -> usize {
        self.ncx.node() as usize
    }

    /// The run's id (unique in this process).
    pub fn run_id(&self) -> u64 {
        self.runner.run_id
    }

    /// Which attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the task should stop: the run was cancelled, or its timeout passed.
    pub fn is_cancelled(&self) -> bool {
        self.runner.cancel.is_cancelled() || self.deadline_passed().is_some()
    }

    /// The run's cancellation token, for async work (`token.cancelled().await`).
    pub fn cancellation(&self) -> CancellationToken {
        self.runner.cancel.token.clone()
    }

    /// The ids of the tasks that depend on this one (in its own graph).
    pub fn dependents(&self) -> Vec<&str> {
        let g = &self.runner.graph.0;
        g.dag
            .successors(self.ncx.node())
            .map(|s| g.ids.get(s as usize))
            .collect()
    }

    /// Reports progress (`done` of `total` units, and what it is doing) as a `TaskProgress`
    /// event. Costs one atomic load when nobody listens.
    pub fn progress(&self, done: u64, total: Option<u64>, message: Option<&str>) {
        let node = self.ncx.node();
        self.runner.emit_task(
            node,
            || {
                EventData::TaskProgress(Progress {
                    done,
                    total,
                    message: message.map(str::to_string),
                })
            },
            EventKind::TaskProgress,
        );
    }

    /// An owned handle that reports progress and events for this task, for async work
    /// (whose future outlives the context).
    pub fn reporter(&self) -> Reporter {
        Reporter {
            run: self.ncx.handle(),
            node: self.ncx.node(),
        }
    }

    /// Publishes a user-defined event on the named signal `name`, from this task.
    pub fn emit(&self, name: &str, payload: Payload) {
        if self.runner.wants(EventKind::Custom) {
            let name = name.into();
            self.runner
                .publish_task(self.ncx.node(), EventData::Custom { name, payload });
        }
    }

    /// The shared instance of `T` from the executor's container (a singleton, a config, or
    /// the run's instance of a scoped provider): the seed's "container provides dependencies
    /// for task execution". A missing provider's error names `T` and this task.
    ///
    /// ```
    /// use nerv::{Container, Executor, Graph, Singleton, TaskError};
    ///
    /// struct Greeting(String);
    /// let mut c = Container::builder();
    /// c.add(&Singleton::new(|_| Ok(Greeting("hello".into()))));
    /// let exec = Executor::builder().container(c.build().unwrap()).build();
    ///
    /// let mut g = Graph::builder();
    /// let t = g.task("greet").run((), |ctx, ()| {
    ///     let greeting = ctx.resolve::<Greeting>()?;
    ///     Ok::<_, TaskError>(format!("{}, world", greeting.0))
    /// });
    /// let report = exec.run(&g.build().unwrap());
    /// assert_eq!(report.output(t).map(String::as_str), Some("hello, world"));
    /// ```
    pub fn resolve<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, ResolveError> {
        resolve_in(self.runner, self.ncx.node(), None)
    }

    /// The shared instance of `T` registered under `name` (see [`TaskContext::resolve`]).
    pub fn resolve_named<T: ?Sized + Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Arc<T>, ResolveError> {
        resolve_in(self.runner, self.ncx.node(), Some(name))
    }

    /// A new `T` from the container's factory `A → T`, given `args` (e.g. an agent built for
    /// this task's input). A missing factory's error names `A → T` and this task.
    pub fn create<A: 'static, T: 'static>(&self, args: A) -> Result<T, ResolveError> {
        create_in(self.runner, self.ncx.node(), args)
    }

    /// The run's scope of the executor's container (opened on first use; shared by the
    /// run's tasks and its subgraphs' tasks).
    pub fn scope(&self) -> &Scope {
        self.runner.scope()
    }

    /// How many workers the executor has now.
    pub(crate) fn workers(&self) -> usize {
        self.runner.env.pool.workers()
    }

    /// The executor's memo store.
    pub(crate) fn memo_store(&self) -> &dyn crate::memo::MemoStore {
        &*self.runner.env.memo
    }

    /// Reports a memo lookup (hit or miss) of this task.
    pub(crate) fn memo_looked_up(&self, hit: bool) {
        self.runner.memo_looked_up(self.ncx.node(), hit);
    }

    /// The timeout, if it has passed.
    pub(crate) fn deadline_passed(&self) -> Option<Duration> {
        match self.deadline {
            Some((at, limit)) if self.runner.env.clock.now() >= at => Some(limit),
            _ => None,
        }
    }

    pub(crate) fn arena(&self) -> &'a OnceArena {
        &self.runner.arena
    }

    /// The run's outputs, as this task's inputs read them.
    pub(crate) fn outputs(&self) -> crate::graph::inputs::Outputs<'a> {
        crate::graph::inputs::Outputs::new(&self.runner.arena, self.ncx)
    }

    pub(crate) fn run_handle(&self) -> RunHandle<Runner> {
        self.ncx.handle()
    }

    pub(crate) fn graph_id_of(&self, t: TaskId) -> String {
        self.runner.full_id(t.index() as u32)
    }
}

impl crate::graph::inputs::Done for NodeCx<'_, Runner> {
    fn done(&self, node: u32) -> bool {
        self.state_of(node) == nerv_pool::NodeState::Completed
    }
}

impl crate::graph::inputs::Done for RunHandle<Runner> {
    fn done(&self, node: u32) -> bool {
        self.state(node) == nerv_pool::NodeState::Completed
    }
}

/// Reports a task's progress and events from anywhere (an async task's future, a thread it
/// started). Obtained from [`TaskContext::reporter`].
#[derive(Clone)]
pub struct Reporter {
    run: RunHandle<Runner>,
    node: u32,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("node", &self.node)
            .finish()
    }
}

impl Reporter {
    /// Reports progress as a `TaskProgress` event (see [`TaskContext::progress`]).
    pub fn progress(&self, done: u64, total: Option<u64>, message: Option<&str>) {
        self.run.runner().emit_task(
            self.node,
            || {
                EventData::TaskProgress(Progress {
                    done,
                    total,
                    message: message.map(str::to_string),
                })
            },
            EventKind::TaskProgress,
        );
    }

    /// The shared instance of `T` from the executor's container (see
    /// [`TaskContext::resolve`]), for async work.
    pub fn resolve<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, ResolveError> {
        resolve_in(self.run.runner(), self.node, None)
    }

    /// A new `T` from the container's factory `A → T` (see [`TaskContext::create`]).
    pub fn create<A: 'static, T: 'static>(&self, args: A) -> Result<T, ResolveError> {
        create_in(self.run.runner(), self.node, args)
    }

    /// Publishes a user-defined event on the named signal `name`, from this task.
    pub fn emit(&self, name: &str, payload: Payload) {
        let r = self.run.runner();
        if r.wants(EventKind::Custom) {
            r.publish_task(
                self.node,
                EventData::Custom {
                    name: name.into(),
                    payload,
                },
            );
        }
    }
}

/// Who asks the container, as resolution errors name it: "task `id` in run N".
struct TaskRequester<'r> {
    runner: &'r Runner,
    node: u32,
}

impl std::fmt::Display for TaskRequester<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task `{}` in run {}",
            self.runner.full_id(self.node),
            self.runner.run_id
        )
    }
}

fn resolve_in<T: ?Sized + Send + Sync + 'static>(
    runner: &Runner,
    node: u32,
    name: Option<&str>,
) -> Result<Arc<T>, ResolveError> {
    let who = TaskRequester { runner, node };
    let r = runner.scope().resolver(&who);
    match name {
        Some(n) => r.resolve_named::<T>(n),
        None => r.resolve::<T>(),
    }
}

fn create_in<A: 'static, T: 'static>(
    runner: &Runner,
    node: u32,
    args: A,
) -> Result<T, ResolveError> {
    let who = TaskRequester { runner, node };
    runner.scope().resolver(&who).create::<A, T>(args)
}
