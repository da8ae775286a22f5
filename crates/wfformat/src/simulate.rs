//! An ideal list scheduler, simulated: what a makespan would be on `P` identical processors
//! with zero overhead, when every free processor takes the best ready task at once.
//!
//! It separates the two reasons a replay can miss the lower bound: the bound itself may be
//! unreachable (a fork of 8 equal tasks on 4 processors needs two rounds, whatever the order),
//! and the real scheduler may deviate from the ideal order or add overhead. `nerv plan` can show
//! [`simulate`]'s makespan as the plan's estimate next to the bound.
//!
//! Protocol: time starts at 0 with the roots ready; at each instant, (1) tasks finishing now
//! release their children (a child is ready when its last parent finished), then (2) free
//! processors take ready tasks best first, then (3) time jumps to the next finish.

use crate::graph::{GraphOptions, Order};
use crate::model::Workflow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A ready task's sort key (larger runs first) and the task.
type Ready = ((u64, u64, Reverse<usize>), usize);

/// Which ready task a free processor takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The longest remaining critical path (upward rank) first; ties in file order.
    Rank,
    /// The one that became ready first; ties in file order (first come, first served).
    Fcfs,
}

/// The makespan of `workflow` at `scale` on `workers` processors under `policy` (see the
/// module docs).
pub fn simulate(workflow: &Workflow, scale: f64, workers: usize, policy: Policy) -> Duration {
    let (dur, rank) = durations_and_ranks(workflow, scale);
    let key = |i: usize, ready_at: u64| -> (u64, u64, Reverse<usize>) {
        match policy {
            Policy::Rank => (rank[i], 0, Reverse(i)),
            Policy::Fcfs => (0, u64::MAX - ready_at, Reverse(i)),
        }
    };
    Duration::from_nanos(list_schedule(workflow, &dur, workers, key))
}

/// Each task's scaled runtime and upward rank, in nanoseconds.
fn durations_and_ranks(workflow: &Workflow, scale: f64) -> (Vec<u64>, Vec<u64>) {
    let nanos = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    let dur = workflow
        .tasks()
        .iter()
        .map(|t| nanos(t.scaled_runtime(scale)))
        .collect();
    let rank = workflow
        .upward_ranks(scale)
        .into_iter()
        .map(nanos)
        .collect();
    (dur, rank)
}

/// Each task's head: the longest chain of its ancestors' durations `p` (its earliest start).
fn heads(workflow: &Workflow, p: &[u64]) -> Vec<u64> {
    let mut head = vec![0u64; workflow.len()];
    for &u in workflow.topological_order() {
        for &c in workflow.children_of(u) {
            head[c] = head[c].max(head[u].saturating_add(p[u]));
        }
    }
    head
}

/// What [`search_order`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchedOrder {
    /// A key per task (in file order; larger runs first): give task `i` `.order_key(keys[i])`
    /// (`nerv::TaskBuilder::order_key`), as [`Order::Searched`](crate::Order::Searched) does.
    pub keys: Vec<u64>,
    /// The simulated makespan of that order.
    pub makespan: Duration,
    /// The simulated makespan of the critical-path-first order ([`Policy::Rank`]), where the
    /// search starts: `makespan` is never larger.
    pub rank_makespan: Duration,
    /// How many orders were simulated.
    pub tried: usize,
}

/// Searches for a better list-schedule order than critical-path-first, by simulation: nerv's
/// own search ([`nerv::Plan::search_order`]) over the trace's runtimes at `scale`, on a
/// planning graph in file order.
///
/// Critical-path-first is a good order, not the best: on a trace whose bound is work / P,
/// starting a long task a little later can fill the processors better. This tries `tries`
/// orders, each the upward ranks (or the best keys so far, every other try) plus a random
/// offset per task of up to 2 %, 5 %, 10 %, 30 % or 100 % of the largest rank in turn, simulates
/// each ([`simulate`]'s protocol) and keeps the best; the first is the ranks themselves, so the
/// result is never worse than [`Policy::Rank`] in simulation. Deterministic (a fixed seed).
/// Cost: `tries` simulations, each O(E + n log n); see [`default_tries`].
pub fn search_order(
    workflow: &Workflow,
    scale: f64,
    workers: usize,
    tries: usize,
) -> SearchedOrder {
    let opts = GraphOptions::scaled(scale)
        .order(Order::Estimated)
        .without_sleep();
    let graph = workflow
        .to_graph_keyed(&opts, &[])
        .expect("a parsed workflow is a valid graph");
    let found = graph.plan().search_order(workers, tries);
    SearchedOrder {
        keys: found.keys,
        makespan: found.makespan,
        rank_makespan: found.ranked_makespan,
        tried: found.tried,
    }
}

/// A number of tries for [`search_order`], as [`nerv::Plan::default_tries`] counts them: about
/// 5 × 10^6 / (tasks + edges) simulations, between 16 and 50 000 (0.1-0.3 s on this project's
/// machines for every trace here).
pub fn default_tries(workflow: &Workflow) -> usize {
    (5_000_000 / (workflow.len() + workflow.edge_count() + 1)).clamp(16, 50_000)
}

/// The makespan (in nanoseconds) of the list schedule of `workflow` with durations `dur` on
/// `workers` processors, taking ready tasks by largest `key(task, ready at)` (the protocol of
/// the module docs).
fn list_schedule(
    workflow: &Workflow,
    dur: &[u64],
    workers: usize,
    key: impl Fn(usize, u64) -> (u64, u64, Reverse<usize>),
) -> u64 {
    let n = workflow.len();
    let mut missing: Vec<usize> = (0..n).map(|i| workflow.parents_of(i).len()).collect();
    let mut ready: BinaryHeap<Ready> = (0..n)
        .filter(|&i| missing[i] == 0)
        .map(|i| (key(i, 0), i))
        .collect();
    let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut now = 0u64;
    let mut done = 0;
    let mut end = 0u64;
    let workers = workers.max(1);
    while done < n {
        while running.len() < workers {
            let Some((_, i)) = ready.pop() else { break };
            let fin = now.saturating_add(dur[i]);
            running.push(Reverse((fin, i)));
        }
        let Some(Reverse((t, _))) = running.peek().copied() else {
            break; // unreachable for a validated (acyclic) workflow
        };
        now = t;
        while let Some(&Reverse((t, i))) = running.peek() {
            if t != now {
                break;
            }
            running.pop();
            done += 1;
            end = end.max(t);
            for &c in workflow.children_of(i) {
                missing[c] -= 1;
                if missing[c] == 0 {
                    ready.push((key(c, now), c));
                }
            }
        }
    }
    end
}

/// A lower bound on the makespan of `workflow` at `scale` on `workers` processors, by
/// counting: `k` tasks on `P` processors put at least `⌈k / P⌉` of them on one processor, one
/// after the other.
///
/// For each `k`, take the `k` longest tasks: the processor that runs `m = ⌈k / P⌉` of them
/// cannot start the first before the earliest head among them (its longest chain of
/// ancestors), runs them for at least the sum of the `m` shortest of them, and after the last
/// one, that task's tail (its longest chain of descendants) still has to run: at least the
/// shortest tail among them. The bound is the largest such sum over `k`, and never below
/// [`Workflow::lower_bound`]. It sees what work / P and the interval bound do not: 21 tasks of
/// about 16 s on 4 processors need 6 rounds, not 5.25. O(n log n).
pub fn pigeonhole_lower_bound(workflow: &Workflow, scale: f64, workers: usize) -> Duration {
    let n = workflow.len();
    let (p, rank) = durations_and_ranks(workflow, scale);
    let head = heads(workflow, &p);
    let workers = workers.max(1);
    // Longest first: the k longest are a prefix.
    let mut by_len: Vec<usize> = (0..n).collect();
    by_len.sort_unstable_by_key(|&i| Reverse(p[i]));
    // prefix[j]: the sum of the j longest runtimes.
    let mut prefix = vec![0u64; n + 1];
    for (j, &i) in by_len.iter().enumerate() {
        prefix[j + 1] = prefix[j].saturating_add(p[i]);
    }
    let (mut min_head, mut min_tail) = (u64::MAX, u64::MAX);
    let mut best = 0u64;
    for (j, &i) in by_len.iter().enumerate() {
        let k = j + 1;
        min_head = min_head.min(head[i]);
        min_tail = min_tail.min(rank[i] - p[i]);
        let m = k.div_ceil(workers);
        // The m shortest of the k longest: positions k - m .. k.
        let run = prefix[k] - prefix[k - m];
        best = best.max(min_head.saturating_add(run).saturating_add(min_tail));
    }
    Duration::from_nanos(best).max(workflow.lower_bound(scale, workers))
}

/// A lower bound on the makespan of `workflow` at `scale` on `workers` processors that is at
/// least [`Workflow::lower_bound`] and often tighter: the interval ("energy") bound of
/// Fernandez and Bussell (1973).
///
/// For a candidate makespan `C`, task `i` can start no sooner than its head `r_i` (longest
/// chain of ancestors) and must finish by `C - tail_i` (longest chain of descendants). For any
/// interval `[a, b]`, the part of each task that must run inside it, summed, cannot exceed
/// `workers × (b - a)`; the smallest `C` passing that test for every interval (found by
/// bisection, to 0.01 %) is the bound. Cost: O(n³) per test, about 30 tests: meant for traces
/// of a few hundred tasks, not for every `nerv plan`.
pub fn interval_lower_bound(workflow: &Workflow, scale: f64, workers: usize) -> Duration {
    let n = workflow.len();
    let (p, rank) = durations_and_ranks(workflow, scale);
    let tail: Vec<u64> = (0..n).map(|i| rank[i] - p[i]).collect();
    let head = heads(workflow, &p);
    let workers = workers.max(1) as u128;
    let feasible = |c: u64| -> bool {
        let dl: Vec<u64> = (0..n).map(|i| c.saturating_sub(tail[i])).collect();
        let mut starts: Vec<u64> = (0..n)
            .flat_map(|i| [head[i], dl[i].saturating_sub(p[i])])
            .collect();
        let mut ends: Vec<u64> = (0..n).flat_map(|i| [dl[i], head[i] + p[i]]).collect();
        starts.sort_unstable();
        starts.dedup();
        ends.sort_unstable();
        ends.dedup();
        for &a in &starts {
            for &b in ends.iter().filter(|&&b| b > a) {
                let mut need: u128 = 0;
                for i in 0..n {
                    // Mandatory part of task i inside [a, b]: it runs somewhere in
                    // [head, dl]; the least overlap is with it pushed left or right.
                    let left = (head[i] + p[i]).saturating_sub(a); // run as early as possible
                    let right = b.saturating_sub(dl[i].saturating_sub(p[i])); // as late
                    let m = p[i].min(b - a).min(left).min(right);
                    need += m as u128;
                }
                if need > workers * (b - a) as u128 {
                    return false;
                }
            }
        }
        true
    };
    let simple = workflow.lower_bound(scale, workers as usize);
    let mut lo = simple.as_nanos().min(u64::MAX as u128) as u64;
    if feasible(lo) {
        return simple;
    }
    let mut hi = simulate(workflow, scale, workers as usize, Policy::Rank)
        .as_nanos()
        .min(u64::MAX as u128) as u64;
    // Invariant: lo infeasible, hi feasible (a schedule of length hi exists).
    while hi - lo > (hi / 10_000).max(1) {
        let mid = lo + (hi - lo) / 2;
        if feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Duration::from_nanos(lo)
}
