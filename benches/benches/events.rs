//! The event bus: what publishing costs with 0, 1 and 10 subscribers, and what the executor
//! pays for an event nobody listens to: `cargo bench -p nerv-benches --bench events`.
//!
//! - `publish/N`: building and publishing one task event on a bus with N matching handlers
//!   (each counts into an atomic), ns per event.
//! - `publish_unwanted`: the executor's path for an event with no subscriber: the
//!   `wants(kind)` check, after which nothing is built.

use criterion::{black_box, criterion_main, Criterion, Throughput};
use nerv::{Event, EventBus, EventData, EventFilter, EventKind, Source, TaskRef};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn task_event(id: &Arc<str>) -> Event {
    Event::at(
        SystemTime::UNIX_EPOCH,
        Source {
            workflow: Some(1),
            task: Some(TaskRef::new(id.clone(), 7, false)),
        },
        EventData::TaskCompleted {
            attempt: 1,
            output: None,
        },
    )
}

fn publish(c: &mut Criterion) {
    let id: Arc<str> = Arc::from("task-7");
    let mut group = c.benchmark_group("events");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for subscribers in [0usize, 1, 10] {
        let bus = EventBus::new();
        let count = Arc::new(AtomicU64::new(0));
        let subs: Vec<_> = (0..subscribers)
            .map(|_| {
                let c = count.clone();
                bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |_| {
                    c.fetch_add(1, Relaxed);
                })
            })
            .collect();
        group.bench_function(format!("publish/{subscribers}"), |b| {
            b.iter(|| bus.publish(black_box(task_event(&id))))
        });
        drop(subs);
    }
    let bus = EventBus::new();
    group.bench_function("publish_unwanted", |b| {
        b.iter(|| {
            if black_box(&bus).wants(EventKind::TaskCompleted) {
                bus.publish(task_event(&id));
            }
        })
    });
    group.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    publish(&mut c);
}

criterion_main!(benches);
