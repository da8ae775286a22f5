//! Reactive orchestration (the seed's "Workflow Orchestration": the event bus and the state
//! projection make workflows react to each other).
//!
//! `cargo run -p nerv --example reactive_orchestration`
//!
//! One [`WorkflowManager`] holds four workflows:
//!
//! - `ingest-news`: fetch → ingest → summarize;
//! - `refresh-search`: reindex → notify, the follow-up of `ingest-news`;
//! - `billing-sync`: charge → receipt, whose `charge` fails (so `receipt` is skipped);
//! - `alert`: page, which reports a failed task.
//!
//! Nothing starts `refresh-search` or `alert` by hand: a reactor does, following two rules:
//!
//! 1. when an execution of `ingest-news` completes (its `WorkflowCompleted` event), start
//!    `refresh-search` with what `ingest` stored as its context;
//! 2. when a task of any workflow but `alert` fails (a `TaskFailed` event), start `alert`
//!    with the workflow, the task and the error as its context.
//!
//! **Where the reaction runs.** A bus handler runs on the thread that publishes the event:
//! task events and a run's end on the engine's worker threads, a run's `TaskPending` and
//! `WorkflowStarted` on the thread calling `execute_workflow` (which holds no lock of the
//! manager then, and has recorded the execution already). What was checked:
//!
//! - calling `execute_workflow` straight from a handler works, but a handler on a worker
//!   holds that worker for the call;
//! - waiting for a run (`wait`) in a handler on a worker can deadlock: the worker waits for
//!   work that needs workers (with one worker, it always does).
//!
//! The channel avoids both, and keeps handlers short: they run inline in the engine.
//!
//! [`scenario`] runs it and returns the facts to check; `main` prints them and exits with 1 if
//! they are not what the scenario promises (the integration test `tests/scenarios.rs` checks
//! them too).

use nerv::{
    EventData, EventFilter, EventKind, ExecutionId, ManagerError, TaskDef, TaskError, TaskStatus,
    WorkflowId, WorkflowManager, WorkflowStatus,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bounds every wait: reached only if something is wrong.
const LIMIT: Duration = Duration::from_secs(10);

/// What the bus handler hands to the reactor.
#[derive(Debug, Clone)]
enum Msg {
    /// An event the rules may react to.
    Seen {
        execution: ExecutionId,
        kind: EventKind,
        task: Option<String>,
        error: Option<String>,
    },
    /// No more events to react to.
    Stop,
}

/// One reaction of the reactor: what caused it, and the execution it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// What happened, e.g. `ingest-news completed`.
    pub cause: String,
    /// The execution that caused it.
    pub because_of: ExecutionId,
    /// The workflow started.
    pub workflow: String,
    /// Its execution.
    pub started: ExecutionId,
}

/// The end of one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The execution.
    pub execution: ExecutionId,
    /// Its status.
    pub status: WorkflowStatus,
    /// The output of its last task (`summarize`, `notify`, `receipt`, `page`).
    pub output: Option<Value>,
    /// Each task's final status.
    pub tasks: BTreeMap<String, TaskStatus>,
}

/// What happened, for `main` to print and the test to check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Each workflow's executions, by name.
    pub executions: BTreeMap<String, Vec<Ended>>,
    /// What the reactor did, in order.
    pub reactions: Vec<Reaction>,
    /// The workflow-level events of the bus, in order: (workflow name, event kind).
    pub timeline: Vec<(String, EventKind)>,
    /// Whether the reactor was still waiting for events at the end (it must be).
    pub reactor_alive: bool,
}

impl Outcome {
    /// The position of `(workflow, kind)` in the timeline.
    pub fn position(&self, workflow: &str, kind: EventKind) -> Option<usize> {
        self.timeline
            .iter()
            .position(|(w, k)| w == workflow && *k == kind)
    }

    /// The executions of `workflow`.
    pub fn runs(&self, workflow: &str) -> &[Ended] {
        self.executions.get(workflow).map_or(&[], Vec::as_slice)
    }

    /// Whether the outcome is what the scenario promises; the first difference otherwise.
    pub fn verify(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        let one = |w: &str, status: WorkflowStatus| {
            let runs = self.runs(w);
            check(
                runs.len() == 1 && runs[0].status == status,
                &format!("{w} did not run exactly once, {status}"),
            )
        };
        one("ingest-news", WorkflowStatus::Completed)?;
        one("billing-sync", WorkflowStatus::Failed)?;
        one("refresh-search", WorkflowStatus::Completed)?;
        one("alert", WorkflowStatus::Completed)?;
        check(self.reactions.len() == 2, "not two reactions")?;
        check(
            self.runs("billing-sync")[0].tasks.get("receipt") == Some(&TaskStatus::Skipped),
            "billing-sync's receipt was not skipped",
        )?;
        let a_done = self.position("ingest-news", EventKind::WorkflowCompleted);
        let b_start = self.position("refresh-search", EventKind::WorkflowStarted);
        check(
            matches!((a_done, b_start), (Some(a), Some(b)) if a < b),
            "refresh-search did not start after ingest-news completed",
        )?;
        check(
            self.runs("refresh-search")[0].output
                == Some(json!("search index refreshed with 3 articles")),
            "refresh-search's output",
        )?;
        check(
            self.runs("alert")[0].output == Some(json!("ALERT billing-sync/charge: card declined")),
            "the alert's output",
        )?;
        check(self.reactor_alive, "the reactor stopped early")
    }
}

/// The reactor: receives the handler's messages and applies the two rules.
struct Reactor {
    manager: WorkflowManager,
    news: WorkflowId,
    refresh: WorkflowId,
    alert: WorkflowId,
    /// Tells `scenario` about each execution started.
    started: mpsc::Sender<ExecutionId>,
}

impl Reactor {
    /// Runs until `Stop` (or `LIMIT` without a message, which only a bug causes); returns the
    /// reactions and whether it stopped on `Stop`.
    fn run(self, rx: mpsc::Receiver<Msg>) -> Result<(Vec<Reaction>, bool), ManagerError> {
        let mut done = Vec::new();
        loop {
            match rx.recv_timeout(LIMIT) {
                Ok(Msg::Stop) => return Ok((done, true)),
                Ok(Msg::Seen {
                    execution,
                    kind,
                    task,
                    error,
                }) => {
                    if let Some(r) = self.react(execution, kind, task, error)? {
                        println!(
                            "  [reactor] {} → started {} ({})",
                            r.cause, r.workflow, r.started
                        );
                        let _ = self.started.send(r.started);
                        done.push(r);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Ok((done, false))
                }
            }
        }
    }

    /// Applies the rules to one event; returns the reaction, if any.
    fn react(
        &self,
        execution: ExecutionId,
        kind: EventKind,
        task: Option<String>,
        error: Option<String>,
    ) -> Result<Option<Reaction>, ManagerError> {
        let m = &self.manager;
        let status = m.get_execution_status(execution)?;
        let (workflow, context, cause) = match kind {
            // Rule 1: the follow-up of a completed ingestion.
            EventKind::WorkflowCompleted if status.id == self.news => {
                let stored = m
                    .output(execution, "ingest")?
                    .and_then(|v| v["stored"].as_u64())
                    .unwrap_or(0);
                (
                    self.refresh,
                    json!({ "stored": stored, "after": execution.0 }),
                    format!("{} completed", status.name),
                )
            }
            // Rule 2: an alert for a failed task (not for the alert's own).
            EventKind::TaskFailed if status.id != self.alert => {
                let task = task.unwrap_or_default();
                (
                    self.alert,
                    json!({
                        "workflow": status.name,
                        "task": task,
                        "error": error.unwrap_or_default(),
                    }),
                    format!("{}/{task} failed", status.name),
                )
            }
            _ => return Ok(None),
        };
        let started = m.execute_workflow(workflow, context)?;
        let name = m.get_workflow_status(workflow)?.name;
        Ok(Some(Reaction {
            cause,
            because_of: execution,
            workflow: name,
            started,
        }))
    }
}

/// Defines the four workflows; returns (ingest-news, refresh-search, billing-sync, alert).
fn define(m: &WorkflowManager) -> Result<[WorkflowId; 4], ManagerError> {
    let news = m.create_workflow("ingest-news", "fetch, store and summarize articles");
    m.add_task(
        news,
        TaskDef::new("fetch", |_, _| {
            Ok(json!(["rust 1.80 released", "tokio 2 plans", "nerv 0.1"]))
        }),
    )?;
    m.add_task(
        news,
        TaskDef::new("ingest", |_, inp| {
            let articles: Vec<String> = inp.get_as("fetch")?;
            Ok(json!({ "stored": articles.len() }))
        })
        .depends_on("fetch"),
    )?;
    m.add_task(
        news,
        TaskDef::new("summarize", |_, inp| {
            let stored = inp
                .get("ingest")
                .map_or(0, |v| v["stored"].as_u64().unwrap_or(0));
            Ok(json!(format!("{stored} articles stored")))
        })
        .depends_on("ingest"),
    )?;

    let refresh = m.create_workflow("refresh-search", "reindex what was ingested");
    m.add_task(
        refresh,
        TaskDef::new("reindex", |_, inp| {
            Ok(json!({ "indexed": inp.context()["stored"].as_u64().unwrap_or(0) }))
        }),
    )?;
    m.add_task(
        refresh,
        TaskDef::new("notify", |_, inp| {
            let n = inp
                .get("reindex")
                .map_or(0, |v| v["indexed"].as_u64().unwrap_or(0));
            Ok(json!(format!("search index refreshed with {n} articles")))
        })
        .depends_on("reindex"),
    )?;

    let billing = m.create_workflow("billing-sync", "charge and send receipts");
    m.add_task(
        billing,
        TaskDef::new("charge", |_, _| Err(TaskError::msg("card declined"))),
    )?;
    m.add_task(
        billing,
        TaskDef::new("receipt", |_, _| Ok(json!("sent"))).depends_on("charge"),
    )?;

    let alert = m.create_workflow("alert", "page whoever is on call");
    m.add_task(
        alert,
        TaskDef::new("page", |_, inp| {
            let c = inp.context();
            Ok(json!(format!(
                "ALERT {}/{}: {}",
                c["workflow"].as_str().unwrap_or("?"),
                c["task"].as_str().unwrap_or("?"),
                c["error"].as_str().unwrap_or("?")
            )))
        }),
    )?;
    Ok([news, refresh, billing, alert])
}

/// The output of the last task of the workflow `name`.
fn last_task(name: &str) -> &'static str {
    match name {
        "ingest-news" => "summarize",
        "refresh-search" => "notify",
        "billing-sync" => "receipt",
        _ => "page",
    }
}

/// Runs the scenario and prints what happens.
pub fn scenario() -> Outcome {
    let m = WorkflowManager::builder().workers(2).build();
    let [news, refresh, billing, alert] = define(&m).expect("the workflows are valid");

    // The timeline, subscribed first: its handler runs before the reactor's for each event,
    // so an event is recorded before anything the reactor does about it.
    let timeline: Arc<Mutex<Vec<(ExecutionId, EventKind)>>> = Arc::default();
    let t = timeline.clone();
    let _timeline = m.events().subscribe(
        EventFilter::kinds([
            EventKind::WorkflowStarted,
            EventKind::WorkflowCompleted,
            EventKind::WorkflowFailed,
        ]),
        move |e| {
            if let Some(w) = e.source.workflow {
                t.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((ExecutionId(w), e.kind()));
            }
        },
    );

    // The handler only hands the event's facts to the reactor thread.
    let (tx, rx) = mpsc::channel::<Msg>();
    let handler_tx = tx.clone();
    let _reactions = m.events().subscribe(
        EventFilter::kinds([EventKind::WorkflowCompleted, EventKind::TaskFailed]),
        move |e| {
            let Some(w) = e.source.workflow else { return };
            let error = match &e.data {
                EventData::TaskFailed { error, .. } => Some(error.message().to_string()),
                _ => None,
            };
            let _ = handler_tx.send(Msg::Seen {
                execution: ExecutionId(w),
                kind: e.kind(),
                task: e.source.task_id().map(str::to_string),
                error,
            });
        },
    );
    let (started_tx, started_rx) = mpsc::channel();
    let reactor = Reactor {
        manager: m.clone(),
        news,
        refresh,
        alert,
        started: started_tx,
    };
    let reactor = std::thread::spawn(move || reactor.run(rx));

    println!("starting ingest-news and billing-sync (2 workers)");
    let a = m
        .execute_workflow(news, json!({}))
        .expect("ingest-news starts");
    let f = m
        .execute_workflow(billing, json!({}))
        .expect("billing-sync starts");
    m.wait(a).expect("ingest-news is known");
    m.wait(f).expect("billing-sync is known");

    // The reactor starts two executions: wait for them (bounded), then for their ends. A
    // run's last events are published before `wait` returns, so once they ended the reactor
    // has received every event it could react to, and `Stop` comes after them.
    let mut followers = Vec::new();
    while followers.len() < 2 {
        match started_rx.recv_timeout(LIMIT) {
            Ok(ex) => followers.push(ex),
            Err(_) => break,
        }
    }
    for ex in &followers {
        m.wait(*ex).expect("a started execution is known");
    }
    let _ = tx.send(Msg::Stop);
    let (reactions, reactor_alive) = match reactor.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("the reactor failed: {e}");
            (Vec::new(), false)
        }
        Err(_) => (Vec::new(), false),
    };

    // Every execution of every workflow, as the manager lists them.
    let mut executions: BTreeMap<String, Vec<Ended>> = BTreeMap::new();
    let mut names: BTreeMap<ExecutionId, String> = BTreeMap::new();
    for w in m.list_workflows() {
        for ex in &w.executions {
            let (status, tasks) = match m.get_execution_status(*ex) {
                Ok(r) => (
                    r.status,
                    r.results.into_iter().map(|t| (t.id, t.status)).collect(),
                ),
                Err(_) => (WorkflowStatus::Created, BTreeMap::new()),
            };
            let output = m.output(*ex, last_task(&w.name)).ok().flatten();
            println!("{:<15} {ex}: {status}, output {output:?}", w.name);
            for (t, s) in &tasks {
                println!("  {t:<10} {s}");
            }
            names.insert(*ex, w.name.clone());
            executions.entry(w.name.clone()).or_default().push(Ended {
                execution: *ex,
                status,
                output,
                tasks,
            });
        }
    }
    let timeline: Vec<(String, EventKind)> = timeline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(ex, k)| (names.get(ex).cloned().unwrap_or_default(), *k))
        .collect();
    println!("timeline:");
    for (w, k) in &timeline {
        println!("  {w:<15} {k}");
    }
    Outcome {
        executions,
        reactions,
        timeline,
        reactor_alive,
    }
}

// Unused when `tests/scenarios.rs` includes this file as a module.
#[allow(dead_code)]
fn main() {
    let outcome = scenario();
    match outcome.verify() {
        Ok(()) => println!("ok: the follow-up ran once after ingest-news, the alert once"),
        Err(e) => {
            eprintln!("unexpected outcome: {e}\n{outcome:#?}");
            std::process::exit(1);
        }
    }
}
