//! Dynamic graphs: a running task adds a subgraph to its own run.
//!
//! A task made with [`TaskBuilder::run_dynamic`](crate::TaskBuilder::run_dynamic) returns a
//! [`Subgraph`]: a [`GraphBuilder`] and the handle of the task whose value becomes the dynamic
//! task's output. The engine validates the subgraph like any graph, runs it in the same run on
//! the same workers (its tasks appear in the report as `parent/child`), and completes the
//! dynamic task when every subgraph task completed — or fails it, naming the first subgraph
//! task that did not. The dynamic task's dependents wait for all of it: this is how a fan-out
//! over a list known only at run time is followed by a fan-in.

use crate::graph::{GraphBuilder, Handle};
use nerv_pool::{OnceArena, SlotKey};

/// A graph built by a running task, with the task whose value is the result.
pub struct Subgraph<T> {
    builder: GraphBuilder,
    output: Handle<T>,
}

impl<T> std::fmt::Debug for Subgraph<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subgraph")
            .field("builder", &self.builder)
            .field("output", &self.output)
            .finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Subgraph<T> {
    /// A subgraph whose result is the value of `output` (a task of `builder`).
    pub fn new(builder: GraphBuilder, output: Handle<T>) -> Self {
        Subgraph { builder, output }
    }

    pub(crate) fn into_child(self, parent_out: SlotKey<T>) -> ChildGraph {
        let out = self.output;
        ChildGraph {
            builder: self.builder,
            output: out.id(),
            // Called once every task of the subgraph completed: a unit output (never written,
            // see `graph::inputs::set_output`) is there.
            transfer: Box::new(move |child: &OnceArena, parent: &OnceArena| {
                if crate::graph::inputs::is_unit::<T>() {
                    return true;
                }
                match child.get(out.slot) {
                    Some(v) => parent.set(parent_out, v.clone()).is_ok(),
                    None => false,
                }
            }),
        }
    }
}

/// Moves a subgraph's result into its parent's output slot; false if it has none.
pub(crate) type Transfer = Box<dyn Fn(&OnceArena, &OnceArena) -> bool + Send + Sync>;

/// A subgraph on its way to being run.
pub(crate) struct ChildGraph {
    pub(crate) builder: GraphBuilder,
    pub(crate) output: crate::graph::TaskId,
    pub(crate) transfer: Transfer,
}
