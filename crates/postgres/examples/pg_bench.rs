//! Benchmark of the PostgreSQL backend: throughput of no-op tasks with 1, 2 and 4 workers, and
//! the latency from a task becoming ready to a sleeping worker starting it.
//!
//! ```text
//! cargo build --release -p nerv-postgres --bins --examples
//! target/release/examples/pg_bench [--url URL] [--tasks N] [--jobs J] [--samples S] [--processes]
//!     [--shape independent|dag] [--workers W]
//! ```
//! Workers run in this process (each with its own three connections), as `Worker` instances
//! registering a `noop` function, or with `--processes` as `nerv-pg-worker` processes. The
//! latency figure always uses one in-process worker. Figures are printed, never asserted.

use std::time::{Duration, Instant};

use nerv_postgres::{ConnectOptions, Engine, RunState, TaskSpec, Worker, Workflow};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Args {
    url: String,
    tasks: usize,
    jobs: usize,
    samples: usize,
    processes: bool,
    /// Only this shape (`independent` or `dag`).
    shape: Option<String>,
    /// Only this many workers.
    workers: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        url: std::env::var("NERV_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        tasks: 20_000,
        jobs: 64,
        samples: 200,
        processes: false,
        shape: None,
        workers: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--processes" {
            a.processes = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--tasks" => a.tasks = v.parse().expect("--tasks N"),
            "--jobs" => a.jobs = v.parse().expect("--jobs J"),
            "--samples" => a.samples = v.parse().expect("--samples S"),
            "--shape" => a.shape = Some(v),
            "--workers" => a.workers = Some(v.parse().expect("--workers W")),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn noop_worker(a: &Args, schema: &str) -> Worker {
    Worker::builder(a.url.clone())
        .schema(schema)
        .concurrency(a.jobs)
        .batch(a.jobs)
        .register("noop", |_ctx, _input: Value| async move {
            Ok::<_, String>(Value::Null)
        })
        .build()
        .expect("worker")
}

/// `tasks` no-op tasks: independent, or (`layered`) in layers of 200 where each task waits for
/// two tasks of the layer before.
fn workload(tasks: usize, layered: bool) -> Workflow {
    let mut wf = Workflow::new("noop");
    let width = 200;
    for i in 0..tasks {
        let mut t = TaskSpec::function(format!("t{i}"), "noop", Value::Null);
        if layered && i >= width {
            let (layer, col) = (i / width, i % width);
            let prev = (layer - 1) * width;
            t = t.after([
                format!("t{}", prev + col),
                format!("t{}", prev + (col + 1) % width),
            ]);
        }
        wf.tasks.push(t);
    }
    wf
}

async fn throughput(a: &Args, workers: usize, layered: bool) -> (f64, f64) {
    let schema = format!("nerv_bench_{workers}");
    let engine = Engine::connect_with(ConnectOptions::new(&a.url).unwrap().schema(&schema))
        .await
        .expect("connect");
    engine.drop_schema().await.unwrap();
    let engine = Engine::connect_with(ConnectOptions::new(&a.url).unwrap().schema(&schema))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    let mut procs = Vec::new();
    for _ in 0..workers {
        if a.processes {
            let exe = std::env::current_exe().unwrap();
            let bin = exe
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("nerv-pg-worker");
            let j = a.jobs.to_string();
            procs.push(
                std::process::Command::new(&bin)
                    .args([
                        "--url", &a.url, "--schema", &schema, "-j", &j, "--batch", &j,
                    ])
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: {e} (cargo build --release -p nerv-postgres --bins)",
                            bin.display()
                        )
                    }),
            );
        } else {
            let w = noop_worker(a, &schema);
            let s = stop.clone();
            handles.push(tokio::spawn(async move { w.run(s).await }));
        }
    }
    tokio::time::sleep(Duration::from_millis(if a.processes { 1500 } else { 500 })).await;
    let wf = workload(a.tasks, layered);
    let t0 = Instant::now();
    let run = engine.submit(&wf).await.unwrap();
    let t1 = Instant::now();
    loop {
        let runs = engine.runs().await.unwrap();
        let r = runs.iter().find(|r| r.id == run).unwrap();
        if r.state != RunState::Running {
            assert_eq!(r.state, RunState::Succeeded);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t2 = Instant::now();
    stop.cancel();
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    for h in handles {
        if let Ok(Ok(st)) = h.await {
            eprintln!(
                "  worker: {} tasks in {} claims, {} completions in {} commits",
                st.claimed, st.claims, st.completed, st.commits
            );
        }
    }
    engine.drop_schema().await.unwrap();
    let exec = a.tasks as f64 / (t2 - t1).as_secs_f64();
    let total = a.tasks as f64 / (t2 - t0).as_secs_f64();
    (exec, total)
}

async fn latency(a: &Args) -> Vec<Duration> {
    let schema = "nerv_bench_latency";
    let engine = Engine::connect_with(ConnectOptions::new(&a.url).unwrap().schema(schema))
        .await
        .unwrap();
    engine.drop_schema().await.unwrap();
    let engine = Engine::connect_with(ConnectOptions::new(&a.url).unwrap().schema(schema))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let worker = Worker::builder(a.url.clone())
        .schema(schema)
        .concurrency(1)
        .register("stamp", move |_ctx, _input: Value| {
            let now = Instant::now();
            let tx = tx.clone();
            async move {
                let _ = tx.send(now);
                Ok::<_, String>(Value::Null)
            }
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let h = tokio::spawn({
        let s = stop.clone();
        async move { worker.run(s).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = Vec::new();
    for i in 0..a.samples {
        let wf =
            Workflow::new("one").task(TaskSpec::function(format!("s{i}"), "stamp", Value::Null));
        engine.submit(&wf).await.unwrap();
        // The task is ready once the submit has committed, i.e. when `submit` returns.
        let ready = Instant::now();
        let started = rx.recv().await.unwrap();
        out.push(started.saturating_duration_since(ready));
        // Let the worker commit and fall asleep again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = h.await;
    engine.drop_schema().await.unwrap();
    out.sort();
    out
}

#[tokio::main]
async fn main() {
    let a = args();
    let mode = if a.processes {
        "worker processes"
    } else {
        "in-process workers"
    };
    println!(
        "nerv-postgres bench: {} no-op tasks, -j {} per worker, {mode}, {}",
        a.tasks, a.jobs, a.url
    );
    for (layered, shape) in [(false, "independent"), (true, "layered DAG, 2 deps each")] {
        let name = if layered { "dag" } else { "independent" };
        if a.shape.as_deref().is_some_and(|s| s != name) {
            continue;
        }
        for w in [1, 2, 4] {
            if a.workers.is_some_and(|n| n != w) {
                continue;
            }
            let (exec, total) = throughput(&a, w, layered).await;
            println!(
                "throughput, {shape}, {w} worker(s): {exec:>8.0} tasks/s (from commit of submit), \
                 {total:>8.0} tasks/s including submit"
            );
        }
    }
    if a.samples == 0 {
        return;
    }
    let l = latency(&a).await;
    let p = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize];
    println!(
        "ready->start latency, sleeping worker, {} samples: p50 {:?}, p90 {:?}, p99 {:?}",
        l.len(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}
