//! nerv against its competitors in one run, per shape of empty tasks.
//!
//! `cargo run --release -p nerv-benches --example competitors` prints, for each shape, one JSON
//! line per executor in the format of nerv's `shapes` example plus an `"executor"` field:
//! `{"executor": ..., "shape": ..., "tasks": N, "workers": W, "ns_per_task": X}`, the median of
//! `--runs` runs (default 5). The executors: `nerv` (`Timing::Off`), `nerv+timing`
//! (`Timing::Tasks`), `rayon_scope` (a plain rayon-scope executor with atomic join counters,
//! on a pool of W threads; the first ready successor inline), `rayon_spawn` (the same, but
//! several ready successors are all spawned: the variant whose figures the core issue quotes)
//! and `sequential` (a plain loop on one thread, so `"workers": 1`).
//! The runs of the executors are interleaved, so that noise hits them alike. At the end, one line
//! per shape: `{"shape": ..., "tasks": N, "workers": W, "nerv_over_rayon_scope": R,
//! "nerv_over_rayon_spawn": S}`, the medians of the runs' ratios (each run's nerv time over the
//! same run's competitor time: this machine's speed drifts in phases of seconds, which a ratio
//! of two medians would count as a difference between the executors).
//!
//! Options: `--tasks N` (default 10^6), `--workers W` (default 2), `--runs R`, `--shape NAME`
//! (repeatable; default all four). Graphs are built outside the timed regions.

use nerv::{Executor, RunOptions, Timing};
use nerv_benches::{nerv_graph, rayon_pool, rayon_scope, rayon_spawn, sequential, Shape, Topology};
use std::io::Write;
use std::time::Instant;

const EXECUTORS: [&str; 5] = [
    "nerv",
    "nerv+timing",
    "rayon_scope",
    "rayon_spawn",
    "sequential",
];

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let mut tasks = 1_000_000usize;
    let mut workers = 2usize;
    let mut runs = 5usize;
    let mut shapes: Vec<Shape> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option needs a value");
        match a.as_str() {
            "--tasks" => tasks = val().parse().expect("--tasks N"),
            "--workers" => workers = val().parse().expect("--workers W"),
            "--runs" => runs = val().parse().expect("--runs R"),
            "--shape" => shapes.push(val().parse().unwrap_or_else(|e| panic!("{e}"))),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown option {other}"),
        }
    }
    if shapes.is_empty() {
        shapes = Shape::ALL.to_vec();
    }
    let runs = runs.max(1);
    let exec = Executor::builder().workers(workers).build();
    let pool = rayon_pool(workers);
    let mut out = std::io::stdout().lock();
    let mut ratios = Vec::new();
    for &shape in &shapes {
        let topo = Topology::new(shape, tasks);
        let graph = nerv_graph(shape, tasks);
        let n = topo.len();
        assert_eq!(graph.len(), n, "same shape for every executor");
        let mut samples: [Vec<f64>; 5] = Default::default();
        for _ in 0..runs {
            for (e, s) in samples.iter_mut().enumerate() {
                let t = Instant::now();
                match EXECUTORS[e] {
                    "nerv" | "nerv+timing" => {
                        let timing = if e == 0 { Timing::Off } else { Timing::Tasks };
                        let report = exec.run_with(&graph, RunOptions::default().timing(timing));
                        s.push(t.elapsed().as_nanos() as f64 / n as f64);
                        assert_eq!(report.counts().completed, n, "every task completes");
                        continue; // the report is dropped outside the timed region
                    }
                    "rayon_scope" => rayon_scope(&pool, &topo),
                    "rayon_spawn" => rayon_spawn(&pool, &topo),
                    _ => sequential(&topo),
                }
                s.push(t.elapsed().as_nanos() as f64 / n as f64);
            }
        }
        let per_run = |other: usize| {
            median(
                samples[0]
                    .iter()
                    .zip(&samples[other])
                    .map(|(n, o)| n / o)
                    .collect(),
            )
        };
        let (scope, spawn) = (per_run(2), per_run(3));
        let medians = samples.map(median);
        for (e, executor) in EXECUTORS.iter().enumerate() {
            let w = if *executor == "sequential" {
                1
            } else {
                workers
            };
            writeln!(
                out,
                "{{\"executor\": \"{executor}\", \"shape\": \"{shape}\", \"tasks\": {n}, \"workers\": {w}, \"ns_per_task\": {:.1}}}",
                medians[e]
            )
            .expect("stdout");
        }
        out.flush().expect("stdout");
        ratios.push((shape, n, scope, spawn));
    }
    for (shape, n, scope, spawn) in ratios {
        writeln!(
            out,
            "{{\"shape\": \"{shape}\", \"tasks\": {n}, \"workers\": {workers}, \"nerv_over_rayon_scope\": {scope:.2}, \"nerv_over_rayon_spawn\": {spawn:.2}}}"
        )
        .expect("stdout");
    }
}
