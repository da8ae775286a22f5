//! The planner (the seed's QuantumPartitioner): execution levels, priority order within each
//! level, and the critical path from per-task duration estimates.
//!
//! Levels are for display and analysis: level `k` holds the tasks whose longest chain of
//! dependencies has `k` links. The executor never waits for a level to finish; it starts each
//! task as soon as its own dependencies are done, and among ready tasks prefers higher priority,
//! then a longer remaining critical path (the upward rank computed here).

use crate::graph::{Graph, TaskInfo};
use crate::task::Priority;
use nerv_pool::Dag;
use std::fmt;
use std::time::Duration;

/// Upward rank of every node: its estimate plus the largest rank among its successors (the
/// length of the longest path from the node to the end of the graph).
pub(crate) fn upward_rank(dag: &Dag, est: impl Fn(u32) -> u64) -> Vec<u64> {
    let mut rank = vec![0u64; dag.len()];
    for &u in dag.topological_order().iter().rev() {
        let below = dag
            .successors(u)
            .map(|s| rank[s as usize])
            .max()
            .unwrap_or(0);
        rank[u as usize] = est(u).saturating_add(below);
    }
    rank
}

/// The makespan of the list schedule of `dag` with durations `weight` on `workers` workers
/// that, whenever a worker is free, starts the ready task of highest priority, then highest
/// `key`, then lowest index; with no overhead. Protocol: time starts at 0 with the roots
/// ready; at each instant, tasks finishing now release their successors, then free workers
/// take ready tasks, then time jumps to the next finish.
pub(crate) fn list_schedule(
    dag: &Dag,
    weight: &[u64],
    prio: impl Fn(u32) -> Priority,
    key: &[u64],
    workers: usize,
) -> u64 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = dag.len();
    let mut indeg: Vec<u32> = (0..n as u32).map(|i| dag.in_degree(i)).collect();
    let entry = |i: u32| (prio(i), key[i as usize], Reverse(i));
    let mut ready: BinaryHeap<(Priority, u64, Reverse<u32>)> =
        dag.roots().iter().map(|&r| entry(r)).collect();
    // Running tasks by finish time.
    let mut running: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let (mut now, mut end) = (0u64, 0u64);
    let workers = workers.max(1);
    loop {
        while running.len() < workers {
            let Some((_, _, Reverse(u))) = ready.pop() else {
                break;
            };
            let done = now.saturating_add(weight[u as usize]);
            end = end.max(done);
            running.push(Reverse((done, u)));
        }
        let Some(Reverse((t, u))) = running.pop() else {
            break;
        };
        now = t;
        for s in dag.successors(u) {
            indeg[s as usize] -= 1;
            if indeg[s as usize] == 0 {
                ready.push(entry(s));
            }
        }
    }
    end
}

/// Searches order keys for [`list_schedule`]: critical-path-first is a good order, not the
/// best: where the bound is work / workers, starting a long task a little later can fill the
/// workers better. Tries `tries` key vectors, each the upward ranks `rank` (or the best keys
/// so far, every other try) plus a random offset per task of up to 2 %, 5 %, 10 %, 30 % or
/// 100 % of the largest rank in turn, simulates each and keeps the best; the first is `rank`
/// itself, so the result is never worse than critical-path-first in simulation.
/// Deterministic (a fixed seed). Returns the keys, their makespan and `rank`'s.
pub(crate) fn search_keys(
    dag: &Dag,
    weight: &[u64],
    prio: impl Fn(u32) -> Priority + Copy,
    rank: &[u64],
    workers: usize,
    tries: usize,
) -> (Vec<u64>, u64, u64) {
    let run = |keys: &[u64]| list_schedule(dag, weight, prio, keys, workers);
    let ranked = run(rank);
    let (mut best, mut best_keys) = (ranked, rank.to_vec());
    let top = rank.iter().copied().max().unwrap_or(0);
    // xorshift64: reproducible, and enough to scatter the keys.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut keys = vec![0u64; rank.len()];
    for t in 1..tries.max(1) {
        let spread = (top as f64 * [0.02, 0.05, 0.1, 0.3, 1.0][t % 5]) as u64;
        let from = if t % 2 == 0 { rank } else { &best_keys };
        for (k, &r) in keys.iter_mut().zip(from) {
            *k = r.saturating_add(next() % spread.max(1));
        }
        let m = run(&keys);
        if m < best {
            best = m;
            best_keys.copy_from_slice(&keys);
        }
    }
    (best_keys, best, ranked)
}

/// About 5 × 10^6 / (tasks + edges) tries of [`search_keys`], between 16 and 50 000: 0.1-0.3 s
/// on this project's machines up to some 300 000 tasks and edges, proportionally more beyond
/// (16 simulations at least).
pub(crate) fn default_tries(tasks: usize, edges: usize) -> usize {
    (5_000_000 / (tasks + edges + 1)).clamp(16, 50_000)
}

/// What [`Plan::search_order`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchedOrder {
    /// A key per task, in graph order (larger runs first).
    pub keys: Vec<u64>,
    /// The simulated makespan of that order.
    pub makespan: Duration,
    /// The simulated makespan of critical-path-first, where the search starts: `makespan` is
    /// never larger.
    pub ranked_makespan: Duration,
    /// How many orders were simulated.
    pub tried: usize,
}

type Estimator = Box<dyn Fn(&TaskInfo<'_>) -> Option<Duration>>;

/// Makes [`Plan`]s; the duration of each task comes from the estimator given here, else from
/// the task's own [`estimate`](crate::TaskBuilder::estimate), else all tasks count as equal.
#[derive(Default)]
pub struct Planner {
    estimator: Option<Estimator>,
}

impl fmt::Debug for Planner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Planner")
            .field("estimator", &self.estimator.is_some())
            .finish()
    }
}

impl Planner {
    /// A planner that uses the tasks' own estimates.
    pub fn new() -> Self {
        Planner::default()
    }

    /// Uses `f` for durations (falling back to the task's estimate where it returns `None`).
    pub fn estimate_with(
        mut self,
        f: impl Fn(&TaskInfo<'_>) -> Option<Duration> + 'static,
    ) -> Self {
        self.estimator = Some(Box::new(f));
        self
    }

    /// Plans `graph`.
    pub fn plan(&self, graph: &Graph) -> Plan {
        let dag = &graph.0.dag;
        let mut known = false;
        let est: Vec<Duration> = graph
            .tasks()
            .map(|t| {
                let e = self
                    .estimator
                    .as_ref()
                    .and_then(|f| f(&t))
                    .or_else(|| t.estimate());
                known |= e.is_some();
                e.unwrap_or(Duration::ZERO)
            })
            .collect();
        // Without any estimate every task weighs one unit; with some, unknown ones weigh 0.
        let weight: Vec<u64> = est
            .iter()
            .map(|d| {
                if known {
                    d.as_nanos().min(u64::MAX as u128) as u64
                } else {
                    1
                }
            })
            .collect();
        let rank = upward_rank(dag, |u| weight[u as usize]);
        let mut depth = vec![0u32; dag.len()];
        for &u in &dag.topological_order() {
            for s in dag.successors(u) {
                depth[s as usize] = depth[s as usize].max(depth[u as usize] + 1);
            }
        }
        let nlevels = depth.iter().max().map_or(0, |&d| d as usize + 1);
        let mut levels: Vec<Vec<u32>> = vec![Vec::new(); nlevels];
        for (i, &d) in depth.iter().enumerate() {
            levels[d as usize].push(i as u32);
        }
        let prio = |i: u32| graph.0.nodes[i as usize].priority();
        for l in &mut levels {
            l.sort_by_key(|&i| {
                (
                    std::cmp::Reverse(prio(i)),
                    std::cmp::Reverse(rank[i as usize]),
                    i,
                )
            });
        }
        let mut critical = Vec::new();
        let mut cur = dag
            .roots()
            .iter()
            .copied()
            .max_by_key(|&r| (rank[r as usize], std::cmp::Reverse(r)));
        while let Some(u) = cur {
            critical.push(u);
            cur = dag
                .successors(u)
                .max_by_key(|&s| (rank[s as usize], std::cmp::Reverse(s)));
        }
        let total: u64 = weight.iter().fold(0u64, |a, &w| a.saturating_add(w));
        let cp = critical.first().map_or(0, |&r| rank[r as usize]);
        Plan {
            graph: graph.clone(),
            levels,
            critical,
            critical_weight: cp,
            total_weight: total,
            timed: known,
            weight,
            rank,
        }
    }
}

/// An execution plan: levels, the critical path, and the work it implies.
#[derive(Clone)]
pub struct Plan {
    graph: Graph,
    levels: Vec<Vec<u32>>,
    critical: Vec<u32>,
    critical_weight: u64,
    total_weight: u64,
    timed: bool,
    /// Each task's weight (its estimate in ns, or 1 when untimed) and upward rank.
    weight: Vec<u64>,
    rank: Vec<u64>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("levels", &self.levels.len())
            .field("critical_path", &self.critical_path())
            .finish()
    }
}

impl Plan {
    fn id(&self, i: u32) -> &str {
        self.graph.0.ids.get(i as usize)
    }

    /// The levels, each a list of task ids in priority order (highest first, then longest
    /// remaining critical path).
    pub fn levels(&self) -> Vec<Vec<&str>> {
        self.levels
            .iter()
            .map(|l| l.iter().map(|&i| self.id(i)).collect())
            .collect()
    }

    /// The ids along the critical path, first to last.
    pub fn critical_path(&self) -> Vec<&str> {
        self.critical.iter().map(|&i| self.id(i)).collect()
    }

    /// Whether durations came from estimates (otherwise every task counts as one unit).
    pub fn is_timed(&self) -> bool {
        self.timed
    }

    /// Length of the critical path: a duration when estimates are known, else a task count
    /// expressed as nanoseconds (one per task).
    pub fn critical_path_length(&self) -> Duration {
        Duration::from_nanos(self.critical_weight)
    }

    /// Sum of all estimates (see [`Plan::critical_path_length`] for units).
    pub fn total_work(&self) -> Duration {
        Duration::from_nanos(self.total_weight)
    }

    /// No schedule on `workers` workers can finish sooner than this:
    /// `max(critical path, total work / workers)`.
    pub fn lower_bound(&self, workers: usize) -> Duration {
        let per = self.total_weight / workers.max(1) as u64;
        Duration::from_nanos(self.critical_weight.max(per))
    }

    /// The makespan of nerv's own order on `workers` workers, if every task took exactly its
    /// estimate and scheduling cost nothing: a list schedule that starts, whenever a worker is
    /// free, the ready task of highest priority, then longest remaining critical path (see
    /// [`Plan::critical_path_length`] for units). Compare it with [`Plan::lower_bound`].
    pub fn estimated_makespan(&self, workers: usize) -> Duration {
        let key = self.order_keys().unwrap_or_else(|| self.rank.clone());
        Duration::from_nanos(list_schedule(
            &self.graph.0.dag,
            &self.weight,
            |i| self.graph.0.nodes[i as usize].priority(),
            &key,
            workers,
        ))
    }

    /// The graph's order keys ([`TaskBuilder::order_key`](crate::TaskBuilder::order_key),
    /// 0 for a task without one), if it has any.
    fn order_keys(&self) -> Option<Vec<u64>> {
        let keyed = self.graph.tasks().any(|t| t.order_key().is_some());
        keyed.then(|| {
            self.graph
                .tasks()
                .map(|t| t.order_key().unwrap_or(0))
                .collect()
        })
    }

    /// Searches for a ready order that finishes sooner than critical-path-first on `workers`
    /// workers, in simulation ([`estimated_makespan`](Self::estimated_makespan)'s protocol).
    /// It tries `tries` key vectors, each the upward ranks (or the best keys so far, every
    /// other try) plus a random offset per task of up to 2 % to 100 % of the largest rank,
    /// and keeps the best; the first is the ranks themselves, so the result is never worse
    /// than critical-path-first in simulation. Give task `i` of the graph
    /// [`order_key(keys[i])`](crate::TaskBuilder::order_key) to run in that order, or build
    /// with [`GraphBuilder::search_order`](crate::GraphBuilder::search_order), which does
    /// both. Priorities still come first. Deterministic; costs `tries` simulations
    /// ([`default_tries`](Self::default_tries) is a good number).
    pub fn search_order(&self, workers: usize, tries: usize) -> SearchedOrder {
        let (keys, best, ranked) = search_keys(
            &self.graph.0.dag,
            &self.weight,
            |i| self.graph.0.nodes[i as usize].priority(),
            &self.rank,
            workers,
            tries,
        );
        SearchedOrder {
            keys,
            makespan: Duration::from_nanos(best),
            ranked_makespan: Duration::from_nanos(ranked),
            tried: tries.max(1),
        }
    }

    /// A number of tries for [`search_order`](Self::search_order): about 5 × 10^6 / (tasks +
    /// edges) simulations, between 16 and 50 000, which cost 0.1-0.3 s on this project's
    /// machines up to some 300 000 tasks and edges, proportionally more beyond.
    pub fn default_tries(&self) -> usize {
        default_tries(self.graph.len(), self.graph.0.dag.edge_count())
    }

    /// The widest level's size (the most tasks that can ever run at once by levels).
    pub fn max_parallelism(&self) -> usize {
        self.levels.iter().map(Vec::len).max().unwrap_or(0)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |w: u64| {
            if self.timed {
                format!("{:?}", Duration::from_nanos(w))
            } else {
                format!("{w} tasks")
            }
        };
        writeln!(
            f,
            "plan: {} tasks, {} levels, critical path {} (total work {})",
            self.graph.len(),
            self.levels.len(),
            len(self.critical_weight),
            len(self.total_weight)
        )?;
        for (k, l) in self.levels.iter().enumerate() {
            write!(f, "  level {k}:")?;
            for &i in l {
                let p = self.graph.0.nodes[i as usize].priority();
                if p == Priority::Medium {
                    write!(f, " {}", self.id(i))?;
                } else {
                    write!(f, " {} [{p}]", self.id(i))?;
                }
            }
            writeln!(f)?;
        }
        writeln!(f, "  critical path: {}", self.critical_path().join(" → "))
    }
}
