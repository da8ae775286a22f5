//! Replays of WfCommons traces: `nerv run --replay TRACE.json` (one trace) and
//! `nerv bench replay DIR` (every trace of a folder), each reporting the achieved makespan
//! against the lower bound max(critical path, work / P) and the same run in first-come-first-
//! served order.
//!
//! A replay runs the trace in this process: each task sleeps its recorded runtime times the
//! scale on one of `-j` workers (P processors), with its runtime as its estimate, so nerv's
//! scheduler takes ready tasks by priority, then longest remaining critical path. Without
//! `--scale`, the scale is chosen so that the lower bound is `--target` seconds (default 2).
//! `--order searched` first searches a better order by simulating list schedules of the
//! trace's runtimes (`nerv_wfformat::search_order`) and runs the tasks in it.

use crate::args::{BenchReplayArgs, ReadyOrder, RunArgs};
use crate::exit::{CliError, Exit};
use crate::out::outln;
use nerv_wfformat::{parse_file, replay, scale_for, Order, ReplayOptions, Workflow};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn load(path: &Path) -> Result<Workflow, CliError> {
    parse_file(path).map_err(|e| CliError::Other(e.to_string()))
}

fn options(
    wf: &Workflow,
    workers: usize,
    scale: Option<f64>,
    target: f64,
    memory: Option<u64>,
    order: ReadyOrder,
) -> ReplayOptions {
    let scale = scale.unwrap_or_else(|| scale_for(wf, workers, Duration::from_secs_f64(target)));
    ReplayOptions {
        workers,
        scale,
        memory_limit: memory,
        baseline: true,
        order: match order {
            ReadyOrder::Ranked => Order::Ranked,
            ReadyOrder::Searched => Order::Searched { workers },
        },
    }
}

fn one(path: &Path, opts: &ReplayOptions, json: bool) -> Result<bool, CliError> {
    let wf = load(path)?;
    let r = replay(&wf, opts).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    let mut rec = r.record();
    rec.trace = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(rec.trace);
    if json {
        outln!(
            "{}",
            serde_json::to_string(&rec).expect("a record serializes")
        );
    } else {
        outln!(
            "{:<44} {:>5} tasks  P={}  scale {:.3e}  {} makespan {:.3}s  bound {:.3}s  ratio {:.3} ({})  fcfs {:.3}s ({:.3})  ideal list schedule {:.3}s",
            rec.trace,
            rec.tasks,
            rec.workers,
            rec.scale,
            rec.order,
            rec.makespan_s,
            rec.lower_bound_s,
            rec.ratio,
            match (rec.meets_target, rec.target_reachable) {
                (true, _) => "target met".to_string(),
                (false, true) => "target missed".to_string(),
                (false, false) => format!(
                    "target missed: below the counting bound {:.3}s, which no schedule beats; \
                     {:.3} of it",
                    rec.best_bound_s, rec.best_bound_ratio
                ),
            },
            rec.fcfs_makespan_s.unwrap_or(f64::NAN),
            rec.fcfs_ratio.unwrap_or(f64::NAN),
            rec.sim_s,
        );
    }
    Ok(r.nerv.ok)
}

/// `nerv run --replay TRACE.json`.
pub fn run(args: &RunArgs) -> Result<Exit, CliError> {
    let workers = args.exec.jobs.map_or(4, |j| j as usize);
    let wf = load(&args.file)?;
    let opts = options(
        &wf,
        workers,
        args.scale,
        args.target,
        args.memory_limit,
        args.exec.order,
    );
    drop(wf);
    Ok(if one(&args.file, &opts, args.exec.json)? {
        Exit::Success
    } else {
        Exit::TaskFailed
    })
}

/// `nerv bench replay DIR|FILE...`.
pub fn bench(args: BenchReplayArgs) -> Result<Exit, CliError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in &args.paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError::Other(format!("cannot read {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(CliError::Other("no trace (.json) found".into()));
    }
    let mut all_ok = true;
    for f in &files {
        let wf = load(f)?;
        let opts = options(
            &wf,
            args.jobs,
            args.scale,
            args.target,
            args.memory_limit,
            args.order,
        );
        drop(wf);
        all_ok &= one(f, &opts, args.json)?;
    }
    Ok(if all_ok {
        Exit::Success
    } else {
        Exit::TaskFailed
    })
}
