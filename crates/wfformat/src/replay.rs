//! Replay measurement: run a trace's graph on `P` workers, time it, and compare the makespan
//! with the lower bound `max(critical path, total work / P)` at the same scale, for nerv's
//! order ([`Order::Ranked`]) and for the first-come-first-served baseline ([`Order::Fcfs`]).
//!
//! Protocol of [`replay`]:
//! 1. Build both graphs first (validation and ranking are not timed).
//! 2. For each order, build a fresh executor with `P` workers (and the memory budget, if
//!    any), then time `Executor::run` with a monotonic clock: from the call to the report.
//! 3. The bound comes from nerv's own plan of the ranked graph (`Plan::lower_bound(P)`), whose
//!    estimates are exactly the durations the tasks sleep.
//!
//! The target is `makespan ≤ 1.05 × lower bound + 20 ms` ([`Replay::meets_target`]).

use crate::graph::{GraphOptions, Order, MEMORY_RESOURCE};
use crate::model::Workflow;
use crate::simulate::{default_tries, pigeonhole_lower_bound, search_order, simulate, Policy};
use nerv::{Executor, GraphError, RunStatus};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The target factor on the lower bound.
pub const TARGET_FACTOR: f64 = 1.05;
/// The target slack over `TARGET_FACTOR × lower bound`.
pub const TARGET_SLACK: Duration = Duration::from_millis(20);

/// Options of [`replay`] and [`measure`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    /// Workers (processors) P (default 4).
    pub workers: usize,
    /// Runtime scale (default 0.001).
    pub scale: f64,
    /// Memory budget in bytes (see [`GraphOptions::memory_limit`]); `None` ignores memory.
    pub memory_limit: Option<u64>,
    /// Whether [`replay`] also runs the FCFS baseline (default true).
    pub baseline: bool,
    /// nerv's order in [`replay`]: [`Order::Ranked`] (the default) or, for a better schedule
    /// found by simulation first, [`Order::Searched`].
    pub order: Order,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            workers: 4,
            scale: 0.001,
            memory_limit: None,
            baseline: true,
            order: Order::Ranked,
        }
    }
}

/// One timed run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// The order the graph was built with.
    pub order: Order,
    /// Wall time of `Executor::run`.
    pub makespan: Duration,
    /// Tasks that completed (all of them in a successful replay).
    pub completed: usize,
    /// Whether the run completed.
    pub ok: bool,
}

/// The bounds of a trace at one scale on `workers` processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The longest chain of scaled runtimes.
    pub critical_path: Duration,
    /// The sum of scaled runtimes.
    pub total_work: Duration,
    /// `max(critical_path, total_work / workers)`.
    pub lower_bound: Duration,
    /// [`pigeonhole_lower_bound`]: at least `lower_bound`, and above it where some processor
    /// must run more long tasks than work / P says.
    pub pigeonhole: Duration,
}

/// The result of [`replay`].
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The workflow's name.
    pub trace: String,
    /// Number of tasks.
    pub tasks: usize,
    /// Workers P.
    pub workers: usize,
    /// Runtime scale.
    pub scale: f64,
    /// Bounds at that scale.
    pub bounds: Bounds,
    /// nerv's run, in [`ReplayOptions::order`].
    pub nerv: Measurement,
    /// The FCFS baseline, when run.
    pub fcfs: Option<Measurement>,
    /// The makespan of the ideal list schedule in nerv's order: critical-path-first
    /// ([`simulate`] with [`Policy::Rank`]), or for [`Order::Searched`] the searched order's
    /// ([`search_order`]): what the scheduler can reach without overhead.
    pub simulated: Duration,
    /// The same with [`Policy::Fcfs`].
    pub simulated_fcfs: Duration,
}

fn ratio(m: Duration, lb: Duration) -> f64 {
    if lb.is_zero() {
        f64::INFINITY
    } else {
        m.as_secs_f64() / lb.as_secs_f64()
    }
}

impl Replay {
    /// nerv's makespan over the lower bound.
    pub fn ratio(&self) -> f64 {
        ratio(self.nerv.makespan, self.bounds.lower_bound)
    }

    /// The baseline's makespan over the lower bound.
    pub fn fcfs_ratio(&self) -> Option<f64> {
        self.fcfs
            .map(|m| ratio(m.makespan, self.bounds.lower_bound))
    }

    /// The largest makespan the target allows: `1.05 × lower bound + 20 ms`.
    pub fn target(&self) -> Duration {
        self.bounds.lower_bound.mul_f64(TARGET_FACTOR) + TARGET_SLACK
    }

    /// Whether nerv's makespan is within [`Replay::target`].
    pub fn meets_target(&self) -> bool {
        self.nerv.makespan <= self.target()
    }

    /// Whether nerv finished sooner than the baseline (true when no baseline ran).
    pub fn beats_fcfs(&self) -> bool {
        !matches!(self.fcfs, Some(f) if f.makespan <= self.nerv.makespan)
    }

    /// The benchmark's JSON record (field names of `nerv bench replay --json`).
    pub fn record(&self) -> ReplayRecord {
        let mut rec = ReplayRecord {
            trace: self.trace.clone(),
            tasks: self.tasks,
            workers: self.workers,
            scale: self.scale,
            order: self.nerv.order.as_str(),
            makespan_s: self.nerv.makespan.as_secs_f64(),
            lower_bound_s: self.bounds.lower_bound.as_secs_f64(),
            ratio: self.ratio(),
            fcfs_makespan_s: self.fcfs.map(|m| m.makespan.as_secs_f64()),
            fcfs_ratio: self.fcfs_ratio(),
            critical_path_s: self.bounds.critical_path.as_secs_f64(),
            pigeonhole_bound_s: self.bounds.pigeonhole.as_secs_f64(),
            work_per_worker_s: self.bounds.total_work.as_secs_f64() / self.workers.max(1) as f64,
            meets_target: self.meets_target(),
            sim_s: self.simulated.as_secs_f64(),
            sim_fcfs_s: self.simulated_fcfs.as_secs_f64(),
            ratio_to_sim: ratio(self.nerv.makespan, self.simulated),
            interval_lower_bound_s: None,
            target_s: self.target().as_secs_f64(),
            best_bound_s: 0.0,
            best_bound_ratio: 0.0,
            target_reachable: true,
        };
        rec.update_best_bound();
        rec
    }
}

/// One line of `nerv bench replay --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRecord {
    /// The workflow's name (or file stem, as the caller sets it).
    pub trace: String,
    /// Number of tasks.
    pub tasks: usize,
    /// Workers P.
    pub workers: usize,
    /// Runtime scale.
    pub scale: f64,
    /// nerv's order ([`Order::as_str`]).
    pub order: &'static str,
    /// nerv's makespan, seconds.
    pub makespan_s: f64,
    /// `max(critical path, work / P)`, seconds.
    pub lower_bound_s: f64,
    /// `makespan_s / lower_bound_s`.
    pub ratio: f64,
    /// The FCFS baseline's makespan, seconds.
    pub fcfs_makespan_s: Option<f64>,
    /// `fcfs_makespan_s / lower_bound_s`.
    pub fcfs_ratio: Option<f64>,
    /// Critical path, seconds.
    pub critical_path_s: f64,
    /// [`Bounds::pigeonhole`], seconds: where it is above the target, no schedule meets it.
    pub pigeonhole_bound_s: f64,
    /// Total work / P, seconds.
    pub work_per_worker_s: f64,
    /// `makespan ≤ 1.05 × lower bound + 20 ms`.
    pub meets_target: bool,
    /// The ideal list schedule's makespan in nerv's order, seconds ([`Replay::simulated`]).
    pub sim_s: f64,
    /// The ideal FCFS list schedule's makespan, seconds.
    pub sim_fcfs_s: f64,
    /// `makespan_s / sim_s`: nerv against the ideal list scheduler.
    pub ratio_to_sim: f64,
    /// [`interval_lower_bound`](crate::interval_lower_bound), seconds, when the caller
    /// computed it (it is expensive on large traces; [`Replay::record`] leaves it `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_lower_bound_s: Option<f64>,
    /// The target, `1.05 × lower bound + 20 ms`, seconds.
    pub target_s: f64,
    /// The best proven lower bound: the largest of `lower_bound_s`, `pigeonhole_bound_s` and
    /// `interval_lower_bound_s` (when computed), seconds. No schedule on P processors finishes
    /// sooner.
    pub best_bound_s: f64,
    /// `makespan_s / best_bound_s`: how far nerv is from what any scheduler could reach.
    pub best_bound_ratio: f64,
    /// Whether any schedule could meet the target: `best_bound_s ≤ target_s`. Where this is
    /// false, the target is below a proven lower bound and its miss says nothing of the
    /// scheduler.
    pub target_reachable: bool,
}

impl ReplayRecord {
    /// Sets the interval bound (computed by the caller) and the fields that depend on it.
    pub fn set_interval_bound(&mut self, seconds: f64) {
        self.interval_lower_bound_s = Some(seconds);
        self.update_best_bound();
    }

    /// Computes `best_bound_s`, `best_bound_ratio` and `target_reachable` from its bounds.
    fn update_best_bound(&mut self) {
        self.best_bound_s = self
            .lower_bound_s
            .max(self.pigeonhole_bound_s)
            .max(self.interval_lower_bound_s.unwrap_or(0.0));
        self.best_bound_ratio = if self.best_bound_s > 0.0 {
            self.makespan_s / self.best_bound_s
        } else {
            f64::INFINITY
        };
        self.target_reachable = self.best_bound_s <= self.target_s;
    }
}

/// The scale at which the trace's lower bound on `workers` processors is `target` (1 for an
/// empty or zero-length trace).
pub fn scale_for(workflow: &Workflow, workers: usize, target: Duration) -> f64 {
    let lb = workflow.lower_bound(1.0, workers).as_secs_f64();
    if lb > 0.0 {
        target.as_secs_f64() / lb
    } else {
        1.0
    }
}

/// The bounds of `workflow` at `scale` on `workers`, from nerv's plan of the ranked graph
/// (the estimates are exactly the scaled runtimes the tasks sleep).
pub fn bounds(workflow: &Workflow, scale: f64, workers: usize) -> Result<Bounds, GraphError> {
    let g = workflow.to_graph(&GraphOptions::scaled(scale).without_sleep())?;
    let plan = g.plan();
    Ok(Bounds {
        critical_path: plan.critical_path_length(),
        total_work: plan.total_work(),
        lower_bound: plan.lower_bound(workers),
        pigeonhole: pigeonhole_lower_bound(workflow, scale, workers),
    })
}

fn executor(opts: &ReplayOptions) -> Executor {
    let mut b = Executor::builder().workers(opts.workers.max(1));
    if let Some(limit) = opts.memory_limit {
        b = b.resource(MEMORY_RESOURCE, limit);
    }
    b.build()
}

fn graph_options(opts: &ReplayOptions, order: Order) -> GraphOptions {
    GraphOptions {
        scale: opts.scale,
        order,
        memory_limit: opts.memory_limit,
        sleep: true,
    }
}

fn time_run(graph: &nerv::Graph, order: Order, opts: &ReplayOptions) -> Measurement {
    let exec = executor(opts);
    let t0 = Instant::now();
    let report = exec.run(graph);
    let makespan = t0.elapsed();
    Measurement {
        order,
        makespan,
        completed: report.counts().completed,
        ok: report.status() == RunStatus::Completed,
    }
}

/// Runs `workflow` once with `order` on a fresh executor and times it.
pub fn measure(
    workflow: &Workflow,
    order: Order,
    opts: &ReplayOptions,
) -> Result<Measurement, GraphError> {
    let graph = workflow.to_graph(&graph_options(opts, order))?;
    Ok(time_run(&graph, order, opts))
}

/// Replays `workflow` with nerv's order and (unless `opts.baseline` is off) the FCFS
/// baseline, and computes the bound (see the module docs).
pub fn replay(workflow: &Workflow, opts: &ReplayOptions) -> Result<Replay, GraphError> {
    let bounds = bounds(workflow, opts.scale, opts.workers.max(1))?;
    // A searched order is searched once: for the graph's keys and its simulated makespan.
    let searched = match opts.order {
        Order::Searched { workers } => Some(search_order(
            workflow,
            opts.scale,
            workers,
            default_tries(workflow),
        )),
        _ => None,
    };
    let keys = searched.as_ref().map_or(&[][..], |s| &s.keys[..]);
    let ranked = workflow.to_graph_keyed(&graph_options(opts, opts.order), keys)?;
    let fcfs = if opts.baseline {
        Some(workflow.to_graph(&graph_options(opts, Order::Fcfs))?)
    } else {
        None
    };
    let nerv = time_run(&ranked, opts.order, opts);
    let p = opts.workers.max(1);
    let simulated = match &searched {
        Some(s) => s.makespan,
        None => simulate(workflow, opts.scale, p, Policy::Rank),
    };
    let fcfs = fcfs.map(|g| time_run(&g, Order::Fcfs, opts));
    Ok(Replay {
        trace: workflow.name().to_string(),
        tasks: workflow.len(),
        workers: opts.workers.max(1),
        scale: opts.scale,
        bounds,
        nerv,
        fcfs,
        simulated,
        simulated_fcfs: simulate(workflow, opts.scale, p, Policy::Fcfs),
    })
}
