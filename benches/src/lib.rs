//! Benchmarks of nerv against two competitors on the four standard shapes of empty tasks.
//!
//! The shapes (the same as `crates/nerv/examples/shapes.rs`) are kept here as plain adjacency
//! data, a [`Topology`], independent of nerv, so that competitors can run them:
//!
//! - [`sequential`]: every task in index order in a plain loop (index order is topological for
//!   these shapes). The floor: no scheduling at all.
//! - [`rayon_scope`]: a plain rayon-scope executor with one atomic join counter per task. A
//!   finished task decrements its successors' counters; of those that reach zero it runs the
//!   first inline and spawns the others. No status, no outputs, no timing.
//! - [`rayon_spawn`]: the same executor, but it runs a successor inline only when it is the one
//!   successor that became ready; when several did (a tree node's two children, a grid cell's
//!   right and lower neighbours, the fan-out's middle), it spawns them all. The variant whose
//!   figures the core issue quotes ("10, 451, 113, 102": an inline loop on a chain, a spawn per
//!   ready task elsewhere); kept beside [`rayon_scope`] so that both comparisons are on record.
//!
//! [`nerv_graph`] builds the same shape as a [`nerv::Graph`] of empty tasks. Everything here is
//! built outside the timed regions; only the executors' runs are timed.

use rayon::{Scope, ThreadPool};
use std::fmt;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

/// One of the four standard graph shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A chain: task `i` depends on task `i - 1`.
    Chain,
    /// Fan-out and fan-in, 1 -> N -> 1: a source, `n - 2` tasks after it, a sink after all.
    Fanout,
    /// A binary tree: task `i` depends on task `(i - 1) / 2`.
    Tree,
    /// A `k x k` grid (`k = round(sqrt(n))`): each cell depends on the cell above and the cell
    /// to the left.
    Wavefront,
}

impl Shape {
    /// All four shapes, in the order the benchmarks report them.
    pub const ALL: [Shape; 4] = [Shape::Chain, Shape::Fanout, Shape::Tree, Shape::Wavefront];

    /// The shape's name, as the examples print it.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Fanout => "fanout",
            Shape::Tree => "tree",
            Shape::Wavefront => "wavefront",
        }
    }

    /// The number of tasks the shape has when asked for about `n` (a wavefront has `k * k`).
    pub fn tasks(self, n: usize) -> usize {
        match self {
            Shape::Wavefront => {
                let k = wavefront_side(n);
                k * k
            }
            _ => n,
        }
    }

    /// The predecessors of task `i`, in the order nerv's shapes example declares them.
    /// `n` is the total number of tasks (as returned by [`Shape::tasks`]).
    fn for_each_pred(self, n: usize, i: usize, mut f: impl FnMut(usize)) {
        match self {
            Shape::Chain => {
                if i > 0 {
                    f(i - 1)
                }
            }
            Shape::Fanout => {
                if i == n - 1 {
                    (1..n - 1).for_each(f)
                } else if i > 0 {
                    f(0)
                }
            }
            Shape::Tree => {
                if i > 0 {
                    f((i - 1) / 2)
                }
            }
            Shape::Wavefront => {
                let k = (n as f64).sqrt() as usize;
                let (r, c) = (i / k, i % k);
                if r > 0 {
                    f(i - k)
                }
                if c > 0 {
                    f(i - 1)
                }
            }
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == s)
            .ok_or_else(|| format!("unknown shape {s} (chain, fanout, tree, wavefront)"))
    }
}

fn wavefront_side(n: usize) -> usize {
    (n as f64).sqrt().round() as usize
}

/// A shape as plain adjacency data: successors in CSR form and in-degrees.
#[derive(Debug, Clone)]
pub struct Topology {
    shape: Shape,
    /// `offsets[i]..offsets[i + 1]` is the range of task `i`'s successors in `succ`.
    offsets: Vec<u32>,
    succ: Vec<u32>,
    indegree: Vec<u32>,
    roots: Vec<u32>,
}

impl Topology {
    /// Builds `shape` with about `n` tasks (exactly [`Shape::tasks`]`(n)`).
    ///
    /// # Panics
    /// If the shape would be empty, or a fan-out has fewer than 2 tasks.
    pub fn new(shape: Shape, n: usize) -> Self {
        let n = shape.tasks(n);
        assert!(n >= 1, "a shape needs at least one task");
        assert!(
            shape != Shape::Fanout || n >= 2,
            "a fan-out needs at least 2 tasks"
        );
        assert!(n < u32::MAX as usize, "too many tasks for u32 indices");
        // Out-degrees and in-degrees, then prefix sums, then fill: two passes over the edges.
        let mut indegree = vec![0u32; n];
        let mut offsets = vec![0u32; n + 1];
        for (i, d) in indegree.iter_mut().enumerate() {
            shape.for_each_pred(n, i, |p| {
                *d += 1;
                offsets[p + 1] += 1;
            });
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill: Vec<u32> = offsets[..n].to_vec();
        let mut succ = vec![0u32; offsets[n] as usize];
        for i in 0..n {
            shape.for_each_pred(n, i, |p| {
                succ[fill[p] as usize] = i as u32;
                fill[p] += 1;
            });
        }
        let roots = (0..n as u32)
            .filter(|&i| indegree[i as usize] == 0)
            .collect();
        Topology {
            shape,
            offsets,
            succ,
            indegree,
            roots,
        }
    }

    /// The shape this topology was built from.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.indegree.len()
    }

    /// Whether there are no tasks (never, for a built shape).
    pub fn is_empty(&self) -> bool {
        self.indegree.is_empty()
    }

    /// The number of edges.
    pub fn edges(&self) -> usize {
        self.succ.len()
    }

    /// The successors of task `i`.
    pub fn successors(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.succ[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The in-degree (number of predecessors) of every task.
    pub fn indegrees(&self) -> &[u32] {
        &self.indegree
    }

    /// The tasks without predecessors.
    pub fn roots(&self) -> &[u32] {
        &self.roots
    }
}

/// The empty task every executor runs: only `black_box` on its index.
#[inline]
pub fn empty_task(i: u32) {
    black_box(i);
}

/// Runs every task of `topo` in index order on the calling thread (a topological order for
/// the four shapes), calling [`empty_task`].
pub fn sequential(topo: &Topology) {
    sequential_with(topo, empty_task)
}

/// [`sequential`] with a task of one's own, called with each task's index.
pub fn sequential_with(topo: &Topology, task: impl Fn(u32)) {
    for i in 0..topo.len() as u32 {
        task(i);
    }
}

/// A rayon thread pool of `threads` threads, for [`rayon_scope`].
pub fn rayon_pool(threads: usize) -> ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("rayon-scope-{i}"))
        .build()
        .expect("rayon thread pool")
}

/// Runs every task of `topo` on `pool` with [`empty_task`]: per-task atomic join counters
/// (initialised to the in-degrees, part of the run) and one `rayon::scope`.
pub fn rayon_scope(pool: &ThreadPool, topo: &Topology) {
    rayon_scope_with(pool, topo, &empty_task)
}

/// [`rayon_scope`] with a task of one's own, called with each task's index.
pub fn rayon_scope_with<F: Fn(u32) + Sync>(pool: &ThreadPool, topo: &Topology, task: &F) {
    scoped(pool, topo, task, false)
}

/// Runs every task of `topo` on `pool` as [`rayon_scope`] does, except that several successors
/// that became ready at once are all spawned (see the module doc).
pub fn rayon_spawn(pool: &ThreadPool, topo: &Topology) {
    rayon_spawn_with(pool, topo, &empty_task)
}

/// [`rayon_spawn`] with a task of one's own, called with each task's index.
pub fn rayon_spawn_with<F: Fn(u32) + Sync>(pool: &ThreadPool, topo: &Topology, task: &F) {
    scoped(pool, topo, task, true)
}

/// One run of either rayon executor: per-task atomic join counters (initialised to the
/// in-degrees, part of the run) and one `rayon::scope`; the first root runs inline, the others
/// are spawned. `spawn_all`: [`Run::spawning`], otherwise [`Run::from`].
fn scoped<F: Fn(u32) + Sync>(pool: &ThreadPool, topo: &Topology, task: &F, spawn_all: bool) {
    let counters: Vec<AtomicU32> = topo.indegree.iter().map(|&d| AtomicU32::new(d)).collect();
    let run = Run {
        topo,
        counters: &counters,
        task,
    };
    pool.scope(|s| {
        let (first, rest) = topo.roots.split_first().expect("a shape has a root");
        for &r in rest {
            s.spawn(move |s| run.start(s, r, spawn_all));
        }
        run.start(s, *first, spawn_all);
    });
}

/// What every job of one [`rayon_scope_with`] run shares.
struct Run<'a, F> {
    topo: &'a Topology,
    counters: &'a [AtomicU32],
    task: &'a F,
}

impl<F> Clone for Run<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Run<'_, F> {}

impl<'a, F: Fn(u32) + Sync> Run<'a, F> {
    /// [`spawning`](Self::spawning) if `spawn_all`, else [`from`](Self::from).
    fn start(self, s: &Scope<'a>, i: u32, spawn_all: bool) {
        if spawn_all {
            self.spawning(s, i)
        } else {
            self.from(s, i)
        }
    }

    /// Runs task `i`, then, as long as one of its successors became ready, the first such
    /// inline; the others are spawned.
    fn from(self, s: &Scope<'a>, mut i: u32) {
        loop {
            (self.task)(i);
            let mut next = None;
            for &j in self.topo.successors(i) {
                // AcqRel: the last predecessor to finish sees every other's writes, and the
                // successor (run by whoever brings the counter to zero) sees them too.
                if self.counters[j as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                    if next.is_none() {
                        next = Some(j);
                    } else {
                        s.spawn(move |s| self.from(s, j));
                    }
                }
            }
            match next {
                Some(j) => i = j,
                None => return,
            }
        }
    }

    /// Runs task `i`, then its one ready successor inline, as long as there is exactly one;
    /// several ready successors are all spawned.
    fn spawning(self, s: &Scope<'a>, mut i: u32) {
        loop {
            (self.task)(i);
            let (mut lone, mut several) = (None, false);
            for &j in self.topo.successors(i) {
                if self.counters[j as usize].fetch_sub(1, Ordering::AcqRel) != 1 {
                    continue;
                }
                if several {
                    s.spawn(move |s| self.spawning(s, j));
                } else if let Some(k) = lone.take() {
                    several = true;
                    s.spawn(move |s| self.spawning(s, k));
                    s.spawn(move |s| self.spawning(s, j));
                } else {
                    lone = Some(j);
                }
            }
            match lone {
                Some(j) => i = j,
                None => return,
            }
        }
    }
}

/// Builds `shape` with about `n` tasks as a nerv graph of empty tasks (ids `t{i}`, ordering
/// dependencies via `after_all`), exactly as nerv's `shapes` example does.
pub fn nerv_graph(shape: Shape, n: usize) -> nerv::Graph {
    use nerv::{Graph, GraphBuilder, TaskId};

    fn empty(g: &mut GraphBuilder, i: usize, deps: &[TaskId]) -> TaskId {
        g.task(format!("t{i}"))
            .after_all(deps.iter().copied())
            .run((), |_, ()| Ok(()))
            .id()
    }

    let mut g = Graph::builder();
    g.reserve(n, 2 * n);
    match shape {
        Shape::Chain => {
            let mut prev = empty(&mut g, 0, &[]);
            for i in 1..n {
                prev = empty(&mut g, i, &[prev]);
            }
        }
        Shape::Fanout => {
            let src = empty(&mut g, 0, &[]);
            let mid: Vec<TaskId> = (1..n - 1).map(|i| empty(&mut g, i, &[src])).collect();
            empty(&mut g, n - 1, &mid);
        }
        Shape::Tree => {
            let mut ids: Vec<TaskId> = Vec::with_capacity(n);
            for i in 0..n {
                let deps: &[TaskId] = if i == 0 {
                    &[]
                } else {
                    &ids[(i - 1) / 2..=(i - 1) / 2]
                };
                let id = empty(&mut g, i, deps);
                ids.push(id);
            }
        }
        Shape::Wavefront => {
            let k = wavefront_side(n);
            let mut ids: Vec<TaskId> = Vec::with_capacity(k * k);
            for r in 0..k {
                for c in 0..k {
                    let mut deps = Vec::with_capacity(2);
                    if r > 0 {
                        deps.push(ids[(r - 1) * k + c]);
                    }
                    if c > 0 {
                        deps.push(ids[r * k + c - 1]);
                    }
                    let id = empty(&mut g, r * k + c, &deps);
                    ids.push(id);
                }
            }
        }
    }
    g.build().expect("valid shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    const SIZES: [usize; 4] = [2, 3, 1000, 10_007];

    /// Runs `exec` with a task that counts its runs and stamps its completion order, then checks
    /// that every task ran exactly once and after all its predecessors.
    fn check(topo: &Topology, exec: impl FnOnce(&(dyn Fn(u32) + Sync))) {
        let n = topo.len();
        let runs: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let order: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(u64::MAX)).collect();
        let clock = AtomicU64::new(0);
        exec(&|i: u32| {
            runs[i as usize].fetch_add(1, Ordering::Relaxed);
            let t = clock.fetch_add(1, Ordering::SeqCst);
            order[i as usize].store(t, Ordering::SeqCst);
        });
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.load(Ordering::Relaxed), 1, "{}: task {i}", topo.shape());
        }
        for i in 0..n as u32 {
            let t = order[i as usize].load(Ordering::SeqCst);
            for &j in topo.successors(i) {
                assert!(
                    t < order[j as usize].load(Ordering::SeqCst),
                    "{i} before {j}"
                );
            }
        }
    }

    #[test]
    fn topology_matches_the_shapes() {
        let t = Topology::new(Shape::Chain, 5);
        assert_eq!((t.len(), t.edges(), t.roots()), (5, 4, &[0][..]));
        assert_eq!(t.successors(3), &[4]);
        let t = Topology::new(Shape::Fanout, 6);
        assert_eq!((t.len(), t.edges()), (6, 8));
        assert_eq!(t.successors(0), &[1, 2, 3, 4]);
        assert_eq!(t.indegrees()[5], 4);
        let t = Topology::new(Shape::Tree, 7);
        assert_eq!(t.successors(1), &[3, 4]);
        assert_eq!(t.edges(), 6);
        let t = Topology::new(Shape::Wavefront, 10);
        assert_eq!((t.len(), t.edges()), (9, 12));
        assert_eq!(t.successors(4), &[5, 7]);
        assert_eq!(t.indegrees()[8], 2);
    }

    #[test]
    fn sequential_runs_every_task_once_in_order() {
        for shape in Shape::ALL {
            for n in SIZES {
                let topo = Topology::new(shape, n);
                check(&topo, |task| sequential_with(&topo, task));
            }
        }
    }

    #[test]
    fn rayon_executors_run_every_task_once_in_order() {
        for threads in [1, 2, 4] {
            let pool = rayon_pool(threads);
            for shape in Shape::ALL {
                for n in SIZES {
                    let topo = Topology::new(shape, n);
                    for _ in 0..3 {
                        check(&topo, |task| rayon_scope_with(&pool, &topo, &task));
                        check(&topo, |task| rayon_spawn_with(&pool, &topo, &task));
                    }
                }
            }
        }
    }

    #[test]
    fn nerv_graph_has_the_same_topology() {
        for shape in Shape::ALL {
            for n in [2, 3, 50, 101] {
                let topo = Topology::new(shape, n);
                let graph = nerv_graph(shape, n);
                assert_eq!(graph.len(), topo.len(), "{shape} {n}");
                let mut preds: Vec<Vec<String>> = vec![Vec::new(); topo.len()];
                for i in 0..topo.len() as u32 {
                    for &j in topo.successors(i) {
                        preds[j as usize].push(format!("t{i}"));
                    }
                }
                for (i, task) in graph.tasks().enumerate() {
                    assert_eq!(task.id(), format!("t{i}"));
                    let mut deps: Vec<&str> = task.dependencies().collect();
                    deps.sort_unstable();
                    let mut want: Vec<&str> = preds[i].iter().map(String::as_str).collect();
                    want.sort_unstable();
                    assert_eq!(deps, want, "{shape} {n}: deps of t{i}");
                }
            }
        }
    }

    #[test]
    fn nerv_runs_every_task() {
        let exec = nerv::Executor::builder().workers(2).build();
        for shape in Shape::ALL {
            let graph = nerv_graph(shape, 1000);
            let report = exec.run(&graph);
            assert_eq!(report.counts().completed, graph.len(), "{shape}");
        }
    }
}
