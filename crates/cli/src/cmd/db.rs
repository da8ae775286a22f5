//! The distributed mode's commands, on PostgreSQL (crate nerv-postgres): `nerv run FILE --db
//! URL` submits a workflow file and watches it (Ctrl-C cancels it, `--detach` leaves it
//! running), `nerv worker --db URL` runs tasks, `nerv runs|status|cancel --db URL` read and
//! steer runs from any machine.
//!
//! A workflow file's task becomes a PostgreSQL task with the same id, dependencies, priority,
//! retries, timeout, `uses` and estimate. Its command runs on whichever worker claims it, in
//! the task's working directory (`cwd`, made absolute on the submitting machine: every worker
//! must see the same paths, e.g. a shared file system) with its `env`, through
//! `env -C DIR K=V … PROGRAM` (so that workers need nothing but coreutils).

use crate::exit::{CliError, Exit};
use nerv_cli::workflow::{Command, Workflow};
use nerv_postgres::{Engine, Priority as PgPriority, Retry, RunState, TaskSpec, Work, Worker};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn pg(e: nerv_postgres::Error) -> CliError {
    CliError::Other(e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the runtime: {e}")))
}

/// The PostgreSQL workflow of a workflow file.
pub fn to_pg(wf: &Workflow) -> nerv_postgres::Workflow {
    let mut out = nerv_postgres::Workflow::new(wf.name.clone());
    for (k, v) in &wf.resources {
        out.resources.insert(k.clone(), *v as i64);
    }
    for t in &wf.tasks {
        let cwd = if t.cwd.is_absolute() {
            t.cwd.clone()
        } else {
            wf.base_dir.join(&t.cwd)
        };
        let mut argv: Vec<String> = vec!["env".into(), "-C".into(), cwd.display().to_string()];
        argv.push(format!("NERV_TASK={}", t.id));
        if let Some(item) = &t.item {
            argv.push(format!("NERV_ITEM={item}"));
        }
        for (k, v) in &t.env {
            argv.push(format!("{k}={v}"));
        }
        match &t.command {
            Command::Exec(a) => argv.extend(a.iter().cloned()),
            Command::Shell(line) => {
                argv.extend(["sh".to_string(), "-c".to_string(), line.clone()]);
            }
        }
        let mut spec = TaskSpec::new(t.id.clone(), Work::Argv(argv));
        spec.deps = t.needs.clone();
        spec.priority = match t.priority {
            nerv::Priority::Low => PgPriority::Low,
            nerv::Priority::Medium => PgPriority::Medium,
            nerv::Priority::High => PgPriority::High,
            nerv::Priority::Critical => PgPriority::Critical,
        };
        if let Some(r) = &t.retry {
            spec.retry = Retry {
                max_attempts: r.attempts.max(1),
                backoff: r.backoff.unwrap_or(Duration::from_millis(100)),
                factor: 2.0,
                max_backoff: r.max_backoff.unwrap_or(Duration::from_secs(60)),
            };
        }
        spec.timeout = t.timeout;
        spec.uses = t.uses.iter().map(|(k, v)| (k.clone(), *v as i64)).collect();
        spec.estimate = t.estimate;
        out.tasks.push(spec);
    }
    out
}

/// `nerv run FILE --db URL [--detach] [--json]`.
pub fn submit(file: &Path, url: &str, detach: bool, json: bool) -> Result<Exit, CliError> {
    let wf = Workflow::load(file)?;
    let pgwf = to_pg(&wf);
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = Engine::connect(url).await.map_err(pg)?;
        let run = engine.submit(&pgwf).await.map_err(pg)?;
        eprintln!(
            "nerv: submitted {} ({} tasks) as run {run} on {}",
            wf.name,
            pgwf.tasks.len(),
            engine.options().host()
        );
        if detach {
            println!("{run}");
            return Ok(Exit::Success);
        }
        let t0 = Instant::now();
        let mut watch = engine.watch(run);
        let mut interrupted = false;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(Ok(ev)) => {
                        if json {
                            println!("{}", serde_json::to_string(&ev).unwrap_or_default());
                        } else if ev.kind != "task_ready" {
                            println!(
                                "[{:>8.2}s] {:<16} {}{}{}",
                                t0.elapsed().as_secs_f64(),
                                ev.kind,
                                ev.task.as_deref().unwrap_or(""),
                                ev.worker.as_deref().map(|w| format!(" on {w}")).unwrap_or_default(),
                                ev.data
                                    .as_ref()
                                    .filter(|_| ev.kind == "task_failed" || ev.kind == "task_retrying")
                                    .map(|d| format!(": {d}"))
                                    .unwrap_or_default(),
                            );
                        }
                        if ev.ends_run() {
                            break;
                        }
                    }
                    Some(Err(e)) => return Err(pg(e)),
                    None => break,
                },
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    eprintln!("nerv: interrupted: cancelling run {run}");
                    engine.cancel(run).await.map_err(pg)?;
                }
            }
        }
        let status = engine.status(run).await.map_err(pg)?;
        eprintln!(
            "nerv: run {run} {:?}: {} succeeded, {} failed, {} skipped, {} cancelled in {:.2}s",
            status.run.state,
            status.count(nerv_postgres::TaskState::Succeeded),
            status.count(nerv_postgres::TaskState::Failed),
            status.count(nerv_postgres::TaskState::Skipped),
            status.count(nerv_postgres::TaskState::Cancelled),
            t0.elapsed().as_secs_f64()
        );
        Ok(match (interrupted, status.run.state) {
            (true, _) => Exit::Interrupted,
            (_, RunState::Succeeded) => Exit::Success,
            _ => Exit::TaskFailed,
        })
    })
}

/// `nerv worker --db URL [-j N] [--tags a,b]`: runs tasks until Ctrl-C/SIGTERM.
pub fn worker(url: &str, jobs: usize, tags: &[String]) -> Result<Exit, CliError> {
    let rt = runtime()?;
    rt.block_on(async move {
        let w = Worker::builder(url)
            .concurrency(jobs.max(1))
            .tags(tags.iter().cloned())
            .build()
            .map_err(pg)?;
        eprintln!("nerv: worker {} on {url} (-j {jobs})", w.id());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("nerv: stopping the worker (its running tasks are released)");
            s.cancel();
        });
        let stats = w.run(stop).await.map_err(pg)?;
        eprintln!("nerv: worker done: {stats:?}");
        Ok(Exit::Success)
    })
}

/// `nerv runs --db URL [--json]`.
pub fn runs(url: &str, json: bool) -> Result<Exit, CliError> {
    runtime()?.block_on(async move {
        let engine = Engine::connect(url).await.map_err(pg)?;
        for r in engine.runs().await.map_err(pg)? {
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "{:>6}  {:<10} {:>5} tasks ({} unfinished)  {}",
                    r.id,
                    format!("{:?}", r.state).to_lowercase(),
                    r.tasks,
                    r.unfinished,
                    r.name
                );
            }
        }
        Ok(Exit::Success)
    })
}

/// `nerv status RUN --db URL [--json]`.
pub fn status(url: &str, run: &str, json: bool) -> Result<Exit, CliError> {
    let id: i64 = run
        .parse()
        .map_err(|_| CliError::Other(format!("run `{run}`: a run id on the server is a number")))?;
    runtime()?.block_on(async move {
        let engine = Engine::connect(url).await.map_err(pg)?;
        let st = engine.status(id).await.map_err(pg)?;
        if json {
            println!("{}", serde_json::to_string(&st).unwrap_or_default());
        } else {
            println!("run {} ({}): {:?}", st.run.id, st.run.name, st.run.state);
            for t in &st.tasks {
                println!(
                    "  {:<30} {:<10} attempt {}{}{}",
                    t.id,
                    format!("{:?}", t.state).to_lowercase(),
                    t.attempt,
                    t.worker
                        .as_deref()
                        .map(|w| format!(" on {w}"))
                        .unwrap_or_default(),
                    t.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
        Ok(Exit::Success)
    })
}

/// `nerv cancel RUN --db URL`.
pub fn cancel(url: &str, run: &str) -> Result<Exit, CliError> {
    let id: i64 = run
        .parse()
        .map_err(|_| CliError::Other(format!("run `{run}`: a run id on the server is a number")))?;
    runtime()?.block_on(async move {
        let engine = Engine::connect(url).await.map_err(pg)?;
        if engine.cancel(id).await.map_err(pg)? {
            eprintln!("nerv: run {id} cancelled");
        } else {
            eprintln!("nerv: run {id} had already finished");
        }
        Ok(Exit::Success)
    })
}
