//! WfCommons WfFormat traces for nerv: read a trace, replay it on nerv's executor, export it as
//! a nerv workflow file, and measure how close a replay comes to the lower bound.
//!
//! - [`parse_file`] / [`parse_str`]: WfFormat JSON (schema 1.4 to 1.6) → a validated
//!   [`Workflow`] of [`Task`]s (id, name, parents, runtime, memory, cores). Errors name the
//!   file and the task ([`Error`], [`ErrorKind`]).
//! - [`Workflow::to_graph`]: a nerv [`Graph`](nerv::Graph) whose tasks sleep `runtime × scale`,
//!   with estimates, dependencies by id and optional memory use ([`GraphOptions`], [`Order`]).
//! - [`Workflow::to_toml`]: the workflow file of `nerv import` ([`ExportOptions`]).
//! - [`replay`]: makespan on `P` workers against `max(critical path, work / P)`, for nerv's
//!   order and a first-come-first-served baseline ([`ReplayOptions`], [`Replay`]).
//! - [`simulate`]: the makespan of an ideal, overhead-free list scheduler (critical path first,
//!   or FCFS), for the plan's estimate next to the bound.
//! - [`search_order`]: a better list order than critical path first, found by simulating many
//!   ([`Order::Searched`]; its keys go to nerv as `TaskBuilder::order_key`).
//! - [`interval_lower_bound`], [`pigeonhole_lower_bound`]: lower bounds tighter than
//!   `max(critical path, work / P)`, which say when no schedule can reach a target.
//!
//! ```
//! use nerv_wfformat::{parse_str, replay, ReplayOptions};
//!
//! let json = r#"{"name": "tiny", "schemaVersion": "1.5", "workflow": {
//!   "specification": {"tasks": [
//!     {"id": "a", "name": "a", "parents": [], "children": ["b"]},
//!     {"id": "b", "name": "b", "parents": ["a"], "children": []}]},
//!   "execution": {"makespanInSeconds": 3, "tasks": [
//!     {"id": "a", "runtimeInSeconds": 1.0}, {"id": "b", "runtimeInSeconds": 2.0}]}}}"#;
//! let wf = parse_str(json, "tiny.json").unwrap();
//! assert_eq!(wf.len(), 2);
//! let r = replay(&wf, &ReplayOptions { workers: 2, scale: 0.001, ..Default::default() }).unwrap();
//! assert_eq!(r.nerv.completed, 2);
//! assert_eq!(r.bounds.lower_bound.as_millis(), 3);
//! ```

#![forbid(unsafe_code)]

mod error;
mod export;
mod graph;
mod model;
mod parse;
mod replay;
mod simulate;

pub use error::{Error, ErrorKind};
pub use export::{format_estimate, format_seconds, ExportOptions};
pub use graph::{GraphOptions, Order, MEMORY_RESOURCE};
pub use model::{scaled, SchemaVersion, Task, Workflow};
pub use parse::{parse_file, parse_str};
pub use replay::{
    bounds, measure, replay, scale_for, Bounds, Measurement, Replay, ReplayOptions, ReplayRecord,
    TARGET_FACTOR, TARGET_SLACK,
};
pub use simulate::{
    default_tries, interval_lower_bound, pigeonhole_lower_bound, search_order, simulate, Policy,
    SearchedOrder,
};
