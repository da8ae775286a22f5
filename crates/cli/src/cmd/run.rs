//! `nerv run FILE`: runs a workflow file's commands on nerv's executor.
//!
//! Steps:
//! 1. Load and validate the file (exit 2 on error), create `.nerv/runs/<run-id>/logs`.
//! 2. Build the graph: each task is an async nerv task that runs one process per attempt
//!    (see `process.rs`) and uses one unit of the hidden resource `nerv:jobs` (capacity
//!    `-j N`), so that at most N commands run at once; `[resources]` become nerv resources.
//! 3. Start the run with an event bus whose handler feeds the display thread.
//! 4. Wait for the run, a SIGINT or a SIGTERM. The first signal cancels the run (running
//!    commands get SIGTERM, then SIGKILL after `--grace`); a second one kills them at once.
//! 5. Wait until every process group has ended, print the summary, and exit
//!    (0 / 1 / 130, see `exit.rs`).
//!
//! Extension point for the journal: the run id, the [`RunLayout`] and the event bus are
//! made here; a journal subscribes to the same bus (and `resume` passes
//! `RunOptions::resume`) without touching the display or the process code.

use crate::args::{cpus, RunArgs};
use crate::display::{Display, Mode, Summary, UiEvent};
use crate::exit::{CliError, Exit};
use crate::process::{run_attempt, Attempt, Reaper};
use nerv::{EventBus, EventFilter, EventKind, Executor, Planner, RunOptions};
use nerv_cli::layout::{new_run_id, RunLayout};
use nerv_cli::workflow::Workflow;
use serde_json::json;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The hidden resource that bounds how many commands run at once (`-j`). Workflow resource
/// names cannot contain `:`, so it never collides with one.
const JOBS: &str = "nerv:jobs";

/// Runs `nerv run`.
pub fn run(args: RunArgs) -> Result<Exit, CliError> {
    let wf = Workflow::load(&args.file)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("nerv-io")
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(wf, args))
}

async fn run_async(wf: Workflow, args: RunArgs) -> Result<Exit, CliError> {
    let jobs = args.jobs.map_or_else(cpus, |j| j as usize);
    let run_id = new_run_id();
    let layout = RunLayout::new(
        &wf.base_dir,
        &run_id,
        wf.tasks.iter().map(|t| t.id.as_str()),
    );
    layout.create().map_err(|e| {
        CliError::Other(format!(
            "cannot create the run folder {}: {e}",
            layout.run_dir.display()
        ))
    })?;
    let logs: HashMap<String, std::path::PathBuf> = wf
        .tasks
        .iter()
        .map(|t| (t.id.clone(), layout.log_file(&t.id)))
        .collect();

    // Signals first, so that a Ctrl-C during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Other(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| CliError::Other(format!("cannot handle SIGTERM: {e}")))?;

    let reaper = Reaper::new(args.grace);
    let run_id_arc: Arc<str> = run_id.clone().into();
    let graph = {
        let logs = logs.clone();
        wf.graph_with(|b, spec| {
            let spec = spec.clone();
            let reaper = reaper.clone();
            let run_id = run_id_arc.clone();
            let log = logs[&spec.id].clone();
            b.uses(JOBS, 1).run_async((), move |ctx, ()| {
                let spec = spec.clone();
                let reaper = reaper.clone();
                let a = Attempt {
                    run_id: run_id.clone(),
                    log: log.clone(),
                    attempt: ctx.attempt(),
                };
                async move { run_attempt(&spec, a, &reaper).await }
            });
        })?
    };

    let mode = if args.json {
        Mode::Json
    } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
        Mode::Live
    } else {
        Mode::Plain
    };
    let header = json!({
        "type": "run_started", "run_id": run_id, "workflow": wf.name,
        "file": wf.path.display().to_string(), "tasks": wf.tasks.len(),
        "jobs": jobs, "logs": layout.logs_dir.display().to_string(),
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    });
    let display = Display::start(mode, wf.tasks.len(), logs.clone(), header);

    let bus = EventBus::new();
    let tx = display.sender();
    let filter = EventFilter::kinds([
        EventKind::TaskStarted,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskRetrying,
        EventKind::TaskSkipped,
        EventKind::TaskCancelled,
    ]);
    let subscription = bus.subscribe(filter, move |e| {
        if let Some(ev) = UiEvent::from_event(e) {
            let _ = tx.send(ev);
        }
    });

    let mut builder = Executor::builder()
        .workers(2)
        .current_tokio()
        .events(bus)
        .resource(JOBS, jobs as u64);
    for (name, cap) in &wf.resources {
        builder = builder.resource(name, *cap);
    }
    let exec = builder.build();
    let mut opts = RunOptions::default().name(wf.name.clone());
    opts = if args.fail_fast {
        opts.fail_fast()
    } else {
        opts.keep_going()
    };

    let ui = display.sender();
    let run = exec.start_with(&graph, opts);
    tokio::pin!(run);
    let mut interrupted = false;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = sigint.recv() => on_signal(&mut interrupted, &reaper, &ui, || run.cancel()),
            _ = sigterm.recv() => on_signal(&mut interrupted, &reaper, &ui, || run.cancel()),
        }
    };
    // Every process group must be gone before the summary.
    loop {
        tokio::select! {
            () = reaper.wait_idle() => break,
            _ = sigint.recv() => on_signal(&mut interrupted, &reaper, &ui, || ()),
            _ = sigterm.recv() => on_signal(&mut interrupted, &reaper, &ui, || ()),
        }
    }
    drop(subscription);

    let durations: HashMap<String, Duration> = report
        .results()
        .into_iter()
        .map(|r| (r.id.clone(), r.execution_time))
        .collect();
    let plan = Planner::new()
        .estimate_with(move |t| Some(durations.get(t.id()).copied().unwrap_or_default()))
        .plan(&graph);
    let counts = report.counts();
    let exit = Exit::of_run(report.status(), interrupted);
    let summary = Summary {
        run_id,
        completed: counts.completed,
        failed: counts.failed,
        skipped: counts.skipped,
        cancelled: counts.cancelled + counts.other,
        wall: report.duration(),
        critical_path: plan
            .critical_path()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        critical_length: plan.critical_path_length(),
        logs_dir: layout.logs_dir.clone(),
        failures: report
            .failures()
            .into_iter()
            .map(|r| (r.id, r.error.map(|e| e.to_string()).unwrap_or_default()))
            .collect(),
        interrupted,
        exit_code: exit.code(),
    };
    display.finish(summary);
    Ok(exit)
}

/// First signal: cancel the run. Second: SIGKILL every command now.
fn on_signal(
    interrupted: &mut bool,
    reaper: &Reaper,
    ui: &std::sync::mpsc::Sender<UiEvent>,
    cancel: impl FnOnce(),
) {
    if *interrupted {
        let _ = ui.send(UiEvent::Interrupted { second: true });
        reaper.kill_all();
    } else {
        *interrupted = true;
        let _ = ui.send(UiEvent::Interrupted { second: false });
        cancel();
    }
}
