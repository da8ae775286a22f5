//! Distributed nerv runs on PostgreSQL: the queue, leases, fencing, events and the worker loop.
//!
//! PostgreSQL is the only moving part. A submitter stores a workflow as rows ([`Engine::submit`]);
//! any number of worker processes on any machines ([`Worker`]) claim ready tasks with
//! `FOR UPDATE SKIP LOCKED`, heartbeat their leases, and record results in the transaction that
//! also makes successors ready. LISTEN/NOTIFY wakes workers and watchers; the `events` table is
//! the source of truth.
//!
//! # Invariants
//! 1. Every task state change happens in a PostgreSQL transaction together with its event row;
//!    nothing is held only in a worker's memory except attempts in flight.
//! 2. A claim increments the task's `attempt`; a completion is applied only when its
//!    `(attempt, lease_owner)` is still current and the task is `running` (fencing). A worker
//!    presumed dead can therefore never apply a late result.
//! 3. A lease not renewed within its length is reclaimed by any worker, and the retry policy
//!    decides between another attempt and failure.
//! 4. Resource amounts (`uses`) are checked and taken under row locks in the claim transaction
//!    and given back in the completing one, so limits hold across all workers.
//! 5. A run is finished exactly once, when its last task reaches a final state, without any
//!    completion writing the run's row (per-worker `run_counts`, then a conditional finalize
//!    after each commit; see the `queue` module).
//! 6. Memoized tasks (functions registered with [`WorkerBuilder::register_memo`], commands
//!    submitted with a [`Cache`]) share one cache per schema across every worker and run: a hit
//!    completes the task without running it, a success stores its entry (the `memo` module).
//!
//! The protocol, step by step, is in the `queue` module's docs and in `README.md` beside this
//! crate.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), nerv_postgres::Error> {
//! use nerv_postgres::{Engine, TaskSpec, Worker, Workflow};
//! use tokio_util::sync::CancellationToken;
//!
//! let url = "postgres://postgres@127.0.0.1:5432/test";
//! let engine = Engine::connect(url).await?;
//! let run = engine
//!     .submit(&Workflow::new("demo")
//!         .task(TaskSpec::shell("fetch", "echo fetched"))
//!         .task(TaskSpec::function("sum", "add", serde_json::json!([1, 2])).after(["fetch"])))
//!     .await?;
//! let worker = Worker::builder(url)
//!     .concurrency(4)
//!     .register("add", |_ctx, input: serde_json::Value| async move {
//!         let sum: i64 = input.as_array().into_iter().flatten().filter_map(|v| v.as_i64()).sum();
//!         Ok::<_, String>(serde_json::json!(sum))
//!     })
//!     .build()?;
//! let stop = CancellationToken::new();
//! let handle = tokio::spawn({ let w = worker.clone(); let s = stop.clone(); async move { w.run(s).await } });
//! let status = engine.wait(run).await?;
//! println!("{:?}", status.run.state);
//! stop.cancel();
//! let _ = handle.await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod attempt;
mod conn;
mod engine;
mod error;
mod finish;
mod memo;
mod model;
mod queue;
mod schema;
mod worker;

pub use conn::ConnectOptions;
pub use engine::{Engine, Lease, Watch};
pub use error::{Error, Result};
pub use memo::{
    file_digest, short_hex, Cache, CommandKey, KeyCommand, Memo, MemoEntry, KEY_VERSION,
};
pub use model::{
    Event, Priority, Retry, RunId, RunState, RunStatus, RunSummary, TaskSpec, TaskState,
    TaskStatus, Work, Workflow,
};
pub use schema::SCHEMA_VERSION;

/// Creates `opts`' schema at `version` (not the newest): for tests of upgrades from older
/// schemas. Returns the version in force.
#[doc(hidden)]
pub async fn migrate_schema_to(opts: &ConnectOptions, version: i32) -> Result<i32> {
    let mut client = opts.connect().await?;
    schema::migrate_to(opts, &mut client, version).await
}
pub use worker::{IdempotencyKey, TaskContext, Worker, WorkerBuilder, WorkerStats};
