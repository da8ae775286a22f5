//! Integration tests against a real PostgreSQL server (`$NERV_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in its own schema and drops it.
//! Without a server each test prints `skipped: no PostgreSQL at …` and passes.

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nerv_postgres::{
    Cache, CommandKey, ConnectOptions, Engine, Error, KeyCommand, Memo, Priority, Retry, RunState,
    TaskSpec, TaskState, Worker, Workflow,
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

/// The tasks of `n` claims of one task each, in claim order (fewer if the queue runs dry).
async fn claim_one_by_one(e: &Engine, n: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..n {
        let l = e
            .claim("w", &[], &[], 1, Duration::from_secs(30))
            .await
            .unwrap();
        match l.first() {
            Some(l) => order.push(l.task.clone()),
            None => break,
        }
    }
    order
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
    let order = claim_one_by_one(e, 4).await;
    // "short" outranks "long": its successor makes its remaining path 501 ms.
    assert_eq!(order, ["crit", "short", "long", "low"]);
    assert!(claim_one_by_one(e, 1).await.is_empty());
    // Order keys replace the ranks (priority still first; no key counts as 0).
    let keyed = Workflow::new("keyed")
        .task(
            TaskSpec::shell("long", "true")
                .estimate(Duration::from_secs(100))
                .order_key(1),
        )
        .task(TaskSpec::shell("none", "true").estimate(Duration::from_secs(50)))
        .task(TaskSpec::shell("short", "true").order_key(u64::MAX))
        .task(
            TaskSpec::shell("low", "true")
                .priority(Priority::Low)
                .order_key(u64::MAX),
        );
    e.submit(&keyed).await.unwrap();
    let order = claim_one_by_one(e, 4).await;
    assert_eq!(order, ["short", "long", "none", "low"]);
    assert!(claim_one_by_one(e, 1).await.is_empty());
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
async fn task_durations_average_the_workflows_recent_successes() {
    let Some(db) = db("durations").await else {
        return;
    };
    let e = &db.engine;
    // Submits a run of `name`, claims all its tasks, fails `bad`, completes `quick` at once
    // and the others after 200 ms.
    let run = |name: &'static str, ids: &'static [&'static str]| async move {
        let mut wf = Workflow::new(name);
        for id in ids {
            wf = wf.task(TaskSpec::shell(*id, "true"));
        }
        e.submit(&wf).await.unwrap();
        let leases = e
            .claim("w", &[], &[], ids.len(), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(leases.len(), ids.len());
        for l in leases.iter().filter(|l| l.task != "slow") {
            let r = if l.task == "bad" {
                Err("no".to_string())
            } else {
                Ok(Value::Null)
            };
            assert!(e.complete(l, r).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for l in leases.iter().filter(|l| l.task == "slow") {
            assert!(e.complete(l, Ok(Value::Null)).await.unwrap());
        }
    };
    run("hist", &["oldest", "slow"]).await;
    run("hist", &["slow", "bad"]).await;
    run("other", &["elsewhere"]).await;
    run("hist", &["slow", "quick"]).await;
    // The last two runs of "hist": not `oldest` (an older run), not `bad` (failed), not
    // `elsewhere` (another workflow).
    let d = e.task_durations("hist", 2).await.unwrap();
    let mut names: Vec<&String> = d.keys().collect();
    names.sort();
    assert_eq!(names, ["quick", "slow"]);
    assert!(d["slow"] >= Duration::from_millis(200), "{d:?}");
    let d = e.task_durations("hist", 10).await.unwrap();
    assert!(d.contains_key("oldest") && !d.contains_key("bad"), "{d:?}");
    assert!(e.task_durations("none", 10).await.unwrap().is_empty());
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
        // One row per version, each applied once.
        format!(
            "{}|{}",
            nerv_postgres::SCHEMA_VERSION,
            nerv_postgres::SCHEMA_VERSION
        )
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

/// Final run events (`run_succeeded`, `run_failed`, `run_cancelled`) of `run`.
async fn final_events(db: &Db, run: i64) -> i64 {
    db.sql()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE run_id = $1 AND kind IN ('run_succeeded', 'run_failed', 'run_cancelled')",
            &[&run],
        )
        .await
        .unwrap()
        .get(0)
}

fn squares(db: &Db, calls: &Arc<AtomicUsize>, memo: Memo) -> Worker {
    let calls = calls.clone();
    Worker::builder(url())
        .schema(&db.schema)
        .concurrency(4)
        .register_memo("square", memo, move |_ctx, input: Value| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let n = input["n"].as_i64().ok_or("no n")?;
                Ok::<_, String>(json!(n * n))
            }
        })
        .build()
        .unwrap()
}

/// A memoized function runs once per input: a later run (on another worker) completes from
/// the shared cache, recorded as cached with a `task_cached` event; a new version or an
/// expired entry misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memoized_functions_hit_the_shared_cache_across_workers_and_runs() {
    let Some(db) = db("memo_fn").await else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = |ids: &[(&str, i64)]| {
        let mut wf = Workflow::new("sq");
        for (id, n) in ids {
            wf = wf.task(TaskSpec::function(
                *id,
                "square",
                json!({ "n": n, "unit": "m" }),
            ));
        }
        wf
    };
    let (stop, h) = db.spawn(squares(&db, &calls, Memo::new().version("1")));
    let run = db.engine.submit(&wf(&[("a", 3), ("b", 4)])).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Succeeded);
    assert!(s.tasks.iter().all(|t| !t.cached));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    stop.cancel();
    h.await.unwrap().unwrap();
    // Another worker (same registration): both hits, nothing runs.
    let (stop, h) = db.spawn(squares(&db, &calls, Memo::new().version("1")));
    let run = db.engine.submit(&wf(&[("c", 3), ("d", 4)])).await.unwrap();
    let mut kinds = Vec::new();
    let mut w = db.engine.watch(run);
    while let Some(ev) = w.next().await {
        let ev = ev.unwrap();
        kinds.push((ev.task.clone().unwrap_or_default(), ev.kind.clone()));
    }
    let s = db.engine.status(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Succeeded);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{kinds:?}");
    assert!(s.tasks.iter().all(|t| t.cached), "{s:?}");
    assert_eq!(s.tasks[0].output, Some(json!(9)));
    assert_eq!(s.tasks[1].output, Some(json!(16)));
    assert!(
        kinds.contains(&("c".into(), "task_cached".into())),
        "{kinds:?}"
    );
    assert_eq!(final_events(&db, run).await, 1);
    stop.cancel();
    h.await.unwrap().unwrap();
    let entries = db.engine.memo_entries().await.unwrap();
    let tasks: Vec<&str> = entries.iter().map(|e| e.task.as_str()).collect();
    assert_eq!(tasks, ["a", "b"]);
    assert!(entries.iter().all(|e| e.expires.is_none() && e.size > 0));
    // A new version misses; the TTL sets the expiry, and an expired entry misses (expired by
    // moving its expiry back rather than by sleeping).
    let (stop, h) = db.spawn(squares(
        &db,
        &calls,
        Memo::new().version("2").ttl(Duration::from_secs(3600)),
    ));
    let run = db.engine.submit(&wf(&[("e", 3)])).await.unwrap();
    db.engine.wait(run).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let e = db.engine.memo_entries().await.unwrap();
    let e = e.iter().find(|e| e.task == "e").unwrap();
    let ttl = e.expires.unwrap().duration_since(e.created).unwrap();
    assert_eq!(ttl, Duration::from_secs(3600));
    let run = db.engine.submit(&wf(&[("f", 3)])).await.unwrap();
    assert!(db.engine.wait(run).await.unwrap().tasks[0].cached);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    db.sql()
        .await
        .execute(
            "UPDATE memo SET expires_at = now() - interval '1 second' WHERE task = 'e'",
            &[],
        )
        .await
        .unwrap();
    let run = db.engine.submit(&wf(&[("g", 3)])).await.unwrap();
    let s = db.engine.wait(run).await.unwrap();
    assert!(!s.tasks[0].cached);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    stop.cancel();
    h.await.unwrap().unwrap();
    assert_eq!(db.engine.memo_remove_tasks(&["a".into()]).await.unwrap(), 1);
    assert_eq!(db.engine.memo_clear().await.unwrap(), 2);
    assert!(db.engine.memo_entries().await.unwrap().is_empty());
    db.cleanup().await;
}

/// A cached command's key is computed by the worker when it claims the task, from the inputs
/// its upstream task produced: same input → hit (not run), changed input → run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_commands_are_keyed_on_the_worker_from_upstream_outputs() {
    let Some(db) = db("memo_cmd").await else {
        return;
    };
    let dir = db.dir.clone();
    let wf = |version: &str| {
        let consume = "cat in.txt >> out.txt";
        Workflow::new("c")
            .task(TaskSpec::shell(
                "produce",
                format!("echo {version} > '{}'", dir.join("in.txt").display()),
            ))
            .task(
                TaskSpec::shell("consume", format!("cd '{}' && {consume}", dir.display()))
                    .after(["produce"])
                    .cache(Cache {
                        key: CommandKey {
                            task: "consume".into(),
                            command: KeyCommand::Shell(consume.into()),
                            env: Default::default(),
                            cwd: dir.clone(),
                            inputs: vec!["in.txt".into()],
                        },
                        ttl: None,
                    }),
            )
    };
    let worker = Worker::builder(url())
        .schema(&db.schema)
        .concurrency(2)
        .build()
        .unwrap();
    let (stop, h) = db.spawn(worker);
    let out = db.file("out.txt");
    for (version, cached, lines_after) in [("v1", false, 1), ("v1", true, 1), ("v2", false, 2)] {
        let run = db.engine.submit(&wf(version)).await.unwrap();
        let s = db.engine.wait(run).await.unwrap();
        assert_eq!(s.run.state, RunState::Succeeded, "{s:?}");
        assert_eq!(s.tasks[1].cached, cached, "{version}: {s:?}");
        assert!(!s.tasks[0].cached);
        assert_eq!(lines(&out).len(), lines_after, "{version}");
    }
    assert_eq!(lines(&out), ["v1", "v2"]);
    assert_eq!(db.engine.memo_entries().await.unwrap().len(), 2);
    stop.cancel();
    h.await.unwrap().unwrap();
    db.cleanup().await;
}

/// Many runs completed concurrently by several workers in small batches: each run is
/// finalized exactly once, after its last task; `runs` derives the unfinished counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_finishes_exactly_once_under_concurrent_completions() {
    let Some(db) = db("finish_once").await else {
        return;
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        let w = Worker::builder(url())
            .schema(&db.schema)
            .concurrency(8)
            .batch(2)
            .register("noop", |_ctx, v: Value| async move { Ok::<_, String>(v) })
            .build()
            .unwrap();
        workers.push(db.spawn(w));
    }
    let mut runs = Vec::new();
    for r in 0..12 {
        let mut wf = Workflow::new(format!("r{r}"));
        for i in 0..30 {
            let mut t = TaskSpec::function(format!("t{i}"), "noop", json!(i));
            if i >= 3 {
                t = t.after([format!("t{}", i - 3), format!("t{}", i - 2)]);
            }
            wf = wf.task(t);
        }
        runs.push(db.engine.submit(&wf).await.unwrap());
    }
    for &run in &runs {
        let s = db.engine.wait(run).await.unwrap();
        assert_eq!(s.run.state, RunState::Succeeded);
        assert_eq!(s.run.unfinished, 0);
        assert_eq!(final_events(&db, run).await, 1, "run {run}");
    }
    // A successor is made ready by the transaction that records its parent's success (the
    // statement is pipelined with that transaction's COMMIT, never after it).
    let apart: i64 = db
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM events r WHERE r.kind = 'task_ready' AND r.task_id >= 3
               AND NOT EXISTS (SELECT 1 FROM events s WHERE s.run_id = r.run_id AND s.xid = r.xid
                               AND s.kind = 'task_succeeded')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(apart, 0);
    for (stop, h) in workers {
        stop.cancel();
        assert_eq!(h.await.unwrap().unwrap().zombies, 0);
    }
    db.cleanup().await;
}

/// A run whose last completer died between its commit and finishing the run is finished by
/// a reaper (the safety net), once; a cancel in that window finishes it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_finishes_a_run_whose_finisher_died() {
    let Some(db) = db("finish_net").await else {
        return;
    };
    let run = db
        .engine
        .submit(&Workflow::new("w").task(TaskSpec::function("a", "f", json!(1))))
        .await
        .unwrap();
    // What a completion does, without the finalize that follows its commit.
    let c = db.sql().await;
    c.batch_execute(&format!(
        "UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE run_id = {run};
         INSERT INTO run_counts (run_id, slot, done, failed) VALUES ({run}, 'dead', 1, 0);"
    ))
    .await
    .unwrap();
    assert_eq!(
        db.engine.status(run).await.unwrap().run.state,
        RunState::Running
    );
    db.engine.reap_expired("me").await.unwrap();
    db.engine.reap_expired("me").await.unwrap();
    let s = db.engine.status(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Succeeded);
    assert_eq!(final_events(&db, run).await, 1);
    // A cancel in that window finds the run finished (and finishes it), not cancelled.
    let run = db
        .engine
        .submit(&Workflow::new("w").task(TaskSpec::function("a", "f", json!(1))))
        .await
        .unwrap();
    c.batch_execute(&format!(
        "UPDATE tasks SET status = 'failed', finished_at = now() WHERE run_id = {run};
         INSERT INTO run_counts (run_id, slot, done, failed) VALUES ({run}, 'dead', 1, 1);"
    ))
    .await
    .unwrap();
    assert!(!db.engine.cancel(run).await.unwrap());
    let s = db.engine.status(run).await.unwrap();
    assert_eq!(s.run.state, RunState::Failed);
    assert_eq!(final_events(&db, run).await, 1);
    db.cleanup().await;
}

/// A version-1 schema (counters on the run row, the unused memo table) upgrades on open:
/// counts move to `run_counts`, runs get their index by name, and runs go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_upgrades_on_open() {
    let Some(db) = db("upgrade").await else {
        return;
    };
    db.engine.drop_schema().await.unwrap();
    let opts = ConnectOptions::new(&url()).unwrap().schema(&db.schema);
    assert_eq!(nerv_postgres::migrate_schema_to(&opts, 1).await.unwrap(), 1);
    let c = db.sql().await;
    // A v1 run: 3 tasks, 2 terminal (one failed), one still ready.
    c.batch_execute(
        "INSERT INTO runs (id, name, status, total, unfinished, failed) VALUES (7, 'old', 'running', 3, 1, 1);
         INSERT INTO memo (key, output) VALUES ('k', '1');",
    )
    .await
    .unwrap();
    let engine = Engine::connect_with(opts).await.unwrap();
    let v: i32 = c
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, nerv_postgres::SCHEMA_VERSION);
    assert_eq!(v, 3);
    // Version 3's index of runs by name.
    let idx: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'runs_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 1);
    let r = engine.runs().await.unwrap();
    assert_eq!((r[0].id, r[0].tasks, r[0].unfinished), (7, 3, 1));
    assert!(engine.memo_entries().await.unwrap().is_empty());
    // Opening again changes nothing.
    let engine = Engine::connect_with(engine.options().clone())
        .await
        .unwrap();
    c.execute("SELECT setval('runs_id_seq', 7)", &[])
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (stop, h) = db.spawn(squares(&db, &calls, Memo::new()));
    let run = engine
        .submit(&Workflow::new("new").task(TaskSpec::function("x", "square", json!({"n": 2}))))
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap().tasks[0].output,
        Some(json!(4))
    );
    stop.cancel();
    h.await.unwrap().unwrap();
    db.cleanup().await;
}

/// `prune_runs` deletes finished runs (with their events) by age and count, never a running
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_finished_runs_and_their_events() {
    let Some(db) = db("prune").await else { return };
    let calls = Arc::new(AtomicUsize::new(0));
    let (stop, h) = db.spawn(squares(&db, &calls, Memo::new()));
    let mut done = Vec::new();
    for i in 0..3 {
        let wf = Workflow::new("p").task(TaskSpec::function("x", "square", json!({"n": i})));
        let run = db.engine.submit(&wf).await.unwrap();
        db.engine.wait(run).await.unwrap();
        done.push(run);
    }
    stop.cancel();
    h.await.unwrap().unwrap();
    // No worker has this function: the run stays running.
    let running = db
        .engine
        .submit(&Workflow::new("stuck").task(TaskSpec::function("y", "nobody", json!(0))))
        .await
        .unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(db.engine.prune_runs(Some(hour_ago), None).await.unwrap(), 0);
    assert_eq!(db.engine.prune_runs(None, None).await.unwrap(), 0);
    // Keep the 2 newest (the running one and the last finished one).
    assert_eq!(db.engine.prune_runs(None, Some(2)).await.unwrap(), 2);
    let left: Vec<i64> = db
        .engine
        .runs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [running, done[2]]);
    let events: i64 = db
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE run_id = ANY($1)",
            &[&done[..2].to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    // Everything finished may go: the running run stays.
    assert_eq!(db.engine.prune_runs(None, Some(0)).await.unwrap(), 1);
    let left: Vec<i64> = db
        .engine
        .runs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [running]);
    db.cleanup().await;
}
