//! Integration tests of the nerv crate: what a user of the public API relies on.
//!
//! No test asserts a wall-clock duration: time only appears as safety limits (so that a broken
//! engine fails a test instead of hanging it) and as timeouts and back-offs given to nerv.

mod util;

use nerv::{
    ErrorKind, Executor, FailurePolicy, Graph, GraphError, Handle, Planner, Priority, RetryPolicy,
    RunOptions, RunStatus, StatusCounts, Subgraph, TaskError, TaskId, TaskStatus, Timing,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use util::*;

/// Long enough for anything these tests wait for; only reached when something is broken.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

mod validation {
    use super::*;

    #[test]
    fn unknown_dependency_names_the_task_and_the_missing_id() {
        let mut g = Graph::builder();
        g.task("load").run((), |_, ()| Ok(1));
        g.task("transform")
            .depends_on("load")
            .depends_on("lod")
            .run((), |_, ()| Ok(2));
        let err = g.build().unwrap_err();
        assert_eq!(
            err,
            GraphError::UnknownDependency {
                task: "transform".into(),
                dependency: "lod".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("`transform`") && msg.contains("`lod`"),
            "message: {msg}"
        );
        assert_eq!(err.tasks(), vec!["transform"]);
    }

    #[test]
    fn unknown_dependency_by_add_dependency_by_id() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(1));
        g.add_dependency_by_id(a, "ghost");
        let err = g.build().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`a`") && msg.contains("`ghost`"), "{msg}");
    }

    #[test]
    fn duplicate_id_names_the_id_and_both_positions() {
        let mut g = Graph::builder();
        g.task("a").run((), |_, ()| Ok(()));
        g.task("twice").run((), |_, ()| Ok(()));
        g.task("b").run((), |_, ()| Ok(()));
        g.task("twice").run((), |_, ()| Ok(()));
        let err = g.build().unwrap_err();
        assert_eq!(
            err,
            GraphError::DuplicateId {
                id: "twice".into(),
                first: 1,
                second: 3
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("`twice`") && msg.contains("#1") && msg.contains("#3"),
            "message: {msg}"
        );
    }

    #[test]
    fn self_dependency_by_depends_on_names_the_task() {
        let mut g = Graph::builder();
        g.task("ok").run((), |_, ()| Ok(()));
        g.task("narcissus")
            .depends_on("narcissus")
            .run((), |_, ()| Ok(()));
        let err = g.build().unwrap_err();
        assert_eq!(
            err,
            GraphError::SelfDependency {
                task: "narcissus".into()
            }
        );
        assert!(err.to_string().contains("`narcissus`"), "{err}");
    }

    #[test]
    fn self_dependency_by_add_dependency_by_id_names_the_task() {
        let mut g = Graph::builder();
        let x = g.task("x").run((), |_, ()| Ok(()));
        g.task("y").run(x, |_, ()| Ok(()));
        g.add_dependency_by_id(x, "x");
        let err = g.build().unwrap_err();
        assert_eq!(err, GraphError::SelfDependency { task: "x".into() });
        assert!(err.to_string().contains("`x`"), "{err}");
    }

    #[test]
    fn self_dependency_by_handle_names_the_task() {
        let mut g = Graph::builder();
        let x = g.task("x").run((), |_, ()| Ok(()));
        g.add_dependency(x, x);
        let err = g.build().unwrap_err();
        assert_eq!(err, GraphError::SelfDependency { task: "x".into() });
    }

    #[test]
    fn three_cycle_reports_the_whole_path() {
        let mut g = Graph::builder();
        g.task("a").depends_on("c").run((), |_, ()| Ok(()));
        g.task("b").depends_on("a").run((), |_, ()| Ok(()));
        g.task("c").depends_on("b").run((), |_, ()| Ok(()));
        let err = g.build().unwrap_err();
        let GraphError::Cycle { path } = &err else {
            panic!("expected a cycle, got {err:?}");
        };
        // Each task depends on the one before it; starts at the earliest-added task.
        assert_eq!(path, &["a", "b", "c", "a"]);
        let msg = err.to_string();
        assert!(msg.contains("a → b → c → a"), "message: {msg}");
        for id in ["a", "b", "c"] {
            assert!(msg.contains(id), "message: {msg}");
        }
    }

    /// Each consecutive pair of `path` is a real dependency: `path[i+1]` depends on `path[i]`.
    fn assert_is_cycle(path: &[String], depends: &[(&str, &str)], members: &[&str]) {
        assert!(path.len() >= 3, "path {path:?}");
        assert_eq!(path.first(), path.last(), "path {path:?} is not closed");
        for w in path.windows(2) {
            assert!(
                depends.contains(&(w[1].as_str(), w[0].as_str())),
                "`{}` does not depend on `{}` (path {path:?})",
                w[1],
                w[0]
            );
        }
        let mut inner: Vec<&str> = path[1..].iter().map(String::as_str).collect();
        inner.sort_unstable();
        let mut want = members.to_vec();
        want.sort_unstable();
        assert_eq!(inner, want, "path {path:?}");
    }

    #[test]
    fn cycle_with_a_tail_reports_only_the_cycle() {
        // `t1` and `t2` are downstream of the cycle and added first (so they are the first
        // tasks the cycle search meets); `up` is upstream of it. Neither belongs in the path.
        let mut g = Graph::builder();
        g.task("t1").depends_on("c").run((), |_, ()| Ok(()));
        g.task("t2")
            .depends_on("t1")
            .depends_on("b")
            .run((), |_, ()| Ok(()));
        let up = g.task("up").run((), |_, ()| Ok(()));
        g.task("a")
            .after(up)
            .depends_on("c")
            .run((), |_, ()| Ok(()));
        g.task("b").depends_on("a").run((), |_, ()| Ok(()));
        g.task("c").depends_on("b").run((), |_, ()| Ok(()));
        g.task("t3").depends_on("t2").run((), |_, ()| Ok(()));
        let err = g.build().unwrap_err();
        let GraphError::Cycle { path } = &err else {
            panic!("expected a cycle, got {err:?}");
        };
        let depends = [
            ("t1", "c"),
            ("t2", "t1"),
            ("t2", "b"),
            ("a", "up"),
            ("a", "c"),
            ("b", "a"),
            ("c", "b"),
            ("t3", "t2"),
        ];
        assert_is_cycle(path, &depends, &["a", "b", "c"]);
        assert_eq!(path, &["a", "b", "c", "a"]);
        let msg = err.to_string();
        for outside in ["t1", "t2", "t3", "up"] {
            assert!(!msg.contains(outside), "`{outside}` in message: {msg}");
        }
    }

    #[test]
    fn cycle_through_handles_and_ids_is_found() {
        // A longer cycle made with a mix of handle and id dependencies.
        let mut g = Graph::builder();
        let p = g.task("p").depends_on("s").run((), |_, ()| Ok(1));
        let q = g.task("q").run(p, |_, x| Ok(*x));
        let r = g.task("r").run(q, |_, x| Ok(*x));
        let s = g.task("s").run(r, |_, x| Ok(*x));
        g.task("side").run(s, |_, x| Ok(*x));
        let err = g.build().unwrap_err();
        let GraphError::Cycle { path } = &err else {
            panic!("expected a cycle, got {err:?}");
        };
        assert_eq!(path, &["p", "q", "r", "s", "p"]);
        assert_eq!(err.tasks(), vec!["p", "q", "r", "s", "p"]);
    }

    #[test]
    fn two_cycle_made_with_handles_is_found() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(1));
        let b = g.task("b").run(a, |_, x| Ok(*x));
        g.add_dependency(a, b);
        let err = g.build().unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                path: vec!["a".into(), "b".into(), "a".into()]
            }
        );
    }

    #[test]
    fn empty_id_names_its_position() {
        let mut g = Graph::builder();
        g.task("fine").run((), |_, ()| Ok(()));
        g.task("").run((), |_, ()| Ok(()));
        let err = g.build().unwrap_err();
        assert_eq!(err, GraphError::EmptyId { position: 1 });
        assert!(err.to_string().contains("#1"), "{err}");
    }

    #[test]
    fn handle_of_another_builder_is_rejected_as_input() {
        let mut other = Graph::builder();
        let foreign = other.task("elsewhere").run((), |_, ()| Ok(5));
        let mut g = Graph::builder();
        g.task("local").run((), |_, ()| Ok(1));
        g.task("user").run(foreign, |_, x| Ok(*x));
        let err = g.build().unwrap_err();
        assert!(
            matches!(&err, GraphError::ForeignHandle { task, .. } if task == "user"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`user`"), "{err}");
        // The other builder is unaffected.
        assert!(other.build().is_ok());
    }

    #[test]
    fn handle_of_another_builder_is_rejected_as_ordering_dependency() {
        let mut other = Graph::builder();
        let foreign = other.task("elsewhere").run((), |_, ()| Ok(5));
        let mut g = Graph::builder();
        g.task("waiter").after(foreign).run((), |_, ()| Ok(1));
        let err = g.build().unwrap_err();
        assert!(
            matches!(&err, GraphError::ForeignHandle { task, .. } if task == "waiter"),
            "{err:?}"
        );
    }

    #[test]
    fn handle_of_another_builder_is_rejected_by_add_dependency() {
        let mut other = Graph::builder();
        let foreign = other.task("elsewhere").run((), |_, ()| Ok(5));
        let mut g = Graph::builder();
        let mine = g.task("mine").run((), |_, ()| Ok(1));
        g.add_dependency(mine, foreign);
        let err = g.build().unwrap_err();
        assert!(
            matches!(&err, GraphError::ForeignHandle { task, .. } if task == "mine"),
            "{err:?}"
        );
    }

    #[test]
    fn valid_graph_exposes_its_tasks_and_dependencies() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(1));
        let b = g
            .task("b")
            .priority(Priority::High)
            .timeout(ms(500))
            .retry(RetryPolicy::attempts(4))
            .estimate(ms(3))
            .name("Bee")
            .description("the second")
            .creator("tests")
            .tag("t1")
            .meta("k", "v")
            .run(a, |_, x| Ok(*x + 1));
        g.task("c")
            .after(b)
            .depends_on("a")
            .run((a, b), |_, (x, y)| Ok(x + y));
        assert_eq!(g.len(), 3);
        assert_eq!(g.find("b"), Some(b.id()));
        let graph = g.build().unwrap();
        assert_eq!(graph.len(), 3);
        // `c` depends on `a` twice (input and by id) and on `b` twice: edges are kept once.
        assert_eq!(graph.edge_count(), 3);
        let c = graph.find("c").unwrap();
        let mut deps: Vec<&str> = graph.task(c).dependencies().collect();
        deps.sort_unstable();
        assert_eq!(deps, ["a", "b"]);
        let mut dependents: Vec<&str> = graph.task(a).dependents().collect();
        dependents.sort_unstable();
        assert_eq!(dependents, ["b", "c"]);
        let bi = graph.task(b);
        assert_eq!(bi.id(), "b");
        assert_eq!(bi.name(), "Bee");
        assert_eq!(bi.description(), "the second");
        assert_eq!(bi.priority(), Priority::High);
        assert_eq!(bi.timeout(), Some(ms(500)));
        assert_eq!(bi.retry().map(|r| r.max_attempts()), Some(4));
        assert_eq!(bi.estimate(), Some(ms(3)));
        let meta = bi.metadata();
        assert_eq!(meta.creator.as_deref(), Some("tests"));
        assert_eq!(meta.tags, ["t1"]);
        assert_eq!(meta.extra.get("k").map(String::as_str), Some("v"));
        assert!(meta.created_at.is_some());
        assert_eq!(graph.task(a).priority(), Priority::Medium);
        assert_eq!(graph.find("nope"), None);
        let ids: Vec<&str> = graph.tasks().map(|t| t.id()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Typed data flow
// ---------------------------------------------------------------------------------------------

mod dataflow {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Reading {
        sensor: String,
        values: Vec<f64>,
        calibrated: bool,
    }

    #[test]
    fn values_of_every_kind_reach_dependents_intact() {
        let mut g = Graph::builder();
        let nums = g
            .task("nums")
            .run((), |_, ()| Ok(vec![3, 1, 4, 1, 5, 9, 2, 6]));
        let text = g
            .task("text")
            .run((), |_, ()| Ok(String::from("héllo wörld")));
        let reading = g.task("reading").run((), |_, ()| {
            Ok(Reading {
                sensor: "t-800".into(),
                values: vec![1.5, -2.25, 1e10],
                calibrated: true,
            })
        });
        let sorted = g.task("sorted").run(nums, |_, v| {
            let mut v = v.clone();
            v.sort_unstable();
            Ok(v)
        });
        let upper = g.task("upper").run(text, |_, s| Ok(s.to_uppercase()));
        let copy = g.task("copy").run(reading, |_, r| Ok(r.clone()));
        let all = g.task("all").run(
            (nums, text, reading, sorted, upper),
            |_, (n, t, r, s, u)| {
                Ok(format!(
                    "{}|{}|{}|{}|{:?}|{}",
                    n.len(),
                    t,
                    r.sensor,
                    r.values.len(),
                    s,
                    u
                ))
            },
        );
        let graph = g.build().unwrap();
        let report = exec(2).run(&graph);
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(sorted), Some(&vec![1, 1, 2, 3, 4, 5, 6, 9]));
        assert_eq!(
            report.output(upper).map(String::as_str),
            Some("HÉLLO WÖRLD")
        );
        assert_eq!(
            report.output(copy),
            Some(&Reading {
                sensor: "t-800".into(),
                values: vec![1.5, -2.25, 1e10],
                calibrated: true,
            })
        );
        assert_eq!(
            report.output(all).map(String::as_str),
            Some("8|héllo wörld|t-800|3|[1, 1, 2, 3, 4, 5, 6, 9]|HÉLLO WÖRLD")
        );
        // Inputs are not consumed: the producers' outputs are still there.
        assert_eq!(report.output(nums), Some(&vec![3, 1, 4, 1, 5, 9, 2, 6]));
    }

    #[test]
    fn tuple_inputs_of_eight_types_arrive_in_order() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(1u8));
        let b = g.task("b").run((), |_, ()| Ok(2u16));
        let c = g.task("c").run((), |_, ()| Ok(3u32));
        let d = g.task("d").run((), |_, ()| Ok(4u64));
        let e = g.task("e").run((), |_, ()| Ok(5i8));
        let f = g.task("f").run((), |_, ()| Ok('6'));
        let h = g.task("h").run((), |_, ()| Ok("7"));
        let i = g.task("i").run((), |_, ()| Ok(8.5f32));
        let z = g
            .task("z")
            .run((a, b, c, d, e, f, h, i), |_, (a, b, c, d, e, f, h, i)| {
                Ok(format!("{a}{b}{c}{d}{e}{f}{h}{i}"))
            });
        // A nested tuple, and the same handle twice.
        let n = g
            .task("n")
            .run(((a, b), (c, (d, d))), |_, ((a, b), (c, (d1, d2)))| {
                Ok(u64::from(*a) + u64::from(*b) + u64::from(*c) + d1 + d2)
            });
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.output(z).map(String::as_str), Some("12345678.5"));
        assert_eq!(report.output(n), Some(&14));
    }

    #[test]
    fn gather_fan_in_keeps_the_order_of_the_handles() {
        let mut g = Graph::builder();
        let parts: Vec<Handle<usize>> = (0..64)
            .map(|i| {
                g.task(format!("p{i}")).run((), move |_, ()| {
                    // Uneven work, so that completion order differs from handle order.
                    let spins = (64 - i) * 200;
                    let mut x = 0usize;
                    for k in 0..spins {
                        x = std::hint::black_box(x.wrapping_add(k));
                    }
                    let _ = x;
                    Ok(i)
                })
            })
            .collect();
        let forward = g.task("forward").run(parts.clone(), |_, xs| {
            Ok(xs.iter().copied().collect::<Vec<_>>())
        });
        let mut rev = parts.clone();
        rev.reverse();
        let backward = g.task("backward").run(rev, |_, xs| {
            assert_eq!(xs.len(), 64);
            assert!(!xs.is_empty());
            assert_eq!(xs.get(0), Some(&63));
            assert_eq!(xs.get(64), None);
            Ok(xs.iter().copied().collect::<Vec<_>>())
        });
        let mixed = g
            .task("mixed")
            .run(vec![parts[5], parts[5], parts[2], parts[40]], |_, xs| {
                Ok(xs.iter().copied().collect::<Vec<_>>())
            });
        let none = g
            .task("none")
            .run(Vec::<Handle<usize>>::new(), |_, xs| Ok(xs.len()));
        let report = exec(4).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(forward), Some(&(0..64).collect::<Vec<_>>()));
        assert_eq!(
            report.output(backward),
            Some(&(0..64).rev().collect::<Vec<_>>())
        );
        assert_eq!(report.output(mixed), Some(&vec![5, 5, 2, 40]));
        assert_eq!(report.output(none), Some(&0));
    }

    #[test]
    fn unit_and_none_outputs_are_passed_and_readable() {
        let mut g = Graph::builder();
        let unit = g.task("unit").run((), |_, ()| Ok(()));
        let nothing = g.task("nothing").run((), |_, ()| Ok(None::<i32>));
        let something = g.task("something").run((), |_, ()| Ok(Some(7)));
        let seen = g
            .task("seen")
            .run((unit, nothing, something), |_, (u, n, s)| {
                let () = *u;
                Ok((n.is_none(), *s))
            });
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(unit), Some(&()));
        assert_eq!(report.output(nothing), Some(&None));
        assert_eq!(report.output(something), Some(&Some(7)));
        assert_eq!(report.output(seen), Some(&(true, Some(7))));
    }

    #[test]
    fn a_unit_output_is_there_exactly_when_its_task_completed() {
        // Unit outputs are not stored: their presence is their task's completion. Read by a
        // dependent, as an optional input after a failure, from a subgraph, an async task and
        // a fan-in, and in the report.
        let mut g = Graph::builder();
        let ok = g.task("ok").run((), |_, ()| Ok(()));
        let bad = g
            .task("bad")
            .run((), |_, ()| Err::<(), _>(TaskError::msg("no")));
        let asynk = g.task("async").run_async((), |_, ()| async { Ok(()) });
        let sub = g.task("sub").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let inner = sb.task("inner").run((), |_, ()| Ok(()));
            Ok(Subgraph::new(sb, inner))
        });
        let reads = g
            .task("reads")
            .run((ok, asynk, sub, vec![ok, asynk]), |_, (a, b, c, all)| {
                Ok((*a, *b, *c, all.iter().count()))
            });
        let cleanup = g
            .task("cleanup")
            .trigger(nerv::TriggerRule::AllDone)
            .run((ok.optional(), bad.optional()), |_, (a, b)| {
                Ok((a.is_some(), b.is_some()))
            });
        let strict = g
            .task("strict")
            .trigger(nerv::TriggerRule::AllDone)
            .run(bad, |_, ()| Ok(()));
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.output(ok), Some(&()));
        assert_eq!(report.output(asynk), Some(&()));
        assert_eq!(report.output(sub), Some(&()));
        assert_eq!(report.output(reads), Some(&((), (), (), 2)));
        assert_eq!(report.output(bad), None);
        assert_eq!(report.output(cleanup), Some(&(true, false)));
        // A unit input whose task failed is missing, as any other.
        let s = report.result(strict);
        assert_eq!(s.status, TaskStatus::Failed, "{report}");
        assert!(s.error.unwrap().to_string().contains("has no value"));
        assert_eq!(report.output(strict), None);
    }

    #[test]
    fn a_graph_of_one_closure_fails_skips_and_passes_values_like_any_other() {
        // Tasks made by one closure and without options (the executor's plain fast path):
        // r0 → r1 → r2 (panics) → r3 (skipped); r4 fails; r5 completes.
        let mut g = Graph::builder();
        let mut handles: Vec<Handle<u32>> = Vec::new();
        for i in 0..6u32 {
            let b = g.task(format!("r{i}"));
            let b = match handles.last() {
                Some(p) if (1..=3).contains(&i) => b.after(*p),
                _ => b,
            };
            handles.push(b.run((), move |_, ()| {
                if i == 2 {
                    panic!("boom {i}");
                }
                if i == 4 {
                    return Err(TaskError::msg("no"));
                }
                Ok(i)
            }));
        }
        let report = exec(2).run(&g.build().unwrap());
        let st = |i: usize| report.result(handles[i]).status;
        assert_eq!(st(2), TaskStatus::Failed);
        let err = report.result(handles[2]).error.unwrap().to_string();
        assert!(err.contains("boom 2"), "{err}");
        assert_eq!(st(3), TaskStatus::Skipped);
        assert_eq!(
            report.result(handles[3]).skipped_because.as_deref(),
            Some("r2")
        );
        assert_eq!(st(4), TaskStatus::Failed);
        for i in [0, 1, 5] {
            assert_eq!(st(i), TaskStatus::Completed);
            assert_eq!(report.output(handles[i]), Some(&(i as u32)));
            assert_eq!(report.result(handles[i]).attempts, 1);
        }
    }

    #[test]
    fn large_fan_out_and_fan_in_pass_every_value() {
        // More successors than the engine releases in one batch.
        let mut g = Graph::builder();
        let root = g.task("root").run((), |_, ()| Ok(1000u64));
        let leaves: Vec<Handle<u64>> = (0..1000u64)
            .map(|i| g.task(format!("leaf{i}")).run(root, move |_, r| Ok(r + i)))
            .collect();
        let sum = g
            .task("sum")
            .run(leaves, |_, xs| Ok(xs.iter().sum::<u64>()));
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 1002, "{report}");
        assert_eq!(report.output(sum), Some(&(1000 * 1000 + 999 * 1000 / 2)));
    }

    #[test]
    fn empty_graph_completes() {
        let graph = Graph::builder().build().unwrap();
        assert!(graph.is_empty());
        let report = exec(1).run(&graph);
        assert_eq!(report.status(), RunStatus::Completed);
        assert_eq!(report.counts(), StatusCounts::default());
        assert!(report.results().is_empty());
    }

    #[test]
    #[should_panic(expected = "another graph")]
    fn output_with_a_handle_of_another_graph_panics() {
        let mut g1 = Graph::builder();
        g1.task("x").run((), |_, ()| Ok(1));
        let mut g2 = Graph::builder();
        let h2 = g2.task("x").run((), |_, ()| Ok(2));
        let report = exec(1).run(&g1.build().unwrap());
        let _ = report.output(h2);
    }

    #[test]
    fn errors_convert_with_question_mark() {
        let mut g = Graph::builder();
        let good = g.task("good").run((), |_, ()| Ok("42".parse::<i32>()?));
        let bad = g.task("bad").run((), |_, ()| Ok("4x2".parse::<i32>()?));
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.output(good), Some(&42));
        assert_eq!(report.output(bad), None);
        let err = report.result(bad).error.expect("an error");
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(err.message().contains("invalid digit"), "{err}");
        assert!(err.source().is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// Failure
// ---------------------------------------------------------------------------------------------

mod failure {
    use super::*;

    /// A graph of one closure type without task options, run without events, restore, timing
    /// or timeout, runs in a loop compiled for that closure (the executor's leanest path):
    /// failures, panics, skips, retries, cancellation and outputs are as on any other path.
    #[test]
    fn a_lean_run_of_a_plain_graph_fails_skips_retries_and_passes_outputs() {
        plain_graph_runs(&exec(2), RunOptions::default().timing(Timing::Off));
    }

    /// With events and timestamps (a direct run: the same compiled loop, each task between
    /// its events), a plain graph runs as above, and every task's events come in order.
    #[test]
    fn a_direct_run_of_a_plain_graph_publishes_each_task_s_events_in_order() {
        let bus = nerv::EventBus::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let _sub = bus.subscribe(nerv::EventFilter::all(), move |e: &nerv::Event| {
            if let Some(t) = e.source.task_id() {
                s.lock().unwrap().push((t.to_string(), e.kind()));
            }
        });
        let exec = Executor::builder().workers(2).events(bus.clone()).build();
        plain_graph_runs(&exec, RunOptions::default().timing(Timing::Tasks));
        use nerv::EventKind::*;
        let seen = seen.lock().unwrap();
        // The last run's (`nine` retried) events of three tasks, in order.
        let last = seen.len() - seen.iter().rev().position(|(t, _)| t == "one").unwrap() - 1;
        let first_of_last = seen[..=last]
            .iter()
            .rposition(|(t, k)| t == "one" && *k == TaskPending)
            .unwrap();
        let of = |task: &str| -> Vec<nerv::EventKind> {
            seen[first_of_last..]
                .iter()
                .filter(|(t, _)| t == task)
                .map(|&(_, k)| k)
                .collect()
        };
        assert_eq!(of("one"), [TaskPending, TaskStarted, TaskCompleted]);
        assert_eq!(
            of("nine"),
            [
                TaskPending,
                TaskStarted,
                TaskRetrying,
                TaskStarted,
                TaskCompleted
            ]
        );
        assert_eq!(of("after"), [TaskPending, TaskStarted, TaskCompleted]);
        // In the first run: a failure, a panic and the skips they cause.
        let first: Vec<_> = seen.iter().take_while(|(t, _)| t != "one").collect();
        let kinds = |task: &str| -> Vec<nerv::EventKind> {
            first
                .iter()
                .filter(|(t, _)| t == task)
                .map(|&&(_, k)| k)
                .collect()
        };
        assert_eq!(kinds("a"), [TaskPending, TaskStarted, TaskCompleted]);
        assert_eq!(kinds("e"), [TaskPending, TaskStarted, TaskFailed]);
        assert_eq!(kinds("p2"), [TaskPending, TaskStarted, TaskFailed]);
        assert_eq!(kinds("f"), [TaskPending, TaskSkipped]);
    }

    /// Runs plain graphs (one closure type, no task options) with `opts` (a run-wide retry
    /// policy is added for the last run) on `exec`, and checks their reports.
    fn plain_graph_runs(exec: &Executor, opts: RunOptions) {
        quiet_expected_panics();
        // Output: 1 + the sum of the inputs; 5 fails, 7 panics, 9 fails on its first attempt.
        fn link(g: &mut nerv::GraphBuilder, name: &str, ins: Vec<Handle<u64>>) -> Handle<u64> {
            g.task(name).run(ins, |cx, xs| {
                let v = 1 + xs.iter().sum::<u64>();
                match v {
                    5 => Err(TaskError::msg("five")),
                    7 => panic!("seven"),
                    9 if cx.attempt() == 1 => Err(TaskError::msg("nine, once")),
                    _ => Ok(v),
                }
            })
        }
        let mut g = Graph::builder();
        let a = link(&mut g, "a", vec![]);
        let b = link(&mut g, "b", vec![a]);
        let c = link(&mut g, "c", vec![b]);
        let d = link(&mut g, "d", vec![c]);
        let e = link(&mut g, "e", vec![d]); // 5: fails
        let f = link(&mut g, "f", vec![e]);
        let p1 = link(&mut g, "p1", vec![c, b]); // 6
        let p2 = link(&mut g, "p2", vec![p1]); // 7: panics
        let p3 = link(&mut g, "p3", vec![p2, a]);
        let q = link(&mut g, "q", vec![b, c]); // 6
        let r = link(&mut g, "r", vec![q, d]); // 11
        let n = link(&mut g, "n", vec![d, c]); // 8
        let graph = g.build().unwrap();
        let report = exec.run_with(&graph, opts.clone());
        assert_eq!(report.result(e).status, TaskStatus::Failed, "{report}");
        assert_eq!(error_message(&report, "e"), "five");
        let panicked = report.result(p2);
        assert_eq!(panicked.status, TaskStatus::Failed);
        assert!(panicked.error.unwrap().message().contains("seven"));
        for (h, cause) in [(f, "e"), (p3, "p2")] {
            let res = report.result(h);
            assert_eq!(res.status, TaskStatus::Skipped, "{}", res.id);
            assert_eq!(res.skipped_because.as_deref(), Some(cause));
        }
        for (h, v) in [
            (a, 1),
            (b, 2),
            (c, 3),
            (d, 4),
            (p1, 6),
            (q, 6),
            (r, 11),
            (n, 8),
        ] {
            assert_eq!(report.output(h), Some(&v), "{report}");
        }
        // 9 (a fan-in of eight 1s) fails on its first attempt: with a run-wide retry policy
        // it is retried after a back-off (the node is deferred, then queued again).
        let mut g = Graph::builder();
        let one = link(&mut g, "one", vec![]);
        let nine = link(&mut g, "nine", vec![one; 8]);
        let after = link(&mut g, "after", vec![nine]); // 10
        let graph = g.build().unwrap();
        let report = exec.run_with(&graph, opts.clone());
        assert_eq!(report.result(nine).status, TaskStatus::Failed, "{report}");
        assert_eq!(report.result(after).status, TaskStatus::Skipped);
        let report = exec.run_with(&graph, opts.retry(RetryPolicy::attempts(2).backoff(ms(1))));
        assert_eq!(report.result(nine).attempts, 2, "{report}");
        assert_eq!(report.output(after), Some(&10));
    }

    /// Cancelling a lean run of a plain graph (see above) stops the running task through its
    /// token and cancels the rest.
    #[test]
    fn a_lean_run_of_a_plain_graph_is_cancelled_like_any_other() {
        let started = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let mut prev: Option<Handle<u64>> = None;
        let mut ids = Vec::new();
        for i in 0..10 {
            let s = started.clone();
            let ins: Vec<Handle<u64>> = prev.into_iter().collect();
            let h = g.task(format!("t{i}")).run(ins, move |cx, xs| {
                let v = 1 + xs.iter().sum::<u64>();
                if v == 4 {
                    s.store(true, SeqCst);
                    wait_until_cancelled(cx, LIMIT)?;
                    return Err(TaskError::msg("interrupted"));
                }
                Ok(v)
            });
            ids.push(h);
            prev = Some(h);
        }
        let graph = g.build().unwrap();
        let run = exec(2).start_with(&graph, RunOptions::default().timing(Timing::Off));
        assert!(wait_for(LIMIT, || started.load(SeqCst)), "t3 never started");
        run.cancel();
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Cancelled, "{report}");
        for (i, h) in ids.iter().enumerate() {
            let want = if i < 3 {
                TaskStatus::Completed
            } else {
                TaskStatus::Cancelled
            };
            assert_eq!(report.result(*h).status, want, "t{i}: {report}");
        }
    }

    #[test]
    fn descendants_of_a_failure_are_skipped_naming_the_root_cause() {
        let mut g = Graph::builder();
        let src = g.task("src").run((), |_, ()| Ok(10));
        let bad = g.task("bad").run(src, |_, _| -> Result<i32, TaskError> {
            Err(TaskError::msg("disk full"))
        });
        let child = g.task("child").run(bad, |_, x| Ok(x + 1));
        let grandchild = g.task("grandchild").run(child, |_, x| Ok(x + 1));
        let ordering = g.task("ordering").after(grandchild).run((), |_, ()| Ok(0));
        // Depends on both a completed and a skipped task.
        let mixed = g
            .task("mixed")
            .run((src, grandchild), |_, (a, b)| Ok(a + b));
        let sibling = g.task("sibling").run(src, |_, x| Ok(x * 2));
        let independent = g.task("independent").run((), |_, ()| Ok("still here"));
        let after_sibling = g.task("after_sibling").run(sibling, |_, x| Ok(x + 1));
        let graph = g.build().unwrap();
        let report = exec(2).run(&graph);

        assert_eq!(report.status(), RunStatus::Failed, "{report}");
        let b = report.result(bad);
        assert_eq!(b.status, TaskStatus::Failed);
        assert_eq!(b.attempts, 1);
        assert_eq!(b.error.as_ref().map(|e| e.message()), Some("disk full"));
        assert_eq!(b.skipped_because, None);
        for h in [child.id(), grandchild.id(), ordering.id(), mixed.id()] {
            let r = report.result(h);
            assert_eq!(r.status, TaskStatus::Skipped, "{}", r.id);
            assert_eq!(r.skipped_because.as_deref(), Some("bad"), "{}", r.id);
            assert_eq!(r.attempts, 0, "{} never ran", r.id);
            assert!(r.error.is_none());
        }
        assert_eq!(report.output(child), None);
        assert_eq!(report.output(mixed), None);
        assert_eq!(report.output(sibling), Some(&20));
        assert_eq!(report.output(after_sibling), Some(&21));
        assert_eq!(report.output(independent), Some(&"still here"));
        assert_eq!(
            report.counts(),
            StatusCounts {
                completed: 4,
                failed: 1,
                skipped: 4,
                cancelled: 0,
                other: 0
            }
        );
        let failures: Vec<String> = report.failures().into_iter().map(|r| r.id).collect();
        assert_eq!(failures, ["bad"]);
        let text = report.to_string();
        assert!(
            text.contains("FAILED") && text.contains("disk full"),
            "{text}"
        );
        assert!(text.contains("grandchild SKIPPED"), "{text}");
    }

    #[test]
    fn skip_names_the_failed_task_not_an_intermediate_skip() {
        // Two failures; a task below both is skipped because of one of them (whichever reached
        // it first), never because of a skipped task.
        let mut g = Graph::builder();
        let f1 = g
            .task("f1")
            .run((), |_, ()| -> Result<u8, _> { Err(TaskError::msg("one")) });
        let f2 = g
            .task("f2")
            .run((), |_, ()| -> Result<u8, _> { Err(TaskError::msg("two")) });
        let s1 = g.task("s1").run(f1, |_, x| Ok(*x));
        let s2 = g.task("s2").run(s1, |_, x| Ok(*x));
        let both = g.task("both").run((s2, f2), |_, (a, b)| Ok(a + b));
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(task(&report, "s2").skipped_because.as_deref(), Some("f1"));
        let why = report.result(both).skipped_because.unwrap();
        assert!(why == "f1" || why == "f2", "skipped because of `{why}`");
        assert_eq!(report.counts().failed, 2);
        assert_eq!(report.counts().skipped, 3);
    }

    #[test]
    fn fail_fast_cancels_pending_tasks() {
        let gate_started = Arc::new(AtomicBool::new(false));
        let saw_cancel = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        // `gate` runs alongside `bad` (which starts only once `gate` runs) and returns once
        // it sees the run cancelled; its dependents are still pending then.
        let (started, saw) = (gate_started.clone(), saw_cancel.clone());
        let gate = g.task("gate").run((), move |cx, ()| {
            started.store(true, SeqCst);
            wait_until_cancelled(cx, LIMIT)?;
            saw.store(true, SeqCst);
            Ok(1)
        });
        let started = gate_started.clone();
        let wait_gate = g.task("wait_gate").run((), move |_, ()| {
            assert!(
                wait_for(LIMIT, || started.load(SeqCst)),
                "gate never started"
            );
            Ok(())
        });
        let bad = g
            .task("bad")
            .after(wait_gate)
            .run((), |_, ()| -> Result<(), _> { Err(TaskError::msg("boom")) });
        let below_bad = g.task("below_bad").after(bad).run((), |_, ()| Ok(()));
        // Async work in flight is dropped.
        let sleeper = g.task("sleeper").run_async((), |_, ()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let pending: Vec<Handle<i32>> = (0..20)
            .map(|i| g.task(format!("pending{i}")).run(gate, |_, x| Ok(*x)))
            .collect();
        let graph = g.build().unwrap();
        let report = exec(2).run_with(&graph, RunOptions::default().fail_fast());

        assert!(saw_cancel.load(SeqCst), "gate never saw the cancellation");
        assert_eq!(report.status(), RunStatus::Failed, "{report}");
        let b = report.result(bad);
        assert_eq!(b.status, TaskStatus::Failed);
        assert_eq!(b.error.unwrap().message(), "boom");
        let below = report.result(below_bad);
        assert_eq!(below.status, TaskStatus::Skipped);
        assert_eq!(below.skipped_because.as_deref(), Some("bad"));
        for p in &pending {
            let r = report.result(*p);
            assert_eq!(r.status, TaskStatus::Cancelled, "{}", r.id);
            assert_eq!(r.attempts, 0);
            assert_eq!(report.output(*p), None);
        }
        assert_eq!(report.result(sleeper).status, TaskStatus::Cancelled);
        assert_eq!(report.counts().cancelled, 21, "{report}");
        assert_eq!(report.counts().other, 0);
    }

    #[test]
    fn continue_policy_is_the_default() {
        assert_eq!(RunOptions::default().failure, FailurePolicy::Continue);
        assert_eq!(
            RunOptions::default().fail_fast().keep_going().failure,
            FailurePolicy::Continue
        );
        // Under Continue a failure cancels nothing: the independent tasks all run.
        let mut g = Graph::builder();
        g.task("bad")
            .run((), |_, ()| -> Result<(), _> { Err(TaskError::msg("boom")) });
        let gate = g.task("gate").run((), |_, ()| Ok(1));
        let deps: Vec<Handle<i32>> = (0..20)
            .map(|i| g.task(format!("dep{i}")).run(gate, |_, x| Ok(*x + 1)))
            .collect();
        let report = exec(2).run(&g.build().unwrap());
        for d in deps {
            assert_eq!(report.output(d), Some(&2));
        }
        assert_eq!(report.counts().completed, 21);
    }

    #[test]
    fn panic_is_the_tasks_failure_and_the_executor_keeps_working() {
        quiet_expected_panics();
        let exec = exec(2);
        let mut g = Graph::builder();
        let p = g
            .task("panicky")
            .run((), |_, ()| -> Result<u32, TaskError> {
                panic!("{PANIC_MARKER}: exploded with code {}", 42)
            });
        let below = g.task("below").run(p, |_, x| Ok(*x));
        let fine = g.task("fine").run((), |_, ()| Ok(7u32));
        let report = exec.run(&g.build().unwrap());
        let r = report.result(p);
        assert_eq!(r.status, TaskStatus::Failed);
        let err = r.error.expect("error");
        assert!(err.is_panic(), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert!(err.message().contains("exploded with code 42"), "{err}");
        assert_eq!(report.result(below).status, TaskStatus::Skipped);
        assert_eq!(
            report.result(below).skipped_because.as_deref(),
            Some("panicky")
        );
        assert_eq!(report.output(fine), Some(&7));

        // A &'static str payload, and a non-string payload.
        let mut g = Graph::builder();
        let s = g.task("str").run((), |_, ()| -> Result<(), TaskError> {
            panic!("nerv-test-panic static")
        });
        let any = g.task("any").run((), |_, ()| -> Result<(), TaskError> {
            std::panic::panic_any(17u8)
        });
        let report = exec.run(&g.build().unwrap());
        let e = report.result(s).error.unwrap();
        assert!(e.is_panic() && e.message().contains("nerv-test-panic static"));
        assert!(report.result(any).error.unwrap().is_panic());

        // The same executor runs the next graph normally, on every worker.
        let mut g = Graph::builder();
        let xs: Vec<Handle<u32>> = (0..100)
            .map(|i| g.task(format!("x{i}")).run((), move |_, ()| Ok(i)))
            .collect();
        let total = g.task("total").run(xs, |_, xs| Ok(xs.iter().sum::<u32>()));
        let report = exec.run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed);
        assert_eq!(report.output(total), Some(&4950));
    }

    #[test]
    fn async_panic_is_the_tasks_failure() {
        quiet_expected_panics();
        let mut g = Graph::builder();
        let p = g.task("apanic").run_async((), |_, ()| async {
            if std::hint::black_box(true) {
                panic!("{PANIC_MARKER}: async boom");
            }
            Ok(1)
        });
        let below = g.task("below").run(p, |_, x| Ok(*x));
        let report = exec(1).run(&g.build().unwrap());
        let err = report.result(p).error.expect("error");
        assert!(err.is_panic(), "{err:?}");
        assert!(err.message().contains("async boom"), "{err}");
        assert_eq!(report.result(below).status, TaskStatus::Skipped);
    }
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

mod timeouts {
    use super::*;

    #[test]
    fn sync_task_polling_cancellation_times_out() {
        let mut g = Graph::builder();
        let slow = g
            .task("slow")
            .timeout(ms(20))
            .run((), |cx, ()| wait_until_cancelled(cx, LIMIT));
        let after = g.task("after").after(slow).run((), |_, ()| Ok(()));
        let other = g.task("other").run((), |_, ()| Ok(3));
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(slow);
        assert_eq!(r.status, TaskStatus::Failed, "{report}");
        let err = r.error.expect("error");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert_eq!(report.output(slow), None);
        assert_eq!(report.result(after).status, TaskStatus::Skipped);
        assert_eq!(report.output(other), Some(&3));
        assert_eq!(report.status(), RunStatus::Failed);
    }

    #[test]
    fn sync_task_returning_an_error_after_its_deadline_is_a_timeout() {
        let mut g = Graph::builder();
        let t = g
            .task("t")
            .timeout(ms(10))
            .run((), |cx, ()| -> Result<(), _> {
                wait_until_cancelled(cx, LIMIT)?;
                Err(TaskError::msg("gave up"))
            });
        let report = exec(1).run(&g.build().unwrap());
        assert!(report.result(t).error.unwrap().is_timeout());
    }

    #[test]
    fn async_task_sleeping_forever_times_out_and_the_run_finishes() {
        let mut g = Graph::builder();
        let sleeper = g
            .task("sleeper")
            .timeout(ms(20))
            .run_async((), |_, ()| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(1)
            });
        let after = g.task("after").run(sleeper, |_, x| Ok(*x));
        let run = exec(2).start(&g.build().unwrap());
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        let report = run.wait();
        let r = report.result(sleeper);
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.unwrap().is_timeout());
        assert_eq!(report.result(after).status, TaskStatus::Skipped);
    }

    #[test]
    fn run_level_timeout_applies_to_tasks_without_their_own() {
        let mut g = Graph::builder();
        let forever = g.task("forever").run_async((), |_, ()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let own = g.task("own").timeout(LIMIT).run_async((), |_, ()| async {
            tokio::time::sleep(ms(30)).await;
            Ok(5)
        });
        let report = exec(1).run_with(&g.build().unwrap(), RunOptions::default().timeout(ms(10)));
        assert!(report.result(forever).error.unwrap().is_timeout());
        assert_eq!(report.output(own), Some(&5), "{report}");
    }

    /// A plain graph (one closure type, no task option) run without events, restore, timing
    /// or timeout takes a leaner copy of the task path: each of those still applies when set.
    #[test]
    fn a_plain_graph_keeps_the_runs_timeout_and_timing() {
        let mut g = Graph::builder();
        let ids: Vec<_> = (0..2)
            .map(|i| {
                g.task(format!("t{i}")).run((), |cx, ()| {
                    wait_until_cancelled(cx, Duration::from_secs(2))
                })
            })
            .collect();
        let graph = g.build().unwrap();
        let report = exec(2).run_with(&graph, RunOptions::default().timeout(ms(10)));
        for &id in &ids {
            let r = report.result(id);
            assert!(r.error.unwrap().is_timeout(), "{report}");
            assert!(r.started_at.is_some());
        }
        let report = exec(2).run_with(
            &graph,
            RunOptions::default().timeout(ms(10)).timing(Timing::Off),
        );
        for &id in &ids {
            let r = report.result(id);
            assert!(r.error.unwrap().is_timeout(), "{report}");
            assert_eq!(r.started_at, None);
        }
    }

    #[test]
    fn dynamic_task_times_out_while_its_subgraph_runs() {
        let mut g = Graph::builder();
        let d = g.task("dyn").timeout(ms(20)).run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let slow = sb.task("slow").run((), |cx, ()| {
                wait_until_cancelled(cx, Duration::from_secs(2))
            });
            Ok(Subgraph::new(sb, slow))
        });
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(d);
        assert_eq!(r.status, TaskStatus::Failed, "{report}");
        let err = r.error.unwrap();
        assert!(err.is_timeout(), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

mod cancellation {
    use super::*;

    #[test]
    fn cancel_from_another_thread_stops_the_run() {
        let started = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let s = started.clone();
        let long = g.task("long").run((), move |cx, ()| -> Result<u32, _> {
            s.store(true, SeqCst);
            wait_until_cancelled(cx, LIMIT)?;
            Err(TaskError::msg("interrupted"))
        });
        let deps: Vec<Handle<u32>> = (0..50)
            .map(|i| g.task(format!("dep{i}")).run(long, |_, x| Ok(*x)))
            .collect();
        let tail = g.task("tail").run(deps.clone(), |_, xs| Ok(xs.len()));
        let quick = g.task("quick").run((), |_, ()| Ok("done"));
        let graph = g.build().unwrap();
        let run = exec(2).start(&graph);
        assert!(
            wait_for(LIMIT, || started.load(SeqCst)),
            "long never started"
        );
        assert!(wait_for(LIMIT, || run.status(quick) == TaskStatus::Completed));
        assert_eq!(run.status(long), TaskStatus::Running);
        assert_eq!(run.status(deps[0]), TaskStatus::Pending);
        assert!(!run.is_finished());
        let canceller = std::thread::scope(|sc| sc.spawn(|| run.cancel()).join());
        assert!(canceller.is_ok());
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        assert!(run.is_finished());
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Cancelled, "{report}");
        let l = report.result(long);
        assert_eq!(l.status, TaskStatus::Cancelled);
        assert!(l.error.unwrap().is_cancelled());
        for d in deps.iter().map(|d| d.id()).chain([tail.id()]) {
            let r = report.result(d);
            assert_eq!(r.status, TaskStatus::Cancelled, "{}", r.id);
            assert_eq!(r.attempts, 0);
        }
        assert_eq!(report.output(tail), None);
        // `quick` finished before the cancellation.
        assert_eq!(report.output(quick), Some(&"done"));
        assert_eq!(report.counts().cancelled, 52);
        assert_eq!(report.counts().completed, 1);
    }

    #[test]
    fn cancel_drops_async_work_and_stops_retry_delays() {
        let mut g = Graph::builder();
        let sleeper = g.task("sleeper").run_async((), |_, ()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let failures = Arc::new(AtomicU32::new(0));
        let f = failures.clone();
        let retrier = g
            .task("retrier")
            .retry(RetryPolicy::attempts(5).backoff(Duration::from_secs(3600)))
            .run((), move |_, ()| -> Result<(), _> {
                f.fetch_add(1, SeqCst);
                Err(TaskError::msg("try later"))
            });
        let after = g
            .task("after")
            .after(sleeper)
            .after(retrier)
            .run((), |_, ()| Ok(()));
        let graph = g.build().unwrap();
        let run = exec(2).start(&graph);
        assert!(wait_for(LIMIT, || failures.load(SeqCst) == 1
            && run.status(sleeper) == TaskStatus::Running));
        run.cancel();
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Cancelled, "{report}");
        assert_eq!(report.result(sleeper).status, TaskStatus::Cancelled);
        let r = report.result(retrier);
        assert_eq!(r.status, TaskStatus::Cancelled);
        assert_eq!(
            failures.load(SeqCst),
            1,
            "no attempt after the cancellation"
        );
        assert_eq!(report.result(after).status, TaskStatus::Cancelled);
    }

    #[test]
    fn cancellation_token_is_cancelled_with_the_run() {
        let saw = Arc::new(AtomicBool::new(false));
        let entered = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let (s, e) = (saw.clone(), entered.clone());
        g.task("watcher").run((), move |cx, ()| {
            let token = cx.cancellation();
            e.store(true, SeqCst);
            s.store(wait_for(LIMIT, || token.is_cancelled()), SeqCst);
            Ok(())
        });
        let run = exec(1).start(&g.build().unwrap());
        // Its body runs (a task cancelled between its claim, when it shows RUNNING, and its
        // body is cancelled without running it: no token to see).
        assert!(wait_for(LIMIT, || entered.load(SeqCst)));
        run.cancel();
        assert!(run.wait_timeout(LIMIT));
        assert!(saw.load(SeqCst), "the token was not cancelled");
    }

    #[test]
    fn cancel_reaches_subgraph_tasks() {
        let started = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let s = started.clone();
        let d = g.task("dyn").run_dynamic((), move |_, ()| {
            let mut sb = Graph::builder();
            let s = s.clone();
            let slow = sb.task("slow").run((), move |cx, ()| {
                s.store(true, SeqCst);
                wait_until_cancelled(cx, LIMIT)?;
                Ok(1)
            });
            let after = sb.task("after").run(slow, |_, x| Ok(*x + 1));
            Ok(Subgraph::new(sb, after))
        });
        let below = g.task("below").run(d, |_, x| Ok(*x));
        let run = exec(2).start(&g.build().unwrap());
        assert!(wait_for(LIMIT, || started.load(SeqCst)));
        run.cancel();
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Cancelled, "{report}");
        assert_eq!(report.result(d).status, TaskStatus::Cancelled);
        assert_eq!(report.result(below).status, TaskStatus::Cancelled);
        assert_eq!(status(&report, "dyn/after"), TaskStatus::Cancelled);
    }
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

mod retries {
    use super::*;

    /// A task that fails its first `fails` attempts, counting calls in `calls`.
    fn flaky(
        calls: &Arc<AtomicU32>,
        fails: u32,
    ) -> impl Fn() -> Result<u32, TaskError> + Send + Sync + 'static {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, SeqCst) + 1;
            if n <= fails {
                Err(TaskError::msg(format!("failure #{n}")))
            } else {
                Ok(n)
            }
        }
    }

    #[test]
    fn task_failing_twice_completes_on_its_third_attempt() {
        let calls = Arc::new(AtomicU32::new(0));
        let attempts_seen = Log::new();
        let mut g = Graph::builder();
        let f = flaky(&calls, 2);
        let seen = attempts_seen.clone();
        let t = g
            .task("flaky")
            .retry(RetryPolicy::attempts(3).backoff(ms(1)))
            .run((), move |cx, ()| {
                seen.push(cx.attempt());
                f()
            });
        let below = g.task("below").run(t, |_, x| Ok(*x * 10));
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(t);
        assert_eq!(r.status, TaskStatus::Completed, "{report}");
        assert_eq!(r.attempts, 3);
        assert!(r.error.is_none());
        assert_eq!(report.output(t), Some(&3));
        assert_eq!(report.output(below), Some(&30));
        assert_eq!(attempts_seen.get(), [1, 2, 3]);
        assert_eq!(report.status(), RunStatus::Completed);
    }

    #[test]
    fn task_out_of_attempts_fails_with_the_last_error() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut g = Graph::builder();
        let f = flaky(&calls, 2);
        let t = g
            .task("flaky")
            .retry(RetryPolicy::attempts(2).backoff(ms(1)))
            .run((), move |_, ()| f());
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(t);
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.attempts, 2);
        assert_eq!(calls.load(SeqCst), 2);
        assert_eq!(r.error.unwrap().message(), "failure #2");
    }

    #[test]
    fn attempts_are_counted_on_every_way_a_task_runs() {
        // Sync, async, a subgraph, a task that waits for a resource first (its second run is
        // its first attempt), a retried one and a panicking one.
        let calls = Arc::new(AtomicU32::new(0));
        let mut g = Graph::builder();
        let sync = g.task("sync").run((), |_, ()| Ok(1u8));
        let asynk = g.task("async").run_async((), |_, ()| async { Ok(2u8) });
        let dynamic = g.task("dyn").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let one = sb.task("one").run((), |_, ()| Ok(3u8));
            Ok(Subgraph::new(sb, one))
        });
        let holders: Vec<TaskId> = (0..3)
            .map(|i| {
                g.task(format!("slot{i}"))
                    .uses("slot", 1)
                    .run((), |_, ()| {
                        std::thread::sleep(ms(5));
                        Ok(())
                    })
                    .id()
            })
            .collect();
        let f = flaky(&calls, 2);
        let retried = g
            .task("retried")
            .retry(RetryPolicy::retries(3).backoff(Duration::ZERO))
            .run((), move |_, ()| f());
        let panics = g
            .task("panics")
            .run((), |_, ()| -> Result<u8, TaskError> { panic!("boom") });
        let ex = Executor::builder().workers(2).resource("slot", 1).build();
        let report = ex.run(&g.build().unwrap());
        let attempts = |t: TaskId| report.result(t).attempts;
        assert_eq!(attempts(sync.id()), 1);
        assert_eq!(attempts(asynk.id()), 1);
        assert_eq!(attempts(dynamic.id()), 1);
        assert_eq!(report.task("dyn/one").unwrap().attempts, 1);
        for h in holders {
            assert_eq!(attempts(h), 1, "{}", report.result(h).id);
        }
        // Fails twice, then succeeds.
        assert_eq!(attempts(retried.id()), 3);
        assert_eq!(calls.load(SeqCst), 3);
        let p = report.result(panics.id());
        assert_eq!((p.status, p.attempts), (TaskStatus::Failed, 1));
    }

    #[test]
    fn a_live_report_counts_the_attempt_in_progress_and_none_while_waiting() {
        // `holder` runs, holding the one slot, until released; `waiter` becomes ready once
        // `holder` started (after `tick`) and waits for the slot.
        let (started, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut g = Graph::builder();
        let (s, r) = (started.clone(), release.clone());
        let holder = g.task("holder").uses("slot", 1).run((), move |_, ()| {
            s.store(true, SeqCst);
            assert!(wait_for(LIMIT, || r.load(SeqCst)), "not released");
            Ok(())
        });
        let s = started.clone();
        let tick = g.task("tick").run((), move |_, ()| {
            assert!(wait_for(LIMIT, || s.load(SeqCst)), "holder did not start");
            Ok(())
        });
        let waiter = g
            .task("waiter")
            .uses("slot", 1)
            .after(tick)
            .run((), |_, ()| Ok(()));
        let ex = Executor::builder().workers(2).resource("slot", 1).build();
        let run = ex.start(&g.build().unwrap());
        assert!(wait_for(LIMIT, || started.load(SeqCst)));
        let live = run.report().result(holder);
        assert_eq!((live.status, live.attempts), (TaskStatus::Running, 1));
        // Waiting for the slot: running, no attempt made.
        assert!(wait_for(LIMIT, || {
            let w = run.report().result(waiter);
            w.status == TaskStatus::Running && w.attempts == 0
        }));
        release.store(true, SeqCst);
        let report = run.wait();
        assert_eq!(report.result(holder).attempts, 1);
        assert_eq!(report.result(waiter).attempts, 1);
    }

    #[test]
    fn zero_backoff_retries_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut g = Graph::builder();
        let f = flaky(&calls, 4);
        let t = g
            .task("flaky")
            .retry(RetryPolicy::retries(4).backoff(Duration::ZERO))
            .run((), move |_, ()| f());
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.result(t).attempts, 5);
        assert_eq!(report.output(t), Some(&5));
    }

    #[test]
    fn retry_if_that_refuses_stops_after_one_attempt() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut g = Graph::builder();
        let f = flaky(&calls, 2);
        let t = g
            .task("picky")
            .retry(
                RetryPolicy::attempts(5)
                    .backoff(ms(1))
                    .retry_if(|e| e.message().contains("transient")),
            )
            .run((), move |_, ()| f());
        let report = exec(1).run(&g.build().unwrap());
        let r = report.result(t);
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.attempts, 1);
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[test]
    fn retry_if_that_accepts_retries() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut g = Graph::builder();
        let t = g
            .task("picky")
            .retry(
                RetryPolicy::attempts(5)
                    .backoff(ms(1))
                    .retry_if(|e| e.message().contains("transient")),
            )
            .run((), move |_, ()| match c.fetch_add(1, SeqCst) {
                0 => Err(TaskError::msg("transient glitch")),
                1 => Err(TaskError::msg("fatal")),
                _ => Ok(()),
            });
        let report = exec(1).run(&g.build().unwrap());
        let r = report.result(t);
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.attempts, 2);
        assert_eq!(r.error.unwrap().message(), "fatal");
    }

    #[test]
    fn async_task_is_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut g = Graph::builder();
        let src = g.task("src").run((), |_, ()| Ok(5u32));
        let t = g
            .task("async_flaky")
            .retry(RetryPolicy::attempts(3).backoff(ms(1)))
            .run_async(src, move |cx, x| {
                let x = *x;
                let attempt = cx.attempt();
                let c = c.clone();
                async move {
                    tokio::time::sleep(ms(1)).await;
                    let n = c.fetch_add(1, SeqCst) + 1;
                    assert_eq!(n, attempt);
                    if n < 3 {
                        Err(TaskError::msg("not yet"))
                    } else {
                        Ok(x * n)
                    }
                }
            });
        let below = g.task("below").run(t, |_, x| Ok(*x + 1));
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(t);
        assert_eq!(r.status, TaskStatus::Completed, "{report}");
        assert_eq!(r.attempts, 3);
        assert_eq!(report.output(t), Some(&15));
        assert_eq!(report.output(below), Some(&16));
    }

    #[test]
    fn timed_out_attempts_are_retried() {
        let mut g = Graph::builder();
        let t = g
            .task("slow_then_fast")
            .timeout(ms(50))
            .retry(RetryPolicy::attempts(3).backoff(ms(1)))
            .run((), |cx, ()| {
                if cx.attempt() < 3 {
                    wait_until_cancelled(cx, LIMIT)?;
                }
                Ok(cx.attempt())
            });
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.output(t), Some(&3), "{report}");
        assert_eq!(report.result(t).attempts, 3);
    }

    #[test]
    fn panicking_retry_predicate_after_an_async_failure_does_not_hang_the_run() {
        quiet_expected_panics();
        let mut g = Graph::builder();
        let t = g
            .task("a")
            .retry(RetryPolicy::attempts(3).retry_if(|_| panic!("{PANIC_MARKER}: predicate")))
            .run_async((), |_, ()| async { Err::<u8, _>(TaskError::msg("no")) });
        let run = exec(1).start(&g.build().unwrap());
        assert!(
            run.wait_timeout(Duration::from_secs(2)),
            "the run never finished"
        );
        let report = run.wait();
        assert_eq!(report.result(t).status, TaskStatus::Failed);
    }

    #[test]
    fn run_level_retry_applies_to_tasks_without_their_own() {
        let calls = Arc::new(AtomicU32::new(0));
        let own_calls = Arc::new(AtomicU32::new(0));
        let mut g = Graph::builder();
        let f = flaky(&calls, 2);
        let t = g.task("flaky").run((), move |_, ()| f());
        let f2 = flaky(&own_calls, 2);
        let own = g
            .task("own")
            .retry(RetryPolicy::attempts(1))
            .run((), move |_, ()| f2());
        let opts = RunOptions::default().retry(RetryPolicy::attempts(3).backoff(ms(1)));
        let report = exec(1).run_with(&g.build().unwrap(), opts);
        assert_eq!(report.result(t).attempts, 3);
        assert_eq!(report.result(t).status, TaskStatus::Completed);
        assert_eq!(report.result(own).attempts, 1);
        assert_eq!(report.result(own).status, TaskStatus::Failed);
    }
}

// ---------------------------------------------------------------------------------------------
// Async work
// ---------------------------------------------------------------------------------------------

mod asynchronous {
    use super::*;

    #[test]
    fn two_thousand_sleeping_async_tasks_complete_on_nervs_runtime() {
        let mut g = Graph::builder();
        let base = g.task("base").run((), |_, ()| Ok(1u64));
        let sleepers: Vec<Handle<u64>> = (0..2000u64)
            .map(|i| {
                g.task(format!("sleep{i}")).run_async(base, move |_, b| {
                    let b = *b;
                    async move {
                        tokio::time::sleep(ms(10)).await;
                        Ok(b + i)
                    }
                })
            })
            .collect();
        let sum = g
            .task("sum")
            .run(sleepers, |_, xs| Ok(xs.iter().sum::<u64>()));
        let run = exec(2).start(&g.build().unwrap());
        assert!(run.wait_timeout(LIMIT), "the run did not finish");
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.counts().completed, 2002);
        assert_eq!(report.output(sum), Some(&(2000 + 1999 * 2000 / 2)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_the_callers_tokio_runtime_and_can_be_awaited() {
        let exec = Executor::builder().workers(2).current_tokio().build();
        let threads = Log::new();
        let mut g = Graph::builder();
        let src = g.task("src").run((), |_, ()| Ok(vec![1u64, 2, 3]));
        let hs: Vec<Handle<u64>> = (0..50u64)
            .map(|i| {
                let threads = threads.clone();
                g.task(format!("a{i}")).run_async(src, move |_, v| {
                    let s: u64 = v.iter().sum();
                    let threads = threads.clone();
                    async move {
                        tokio::time::sleep(ms(2)).await;
                        threads.push(std::thread::current().name().map(str::to_string));
                        Ok(s * i)
                    }
                })
            })
            .collect();
        let total = g.task("total").run(hs, |_, xs| Ok(xs.iter().sum::<u64>()));
        let graph = g.build().unwrap();
        let report = exec.start(&graph).await;
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(total), Some(&(6 * 49 * 50 / 2)));
        // The async work ran on this test's runtime, not on a runtime of nerv's own.
        let names = threads.get();
        assert_eq!(names.len(), 50);
        for n in names {
            assert_ne!(
                n.as_deref(),
                Some("nerv-io"),
                "async work on nerv's runtime"
            );
        }
        // Awaiting again (a second run of the same graph) works too.
        let again = exec.start(&graph).await;
        assert_eq!(again.output(total), Some(&(6 * 49 * 50 / 2)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_run_can_be_awaited_on_a_current_thread_runtime() {
        let exec = Executor::builder().workers(1).current_tokio().build();
        let mut g = Graph::builder();
        let a = g.task("a").run_async((), |_, ()| async {
            tokio::time::sleep(ms(1)).await;
            Ok(20)
        });
        let b = g.task("b").run(a, |_, x| Ok(*x + 1));
        let report = exec.start(&g.build().unwrap()).await;
        assert_eq!(report.output(b), Some(&21), "{report}");
    }

    #[test]
    fn current_tokio_outside_a_runtime_falls_back_to_nervs_own() {
        let exec = Executor::builder().workers(1).current_tokio().build();
        let mut g = Graph::builder();
        let a = g.task("a").run_async((), |_, ()| async {
            tokio::time::sleep(ms(1)).await;
            Ok("slept")
        });
        let report = exec.run(&g.build().unwrap());
        assert_eq!(report.output(a), Some(&"slept"), "{report}");
    }

    #[test]
    fn async_error_is_the_tasks_failure() {
        let mut g = Graph::builder();
        let t = g.task("a").run_async((), |_, ()| async {
            tokio::task::yield_now().await;
            Err::<u8, _>(TaskError::msg("remote said no"))
        });
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.result(t).status, TaskStatus::Failed);
        assert_eq!(report.result(t).error.unwrap().message(), "remote said no");
    }
}

// ---------------------------------------------------------------------------------------------
// Dynamic graphs
// ---------------------------------------------------------------------------------------------

mod dynamic {
    use super::*;

    #[test]
    fn fan_out_over_a_list_known_only_at_run_time() {
        let mut g = Graph::builder();
        // The list's length is computed by an upstream task.
        let n = g.task("count").run((), |_, ()| Ok(7usize));
        let list = g
            .task("list")
            .run(n, |_, n| Ok((1..=*n as u64).collect::<Vec<_>>()));
        let squares = g.task("squares").run_dynamic(list, |_, items| {
            let mut sb = Graph::builder();
            let parts: Vec<Handle<u64>> = items
                .iter()
                .enumerate()
                .map(|(i, &x)| sb.task(format!("item{i}")).run((), move |_, ()| Ok(x * x)))
                .collect();
            let sum = sb
                .task("sum")
                .run(parts, |_, xs| Ok(xs.iter().sum::<u64>()));
            Ok(Subgraph::new(sb, sum))
        });
        let plus_one = g.task("plus_one").run(squares, |_, s| Ok(*s + 1));
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        let expected: u64 = (1..=7u64).map(|x| x * x).sum();
        assert_eq!(report.output(squares), Some(&expected));
        assert_eq!(report.output(plus_one), Some(&(expected + 1)));
        for i in 0..7 {
            let r = task(&report, &format!("squares/item{i}"));
            assert_eq!(r.status, TaskStatus::Completed);
        }
        assert_eq!(status(&report, "squares/sum"), TaskStatus::Completed);
        assert!(report.task("squares/item7").is_none());
        assert!(report.task("item0").is_none());
        // The report lists the graph's own tasks first, then the subgraph's.
        let ids: Vec<String> = report.results().into_iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 4 + 8);
        assert_eq!(ids[..4], ["count", "list", "squares", "plus_one"]);
        // Counts are over the graph's own tasks.
        assert_eq!(report.counts().completed, 4);
    }

    #[test]
    fn subgraph_tasks_see_their_full_ids() {
        let mut g = Graph::builder();
        let d = g.task("outer").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let inner = sb.task("inner").run_dynamic((), |_, ()| {
                let mut sb2 = Graph::builder();
                let leaf = sb2.task("leaf").run((), |cx, ()| Ok(cx.task_id()));
                Ok(Subgraph::new(sb2, leaf))
            });
            Ok(Subgraph::new(sb, inner))
        });
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(
            report.output(d).map(String::as_str),
            Some("outer/inner/leaf")
        );
        assert_eq!(status(&report, "outer/inner"), TaskStatus::Completed);
        assert_eq!(status(&report, "outer/inner/leaf"), TaskStatus::Completed);
    }

    #[test]
    fn invalid_subgraph_fails_the_dynamic_task() {
        let mut g = Graph::builder();
        let src = g.task("src").run((), |_, ()| Ok(3));
        let d = g.task("dyn").run_dynamic(src, |_, _| {
            let mut sb = Graph::builder();
            sb.task("x").depends_on("z").run((), |_, ()| Ok(1));
            sb.task("y").depends_on("x").run((), |_, ()| Ok(2));
            let z = sb.task("z").depends_on("y").run((), |_, ()| Ok(3));
            Ok(Subgraph::new(sb, z))
        });
        let below = g.task("below").run(d, |_, x| Ok(*x));
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(d);
        assert_eq!(r.status, TaskStatus::Failed, "{report}");
        let err = r.error.unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidGraph);
        let msg = err.message();
        assert!(msg.contains("cycle"), "{msg}");
        assert!(msg.contains("x → y → z → x"), "{msg}");
        assert_eq!(report.result(below).status, TaskStatus::Skipped);
        assert_eq!(report.result(below).skipped_because.as_deref(), Some("dyn"));
        assert_eq!(report.output(src), Some(&3));
    }

    #[test]
    fn subgraph_output_from_another_builder_fails_the_dynamic_task() {
        let mut g = Graph::builder();
        let d = g.task("dyn").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            sb.task("x").run((), |_, ()| Ok(1));
            let mut other = Graph::builder();
            let stranger = other.task("x").run((), |_, ()| Ok(2));
            Ok(Subgraph::new(sb, stranger))
        });
        let report = exec(1).run(&g.build().unwrap());
        let err = report.result(d).error.expect("error");
        assert_eq!(err.kind(), ErrorKind::InvalidGraph, "{err:?}");
    }

    #[test]
    fn failing_subgraph_task_fails_the_dynamic_task_and_skips_its_dependents() {
        let mut g = Graph::builder();
        let d = g.task("dyn").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let ok = sb.task("ok").run((), |_, ()| Ok(1));
            let bad = sb.task("bad").run((), |_, ()| -> Result<i32, _> {
                Err(TaskError::msg("no luck"))
            });
            let sum = sb
                .task("sum")
                .run(vec![ok, bad], |_, xs| Ok(xs.iter().sum::<i32>()));
            Ok(Subgraph::new(sb, sum))
        });
        let below = g.task("below").run(d, |_, x| Ok(*x));
        let below2 = g.task("below2").after(below).run((), |_, ()| Ok(()));
        let unrelated = g.task("unrelated").run((), |_, ()| Ok(9));
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(d);
        assert_eq!(r.status, TaskStatus::Failed, "{report}");
        let msg = r.error.unwrap().message().to_string();
        assert!(msg.contains("dyn/bad"), "{msg}");
        assert!(msg.contains("no luck"), "{msg}");
        assert_eq!(status(&report, "dyn/ok"), TaskStatus::Completed);
        assert_eq!(status(&report, "dyn/bad"), TaskStatus::Failed);
        let sum = task(&report, "dyn/sum");
        assert_eq!(sum.status, TaskStatus::Skipped);
        assert_eq!(sum.skipped_because.as_deref(), Some("dyn/bad"));
        for h in [below.id(), below2.id()] {
            let r = report.result(h);
            assert_eq!(r.status, TaskStatus::Skipped);
            assert_eq!(r.skipped_because.as_deref(), Some("dyn"));
        }
        assert_eq!(report.output(unrelated), Some(&9));
        assert_eq!(report.status(), RunStatus::Failed);
    }

    #[test]
    fn dynamic_task_with_a_failing_subgraph_is_retried() {
        let builds = Arc::new(AtomicU32::new(0));
        let b = builds.clone();
        let mut g = Graph::builder();
        let d = g
            .task("dyn")
            .retry(RetryPolicy::attempts(3).backoff(ms(1)))
            .run_dynamic((), move |cx, ()| {
                b.fetch_add(1, SeqCst);
                let attempt = cx.attempt();
                let mut sb = Graph::builder();
                let t = sb.task("try").run((), move |_, ()| {
                    if attempt < 3 {
                        Err(TaskError::msg(format!("attempt {attempt} failed")))
                    } else {
                        Ok(attempt)
                    }
                });
                Ok(Subgraph::new(sb, t))
            });
        let report = exec(2).run(&g.build().unwrap());
        let r = report.result(d);
        assert_eq!(r.status, TaskStatus::Completed, "{report}");
        assert_eq!(r.attempts, 3);
        assert_eq!(builds.load(SeqCst), 3);
        assert_eq!(report.output(d), Some(&3));
    }

    #[test]
    fn panic_in_the_builder_function_fails_the_dynamic_task() {
        quiet_expected_panics();
        let mut g = Graph::builder();
        let d = g
            .task("dyn")
            .run_dynamic((), |_, ()| -> Result<Subgraph<u8>, TaskError> {
                panic!("{PANIC_MARKER}: cannot build")
            });
        let report = exec(1).run(&g.build().unwrap());
        let err = report.result(d).error.expect("error");
        assert!(
            err.is_panic() && err.message().contains("cannot build"),
            "{err:?}"
        );
    }

    #[test]
    fn fail_fast_inside_a_subgraph_fails_the_dynamic_task_and_the_run() {
        let mut g = Graph::builder();
        let d = g.task("dyn").run_dynamic((), |_, ()| {
            let mut sb = Graph::builder();
            let bad = sb.task("bad").run((), |_, ()| -> Result<u32, _> {
                Err(TaskError::msg("sub failure"))
            });
            let after = sb.task("after").run(bad, |_, x| Ok(*x));
            Ok(Subgraph::new(sb, after))
        });
        let below = g.task("below").run(d, |_, x| Ok(*x));
        let report = exec(2).run_with(&g.build().unwrap(), RunOptions::default().fail_fast());
        assert_eq!(report.status(), RunStatus::Failed, "{report}");
        let r = report.result(d);
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.unwrap().message().contains("sub failure"));
        assert_eq!(status(&report, "dyn/bad"), TaskStatus::Failed);
        let b = report.result(below).status;
        assert!(
            b == TaskStatus::Skipped || b == TaskStatus::Cancelled,
            "{b}"
        );
    }

    #[test]
    fn error_from_the_builder_function_fails_the_dynamic_task() {
        let mut g = Graph::builder();
        let d = g
            .task("dyn")
            .run_dynamic((), |_, ()| -> Result<Subgraph<u8>, _> {
                Err(TaskError::msg("cannot plan"))
            });
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.result(d).error.unwrap().message(), "cannot plan");
    }
}

// ---------------------------------------------------------------------------------------------
// Priorities
// ---------------------------------------------------------------------------------------------

mod priorities {
    use super::*;

    /// A root of priority `root_priority` releases `n` successors of mixed priorities (as
    /// many of each); on one worker they must run highest priority first.
    fn check_release_order(n: usize, root_priority: Priority) {
        let order: Log<Priority> = Log::new();
        let mut g = Graph::builder();
        let root = g
            .task("root")
            .priority(root_priority)
            .run((), |_, ()| Ok(()));
        for i in 0..n {
            // Low, Critical, High, Medium, Low, ...: a mixed insertion order.
            let p = Priority::ALL[(i * 3) % 4];
            let o = order.clone();
            g.task(format!("t{i}"))
                .priority(p)
                .after(root)
                .run((), move |_, ()| {
                    o.push(p);
                    Ok(())
                });
        }
        let graph = g.build().unwrap();
        let exec = exec(1);
        for _ in 0..3 {
            order.clear();
            let report = exec.run(&graph);
            assert_eq!(report.status(), RunStatus::Completed);
            let got = order.get();
            assert_eq!(got.len(), n);
            let mut sorted = got.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            assert!(got == sorted, "not in priority order: {got:?}");
            assert_eq!(got[0], Priority::Critical);
            assert_eq!(got[n - 1], Priority::Low);
        }
    }

    #[test]
    fn a_pending_tasks_priority_changes_while_the_run_goes_on() {
        let order: Log<String> = Log::new();
        let gate = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let gt = gate.clone();
        let root = g.task("root").run((), move |_, ()| {
            while !gt.load(SeqCst) {
                std::thread::sleep(ms(1));
            }
            Ok(())
        });
        let mut ids = Vec::new();
        for i in 0..6 {
            let o = order.clone();
            let id = g
                .task(format!("t{i}"))
                .priority(Priority::Low)
                .after(root)
                .run((), move |_, ()| {
                    o.push(format!("t{i}"));
                    Ok(())
                });
            ids.push(id);
        }
        let run = exec(1).start(&g.build().unwrap());
        // t4 is pending (its dependency still runs): raise it above the others.
        run.set_priority(ids[4], Priority::Critical);
        gate.store(true, SeqCst);
        let report = run.wait();
        assert_eq!(report.status(), RunStatus::Completed);
        assert_eq!(order.get()[0], "t4", "{:?}", order.get());
    }

    #[test]
    fn ready_successors_run_in_priority_order_on_one_worker() {
        check_release_order(40, Priority::Medium);
    }

    #[test]
    fn priority_order_holds_across_release_batches() {
        // More successors than the engine releases at once.
        check_release_order(600, Priority::Medium);
        check_release_order(600, Priority::Low);
    }

    #[test]
    fn priority_order_holds_across_release_batches_of_a_high_priority_root() {
        check_release_order(600, Priority::High);
    }

    #[test]
    fn priority_order_holds_across_release_batches_of_a_critical_root() {
        check_release_order(600, Priority::Critical);
    }

    #[test]
    fn critical_subgraph_tasks_run_before_queued_medium_tasks() {
        // root → dyn (Critical) and m0..m4 (Medium). `dyn` adds four Critical tasks; on one
        // worker, once they are ready they should run before the Medium tasks still queued.
        let order: Log<String> = Log::new();
        let mut g = Graph::builder();
        let root = g.task("root").run((), |_, ()| Ok(()));
        let o = order.clone();
        g.task("dyn")
            .priority(Priority::Critical)
            .after(root)
            .run_dynamic((), move |_, ()| {
                let mut sb = Graph::builder();
                let cs: Vec<Handle<()>> = (0..4)
                    .map(|i| {
                        let o = o.clone();
                        sb.task(format!("c{i}")).priority(Priority::Critical).run(
                            (),
                            move |_, ()| {
                                o.push("critical".to_string());
                                Ok(())
                            },
                        )
                    })
                    .collect();
                let out = sb
                    .task("out")
                    .priority(Priority::Critical)
                    .run(cs, |_, _| Ok(()));
                Ok(Subgraph::new(sb, out))
            });
        for i in 0..5 {
            let o = order.clone();
            g.task(format!("m{i}")).after(root).run((), move |_, ()| {
                o.push("medium".to_string());
                Ok(())
            });
        }
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed);
        let got = order.get();
        let mut want = vec!["critical"; 4];
        want.extend(["medium"; 5]);
        assert_eq!(got, want, "priority inversion");
    }

    #[test]
    fn critical_tasks_of_a_uniform_graph_run_before_medium_tasks_of_another_run() {
        let exec = exec(1);
        let order: Log<&'static str> = Log::new();
        // Occupy the only worker while both other runs are queued.
        let (started, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut g = Graph::builder();
        let (s, r) = (started.clone(), release.clone());
        g.task("blocker").run((), move |_, ()| {
            s.store(true, SeqCst);
            assert!(wait_for(LIMIT, || r.load(SeqCst)));
            Ok(())
        });
        let blocker = exec.start(&g.build().unwrap());
        assert!(wait_for(LIMIT, || started.load(SeqCst)));
        // A graph of critical tasks only.
        let mut g = Graph::builder();
        let o = order.clone();
        g.task("crit")
            .priority(Priority::Critical)
            .run((), move |_, ()| {
                o.push("critical");
                Ok(())
            });
        let critical = exec.start(&g.build().unwrap());
        // A graph of mixed priorities.
        let mut g = Graph::builder();
        for (id, p, name) in [
            ("med", Priority::Medium, "medium"),
            ("low", Priority::Low, "low"),
        ] {
            let o = order.clone();
            g.task(id).priority(p).run((), move |_, ()| {
                o.push(name);
                Ok(())
            });
        }
        let mixed = exec.start(&g.build().unwrap());
        release.store(true, SeqCst);
        for run in [blocker, critical, mixed] {
            assert_eq!(run.wait().status(), RunStatus::Completed);
        }
        assert_eq!(
            order.get(),
            ["critical", "medium", "low"],
            "priority inversion"
        );
    }

    #[test]
    fn among_equal_priorities_the_longer_remaining_path_runs_first() {
        // root → short (leaf), long (→ l1 → l2), mid (→ m1); all medium. The estimates make
        // the remaining critical paths long > mid > short.
        let order: Log<&'static str> = Log::new();
        let mut g = Graph::builder();
        let root = g.task("root").run((), |_, ()| Ok(()));
        let add = |g: &mut nerv::GraphBuilder, id: &'static str, after: nerv::TaskId| {
            let o = order.clone();
            g.task(id)
                .estimate(ms(10))
                .after(after)
                .run((), move |_, ()| {
                    o.push(id);
                    Ok(())
                })
                .id()
        };
        add(&mut g, "short", root.id());
        let long = add(&mut g, "long", root.id());
        let mid = add(&mut g, "mid", root.id());
        let l1 = add(&mut g, "l1", long);
        add(&mut g, "l2", l1);
        add(&mut g, "m1", mid);
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 7);
        let firsts: Vec<&str> = order
            .get()
            .into_iter()
            .filter(|id| ["short", "long", "mid"].contains(id))
            .collect();
        assert_eq!(firsts, ["long", "mid", "short"]);
    }

    #[test]
    fn order_keys_replace_the_critical_path_order() {
        // The graph of the test above, with order keys that reverse its ready order; `l1` and
        // `l2` have none (0: last among ready tasks), priorities still come first.
        let order: Log<&'static str> = Log::new();
        let mut g = Graph::builder();
        let root = g.task("root").order_key(9).run((), |_, ()| Ok(()));
        let add = |g: &mut nerv::GraphBuilder,
                   id: &'static str,
                   after: nerv::TaskId,
                   key: Option<u64>,
                   priority: Priority| {
            let o = order.clone();
            let mut b = g.task(id).estimate(ms(10)).after(after).priority(priority);
            if let Some(k) = key {
                b = b.order_key(k);
            }
            b.run((), move |_, ()| {
                o.push(id);
                Ok(())
            })
            .id()
        };
        add(&mut g, "short", root.id(), Some(3), Priority::Medium);
        let long = add(&mut g, "long", root.id(), Some(1), Priority::Medium);
        let mid = add(&mut g, "mid", root.id(), Some(2), Priority::Medium);
        let l1 = add(&mut g, "l1", long, None, Priority::Medium);
        add(&mut g, "l2", l1, None, Priority::Medium);
        add(&mut g, "m1", mid, Some(5), Priority::Medium);
        add(&mut g, "urgent", root.id(), Some(0), Priority::High);
        let graph = g.build().unwrap();
        assert_eq!(
            graph.task(graph.find("short").unwrap()).order_key(),
            Some(3)
        );
        assert_eq!(graph.task(graph.find("l1").unwrap()).order_key(), None);
        let report = exec(1).run(&graph);
        assert_eq!(report.counts().completed, 8);
        assert_eq!(
            order.get(),
            ["urgent", "short", "mid", "m1", "long", "l1", "l2"]
        );
    }

    #[test]
    fn a_low_priority_successor_does_not_overtake_ready_high_priority_tasks() {
        // root → {crit (Critical), high0..high4 (High)}; crit → low (Low, its only
        // dependency). When `crit` finishes, `low` becomes ready while the `high` tasks are
        // still waiting: among ready tasks, higher priority runs first.
        let order: Log<String> = Log::new();
        let mut g = Graph::builder();
        let root = g.task("root").run((), |_, ()| Ok(()));
        let o = order.clone();
        let crit = g
            .task("crit")
            .priority(Priority::Critical)
            .after(root)
            .run((), move |_, ()| {
                o.push("crit".to_string());
                Ok(())
            });
        for i in 0..5 {
            let o = order.clone();
            g.task(format!("high{i}"))
                .priority(Priority::High)
                .after(root)
                .run((), move |_, ()| {
                    o.push("high".to_string());
                    Ok(())
                });
        }
        let o = order.clone();
        g.task("low")
            .priority(Priority::Low)
            .after(crit)
            .run((), move |_, ()| {
                o.push("low".to_string());
                Ok(())
            });
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 8);
        let got = order.get();
        assert_eq!(
            got,
            ["crit", "high", "high", "high", "high", "high", "low"],
            "priority inversion"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Repeated and concurrent runs
// ---------------------------------------------------------------------------------------------

mod runs {
    use super::*;

    #[test]
    fn a_graph_can_be_run_several_times_with_independent_outputs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut g = Graph::builder();
        let id = g.task("run_id").run((), |cx, ()| Ok(cx.run_id()));
        let call = g
            .task("call")
            .run((), move |_, ()| Ok(c.fetch_add(1, SeqCst)));
        let fixed = g.task("fixed").run((), |_, ()| Ok(vec![1, 2, 3]));
        let derived = g
            .task("derived")
            .run((id, fixed), |_, (id, v)| Ok(*id + v.len() as u64));
        let graph = g.build().unwrap();
        let exec = exec(2);
        let reports: Vec<_> = (0..3).map(|_| exec.run(&graph)).collect();
        // Every report keeps its own outputs, also after later runs.
        let mut ids: Vec<u64> = reports.iter().map(|r| *r.output(id).unwrap()).collect();
        for (r, &rid) in reports.iter().zip(&ids) {
            assert_eq!(r.status(), RunStatus::Completed);
            assert_eq!(r.run_id(), rid);
            assert_eq!(r.output(fixed), Some(&vec![1, 2, 3]));
            assert_eq!(r.output(derived), Some(&(rid + 3)));
        }
        let mut calls_seen: Vec<usize> = reports.iter().map(|r| *r.output(call).unwrap()).collect();
        calls_seen.sort_unstable();
        assert_eq!(calls_seen, [0, 1, 2]);
        ids.dedup();
        assert_eq!(ids.len(), 3, "run ids are distinct");
        // A failing run does not affect the next one.
        let flag = Arc::new(AtomicBool::new(true));
        let f = flag.clone();
        let mut g = Graph::builder();
        let t = g.task("t").run((), move |_, ()| {
            if f.load(SeqCst) {
                Err(TaskError::msg("first time"))
            } else {
                Ok(1)
            }
        });
        let below = g.task("below").run(t, |_, x| Ok(*x + 1));
        let graph = g.build().unwrap();
        let first = exec.run(&graph);
        flag.store(false, SeqCst);
        let second = exec.run(&graph);
        assert_eq!(first.status(), RunStatus::Failed);
        assert_eq!(first.output(below), None);
        assert_eq!(second.status(), RunStatus::Completed);
        assert_eq!(second.output(below), Some(&2));
        assert_eq!(first.result(below).status, TaskStatus::Skipped);
    }

    #[test]
    fn twenty_runs_at_once_on_one_executor() {
        let exec = exec(2);
        let mut graphs = Vec::new();
        for k in 0..20u64 {
            let mut g = Graph::builder();
            let mut prev = g.task("c0").run((), move |_, ()| Ok(k));
            for i in 1..10 {
                prev = g.task(format!("c{i}")).run(prev, |_, x| Ok(x + 1));
            }
            let wide: Vec<Handle<u64>> = (0..10)
                .map(|i| g.task(format!("w{i}")).run(prev, move |_, x| Ok(x * i)))
                .collect();
            let last = g.task("last").run(wide, |_, xs| Ok(xs.iter().sum::<u64>()));
            graphs.push((g.build().unwrap(), last, k));
        }
        let runs: Vec<_> = graphs.iter().map(|(g, _, _)| exec.start(g)).collect();
        // And the same graph many times at once.
        let shared = &graphs[3].0;
        let shared_runs: Vec<_> = (0..20).map(|_| exec.start(shared)).collect();
        for (run, (_, last, k)) in runs.into_iter().zip(&graphs) {
            assert!(run.wait_timeout(LIMIT));
            let report = run.wait();
            assert_eq!(report.status(), RunStatus::Completed);
            assert_eq!(report.output(*last), Some(&((k + 9) * 45)));
        }
        for run in shared_runs {
            let report = run.wait();
            assert_eq!(report.output(graphs[3].1), Some(&(12 * 45)));
        }
    }

    #[test]
    fn timestamps_follow_dependencies_and_timing_can_be_off() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(1));
        let b = g.task("b").run(a, |_, x| Ok(*x + 1));
        let graph = g.build().unwrap();
        let exec = exec(1);
        let report = exec.run(&graph);
        let (ra, rb) = (report.result(a), report.result(b));
        let (sa, ca) = (ra.started_at.unwrap(), ra.completed_at.unwrap());
        let (sb, cb) = (rb.started_at.unwrap(), rb.completed_at.unwrap());
        assert!(sa <= ca && ca <= sb && sb <= cb);
        assert_eq!(rb.scheduled_at, Some(ca));
        assert!(report.started_at() <= sa && cb <= report.completed_at());
        assert_eq!(ra.attempts, 1);
        assert_eq!(ra.name, "a");

        let report = exec.run_with(&graph, RunOptions::default().timing(Timing::Off));
        assert_eq!(report.output(b), Some(&2));
        let rb = report.result(b);
        assert_eq!(rb.started_at, None);
        assert_eq!(rb.scheduled_at, None);
        assert_eq!(rb.attempts, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Planner
// ---------------------------------------------------------------------------------------------

mod planner {
    use super::*;

    fn diamond(b_priority: Priority) -> Graph {
        let mut g = Graph::builder();
        let a = g.task("a").estimate(ms(10)).run((), |_, ()| Ok(()));
        let b = g
            .task("b")
            .estimate(ms(30))
            .priority(b_priority)
            .after(a)
            .run((), |_, ()| Ok(()));
        let c = g
            .task("c")
            .estimate(ms(50))
            .after(a)
            .run((), |_, ()| Ok(()));
        g.task("d")
            .estimate(ms(5))
            .after(b)
            .after(c)
            .run((), |_, ()| Ok(()));
        g.task("e").estimate(ms(1)).after(a).run((), |_, ()| Ok(()));
        g.build().unwrap()
    }

    #[test]
    fn levels_critical_path_and_lower_bound_from_estimates() {
        let plan = diamond(Priority::Medium).plan();
        // Within a level: longest remaining critical path first (c: 55, b: 35, e: 1).
        assert_eq!(
            plan.levels(),
            vec![vec!["a"], vec!["c", "b", "e"], vec!["d"]]
        );
        assert_eq!(plan.critical_path(), ["a", "c", "d"]);
        assert!(plan.is_timed());
        assert_eq!(plan.critical_path_length(), ms(65));
        assert_eq!(plan.total_work(), ms(96));
        assert_eq!(plan.lower_bound(1), ms(96));
        assert_eq!(plan.lower_bound(2), ms(65));
        assert_eq!(plan.lower_bound(64), ms(65));
        assert_eq!(plan.max_parallelism(), 3);
        let text = plan.to_string();
        for id in ["a", "b", "c", "d", "e"] {
            assert!(text.contains(id), "{text}");
        }
        assert!(text.contains("a → c → d"), "{text}");
    }

    #[test]
    fn priority_comes_first_within_a_level() {
        let plan = diamond(Priority::High).plan();
        assert_eq!(plan.levels()[1], ["b", "c", "e"]);
        assert!(plan.to_string().contains("b [high]"), "{plan}");
        // The critical path does not depend on priorities.
        assert_eq!(plan.critical_path(), ["a", "c", "d"]);
    }

    #[test]
    fn without_estimates_every_task_counts_one() {
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok(()));
        let b = g.task("b").after(a).run((), |_, ()| Ok(()));
        g.task("c").after(b).run((), |_, ()| Ok(()));
        g.task("x").run((), |_, ()| Ok(()));
        let plan = g.build().unwrap().plan();
        assert!(!plan.is_timed());
        assert_eq!(plan.critical_path(), ["a", "b", "c"]);
        assert_eq!(plan.critical_path_length(), Duration::from_nanos(3));
        assert_eq!(plan.total_work(), Duration::from_nanos(4));
        assert_eq!(plan.lower_bound(1), Duration::from_nanos(4));
        assert_eq!(plan.lower_bound(2), Duration::from_nanos(3));
        assert_eq!(plan.levels().len(), 3);
        assert!(plan.to_string().contains("3 tasks"), "{plan}");
    }

    #[test]
    fn estimator_overrides_task_estimates() {
        let graph = diamond(Priority::Medium);
        // Make `b` the long branch.
        let plan = Planner::new()
            .estimate_with(|t| (t.id() == "b").then(|| ms(100)))
            .plan(&graph);
        assert_eq!(plan.critical_path(), ["a", "b", "d"]);
        assert_eq!(plan.critical_path_length(), ms(115));
    }

    #[test]
    fn empty_graph_has_an_empty_plan() {
        let plan = Graph::builder().build().unwrap().plan();
        assert!(plan.levels().is_empty());
        assert!(plan.critical_path().is_empty());
        assert_eq!(plan.lower_bound(4), Duration::ZERO);
    }
}

// ---------------------------------------------------------------------------------------------
// Small API contracts
// ---------------------------------------------------------------------------------------------

mod api {
    use super::*;

    #[test]
    fn priorities_and_statuses_have_names() {
        assert_eq!("HIGH".parse::<Priority>(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::default(), Priority::Medium);
        assert!(Priority::Critical > Priority::High && Priority::Medium > Priority::Low);
        assert_eq!(TaskStatus::Skipped.to_string(), "SKIPPED");
        assert!(TaskStatus::Cancelled.is_final() && !TaskStatus::Running.is_final());
        assert_eq!(RunStatus::Failed.to_string(), "FAILED");
    }

    #[test]
    fn executor_has_at_least_one_worker() {
        assert_eq!(Executor::builder().workers(0).build().workers(), 1);
        assert_eq!(exec(3).workers(), 3);
    }

    #[test]
    fn task_context_knows_the_task() {
        let mut g = Graph::builder();
        g.task("zero").run((), |_, ()| Ok(()));
        let t = g
            .task("one")
            .run((), |cx, ()| Ok((cx.task_id(), cx.index(), cx.attempt())));
        let report = exec(1).run(&g.build().unwrap());
        assert_eq!(report.output(t), Some(&("one".to_string(), 1, 1)));
    }
}

/// Named resource limits: observed concurrency never exceeds a capacity; waiting tasks do
/// not hold workers; resizing takes effect; bad declarations fail the task with a clear error.
mod resources {
    use super::*;

    /// Tracks how many tasks hold a resource at once, and the maximum seen.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        max: AtomicUsize,
    }

    impl Gauge {
        fn enter(&self) {
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
        }
        fn leave(&self) {
            self.now.fetch_sub(1, SeqCst);
        }
    }

    #[test]
    fn a_limit_is_never_exceeded() {
        let ex = Executor::builder().workers(4).resource("db", 2).build();
        let gauge = Arc::new(Gauge::default());
        let mut g = Graph::builder();
        for i in 0..24 {
            let gauge = gauge.clone();
            let t = g.task(format!("q{i}")).uses("db", 1);
            let t = if i % 3 == 0 {
                t.retry(RetryPolicy::attempts(2).backoff(ms(1)))
            } else {
                t
            };
            t.run((), move |cx, ()| {
                gauge.enter();
                std::thread::sleep(ms(2));
                gauge.leave();
                // Every third task fails its first attempt (its hold is given back between
                // attempts).
                if i % 3 == 0 && cx.attempt() == 1 {
                    return Err(TaskError::msg("first try"));
                }
                Ok(i)
            });
        }
        let report = ex.run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 24, "{report}");
        assert_eq!(gauge.max.load(SeqCst), 2);
        assert_eq!(ex.resources().in_use("db"), 0);
    }

    #[test]
    fn async_tasks_and_several_resources() {
        let ex = Executor::builder()
            .workers(2)
            .resource("api", 3)
            .resource("mem", 100)
            .build();
        let api = Arc::new(Gauge::default());
        let mut g = Graph::builder();
        for i in 0..30 {
            let api = api.clone();
            g.task(format!("a{i}"))
                .uses("api", 1)
                .uses("mem", 40)
                .run_async((), move |_, ()| {
                    let api = api.clone();
                    async move {
                        api.enter();
                        tokio::time::sleep(ms(2)).await;
                        api.leave();
                        Ok::<_, TaskError>(i)
                    }
                });
        }
        let report = ex.run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 30, "{report}");
        // mem 100 / 40 → at most 2 at once, though api would allow 3.
        assert_eq!(api.max.load(SeqCst), 2);
        assert_eq!(ex.resources().in_use("mem"), 0);
    }

    #[test]
    fn waiting_tasks_do_not_hold_workers() {
        // One worker; a task that holds `slot` waits for a signal that only a task which
        // does not use `slot` sends. Were the waiting `slot` tasks parked on the worker,
        // the sender could never run.
        let ex = Executor::builder().workers(1).resource("slot", 1).build();
        let go = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        let go1 = go.clone();
        g.task("holder")
            .uses("slot", 1)
            .run_async((), move |_, ()| {
                let go = go1.clone();
                async move {
                    while !go.load(SeqCst) {
                        tokio::time::sleep(ms(1)).await;
                    }
                    Ok::<_, TaskError>(())
                }
            });
        for i in 0..5 {
            g.task(format!("w{i}"))
                .uses("slot", 1)
                .run((), |_, ()| Ok::<_, TaskError>(()));
        }
        let go2 = go.clone();
        g.task("sender").run((), move |_, ()| {
            go2.store(true, SeqCst);
            Ok::<_, TaskError>(())
        });
        let run = ex.start(&g.build().unwrap());
        assert!(run.wait_timeout(Duration::from_secs(20)), "run deadlocked");
        assert_eq!(run.wait().counts().completed, 7);
    }

    #[test]
    fn resize_takes_effect_while_running() {
        let ex = Executor::builder().workers(4).resource("db", 1).build();
        let gauge = Arc::new(Gauge::default());
        let mut g = Graph::builder();
        for i in 0..12 {
            let gauge = gauge.clone();
            g.task(format!("q{i}"))
                .uses("db", 1)
                .run_async((), move |_, ()| {
                    let gauge = gauge.clone();
                    async move {
                        gauge.enter();
                        tokio::time::sleep(ms(20)).await;
                        gauge.leave();
                        Ok::<_, TaskError>(())
                    }
                });
        }
        let run = ex.start(&g.build().unwrap());
        std::thread::sleep(ms(5));
        ex.resources().set("db", 3);
        let report = run.wait();
        assert_eq!(report.counts().completed, 12);
        assert_eq!(gauge.max.load(SeqCst), 3);
    }

    #[test]
    fn unknown_or_oversized_uses_fail_the_task_by_name() {
        let ex = Executor::builder().workers(2).resource("db", 2).build();
        let mut g = Graph::builder();
        let a = g
            .task("gpu-job")
            .uses("gpu", 1)
            .run((), |_, ()| Ok::<_, TaskError>(1));
        g.task("big")
            .uses("db", 5)
            .run((), |_, ()| Ok::<_, TaskError>(1));
        g.task("after").run(a, |_, x| Ok(*x));
        let report = ex.run(&g.build().unwrap());
        let e = task(&report, "gpu-job").error.unwrap();
        assert_eq!(e.message(), "uses unknown resource `gpu` (defined: db)");
        let e = task(&report, "big").error.unwrap();
        assert_eq!(e.message(), "needs 5 of resource `db`, whose capacity is 2");
        assert_statuses(&report, &[("after", TaskStatus::Skipped)]);
    }

    #[test]
    fn cancelling_wakes_waiting_tasks() {
        let ex = Executor::builder().workers(2).resource("db", 1).build();
        let mut g = Graph::builder();
        g.task("holder").uses("db", 1).run((), |cx, ()| {
            while !cx.is_cancelled() {
                std::thread::sleep(ms(1));
            }
            Err::<(), _>(TaskError::cancelled())
        });
        for i in 0..3 {
            g.task(format!("w{i}"))
                .uses("db", 1)
                .run((), |_, ()| Ok::<_, TaskError>(()));
        }
        let run = ex.start(&g.build().unwrap());
        std::thread::sleep(ms(10));
        run.cancel();
        assert!(run.wait_timeout(Duration::from_secs(20)), "cancel hung");
        let report = run.wait();
        assert_eq!(report.counts().cancelled, 4, "{report}");
        assert_eq!(ex.resources().waiting(), 0);
        assert_eq!(ex.resources().in_use("db"), 0);
    }
}

/// Fallbacks: an alternative computed when the work fails for good.
mod fallbacks {
    use super::*;

    #[test]
    fn the_fallbacks_output_reaches_dependents() {
        let tries = Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        let mut g = Graph::builder();
        let base = g.task("base").run((), |_, ()| Ok::<_, TaskError>(10));
        let price = g
            .task("price")
            .retry(RetryPolicy::attempts(3).backoff(ms(1)))
            .run_with_fallback(
                base,
                move |_, b| {
                    t.fetch_add(1, SeqCst);
                    Err::<i32, _>(TaskError::msg(format!("api down ({b})")))
                },
                |_, b| Ok(*b * 2),
            );
        let total = g.task("total").run(price, |_, p| Ok(*p + 1));
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(total), Some(&21));
        // The work was retried first, then the fallback ran once.
        assert_eq!(tries.load(SeqCst), 3);
        let r = report.result(price);
        assert_eq!(r.status, TaskStatus::Completed);
        assert_eq!(r.attempts, 3);
        assert_eq!(r.fallback.unwrap().message(), "api down (10)");
        assert!(report.result(base).fallback.is_none());
    }

    #[test]
    fn a_failing_fallback_fails_the_task() {
        quiet_expected_panics();
        let mut g = Graph::builder();
        let a = g.task("a").run_with_fallback(
            (),
            |_, ()| Err::<i32, _>(TaskError::msg("primary")),
            |_, ()| -> Result<i32, TaskError> { panic!("{PANIC_MARKER}: fallback") },
        );
        g.task("b").run(a, |_, x| Ok(*x));
        let report = exec(2).run(&g.build().unwrap());
        let r = task(&report, "a");
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.unwrap().message().contains("fallback"), "{report}");
        assert_statuses(&report, &[("b", TaskStatus::Skipped)]);
    }

    #[test]
    fn async_work_with_a_fallback_and_no_fallback_on_cancel() {
        let mut g = Graph::builder();
        let a = g.task("a").run_async_with_fallback(
            (),
            |_, ()| async { Err::<String, _>(TaskError::msg("timeout upstream")) },
            |_, ()| Ok("cached".to_string()),
        );
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.output(a).map(String::as_str), Some("cached"));

        // A cancelled task does not switch to its fallback.
        let used = Arc::new(AtomicBool::new(false));
        let u = used.clone();
        let mut g = Graph::builder();
        g.task("slow").run_with_fallback(
            (),
            |cx, ()| {
                while !cx.is_cancelled() {
                    std::thread::sleep(ms(1));
                }
                Err::<i32, _>(TaskError::cancelled())
            },
            move |_, ()| {
                u.store(true, SeqCst);
                Ok(0)
            },
        );
        let run = exec(2).start(&g.build().unwrap());
        std::thread::sleep(ms(5));
        run.cancel();
        let report = run.wait();
        assert_statuses(&report, &[("slow", TaskStatus::Cancelled)]);
        assert!(!used.load(SeqCst));
    }
}

/// Trigger rules and branches.
mod control_flow {
    use super::*;
    use nerv::{Branch, TriggerRule};

    /// a (ok), b (fails), c (skipped because of b): one task per rule after all three, and
    /// after pairs of them.
    #[test]
    fn each_rule_decides_from_its_dependencies() {
        quiet_expected_panics();
        let cases: [(TriggerRule, &[&str], TaskStatus); 12] = [
            (TriggerRule::AllSuccess, &["a"], TaskStatus::Completed),
            (TriggerRule::AllSuccess, &["a", "b"], TaskStatus::Skipped),
            (
                TriggerRule::AllDone,
                &["a", "b", "c"],
                TaskStatus::Completed,
            ),
            (TriggerRule::AllFailed, &["b", "c"], TaskStatus::Completed),
            (TriggerRule::AllFailed, &["a", "b"], TaskStatus::Skipped),
            (TriggerRule::OneSuccess, &["a", "b"], TaskStatus::Completed),
            (TriggerRule::OneSuccess, &["b", "c"], TaskStatus::Skipped),
            (TriggerRule::OneFailed, &["a", "b"], TaskStatus::Completed),
            (TriggerRule::OneFailed, &["a"], TaskStatus::Skipped),
            (TriggerRule::NoneFailed, &["a"], TaskStatus::Completed),
            (TriggerRule::NoneFailed, &["a", "c"], TaskStatus::Skipped),
            (TriggerRule::AllDone, &["c"], TaskStatus::Completed),
        ];
        let mut g = Graph::builder();
        let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
        let b = g
            .task("b")
            .run((), |_, ()| Err::<i32, _>(TaskError::msg("boom")));
        let c = g.task("c").run(b, |_, x| Ok(*x));
        let ids = |names: &[&str]| -> Vec<TaskId> {
            names
                .iter()
                .map(|n| match *n {
                    "a" => a.id(),
                    "b" => b.id(),
                    _ => c.id(),
                })
                .collect()
        };
        let mut rule_tasks = Vec::new();
        for (i, (rule, deps, _)) in cases.iter().enumerate() {
            let id = format!("r{i}-{rule}");
            g.task(&id)
                .trigger(*rule)
                .after_all(ids(deps))
                .run((), |_, ()| Ok::<_, TaskError>(()));
            rule_tasks.push(id);
        }
        // A cleanup task reads the failed task's output as optional.
        let cleanup = g
            .task("cleanup")
            .trigger(TriggerRule::AllDone)
            .run((a, b.optional()), |_, (x, y)| Ok((*x, y.copied())));
        let report = exec(2).run(&g.build().unwrap());
        for (id, (rule, deps, want)) in rule_tasks.iter().zip(cases.iter()) {
            assert_eq!(
                status(&report, id),
                *want,
                "{rule} after {deps:?}\n{report}"
            );
        }
        assert_eq!(report.output(cleanup), Some(&(1, None)));
        assert_eq!(report.status(), RunStatus::Failed);
    }

    #[test]
    fn a_branch_runs_only_the_chosen_path_and_skips_the_rest() {
        let mut g = Graph::builder();
        let size = g.task("size").run((), |_, ()| Ok::<_, TaskError>(5_000));
        let route = g.task("route").branch(size, |_, n| {
            Ok(if *n > 1000 {
                Branch::to("big")
            } else {
                Branch::to("small")
            })
        });
        let big = g.task("big").after(route).run(size, |_, n| Ok(*n / 1000));
        let small = g.task("small").after(route).run(size, |_, n| Ok(*n));
        let after_small = g.task("after_small").run(small, |_, n| Ok(*n + 1));
        // A join reads whichever side ran.
        let join = g
            .task("join")
            .trigger(TriggerRule::NoneFailed)
            .run((big.optional(), small.optional()), |_, (b, s)| {
                Ok(b.or(s).copied())
            });
        let report = exec(2).run(&g.build().unwrap());
        assert_eq!(report.status(), RunStatus::Completed, "{report}");
        assert_eq!(report.output(big), Some(&5));
        assert_eq!(report.output(join), Some(&Some(5)));
        let s = report.result(small);
        assert_eq!(s.status, TaskStatus::Skipped);
        assert_eq!(s.skipped_because.as_deref(), Some("route"));
        let a = report.result(after_small);
        assert_eq!(a.status, TaskStatus::Skipped);
        assert_eq!(a.skipped_because.as_deref(), Some("route"));
        assert_eq!(report.output(route).unwrap().chosen(), ["big"]);
        assert_eq!(report.counts().skipped, 2);
    }

    #[test]
    fn choosing_a_task_that_is_not_a_dependent_fails_the_branch() {
        let mut g = Graph::builder();
        let route = g
            .task("route")
            .branch((), |_, ()| Ok(Branch::to("elsewhere")));
        g.task("x")
            .after(route)
            .run((), |_, ()| Ok::<_, TaskError>(()));
        g.task("elsewhere").run((), |_, ()| Ok::<_, TaskError>(()));
        let report = exec(2).run(&g.build().unwrap());
        let r = task(&report, "route");
        assert_eq!(r.status, TaskStatus::Failed);
        let msg = r.error.unwrap().message().to_string();
        assert_eq!(
            msg,
            "branch `route` chose `elsewhere`, which is not one of its dependents (x)"
        );
        assert_statuses(&report, &[("x", TaskStatus::Skipped)]);
    }

    #[test]
    fn branch_none_skips_every_dependent_and_cancel_beats_rules() {
        let mut g = Graph::builder();
        let route = g.task("route").branch((), |_, ()| Ok(Branch::none()));
        g.task("x")
            .after(route)
            .run((), |_, ()| Ok::<_, TaskError>(()));
        g.task("y")
            .after(route)
            .trigger(TriggerRule::AllDone)
            .run((), |_, ()| Ok::<_, TaskError>(()));
        let report = exec(2).run(&g.build().unwrap());
        assert_statuses(
            &report,
            &[("x", TaskStatus::Skipped), ("y", TaskStatus::Completed)],
        );

        // A cancelled run does not run its all_done tasks.
        let mut g = Graph::builder();
        let slow = g.task("slow").run((), |cx, ()| {
            while !cx.is_cancelled() {
                std::thread::sleep(ms(1));
            }
            Err::<(), _>(TaskError::cancelled())
        });
        g.task("cleanup")
            .after(slow)
            .trigger(TriggerRule::AllDone)
            .run((), |_, ()| Ok::<_, TaskError>(()));
        let run = exec(2).start(&g.build().unwrap());
        std::thread::sleep(ms(5));
        run.cancel();
        let report = run.wait();
        assert_statuses(&report, &[("cleanup", TaskStatus::Cancelled)]);
    }
}

/// Memoization: outputs cached by task, version and inputs, with a TTL.
mod memoization {
    use super::*;
    use nerv::{EventBus, EventFilter, EventKind, Memo};

    fn graph(calls: &Arc<AtomicUsize>, input: u64, memo: Memo) -> (Graph, Handle<Vec<u64>>) {
        let mut g = Graph::builder();
        let n = g.task("n").run((), move |_, ()| Ok::<_, TaskError>(input));
        let c = calls.clone();
        let sq = g.task("squares").run_memo(n, memo, move |_, n| {
            c.fetch_add(1, SeqCst);
            Ok((0..*n).map(|i| i * i).collect::<Vec<u64>>())
        });
        (g.build().unwrap(), sq)
    }

    #[test]
    fn a_memoized_task_runs_once_per_inputs_and_version() {
        let bus = EventBus::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let misses = Arc::new(AtomicUsize::new(0));
        let (h, m) = (hits.clone(), misses.clone());
        let _s = bus.subscribe(
            EventFilter::kinds([EventKind::MemoHit, EventKind::MemoMiss]),
            move |e| {
                if e.kind() == EventKind::MemoHit {
                    h.fetch_add(1, SeqCst);
                } else {
                    m.fetch_add(1, SeqCst);
                }
            },
        );
        let ex = Executor::builder().workers(2).events(bus.clone()).build();
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, sq) = graph(&calls, 5, Memo::new().version("1"));
        for _ in 0..3 {
            let r = ex.run(&g);
            assert_eq!(r.output(sq), Some(&vec![0, 1, 4, 9, 16]));
        }
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!((hits.load(SeqCst), misses.load(SeqCst)), (2, 1));
        // Other inputs, or another version: computed again.
        let (g6, _) = graph(&calls, 6, Memo::new().version("1"));
        ex.run(&g6);
        let (g2, _) = graph(&calls, 5, Memo::new().version("2"));
        ex.run(&g2);
        assert_eq!(calls.load(SeqCst), 3);
        // The store lists and removes entries.
        let store = ex.memo_store();
        let entries = store.entries(std::time::SystemTime::now());
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|e| e.task == "squares" && e.size > 0));
        assert_eq!(store.remove_task("squares"), 3);
        ex.run(&g);
        assert_eq!(calls.load(SeqCst), 4);
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let ex = exec(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, _) = graph(&calls, 3, Memo::new().ttl(ms(30)));
        ex.run(&g);
        ex.run(&g);
        assert_eq!(calls.load(SeqCst), 1);
        std::thread::sleep(ms(60));
        ex.run(&g);
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[test]
    fn a_failure_is_not_memoized() {
        let ex = exec(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut g = Graph::builder();
        g.task("flaky").run_memo((), Memo::new(), move |_, ()| {
            if c.fetch_add(1, SeqCst) == 0 {
                Err(TaskError::msg("first"))
            } else {
                Ok(7u8)
            }
        });
        let g = g.build().unwrap();
        assert_eq!(ex.run(&g).status(), RunStatus::Failed);
        assert_eq!(ex.run(&g).status(), RunStatus::Completed);
        assert_eq!(ex.run(&g).status(), RunStatus::Completed);
        assert_eq!(calls.load(SeqCst), 2);
    }
}

/// Executor presets for kinds of work.
mod presets {
    use super::*;
    use nerv::Workload;

    #[test]
    fn presets_size_the_pool_and_explicit_sizes_win() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (w, want) in [
            (Workload::CpuBound, cores),
            (Workload::IoBound, 4 * cores),
            (Workload::Mixed, 2 * cores),
            (Workload::MemoryBound, (cores / 2).max(1)),
        ] {
            let ex = Executor::builder().preset(w).build();
            assert_eq!(ex.workers(), want, "{w:?}");
            assert_eq!(w.workers(cores), want);
        }
        let ex = Executor::builder()
            .workers(3)
            .preset(Workload::IoBound)
            .build();
        assert_eq!(ex.workers(), 3);
        // An IO preset runs many blocking tasks at once.
        let ex = Executor::builder().preset(Workload::IoBound).build();
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut g = Graph::builder();
        for i in 0..(4 * cores) {
            let (l, p) = (live.clone(), peak.clone());
            g.task(format!("io{i}")).run((), move |_, ()| {
                let n = l.fetch_add(1, SeqCst) + 1;
                p.fetch_max(n, SeqCst);
                std::thread::sleep(ms(30));
                l.fetch_sub(1, SeqCst);
                Ok::<_, TaskError>(())
            });
        }
        ex.run(&g.build().unwrap());
        assert!(peak.load(SeqCst) > cores, "peak {}", peak.load(SeqCst));
    }

    #[test]
    fn a_resize_takes_effect_while_a_run_goes_on() {
        let ex = Executor::builder().workers(1).max_workers(4).build();
        assert_eq!((ex.workers(), ex.max_workers()), (1, 4));
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let mut g = Graph::builder();
        for i in 0..4 {
            let (l, p, r) = (live.clone(), peak.clone(), release.clone());
            g.task(format!("t{i}")).run((), move |_, ()| {
                let n = l.fetch_add(1, SeqCst) + 1;
                p.fetch_max(n, SeqCst);
                let t0 = std::time::Instant::now();
                // Hold the worker until released, or until all four run at once.
                while !r.load(SeqCst) && p.load(SeqCst) < 4 {
                    assert!(t0.elapsed() < LIMIT, "never released");
                    std::thread::sleep(ms(1));
                }
                l.fetch_sub(1, SeqCst);
                Ok::<_, TaskError>(())
            });
        }
        let run = ex.start(&g.build().unwrap());
        let t0 = std::time::Instant::now();
        while live.load(SeqCst) < 1 {
            assert!(t0.elapsed() < LIMIT);
            std::thread::sleep(ms(1));
        }
        std::thread::sleep(ms(30));
        assert_eq!(peak.load(SeqCst), 1, "one worker runs one task at a time");
        assert_eq!(ex.resize(4), 4);
        assert_eq!(ex.resize(99), 4, "clamped to the maximum");
        assert_eq!(run.wait().counts().completed, 4);
        assert_eq!(peak.load(SeqCst), 4, "the grown pool ran all four at once");
        release.store(true, SeqCst);
        assert_eq!(ex.resize(1), 1);
        assert_eq!(ex.workers(), 1);
    }
}

/// Batched maps over many small items.
mod batching {
    use super::*;

    #[test]
    fn a_batched_map_keeps_order_and_computes_each_item_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut g = Graph::builder();
        let items = g.task("items").run((), |_, ()| {
            Ok::<_, TaskError>((0..50_000u64).collect::<Vec<_>>())
        });
        let c = calls.clone();
        let doubled = g.task("double").map_batched(items, move |x: &u64| {
            c.fetch_add(1, SeqCst);
            Ok(x * 2)
        });
        let report = Executor::builder()
            .workers(2)
            .build()
            .run(&g.build().unwrap());
        let out = report.output(doubled).expect("completed");
        assert_eq!(out.len(), 50_000);
        assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
        assert_eq!(calls.load(SeqCst), 50_000, "each item once");
        // Tiny items run in chunks: far fewer tasks than items. The chunk size comes from the
        // measured time of an item (its arithmetic is `chunk_size`'s unit test), so the bound
        // here leaves room for a loaded machine: at most 12 500 chunks (4 items each) means a
        // measured item time under 50 µs. (A bound of 1000, 4 µs, failed once in CI with the
        // whole debug test suite running on 2 cores: one preempted group of four was then the
        // whole measurement, which `keep_sampling` now prevents.)
        let chunks = report
            .results()
            .iter()
            .filter(|r| r.id.starts_with("double/chunk"))
            .count();
        assert!((1..=12_500).contains(&chunks), "{chunks} chunk tasks");
    }

    #[test]
    fn slow_items_get_a_task_each_and_shared_items_are_not_copied() {
        let mut g = Graph::builder();
        let data = Arc::new((0..6u64).collect::<Vec<_>>());
        let d = data.clone();
        let items = g
            .task("items")
            .run((), move |_, ()| Ok::<_, TaskError>(d.clone()));
        let out = g.task("slow").map_batched(items, |x: &u64| {
            std::thread::sleep(ms(2));
            Ok(x + 1)
        });
        let report = Executor::builder()
            .workers(2)
            .build()
            .run(&g.build().unwrap());
        assert_eq!(**report.output(out).unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let chunks = report
            .results()
            .iter()
            .filter(|r| r.id.starts_with("slow/chunk"))
            .count();
        // The first items are measured inline; the rest run one per task.
        assert!(chunks >= 1, "{chunks}");
        assert!(report
            .results()
            .iter()
            .filter(|r| r.id.starts_with("slow/chunk"))
            .all(|r| r.status == TaskStatus::Completed));
    }

    #[test]
    fn a_failing_item_fails_the_map_and_is_named() {
        let mut g = Graph::builder();
        let items = g.task("items").run((), |_, ()| {
            Ok::<_, TaskError>((0..10_000u32).collect::<Vec<_>>())
        });
        let m = g.task("parse").map_batched(items, |x: &u32| {
            if *x == 7_777 {
                Err(TaskError::msg("bad record"))
            } else {
                Ok(*x)
            }
        });
        let after = g.task("after").run(m, |_, v| Ok::<_, TaskError>(v.len()));
        let report = Executor::builder()
            .workers(2)
            .build()
            .run(&g.build().unwrap());
        let r = report.task("parse").unwrap();
        assert_eq!(r.status, TaskStatus::Failed);
        let all: Vec<String> = report
            .failures()
            .iter()
            .chain(report.results().iter())
            .filter_map(|r| r.error.as_ref().map(|e| e.to_string()))
            .collect();
        assert!(
            all.iter().any(|e| e.contains("item 7777: bad record")),
            "{all:?}"
        );
        assert_eq!(report.result(after).status, TaskStatus::Skipped);
    }

    #[test]
    fn an_empty_input_maps_to_an_empty_output() {
        let mut g = Graph::builder();
        let items = g
            .task("items")
            .run((), |_, ()| Ok::<_, TaskError>(Vec::<u8>::new()));
        let m = g.task("m").map_batched(items, |x: &u8| Ok(*x));
        let report = Executor::builder()
            .workers(1)
            .build()
            .run(&g.build().unwrap());
        assert!(report.output(m).unwrap().is_empty());
    }
}

/// Graphs with duration estimates: a list schedule by priority, then remaining critical path.
mod ranked {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ready_tasks_run_longest_remaining_path_first_across_the_graph() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut g = Graph::builder();
        let task = |g: &mut nerv::GraphBuilder, id: &str, est: u64, after: Option<TaskId>| {
            let o = order.clone();
            let me = id.to_string();
            let mut tb = g.task(id).estimate(ms(est));
            if let Some(a) = after {
                tb = tb.after(a);
            }
            tb.run((), move |_, ()| {
                o.lock().unwrap().push(me.clone());
                Ok::<_, TaskError>(())
            })
            .id()
        };
        // Inserted worst first: insertion order must not matter.
        task(&mut g, "c", 2, None);
        task(&mut g, "b", 5, None);
        let a = task(&mut g, "a", 1, None);
        let a1 = task(&mut g, "a1", 10, Some(a));
        task(&mut g, "a2", 10, Some(a1));
        let report = Executor::builder()
            .workers(1)
            .build()
            .run(&g.build().unwrap());
        assert_eq!(report.counts().completed, 5);
        assert_eq!(*order.lock().unwrap(), ["a", "a1", "a2", "b", "c"]);
    }

    #[test]
    fn priority_goes_before_rank() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut g = Graph::builder();
        for (id, est, p) in [
            ("long", 50, Priority::Medium),
            ("urgent", 1, Priority::Critical),
            ("mid", 10, Priority::Medium),
        ] {
            let o = order.clone();
            g.task(id)
                .estimate(ms(est))
                .priority(p)
                .run((), move |_, ()| {
                    o.lock().unwrap().push(id);
                    Ok::<_, TaskError>(())
                });
        }
        Executor::builder()
            .workers(1)
            .build()
            .run(&g.build().unwrap());
        assert_eq!(*order.lock().unwrap(), ["urgent", "long", "mid"]);
    }
}

/// The planner's estimate of nerv's own schedule.
mod estimated_makespan {
    use super::*;

    #[test]
    fn a_list_schedule_of_the_estimates_between_the_bound_and_the_sum() {
        let mut g = Graph::builder();
        for (id, est) in [("a", 3), ("b", 2), ("c", 2)] {
            g.task(id)
                .estimate(ms(est))
                .run((), |_, ()| Ok::<_, TaskError>(()));
        }
        let plan = g.build().unwrap().plan();
        // a and b start; c starts when b ends at 2 ms and ends at 4 ms.
        assert_eq!(plan.estimated_makespan(2), ms(4));
        assert_eq!(plan.lower_bound(2), std::time::Duration::from_micros(3500));
        assert_eq!(plan.estimated_makespan(1), ms(7));
        assert_eq!(plan.estimated_makespan(3), ms(3));
    }

    #[test]
    fn the_critical_path_starts_first() {
        // r1 (1 ms) → x (10 ms); r2 (5 ms), r3 (5 ms) alone. On 2 workers, starting r1 first
        // gives 11 ms; starting the two 5 ms roots first would give 16 ms.
        let mut g = Graph::builder();
        let r1 = g
            .task("r1")
            .estimate(ms(1))
            .run((), |_, ()| Ok::<_, TaskError>(()));
        g.task("x")
            .estimate(ms(10))
            .after(r1)
            .run((), |_, ()| Ok::<_, TaskError>(()));
        for id in ["r2", "r3"] {
            g.task(id)
                .estimate(ms(5))
                .run((), |_, ()| Ok::<_, TaskError>(()));
        }
        let plan = g.build().unwrap().plan();
        assert_eq!(plan.estimated_makespan(2), ms(11));
        assert_eq!(plan.lower_bound(2), ms(11));
    }

    /// Five independent tasks of 3, 3, 2, 2 and 2 ms (`a` to `e`), logged as they start.
    fn lpt(order: &Log<&'static str>, search: Option<usize>) -> Graph {
        let mut g = Graph::builder();
        if let Some(w) = search {
            g.search_order(w);
        }
        for (id, est) in [("a", 3), ("b", 3), ("c", 2), ("d", 2), ("e", 2)] {
            let o = order.clone();
            g.task(id).estimate(ms(est)).run((), move |_, ()| {
                o.push(id);
                Ok::<_, TaskError>(())
            });
        }
        g.build().unwrap()
    }

    #[test]
    fn a_searched_order_fills_the_workers_better_than_the_critical_path() {
        // On 2 workers, longest first runs a, b, then c, d, then e: 7 ms. Pairing a 3 ms task
        // with a 2 ms one gives 3 + 3 beside 2 + 2 + 2: 6 ms, the bound.
        let plan = lpt(&Log::new(), None).plan();
        assert_eq!(plan.estimated_makespan(2), ms(7));
        assert_eq!(plan.lower_bound(2), ms(6));
        let found = plan.search_order(2, plan.default_tries());
        assert_eq!(found.ranked_makespan, ms(7));
        assert_eq!(found.makespan, ms(6));
        assert_eq!(found.keys.len(), 5);
        // The two highest keys are not both 3 ms tasks.
        let mut by_key: Vec<usize> = (0..5).collect();
        by_key.sort_by_key(|&i| std::cmp::Reverse(found.keys[i]));
        assert!(
            !(by_key[..2].contains(&0) && by_key[..2].contains(&1)),
            "{found:?}"
        );
        // Deterministic.
        assert_eq!(plan.search_order(2, plan.default_tries()), found);
    }

    #[test]
    fn a_graph_built_with_a_searched_order_runs_in_it() {
        let order: Log<&'static str> = Log::new();
        let graph = lpt(&order, Some(2));
        assert!(graph.tasks().all(|t| t.order_key().is_some()));
        // The plan follows the graph's keys.
        assert_eq!(graph.plan().estimated_makespan(2), ms(6));
        // One worker takes ready tasks in key order: not both 3 ms tasks first.
        let report = Executor::builder().workers(1).build().run(&graph);
        assert_eq!(report.counts().completed, 5);
        let started = order.get();
        assert!(
            !(started[..2].contains(&"a") && started[..2].contains(&"b")),
            "{started:?}"
        );
        // Priorities still come first: a short critical task starts before any key.
        let order: Log<&'static str> = Log::new();
        let mut g = Graph::builder();
        g.search_order(2);
        for (id, est, p) in [
            ("long", 9, Priority::Medium),
            ("short", 1, Priority::Critical),
        ] {
            let o = order.clone();
            g.task(id)
                .estimate(ms(est))
                .priority(p)
                .run((), move |_, ()| {
                    o.push(id);
                    Ok::<_, TaskError>(())
                });
        }
        Executor::builder()
            .workers(1)
            .build()
            .run(&g.build().unwrap());
        assert_eq!(order.get(), ["short", "long"]);
        // Without estimates there is nothing to search: no keys, the default order.
        let mut g = Graph::builder();
        g.search_order(2);
        g.task("x").run((), |_, ()| Ok::<_, TaskError>(()));
        let graph = g.build().unwrap();
        assert!(graph.tasks().all(|t| t.order_key().is_none()));
    }
}
