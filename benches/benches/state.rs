//! State as a projection of events: what a transition, an applied event and a handled event
//! cost, and what the engine projector adds to an observed run:
//! `cargo bench -p nerv-benches --bench state`.
//!
//! - `state/update_10k`: one pure `StateProjector::update` of a 10 000-entry persistent map
//!   (insert one entry, publish the new version, keep 16 past ones), ns per update.
//! - `state/apply`: `EngineState::apply` over the events of runs of 100 000 tasks
//!   (created, then started and completed per task, then completed), ns per event.
//! - `state/handle/{1,2}`: the same events through `EngineProjector::handle` from 1 and 2
//!   threads (each its share of the tasks), publishing included, ns per event.
//! - `observed/{bare,bus,projector}`: a fan-out/fan-in of 10^6 empty tasks on 2 workers: with
//!   no bus; with a bus and one subscriber counting every event; with the counter and an
//!   engine projector attached (each run forgotten after it, untimed). Throughput in tasks.

use criterion::{black_box, criterion_main, Criterion, SamplingMode, Throughput};
use nerv::{
    EngineProjector, EngineState, Event, EventBus, EventData, EventFilter, Executor, Freeze,
    RunOptions, Source, StateProjector, StatusCounts, TaskRef, Timing,
};
use nerv_benches::{nerv_graph, Shape};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const TASKS: u32 = 100_000;

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let map: HashMap<u64, u64> = (0..10_000u64).map(|i| (i, i)).collect();
    let p = StateProjector::new(map.freeze());
    let mut k = 0u64;
    group.bench_function("update_10k", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            p.update(|m| m.update(black_box(k), k + 1))
        })
    });
    group.finish();
}

/// The events of one run of `TASKS` tasks: created, each task started then completed (task
/// by task), completed. The run id is patched per run.
struct RunEvents {
    created: Event,
    tasks: Vec<[Event; 2]>,
    completed: Event,
}

impl RunEvents {
    fn new() -> Self {
        let t = SystemTime::now();
        let task = |i: u32, data| {
            Event::at(
                t,
                Source {
                    workflow: Some(0),
                    task: Some(TaskRef::new(Arc::from(format!("t{i}")), i, false)),
                },
                data,
            )
        };
        RunEvents {
            created: Event::at(
                t,
                Source::workflow(0),
                EventData::WorkflowCreated {
                    name: "bench".into(),
                    tasks: TASKS as usize,
                },
            ),
            tasks: (0..TASKS)
                .map(|i| {
                    [
                        task(i, EventData::TaskStarted { attempt: 1 }),
                        task(
                            i,
                            EventData::TaskCompleted {
                                attempt: 1,
                                output: None,
                            },
                        ),
                    ]
                })
                .collect(),
            completed: Event::at(
                t,
                Source::workflow(0),
                EventData::WorkflowCompleted {
                    counts: StatusCounts::default(),
                    elapsed: Duration::ZERO,
                },
            ),
        }
    }

    /// Sets the run id of every event.
    fn set_run(&mut self, run: u64) {
        self.created.source.workflow = Some(run);
        self.completed.source.workflow = Some(run);
        for e in self.tasks.iter_mut().flatten() {
            e.source.workflow = Some(run);
        }
    }

    /// Events per run.
    fn len(&self) -> u64 {
        2 * u64::from(TASKS) + 2
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let mut ev = RunEvents::new();
    group.bench_function("apply", |b| {
        b.iter_custom(|iters| {
            let runs = iters.div_ceil(ev.len());
            let mut total = Duration::ZERO;
            let mut state = EngineState::new();
            for run in 0..runs {
                ev.set_run(run);
                let t0 = Instant::now();
                state.apply(&ev.created);
                for e in ev.tasks.iter().flatten() {
                    state.apply(e);
                }
                state.apply(&ev.completed);
                total += t0.elapsed();
                // Drop the run outside the timed region.
                state.remove(run);
            }
            total.mul_f64(iters as f64 / (runs * ev.len()) as f64)
        })
    });
    for threads in [1usize, 2] {
        group.bench_function(format!("handle/{threads}"), |b| {
            b.iter_custom(|iters| {
                let runs = iters.div_ceil(ev.len());
                let mut total = Duration::ZERO;
                let p = EngineProjector::new();
                for run in 0..runs {
                    ev.set_run(run);
                    let ev = &ev;
                    let t0 = Instant::now();
                    p.handle(&ev.created);
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let p = &p;
                            s.spawn(move || {
                                for pair in ev.tasks.iter().skip(t).step_by(threads) {
                                    p.handle(&pair[0]);
                                    p.handle(&pair[1]);
                                }
                            });
                        }
                    });
                    p.handle(&ev.completed);
                    total += t0.elapsed();
                    p.forget(run);
                }
                total.mul_f64(iters as f64 / (runs * ev.len()) as f64)
            })
        });
    }
    group.finish();
}

fn observed(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let graph = nerv_graph(Shape::Fanout, N);
    let mut group = c.benchmark_group("observed");
    group
        .throughput(Throughput::Elements(graph.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    let opts = || RunOptions::default().timing(Timing::Off);

    // Reports are dropped, and the projector's run forgotten, outside the timed region.
    let timed = |b: &mut criterion::Bencher, exec: &Executor, after: &dyn Fn()| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let report = exec.run_with(&graph, opts());
                total += t0.elapsed();
                drop(black_box(report));
                after();
            }
            total
        })
    };

    let bare = Executor::builder().workers(2).build();
    group.bench_function("bare", |b| timed(b, &bare, &|| {}));

    let bus = EventBus::new();
    let count = Arc::new(AtomicU64::new(0));
    let counter = {
        let count = count.clone();
        bus.subscribe(EventFilter::all(), move |_| {
            count.fetch_add(1, Relaxed);
        })
    };
    let exec = Executor::builder().workers(2).events(bus.clone()).build();
    group.bench_function("bus", |b| timed(b, &exec, &|| {}));

    let projector = EngineProjector::new();
    let sub = projector.attach(&bus);
    let forget = || {
        let runs: Vec<u64> = projector
            .get_state()
            .workflows()
            .map(|(id, _)| id)
            .collect();
        for run in runs {
            projector.forget(run);
        }
    };
    group.bench_function("projector", |b| timed(b, &exec, &forget));
    drop(sub);
    drop(counter);
    black_box(count.load(Relaxed));
    group.finish();
}

/// The groups `criterion_main!` runs (in a private module: the macro's `pub fn` has no docs).
mod group {
    criterion::criterion_group!(benches, super::update, super::apply, super::observed);
}
criterion_main!(group::benches);
