//! nerv-pool: the work-stealing pool and the dependency-counting runtime that run nerv's task
//! graphs. It is the only nerv crate with `unsafe` code; everything it exports is safe to use.
//!
//! - [`Dag`]: a validated, acyclic topology in compressed sparse rows.
//! - [`Pool`]: worker threads with per-band work-stealing deques, an injector and a sleep
//!   protocol without lost wake-ups (`src/SLEEP.md`).
//! - [`Pool::start`] runs a `Dag` with a [`NodeRunner`] that does each node's work, and returns
//!   a [`RunHandle`]: per-node atomic join counters, the first released successor runs inline,
//!   finished nodes are counted in per-worker batches (no shared write per task).
//! - [`OnceArena`]: one allocation per run for every node's typed, write-once output.
//!
//! The hot path of one task: claim (one CAS), run, release each successor (one atomic
//! increment, none when it has a single predecessor), push the ones that became ready. No lock,
//! no allocation, no hashing.

#![warn(missing_docs)]

mod arena;
mod dag;
mod pool;
mod queue;
mod run;
mod sleep;
mod sync;

pub use arena::{ArenaLayout, OnceArena, SlotKey};
pub use dag::{Dag, DagError, Successors, BANDS};
pub use pool::Pool;
pub use run::{
    Inline, NodeCx, NodeRunner, NodeState, NotDeferred, Prepared, RunHandle, Upstream, Verdict,
};
