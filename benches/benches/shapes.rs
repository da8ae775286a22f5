//! nerv against a plain rayon-scope executor and a sequential loop, on the four standard
//! shapes of empty tasks at 10^4, 10^5 and 10^6 tasks: `cargo bench -p nerv-benches`.
//!
//! One criterion group per shape and size (`chain/1000000`, ...), with the three executors
//! side by side and throughput in tasks. nerv runs on 2 workers with `Timing::Off`, the rayon
//! executor on a 2-thread pool. Graphs are built outside the timed regions.

use criterion::{criterion_main, Criterion, SamplingMode, Throughput};
use nerv::{Executor, RunOptions, Timing};
use nerv_benches::{nerv_graph, rayon_pool, rayon_scope, sequential, Shape, Topology};
use std::time::Duration;

const WORKERS: usize = 2;
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

fn shapes(c: &mut Criterion) {
    let exec = Executor::builder().workers(WORKERS).build();
    let pool = rayon_pool(WORKERS);
    for n in SIZES {
        for shape in Shape::ALL {
            let topo = Topology::new(shape, n);
            let graph = nerv_graph(shape, n);
            let tasks = topo.len();
            assert_eq!(graph.len(), tasks);

            let mut group = c.benchmark_group(format!("{shape}/{n}"));
            group.throughput(Throughput::Elements(tasks as u64));
            if n >= 1_000_000 {
                // Flat sampling: 10 samples of equal iteration counts (linear sampling would
                // need 55 iterations, over 10 s for the slowest executor at 10^6 tasks).
                group
                    .sampling_mode(SamplingMode::Flat)
                    .sample_size(10)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(3));
            } else {
                group
                    .sample_size(20)
                    .warm_up_time(Duration::from_millis(300))
                    .measurement_time(Duration::from_secs(2));
            }
            // The report is dropped outside the timed region, as in nerv's shapes example.
            group.bench_function("nerv", |b| {
                b.iter_with_large_drop(|| {
                    let report = exec.run_with(&graph, RunOptions::default().timing(Timing::Off));
                    debug_assert_eq!(report.counts().completed, tasks);
                    report
                })
            });
            group.bench_function("rayon_scope", |b| b.iter(|| rayon_scope(&pool, &topo)));
            group.bench_function("sequential", |b| b.iter(|| sequential(&topo)));
            group.finish();
        }
    }
}

/// The group `criterion_main!` runs (in a private module: the macro's `pub fn` has no docs).
mod group {
    criterion::criterion_group!(benches, super::shapes);
}
criterion_main!(group::benches);
