//! What batching saves on fine-grained work: a map over many tiny items, three ways.
//!
//! `cargo run --release -p nerv-benches --example batching` prints one JSON line per way:
//! `{"way": ..., "items": N, "workers": W, "ns_per_item": X, "tasks": T}` (the median of
//! `--runs` runs, default 5), then `{"per_item_over_batched": R}`.
//! - `task_per_item`: a graph with one task per item and a join task (what a user without
//!   batching writes);
//! - `map_batched`: one `TaskBuilder::map_batched` task (chunks sized from the measured time);
//! - `sequential`: a plain loop on one thread (the work itself, no scheduling).
//!
//! Options: `--items N` (default 10^6), `--workers W` (default 2), `--runs R`. The item
//! function is a few arithmetic operations (tens of nanoseconds).

use nerv::{Executor, Graph, RunOptions, TaskError, Timing};
use std::sync::Arc;
use std::time::Instant;

fn work(x: &u64) -> u64 {
    let mut h = *x ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..8 {
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(17);
    }
    h
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (mut items, mut workers, mut runs) = (1_000_000usize, 2usize, 5usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option needs a value");
        match a.as_str() {
            "--items" => items = val().parse().expect("--items N"),
            "--workers" => workers = val().parse().expect("--workers W"),
            "--runs" => runs = val().parse().expect("--runs R"),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let exec = Executor::builder().workers(workers).build();
    let opts = || RunOptions::default().timing(Timing::Off);
    let data: Arc<Vec<u64>> = Arc::new((0..items as u64).collect());
    let expect: u64 = data.iter().map(work).fold(0, u64::wrapping_add);

    // One task per item, each reading its item from a shared vector, and a join.
    let per_item = {
        let mut g = Graph::builder();
        g.reserve(items + 1, 2 * items);
        let hs: Vec<_> = (0..items)
            .map(|i| {
                let d = data.clone();
                g.task(format!("i{i}"))
                    .run((), move |_, ()| Ok::<_, TaskError>(work(&d[i])))
            })
            .collect();
        let sum = g.task("join").run(hs, |_, v| {
            Ok::<_, TaskError>((0..v.len()).fold(0u64, |a, i| a.wrapping_add(*v.get(i).unwrap())))
        });
        (g.build().expect("valid"), sum)
    };
    let batched = {
        let mut g = Graph::builder();
        let d = data.clone();
        let src = g
            .task("items")
            .run((), move |_, ()| Ok::<_, TaskError>(d.clone()));
        let mapped = g.task("map").map_batched(src, |x: &u64| Ok(work(x)));
        let sum = g.task("sum").run(mapped, |_, v: &Arc<Vec<u64>>| {
            Ok::<_, TaskError>(v.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        });
        (g.build().expect("valid"), sum)
    };

    let (mut t_item, mut t_batch, mut t_seq) = (Vec::new(), Vec::new(), Vec::new());
    let mut batch_tasks = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let r = exec.run_with(&per_item.0, opts());
        t_item.push(t.elapsed().as_nanos() as f64 / items as f64);
        assert_eq!(r.output(per_item.1), Some(&expect));

        let t = Instant::now();
        let r = exec.run_with(&batched.0, opts());
        t_batch.push(t.elapsed().as_nanos() as f64 / items as f64);
        assert_eq!(r.output(batched.1), Some(&expect));
        batch_tasks = r.results().len();

        let t = Instant::now();
        let s = data.iter().map(work).fold(0u64, u64::wrapping_add);
        t_seq.push(t.elapsed().as_nanos() as f64 / items as f64);
        assert_eq!(s, expect);
    }
    let (a, b, c) = (median(t_item), median(t_batch), median(t_seq));
    println!(
        r#"{{"way": "task_per_item", "items": {items}, "workers": {workers}, "ns_per_item": {a:.1}, "tasks": {}}}"#,
        items + 1
    );
    println!(
        r#"{{"way": "map_batched", "items": {items}, "workers": {workers}, "ns_per_item": {b:.1}, "tasks": {batch_tasks}}}"#
    );
    println!(
        r#"{{"way": "sequential", "items": {items}, "workers": 1, "ns_per_item": {c:.1}, "tasks": 0}}"#
    );
    println!(r#"{{"per_item_over_batched": {:.1}}}"#, a / b);
}
