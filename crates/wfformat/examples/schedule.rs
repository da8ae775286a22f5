//! Which worker ran which task, in which order: a diagnostic for the scheduler's ready order.
//!
//! ```text
//! cargo run --release -p nerv-wfformat --example schedule -- FILE.json [-j P] [--target SECS]
//!     [--order ranked|estimated|fcfs|banded|searched]
//! ```
//!
//! Replays the trace (at the scale where its bound is `--target` seconds, default 2) with the
//! order given, recording for each task the worker thread and start/end times; prints, per
//! worker, its busy time and the tasks it ran by their position in the global rank order
//! (1 = longest remaining critical path). An ideal critical-path-first list scheduler starts
//! tasks in increasing position whatever the worker; runs of consecutive positions on one
//! worker with large positions started elsewhere show a ready order that is not global.

use nerv::{Executor, Graph, TaskError};
use nerv_wfformat::{parse_file, scale_for, Order};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Log = Arc<Mutex<Vec<(usize, String, Duration, Duration)>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut workers = 4usize;
    let mut target = 2.0f64;
    let mut order_name = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-j" => workers = args.next().and_then(|v| v.parse().ok()).unwrap_or(4),
            "--target" => target = args.next().and_then(|v| v.parse().ok()).unwrap_or(2.0),
            "--order" => order_name = args.next(),
            _ => file = Some(a),
        }
    }
    let order = match order_name.as_deref() {
        Some("estimated") => Order::Estimated,
        Some("fcfs") => Order::Fcfs,
        Some("banded") => Order::Banded,
        Some("searched") => Order::Searched { workers },
        _ => Order::Ranked,
    };
    let Some(file) = file else {
        eprintln!("usage: schedule FILE.json [-j P] [--target SECS] [--order ORDER]");
        std::process::exit(2);
    };
    let wf = parse_file(&file).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let scale = scale_for(&wf, workers, Duration::from_secs_f64(target));
    let rank = wf.upward_ranks(scale);
    let mut by_rank: Vec<usize> = (0..wf.len()).collect();
    by_rank.sort_by_key(|&i| (std::cmp::Reverse(rank[i]), i));
    let mut position = vec![0usize; wf.len()];
    for (p, &i) in by_rank.iter().enumerate() {
        position[i] = p + 1;
    }
    // The same graph as `Workflow::to_graph`, with bodies that log where and when they ran.
    let template = wf
        .to_graph(
            &nerv_wfformat::GraphOptions::scaled(scale)
                .order(order)
                .without_sleep(),
        )
        .expect("valid graph");
    let log: Log = Arc::default();
    let t0 = Arc::new(Mutex::new(Instant::now()));
    let mut g = Graph::builder();
    for info in template.tasks() {
        let i = wf.index_of(info.id()).expect("same ids");
        let d = wf.tasks()[i].scaled_runtime(scale);
        let mut b = g.task(info.id()).priority(info.priority());
        if let Some(e) = info.estimate() {
            b = b.estimate(e);
        }
        for p in info.dependencies() {
            b = b.depends_on(p);
        }
        let (log, t0) = (log.clone(), t0.clone());
        b.run((), move |_, ()| {
            let start = t0.lock().unwrap().elapsed();
            std::thread::sleep(d);
            let end = t0.lock().unwrap().elapsed();
            let who = std::thread::current().name().unwrap_or("?").to_string();
            log.lock().unwrap().push((i, who, start, end));
            Ok::<(), TaskError>(())
        });
    }
    let graph = g.build().expect("valid graph");
    let exec = Executor::builder().workers(workers).build();
    *t0.lock().unwrap() = Instant::now();
    let report = exec.run(&graph);
    let makespan = t0.lock().unwrap().elapsed();
    let mut log = log.lock().unwrap().clone();
    log.sort_by_key(|e| e.2);
    let mut per: HashMap<String, Vec<(usize, Duration, Duration)>> = HashMap::new();
    for (i, who, s, e) in log {
        per.entry(who).or_default().push((position[i], s, e));
    }
    println!(
        "{}: {} tasks, order {}, P={workers}, makespan {:.3} s, bound {:.3} s, completed {}",
        file,
        wf.len(),
        order.as_str(),
        makespan.as_secs_f64(),
        wf.lower_bound(scale, workers).as_secs_f64(),
        report.counts().completed
    );
    let mut names: Vec<_> = per.keys().cloned().collect();
    names.sort();
    for n in names {
        let v = &per[&n];
        let busy: Duration = v.iter().map(|(_, s, e)| *e - *s).sum();
        let last = v.last().map_or(0.0, |x| x.2.as_secs_f64());
        let list: Vec<String> = v.iter().map(|(p, _, _)| p.to_string()).collect();
        println!(
            "  {n}: {} tasks, busy {:.3} s, last end {last:.3} s, rank positions: {}",
            v.len(),
            busy.as_secs_f64(),
            list.join(" ")
        );
    }
}
