//! `nerv run FILE`: runs a workflow file's commands on nerv's executor.
//!
//! Steps:
//! 1. Load and validate the file (exit 2 on error); open the journal `.nerv/nerv.db` beside
//!    it (exit 1 with the journal's message if it cannot be opened: locked by another live
//!    nerv, disk full, corrupt, permission denied; `--no-journal` runs unrecorded); create
//!    `.nerv/runs/<run-id>/logs`.
//! 2. Build the graph: each task is a sync nerv task that runs one process per attempt and
//!    waits for it on its engine worker (see `process.rs`); the executor has `-j N` workers,
//!    so that at most N commands run at once; `[resources]` become nerv resources.
//!    Its output, a [`ShellOutput`], is persisted, so that a resumed run restores it. A
//!    cached task (`cache = true`) first looks its key up in the journal's memo store: a hit
//!    completes it without running the command; a success stores the key.
//! 3. Start the run (named with the CLI's run id; for `nerv resume`, with the options that
//!    restore the earlier run's completed tasks) with an event bus whose handlers feed the
//!    display thread and the journal's [`Recorder`].
//! 4. Wait for the run, a SIGINT or a SIGTERM. The first signal tells the recorder the run is
//!    interrupted (so it is recorded `interrupted`, resumable), then cancels the run (running
//!    commands get SIGTERM, then SIGKILL after `--grace`); a second one kills them at once.
//! 5. Wait until every process group has ended, print the summary, and exit
//!    (0 / 1 / 130, see `exit.rs`).
//!

use crate::args::{cpus, ExecArgs, ReadyOrder, RunArgs};
use crate::display::{Display, Mode, Summary, UiEvent};
use crate::exit::{CliError, Exit};
use crate::history::{self, Writer};
use crate::process::{run_attempt, Attempt, Reaper};
use nerv::{EventBus, EventFilter, EventKind, Executor, MemoStore, Planner, RunOptions, TaskError};
use nerv_cli::layout::{new_run_id, RunLayout};
use nerv_cli::workflow::{TaskSpec, Workflow};
use nerv_journal::{Recorder, RunId, SqliteMemo};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// What a shell task outputs: persisted in the journal (so that a resumed run restores the
/// task instead of running it) and stored in the cache for `cache = true` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellOutput {
    /// The command's exit code (always 0: a task that exits otherwise fails).
    pub exit_code: i32,
    /// How long the command ran, in milliseconds.
    pub duration_ms: u64,
    /// Whether this output came from the cache rather than from running the command.
    pub cached: bool,
}

/// Runs `nerv run`.
pub fn run(args: RunArgs) -> Result<Exit, CliError> {
    let wf = Workflow::load(&args.file)?;
    let workflow_id = workflow_id(&args.file)?;
    let writer = if args.no_journal {
        None
    } else {
        Some(history::open_writer(&wf.base_dir).map_err(|e| match e {
            CliError::Other(m) => CliError::Other(format!(
                "{m}\n(nothing was run; `nerv run --no-journal` runs without recording, and without resume or cache)"
            )),
            e => e,
        })?)
    };
    execute(wf, workflow_id, &args.exec, writer, None)
}

/// The id a workflow is recorded under: its file's canonical path.
pub fn workflow_id(file: &Path) -> Result<String, CliError> {
    std::fs::canonicalize(file)
        .map(|p| p.display().to_string())
        .map_err(|e| CliError::Other(format!("cannot resolve {}: {e}", file.display())))
}

/// Runs `wf` (recorded in `writer`'s journal under `workflow_id`, if any; resuming journal
/// run `resume`, if given) and returns how nerv exits.
pub fn execute(
    wf: Workflow,
    workflow_id: String,
    args: &ExecArgs,
    writer: Option<Writer>,
    resume: Option<RunId>,
) -> Result<Exit, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("nerv-io")
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(wf, workflow_id, args, writer, resume))
}

/// What a cached task needs in its body.
#[derive(Clone)]
struct CacheCx {
    memo: Arc<SqliteMemo>,
    ui: Sender<UiEvent>,
}

/// Looks `spec`'s key up: `Some(output)` on a hit (the command is not run).
fn cache_lookup(cx: &CacheCx, spec: &TaskSpec, key: &[u8], log: &Path) -> Option<ShellOutput> {
    let bytes = cx.memo.get(key, SystemTime::now())?;
    let out: ShellOutput = rmp_serde::from_slice(&bytes).ok()?;
    let _ = cx.ui.send(UiEvent::Cached {
        task: spec.id.as_str().into(),
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(
            f,
            "--- nerv: cached: not run (key {} stored by an earlier run; `nerv cache rm {}` forgets it) ---",
            nerv_cli::cache::short_hex(key),
            spec.id
        );
    }
    Some(ShellOutput {
        cached: true,
        ..out
    })
}

async fn run_async(
    wf: Workflow,
    workflow_id: String,
    args: &ExecArgs,
    writer: Option<Writer>,
    resume: Option<RunId>,
) -> Result<Exit, CliError> {
    let jobs = args.jobs.map_or_else(cpus, |j| j as usize);
    let run_id = new_run_id();
    // Named with the CLI's run id, so that commands accept it as well as the journal's number.
    let mut opts = RunOptions::default().name(run_id.clone());
    opts = if args.fail_fast {
        opts.fail_fast()
    } else {
        opts.keep_going()
    };
    if let (Some(old), Some(w)) = (resume, &writer) {
        opts =
            nerv_journal::resume_options(&w.journal, old, opts).map_err(history::journal_error)?;
    }
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
        "resumes": resume.map(|r| r.0),
    });
    let display = Display::start(mode, wf.tasks.len(), logs.clone(), header);
    let cache = writer.as_ref().map(|w| CacheCx {
        memo: w.memo.clone(),
        ui: display.sender(),
    });
    if writer.is_none() && wf.tasks.iter().any(|t| t.cache.is_some()) {
        eprintln!("nerv: warning: running without a journal: `cache` is off for this run");
    }
    // Tasks without an `estimate` get one from the history of this workflow's recent runs
    // (a moving average over the last 10): the planner and the scheduler then know durations
    // (a graph with estimates is scheduled by remaining critical path).
    let history: std::collections::HashMap<String, Duration> = writer
        .as_ref()
        .and_then(|w| w.journal.store().task_durations(&workflow_id, 10).ok())
        .unwrap_or_default();
    let keys = match args.order {
        ReadyOrder::Ranked => HashMap::new(),
        ReadyOrder::Searched => {
            let keys = searched_order(&wf, &history, jobs)?;
            if keys.is_empty() {
                eprintln!(
                    "nerv: warning: --order searched needs durations (`estimate` keys, or an \
                     earlier recorded run): running in the default order"
                );
            }
            keys
        }
    };
    let graph = {
        let logs = logs.clone();
        wf.persisted_graph_with(|b, spec| {
            let b = estimated(b, spec, &history);
            let b = match keys.get(&spec.id) {
                Some(&k) => b.order_key(k),
                None => b,
            };
            let spec = spec.clone();
            let reaper = reaper.clone();
            let run_id = run_id_arc.clone();
            let log = logs[&spec.id].clone();
            let cache = cache.clone().filter(|_| spec.cache.is_some());
            // A sync task: the engine worker that starts it runs the command and waits for
            // it (`process.rs`), so `-j N` is N workers, as make's job slots.
            b.run((), move |ctx, ()| {
                let a = Attempt {
                    run_id: run_id.clone(),
                    log: log.clone(),
                    attempt: ctx.attempt(),
                };
                let key = match &cache {
                    Some(_) => Some(nerv_cli::cache::key(&spec).map_err(TaskError::msg)?),
                    None => None,
                };
                if let (Some(cx), Some(k)) = (&cache, &key) {
                    if let Some(out) = cache_lookup(cx, &spec, k, &a.log) {
                        return Ok(out);
                    }
                }
                let started = Instant::now();
                run_attempt(&spec, a, &reaper, || ctx.is_cancelled())?;
                let out = ShellOutput {
                    exit_code: 0,
                    duration_ms: started.elapsed().as_millis() as u64,
                    cached: false,
                };
                if let (Some(cx), Some(k)) = (&cache, key) {
                    let now = SystemTime::now();
                    let expires = spec.cache.and_then(|c| c.ttl).map(|t| now + t);
                    if let Ok(bytes) = rmp_serde::to_vec(&out) {
                        cx.memo.put(&k, &spec.id, bytes, now, expires);
                    }
                }
                Ok(out)
            })
        })?
    };

    let bus = EventBus::new();
    let recorder = writer
        .as_ref()
        .map(|w| Recorder::new(w.journal.clone(), workflow_id.as_str()));
    let recording = recorder.as_ref().map(|r| r.attach(&bus));
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
        .workers(jobs)
        .current_tokio()
        .events(bus);
    for (name, cap) in &wf.resources {
        builder = builder.resource(name, *cap);
    }
    let exec = builder.build();
    let interrupt = {
        let recorder = recorder.clone();
        move || {
            if let Some(r) = &recorder {
                r.interrupt();
            }
        }
    };

    let ui = display.sender();
    let run = exec.start_with(&graph, opts);
    tokio::pin!(run);
    let mut interrupted = false;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = sigint.recv() => on_signal(&mut interrupted, &reaper, &ui, || { interrupt(); run.cancel() }),
            _ = sigterm.recv() => on_signal(&mut interrupted, &reaper, &ui, || { interrupt(); run.cancel() }),
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
    drop(recording);
    // The recorder flushed the journal when the run ended; find the run's record.
    let record = match &writer {
        None => None,
        Some(w) => {
            let found = w
                .journal
                .flush()
                .and_then(|()| w.journal.store().runs())
                .map(|runs| runs.into_iter().find(|r| r.name == run_id));
            match found {
                Ok(Some(r)) => Some(r.id.0),
                Ok(None) => {
                    eprintln!(
                        "nerv: warning: this run was not recorded in journal {} (see the error above); it cannot be resumed",
                        w.journal.store().path().display()
                    );
                    None
                }
                Err(e) => {
                    eprintln!("nerv: warning: the journal may have lost part of this run: {e}");
                    None
                }
            }
        }
    };
    if let Some(w) = &writer {
        if let Some(e) = w.memo.take_error() {
            eprintln!("nerv: warning: the cache could not be used: {e}");
        }
    }

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
        journal_run: record,
        resumed_from: resume.map(|r| r.0),
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

/// `b`, estimated from `history` if its task has no `estimate` of its own.
fn estimated<'g>(
    b: nerv::TaskBuilder<'g>,
    spec: &TaskSpec,
    history: &HashMap<String, Duration>,
) -> nerv::TaskBuilder<'g> {
    match (spec.estimate, history.get(&spec.id)) {
        (None, Some(d)) => b.estimate(*d),
        _ => b,
    }
}

/// The workflow as a scheduling model: its tasks, dependencies and estimates (`estimate`
/// keys, else `history`; a task with neither takes no time), for simulations and bounds.
pub fn model(
    wf: &Workflow,
    history: &HashMap<String, Duration>,
) -> Result<nerv_wfformat::Workflow, CliError> {
    let planning = wf.graph_with(|b, spec| {
        estimated(b, spec, history).run((), |_, ()| Ok::<(), TaskError>(()));
    })?;
    Ok(nerv_wfformat::Workflow::from_graph(&wf.name, &planning))
}

/// `--order searched`: each task's order key, from the best of many list schedules of the
/// workflow's estimates (its `estimate` keys, else `history`; a task with neither counts as
/// taking no time) on `jobs` workers, simulated with the tasks' priorities
/// ([`nerv::Plan::search_order`]). None when no task has a duration: there is nothing to
/// order by.
pub(crate) fn searched_order(
    wf: &Workflow,
    history: &HashMap<String, Duration>,
    jobs: usize,
) -> Result<HashMap<String, u64>, CliError> {
    let planning = wf.graph_with(|b, spec| {
        estimated(b, spec, history).run((), |_, ()| Ok::<(), TaskError>(()));
    })?;
    let plan = planning.plan();
    if !plan.is_timed() || plan.total_work().is_zero() {
        return Ok(HashMap::new());
    }
    let found = plan.search_order(jobs, plan.default_tries());
    Ok(planning
        .tasks()
        .zip(found.keys)
        .map(|(t, k)| (t.id().to_string(), k))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nerv_cli::workflow::Format;

    #[test]
    fn a_searched_order_does_not_start_the_two_longest_first() {
        // 3, 3, 2, 2, 2 s on 2 workers: longest first ends at 7 s, 3+3 and 2+2+2 at 6 s. In
        // the searched order the two top keys are not both 3 s tasks. `e` has no estimate
        // of its own: its history gives one.
        let src = r#"
            [tasks.a]
            run = "true"
            estimate = "3s"
            [tasks.b]
            run = "true"
            estimate = "3s"
            [tasks.c]
            run = "true"
            estimate = "2s"
            [tasks.d]
            run = "true"
            estimate = "2s"
            [tasks.e]
            run = "true"
        "#;
        let wf = Workflow::parse(Path::new("lpt.toml"), src, Format::Toml).unwrap();
        let history = HashMap::from([("e".to_string(), Duration::from_secs(2))]);
        let keys = searched_order(&wf, &history, 2).unwrap();
        assert_eq!(keys.len(), 5);
        let mut ids: Vec<&str> = keys.keys().map(String::as_str).collect();
        ids.sort_by_key(|id| std::cmp::Reverse(keys[*id]));
        let top: Vec<&str> = ids[..2].to_vec();
        assert!(!(top.contains(&"a") && top.contains(&"b")), "{ids:?}");
    }
}
