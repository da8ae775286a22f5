//! A small workflow that shows nerv's main features, then prints its plan and its report.
//!
//! `cargo run --release -p nerv --example quickstart`
//!
//! The workflow: load a few documents; count words in each (a fan-out whose width is known
//! only at run time, so it is a dynamic subgraph); look up a value asynchronously; call a flaky
//! service that succeeds on its third attempt (retries with back-off); merge everything (a
//! fan-in); and a task that fails on purpose, so that its dependent is SKIPPED and the report
//! shows both.

use nerv::{Executor, Graph, Priority, RetryPolicy, Subgraph, TaskError};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut g = Graph::builder();

    let docs = g
        .task("load")
        .description("load the documents")
        .run((), |_, ()| {
            Ok::<_, TaskError>(vec![
                "the quick brown fox".to_string(),
                "jumps over the lazy dog".to_string(),
                "and the dog sleeps".to_string(),
            ])
        });

    // One counting task per document, created at run time, then a fan-in inside the subgraph.
    let words = g
        .task("count")
        .priority(Priority::High)
        .run_dynamic(docs, |_, docs| {
            let mut sub = Graph::builder();
            let counts: Vec<_> = docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let d = d.clone();
                    sub.task(format!("doc{i}"))
                        .run((), move |_, ()| Ok(d.split_whitespace().count()))
                })
                .collect();
            let total = sub
                .task("sum")
                .run(counts, |_, c| Ok(c.iter().sum::<usize>()));
            Ok(Subgraph::new(sub, total))
        });

    // IO-bound work runs on tokio, without a thread of its own.
    let lookup = g
        .task("lookup")
        .timeout(Duration::from_secs(5))
        .run_async((), |_, ()| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(42u64)
        });

    // A flaky service: fails twice, then answers; the retry policy absorbs it.
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = g
        .task("flaky")
        .retry(RetryPolicy::attempts(5).backoff(Duration::from_millis(5)))
        .run((), move |cx, ()| {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(TaskError::msg(format!(
                    "service unavailable (attempt {})",
                    cx.attempt()
                )));
            }
            Ok("ok")
        });

    let summary = g.task("merge").run((words, lookup, flaky), |_, (w, l, f)| {
        Ok(format!("{w} words, lookup={l}, service={f}"))
    });

    // A task that fails for good, and one that depends on it (and is skipped).
    let broken = g.task("broken").run((), |_, ()| -> Result<(), TaskError> {
        Err(TaskError::msg("disk full"))
    });
    g.task("publish")
        .after(broken)
        .after(summary)
        .run((), |_, ()| Ok(()));

    let graph = g.build()?;
    print!("{}", graph.plan());

    let exec = Executor::new();
    let report = exec.run(&graph);
    println!();
    print!("{report}");
    println!(
        "\nsummary: {}",
        report
            .output(summary)
            .map(String::as_str)
            .unwrap_or("(missing)")
    );
    for t in report.results() {
        println!(
            "  {:<12} {:<9} attempts={} time={:?}",
            t.id, t.status, t.attempts, t.execution_time
        );
    }
    Ok(())
}
