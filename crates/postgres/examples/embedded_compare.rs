//! The benchmark's workload (independent no-op tasks) on nerv's embedded executor, to compare
//! with `pg_bench`.
//!
//! `cargo run --release -p nerv-postgres --features embedded-compare --example embedded_compare -- [TASKS]`

use std::time::Instant;

use nerv::{Executor, Graph, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(20_000), |s| s.parse())?;
    let mut g = Graph::builder();
    for i in 0..n {
        g.task(format!("t{i}"))
            .run((), |_, ()| Ok::<_, TaskError>(()));
    }
    let graph = g.build()?;
    let exec = Executor::new();
    let t0 = Instant::now();
    let _report = exec.run(&graph);
    let dt = t0.elapsed();
    println!(
        "embedded executor: {n} no-op tasks in {dt:?}: {:.0} tasks/s",
        n as f64 / dt.as_secs_f64()
    );
    Ok(())
}
