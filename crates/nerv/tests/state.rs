//! State as a projection of events: the generic projector (pure transitions, shared structure,
//! history, projections, freeze/thaw) and the engine's state, applied directly, fed from many
//! threads, and attached to a running executor.

use nerv::{
    EngineProjector, EngineState, Event, EventBus, EventData, Executor, Freeze, Graph, Progress,
    RetryPolicy, Source, StateProjector, StatusCounts, Subgraph, TaskError, TaskRef, TaskStatus,
    Thaw, WorkflowStatus,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Map = imbl::OrdMap<String, u32>;

#[test]
fn update_is_pure() {
    let p = StateProjector::new(Map::new());
    let before = p.get_state();
    let after = p.update(|s| s.update("a".into(), 1));
    assert_eq!((before.version(), after.version()), (0, 1));
    assert!(before.is_empty(), "the old snapshot is unchanged");
    assert_eq!(after.get("a"), Some(&1));
    assert_eq!(p.version(), 1);
    assert_eq!(p.get_state().get("a"), Some(&1));
    // Concurrent updates serialize: none is lost.
    std::thread::scope(|s| {
        for t in 0..4 {
            let p = &p;
            s.spawn(move || {
                for i in 0..250 {
                    p.update(|m| m.update(format!("{t}-{i}"), i));
                }
            });
        }
    });
    assert_eq!(p.version(), 1001);
    assert_eq!(p.get_state().len(), 1001);
}

#[test]
fn snapshots_share_structure() {
    let big: imbl::HashMap<u64, u64> = (0..100_000).map(|i| (i, i * 2)).collect();
    let p = StateProjector::new(big);
    let s0 = p.get_state();
    // A clone of a 100 000-entry map is a pointer copy.
    let copies: Vec<imbl::HashMap<u64, u64>> = (0..1000).map(|_| (*s0).clone()).collect();
    assert!(copies.iter().all(|c| c.ptr_eq(&s0)));
    assert_eq!(copies[999], *s0);
    let s1 = p.update(|m| m.update(7, 0));
    assert_eq!(s0.get(&7), Some(&14));
    assert_eq!(s1.get(&7), Some(&0));
    assert_eq!(s1.len(), 100_000);
    assert!(!s1.ptr_eq(&s0));
    assert_eq!(s1.without(&7), s0.without(&7));
}

#[test]
fn history_is_bounded_and_travels_in_time() {
    let p = StateProjector::new(0u64).with_history(5);
    for _ in 0..20 {
        p.update(|n| n + 10);
    }
    assert_eq!(p.version(), 20);
    let kept: Vec<u64> = p.history().iter().map(|s| s.version()).collect();
    assert_eq!(kept, [15, 16, 17, 18, 19]);
    for v in 15..=20 {
        assert_eq!(p.at_version(v).map(|s| *s), Some(v * 10), "version {v}");
    }
    assert!(p.at_version(14).is_none());
    assert!(p.at_version(21).is_none());
}

#[test]
fn reset_publishes_the_initial_state_as_a_new_version() {
    let p = StateProjector::new(Map::new().update("init".into(), 0));
    p.update(|s| s.update("x".into(), 1));
    let r = p.reset();
    assert_eq!(r.version(), 2);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["init"]);
    assert_eq!(p.at_version(1).map(|s| s.len()), Some(2));
}

#[test]
fn named_projections() {
    let p = StateProjector::new(Map::new());
    p.add_projection("total", |s: &Map| s.values().sum::<u32>());
    p.add_projection("keys", |s: &Map| s.keys().cloned().collect::<Vec<_>>());
    p.update(|s| s.update("a".into(), 2).update("b".into(), 3));
    assert_eq!(p.project::<u32>("total"), Ok(5));
    assert_eq!(
        p.project::<Vec<String>>("keys"),
        Ok(vec!["a".to_string(), "b".to_string()])
    );
    let old = p.at_version(0).unwrap();
    assert_eq!(p.project_at::<u32>("total", &old), Ok(0));
    let e = p.project::<String>("total").unwrap_err();
    assert!(e.is_wrong_type());
    assert!(e.to_string().contains("u32"), "{e}");
    assert!(p.project::<u32>("missing").unwrap_err().is_unknown());
    assert_eq!(p.projections(), ["keys", "total"]);
}

#[test]
fn freeze_and_thaw_round_trip() {
    let m: HashMap<String, Vec<u8>> = [("a".to_string(), vec![1, 2]), ("b".to_string(), vec![])]
        .into_iter()
        .collect();
    // Nested: freeze the inner vectors, then the map.
    let frozen: imbl::HashMap<String, imbl::Vector<u8>> = m
        .clone()
        .into_iter()
        .map(|(k, v)| (k, v.freeze()))
        .collect();
    let thawed: HashMap<String, Vec<u8>> = frozen
        .thaw()
        .into_iter()
        .map(|(k, v)| (k, v.thaw()))
        .collect();
    assert_eq!(thawed, m);
    let b: BTreeMap<u32, String> = (0..100).map(|i| (i, i.to_string())).collect();
    let p = StateProjector::new(b.clone().freeze());
    p.update(|s| s.update(100, "100".into()));
    let mut want = b;
    want.insert(100, "100".into());
    assert_eq!(p.get_state().thaw(), want);
}

// ---------------------------------------------------------------------------------------------
// The engine's state.

fn graph(ids: &[&str]) -> Graph {
    let mut g = Graph::builder();
    for id in ids {
        g.task(id).run((), |_, ()| Ok::<_, TaskError>(()));
    }
    g.build().unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn wf(run: u64, secs: u64, data: EventData) -> Event {
    Event::at(at(secs), Source::workflow(run), data)
}

fn task(run: u64, g: &Graph, id: &str, secs: u64, data: EventData) -> Event {
    let index = g.find(id).unwrap().index() as u32;
    Event::at(
        at(secs),
        Source {
            workflow: Some(run),
            task: Some(TaskRef::new(id, index, false)),
        },
        data,
    )
}

/// A run of five tasks: `a` completes; `b` fails; `c` is skipped because of `b`; `d` fails
/// twice and completes on its third attempt; `e` reports progress and is cancelled.
fn synthetic_run(run: u64) -> (Graph, Vec<Event>) {
    let g = graph(&["a", "b", "c", "d", "e"]);
    let err = |m: &str| TaskError::msg(m);
    let t = |id: &str, secs, data| task(run, &g, id, secs, data);
    let mut ev = vec![
        wf(
            run,
            0,
            EventData::WorkflowCreated {
                name: "synthetic".into(),
                tasks: 5,
            },
        ),
        wf(
            run,
            1,
            EventData::WorkflowStarted {
                graph: g.clone(),
                resumes: None,
            },
        ),
    ];
    ev.extend([
        t("a", 2, EventData::TaskStarted { attempt: 1 }),
        t("b", 2, EventData::TaskStarted { attempt: 1 }),
        t("d", 2, EventData::TaskStarted { attempt: 1 }),
        t(
            "a",
            3,
            EventData::TaskCompleted {
                attempt: 1,
                output: None,
            },
        ),
        t(
            "d",
            3,
            EventData::TaskRetrying {
                attempt: 1,
                error: err("d1"),
                delay: Duration::ZERO,
            },
        ),
        t(
            "b",
            4,
            EventData::TaskFailed {
                attempt: 1,
                error: err("b broke"),
            },
        ),
        t(
            "c",
            4,
            EventData::TaskSkipped {
                cause: Some("b".into()),
            },
        ),
        t("d", 5, EventData::TaskStarted { attempt: 2 }),
        t(
            "d",
            6,
            EventData::TaskRetrying {
                attempt: 2,
                error: err("d2"),
                delay: Duration::ZERO,
            },
        ),
        t("e", 6, EventData::TaskStarted { attempt: 1 }),
        t(
            "e",
            7,
            EventData::TaskProgress(Progress {
                done: 3,
                total: Some(4),
                message: None,
            }),
        ),
        t("e", 8, EventData::TaskCancelled { attempt: 1 }),
        t("d", 8, EventData::TaskStarted { attempt: 3 }),
        t(
            "d",
            9,
            EventData::TaskCompleted {
                attempt: 3,
                output: None,
            },
        ),
    ]);
    ev.push(wf(
        run,
        10,
        EventData::WorkflowFailed {
            counts: StatusCounts {
                completed: 2,
                failed: 1,
                skipped: 1,
                cancelled: 1,
                other: 0,
            },
            elapsed: Duration::from_secs(9),
            error: "task `b` failed: b broke".into(),
        },
    ));
    (g, ev)
}

fn check_synthetic(s: &EngineState, run: u64) {
    assert_eq!(s.workflow_status(run), Some(WorkflowStatus::Failed));
    assert_eq!(s.failed_tasks(run), ["b"]);
    assert_eq!(s.completed_tasks(run), ["a", "d"]);
    let st = s.task_status(run);
    let want: HashMap<String, TaskStatus> = [
        ("a", TaskStatus::Completed),
        ("b", TaskStatus::Failed),
        ("c", TaskStatus::Skipped),
        ("d", TaskStatus::Completed),
        ("e", TaskStatus::Cancelled),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(st, want);
    let d = s.task(run, "d").unwrap();
    assert_eq!((d.attempts(), d.retries()), (3, 2));
    assert_eq!(d.error().map(TaskError::message), Some("d2"));
    assert_eq!(d.started(), Some(at(2)));
    assert_eq!(d.ended(), Some(at(9)));
    assert_eq!(d.duration(), Some(Duration::from_secs(7)));
    let b = s.task(run, "b").unwrap();
    assert_eq!(b.error().map(TaskError::message), Some("b broke"));
    assert_eq!(b.attempts(), 1);
    let c = s.task(run, "c").unwrap();
    assert_eq!(
        (c.skip_cause(), c.attempts(), c.started()),
        (Some("b"), 0, None)
    );
    let e = s.task(run, "e").unwrap();
    assert_eq!(e.progress().map(|p| (p.done, p.total)), Some((3, Some(4))));
    let w = s.workflow(run).unwrap();
    assert_eq!(w.name(), "synthetic");
    assert_eq!(w.len(), 5);
    assert_eq!(
        (w.created(), w.started(), w.ended()),
        (Some(at(0)), Some(at(1)), Some(at(10)))
    );
    assert_eq!(w.error(), Some("task `b` failed: b broke"));
    assert_eq!(w.counts().completed, 2);
    assert_eq!(w.count(TaskStatus::Completed), 2);
    assert_eq!(w.count(TaskStatus::Pending), 0);
    assert_eq!(w.ignored(), 0);
}

#[test]
fn engine_apply_projects_a_run() {
    let (_g, events) = synthetic_run(7);
    let mut s = EngineState::new();
    let mut versions = vec![s.clone()];
    for e in &events {
        s.apply(e);
        versions.push(s.clone());
    }
    check_synthetic(&s, 7);
    // Each clone kept its state: after WorkflowStarted, every task is pending.
    let started = &versions[2];
    assert_eq!(started.workflow_status(7), Some(WorkflowStatus::Running));
    assert!(started
        .task_status(7)
        .values()
        .all(|&st| st == TaskStatus::Pending));
    assert!(versions[0].is_empty());
    // The pure form.
    let pure = events
        .iter()
        .fold(EngineState::new(), |s, e| s.with_event(e));
    check_synthetic(&pure, 7);
}

#[test]
fn engine_projector_matches_apply() {
    let (_g, events) = synthetic_run(3);
    let p = EngineProjector::new();
    for e in &events {
        p.handle(e);
    }
    // The final event was published before `handle` returned.
    check_synthetic(&p.get_state(), 3);
    assert_eq!(p.get_state().len(), 1);
}

/// The events of a top-graph task.
fn task_event(run: u64, index: u32, id: &Arc<str>, data: EventData) -> Event {
    Event::new(
        Source {
            workflow: Some(run),
            task: Some(TaskRef::new(id.clone(), index, false)),
        },
        data,
    )
}

#[test]
fn concurrent_handlers_lose_nothing_and_readers_never_wait() {
    concurrent_run(EngineProjector::new(), 50_000);
}

/// The same with a round for every event and a publish for every round: many rounds overlap
/// the pushes, so many events are held back to the next round.
#[test]
fn concurrent_handlers_with_tiny_batches() {
    let p = EngineProjector::builder()
        .batch(1)
        .publish_interval(Duration::ZERO)
        .history(2)
        .build();
    concurrent_run(p, 5_000);
}

/// 4 threads handle the events of `tasks` tasks of one run: each starts its own tasks (every
/// seventh fails once and is retried), then finishes another thread's; a reader reads all the
/// while.
fn concurrent_run(p: EngineProjector, tasks: u32) {
    const THREADS: u32 = 4;
    let run = 42;
    p.handle(&wf(
        run,
        0,
        EventData::WorkflowCreated {
            name: "many".into(),
            tasks: tasks as usize,
        },
    ));
    let ids: Vec<Arc<str>> = (0..tasks).map(|i| Arc::from(format!("t{i}"))).collect();
    let retried = |i: u32| i.is_multiple_of(7);
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        // A reader that keeps reading while the handlers run: versions and completed counts
        // never go back.
        s.spawn(|| {
            let (mut version, mut completed) = (0, 0);
            while !done.load(SeqCst) {
                let snap = p.get_state();
                assert!(snap.version() >= version);
                let c = snap
                    .workflow(run)
                    .map_or(0, |w| w.count(TaskStatus::Completed));
                assert!(c >= completed, "{c} < {completed}");
                (version, completed) = (snap.version(), c);
                reads.fetch_add(1, SeqCst);
            }
        });
        let handlers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (p, ids, barrier) = (&p, &ids, &barrier);
                s.spawn(move || {
                    // Phase 1: each thread starts its tasks (interleaved across threads).
                    for i in (t..tasks).step_by(THREADS as usize) {
                        let id = &ids[i as usize];
                        p.handle(&task_event(
                            run,
                            i,
                            id,
                            EventData::TaskStarted { attempt: 1 },
                        ));
                        if retried(i) {
                            p.handle(&task_event(
                                run,
                                i,
                                id,
                                EventData::TaskRetrying {
                                    attempt: 1,
                                    error: TaskError::msg("again"),
                                    delay: Duration::ZERO,
                                },
                            ));
                        }
                    }
                    // Phase 2: each thread finishes another thread's tasks (the barrier
                    // orders this after their first events), as when a task resumes on
                    // another worker.
                    barrier.wait();
                    let other = (t + 1) % THREADS;
                    for i in (other..tasks).step_by(THREADS as usize) {
                        let id = &ids[i as usize];
                        let attempt = if retried(i) {
                            p.handle(&task_event(
                                run,
                                i,
                                id,
                                EventData::TaskStarted { attempt: 2 },
                            ));
                            2
                        } else {
                            1
                        };
                        p.handle(&task_event(
                            run,
                            i,
                            id,
                            EventData::TaskCompleted {
                                attempt,
                                output: None,
                            },
                        ));
                    }
                })
            })
            .collect();
        for h in handlers {
            h.join().unwrap();
        }
        p.handle(&wf(
            run,
            1,
            EventData::WorkflowCompleted {
                counts: StatusCounts {
                    completed: tasks as usize,
                    ..Default::default()
                },
                elapsed: Duration::from_secs(1),
            },
        ));
        done.store(true, SeqCst);
    });
    assert!(reads.load(SeqCst) > 0);
    let s = p.get_state();
    let w = s.workflow(run).unwrap();
    assert_eq!(w.status(), WorkflowStatus::Completed);
    assert_eq!(w.count(TaskStatus::Completed), tasks as usize);
    for i in 0..tasks {
        let t = w.task_at(i as usize).unwrap();
        assert_eq!(t.status(), TaskStatus::Completed, "task {i}");
        let want = if retried(i) { (2, 1) } else { (1, 0) };
        assert_eq!((t.attempts(), t.retries()), want, "task {i}");
        assert!(t.started().is_some() && t.ended().is_some());
    }
    assert_eq!(w.ignored(), 0);
}

/// A run is created on one thread and its task runs on another, while a third thread keeps
/// forcing rounds: a round must never apply the task's events without the run's creation
/// (which would drop them as out of range).
#[test]
fn a_run_created_on_one_thread_runs_on_another() {
    const RUNS: u64 = 2_000;
    let p = EngineProjector::builder()
        .batch(1)
        .publish_interval(Duration::ZERO)
        .build();
    let id: Arc<str> = "only".into();
    let done = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(SeqCst) {
                p.get_state();
            }
        });
        let runner = s.spawn(|| {
            for run in rx {
                p.handle(&task_event(
                    run,
                    0,
                    &id,
                    EventData::TaskStarted { attempt: 1 },
                ));
                p.handle(&task_event(
                    run,
                    0,
                    &id,
                    EventData::TaskCompleted {
                        attempt: 1,
                        output: None,
                    },
                ));
            }
        });
        for run in 0..RUNS {
            p.handle(&wf(
                run,
                0,
                EventData::WorkflowCreated {
                    name: "one".into(),
                    tasks: 1,
                },
            ));
            tx.send(run).unwrap();
        }
        drop(tx);
        runner.join().unwrap();
        done.store(true, SeqCst);
    });
    let s = p.flush();
    for run in 0..RUNS {
        let w = s.workflow(run).unwrap();
        assert_eq!(w.ignored(), 0, "run {run}");
        assert_eq!(
            w.task_at(0).unwrap().status(),
            TaskStatus::Completed,
            "run {run}"
        );
    }
}

#[test]
fn engine_projector_time_travel_and_exact_reads() {
    let p = EngineProjector::builder()
        .publish_interval(Duration::ZERO)
        .history(3)
        .build();
    let id: Arc<str> = "t0".into();
    p.handle(&wf(
        1,
        0,
        EventData::WorkflowCreated {
            name: "r".into(),
            tasks: 1,
        },
    ));
    // With no interval, every read publishes what was handled before it.
    let v1 = p.get_state();
    p.handle(&task_event(
        1,
        0,
        &id,
        EventData::TaskStarted { attempt: 1 },
    ));
    let v2 = p.get_state();
    p.handle(&task_event(
        1,
        0,
        &id,
        EventData::TaskCompleted {
            attempt: 1,
            output: None,
        },
    ));
    let v3 = p.get_state();
    assert_eq!(v2.version(), v1.version() + 1);
    assert_eq!(v3.version(), v2.version() + 1);
    let status = |s: &EngineState| s.task(1, "#0").map(|t| t.status());
    assert_eq!(status(&v1), None, "no graph yet: tasks are named by index");
    assert_eq!(
        v2.workflow(1).unwrap().task_at(0).unwrap().status(),
        TaskStatus::Running
    );
    assert_eq!(
        p.at_version(v2.version())
            .unwrap()
            .workflow(1)
            .unwrap()
            .task_at(0)
            .unwrap()
            .status(),
        TaskStatus::Running
    );
    for _ in 0..5 {
        p.handle(&task_event(1, 0, &id, EventData::MemoMiss));
        p.get_state();
    }
    assert!(p.at_version(v2.version()).is_none(), "beyond the history");
    assert_eq!(p.history().len(), 3);
    p.add_projection("done", |s: &EngineState| s.completed_tasks(1));
    assert_eq!(p.project::<Vec<String>>("done"), Ok(vec!["#0".to_string()]));
    assert!(p.project::<u8>("done").unwrap_err().is_wrong_type());
}

#[test]
fn odd_events_do_not_panic() {
    let p = EngineProjector::new();
    let id: Arc<str> = "x".into();
    // A task of an unknown run, an index out of range, a custom event, no workflow at all.
    p.handle(&task_event(
        9,
        1_000,
        &id,
        EventData::TaskCompleted {
            attempt: 1,
            output: None,
        },
    ));
    p.handle(&task_event(
        9,
        1_000,
        &id,
        EventData::TaskFailed {
            attempt: 1,
            error: TaskError::msg("x"),
        },
    ));
    p.handle(&Event::new(
        Source::default(),
        EventData::TaskStarted { attempt: 1 },
    ));
    let s = p.flush();
    let w = s.workflow(9).unwrap();
    assert_eq!(w.status(), WorkflowStatus::Running);
    assert_eq!((w.len(), w.ignored()), (0, 2));
}

#[test]
fn attached_to_an_executor() {
    let bus = EventBus::new();
    let p = EngineProjector::new();
    let _sub = p.attach(&bus);
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
    g.task("flaky")
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(1)))
        .run(a, move |cx, _| {
            cx.progress(1, Some(2), Some("half"));
            if t.fetch_add(1, SeqCst) < 2 {
                Err(TaskError::msg("not yet"))
            } else {
                Ok(2)
            }
        });
    let bad = g
        .task("bad")
        .run(a, |_, _| Err::<i32, _>(TaskError::msg("no")));
    g.task("after_bad").run(bad, |_, x| Ok(*x));
    let d = g.task("fan").run_dynamic((), |_, ()| {
        let mut sb = Graph::builder();
        let parts: Vec<_> = (0..3)
            .map(|i| {
                sb.task(format!("p{i}"))
                    .run((), move |_, ()| Ok::<_, TaskError>(i))
            })
            .collect();
        let sum = sb
            .task("sum")
            .run(parts, |_, v| Ok(v.iter().copied().sum::<i32>()));
        Ok(Subgraph::new(sb, sum))
    });
    g.task("use").run(d, |_, x| Ok(*x));
    let graph = g.build().unwrap();
    let exec = Executor::builder().workers(2).events(bus).build();
    for _ in 0..3 {
        tries.store(0, SeqCst);
        let report = exec.run(&graph);
        let run = report.run_id();
        // Read at once: the final event was published before the run's waiters woke.
        let s = p.get_state();
        assert_eq!(s.workflow_status(run), Some(WorkflowStatus::Failed));
        assert_eq!(s.failed_tasks(run), ["bad"]);
        assert_eq!(
            s.completed_tasks(run),
            ["a", "flaky", "fan", "use", "fan/p0", "fan/p1", "fan/p2", "fan/sum"]
        );
        let flaky = s.task(run, "flaky").unwrap();
        assert_eq!((flaky.attempts(), flaky.retries()), (3, 2));
        assert_eq!(flaky.progress().map(|p| p.done), Some(1));
        let after = s.task(run, "after_bad").unwrap();
        assert_eq!(after.status(), TaskStatus::Skipped);
        assert_eq!(after.skip_cause(), Some("bad"));
        assert_eq!(s.workflow(run).unwrap().counts(), report.counts());
        for (id, st) in s.task_status(run) {
            if !id.contains('/') {
                let want = report.task(&id).unwrap().status;
                assert_eq!(st, want, "{id}");
            }
        }
    }
    assert_eq!(p.get_state().len(), 3);
}
