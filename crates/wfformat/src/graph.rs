//! A nerv [`Graph`] that replays a [`Workflow`]: each task is a sync task that sleeps its
//! runtime times a scale on a worker, so `P` workers model `P` processors.
//!
//! What each [`Order`] gives the scheduler:
//! - [`Order::Ranked`]: every task carries `.estimate(runtime × scale)`, so nerv's release
//!   order (priority, then upward rank) is the critical-path-first list order; and tasks are
//!   added by decreasing upward rank (ties in file order), so the roots, which nerv queues in
//!   insertion order, are queued best first too. The default.
//! - [`Order::Estimated`]: estimates, tasks added in file order (roots queued in file order).
//! - [`Order::Fcfs`]: the baseline. No estimates (nerv then counts every task as one unit, so
//!   its successor order is by remaining chain length in tasks, not time) and file order: no
//!   runtime information reaches the scheduler.
//! - [`Order::Banded`]: ranked, with rank quartiles as priorities.
//! - [`Order::Searched`]: ranked, and each task's order key from a search over simulated list
//!   schedules ([`search_order`](crate::search_order)).

use crate::model::Workflow;
use nerv::{Graph, GraphError, Priority, TaskError};
use std::time::Duration;

/// How the replay graph presents the trace to nerv's scheduler (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Estimates, and tasks added by decreasing upward rank.
    #[default]
    Ranked,
    /// Estimates, tasks added in file order.
    Estimated,
    /// No estimates, tasks added in file order (the first-come-first-served baseline).
    Fcfs,
    /// [`Order::Ranked`], plus a priority from the task's upward rank relative to the
    /// largest: `critical` from 3/4 of it, `high` from 1/2, `medium` from 1/4, else `low`.
    /// Priorities are nerv's only order that holds across workers (each band has its own
    /// queues, searched highest first by every worker), so this approximates a global
    /// critical-path-first queue with four buckets. A workaround, not a default: it overrides
    /// user priorities, which a trace does not have.
    Banded,
    /// [`Order::Ranked`], with each task's place in the ready order found by
    /// [`search_order`](crate::search_order) for `workers` processors
    /// ([`default_tries`](crate::default_tries)) and given to nerv as its order key: the best
    /// of many simulated list schedules, never worse in simulation than critical-path-first.
    Searched {
        /// The processors the order is searched for (the executor's workers).
        workers: usize,
    },
}

impl Order {
    /// A short name (`ranked`, `estimated`, `fcfs`, `banded`, `searched`).
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Ranked => "ranked",
            Order::Estimated => "estimated",
            Order::Fcfs => "fcfs",
            Order::Banded => "banded",
            Order::Searched { .. } => "searched",
        }
    }
}

/// Options of [`Workflow::to_graph`].
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOptions {
    /// Each task sleeps `runtime × scale` (default 1: real time).
    pub scale: f64,
    /// What the scheduler is told (default [`Order::Ranked`]).
    pub order: Order,
    /// With `Some(limit)`, each task with a measured memory holds
    /// `.uses("memory", min(bytes, limit))` while it runs; run the graph on an executor with
    /// `ExecutorBuilder::resource("memory", limit)` (a task larger than the whole budget is
    /// clamped to it, so it runs alone instead of failing). `None`: memory is ignored.
    pub memory_limit: Option<u64>,
    /// Whether tasks sleep (default true); without, they return at once (for planning).
    pub sleep: bool,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            scale: 1.0,
            order: Order::Ranked,
            memory_limit: None,
            sleep: true,
        }
    }
}

impl GraphOptions {
    /// Default options with `scale`.
    pub fn scaled(scale: f64) -> Self {
        GraphOptions {
            scale,
            ..GraphOptions::default()
        }
    }

    /// Sets the order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Sets the memory budget (see [`GraphOptions::memory_limit`]).
    pub fn memory_limit(mut self, limit: u64) -> Self {
        self.memory_limit = Some(limit);
        self
    }

    /// Makes the tasks return at once instead of sleeping.
    pub fn without_sleep(mut self) -> Self {
        self.sleep = false;
        self
    }
}

/// The name of the resource that memory-aware replays use.
pub const MEMORY_RESOURCE: &str = "memory";

impl Workflow {
    /// The order in which tasks are added to the graph for `order`: positions by decreasing
    /// upward rank at `scale` (ties in file order) for [`Order::Ranked`], file order otherwise.
    pub fn insertion_order(&self, order: Order, scale: f64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        if matches!(
            order,
            Order::Ranked | Order::Banded | Order::Searched { .. }
        ) {
            let rank = self.upward_ranks(scale);
            // A parent's rank is at least its child's; on ties (zero runtimes) keep a
            // topological order by sorting on topological position second.
            let mut topo_pos = vec![0usize; self.len()];
            for (p, &i) in self.topological_order().iter().enumerate() {
                topo_pos[i] = p;
            }
            idx.sort_by_key(|&i| (std::cmp::Reverse(rank[i]), topo_pos[i]));
        }
        idx
    }

    /// Builds the replay graph (see the module docs): task ids are the trace's ids, each task
    /// waits for its parents (by id) and its output is `()`.
    pub fn to_graph(&self, opts: &GraphOptions) -> Result<Graph, GraphError> {
        let keys = match opts.order {
            Order::Searched { workers } => {
                crate::search_order(self, opts.scale, workers, crate::default_tries(self)).keys
            }
            _ => Vec::new(),
        };
        self.to_graph_keyed(opts, &keys)
    }

    /// [`to_graph`](Self::to_graph), with task `i`'s order key `keys[i]` (none if `keys` is
    /// empty): for a caller that searched the order already.
    pub(crate) fn to_graph_keyed(
        &self,
        opts: &GraphOptions,
        keys: &[u64],
    ) -> Result<Graph, GraphError> {
        let mut g = Graph::builder();
        g.reserve(self.len(), self.edge_count());
        let ranks = if opts.order == Order::Banded {
            self.upward_ranks(opts.scale)
        } else {
            Vec::new()
        };
        let top = ranks
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64();
        for i in self.insertion_order(opts.order, opts.scale) {
            let t = &self.tasks()[i];
            let d = t.scaled_runtime(opts.scale);
            let mut b = g.task(&t.id);
            if t.name != t.id {
                b = b.name(&t.name);
            }
            if opts.order != Order::Fcfs {
                b = b.estimate(d);
            }
            if opts.order == Order::Banded && top > 0.0 {
                let q = ranks[i].as_secs_f64() / top;
                b = b.priority(match q {
                    q if q >= 0.75 => Priority::Critical,
                    q if q >= 0.5 => Priority::High,
                    q if q >= 0.25 => Priority::Medium,
                    _ => Priority::Low,
                });
            }
            if let Some(&k) = keys.get(i) {
                b = b.order_key(k);
            }
            if let (Some(limit), Some(bytes)) = (opts.memory_limit, t.memory_bytes) {
                if bytes > 0 {
                    b = b.uses(MEMORY_RESOURCE, bytes.min(limit));
                }
            }
            for p in &t.parents {
                b = b.depends_on(p);
            }
            let sleep = opts.sleep;
            b.run((), move |_, ()| {
                if sleep && d > Duration::ZERO {
                    std::thread::sleep(d);
                }
                Ok::<(), TaskError>(())
            });
        }
        g.build()
    }
}
