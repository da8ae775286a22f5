//! The event bus, alone and wired into the executor.

mod util;

use nerv::{
    Event, EventBus, EventData, EventFilter, EventKind, Executor, Graph, Payload, RetryPolicy,
    RunOptions, Source, Subgraph, TaskError,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use util::{ms, quiet_expected_panics, PANIC_MARKER};

/// Collects every event it receives, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn attach(&self, bus: &EventBus, filter: EventFilter) -> nerv::Subscription {
        let l = self.0.clone();
        bus.subscribe(filter, move |e| l.lock().unwrap().push(e.clone()))
    }
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    fn kinds(&self) -> Vec<EventKind> {
        self.events().iter().map(Event::kind).collect()
    }
}

fn user(n: u64) -> Event {
    Event::new(
        Source::workflow(n),
        EventData::Custom {
            name: "user".into(),
            payload: Payload::new(n),
        },
    )
}

fn executor(bus: &EventBus) -> Executor {
    Executor::builder().workers(2).events(bus.clone()).build()
}

#[test]
fn subscribe_unsubscribe_and_drop() {
    let bus = EventBus::new();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let sub = bus.subscribe(EventFilter::kind(EventKind::Custom), move |_| {
        c.fetch_add(1, SeqCst);
    });
    assert!(bus.wants(EventKind::Custom));
    bus.publish(user(1));
    sub.unsubscribe();
    bus.publish(user(2));
    assert_eq!(n.load(SeqCst), 1);
    assert!(!bus.wants(EventKind::Custom));

    let c = n.clone();
    let sub = bus.signal(EventKind::Custom).connect(move |_| {
        c.fetch_add(1, SeqCst);
    });
    bus.publish(user(3));
    drop(sub);
    bus.publish(user(4));
    assert_eq!(n.load(SeqCst), 2);
    assert_eq!(bus.subscription_count(), 0);
}

struct Owner {
    seen: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, SeqCst);
    }
}

#[test]
fn weak_subscription_ends_with_its_owner_and_frees_it() {
    let bus = EventBus::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let owner = Arc::new(Owner {
        seen: AtomicUsize::new(0),
        dropped: dropped.clone(),
    });
    let sub = bus.subscribe_weak(EventFilter::all(), &owner, |o, _| {
        o.seen.fetch_add(1, SeqCst);
    });
    bus.publish(user(1));
    assert_eq!(owner.seen.load(SeqCst), 1);
    let weak = Arc::downgrade(&owner);
    drop(owner);
    // The bus holds no strong reference: the owner is dropped at once.
    assert_eq!(dropped.load(SeqCst), 1);
    assert!(weak.upgrade().is_none());
    // The next event removes the dead subscription.
    bus.publish(user(2));
    assert!(!sub.is_active());
    assert_eq!(bus.subscription_count(), 0);
    // prune() removes one without waiting for an event.
    let owner2 = Arc::new(Owner {
        seen: AtomicUsize::new(0),
        dropped: dropped.clone(),
    });
    bus.subscribe_weak(EventFilter::kind(EventKind::TaskFailed), &owner2, |_, _| {})
        .detach();
    assert_eq!(bus.subscription_count(), 1);
    drop(owner2);
    bus.prune();
    assert_eq!(bus.subscription_count(), 0);
    assert_eq!(dropped.load(SeqCst), 2);
}

#[test]
fn sender_filtering_delivers_only_matching_events() {
    let bus = EventBus::new();
    let ex = executor(&bus);
    let mk = || {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
        g.task("b").run(a, |_, x| Ok(*x + 1));
        g.build().unwrap()
    };
    let (g1, g2) = (mk(), mk());
    // Subscriptions for a run must exist before it starts: use a run that waits.
    let gate = Arc::new(Mutex::new(()));
    let hold = gate.lock().unwrap();
    let mut gb = Graph::builder();
    let gt = gate.clone();
    gb.task("a").run((), move |_, ()| {
        drop(gt.lock().unwrap());
        Ok::<_, TaskError>(1)
    });
    let blocked = ex.start(&gb.build().unwrap());
    let only_blocked = Log::default();
    let _s1 = bus
        .on(EventFilter::kind(EventKind::TaskCompleted))
        .workflow(blocked.id())
        .connect({
            let l = only_blocked.0.clone();
            move |e| l.lock().unwrap().push(e.clone())
        });
    let only_b = Log::default();
    let _s2 = bus.on(EventFilter::all()).task("b").connect({
        let l = only_b.0.clone();
        move |e| l.lock().unwrap().push(e.clone())
    });
    let r1 = ex.run(&g1);
    let r2 = ex.run(&g2);
    drop(hold);
    blocked.wait();
    let ev = only_blocked.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].source.task_id(), Some("a"));
    let ev = only_b.events();
    // b in two runs: pending, started and completed each.
    assert_eq!(ev.len(), 6, "{ev:?}");
    assert!(ev.iter().all(|e| e.source.task_id() == Some("b")));
    let runs: Vec<_> = ev.iter().map(|e| e.source.workflow).collect();
    assert!(runs.contains(&Some(r1.run_id())) && runs.contains(&Some(r2.run_id())));
}

#[test]
fn middleware_transforms_and_drops_in_order() {
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(&bus, EventFilter::all());
    // Drops odd workflows; then rewrites the payload; order matters.
    bus.add_middleware(|e| (e.source.workflow.unwrap_or(0) % 2 == 0).then_some(e));
    bus.add_middleware(|mut e| {
        if let EventData::Custom { payload, .. } = &mut e.data {
            let v = *payload.get::<u64>().unwrap();
            *payload = Payload::new(v * 10);
        }
        Some(e)
    });
    for n in 1..=4 {
        bus.publish(user(n));
    }
    let got: Vec<u64> = log
        .events()
        .iter()
        .map(|e| match &e.data {
            EventData::Custom { payload, .. } => *payload.get::<u64>().unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(got, vec![20, 40]);
}

#[test]
fn history_is_bounded_and_queryable() {
    let bus = EventBus::builder().history(5).build();
    for n in 1..=8 {
        bus.publish(user(n));
    }
    let h = bus.history();
    assert_eq!(h.len(), 5);
    let ws: Vec<_> = h.iter().map(|e| e.source.workflow.unwrap()).collect();
    assert_eq!(ws, vec![4, 5, 6, 7, 8]);
    let six = bus.history_matching(&EventFilter::kind(EventKind::Custom).workflow(6));
    assert_eq!(six.len(), 1);
    assert!(bus
        .history_matching(&EventFilter::kind(EventKind::TaskFailed))
        .is_empty());

    // A run's events, queried by task.
    let bus = EventBus::builder().history(1000).build();
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
    g.task("b")
        .run(a, |_, _| Err::<i32, _>(TaskError::msg("no")));
    executor(&bus).run(&g.build().unwrap());
    let b = bus.history_matching(&EventFilter::all().task("b"));
    let kinds: Vec<_> = b.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::TaskPending,
            EventKind::TaskStarted,
            EventKind::TaskFailed
        ]
    );
}

#[test]
fn async_stream_reports_lag_instead_of_blocking() {
    let bus = EventBus::new();
    let mut stream = bus.stream(EventFilter::kind(EventKind::Custom), 4);
    // Nobody reads while 10 events are published: the publisher never waits.
    for n in 1..=10 {
        bus.publish(user(n));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = stream.recv().await.unwrap();
        assert_eq!(first.unwrap_err().missed, 6);
        for n in 7..=10 {
            let e = stream.recv().await.unwrap().unwrap();
            assert_eq!(e.source.workflow, Some(n));
        }
        assert!(stream.try_recv().is_none());
    });
    // A dropped stream is removed from the bus.
    drop(stream);
    bus.publish(user(11));
    assert_eq!(bus.subscription_count(), 0);
    assert!(!bus.wants(EventKind::Custom));
}

#[test]
fn async_stream_of_a_run() {
    let bus = EventBus::new();
    let ex = executor(&bus);
    let stream = bus.stream(EventFilter::kind(EventKind::TaskCompleted), 1024);
    let mut g = Graph::builder();
    for i in 0..50 {
        g.task(format!("t{i}"))
            .run((), move |_, ()| Ok::<_, TaskError>(i));
    }
    ex.run(&g.build().unwrap());
    drop(bus);
    drop(ex);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    use futures_util::StreamExt;
    let got: Vec<_> = rt.block_on(stream.into_stream().collect::<Vec<_>>());
    assert_eq!(got.len(), 50);
    assert!(got.iter().all(|r| r.is_ok()));
}

#[test]
fn connected_to_is_scoped() {
    let bus = EventBus::new();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let out = bus.connected_to(
        EventFilter::all(),
        move |_| {
            c.fetch_add(1, SeqCst);
        },
        || {
            bus.publish(user(1));
            bus.publish(user(2));
            "done"
        },
    );
    bus.publish(user(3));
    assert_eq!(out, "done");
    assert_eq!(n.load(SeqCst), 2);
    assert!(!bus.wants(EventKind::Custom));
}

#[test]
fn muting_a_signal() {
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(&bus, EventFilter::all());
    let sig = bus.signal(EventKind::Custom);
    assert!(sig.has_receivers());
    {
        let _m = sig.mute();
        assert!(sig.is_muted());
        assert!(!bus.wants(EventKind::Custom));
        bus.publish(user(1));
    }
    bus.publish(user(2));
    {
        let named = bus.named("user");
        let _m = named.mute();
        bus.publish(user(3));
        bus.emit_named("other", Source::workflow(4), Payload::new(4u64));
    }
    let ws: Vec<_> = log
        .events()
        .iter()
        .map(|e| e.source.workflow.unwrap())
        .collect();
    assert_eq!(ws, vec![2, 4]);
}

#[test]
fn named_signals_send_and_filter() {
    let bus = EventBus::new();
    let log = Log::default();
    let sig = bus.named("cache.hit");
    let _s = sig.connect({
        let l = log.0.clone();
        move |e| l.lock().unwrap().push(e.clone())
    });
    assert!(sig.has_receivers());
    assert!(!bus.named("cache.miss").has_receivers());
    sig.send(Source::default(), Payload::new("k1")).unwrap();
    bus.emit_named("cache.miss", Source::default(), Payload::new("k2"));
    let ev = log.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].signal_name(), "cache.hit");
    match &ev[0].data {
        EventData::Custom { payload, .. } => assert_eq!(payload.get::<&str>(), Some(&"k1")),
        _ => unreachable!(),
    }
    assert!(bus
        .signal(EventKind::TaskFailed)
        .send(Source::default(), Payload::new(1))
        .is_none());
}

#[test]
fn a_panicking_handler_breaks_nothing() {
    quiet_expected_panics();
    let bus = EventBus::new();
    let n = Arc::new(AtomicUsize::new(0));
    let _p = bus.subscribe(EventFilter::all(), |_| panic!("{PANIC_MARKER}: handler"));
    let c = n.clone();
    let _ok = bus.subscribe(EventFilter::all(), move |_| {
        c.fetch_add(1, SeqCst);
    });
    bus.publish(user(1));
    bus.publish(user(2));
    assert_eq!(n.load(SeqCst), 2);
    // In a run, too: every task still completes.
    let mut g = Graph::builder();
    for i in 0..20 {
        g.task(format!("t{i}"))
            .run((), move |_, ()| Ok::<_, TaskError>(i));
    }
    let report = executor(&bus).run(&g.build().unwrap());
    assert_eq!(report.counts().completed, 20);
}

#[test]
fn no_subscriber_no_events_built() {
    let bus = EventBus::new();
    for k in EventKind::ALL {
        assert!(!bus.wants(k));
    }
    // A middleware sees only events someone wants: with no subscriber, a run builds none.
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    bus.add_middleware(move |e| {
        s.fetch_add(1, SeqCst);
        Some(e)
    });
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
    g.task("b").run(a, |_, x| Ok(*x));
    executor(&bus).run(&g.build().unwrap());
    assert_eq!(seen.load(SeqCst), 0);
}

/// Every transition of a run is an event, in causal order.
#[test]
fn a_run_publishes_every_transition_in_order() {
    quiet_expected_panics();
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(&bus, EventFilter::all());
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
    let b = g.task("b").run(a, |_, x| Ok(*x + 1));
    let bad = g.task("bad").run(a, |_, _| -> Result<i32, TaskError> {
        panic!("{PANIC_MARKER}: bad")
    });
    let _after = g.task("after").run(bad, |_, x| Ok(*x));
    let _c = g.task("c").run((b, a), |_, (x, y)| Ok(*x + *y));
    let graph = g.build().unwrap();
    let report = executor(&bus).run_with(&graph, RunOptions::default().name("ordered"));
    let ev = log.events();
    let kinds = log.kinds();
    assert_eq!(kinds[0], EventKind::WorkflowCreated);
    match &ev[0].data {
        EventData::WorkflowCreated { name, tasks } => {
            assert_eq!(&**name, "ordered");
            assert_eq!(*tasks, 5);
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(kinds[1..6], [EventKind::TaskPending; 5]);
    assert_eq!(kinds[6], EventKind::WorkflowStarted);
    assert_eq!(*kinds.last().unwrap(), EventKind::WorkflowFailed);
    match &ev.last().unwrap().data {
        EventData::WorkflowFailed { counts, error, .. } => {
            assert_eq!(counts.failed, 1);
            assert_eq!(counts.skipped, 1);
            assert_eq!(counts.completed, 3);
            assert!(error.contains("`bad`"), "{error}");
        }
        d => panic!("{d:?}"),
    }
    assert!(ev
        .iter()
        .all(|e| e.source.workflow == Some(report.run_id())));
    // Per task: pending, started, final (or pending, skipped).
    let mut per: HashMap<String, Vec<(usize, EventKind)>> = HashMap::new();
    for (i, e) in ev.iter().enumerate() {
        if let Some(t) = e.source.task_id() {
            per.entry(t.to_string()).or_default().push((i, e.kind()));
        }
    }
    let seq = |t: &str| per[t].iter().map(|x| x.1).collect::<Vec<_>>();
    use EventKind::*;
    assert_eq!(seq("a"), vec![TaskPending, TaskStarted, TaskCompleted]);
    assert_eq!(seq("b"), vec![TaskPending, TaskStarted, TaskCompleted]);
    assert_eq!(seq("c"), vec![TaskPending, TaskStarted, TaskCompleted]);
    assert_eq!(seq("bad"), vec![TaskPending, TaskStarted, TaskFailed]);
    assert_eq!(seq("after"), vec![TaskPending, TaskSkipped]);
    let skipped = ev.iter().find(|e| e.kind() == TaskSkipped).unwrap();
    match &skipped.data {
        EventData::TaskSkipped { cause } => assert_eq!(cause.as_deref(), Some("bad")),
        d => panic!("{d:?}"),
    }
    let failed = ev.iter().find(|e| e.kind() == TaskFailed).unwrap();
    match &failed.data {
        EventData::TaskFailed { error, attempt } => {
            assert!(error.is_panic());
            assert_eq!(*attempt, 1);
        }
        d => panic!("{d:?}"),
    }
    // Causality: a dependency's final event comes before its dependent's first start.
    let final_of = |t: &str| per[t].last().unwrap().0;
    let start_of = |t: &str| per[t][1].0;
    for (dep, t) in [
        ("a", "b"),
        ("a", "bad"),
        ("b", "c"),
        ("a", "c"),
        ("bad", "after"),
    ] {
        assert!(final_of(dep) < start_of(t), "{dep} before {t}");
    }
    // Timestamps never go backwards along a chain.
    assert!(ev[per["a"][2].0].timestamp <= ev[per["b"][1].0].timestamp);
}

#[test]
fn a_handler_may_run_a_workflow_of_its_own() {
    // The inner run is started from inside the outer run's handler: each run's handler sees
    // its own events, whole.
    let bus = EventBus::new();
    let inner_bus = EventBus::new();
    let inner_log = Log::default();
    let _i = inner_log.attach(&inner_bus, EventFilter::kind(EventKind::TaskCompleted));
    let inner = {
        let mut g = Graph::builder();
        let x = g.task("x").run((), |_, ()| Ok::<_, TaskError>(1));
        g.task("y").run(x, |_, v| Ok::<_, TaskError>(*v + 1));
        g.build().unwrap()
    };
    let inner_exec = Executor::builder()
        .workers(1)
        .events(inner_bus.clone())
        .build();
    let outer: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let o = outer.clone();
    let _s = bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |e| {
        let name = e.source.task_id().unwrap().to_string();
        let id = e.id;
        inner_exec.run(&inner);
        // The outer event is intact after the inner run published its own.
        assert_eq!(e.source.task_id().unwrap(), name);
        assert_eq!(e.id, id);
        o.lock().unwrap().push((name, id));
    });
    let mut g = Graph::builder();
    for i in 0..4 {
        g.task(format!("t{i}"))
            .run((), |_, ()| Ok::<_, TaskError>(()));
    }
    executor(&bus).run(&g.build().unwrap());
    let mut names: Vec<String> = outer.lock().unwrap().iter().map(|x| x.0.clone()).collect();
    names.sort();
    assert_eq!(names, ["t0", "t1", "t2", "t3"]);
    let ids: std::collections::HashSet<u64> = outer.lock().unwrap().iter().map(|x| x.1).collect();
    assert_eq!(ids.len(), 4, "one id per event");
    let mut inner_names: Vec<String> = inner_log
        .events()
        .iter()
        .map(|e| e.source.task_id().unwrap().to_string())
        .collect();
    inner_names.sort();
    assert_eq!(inner_names.len(), 8, "two tasks, four runs");
    assert_eq!(inner_names.iter().filter(|n| *n == "x").count(), 4);
}

#[test]
fn retries_and_progress_are_events() {
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(
        &bus,
        EventFilter::kinds([
            EventKind::TaskRetrying,
            EventKind::TaskProgress,
            EventKind::TaskStarted,
            EventKind::TaskCompleted,
        ]),
    );
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let mut g = Graph::builder();
    g.task("flaky")
        .retry(RetryPolicy::attempts(3).backoff(ms(1)).max_backoff(ms(2)))
        .run((), move |cx, ()| {
            cx.progress(1, Some(2), Some("half"));
            if t.fetch_add(1, SeqCst) < 2 {
                Err(TaskError::msg("not yet"))
            } else {
                Ok(7)
            }
        });
    g.task("io").run_async((), |cx, ()| {
        let rep = cx.reporter();
        async move {
            rep.progress(5, None, None);
            Ok::<_, TaskError>(1)
        }
    });
    let report = executor(&bus).run(&g.build().unwrap());
    assert_eq!(report.counts().completed, 2);
    let flaky: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| e.source.task_id() == Some("flaky"))
        .collect();
    let kinds: Vec<_> = flaky.iter().map(Event::kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![
            TaskStarted,
            TaskProgress,
            TaskRetrying,
            TaskStarted,
            TaskProgress,
            TaskRetrying,
            TaskStarted,
            TaskProgress,
            TaskCompleted
        ]
    );
    match (&flaky[2].data, &flaky[8].data) {
        (
            EventData::TaskRetrying {
                attempt,
                error,
                delay,
            },
            EventData::TaskCompleted { attempt: last, .. },
        ) => {
            assert_eq!(*attempt, 1);
            assert_eq!(error.message(), "not yet");
            assert!(*delay > std::time::Duration::ZERO);
            assert_eq!(*last, 3);
        }
        d => panic!("{d:?}"),
    }
    match &flaky[1].data {
        EventData::TaskProgress(p) => {
            assert_eq!(
                (p.done, p.total, p.message.as_deref()),
                (1, Some(2), Some("half"))
            )
        }
        d => panic!("{d:?}"),
    }
    let io: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| e.source.task_id() == Some("io"))
        .map(|e| e.kind())
        .collect();
    assert_eq!(io, vec![TaskStarted, TaskProgress, TaskCompleted]);
}

#[test]
fn cancelled_run_and_custom_events_from_tasks() {
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(
        &bus,
        EventFilter::kinds([
            EventKind::WorkflowCancelled,
            EventKind::TaskCancelled,
            EventKind::Custom,
        ]),
    );
    let mut g = Graph::builder();
    let a = g.task("a").run((), |cx, ()| {
        cx.emit("note", Payload::new(42u32));
        while !cx.is_cancelled() {
            std::thread::sleep(ms(1));
        }
        Err::<i32, _>(TaskError::cancelled())
    });
    g.task("b").run(a, |_, x| Ok(*x));
    let run = executor(&bus).start(&g.build().unwrap());
    while !log.kinds().contains(&EventKind::Custom) {
        std::thread::sleep(ms(1));
    }
    run.cancel();
    run.wait();
    let ev = log.events();
    let kinds: Vec<_> = ev.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Custom,
            EventKind::TaskCancelled,
            EventKind::TaskCancelled,
            EventKind::WorkflowCancelled
        ]
    );
    match &ev[0].data {
        EventData::Custom { name, payload } => {
            assert_eq!(&**name, "note");
            assert_eq!(payload.get::<u32>(), Some(&42));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn subgraph_tasks_are_named_by_their_parent() {
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(&bus, EventFilter::kind(EventKind::TaskCompleted));
    let mut g = Graph::builder();
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
    let report = executor(&bus).run(&g.build().unwrap());
    let mut ids: Vec<(String, bool)> = log
        .events()
        .iter()
        .map(|e| {
            let t = e.source.task.as_ref().unwrap();
            assert_eq!(e.source.workflow, Some(report.run_id()));
            (t.id().to_string(), t.subgraph)
        })
        .collect();
    ids.sort();
    let want: Vec<(String, bool)> = [
        ("fan", false),
        ("fan/p0", true),
        ("fan/p1", true),
        ("fan/p2", true),
        ("fan/sum", true),
        ("use", false),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), *b))
    .collect();
    assert_eq!(ids, want);
}

/// Persisted outputs in events, and runs resumed from them.
mod resume {
    use super::*;
    use nerv::{Restore, TaskStatus};

    /// a → b → c, each counting its runs; `a` and `b` persisted when `persist`.
    fn chain(calls: &Arc<AtomicUsize>, persist: bool) -> (Graph, nerv::Handle<String>) {
        let mut g = Graph::builder();
        let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
        let a = g.task("a").run((), move |_, ()| {
            c1.fetch_add(1, SeqCst);
            Ok::<_, TaskError>(vec![1u32, 2, 3])
        });
        let b = g.task("b").run(a, move |_, v| {
            c2.fetch_add(1, SeqCst);
            Ok::<_, TaskError>(v.iter().sum::<u32>())
        });
        let c = g.task("c").run(b, move |_, s| {
            c3.fetch_add(1, SeqCst);
            Ok::<_, TaskError>(format!("sum={s}"))
        });
        if persist {
            g.persist(a);
            g.persist(b);
        }
        (g.build().unwrap(), c)
    }

    #[test]
    fn persisted_outputs_ride_on_their_completion_events() {
        let bus = EventBus::new();
        let log = Log::default();
        let _s = log.attach(&bus, EventFilter::kind(EventKind::TaskCompleted));
        let calls = Arc::new(AtomicUsize::new(0));
        let (graph, _) = chain(&calls, true);
        assert!(graph.task(graph.find("a").unwrap()).is_persisted());
        assert!(!graph.task(graph.find("c").unwrap()).is_persisted());
        executor(&bus).run(&graph);
        let outputs: HashMap<String, Option<Vec<u8>>> = log
            .events()
            .iter()
            .map(|e| match &e.data {
                EventData::TaskCompleted { output, .. } => (
                    e.source.task_id().unwrap().to_string(),
                    output.as_ref().map(|b| b.to_vec()),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        let a: Vec<u32> = rmp_serde::from_slice(outputs["a"].as_ref().unwrap()).unwrap();
        assert_eq!(a, [1, 2, 3]);
        let b: u32 = rmp_serde::from_slice(outputs["b"].as_ref().unwrap()).unwrap();
        assert_eq!(b, 6);
        assert_eq!(outputs["c"], None, "not persisted");
    }

    #[test]
    fn a_persisted_unit_output_is_recorded_and_restored() {
        // Unit outputs are not stored in the run (their task's completion is their value),
        // yet a persisted one rides on its event and a resumed run restores it.
        let bus = EventBus::new();
        let log = Log::default();
        let _s = log.attach(&bus, EventFilter::kind(EventKind::TaskCompleted));
        let calls = Arc::new(AtomicUsize::new(0));
        let graph = {
            let mut g = Graph::builder();
            let c = calls.clone();
            let u = g.task("u").run((), move |_, ()| {
                c.fetch_add(1, SeqCst);
                Ok::<_, TaskError>(())
            });
            g.task("after").run(u, |_, ()| Ok::<_, TaskError>(1u8));
            g.persist(u);
            g.build().unwrap()
        };
        executor(&bus).run(&graph);
        let bytes = log
            .events()
            .iter()
            .find_map(|e| match &e.data {
                EventData::TaskCompleted { output, .. } if e.source.task_id() == Some("u") => {
                    output.as_ref().map(|b| b.to_vec())
                }
                _ => None,
            })
            .expect("the unit output is recorded");
        let () = rmp_serde::from_slice(&bytes).unwrap();
        let restore: Restore = [("u", bytes)].into_iter().collect();
        let r = executor(&bus).run_with(&graph, RunOptions::default().resume("u1", restore));
        assert_eq!(calls.load(SeqCst), 1, "restored, not run again");
        let u = r.task("u").unwrap();
        assert_eq!((u.status, u.attempts), (TaskStatus::Completed, 0));
        assert_eq!(r.task("after").unwrap().status, TaskStatus::Completed);
    }

    #[test]
    fn delivered_outputs_are_not_kept_alive_by_the_bus() {
        let bus = EventBus::new();
        let seen: Arc<Mutex<Vec<std::sync::Weak<[u8]>>>> = Arc::default();
        let s = seen.clone();
        let _sub = bus.subscribe(EventFilter::kind(EventKind::TaskCompleted), move |e| {
            if let EventData::TaskCompleted {
                output: Some(bytes),
                ..
            } = &e.data
            {
                s.lock().unwrap().push(Arc::downgrade(bytes));
            }
        });
        // Each persisted output is the last event delivered on its thread.
        let mut g = Graph::builder();
        for i in 0..2 {
            let t = g
                .task(format!("t{i}"))
                .run((), |_, ()| Ok::<_, TaskError>(vec![7u8; 64]));
            g.persist(t);
        }
        // (The executor, and its workers' threads, outlive the check.)
        let exec = executor(&bus);
        exec.run(&g.build().unwrap());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "both are persisted");
        // The handler only borrowed each event: once delivered, nothing holds the bytes.
        assert!(seen.iter().all(|w| w.strong_count() == 0));
    }

    #[test]
    fn a_resumed_run_restores_persisted_tasks_and_runs_the_rest() {
        let bus = EventBus::new();
        let log = Log::default();
        let _s = log.attach(
            &bus,
            EventFilter::kinds([EventKind::TaskCompleted, EventKind::WorkflowStarted]),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let (graph, c) = chain(&calls, true);
        let mut restore = Restore::new();
        restore
            .insert("a", rmp_serde::to_vec(&vec![10u32, 20]).unwrap())
            .insert("b", rmp_serde::to_vec(&30u32).unwrap());
        let report =
            executor(&bus).run_with(&graph, RunOptions::default().resume("run-7", restore));
        assert_eq!(report.output(c).map(String::as_str), Some("sum=30"));
        assert_eq!(calls.load(SeqCst), 1, "only c ran");
        let a = report.task("a").unwrap();
        assert_eq!((a.status, a.attempts), (TaskStatus::Completed, 0));
        let events = log.events();
        assert!(matches!(
            &events[0].data,
            EventData::WorkflowStarted { resumes: Some(k), .. } if &**k == "run-7"
        ));
        let attempts: Vec<(String, u32)> = events[1..]
            .iter()
            .map(|e| match &e.data {
                EventData::TaskCompleted { attempt, .. } => {
                    (e.source.task_id().unwrap().to_string(), *attempt)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            attempts,
            [("a".into(), 0), ("b".into(), 0), ("c".into(), 1)]
        );
    }

    #[test]
    fn tasks_that_are_not_persisted_or_do_not_decode_run_again() {
        let bus = EventBus::new();
        let calls = Arc::new(AtomicUsize::new(0));
        // Not persisted: listed, but runs.
        let (graph, c) = chain(&calls, false);
        let restore: Restore = [("a", rmp_serde::to_vec(&vec![1u32]).unwrap())]
            .into_iter()
            .collect();
        let r = executor(&bus).run_with(&graph, RunOptions::default().resume("x", restore));
        assert_eq!(r.output(c).map(String::as_str), Some("sum=6"));
        assert_eq!(calls.load(SeqCst), 3);
        // Persisted, but the bytes are not a Vec<u32>: runs, and the run is right.
        calls.store(0, SeqCst);
        let (graph, c) = chain(&calls, true);
        let restore: Restore = [("a", b"\xc1garbage".to_vec())].into_iter().collect();
        let r = executor(&bus).run_with(&graph, RunOptions::default().resume("y", restore));
        assert_eq!(r.output(c).map(String::as_str), Some("sum=6"));
        assert_eq!(calls.load(SeqCst), 3);
        // It ran once: not counted as restored.
        assert_eq!(r.task("a").unwrap().attempts, 1);
    }
}

#[test]
fn task_events_carry_the_times_the_report_records() {
    // With per-task timing on, a task's start and end are read once: its events and its
    // result tell the same instants.
    let bus = EventBus::new();
    let log = Log::default();
    let _s = log.attach(
        &bus,
        EventFilter::kinds([EventKind::TaskStarted, EventKind::TaskCompleted]),
    );
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| {
        std::thread::sleep(ms(2));
        Ok::<_, TaskError>(1)
    });
    g.task("b").run(a, |_, x| Ok(*x + 1));
    let graph = g.build().unwrap();
    let report = executor(&bus).run(&graph);
    for id in ["a", "b"] {
        let r = report.task(id).unwrap();
        let at = |kind| {
            log.events()
                .iter()
                .find(|e| e.kind() == kind && e.source.task.as_ref().unwrap().id() == id)
                .map(|e| e.timestamp)
        };
        assert_eq!(at(EventKind::TaskStarted), r.started_at, "{id} started");
        assert_eq!(
            at(EventKind::TaskCompleted),
            r.completed_at,
            "{id} completed"
        );
    }
    let a = report.task("a").unwrap();
    assert!(
        a.completed_at
            .unwrap()
            .duration_since(a.started_at.unwrap())
            .unwrap()
            >= ms(2)
    );
}
