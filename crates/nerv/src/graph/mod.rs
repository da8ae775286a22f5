//! Task graphs: build one with a [`GraphBuilder`], get a [`Graph`] that is valid by
//! construction.
//!
//! Invariants of a [`Graph`]: ids are unique and non-empty; every dependency names a task of
//! the graph; there is no self-dependency and no cycle. Tasks are numbered densely in insertion
//! order; a [`Handle<T>`] is that number plus the typed slot of the task's output, and can only
//! be used with the graph (and runs of the graph) whose builder made it.
//!
//! Building: `task(id)` starts a [`TaskBuilder`]; options (priority, timeout, retries, ordering
//! dependencies, dependencies by id, metadata) come next; `run`, `run_async` or `run_dynamic`
//! gives the work and its typed inputs and returns the handle. Problems found while adding
//! tasks are reported by [`GraphBuilder::build`], which also resolves ids, rejects duplicates
//! and cycles (with the whole cycle path), orders each task's successors by priority and
//! critical path, and lays out the outputs.

mod batch;
mod body;
pub(crate) mod codec;
mod error;
mod flow;
pub(crate) mod inputs;

pub use batch::BatchItems;
pub(crate) use body::{Bodies, Started};
use body::{Body, BodyChunk, Chunk};
pub use codec::Restore;
pub use error::GraphError;
pub use flow::{Branch, TriggerRule, UnknownTriggerRule};
pub use inputs::{Gather, Inputs, Optional, Outputs};

use crate::context::TaskContext;
use crate::dynamic::Subgraph;
use crate::policy::retry::RetryPolicy;
use crate::task::{Priority, TaskError, TaskMetadata};
use nerv_pool::{ArenaLayout, Dag, DagError, SlotKey};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An untyped reference to a task of one graph (its dense index plus the graph's identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    graph: u32,
    index: u32,
}

impl TaskId {
    /// The task's position in its graph (insertion order).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({}#{})", self.graph, self.index)
    }
}

/// A typed reference to a task whose output is a `T`: pass it as an input to dependent tasks,
/// and read the value from a run's report.
pub struct Handle<T> {
    pub(crate) slot: SlotKey<T>,
    pub(crate) graph: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Handle<T> {}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({}#{})", self.graph, self.slot.index())
    }
}

impl<T> Handle<T> {
    /// This input, read as `Option<&T>`: `None` when its task did not complete (for tasks
    /// whose [`TriggerRule`] lets them run after a failure).
    pub fn optional(self) -> Optional<T> {
        Optional(self)
    }

    /// The untyped id of the task.
    pub fn id(&self) -> TaskId {
        TaskId {
            graph: self.graph,
            index: self.slot.index(),
        }
    }
}

impl<T> From<Handle<T>> for TaskId {
    fn from(h: Handle<T>) -> TaskId {
        h.id()
    }
}

impl<T> From<&Handle<T>> for TaskId {
    fn from(h: &Handle<T>) -> TaskId {
        h.id()
    }
}

/// Task ids of a graph, stored in one buffer (a `String` per task would cost ~40 bytes).
#[derive(Debug, Default)]
pub(crate) struct IdTable {
    buf: String,
    ends: Vec<u32>,
}

impl IdTable {
    fn push(&mut self, id: &str) {
        self.buf.push_str(id);
        self.ends
            .push(u32::try_from(self.buf.len()).expect("task ids exceed 4 GiB"));
    }
    pub(crate) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }
    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Options of a task that most tasks do not set, boxed so that a plain task stays small.
#[derive(Debug, Default, Clone)]
pub(crate) struct Extra {
    pub(crate) priority: Priority,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) estimate: Option<Duration>,
    /// Its place in a ranked graph's ready order, if set (see `TaskBuilder::order_key`).
    pub(crate) order_key: Option<u64>,
    pub(crate) meta: TaskMetadata,
    /// Named resources the task holds while it runs.
    pub(crate) uses: Option<crate::exec::resources::Uses>,
    /// Whether the body has a fallback.
    pub(crate) fallback: bool,
    /// When the task runs, given how its dependencies ended.
    pub(crate) trigger: flow::TriggerRule,
    /// For a branch task: where its choice is stored.
    pub(crate) branch: Option<SlotKey<Branch>>,
    /// Whether a dependency is a branch task (set by `build`).
    pub(crate) after_branch: bool,
    /// The circuit breaker the task's attempts pass through (its task kind).
    pub(crate) circuit: Option<Arc<str>>,
    /// The rate limit each attempt's start takes a permit from.
    pub(crate) rate_limit: Option<Arc<str>>,
}

impl Extra {
    /// Whether the task needs its dependencies' outcomes looked at one by one (a trigger
    /// rule other than the default, or a branch upstream).
    #[inline]
    pub(crate) fn by_rule(&self) -> bool {
        self.trigger != flow::TriggerRule::AllSuccess || self.after_branch
    }
}

/// One task as stored in a graph: 16 bytes (its body sits in its type's chunk), plus its
/// options only if it has any.
pub(crate) struct Node {
    pub(crate) chunk: u32,
    pub(crate) index: u32,
    pub(crate) extra: Option<Box<Extra>>,
}

const _: () = assert!(std::mem::size_of::<Node>() == 16);

impl Node {
    pub(crate) fn priority(&self) -> Priority {
        self.extra.as_ref().map_or(Priority::Medium, |e| e.priority)
    }
}

/// The tasks an input set reads from.
fn sources<I: Inputs>(inputs: &I) -> Vec<TaskId> {
    let mut srcs = Vec::new();
    inputs.each_source(&mut |t| srcs.push(t));
    srcs
}

/// Builds a [`Graph`]. See the module documentation for the rules.
pub struct GraphBuilder {
    layout: ArenaLayout,
    nodes: Vec<Node>,
    chunks: Vec<Box<dyn BodyChunk>>,
    /// Chunk index by body type (the last one used is checked first: no hashing in loops).
    chunk_of: std::collections::HashMap<std::any::TypeId, u32>,
    last_chunk: Option<(std::any::TypeId, u32)>,
    ids: IdTable,
    edges: Vec<(u32, u32)>,
    named: Vec<(u32, Box<str>)>,
    problems: Vec<GraphError>,
    created: SystemTime,
    graph: u32,
    /// Codecs of the persisted tasks.
    codecs: Vec<(u32, Arc<dyn codec::Codec>)>,
    /// Workers to search a ready order for at build ([`GraphBuilder::search_order`]).
    search: Option<usize>,
}

impl Default for GraphBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GraphBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphBuilder")
            .field("tasks", &self.nodes.len())
            .field("edges", &self.edges.len())
            .finish()
    }
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        static NEXT_GRAPH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        GraphBuilder {
            layout: ArenaLayout::new(),
            nodes: Vec::new(),
            chunks: Vec::new(),
            chunk_of: Default::default(),
            last_chunk: None,
            ids: IdTable::default(),
            edges: Vec::new(),
            named: Vec::new(),
            problems: Vec::new(),
            created: SystemTime::now(),
            graph: NEXT_GRAPH.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            codecs: Vec::new(),
            search: None,
        }
    }

    /// Orders ready tasks by the best of many list schedules on `workers` workers, simulated
    /// from the tasks' estimates when the graph is built
    /// ([`Plan::search_order`](crate::Plan::search_order)): each task gets the
    /// [`order_key`](TaskBuilder::order_key) the search found. Priorities still come first. Worth it for coarse tasks of known durations where critical-path-first leaves
    /// workers idle (it is never worse in simulation). Nothing is searched if no task has an
    /// estimate, or if some task has an order key of its own. Costs
    /// [`Plan::default_tries`](crate::Plan::default_tries) simulations at build: 0.1-0.3 s up
    /// to some 300 000 tasks and edges, proportionally more beyond.
    pub fn search_order(&mut self, workers: usize) {
        self.search = Some(workers.max(1));
    }

    /// Marks the task of `h` as persisted: its output is serialized (MessagePack) into its
    /// `TaskCompleted` event for journals, and a resumed run restores it from a
    /// [`Restore`] instead of running the task again. Unmarked tasks run again on resume.
    pub fn persist<T>(&mut self, h: Handle<T>) -> Handle<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        if h.graph != self.graph {
            self.problems.push(GraphError::ForeignHandle {
                task: "(persist)".to_string(),
                handle: format!("{}#{}", h.graph, h.id().index()),
            });
            return h;
        }
        let node = h.id().index() as u32;
        let codec: Arc<dyn codec::Codec> = Arc::new(codec::MsgPack {
            slot: h.slot,
            _t: PhantomData,
        });
        match self.codecs.iter_mut().find(|(n, _)| *n == node) {
            Some(slot) => slot.1 = codec,
            None => self.codecs.push((node, codec)),
        }
        h
    }

    /// Reserves room for `tasks` more tasks and `edges` more dependencies.
    pub fn reserve(&mut self, tasks: usize, edges: usize) {
        self.nodes.reserve(tasks);
        self.ids.ends.reserve(tasks);
        self.edges.reserve(edges);
    }

    /// Number of tasks added so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no task was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts adding a task with the given id (unique in the graph).
    pub fn task(&mut self, id: impl AsRef<str>) -> TaskBuilder<'_> {
        TaskBuilder {
            g: self,
            id: Some(id.as_ref().into()),
            extra: None,
            after: Vec::new(),
            named: Vec::new(),
        }
    }

    /// Adds an ordering-only dependency: `task` starts after `dependency` finished.
    pub fn add_dependency(&mut self, task: impl Into<TaskId>, dependency: impl Into<TaskId>) {
        let (t, d) = (task.into(), dependency.into());
        let tn = self.check_id(t, None);
        let dn = self.check_id(d, tn);
        if let (Some(t), Some(d)) = (tn, dn) {
            self.edges.push((d, t));
        }
    }

    /// Adds a dependency by id, resolved by `build`: `task` starts after the task named
    /// `dependency` finished.
    pub fn add_dependency_by_id(&mut self, task: impl Into<TaskId>, dependency: &str) {
        if let Some(t) = self.check_id(task.into(), None) {
            self.named.push((t, dependency.into()));
        }
    }

    /// The id of a task added earlier, by its id string (a linear scan: meant for tools, not
    /// for loops).
    pub fn find(&self, id: &str) -> Option<TaskId> {
        (0..self.ids.len())
            .find(|&i| self.ids.get(i) == id)
            .map(|i| TaskId {
                graph: self.graph,
                index: i as u32,
            })
    }

    fn check_id(&mut self, id: TaskId, user: Option<u32>) -> Option<u32> {
        if id.graph == self.graph && (id.index as usize) < self.nodes.len() {
            Some(id.index)
        } else {
            let task = user
                .map(|u| self.ids.get(u as usize).to_string())
                .unwrap_or_else(|| format!("#{}", self.nodes.len()));
            self.problems.push(GraphError::ForeignHandle {
                task,
                handle: format!("{}#{}", id.graph, id.index),
            });
            None
        }
    }

    /// Stores a body in the chunk of its type; returns (chunk, index in chunk).
    fn store_body<B: Body>(&mut self, body: B) -> (u32, u32) {
        let ty = std::any::TypeId::of::<B>();
        let chunk = match self.last_chunk {
            Some((t, c)) if t == ty => c,
            _ => {
                let next = self.chunks.len() as u32;
                let c = *self.chunk_of.entry(ty).or_insert(next);
                if c == next {
                    self.chunks.push(Box::new(Chunk::<B>(Vec::new())));
                }
                self.last_chunk = Some((ty, c));
                c
            }
        };
        let bodies = &mut self.chunks[chunk as usize]
            .as_any_mut()
            .downcast_mut::<Chunk<B>>()
            .expect("chunk of this body type")
            .0;
        bodies.push(body);
        (chunk, bodies.len() as u32 - 1)
    }

    fn add<T: Send + Sync + 'static, B: Body>(
        &mut self,
        tb: TaskSpec,
        mut deps: Vec<TaskId>,
        make: impl FnOnce(SlotKey<T>) -> B,
    ) -> Handle<T> {
        let index = self.nodes.len() as u32;
        let id = tb.id;
        if id.is_empty() {
            self.problems.push(GraphError::EmptyId {
                position: index as usize,
            });
        }
        self.ids.push(&id);
        let slot = self.layout.push::<T>();
        debug_assert_eq!(slot.index(), index);
        let (chunk, at) = self.store_body(make(slot));
        self.nodes.push(Node {
            chunk,
            index: at,
            extra: tb.extra.map(|mut e| {
                e.meta.created_at.get_or_insert(self.created);
                e
            }),
        });
        deps.extend(tb.after);
        for d in deps {
            if let Some(d) = self.check_id(d, Some(index)) {
                self.edges.push((d, index));
            }
        }
        for n in tb.named {
            self.named.push((index, n));
        }
        Handle {
            slot,
            graph: self.graph,
            _t: PhantomData,
        }
    }

    /// Validates and freezes the graph.
    pub fn build(self) -> Result<Graph, GraphError> {
        let GraphBuilder {
            layout,
            nodes,
            mut chunks,
            ids,
            mut edges,
            named,
            mut problems,
            created,
            graph,
            codecs,
            search,
            ..
        } = self;
        if let Some(p) = problems.drain(..).next() {
            return Err(p);
        }
        let n = nodes.len();
        if u32::try_from(n).is_err() {
            return Err(GraphError::TooLarge(format!("{n} tasks")));
        }
        // Unique ids: sort positions by id, compare neighbours.
        let mut by_id: Vec<u32> = (0..n as u32).collect();
        by_id.sort_unstable_by(|&a, &b| {
            ids.get(a as usize).cmp(ids.get(b as usize)).then(a.cmp(&b))
        });
        for w in by_id.windows(2) {
            if ids.get(w[0] as usize) == ids.get(w[1] as usize) {
                return Err(GraphError::DuplicateId {
                    id: ids.get(w[0] as usize).to_string(),
                    first: w[0] as usize,
                    second: w[1] as usize,
                });
            }
        }
        for (task, dep) in named {
            let found = by_id
                .binary_search_by(|&i| ids.get(i as usize).cmp(&dep))
                .map(|p| by_id[p]);
            match found {
                Ok(d) => edges.push((d, task)),
                Err(_) => {
                    return Err(GraphError::UnknownDependency {
                        task: ids.get(task as usize).to_string(),
                        dependency: dep.into(),
                    })
                }
            }
        }
        let mut dag = match Dag::new(n, &edges) {
            Ok(d) => d,
            Err(DagError::SelfLoop(t)) => {
                return Err(GraphError::SelfDependency {
                    task: ids.get(t as usize).to_string(),
                })
            }
            Err(DagError::Cycle { on_cycle }) => {
                return Err(GraphError::Cycle {
                    path: cycle_path(&edges, &on_cycle)
                        .into_iter()
                        .map(|i| ids.get(i as usize).to_string())
                        .collect(),
                })
            }
            Err(e) => return Err(GraphError::TooLarge(e.to_string())),
        };
        drop(edges);
        let mut nodes = nodes;
        for b in 0..n as u32 {
            if nodes[b as usize]
                .extra
                .as_ref()
                .is_some_and(|e| e.branch.is_some())
            {
                for s in dag.successors(b) {
                    nodes[s as usize]
                        .extra
                        .get_or_insert_with(Default::default)
                        .after_branch = true;
                }
            }
        }
        if let Some(workers) = search {
            search_order_keys(&dag, &mut nodes, workers);
        }
        // Release order: priority first, then the longest remaining critical path, or the
        // order keys where the graph has any.
        let keyed = nodes
            .iter()
            .any(|n| n.extra.as_ref().is_some_and(|e| e.order_key.is_some()));
        let rank = if keyed {
            nodes
                .iter()
                .map(|n| n.extra.as_ref().and_then(|e| e.order_key).unwrap_or(0))
                .collect()
        } else {
            let est = |i: u32| estimate_units(&nodes[i as usize]);
            crate::plan::upward_rank(&dag, est)
        };
        dag.sort_successors_by_key(|s| (nodes[s as usize].priority(), rank[s as usize]));
        // With durations known (any estimate) or an order given, ready tasks are taken from
        // one shared heap in (priority, rank) order by every worker: a list schedule for
        // coarse tasks. Without, the lock-free deques (release order above) serve fine-grained
        // tasks best.
        if keyed
            || nodes
                .iter()
                .any(|n| n.extra.as_ref().is_some_and(|e| e.estimate.is_some()))
        {
            dag.set_ranks(rank);
        } else {
            drop(rank);
        }
        // Bands are the priorities themselves, so that runs of different graphs sharing the
        // workers are ordered too (a uniform band costs no memory).
        dag.set_bands(nodes.iter().map(|n| n.priority() as u8));
        for c in &mut chunks {
            c.shrink();
        }
        // One body type and no options: a task's node record says nothing its index does not
        // (chunk 0, its index there), so the executor need not read it.
        let plain = chunks.len() <= 1 && nodes.iter().all(|n| n.extra.is_none());
        debug_assert!(!plain || nodes.iter().enumerate().all(|(i, n)| n.index as usize == i));
        Ok(Graph(Arc::new(GraphInner {
            plain,
            chunks: chunks.into_boxed_slice(),
            dag: Arc::new(dag),
            nodes: nodes.into_boxed_slice(),
            ids,
            by_id: by_id.into_boxed_slice(),
            layout,
            created,
            graph,
            names: std::sync::OnceLock::new(),
            codecs: if codecs.is_empty() {
                Box::default()
            } else {
                let mut v: Vec<Option<Arc<dyn codec::Codec>>> = vec![None; n];
                for (i, c) in codecs {
                    v[i as usize] = Some(c);
                }
                v.into_boxed_slice()
            },
        })))
    }
}

/// [`GraphBuilder::search_order`]: gives every node the order key of the best list schedule
/// found for `workers` workers, if some node has an estimate and none has a key of its own.
/// Durations as the planner counts them: a node without an estimate takes no time.
fn search_order_keys(dag: &Dag, nodes: &mut [Node], workers: usize) {
    let estimate = |n: &Node| n.extra.as_ref().and_then(|e| e.estimate);
    if !nodes.iter().any(|n| estimate(n).is_some())
        || nodes
            .iter()
            .any(|n| n.extra.as_ref().is_some_and(|e| e.order_key.is_some()))
    {
        return;
    }
    let weight: Vec<u64> = nodes
        .iter()
        .map(|n| estimate(n).map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64))
        .collect();
    let rank = crate::plan::upward_rank(dag, |u| weight[u as usize]);
    let tries = crate::plan::default_tries(nodes.len(), dag.edge_count());
    let prio = |i: u32| nodes[i as usize].priority();
    let (keys, _, _) = crate::plan::search_keys(dag, &weight, prio, &rank, workers, tries);
    for (n, k) in nodes.iter_mut().zip(keys) {
        n.extra.get_or_insert_with(Default::default).order_key = Some(k);
    }
}

/// A task's duration estimate in nanoseconds for ranking (1 when unknown: equal durations).
pub(crate) fn estimate_units(n: &Node) -> u64 {
    n.extra
        .as_ref()
        .and_then(|e| e.estimate)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(1)
        .max(1)
}

/// Finds one cycle among the `stuck` nodes (those Kahn's algorithm could not order): every
/// stuck node has a stuck predecessor, so walking predecessors must revisit a node.
fn cycle_path(edges: &[(u32, u32)], stuck: &[u32]) -> Vec<u32> {
    let stuck_set: std::collections::BTreeSet<u32> = stuck.iter().copied().collect();
    let mut pred: BTreeMap<u32, u32> = BTreeMap::new();
    for &(from, to) in edges {
        if stuck_set.contains(&from) && stuck_set.contains(&to) {
            pred.entry(to).or_insert(from);
        }
    }
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    let mut walk = Vec::new();
    let mut cur = stuck[0];
    loop {
        if let Some(&pos) = seen.get(&cur) {
            let mut cycle: Vec<u32> = walk[pos..].to_vec();
            cycle.reverse(); // walked backwards along dependencies
                             // Start at the earliest-added task, so the message is stable and reads naturally.
            let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
            cycle.rotate_left(first);
            cycle.push(cycle[0]);
            return cycle;
        }
        seen.insert(cur, walk.len());
        walk.push(cur);
        cur = pred[&cur];
    }
}

struct TaskSpec {
    id: Box<str>,
    extra: Option<Box<Extra>>,
    after: Vec<TaskId>,
    named: Vec<Box<str>>,
}

/// Options of one task being added; finish with [`run`](TaskBuilder::run),
/// [`run_async`](TaskBuilder::run_async) or [`run_dynamic`](TaskBuilder::run_dynamic).
pub struct TaskBuilder<'g> {
    g: &'g mut GraphBuilder,
    id: Option<Box<str>>,
    extra: Option<Box<Extra>>,
    after: Vec<TaskId>,
    named: Vec<Box<str>>,
}

impl fmt::Debug for TaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder").field("id", &self.id).finish()
    }
}

impl<'g> TaskBuilder<'g> {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// A display name (defaults to the id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.extra().name = Some(name.into());
        self
    }

    /// A description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.extra().description = Some(d.into());
        self
    }

    /// The priority (default medium).
    pub fn priority(mut self, p: Priority) -> Self {
        if p != Priority::Medium || self.extra.is_some() {
            self.extra().priority = p;
        }
        self
    }

    /// Fails an attempt that runs longer than `t` (async work is dropped at the deadline; sync
    /// work sees [`TaskContext::is_cancelled`] turn true and fails when it returns).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.extra().timeout = Some(t);
        self
    }

    /// How the task is retried when an attempt fails.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.extra().retry = Some(p);
        self
    }

    /// An estimate of the task's duration, for the planner's critical path.
    pub fn estimate(mut self, d: Duration) -> Self {
        self.extra().estimate = Some(d);
        self
    }

    /// The task's place in the ready order, for a schedule worked out ahead of time (e.g. by
    /// [`Plan::search_order`](crate::Plan::search_order), which simulates list schedules of
    /// known durations; [`GraphBuilder::search_order`] sets every task's key from it).
    ///
    /// By default, a graph with estimates takes its ready tasks by priority, then by longest
    /// remaining critical path. Once any task of the graph has an order key, ready tasks are
    /// taken by priority, then by highest key (a task without one counts as 0), from one queue
    /// shared by every worker.
    pub fn order_key(mut self, key: u64) -> Self {
        self.extra().order_key = Some(key);
        self
    }

    /// Holds `amount` of the executor's resource `name` while the task runs (see
    /// [`Resources`](crate::Resources)): the task waits, without occupying a worker, until
    /// every resource it uses has room. Repeat for several resources.
    pub fn uses(mut self, name: &str, amount: u64) -> Self {
        let e = self.extra();
        let mut v: Vec<(Arc<str>, u64)> = e.uses.as_deref().unwrap_or(&[]).to_vec();
        match v.iter_mut().find(|(n, _)| &**n == name) {
            Some(slot) => slot.1 += amount,
            None => v.push((Arc::from(name), amount)),
        }
        e.uses = Some(v.into());
        self
    }

    /// When the task runs, given how its dependencies ended (default
    /// [`TriggerRule::AllSuccess`]). A task that may run after a failed dependency should
    /// read that dependency's output through [`Handle::optional`] (or not at all).
    pub fn trigger(mut self, rule: TriggerRule) -> Self {
        if rule != TriggerRule::AllSuccess || self.extra.is_some() {
            self.extra().trigger = rule;
        }
        self
    }

    /// Passes each attempt through the executor's circuit breaker `kind` (see
    /// [`CircuitBreakers`](crate::CircuitBreakers)): while that circuit is open the task is not
    /// run; it fails at once with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen),
    /// or runs its fallback if it has one. Each attempt's outcome is recorded in the
    /// circuit. Tasks of one kind (e.g. calls to one service) share a circuit, across runs.
    pub fn circuit_breaker(mut self, kind: &str) -> Self {
        self.extra().circuit = Some(Arc::from(kind));
        self
    }

    /// Takes a permit of the executor's rate limit `key` (see [`RateLimits`](crate::RateLimits))
    /// before each attempt starts: when the window is full, the task waits, without occupying a
    /// worker, until a permit is free. A key without a limit set on the executor never waits.
    pub fn rate_limit(mut self, key: &str) -> Self {
        self.extra().rate_limit = Some(Arc::from(key));
        self
    }

    /// Who created the task.
    pub fn creator(mut self, c: impl Into<String>) -> Self {
        self.extra().meta.creator = Some(c.into());
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.extra().meta.tags.push(t.into());
        self
    }

    /// Adds a key/value metadata pair.
    pub fn meta(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.extra().meta.extra.insert(k.into(), v.into());
        self
    }

    /// Runs after `task` finished, without reading its output.
    pub fn after(mut self, task: impl Into<TaskId>) -> Self {
        self.after.push(task.into());
        self
    }

    /// Runs after each of `tasks` finished, without reading their outputs.
    pub fn after_all<I: IntoIterator>(mut self, tasks: I) -> Self
    where
        I::Item: Into<TaskId>,
    {
        self.after.extend(tasks.into_iter().map(Into::into));
        self
    }

    /// Runs after the task with id `id` finished (resolved when the graph is built).
    pub fn depends_on(mut self, id: impl AsRef<str>) -> Self {
        self.named.push(id.as_ref().into());
        self
    }

    fn spec(&mut self) -> TaskSpec {
        TaskSpec {
            id: self.id.take().unwrap_or_default(),
            extra: self.extra.take(),
            after: std::mem::take(&mut self.after),
            named: std::mem::take(&mut self.named),
        }
    }

    /// Sets the work: a function of the task's context and its typed inputs, run on the
    /// worker pool. Returns the handle of the task's output.
    pub fn run<I, T, F>(mut self, inputs: I, f: F) -> Handle<T>
    where
        I: Inputs,
        T: Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>
            + Send
            + Sync
            + 'static,
    {
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g
            .add(spec, srcs, move |out| body::SyncBody { inputs, out, f })
    }

    /// Sets the work and its fallback: when the work fails for good (after its retries, and
    /// not because the run was cancelled), `fallback` runs with the same inputs and its output
    /// becomes the task's: dependents receive it and the task is COMPLETED (its result says
    /// so in [`TaskResult::fallback`](crate::TaskResult::fallback)). A failing fallback fails
    /// the task with the fallback's error.
    pub fn run_with_fallback<I, T, F, G>(mut self, inputs: I, f: F, fallback: G) -> Handle<T>
    where
        I: Inputs,
        T: Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>
            + Send
            + Sync
            + 'static,
        G: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>
            + Send
            + Sync
            + 'static,
    {
        self.extra().fallback = true;
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g.add(spec, srcs, move |out| body::FallbackBody {
            inputs,
            out,
            f,
            g: fallback,
        })
    }

    /// Sets asynchronous work: a function of the context and the inputs that returns a
    /// future, run on tokio (thousands may be in flight without a thread each). The function
    /// itself runs on a worker and must copy what the future needs from the inputs.
    pub fn run_async<I, T, F, Fut>(mut self, inputs: I, f: F) -> Handle<T>
    where
        I: Inputs,
        T: Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
    {
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g.add(spec, srcs, move |out| body::AsyncBody {
            inputs,
            out,
            f,
            _fut: PhantomData,
        })
    }

    /// Sets memoized work: before running `f`, the engine's memo store is asked for an
    /// output stored under this task's id, `memo`'s version and these inputs (serialized);
    /// a live entry completes the task without running `f`. Otherwise `f` runs and its output
    /// is stored with `memo`'s TTL. Inputs and output must serialize (serde); a value that
    /// fails to is simply not cached.
    pub fn run_memo<I, T, F>(mut self, inputs: I, memo: crate::memo::Memo, f: F) -> Handle<T>
    where
        I: Inputs,
        for<'a> I::Refs<'a>: serde::Serialize,
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>
            + Send
            + Sync
            + 'static,
    {
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g.add(spec, srcs, move |out| body::MemoBody {
            inputs,
            out,
            f,
            memo,
        })
    }

    /// Makes the task a branch: `f` chooses which of its dependents run ([`Branch`]); the
    /// others are SKIPPED, with their descendants that cannot run without them. Choosing a
    /// task that is not a dependent fails the branch task. Dependents may also read the
    /// choice (the task's output).
    pub fn branch<I, F>(mut self, inputs: I, f: F) -> Handle<Branch>
    where
        I: Inputs,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<Branch, TaskError>
            + Send
            + Sync
            + 'static,
    {
        self.extra();
        let spec = self.spec();
        let srcs = sources(&inputs);
        let h = self
            .g
            .add(spec, srcs, move |out| flow::BranchBody { inputs, out, f });
        let node = &mut self.g.nodes[h.slot.index() as usize];
        node.extra.get_or_insert_with(Default::default).branch = Some(h.slot);
        h
    }

    /// Sets async work and a sync fallback (see
    /// [`run_with_fallback`](TaskBuilder::run_with_fallback)).
    pub fn run_async_with_fallback<I, T, F, Fut, G>(
        mut self,
        inputs: I,
        f: F,
        fallback: G,
    ) -> Handle<T>
    where
        I: Inputs,
        T: Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
        G: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>
            + Send
            + Sync
            + 'static,
    {
        self.extra().fallback = true;
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g.add(spec, srcs, move |out| body::AsyncFallbackBody {
            inner: body::AsyncBody {
                inputs,
                out,
                f,
                _fut: PhantomData,
            },
            g: fallback,
        })
    }

    /// Sets work that builds a subgraph at run time (a fan-out over a list known only then,
    /// followed by a fan-in, say). The subgraph runs in the same run, on the same workers;
    /// it is validated like any graph (an invalid one fails this task), its tasks appear in
    /// the report as `this-id/their-id`, and this task's output is the value of the
    /// subgraph's output task.
    pub fn run_dynamic<I, T, F>(mut self, inputs: I, f: F) -> Handle<T>
    where
        I: Inputs,
        T: Clone + Send + Sync + 'static,
        F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<Subgraph<T>, TaskError>
            + Send
            + Sync
            + 'static,
    {
        let spec = self.spec();
        let srcs = sources(&inputs);
        self.g
            .add(spec, srcs, move |out| body::DynamicBody { inputs, out, f })
    }
}

pub(crate) struct GraphInner {
    /// Every task's body is of one type and no task has options (`Node::extra`): node `i` is
    /// body `i` of chunk 0, with defaults for everything else.
    pub(crate) plain: bool,
    pub(crate) chunks: Box<[Box<dyn BodyChunk>]>,
    pub(crate) dag: Arc<Dag>,
    pub(crate) nodes: Box<[Node]>,
    pub(crate) ids: IdTable,
    by_id: Box<[u32]>,
    pub(crate) layout: ArenaLayout,
    created: SystemTime,
    graph: u32,
    /// The tasks' ids as shared strings for events; built when a run first publishes a task
    /// event, then shared by every run of the graph.
    pub(crate) names: std::sync::OnceLock<Arc<[Arc<str>]>>,
    /// Codecs of persisted tasks, by node (empty when none is persisted).
    pub(crate) codecs: Box<[Option<Arc<dyn codec::Codec>>]>,
}

/// A validated task graph, ready to run any number of times (cloning shares it).
#[derive(Clone)]
pub struct Graph(pub(crate) Arc<GraphInner>);

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("tasks", &self.len())
            .field("edges", &self.0.dag.edge_count())
            .finish()
    }
}

/// A read-only view of one task of a graph.
#[derive(Clone, Copy)]
pub struct TaskInfo<'g> {
    g: &'g GraphInner,
    index: u32,
}

impl fmt::Debug for TaskInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo").field("id", &self.id()).finish()
    }
}

impl<'g> TaskInfo<'g> {
    fn node(&self) -> &'g Node {
        &self.g.nodes[self.index as usize]
    }
    fn extra(&self) -> Option<&'g Extra> {
        self.node().extra.as_deref()
    }
    /// The task's handle-free id.
    pub fn task_id(&self) -> TaskId {
        TaskId {
            graph: self.g.graph,
            index: self.index,
        }
    }
    /// Its id.
    pub fn id(&self) -> &'g str {
        self.g.ids.get(self.index as usize)
    }
    /// Its display name (the id unless set).
    pub fn name(&self) -> &'g str {
        self.extra()
            .and_then(|e| e.name.as_deref())
            .unwrap_or_else(|| self.id())
    }
    /// Its description.
    pub fn description(&self) -> &'g str {
        self.extra()
            .and_then(|e| e.description.as_deref())
            .unwrap_or("")
    }
    /// Its priority.
    pub fn priority(&self) -> Priority {
        self.node().priority()
    }
    /// Its timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.extra().and_then(|e| e.timeout)
    }
    /// Its retry policy.
    pub fn retry(&self) -> Option<&'g RetryPolicy> {
        self.extra().and_then(|e| e.retry.as_ref())
    }
    /// Its duration estimate.
    pub fn estimate(&self) -> Option<Duration> {
        self.extra().and_then(|e| e.estimate)
    }
    /// Its order key ([`TaskBuilder::order_key`]).
    pub fn order_key(&self) -> Option<u64> {
        self.extra().and_then(|e| e.order_key)
    }
    /// Whether its output is persisted (see [`GraphBuilder::persist`]).
    pub fn is_persisted(&self) -> bool {
        self.g
            .codecs
            .get(self.index as usize)
            .is_some_and(Option::is_some)
    }
    /// Its metadata (creation time defaults to the graph's).
    pub fn metadata(&self) -> TaskMetadata {
        let mut m = self.extra().map(|e| e.meta.clone()).unwrap_or_default();
        m.created_at.get_or_insert(self.g.created);
        m
    }
    /// Ids of the tasks it waits for.
    pub fn dependencies(&self) -> impl Iterator<Item = &'g str> + 'g {
        let g = self.g;
        g.dag
            .predecessors(self.index)
            .iter()
            .map(move |&p| g.ids.get(p as usize))
    }
    /// Ids of the tasks that wait for it.
    pub fn dependents(&self) -> impl Iterator<Item = &'g str> + 'g {
        let g = self.g;
        g.dag
            .successors(self.index)
            .map(move |p| g.ids.get(p as usize))
    }
}

impl Graph {
    /// Starts building a graph.
    pub fn builder() -> GraphBuilder {
        GraphBuilder::new()
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.0.nodes.len()
    }

    /// Whether the graph has no task.
    pub fn is_empty(&self) -> bool {
        self.0.nodes.is_empty()
    }

    /// Number of dependencies (edges).
    pub fn edge_count(&self) -> usize {
        self.0.dag.edge_count()
    }

    /// The task with id `id` (binary search).
    pub fn find(&self, id: &str) -> Option<TaskId> {
        let g = &self.0;
        g.by_id
            .binary_search_by(|&i| g.ids.get(i as usize).cmp(id))
            .ok()
            .map(|p| TaskId {
                graph: g.graph,
                index: g.by_id[p],
            })
    }

    /// A view of one task.
    ///
    /// # Panics
    /// If `id` belongs to another graph.
    pub fn task(&self, id: impl Into<TaskId>) -> TaskInfo<'_> {
        let id = id.into();
        assert!(
            id.graph == self.0.graph && (id.index as usize) < self.len(),
            "task id of another graph"
        );
        TaskInfo {
            g: &self.0,
            index: id.index,
        }
    }

    /// Every task, in insertion order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = TaskInfo<'_>> + '_ {
        (0..self.len() as u32).map(move |index| TaskInfo { g: &self.0, index })
    }

    /// The plan with the tasks' own estimates (equal durations where none is given).
    pub fn plan(&self) -> crate::plan::Plan {
        crate::plan::Planner::new().plan(self)
    }

    /// Approximate bytes held by the graph (topology, tasks, ids), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let g = &self.0;
        g.dag.heap_bytes()
            + g.nodes.len() * std::mem::size_of::<Node>()
            + g.chunks.iter().map(|c| c.heap_bytes()).sum::<usize>()
            + g.ids.buf.capacity()
            + g.ids.ends.capacity() * 4
            + g.by_id.len() * 4
    }

    pub(crate) fn owns(&self, id: TaskId) -> bool {
        id.graph == self.0.graph && (id.index as usize) < self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tasks made by one closure; with `options`, the second has a priority.
    fn one_closure(options: bool) -> Graph {
        let mut g = Graph::builder();
        for i in 0..3u8 {
            let b = g.task(format!("t{i}"));
            let b = if options && i == 1 {
                b.priority(Priority::High)
            } else {
                b
            };
            b.run((), move |_, ()| Ok::<_, TaskError>(i));
        }
        g.build().unwrap()
    }

    #[test]
    fn only_a_graph_of_one_body_type_without_options_is_plain() {
        assert!(one_closure(false).0.plain);
        assert!(!one_closure(true).0.plain);
        let mut g = Graph::builder();
        g.task("a").run((), |_, ()| Ok::<_, TaskError>(1u8));
        g.task("b").run((), |_, ()| Ok::<_, TaskError>(2u16));
        assert!(!g.build().unwrap().0.plain, "two body types");
    }
}
