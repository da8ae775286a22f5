//! `nerv plan FILE`: levels, critical path, total work and lower bound, from the tasks'
//! `estimate` keys, else from the history of the workflow's runs (a moving average over the
//! last 10: the journal's, or with `--db` the PostgreSQL server's), else every task counts as
//! one unit.

use crate::args::{cpus, PlanArgs, ReadyOrder};
use crate::exit::{CliError, Exit};
use crate::out::outln;
use nerv::TaskError;
use nerv_cli::workflow::{Command, Workflow};
use serde_json::{json, Value};
use std::time::Duration;

/// Runs `nerv plan`.
pub fn run(args: PlanArgs) -> Result<Exit, CliError> {
    let wf = Workflow::load(&args.file)?;
    let graph = wf.graph_with(|b, _| {
        b.run((), |_, ()| Ok::<(), TaskError>(()));
    })?;
    // Tasks without an `estimate` are estimated from the history of this workflow (a moving
    // average over its last 10 runs): the server's with `--db`, else the journal's.
    let (history, source) = match &args.db {
        Some(url) => (crate::cmd::db::server_history(url, &wf.name)?, "server"),
        None => (
            crate::cmd::run::workflow_id(&args.file)
                .ok()
                .and_then(|id| {
                    let store = crate::history::open_reader(&wf.base_dir).ok()?;
                    nerv_journal::JournalStore::task_durations(&store, &id, 10).ok()
                })
                .unwrap_or_default(),
            "journal",
        ),
    };
    // How many tasks the history estimates (those without an `estimate` of their own).
    let from_history = wf
        .tasks
        .iter()
        .filter(|t| t.estimate.is_none() && history.contains_key(&t.id))
        .count();
    let workers = args.jobs.map_or_else(cpus, |j| j as usize);
    // The counting bound of the same estimates (never below max(critical path, work /
    // workers)).
    let model = crate::cmd::run::model(&wf, &history)?;
    let pigeonhole = nerv_wfformat::pigeonhole_lower_bound(&model, 1.0, workers);
    let plan = nerv::Planner::new()
        .estimate_with(move |t| t.estimate().or_else(|| history.get(t.id()).copied()))
        .plan(&graph);
    // With `--order searched`, the searched order's simulated makespan.
    let searched = (args.order == ReadyOrder::Searched)
        .then(|| plan.search_order(workers, plan.default_tries()).makespan);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        let tasks: Vec<Value> = wf
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "name": t.name, "item": t.item, "needs": t.needs,
                    "run": match &t.command { Command::Shell(s) => json!({"shell": s}), Command::Exec(a) => json!({"exec": a}) },
                    "priority": t.priority.as_str(),
                    "timeout_ms": t.timeout.map(ms),
                    "attempts": t.retry.map_or(1, |r| r.attempts),
                    "uses": t.uses, "env": t.env, "estimate_ms": t.estimate.map(ms),
                    "description": t.description,
                })
            })
            .collect();
        let (unit, cp, work, lb) = if plan.is_timed() {
            (
                "ms",
                json!(ms(plan.critical_path_length())),
                json!(ms(plan.total_work())),
                json!(ms(plan.lower_bound(workers))),
            )
        } else {
            // Untimed: nerv counts one nanosecond per task.
            let n = |d: Duration| json!(d.as_nanos() as u64);
            (
                "tasks",
                n(plan.critical_path_length()),
                n(plan.total_work()),
                n(plan.lower_bound(workers)),
            )
        };
        let v = json!({
            "workflow": wf.name, "file": wf.path.display().to_string(), "tasks": tasks,
            "levels": plan.levels(), "critical_path": plan.critical_path(),
            "timed": plan.is_timed(), "unit": unit, "critical_path_length": cp,
            "total_work": work, "lower_bound": lb, "workers": workers,
            "estimated_makespan": if plan.is_timed() {
                json!(ms(plan.estimated_makespan(workers)))
            } else {
                json!(plan.estimated_makespan(workers).as_nanos() as u64)
            },
            "max_parallelism": plan.max_parallelism(), "resources": wf.resources,
            "estimated_from_history": from_history, "history": source,
        });
        let mut v = v;
        if plan.is_timed() {
            v["pigeonhole_bound"] = json!(ms(pigeonhole));
            if let Some(m) = searched {
                v["searched_makespan"] = json!(ms(m));
            }
        }
        outln!("{v}");
        return Ok(Exit::Success);
    }
    let levels = plan.levels();
    outln!(
        "plan: {} ({} tasks, {} levels, at most {} at once)",
        wf.name,
        wf.tasks.len(),
        levels.len(),
        plan.max_parallelism()
    );
    for (i, l) in levels.iter().enumerate() {
        outln!("  level {i}: {}", level_line(l, args.full));
    }
    let path = plan.critical_path().join(" → ");
    if from_history > 0 {
        outln!(
            "estimates: {from_history} of {} tasks from the {source}'s history of this workflow (mean of its last 10 runs)",
            wf.tasks.len()
        );
    }
    if plan.is_timed() {
        let h = |d: Duration| humantime::format_duration(round_ms(d)).to_string();
        outln!("critical path: {path} ({})", h(plan.critical_path_length()));
        outln!("total work: {}", h(plan.total_work()));
        outln!(
            "lower bound on {workers} workers: {} (max(critical path, total work / workers))",
            h(plan.lower_bound(workers))
        );
        if pigeonhole > plan.lower_bound(workers) {
            outln!(
                "lower bound by counting: {} (some worker runs ⌈k / {workers}⌉ of the k longest tasks)",
                h(pigeonhole)
            );
        }
        outln!(
            "estimated makespan on {workers} workers: {} (nerv's order: priority, then longest remaining path)",
            h(plan.estimated_makespan(workers))
        );
        if let Some(m) = searched {
            outln!(
                "estimated makespan on {workers} workers, searched order: {} (`nerv run --order searched`)",
                h(m)
            );
        }
    } else {
        outln!(
            "critical path: {path} ({} tasks)",
            plan.critical_path().len()
        );
        outln!("(add `estimate = \"2s\"` to tasks for a critical path and lower bound in time)");
    }
    Ok(Exit::Success)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Tasks a level line names before it abbreviates (`--full` names them all).
const LEVEL_NAMES: usize = 10;

/// A level's tasks, in the plan's order (priority, then longest remaining path): all of them
/// if `full` or if there are few, else the first [`LEVEL_NAMES`] and how many more.
fn level_line(tasks: &[&str], full: bool) -> String {
    if full || tasks.len() <= LEVEL_NAMES + 2 {
        return tasks.join(" ");
    }
    format!(
        "{} … and {} more ({} tasks; --full lists them)",
        tasks[..LEVEL_NAMES].join(" "),
        tasks.len() - LEVEL_NAMES,
        tasks.len()
    )
}
