//! The distributed mode's commands, on PostgreSQL (crate nerv-postgres): `nerv run FILE --db
//! URL` submits a workflow file and watches it with the same display as a local run (Ctrl-C
//! cancels it, `--detach` leaves it running), `nerv worker --db URL` runs tasks, `nerv runs|status|cancel --db URL` read and
//! steer runs from any machine.
//!
//! A workflow file's task becomes a PostgreSQL task with the same id, dependencies, priority,
//! retries, timeout, `uses` and estimate. Its command runs on whichever worker claims it, in
//! the task's working directory (`cwd`, made absolute on the submitting machine: every worker
//! must see the same paths, e.g. a shared file system) with its `env`, through
//! `env -C DIR K=V … PROGRAM` (so that workers need nothing but coreutils).
//!
//! A cached task (`cache = true`) is submitted with what its key is made of
//! ([`nerv_postgres::CommandKey`], the local cache's recipe): the worker that claims it computes
//! the key from the inputs as it sees them once the task's dependencies are done, and a hit in
//! the cache shared by every worker of the schema completes it without running it (shown as
//! cached). `nerv cache ls|rm --db URL` list and remove the entries; `nerv runs rm --db URL`
//! deletes old runs with their events.

use crate::display::{Display, Mode, Summary, UiEvent};
use crate::exit::{CliError, Exit};
use crate::out::outln;
use nerv_cli::workflow::{Command, Workflow};
use nerv_postgres::{
    Cache, ConnectOptions, Engine, Priority as PgPriority, Retry, RunState, TaskSpec, TaskState,
    Work, Worker,
};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The display's view of a server event (`None` for those it does not show).
fn ui_event(ev: &nerv_postgres::Event) -> Option<UiEvent> {
    let task: Arc<str> = ev.task.as_deref()?.into();
    let at = SystemTime::now();
    let attempt = ev.attempt.unwrap_or(0).max(0) as u32;
    let error = || {
        ev.data
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(match ev.kind.as_str() {
        "task_started" => UiEvent::Started { task, attempt, at },
        "task_succeeded" => UiEvent::Completed { task, attempt, at },
        "task_failed" => UiEvent::Failed {
            task,
            attempt,
            at,
            error: error(),
        },
        "task_retrying" => UiEvent::Retrying {
            task,
            attempt,
            at,
            error: error(),
            delay: Duration::ZERO,
        },
        "task_skipped" => UiEvent::Skipped {
            task,
            at,
            cause: None,
        },
        "task_cancelled" => UiEvent::Cancelled { task, attempt, at },
        "task_cached" => UiEvent::Cached { task },
        _ => return None,
    })
}

/// A run's id on the server (a number, as `nerv runs --db` lists it).
fn server_run(run: &str) -> Result<i64, CliError> {
    run.parse()
        .map_err(|_| CliError::Other(format!("run `{run}`: a run id on the server is a number")))
}

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

/// The schema the commands use: `NERV_DB_SCHEMA`, else nerv-postgres's default (`nerv`).
/// Separate schemas are separate queues (e.g. one per team, or per test).
fn schema() -> Option<String> {
    std::env::var("NERV_DB_SCHEMA")
        .ok()
        .filter(|s| !s.is_empty())
}

async fn connect(url: &str) -> Result<Engine, CliError> {
    let mut opts = ConnectOptions::new(url).map_err(pg)?;
    if let Some(s) = schema() {
        opts = opts.schema(s);
    }
    Engine::connect_with(opts).await.map_err(pg)
}

/// The PostgreSQL workflow of a workflow file.
pub fn to_pg(wf: &Workflow) -> nerv_postgres::Workflow {
    let mut out = nerv_postgres::Workflow::new(wf.name.clone());
    // Working directories are made absolute here: a worker elsewhere must not resolve them
    // against its own current directory.
    let base = std::fs::canonicalize(&wf.base_dir).unwrap_or_else(|_| wf.base_dir.clone());
    for (k, v) in &wf.resources {
        out.resources.insert(k.clone(), *v as i64);
    }
    for t in &wf.tasks {
        // `t.cwd` already starts with the file's folder: resolve it against this process's
        // directory, not against `base` (which would repeat the folder).
        let cwd = std::fs::canonicalize(&t.cwd)
            .or_else(|_| std::path::absolute(&t.cwd))
            .unwrap_or_else(|_| base.join(&t.cwd));
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
        if let Some(c) = &t.cache {
            let mut key = nerv_cli::cache::command_key(t);
            key.cwd = cwd.clone();
            spec.cache = Some(Cache { key, ttl: c.ttl });
        }
        out.tasks.push(spec);
    }
    out
}

/// The server's history of workflow `name`: each task's mean duration over its last 10 runs
/// (successful, uncached), for `nerv plan --db`.
pub fn server_history(url: &str, name: &str) -> Result<HashMap<String, Duration>, CliError> {
    runtime()?.block_on(async {
        let engine = connect(url).await?;
        engine.task_durations(name, 10).await.map_err(pg)
    })
}

/// `nerv run FILE --db URL [--detach] [--json] [--order searched -j N]`.
///
/// Tasks without an `estimate` get one from the server's history of the workflow (its last 10
/// runs, [`Engine::task_durations`]), for their ranks. `searched`: the workers' slots in all,
/// for a searched ready order (`run.rs`'s, from the same estimates), submitted as the tasks'
/// order keys.
pub fn submit(
    file: &Path,
    url: &str,
    detach: bool,
    json: bool,
    searched: Option<usize>,
) -> Result<Exit, CliError> {
    let wf = Workflow::load(file)?;
    let mut pgwf = to_pg(&wf);
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = connect(url).await?;
        let history = engine.task_durations(&wf.name, 10).await.map_err(pg)?;
        for t in &mut pgwf.tasks {
            t.estimate = t.estimate.or_else(|| history.get(&t.id).copied());
        }
        if let Some(slots) = searched {
            let keys = super::run::searched_order(&wf, &history, slots)?;
            if keys.is_empty() {
                eprintln!(
                    "nerv: warning: --order searched needs durations (`estimate` keys, or an \
                     earlier run on this server): submitted in the default order"
                );
            }
            for t in &mut pgwf.tasks {
                t.order_key = keys.get(&t.id).copied();
            }
        }
        let run = engine.submit(&pgwf).await.map_err(pg)?;
        eprintln!(
            "nerv: submitted {} ({} tasks) as run {run} on {}",
            wf.name,
            pgwf.tasks.len(),
            engine.options().host()
        );
        if detach {
            outln!("{run}");
            return Ok(Exit::Success);
        }
        let t0 = Instant::now();
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        };
        let header = serde_json::json!({
            "type": "run_started", "run_id": run.to_string(), "workflow": wf.name,
            "file": wf.path.display().to_string(), "tasks": pgwf.tasks.len(),
            "logs": "(on the workers)", "server": engine.options().host(),
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        });
        let display = Display::start(mode, pgwf.tasks.len(), HashMap::new(), header);
        let ui = display.sender();
        let mut watch = engine.watch(run);
        let mut interrupted = false;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(Ok(ev)) => {
                        if let Some(u) = ui_event(&ev) {
                            let _ = ui.send(u);
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
                    let _ = ui.send(UiEvent::Interrupted { second: false });
                    engine.cancel(run).await.map_err(pg)?;
                }
            }
        }
        let status = engine.status(run).await.map_err(pg)?;
        let exit = match (interrupted, status.run.state) {
            (true, _) => Exit::Interrupted,
            (_, RunState::Succeeded) => Exit::Success,
            _ => Exit::TaskFailed,
        };
        let failures = status
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| (t.id.clone(), t.error.clone().unwrap_or_default()))
            .collect();
        display.finish(Summary {
            run_id: run.to_string(),
            completed: status.count(TaskState::Succeeded),
            failed: status.count(TaskState::Failed),
            skipped: status.count(TaskState::Skipped),
            cancelled: status.count(TaskState::Cancelled),
            wall: t0.elapsed(),
            critical_path: Vec::new(),
            critical_length: Duration::ZERO,
            logs_dir: "(on the workers)".into(),
            failures,
            interrupted,
            exit_code: exit.code(),
            journal_run: None,
            resumed_from: None,
        });
        Ok(exit)
    })
}

/// `nerv worker --db URL [-j N] [--tags a,b]`: runs tasks until Ctrl-C/SIGTERM.
pub fn worker(url: &str, jobs: usize, tags: &[String]) -> Result<Exit, CliError> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut b = Worker::builder(url);
        if let Some(s) = schema() {
            b = b.schema(s);
        }
        let w = b
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
        let engine = connect(url).await?;
        for r in engine.runs().await.map_err(pg)? {
            if json {
                outln!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                outln!(
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
    let id = server_run(run)?;
    runtime()?.block_on(async move {
        let engine = connect(url).await?;
        let st = engine.status(id).await.map_err(pg)?;
        if json {
            outln!("{}", serde_json::to_string(&st).unwrap_or_default());
        } else {
            outln!("run {} ({}): {:?}", st.run.id, st.run.name, st.run.state);
            for t in &st.tasks {
                outln!(
                    "  {:<30} {:<10} attempt {}{}{}{}",
                    t.id,
                    format!("{:?}", t.state).to_lowercase(),
                    t.attempt,
                    if t.cached { " (cached)" } else { "" },
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
    let id = server_run(run)?;
    runtime()?.block_on(async move {
        let engine = connect(url).await?;
        if engine.cancel(id).await.map_err(pg)? {
            eprintln!("nerv: run {id} cancelled");
        } else {
            eprintln!("nerv: run {id} had already finished");
        }
        Ok(Exit::Success)
    })
}

/// `nerv cache ls --db URL [--json]`: the cache shared by the workers, as `nerv cache ls`.
pub fn cache_ls(url: &str, json: bool) -> Result<Exit, CliError> {
    runtime()?.block_on(async move {
        let engine = connect(url).await?;
        let entries = engine.memo_entries().await.map_err(pg)?;
        if json {
            for e in &entries {
                outln!(
                    "{}",
                    serde_json::json!({
                        "task": e.task, "key": nerv_cli::cache::short_hex(&e.key), "size": e.size,
                        "created": crate::history::rfc3339_ms(e.created),
                        "last_used": crate::history::rfc3339_ms(e.last_used),
                        "expires": e.expires.map(crate::history::rfc3339_ms),
                    })
                );
            }
            return Ok(Exit::Success);
        }
        if entries.is_empty() {
            outln!(
                "the cache on {} (schema {}) is empty; tasks with `cache = true` run with --db fill it",
                engine.options().host(),
                engine.options().schema_name()
            );
            return Ok(Exit::Success);
        }
        let rows: Vec<[String; 6]> = entries
            .iter()
            .map(|e| {
                [
                    e.task.clone(),
                    nerv_cli::cache::short_hex(&e.key),
                    format!("{} B", e.size),
                    crate::history::rfc3339(e.created),
                    crate::history::rfc3339(e.last_used),
                    e.expires
                        .map(crate::history::rfc3339)
                        .unwrap_or_else(|| "never".into()),
                ]
            })
            .collect();
        crate::cmd::runs::print_table(
            &["TASK", "KEY", "SIZE", "CREATED", "LAST USED", "EXPIRES"],
            &rows,
        );
        Ok(Exit::Success)
    })
}

/// `nerv cache rm --db URL TASK|--all`: removes the entries of a task (and of its `for_each`
/// expansions, by its name), or all of them.
pub fn cache_rm(url: &str, task: Option<&str>) -> Result<Exit, CliError> {
    runtime()?.block_on(async move {
        let engine = connect(url).await?;
        let n = match task {
            None => engine.memo_clear().await.map_err(pg)?,
            Some(task) => {
                let prefix = format!("{task}[");
                let mut tasks: Vec<String> = engine
                    .memo_entries()
                    .await
                    .map_err(pg)?
                    .into_iter()
                    .map(|e| e.task)
                    .filter(|t| t == task || t.starts_with(&prefix))
                    .collect();
                tasks.sort();
                tasks.dedup();
                // Expired entries of the task itself go too.
                if !tasks.iter().any(|t| t == task) {
                    tasks.push(task.to_string());
                }
                let n = engine.memo_remove_tasks(&tasks).await.map_err(pg)?;
                if n == 0 {
                    return Err(CliError::Other(format!(
                        "no cache entry for task `{task}` on {} (`nerv cache ls --db URL` lists them)",
                        engine.options().host()
                    )));
                }
                n
            }
        };
        outln!("removed {n} cache entr{}", if n == 1 { "y" } else { "ies" });
        Ok(Exit::Success)
    })
}

/// `nerv runs rm --db URL --older-than AGE | --keep N`: deletes finished runs with their
/// tasks and events (a run still running, or still stopping its tasks, is kept).
pub fn runs_rm(
    url: &str,
    older_than: Option<Duration>,
    keep: Option<usize>,
) -> Result<Exit, CliError> {
    let older_than =
        match older_than {
            Some(age) => Some(SystemTime::now().checked_sub(age).ok_or_else(|| {
                CliError::Other(format!("--older-than {age:?} reaches before 1970"))
            })?),
            None => None,
        };
    runtime()?.block_on(async move {
        let engine = connect(url).await?;
        let n = engine.prune_runs(older_than, keep).await.map_err(pg)?;
        let left = engine.runs().await.map_err(pg)?.len();
        outln!(
            "deleted {n} run{} ({left} left)",
            if n == 1 { "" } else { "s" }
        );
        Ok(Exit::Success)
    })
}
