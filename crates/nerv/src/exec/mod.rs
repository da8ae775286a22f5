//! The executor: runs graphs on a work-stealing pool of worker threads (CPU-bound sync work)
//! and on tokio (async work), and reports every task's result.
//!
//! An [`Executor`] owns (or borrows) its resources: the worker pool, a clock, and a tokio
//! runtime handle — the caller's if one was given, otherwise a small runtime created on first
//! need (a graph of sync tasks without retries never starts one). Many runs may share one
//! executor at once; each is independent ([`Run`]).

pub(crate) mod report;
pub(crate) mod resources;
pub(crate) mod runner;

pub use report::{RunReport, RunStatus, StatusCounts};
pub use resources::{ResourceError, Resources};

use crate::container::Container;
use crate::event::{Event, EventBus, EventData, EventKind, Payload, Source};
use crate::graph::{Graph, Restore, TaskId};
use crate::memo::{InMemoryMemo, MemoStore};
use crate::policy::circuit_breaker::{CircuitBreakerConfig, CircuitBreakers};
use crate::policy::rate_limit::{RateLimit, RateLimits};
use crate::policy::retry::RetryPolicy;
use crate::task::{Priority, TaskStatus};
use nerv_pool::{Pool, RunHandle};
use runner::{Cancel, Runner};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// What a run does when a task fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Skip the failed task's descendants and run everything else (the default).
    #[default]
    Continue,
    /// Cancel the run: tasks not yet started are CANCELLED, running ones see cancellation.
    FailFast,
}

/// Whether a run records each task's start and end time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    /// Record start and end of every task (two clock reads per task, about 30 ns here).
    #[default]
    Tasks,
    /// Record only the run's own start and end (for graphs of very many tiny tasks).
    Off,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Whether per-task timestamps are recorded.
    pub timing: Timing,
    /// What a failure does to the rest of the run.
    pub failure: FailurePolicy,
    /// Retry policy for tasks that have none of their own.
    pub retry: Option<RetryPolicy>,
    /// Timeout for tasks that have none of their own.
    pub timeout: Option<Duration>,
    /// The run's name, as its `WorkflowCreated` event reports it.
    pub name: Option<String>,
    /// The earlier run this run resumes, and what it restores from it.
    pub resume: Option<Resume>,
}

/// What a resumed run continues: the durable key of the earlier run (a journal's run id,
/// reported in the `WorkflowStarted` event so that the journal appends to that run), and the
/// outputs of its completed tasks.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The earlier run's durable key.
    pub key: Arc<str>,
    /// The completed tasks' outputs.
    pub restore: Arc<Restore>,
}

impl RunOptions {
    /// Fail fast: the first failure cancels the run.
    pub fn fail_fast(mut self) -> Self {
        self.failure = FailurePolicy::FailFast;
        self
    }
    /// Keep going after failures (the default).
    pub fn keep_going(mut self) -> Self {
        self.failure = FailurePolicy::Continue;
        self
    }
    /// Default retry policy.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = Some(p);
        self
    }
    /// Default timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Names the run (in its events).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Resumes the earlier run `key` (e.g. a journal's run id): the tasks that `restore`
    /// lists and that are persisted complete at once with their restored outputs, the others
    /// run.
    pub fn resume(mut self, key: impl Into<Arc<str>>, restore: Restore) -> Self {
        self.resume = Some(Resume {
            key: key.into(),
            restore: Arc::new(restore),
        });
        self
    }
    /// Whether to record per-task timestamps.
    pub fn timing(mut self, t: Timing) -> Self {
        self.timing = t;
        self
    }
}

/// The kind of work an executor is sized for (the seed's worker pool configuration table).
/// Async tasks never need extra worker threads: they run on tokio whatever the preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Computation: one worker per core.
    CpuBound,
    /// Blocking IO in sync tasks: four workers per core (waiting threads cost no CPU), and a
    /// tokio runtime with one thread per core for async tasks.
    IoBound,
    /// Both: two workers per core.
    Mixed,
    /// Memory-hungry tasks: one worker per two cores (at least one), so that fewer run at
    /// once.
    MemoryBound,
}

impl Workload {
    /// Worker threads for this workload on `cores` cores.
    pub fn workers(self, cores: usize) -> usize {
        let cores = cores.max(1);
        match self {
            Workload::CpuBound => cores,
            Workload::IoBound => 4 * cores,
            Workload::Mixed => 2 * cores,
            Workload::MemoryBound => (cores / 2).max(1),
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The name of the custom signal on which an executor publishes its circuits' transitions
/// (payload: a [`Transition`](crate::Transition)).
pub const CIRCUIT_SIGNAL: &str = "circuit_breaker";

/// Resources shared by an executor and its runs.
pub(crate) struct Env {
    pub(crate) pool: Pool,
    pub(crate) clock: quanta::Clock,
    pub(crate) bus: Option<EventBus>,
    pub(crate) resources: Resources,
    pub(crate) memo: Arc<dyn MemoStore>,
    /// Where tasks obtain their dependencies; each run opens a scope of it on first use.
    pub(crate) container: Container,
    /// Circuits of the tasks that name a circuit breaker, shared by all runs.
    pub(crate) breakers: CircuitBreakers,
    /// Rate limits of the tasks that name one, shared by all runs.
    pub(crate) rate_limits: RateLimits,
    given_tokio: Option<tokio::runtime::Handle>,
    own_tokio: OnceLock<tokio::runtime::Runtime>,
    io_threads: usize,
}

impl Env {
    /// The tokio handle for async work and timers.
    pub(crate) fn tokio(&self) -> tokio::runtime::Handle {
        if let Some(h) = &self.given_tokio {
            return h.clone();
        }
        self.own_tokio
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.io_threads)
                    .thread_name("nerv-io")
                    .enable_all()
                    .build()
                    .expect("failed to start nerv's tokio runtime")
            })
            .handle()
            .clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A runtime may not be dropped from inside async context; shut it down in the
        // background instead of blocking.
        if let Some(rt) = self.own_tokio.take() {
            rt.shutdown_background();
        }
    }
}

/// Configures an [`Executor`].
#[derive(Debug, Default)]
pub struct ExecutorBuilder {
    workers: Option<usize>,
    tokio: Option<tokio::runtime::Handle>,
    name: Option<String>,
    bus: Option<EventBus>,
    resources: Resources,
    memo: Option<Arc<dyn MemoStore>>,
    io_threads: Option<usize>,
    container: Option<Container>,
    max_workers: Option<usize>,
    breakers: Option<CircuitBreakers>,
    rate_limits: Option<RateLimits>,
}

impl ExecutorBuilder {
    /// Number of worker threads for sync work (default: the available cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }

    /// The most workers [`Executor::resize`] can grow to (default: the larger of `workers`
    /// and the available cores). Threads beyond the active count are started parked.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n.max(1));
        self
    }

    /// Sizes the executor for a kind of work (see [`Workload`]); `workers` and `io_threads`
    /// given explicitly win.
    pub fn preset(mut self, w: Workload) -> Self {
        self.workers.get_or_insert(w.workers(cores()));
        if w == Workload::IoBound {
            self.io_threads.get_or_insert(cores());
        }
        self
    }

    /// Threads of nerv's own tokio runtime for async tasks (default 1; not used when a
    /// runtime handle is given).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = Some(n.max(1));
        self
    }

    /// Runs async work and timers on this tokio runtime instead of nerv's own.
    pub fn tokio_handle(mut self, h: tokio::runtime::Handle) -> Self {
        self.tokio = Some(h);
        self
    }

    /// Uses the tokio runtime the calling code is running in, if any.
    pub fn current_tokio(mut self) -> Self {
        self.tokio = tokio::runtime::Handle::try_current().ok();
        self
    }

    /// Publishes every run's events on `bus` (created, started, each task's transitions,
    /// progress, the end). Without a bus, runs build no events at all.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Defines a named resource limit shared by all runs (e.g. `("db", 2)`: at most two
    /// tasks that use `db` at once; or a memory budget in bytes).
    pub fn resource(self, name: &str, capacity: u64) -> Self {
        self.resources.set(name, capacity);
        self
    }

    /// Where memoized tasks keep their outputs (default: an [`InMemoryMemo`] of the
    /// executor's own).
    pub fn memo_store(mut self, store: Arc<dyn MemoStore>) -> Self {
        self.memo = Some(store);
        self
    }

    /// The container tasks obtain their dependencies from, through
    /// [`TaskContext::resolve`](crate::TaskContext::resolve) and
    /// [`TaskContext::create`](crate::TaskContext::create) (default: an empty one). Each run
    /// opens its own [`Scope`](crate::Scope) of it, shared by the run's tasks and subgraphs,
    /// so scoped providers give one instance per run.
    pub fn container(mut self, container: Container) -> Self {
        self.container = Some(container);
        self
    }

    /// The circuit breakers of tasks that name one
    /// ([`TaskBuilder::circuit_breaker`](crate::TaskBuilder::circuit_breaker)); default: a
    /// registry with [`CircuitBreakerConfig::default`]. Every transition of a circuit is
    /// published on the executor's bus as a [`EventKind::Custom`](crate::EventKind::Custom)
    /// event named [`CIRCUIT_SIGNAL`] whose payload is the [`Transition`](crate::Transition).
    pub fn circuit_breakers(mut self, breakers: CircuitBreakers) -> Self {
        self.breakers = Some(breakers);
        self
    }

    /// The rate limits of tasks that name one
    /// ([`TaskBuilder::rate_limit`](crate::TaskBuilder::rate_limit)), replacing those set so far.
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Limits the starts of tasks that name `key` to `limit` (e.g. 10 per second to one API),
    /// across all runs of the executor.
    pub fn rate_limit(mut self, key: &str, limit: RateLimit) -> Self {
        self.rate_limits
            .get_or_insert_with(RateLimits::new)
            .set_limit(key, limit);
        self
    }

    /// The worker threads' name prefix (default `nerv`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Executor {
        let workers = self.workers.unwrap_or_else(cores);
        let breakers = self
            .breakers
            .unwrap_or_else(|| CircuitBreakers::new(CircuitBreakerConfig::default()));
        if let Some(bus) = &self.bus {
            let bus = bus.clone();
            breakers.on_transition(move |t| {
                if bus.wants(EventKind::Custom) {
                    bus.publish(Event::new(
                        Source::default(),
                        EventData::Custom {
                            name: CIRCUIT_SIGNAL.into(),
                            payload: Payload::new(t.clone()),
                        },
                    ));
                }
            });
        }
        Executor {
            env: Arc::new(Env {
                pool: Pool::with_max(
                    workers,
                    self.max_workers.unwrap_or_else(|| workers.max(cores())),
                    self.name.as_deref().unwrap_or("nerv"),
                ),
                clock: quanta::Clock::new(),
                bus: self.bus,
                resources: self.resources,
                memo: self
                    .memo
                    .unwrap_or_else(|| Arc::new(InMemoryMemo::default())),
                container: self.container.unwrap_or_default(),
                breakers,
                rate_limits: self.rate_limits.unwrap_or_default(),
                given_tokio: self.tokio,
                own_tokio: OnceLock::new(),
                io_threads: self.io_threads.unwrap_or(1),
            }),
        }
    }
}

/// Runs graphs. Cheap to clone (clones share the workers).
#[derive(Clone)]
pub struct Executor {
    env: Arc<Env>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("workers", &self.workers())
            .finish()
    }
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    /// An executor with one worker per available core.
    pub fn new() -> Self {
        ExecutorBuilder::default().build()
    }

    /// Configures an executor.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// The bus runs publish their events on, if one was given.
    pub fn events(&self) -> Option<&EventBus> {
        self.env.bus.as_ref()
    }
    /// The circuit breakers of the executor's tasks (inspect, configure or reset circuits).
    pub fn circuit_breakers(&self) -> &CircuitBreakers {
        &self.env.breakers
    }

    /// The rate limits of the executor's tasks (set or change limits while runs go on).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.env.rate_limits
    }

    /// The container the executor's tasks resolve their dependencies from.
    pub fn container(&self) -> &Container {
        &self.env.container
    }

    /// The store of memoized outputs.
    pub fn memo_store(&self) -> &Arc<dyn MemoStore> {
        &self.env.memo
    }

    /// The executor's named resource limits (change capacities while runs go on).
    pub fn resources(&self) -> &Resources {
        &self.env.resources
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.env.pool.workers()
    }

    /// The most workers [`Executor::resize`] can set.
    pub fn max_workers(&self) -> usize {
        self.env.pool.max_workers()
    }

    /// Changes the number of workers taking sync work while runs go on (between 1 and
    /// [`Executor::max_workers`]); returns the number set. Growing wakes parked workers at
    /// once; a worker beyond a smaller count finishes its current task, then parks, and the
    /// others take its queued tasks.
    pub fn resize(&self, workers: usize) -> usize {
        self.env.pool.set_workers(workers)
    }

    /// Starts running `graph`; returns at once.
    pub fn start(&self, graph: &Graph) -> Run {
        self.start_with(graph, RunOptions::default())
    }

    /// Starts running `graph` with options; returns at once.
    pub fn start_with(&self, graph: &Graph, opts: RunOptions) -> Run {
        self.start_inner(graph, opts, true)
    }

    /// Starts a run; `announce` publishes its `WorkflowCreated` event (the workflow manager
    /// publishes its own when the workflow is defined).
    pub(crate) fn start_inner(&self, graph: &Graph, opts: RunOptions, announce: bool) -> Run {
        let name = opts.name.clone().unwrap_or_default();
        let prepared = self.prepare(graph, opts);
        prepared
            .handle()
            .runner()
            .publish_start(announce.then_some(name.as_str()));
        Run {
            handle: prepared.launch(),
        }
    }

    /// Sets up a run without starting it (see [`Pool::prepare`]): the caller records its
    /// [`Run`] first, then publishes its start and launches it.
    pub(crate) fn prepare(&self, graph: &Graph, opts: RunOptions) -> nerv_pool::Prepared<Runner> {
        let runner = Runner::new(
            graph.clone(),
            self.env.clone(),
            opts,
            Cancel::new(),
            String::new(),
            None,
        );
        self.env.pool.prepare(graph.0.dag.clone(), runner)
    }

    /// Runs `graph` to the end and returns its report (blocks the calling thread).
    pub fn run(&self, graph: &Graph) -> RunReport {
        self.start(graph).wait()
    }

    /// Runs `graph` with options to the end and returns its report.
    pub fn run_with(&self, graph: &Graph, opts: RunOptions) -> RunReport {
        self.start_with(graph, opts).wait()
    }
}

/// A run in progress: wait for it (blocking or async), cancel it, or look at its tasks.
pub struct Run {
    pub(crate) handle: RunHandle<Runner>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("id", &self.id())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl Run {
    /// The run's id (unique in this process).
    pub fn id(&self) -> u64 {
        self.handle.runner().run_id
    }

    /// Cancels the run from any thread: tasks not yet started end CANCELLED, running tasks see
    /// [`TaskContext::is_cancelled`](crate::TaskContext::is_cancelled) (async ones are
    /// dropped), retries waiting for their delay stop waiting.
    pub fn cancel(&self) {
        let r = self.handle.runner();
        r.cancel.cancel();
        self.handle.cancel();
        r.env.resources.cancel_waiters(r.workflow());
    }

    /// Whether every task reached a final status.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// The current status of a task.
    pub fn status(&self, task: impl Into<TaskId>) -> TaskStatus {
        let id = task.into();
        assert!(
            self.handle.runner().graph.owns(id),
            "task id of another graph"
        );
        self.handle.state(id.index() as u32).into()
    }

    /// A report as of now: while the run goes on, tasks not yet finished show as pending or
    /// running, and its status is not final ([`Run::is_finished`] says when it is).
    pub fn report(&self) -> RunReport {
        RunReport::new(self.handle.clone())
    }

    /// Changes a task's priority while the run goes on (the seed's "priority adjustment"). It
    /// takes effect when the task becomes ready: a task already queued or running keeps its
    /// place.
    pub fn set_priority(&self, task: impl Into<TaskId>, priority: Priority) {
        let id = task.into();
        assert!(
            self.handle.runner().graph.owns(id),
            "task id of another graph"
        );
        self.handle.set_band(id.index() as u32, priority as u8);
    }

    /// Blocks until the run is finished; returns its report.
    pub fn wait(self) -> RunReport {
        self.handle.wait();
        RunReport::new(self.handle)
    }

    /// Blocks up to `timeout`; returns whether the run finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.handle.wait_timeout(timeout)
    }
}

/// Awaiting a [`Run`] waits for its report without blocking a thread.
impl Future for Run {
    type Output = RunReport;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RunReport> {
        match self.handle.poll_finished(cx) {
            Poll::Ready(()) => Poll::Ready(RunReport::new(self.handle.clone())),
            Poll::Pending => Poll::Pending,
        }
    }
}
