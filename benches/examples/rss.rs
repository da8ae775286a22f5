//! Peak memory of a 10^6-task graph of empty tasks run once by nerv on 2 workers.
//!
//! `cargo build --release -p nerv-benches --example rss`, then
//! `/usr/bin/time -v target/release/examples/rss chain` ("Maximum resident set size").
//! The first argument is the shape (chain, fanout, tree, wavefront; default chain); options:
//! `--tasks N` (default 10^6), `--workers W` (default 2), `--timing off` (default: the
//! default run options, which record per-task timing).
//! Prints the task count, the graph's own estimate of its heap bytes per task and, where
//! `/proc/self/status` exists, the resident set size seen from inside: the peak (`VmHWM`) and
//! current (`VmRSS`) after building the graph, and the peak after the run.

use nerv::{Executor, RunOptions, Timing};
use nerv_benches::{nerv_graph, Shape};

/// A `KiB` field of `/proc/self/status` (`VmHWM`: peak resident set size, `VmRSS`: current).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let mut shape = Shape::Chain;
    let mut tasks = 1_000_000usize;
    let mut workers = 2usize;
    let mut timing = Timing::Tasks;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option needs a value");
        match a.as_str() {
            "--tasks" => tasks = val().parse().expect("--tasks N"),
            "--workers" => workers = val().parse().expect("--workers W"),
            "--timing" => {
                timing = match val().as_str() {
                    "off" => Timing::Off,
                    "tasks" => Timing::Tasks,
                    other => panic!("--timing off|tasks, not {other}"),
                }
            }
            "--bench" => {} // passed by `cargo bench`
            other if !other.starts_with('-') => {
                shape = other.parse().unwrap_or_else(|e| panic!("{e}"))
            }
            other => panic!("unknown option {other}"),
        }
    }
    let graph = nerv_graph(shape, tasks);
    let n = graph.len();
    let heap = graph.heap_bytes();
    let built = (status_kib("VmHWM:"), status_kib("VmRSS:"));
    let exec = Executor::builder().workers(workers).build();
    let report = exec.run_with(&graph, RunOptions::default().timing(timing));
    assert_eq!(report.counts().completed, n, "every task completes");
    println!("{shape}: {n} tasks, {workers} workers, timing {timing:?}");
    println!(
        "graph.heap_bytes(): {heap} ({:.1} bytes/task)",
        heap as f64 / n as f64
    );
    let per_task = |kib: u64| kib as f64 * 1024.0 / n as f64;
    if let ((Some(hwm), Some(rss)), Some(peak)) = (built, status_kib("VmHWM:")) {
        println!(
            "after build: VmHWM {hwm} KiB ({:.1} bytes/task), VmRSS {rss} KiB ({:.1} bytes/task)",
            per_task(hwm),
            per_task(rss)
        );
        println!(
            "after run: VmHWM {peak} KiB ({:.1} bytes/task)",
            per_task(peak)
        );
    }
}
