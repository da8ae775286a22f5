//! The workflow manager: define, execute, observe, cancel.

mod util;

use nerv::{
    Event, EventFilter, EventKind, ManagerError, RetryPolicy, TaskDef, TaskError, TaskStatus,
    WorkflowManager, WorkflowStatus,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::ms;

const LIMIT: Duration = Duration::from_secs(10);

fn manager() -> WorkflowManager {
    WorkflowManager::builder().workers(2).build()
}

/// A task that waits until `gate` opens, then returns `out`.
fn gated(id: &str, gate: &Arc<AtomicBool>, out: Value) -> TaskDef {
    let gate = gate.clone();
    TaskDef::new(id, move |_, _| {
        let t0 = std::time::Instant::now();
        while !gate.load(SeqCst) {
            if t0.elapsed() > LIMIT {
                return Err(TaskError::msg("gate never opened"));
            }
            std::thread::sleep(ms(1));
        }
        Ok(out.clone())
    })
}

#[test]
fn execute_returns_at_once_and_status_follows_the_run() {
    let m = manager();
    let wf = m.create_workflow("etl", "extract, transform, load");
    assert_eq!(
        m.get_workflow_status(wf).unwrap().status,
        WorkflowStatus::Created
    );
    let gate = Arc::new(AtomicBool::new(false));
    m.add_task(wf, gated("extract", &gate, json!([1, 2, 3])))
        .unwrap();
    m.add_task(
        wf,
        TaskDef::new("transform", |_, inp| {
            let v: Vec<i64> = inp.get_as("extract")?;
            Ok(json!(v.iter().map(|x| x * 10).collect::<Vec<_>>()))
        })
        .depends_on("extract"),
    )
    .unwrap();
    m.add_task(
        wf,
        TaskDef::new("load", |_, inp| {
            let v: Vec<i64> = inp.get_as("transform")?;
            let scale = inp.context()["scale"].as_i64().unwrap_or(1);
            Ok(json!(v.iter().sum::<i64>() * scale))
        })
        .depends_on("transform"),
    )
    .unwrap();
    let ex = m.execute_workflow(wf, json!({"scale": 2})).unwrap();
    // Returned while `extract` still waits.
    let running = m.get_workflow_status(wf).unwrap();
    assert_eq!(running.status, WorkflowStatus::Running);
    assert_eq!(running.execution, Some(ex));
    assert_eq!(running.task_count, 3);
    assert!(running.completed_at.is_none());
    assert_eq!(m.get_task_status(ex, "load").unwrap(), TaskStatus::Pending);
    assert_eq!(m.output(ex, "load").unwrap(), None);
    // The projector sees `extract` start while it waits at its gate.
    let t0 = std::time::Instant::now();
    while m.get_task_status(ex, "extract").unwrap() != TaskStatus::Running {
        assert!(t0.elapsed() < LIMIT, "extract never reported running");
        std::thread::sleep(ms(1));
    }
    gate.store(true, SeqCst);
    m.wait(ex).unwrap();
    let done = m.get_workflow_status(wf).unwrap();
    assert_eq!(done.status, WorkflowStatus::Completed);
    assert_eq!(done.name, "etl");
    assert_eq!(done.description, "extract, transform, load");
    assert!(done.completed_at.unwrap() >= done.started_at.unwrap());
    assert!(done.started_at.unwrap() >= done.created_at);
    assert!(done.error.is_none());
    assert!(done
        .results
        .iter()
        .all(|r| r.status == TaskStatus::Completed && r.attempts == 1));
    assert_eq!(m.output(ex, "load").unwrap(), Some(json!(120)));
    assert_eq!(
        m.get_task_status(ex, "load").unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(
        m.get_execution_status(ex).unwrap().status,
        WorkflowStatus::Completed
    );
    let state = m.projector().flush();
    let mut done = state.state().completed_tasks(ex.0);
    done.sort();
    assert_eq!(done, ["extract", "load", "transform"]);
}

#[test]
fn errors_name_what_is_wrong() {
    let m = manager();
    let nowhere = nerv::WorkflowId(u64::MAX);
    let e = m
        .add_task(nowhere, TaskDef::new("a", |_, _| Ok(Value::Null)))
        .unwrap_err();
    assert!(e.is_not_found());
    assert!(m.execute_workflow(nowhere, Value::Null).is_err());

    let wf = m.create_workflow("w", "");
    m.add_task(wf, TaskDef::new("a", |_, _| Ok(Value::Null)))
        .unwrap();
    let e = m
        .add_task(wf, TaskDef::new("a", |_, _| Ok(Value::Null)))
        .unwrap_err();
    assert_eq!(e.to_string(), "workflow `w` already has a task `a`");

    m.add_task(
        wf,
        TaskDef::new("b", |_, _| Ok(Value::Null)).depends_on("ghost"),
    )
    .unwrap();
    let e = m.execute_workflow(wf, Value::Null).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ManagerError::InvalidWorkflow { .. }));
    assert!(msg.contains("`b`") && msg.contains("`ghost`"), "{msg}");

    let wf = m.create_workflow("loop", "");
    for (t, d) in [("x", "z"), ("y", "x"), ("z", "y")] {
        m.add_task(wf, TaskDef::new(t, |_, _| Ok(Value::Null)).depends_on(d))
            .unwrap();
    }
    let msg = m.execute_workflow(wf, Value::Null).unwrap_err().to_string();
    assert!(msg.contains("cycle"), "{msg}");
    for t in ["x", "y", "z"] {
        assert!(msg.contains(t), "{msg}");
    }
    let e = m
        .get_task_status(nerv::ExecutionId(u64::MAX), "a")
        .unwrap_err();
    assert!(e.is_not_found());
}

#[test]
fn a_failure_is_reported_with_the_failing_task() {
    let m = manager();
    let wf = m.create_workflow("fragile", "");
    m.add_task(
        wf,
        TaskDef::new("flaky", |_, _| Err(TaskError::msg("disk full")))
            .retry(RetryPolicy::attempts(2).backoff(ms(1))),
    )
    .unwrap();
    m.add_task(
        wf,
        TaskDef::new("after", |_, _| Ok(Value::Null)).depends_on("flaky"),
    )
    .unwrap();
    m.add_task(wf, TaskDef::new("independent", |_, _| Ok(json!(1))))
        .unwrap();
    let ex = m.execute_workflow(wf, Value::Null).unwrap();
    m.wait(ex).unwrap();
    let r = m.get_workflow_status(wf).unwrap();
    assert_eq!(r.status, WorkflowStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("task `flaky` failed: disk full"));
    assert_eq!(m.get_task_status(ex, "after").unwrap(), TaskStatus::Skipped);
    assert_eq!(
        m.get_task_status(ex, "independent").unwrap(),
        TaskStatus::Completed
    );
    let flaky = r.results.iter().find(|t| t.id == "flaky").unwrap();
    assert_eq!(flaky.attempts, 2);
}

#[test]
fn many_workflows_share_the_engine_and_report_separately() {
    let m = manager();
    let mut wfs = Vec::new();
    for w in 0..8 {
        let wf = m.create_workflow(&format!("wf{w}"), "");
        for i in 0..20 {
            let t = TaskDef::new(format!("t{i}"), move |_, inp| {
                let below: i64 = inp.iter().map(|(_, v)| v.as_i64().unwrap()).sum();
                Ok(json!(below + 1))
            });
            let t = if i > 0 {
                t.depends_on(format!("t{}", i - 1))
            } else {
                t
            };
            m.add_task(wf, t).unwrap();
        }
        wfs.push(wf);
    }
    let exs: Vec<_> = wfs
        .iter()
        .map(|wf| m.execute_workflow(*wf, Value::Null).unwrap())
        .collect();
    for ex in &exs {
        m.wait(*ex).unwrap();
        assert_eq!(m.output(*ex, "t19").unwrap(), Some(json!(20)));
    }
    let list = m.list_workflows();
    assert_eq!(list.len(), 8);
    assert!(list
        .iter()
        .all(|w| w.status == WorkflowStatus::Completed && w.task_count == 20));
    let runs = m.list_executions();
    assert_eq!(runs.len(), 8);
    let mut ids: Vec<_> = runs.iter().map(|r| r.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 8);
}

#[test]
fn every_transition_is_published() {
    let m = manager();
    let log: Arc<Mutex<Vec<Event>>> = Arc::default();
    let l = log.clone();
    let _s = m.events().subscribe(EventFilter::all(), move |e| {
        l.lock().unwrap().push(e.clone())
    });
    let wf = m.create_workflow("observed", "");
    m.add_task(wf, TaskDef::new("a", |_, _| Ok(json!(1))))
        .unwrap();
    m.add_task(wf, TaskDef::new("b", |_, _| Ok(json!(2))).depends_on("a"))
        .unwrap();
    let ex = m.execute_workflow(wf, Value::Null).unwrap();
    m.wait(ex).unwrap();
    let ev = log.lock().unwrap().clone();
    let kinds: Vec<EventKind> = ev.iter().map(Event::kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![
            WorkflowCreated,
            TaskPending,
            TaskPending,
            WorkflowStarted,
            TaskStarted,
            TaskCompleted,
            TaskStarted,
            TaskCompleted,
            WorkflowCompleted
        ]
    );
    assert_eq!(ev[0].source.workflow, Some(wf.0));
    assert!(ev[1..].iter().all(|e| e.source.workflow == Some(ex.0)));
}

#[test]
fn cancel_an_execution() {
    let m = manager();
    let wf = m.create_workflow("long", "");
    m.add_task(
        wf,
        TaskDef::new("wait", |cx, _| {
            while !cx.is_cancelled() {
                std::thread::sleep(ms(1));
            }
            Err(TaskError::cancelled())
        }),
    )
    .unwrap();
    m.add_task(
        wf,
        TaskDef::new("next", |_, _| Ok(Value::Null)).depends_on("wait"),
    )
    .unwrap();
    let ex = m.execute_workflow(wf, Value::Null).unwrap();
    std::thread::sleep(ms(5));
    m.cancel(ex).unwrap();
    m.wait(ex).unwrap();
    let r = m.get_workflow_status(wf).unwrap();
    assert_eq!(r.status, WorkflowStatus::Cancelled);
    assert_eq!(
        m.get_task_status(ex, "next").unwrap(),
        TaskStatus::Cancelled
    );
}

#[test]
fn async_tasks_and_later_additions() {
    let m = manager();
    let wf = m.create_workflow("io", "");
    m.add_task(
        wf,
        TaskDef::new_async("fetch", |_, inp| async move {
            tokio::time::sleep(ms(2)).await;
            Ok(json!(format!(
                "page of {}",
                inp.context()["site"].as_str().unwrap()
            )))
        }),
    )
    .unwrap();
    let ex1 = m.execute_workflow(wf, json!({"site": "a"})).unwrap();
    // A task added later is part of later executions only.
    m.add_task(
        wf,
        TaskDef::new_async("size", |_, inp| async move {
            let page: String = inp.get_as("fetch")?;
            Ok(json!(page.len()))
        })
        .depends_on("fetch"),
    )
    .unwrap();
    let ex2 = m.execute_workflow(wf, json!({"site": "bb"})).unwrap();
    m.wait(ex1).unwrap();
    m.wait(ex2).unwrap();
    assert_eq!(m.output(ex1, "fetch").unwrap(), Some(json!("page of a")));
    assert!(m.output(ex1, "size").is_err());
    assert_eq!(m.output(ex2, "size").unwrap(), Some(json!(10)));
    let w = &m.list_workflows()[0];
    assert_eq!(w.executions, vec![ex1, ex2]);
}

#[test]
fn repetition_run_n_and_run_until() {
    let m = manager();
    let wf = m.create_workflow("counter", "");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    m.add_task(
        wf,
        TaskDef::new("tick", move |_, _| Ok(json!(c.fetch_add(1, SeqCst) + 1))),
    )
    .unwrap();
    let reports = m.run_n(wf, Value::Null, 3).unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(count.load(SeqCst), 3);
    let (_, n) = m
        .run_until(wf, Value::Null, |_| count.load(SeqCst) >= 7)
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(m.list_executions().len(), 7);
}

#[test]
fn a_fallback_output_reaches_dependents() {
    let m = manager();
    let wf = m.create_workflow("prices", "");
    m.add_task(
        wf,
        TaskDef::new("quote", |_, _| Err(TaskError::msg("exchange closed")))
            .fallback(|_, _| Ok(json!(99))),
    )
    .unwrap();
    m.add_task(
        wf,
        TaskDef::new("order", |_, inp| Ok(json!(inp.get_as::<i64>("quote")? + 1)))
            .depends_on("quote"),
    )
    .unwrap();
    let ex = m.execute_workflow(wf, Value::Null).unwrap();
    m.wait(ex).unwrap();
    assert_eq!(m.output(ex, "order").unwrap(), Some(json!(100)));
    let r = m.get_workflow_status(wf).unwrap();
    assert_eq!(r.status, WorkflowStatus::Completed);
    let q = r.results.iter().find(|t| t.id == "quote").unwrap();
    assert_eq!(q.fallback.as_ref().unwrap().message(), "exchange closed");
}

#[test]
fn trigger_rules_run_cleanup_and_alerts_after_failures() {
    let m = manager();
    let wf = m.create_workflow("with-cleanup", "");
    m.add_task(
        wf,
        TaskDef::new("work", |_, _| Err(TaskError::msg("crashed"))),
    )
    .unwrap();
    m.add_task(wf, TaskDef::new("ok", |_, _| Ok(json!("fine"))))
        .unwrap();
    m.add_task(
        wf,
        TaskDef::new("cleanup", |_, inp| {
            Ok(json!({"work": inp.get("work").cloned(), "ok": inp.get("ok").cloned()}))
        })
        .depends_on_all(["work", "ok"])
        .trigger(nerv::TriggerRule::AllDone),
    )
    .unwrap();
    m.add_task(
        wf,
        TaskDef::new("alert", |_, _| Ok(json!("paged")))
            .depends_on("work")
            .trigger(nerv::TriggerRule::OneFailed),
    )
    .unwrap();
    let ex = m.execute_workflow(wf, Value::Null).unwrap();
    m.wait(ex).unwrap();
    assert_eq!(
        m.output(ex, "cleanup").unwrap(),
        Some(json!({"work": null, "ok": "fine"}))
    );
    assert_eq!(m.output(ex, "alert").unwrap(), Some(json!("paged")));
    assert_eq!(
        m.get_workflow_status(wf).unwrap().status,
        WorkflowStatus::Failed
    );
}

#[test]
fn memoized_task_defs() {
    let m = manager();
    let wf = m.create_workflow("memo", "");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    m.add_task(
        wf,
        TaskDef::new("embed", move |_, inp| {
            c.fetch_add(1, SeqCst);
            Ok(json!({"len": inp.context()["text"].as_str().unwrap().len()}))
        })
        .memoize(nerv::Memo::new().version("1")),
    )
    .unwrap();
    for text in ["abc", "abc", "hello"] {
        let ex = m.execute_workflow(wf, json!({ "text": text })).unwrap();
        m.wait(ex).unwrap();
        assert_eq!(
            m.output(ex, "embed").unwrap(),
            Some(json!({"len": text.len()}))
        );
    }
    assert_eq!(calls.load(SeqCst), 2);
    let e = m
        .add_task(
            wf,
            TaskDef::new_async("x", |_, _| async { Ok(Value::Null) }).memoize(nerv::Memo::new()),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "task `x`: memoization is for sync work without a fallback"
    );
}

#[test]
fn handlers_of_start_events_may_call_the_manager() {
    // A `WorkflowStarted` handler runs on the thread that executes the workflow: the manager
    // must hold no lock then, and must already know the execution.
    let m = manager();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (m2, s) = (m.clone(), seen.clone());
    let _sub = m.events().subscribe(
        EventFilter::kinds([EventKind::WorkflowStarted, EventKind::TaskPending]),
        move |e: &Event| {
            let ex = nerv::ExecutionId(e.source.workflow.unwrap());
            let status = m2.get_execution_status(ex).map(|r| r.status);
            s.lock().unwrap().push((e.kind(), status.ok()));
            let _ = m2.list_executions();
        },
    );
    let wf = m.create_workflow("w", "");
    m.add_task(wf, TaskDef::new("a", |_, _| Ok(json!(1))))
        .unwrap();
    let ex = m.execute_workflow(wf, json!({})).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let m3 = m.clone();
    std::thread::spawn(move || {
        let _ = tx.send(m3.wait(ex).map(|r| r.status()));
    });
    assert_eq!(
        rx.recv_timeout(LIMIT).expect("no deadlock").unwrap(),
        nerv::RunStatus::Completed
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(_, s)| s.is_some()), "{seen:?}");
}
