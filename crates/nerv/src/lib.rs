//! nerv: a parallel workflow engine.
//!
//! Build a graph of typed tasks, validate it once, and run it on every core: each task starts
//! as soon as its last dependency finished, its output flows to its dependents by typed handle,
//! and the run reports every task's status, error, timing and attempts.
//!
//! ```
//! use nerv::{Executor, Graph, TaskError};
//!
//! let mut g = Graph::builder();
//! let load = g.task("load").run((), |_, ()| Ok::<_, TaskError>(vec![1, 2, 3]));
//! let sum = g.task("sum").run(load, |_, v| Ok(v.iter().sum::<i32>()));
//! let double = g.task("double").run(load, |_, v| Ok(v.iter().map(|x| x * 2).collect::<Vec<_>>()));
//! let total = g.task("total").run((sum, double), |_, (s, d)| Ok(*s + d.iter().sum::<i32>()));
//! let graph = g.build().expect("valid graph");
//!
//! let report = Executor::builder().workers(2).build().run(&graph);
//! assert_eq!(report.output(total), Some(&18));
//! ```
//!
//! Modules, one concept each: `graph` (building and validating), `plan` (levels and critical
//! path), `exec` (the executor, runs and reports), `policy` (retries), `dynamic` (subgraphs
//! added at run time), `context` (what a running task sees), `task` (the task model).

#![forbid(unsafe_code)]

mod clock;
mod container;
mod context;
mod dynamic;
mod event;
mod exec;
mod graph;
mod manager;
mod memo;
mod plan;
mod policy;
mod state;
mod task;

pub use clock::{Clock, MockClock, Sleep, SystemClock, Timestamp};
pub use container::{
    BoxError, Config, ConfigBuilder, ConfigError, ConfigOrigin, Container, ContainerBuilder,
    Factory, Register, RegisterError, Replacement, Resolve, ResolveError, Resolver, Scope, Scoped,
    Singleton,
};
pub use context::{Reporter, TaskContext};
pub use dynamic::Subgraph;
pub use event::{
    Event, EventBus, EventBusBuilder, EventData, EventFilter, EventKind, EventStream, Lagged,
    MuteGuard, Payload, Progress, Signal, Source, SubscribeBuilder, Subscription, TaskRef,
};
pub use exec::{
    Executor, ExecutorBuilder, FailurePolicy, ResourceError, Resources, Resume, Run, RunOptions,
    RunReport, RunStatus, StatusCounts, Timing, Workload, CIRCUIT_SIGNAL,
};
pub use graph::{
    BatchItems, Branch, Gather, Graph, GraphBuilder, GraphError, Handle, Inputs, Optional, Outputs,
    Restore, TaskBuilder, TaskId, TaskInfo, TriggerRule, UnknownTriggerRule,
};
pub use manager::{
    ExecutionId, ExecutionSummary, ManagerError, OwnedInputs, TaskDef, TaskInputs, WorkflowId,
    WorkflowManager, WorkflowManagerBuilder, WorkflowReport, WorkflowStatus, WorkflowSummary,
};
pub use memo::{InMemoryMemo, Memo, MemoEntry, MemoStore};
pub use plan::{Plan, Planner, SearchedOrder};
pub use policy::circuit_breaker::{
    CallOutcome, CircuitBreakerConfig, CircuitBreakers, CircuitOpen, CircuitPermit, CircuitState,
    Transition, TransitionCause,
};
pub use policy::rate_limit::{RateLimit, RateLimited, RateLimits, Reservation};
pub use policy::retry::RetryPolicy;
pub use state::{
    EngineProjector, EngineProjectorBuilder, EngineState, Freeze, ProjectionError, Snapshot,
    StateProjector, TaskState, Thaw, WorkflowState,
};
pub use task::{ErrorKind, Priority, TaskError, TaskMetadata, TaskResult, TaskStatus};
pub use tokio_util::sync::CancellationToken;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
