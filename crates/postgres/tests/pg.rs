//! Integration tests against a real PostgreSQL server (`$NERV_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in its own schema and drops it.
//! Without a server each test prints `skipped: no PostgreSQL at …` and passes.

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nerv_postgres::{
    ConnectOptions, Engine, Error, Priority, Retry, RunState, TaskSpec, TaskState, Worker, Workflow,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use util::*;

/// A layered DAG of shell tasks that append their name to `file`.
fn layered(file: &std::path::Path, layers: usize, width: usize) -> Workflow {
    let mut wf = Workflow::new("layered");
    for l in 0..layers {
        for w in 0..width {
            let id = format!("t{l}_{w}");
            let mut t = TaskSpec::shell(
                &id,
                format!("sleep 0.02; echo \"$NERV_TASK\" >> '{}'", file.display()),
            );
            if l > 0 {
                t = t.after([
                    format!("t{}_{}", l - 1, w),
                    format!("t{}_{}", l - 1, (w + 1) % width),
                ]);
            }
            wf.tasks.push(t);
        }
    }
    wf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_run_every_task_once() {
    let Some(db) = db("three").await else { return };
    let file = db.file("ran.txt");
    let workers: Vec<_> = (0..3).map(|_| db.worker(&["-j", "3"])).collect();
    db.wait_workers(3).await;
    let wf = layered(&file, 6, 8);
    let run = db.engine.submit(&wf).await.unwrap();
    let status = db.engine.wait(run).await.unwrap();
    assert_eq!(status.run.state, RunState::Succeeded, "{status:?}");
    assert!(all(&status, TaskState::Succeeded));
    assert!(status.tasks.iter().all(|t| t.attempt == 1), "{status:?}");
    let ran = lines(&file);
    let counts = counts(&ran);
    assert_eq!(ran.len(), 48, "{counts:?}");
    for t in &wf.tasks {
        assert_eq!(
            counts.get(&t.id),
            Some(&1),
            "task {} ran {:?} times",
            t.id,
            counts.get(&t.id)
        );
    }
    // Every task recorded succeeded exactly once; several workers took part.
    let mut w = db.engine.watch(run);
    let mut succeeded = Vec::new();
    let mut by = HashSet::new();
    while let Some(ev) = w.next().await {
        let ev = ev.unwrap();
        if ev.kind == "task_succeeded" {
            succeeded.push(ev.task.clone().unwrap());
            by.insert(ev.worker.clone().unwrap());
        }
    }
    assert_eq!(succeeded.len(), 48);
    assert_eq!(succeeded.iter().collect::<HashSet<_>>().len(), 48);
    assert!(by.len() >= 2, "only {by:?} ran tasks");
    drop(workers);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_task_completes_elsewhere_once() {
    let Some(db) = db("sigkill").await else {
        return;
    };
    let file = db.file("slow.txt");
    let pid_file = db.file("slow.pid");
    let wf = Workflow::new("kill").task(
        TaskSpec::shell(
            "slow",
            format!(
                "echo $$ > '{}'; sleep 2; echo \"$NERV_TASK $NERV_ATTEMPT\" >> '{}'",
                pid_file.display(),
                file.display()
            ),
        )
        .retry(Retry {
            backoff: Duration::ZERO,
            ..Retry::attempts(3)
        }),
    );
    let mut a = db.worker(&["-j", "1", "--lease-ms", "1000"]);
    let run = db.engine.submit(&wf).await.unwrap();
    db.until(run, "slow to start", |s| {
        s.tasks[0].state == TaskState::Running
    })
    .await;
    let mut pid = None;
    while pid.is_none() {
        pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The machine dies: the worker and the task's own process group (it runs in one).
    a.kill_hard();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _b = db.worker(&["-j", "1", "--lease-ms", "1000"]);
    let status = db.engine.wait(run).await.unwrap();
    assert_eq!(status.run.state, RunState::Succeeded, "{status:?}");
    assert_eq!(status.tasks[0].attempt, 2);
    assert_eq!(lines(&file), vec!["slow 2".to_string()]);
    let mut w = db.engine.watch(run);
    let mut kinds = Vec::new();
    while let Some(ev) = w.next().await {
        kinds.push(ev.unwrap().kind);
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "task_succeeded").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "lease_expired").count(),
        1,
        "{kinds:?}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_completion_is_ignored() {
    let Some(db) = db("zombie").await else { return };
    let e = &db.engine;
    let wf = Workflow::new("z")
        .task(TaskSpec::shell("a", "true").retry(Retry {
            backoff: Duration::ZERO,
            ..Retry::attempts(3)
        }))
        .task(TaskSpec::shell("b", "true").after(["a"]));
    let run = e.submit(&wf).await.unwrap();
    let old = e
        .claim("w-old", &[], &[], 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].attempt, 1);
    assert_eq!(old[0].idempotency_key().to_string(), format!("{run}/a/1"));
    // The old worker is presumed dead: its lease expires and the task is taken over.
    let mut reaped = 0;
    while reaped == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        reaped = e.reap_expired("w-new").await.unwrap();
    }
    let new = e
        .claim("w-new", &[], &[], 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].attempt, 2);
    // The zombie's late completion is refused; the current one is accepted once.
    assert!(!e.complete(&old[0], Ok(json!("late"))).await.unwrap());
    assert!(e.complete(&new[0], Ok(json!("fresh"))).await.unwrap());
    assert!(!e.complete(&new[0], Ok(json!("again"))).await.unwrap());
    let s = e.status(run).await.unwrap();
    assert_eq!(s.tasks[0].state, TaskState::Succeeded);
    assert_eq!(s.tasks[0].output, Some(json!("fresh")));
    assert_eq!(s.tasks[1].state, TaskState::Ready);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_process_stops_running_tasks() {
    let Some(db) = db("cancel").await else { return };
    let file = db.file("cancel.txt");
    let mut wf = Workflow::new("c");
    for i in 0..4 {
        wf.tasks.push(TaskSpec::shell(
            format!("long{i}"),
            format!(
                "echo start >> '{0}'; sleep 60; echo done >> '{0}'",
                file.display()
            ),
        ));
    }
    wf.tasks
        .push(TaskSpec::shell("after", "true").after(["long0", "long1"]));
    let _w1 = db.worker(&["-j", "2"]);
    let _w2 = db.worker(&["-j", "2"]);
    let run = db.engine.submit(&wf).await.unwrap();
    db.until(run, "4 running", |s| s.count(TaskState::Running) == 4)
        .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nerv-pg-worker"))
        .args([
            "--url",
            &url(),
            "--schema",
            &db.schema,
            "cancel",
            &run.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Cancelled);
    let s = db
        .until(run, "running tasks stopped", |s| {
            all(s, TaskState::Cancelled)
        })
        .await;
    assert_eq!(s.run.unfinished, 0);
    assert!(!lines(&file).contains(&"done".to_string()));
    assert!(
        !db.engine.cancel(run).await.unwrap(),
        "second cancel reports already finished"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limit_holds_across_workers() {
    let Some(db) = db("resource").await else {
        return;
    };
    let file = db.file("markers.txt");
    let mut wf = Workflow::new("r").resource("slot", 2);
    for i in 0..12 {
        wf.tasks.push(
            TaskSpec::shell(
                format!("r{i}"),
                format!(
                    "echo + >> '{0}'; sleep 0.2; echo - >> '{0}'",
                    file.display()
                ),
            )
            .uses("slot", 1),
        );
    }
    let _ws: Vec<_> = (0..3).map(|_| db.worker(&["-j", "4"])).collect();
    let run = db.engine.submit(&wf).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Succeeded, "{s:?}");
    let (mut now, mut max) = (0i32, 0i32);
    for l in lines(&file) {
        now += if l == "+" { 1 } else { -1 };
        max = max.max(now);
    }
    assert_eq!(now, 0);
    assert!(max <= 2, "{max} tasks held 'slot' (capacity 2) at once");
    assert!(max >= 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_failure_skips_dependents_and_functions_run() {
    let Some(db) = db("retry").await else { return };
    let calls = Arc::new(AtomicUsize::new(0));
    let worker = Worker::builder(url())
        .schema(&db.schema)
        .concurrency(4)
        .register("flaky", {
            let calls = calls.clone();
            move |ctx, input: Value| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if ctx.idempotency_key().attempt < input.as_i64().unwrap_or(0) as i32 {
                        Err(format!("attempt {} fails", ctx.idempotency_key().attempt))
                    } else {
                        Ok(json!({ "key": ctx.idempotency_key().to_string() }))
                    }
                }
            }
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (w, s) = (worker.clone(), stop.clone());
        async move { w.run(s).await }
    });
    let quick = Retry {
        backoff: Duration::from_millis(10),
        ..Retry::attempts(3)
    };
    let wf = Workflow::new("f")
        .task(TaskSpec::function("ok", "flaky", json!(2)).retry(quick))
        .task(TaskSpec::function("bad", "flaky", json!(9)).retry(quick))
        .task(TaskSpec::shell("child", "true").after(["bad"]))
        .task(TaskSpec::shell("grandchild", "true").after(["child", "ok"]));
    let run = db.engine.submit(&wf).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Failed);
    let by: std::collections::HashMap<_, _> = s.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    assert_eq!(by["ok"].state, TaskState::Succeeded);
    assert_eq!(by["ok"].attempt, 2);
    assert_eq!(
        by["ok"].output,
        Some(json!({ "key": format!("{run}/ok/2") }))
    );
    assert_eq!(by["bad"].state, TaskState::Failed);
    assert_eq!(by["bad"].attempt, 3);
    assert!(by["bad"]
        .error
        .as_deref()
        .unwrap()
        .contains("attempt 3 fails"));
    assert_eq!(by["child"].state, TaskState::Skipped);
    assert_eq!(by["grandchild"].state, TaskState::Skipped);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    stop.cancel();
    let stats = handle.await.unwrap().unwrap();
    assert_eq!(stats.completed, 5);
    assert_eq!(stats.zombies, 0);
    let runs = db.engine.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_workflow_names_the_task_and_stores_nothing() {
    let Some(db) = db("invalid").await else {
        return;
    };
    let wf = Workflow::new("bad")
        .task(TaskSpec::shell("a", "true"))
        .task(TaskSpec::shell("b", "true").uses("gpu", 1));
    let e = db.engine.submit(&wf).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidWorkflow { task, .. } if task == "b"),
        "{e}"
    );
    assert!(db.engine.runs().await.unwrap().is_empty());
    assert!(db.engine.status(12345).await.unwrap_err().is_not_found());
    db.cleanup().await;
}

#[tokio::test]
async fn invalid_url_and_unreachable_server_fail_fast_naming_the_host() {
    let e = ConnectOptions::new("postgres://u@host:notaport/db").unwrap_err();
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
    assert!(e.to_string().contains("notaport"), "{e}");
    // Nothing listens on port 1: refused at once.
    let e = Engine::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(e.is_connection(), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    // A black-holed address: the connect timeout answers.
    let opts = ConnectOptions::new("postgres://postgres@10.255.255.1:5432/test")
        .unwrap()
        .connect_timeout(Duration::from_millis(500));
    let e = Engine::connect_with(opts).await.unwrap_err();
    assert!(e.is_connection(), "{e}");
    assert!(e.to_string().contains("10.255.255.1:5432"), "{e}");
    // The worker binary says the same and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nerv-pg-worker"))
        .args(["--url", "postgres://postgres@127.0.0.1:1/test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_priority_then_rank() {
    let Some(db) = db("priority").await else {
        return;
    };
    let e = &db.engine;
    let wf = Workflow::new("p")
        .task(TaskSpec::shell("low", "true").priority(Priority::Low))
        .task(TaskSpec::shell("short", "true").estimate(Duration::from_millis(1)))
        .task(TaskSpec::shell("crit", "true").priority(Priority::Critical))
        .task(TaskSpec::shell("long", "true").estimate(Duration::from_millis(100)))
        .task(
            TaskSpec::shell("tail", "true")
                .after(["short"])
                .estimate(Duration::from_millis(500)),
        );
    e.submit(&wf).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let l = e
            .claim("w", &[], &[], 1, Duration::from_secs(30))
            .await
            .unwrap();
        order.push(l[0].task.clone());
    }
    // "short" outranks "long": its successor makes its remaining path 501 ms.
    assert_eq!(order, ["crit", "short", "long", "low"]);
    assert!(e
        .claim("w", &[], &[], 1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    // Tags and functions restrict who may claim.
    e.submit(
        &Workflow::new("tags")
            .task(TaskSpec::shell("gpu-job", "true").tag("gpu"))
            .task(TaskSpec::function("fn-job", "resize", Value::Null)),
    )
    .await
    .unwrap();
    assert!(e
        .claim("plain", &[], &[], 5, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    let gpu = e
        .claim("g", &["gpu".into()], &[], 5, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(gpu.len(), 1);
    assert_eq!(gpu[0].task, "gpu-job");
    let f = e
        .claim("f", &[], &["resize".into()], 5, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].task, "fn-job");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_command_and_fails_the_task() {
    let Some(db) = db("timeout").await else {
        return;
    };
    let file = db.file("late.txt");
    let worker = Worker::builder(url())
        .schema(&db.schema)
        .concurrency(2)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (w, s) = (worker.clone(), stop.clone());
        async move { w.run(s).await }
    });
    let wf = Workflow::new("t").task(
        TaskSpec::shell(
            "slow",
            format!(
                "(sleep 3; echo child >> '{0}') & sleep 3; echo parent >> '{0}'",
                file.display()
            ),
        )
        .timeout(Duration::from_millis(300)),
    );
    let run = db.engine.submit(&wf).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Failed);
    assert!(
        s.tasks[0].error.as_deref().unwrap().contains("timed out"),
        "{s:?}"
    );
    // The whole process group was killed: neither the shell nor its background child writes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(lines(&file).is_empty(), "{:?}", lines(&file));
    stop.cancel();
    handle.await.unwrap().unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_once() {
    let Some(db) = db("migrate").await else {
        return;
    };
    db.engine.drop_schema().await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let opts = ConnectOptions::new(&url()).unwrap().schema(&db.schema);
            tokio::spawn(async move { Engine::connect_with(opts).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let out = std::process::Command::new("psql")
        .args([
            &url(),
            "-Atc",
            &format!(
                "SELECT count(*), max(version) FROM {}.schema_version",
                db.schema
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("1|{}", nerv_postgres::SCHEMA_VERSION)
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_with_nul_characters_are_stored() {
    let Some(db) = db("nul").await else { return };
    let worker = Worker::builder(url())
        .schema(&db.schema)
        .concurrency(2)
        .register("nul", |_ctx, _input: Value| async move {
            Ok::<_, String>(json!({ "s": "a\u{0}b" }))
        })
        .register("nul-err", |_ctx, _input: Value| async move {
            Err::<Value, _>("x\u{0}y".to_string())
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (w, s) = (worker.clone(), stop.clone());
        async move { w.run(s).await }
    });
    let wf = Workflow::new("nul")
        .task(TaskSpec::function("ok", "nul", Value::Null))
        .task(TaskSpec::function("err", "nul-err", Value::Null))
        .task(TaskSpec::shell("sh", "printf 'a\\000b'"));
    let run = db.engine.submit(&wf).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.tasks[0].output, Some(json!({ "s": "ab" })));
    assert_eq!(s.tasks[1].error.as_deref(), Some("xy"));
    assert_eq!(s.tasks[2].state, TaskState::Succeeded, "{s:?}");
    stop.cancel();
    handle.await.unwrap().unwrap();
    db.cleanup().await;
}
