//! PostgreSQL restarts mid-run: workers and the watcher reconnect with backoff and the run
//! completes. Its own test binary, so no other test of this crate runs while the server restarts
//! (cargo runs test binaries one after another).

mod util;

use std::process::Command;
use std::time::Duration;

use nerv_postgres::{Retry, RunState, TaskSpec, TaskState, Workflow};
use util::*;

fn cluster_version() -> Option<String> {
    let mut v: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v.pop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_completes() {
    let Some(db) = db("restart").await else {
        return;
    };
    let Some(version) = cluster_version() else {
        println!("skipped: no local cluster under /etc/postgresql to restart");
        db.cleanup().await;
        return;
    };
    let file = db.file("ran.txt");
    let mut wf = Workflow::new("restart");
    for i in 0..40 {
        let mut t = TaskSpec::shell(
            format!("t{i}"),
            format!("sleep 0.1; echo \"$NERV_TASK\" >> '{}'", file.display()),
        )
        // A lease that expires while the server is down is reclaimed like any other: retry.
        .retry(Retry::attempts(3));
        if i >= 4 {
            t = t.after([format!("t{}", i - 4)]);
        }
        wf.tasks.push(t);
    }
    let _w1 = db.worker(&["-j", "2", "--lease-ms", "10000"]);
    let _w2 = db.worker(&["-j", "2", "--lease-ms", "10000"]);
    let run = db.engine.submit(&wf).await.unwrap();
    db.until(run, "some progress", |s| s.count(TaskState::Succeeded) >= 8)
        .await;
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        other => {
            println!("skipped: cannot restart the cluster: {other:?}");
            db.cleanup().await;
            return;
        }
    }
    let status = db.engine.wait(run).await.unwrap();
    assert_eq!(status.run.state, RunState::Succeeded, "{status:?}");
    assert!(all(&status, TaskState::Succeeded));
    let counts = counts(&lines(&file));
    for t in &wf.tasks {
        assert!(
            counts.get(&t.id).copied().unwrap_or(0) >= 1,
            "task {} never ran",
            t.id
        );
    }
    let mut w = db.engine.watch(run);
    let mut succeeded = 0;
    while let Some(ev) = w.next().await {
        if ev.unwrap().kind == "task_succeeded" {
            succeeded += 1;
        }
    }
    assert_eq!(succeeded, 40, "each task recorded succeeded exactly once");
    tokio::time::sleep(Duration::from_millis(10)).await;
    db.cleanup().await;
}
