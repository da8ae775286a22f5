//! Integration tests of nerv-wfformat: the real traces, a 1.4 file, errors, the TOML export
//! and a tiny replay. The traces are read from `$NERV_WFINSTANCES` (default
//! `/work/shared/data/wfinstances`); tests that need them say so and pass when it is absent.

use nerv_wfformat::{
    format_estimate, format_seconds, interval_lower_bound, parse_file, parse_str,
    pigeonhole_lower_bound, replay, search_order, simulate, ErrorKind, ExportOptions, GraphOptions,
    Order, Policy, ReplayOptions, SchemaVersion, Task, Workflow,
};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

fn traces() -> Vec<PathBuf> {
    let dir = std::env::var_os("NERV_WFINSTANCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/wfinstances"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("no trace directory {}: skipped", dir.display());
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

/// `|a - b|` (`Duration::abs_diff` needs Rust 1.81; the MSRV is 1.80).
fn gap(a: Duration, b: Duration) -> Duration {
    a.max(b) - a.min(b)
}

fn trace(stem: &str) -> Option<Workflow> {
    let p = traces().into_iter().find(|p| {
        p.file_stem()
            .is_some_and(|s| s.to_string_lossy().starts_with(stem))
    })?;
    Some(parse_file(p).expect("trace parses"))
}

/// One task of [`doc15`]: id, parents, children, runtime.
type Spec<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Option<f64>);

/// A 1.5 document from its tasks.
fn doc15(tasks: &[Spec<'_>]) -> String {
    let spec: Vec<serde_json::Value> = tasks
        .iter()
        .map(|(id, p, c, _)| serde_json::json!({"id": id, "name": id, "parents": p, "children": c}))
        .collect();
    let exec: Vec<serde_json::Value> = tasks
        .iter()
        .map(|(id, _, _, r)| match r {
            Some(r) => serde_json::json!({"id": id, "runtimeInSeconds": r}),
            None => serde_json::json!({"id": id}),
        })
        .collect();
    serde_json::json!({
        "name": "t", "schemaVersion": "1.5",
        "workflow": {"specification": {"tasks": spec}, "execution": {"makespanInSeconds": 1, "tasks": exec}}
    })
    .to_string()
}

#[test]
fn every_trace_parses_with_consistent_edges() {
    for path in traces() {
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let wf = parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let spec = raw["workflow"]["specification"]["tasks"]
            .as_array()
            .unwrap();
        let exec = raw["workflow"]["execution"]["tasks"].as_array().unwrap();
        assert_eq!(wf.len(), spec.len(), "{}", path.display());
        assert_eq!(wf.schema_version(), SchemaVersion::V1_5);
        assert_eq!(wf.file(), Some(path.as_path()));
        // Edges: the file's parents and children describe the same set, which is the model's.
        let mut from_parents = BTreeSet::new();
        let mut from_children = BTreeSet::new();
        for t in spec {
            let id = t["id"].as_str().unwrap().to_string();
            for p in t["parents"].as_array().unwrap() {
                from_parents.insert((p.as_str().unwrap().to_string(), id.clone()));
            }
            for c in t["children"].as_array().unwrap() {
                from_children.insert((id.clone(), c.as_str().unwrap().to_string()));
            }
        }
        assert_eq!(from_parents, from_children, "{}", path.display());
        let model: BTreeSet<(String, String)> = wf
            .tasks()
            .iter()
            .flat_map(|t| t.parents.iter().map(move |p| (p.clone(), t.id.clone())))
            .collect();
        assert_eq!(model, from_parents, "{}", path.display());
        assert_eq!(wf.edge_count(), model.len());
        for i in 0..wf.len() {
            for &c in wf.children_of(i) {
                assert!(wf.parents_of(c).contains(&i));
            }
        }
        // Runtimes and memory come from the execution records.
        let rt: HashMap<&str, &serde_json::Value> = exec
            .iter()
            .map(|e| (e["id"].as_str().unwrap(), e))
            .collect();
        for t in wf.tasks() {
            let e = rt[t.id.as_str()];
            let secs = e["runtimeInSeconds"].as_f64().unwrap();
            assert!((t.runtime.as_secs_f64() - secs).abs() < 1e-9, "{}", t.id);
            assert_eq!(
                t.memory_bytes,
                e.get("memoryInBytes")
                    .and_then(|m| m.as_f64())
                    .map(|m| m as u64)
            );
            assert_eq!(
                t.cores,
                e.get("coreCount")
                    .and_then(|m| m.as_f64())
                    .map(|m| m as u32)
            );
        }
        // A topological order puts every parent first.
        let mut pos = vec![0; wf.len()];
        for (k, &i) in wf.topological_order().iter().enumerate() {
            pos[i] = k;
        }
        for i in 0..wf.len() {
            for &p in wf.parents_of(i) {
                assert!(pos[p] < pos[i]);
            }
        }
        assert!(wf.recorded_makespan().is_some());
    }
}

#[test]
fn known_trace_counts() {
    let Some(wf) = trace("helloworld-forkjoin-10") else {
        return;
    };
    assert_eq!(wf.len(), 10);
    assert_eq!(wf.edge_count(), 16);
    assert_eq!(wf.recorded_makespan(), Some(Duration::from_secs(437)));
    let Some(wf) = trace("montage-chameleon-dss-10d") else {
        return;
    };
    assert_eq!(wf.len(), 472);
}

#[test]
fn graph_matches_the_trace() {
    for path in traces() {
        let wf = parse_file(&path).unwrap();
        for order in [Order::Ranked, Order::Estimated, Order::Fcfs, Order::Banded] {
            let g = wf
                .to_graph(&GraphOptions::scaled(0.001).order(order).without_sleep())
                .unwrap();
            assert_eq!(g.len(), wf.len());
            assert_eq!(g.edge_count(), wf.edge_count());
            for t in wf.tasks() {
                let info = g.task(g.find(&t.id).unwrap());
                let deps: BTreeSet<&str> = info.dependencies().collect();
                let want: BTreeSet<&str> = t.parents.iter().map(String::as_str).collect();
                assert_eq!(deps, want);
                match order {
                    Order::Fcfs => assert_eq!(info.estimate(), None),
                    _ => assert_eq!(info.estimate(), Some(t.scaled_runtime(0.001))),
                }
                if order != Order::Banded {
                    assert_eq!(info.priority(), nerv::Priority::Medium);
                }
            }
            // Back from the graph: the same tasks, dependencies and (scaled) durations.
            if order != Order::Fcfs {
                let back = Workflow::from_graph("back", &g);
                assert_eq!(back.len(), wf.len());
                assert_eq!(back.edge_count(), wf.edge_count());
                assert!(
                    gap(back.critical_path(1.0), wf.critical_path(0.001))
                        < Duration::from_micros(1)
                );
            }
        }
        // The ranked insertion order is topological and by decreasing rank.
        let order = wf.insertion_order(Order::Ranked, 1.0);
        let rank = wf.upward_ranks(1.0);
        let mut seen = vec![false; wf.len()];
        for w in order.windows(2) {
            assert!(rank[w[0]] >= rank[w[1]]);
        }
        for &i in &order {
            assert!(wf.parents_of(i).iter().all(|&p| seen[p]));
            seen[i] = true;
        }
        // nerv's plan agrees with the model on the bound.
        let g = wf
            .to_graph(&GraphOptions::scaled(0.001).without_sleep())
            .unwrap();
        let plan = g.plan();
        let cp = wf.critical_path(0.001);
        let diff = gap(plan.critical_path_length(), cp);
        assert!(diff < Duration::from_micros(1), "{}", path.display());
        let lb = wf.lower_bound(0.001, 4);
        assert!(gap(plan.lower_bound(4), lb) < Duration::from_micros(1));
        // The ideal schedules are feasible: never below the bound.
        for p in [Policy::Rank, Policy::Fcfs] {
            assert!(simulate(&wf, 1.0, 4, p) + Duration::from_micros(1) >= wf.lower_bound(1.0, 4));
        }
    }
}

#[test]
fn schema_1_4_layout() {
    let json = r#"{
      "name": "old", "schemaVersion": "1.4",
      "workflow": {
        "makespanInSeconds": 10.5,
        "executedAt": "2020-01-01T00:00:00",
        "tasks": [
          {"name": "stage", "id": "ID01", "type": "compute", "runtimeInSeconds": 1.5,
           "cores": 2, "memoryInBytes": 1024, "avgCPU": 90.0,
           "parents": [], "children": ["ID02", "ID03"]},
          {"name": "work_a", "id": "ID02", "type": "compute", "runtimeInSeconds": 2,
           "parents": ["ID01"], "children": ["ID04"]},
          {"name": "work_b", "id": "ID03", "type": "compute", "runtimeInSeconds": 3.25,
           "parents": ["stage"], "children": []},
          {"name": "merge", "id": "ID04", "type": "compute", "runtimeInSeconds": 0,
           "parents": [], "children": []}
        ]
      }
    }"#;
    let wf = parse_str(json, "old.json").unwrap();
    assert_eq!(wf.schema_version(), SchemaVersion::V1_4);
    assert_eq!(wf.name(), "old");
    assert_eq!(wf.len(), 4);
    assert_eq!(wf.recorded_makespan(), Some(Duration::from_secs_f64(10.5)));
    let stage = wf.task("ID01").unwrap();
    assert_eq!(stage.name, "stage");
    assert_eq!(stage.runtime, Duration::from_millis(1500));
    assert_eq!(stage.cores, Some(2));
    assert_eq!(stage.memory_bytes, Some(1024));
    assert_eq!(stage.avg_cpu, Some(90.0));
    // "stage" is a name: resolved to ID01 in a 1.4 file.
    assert_eq!(wf.task("ID03").unwrap().parents, vec!["ID01"]);
    // ID04 declares no parent, but ID02 lists it as a child.
    assert_eq!(wf.task("ID04").unwrap().parents, vec!["ID02"]);
    assert_eq!(wf.edge_count(), 3);
    assert_eq!(wf.critical_path(1.0), Duration::from_millis(3500 + 1250));
}

#[test]
fn schema_1_6_reads_like_1_5() {
    let json = doc15(&[("a", &[], &["b"], Some(1.0)), ("b", &["a"], &[], Some(2.0))])
        .replace("\"1.5\"", "\"1.6\"");
    let wf = parse_str(&json, "x.json").unwrap();
    assert_eq!(wf.schema_version(), SchemaVersion::V1_6);
    assert_eq!(wf.critical_path(1.0), Duration::from_secs(3));
}

#[test]
fn errors_name_the_file_and_the_task() {
    let e = parse_str(
        &doc15(&[("a", &[], &[], Some(1.0)), ("b", &["zz"], &[], Some(1.0))]),
        "w.json",
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::UnknownParent { .. }));
    assert_eq!(e.task(), Some("b"));
    assert_eq!(e.file(), std::path::Path::new("w.json"));
    let msg = e.to_string();
    assert!(msg.starts_with("w.json: "), "{msg}");
    assert!(msg.contains("\"b\"") && msg.contains("\"zz\""), "{msg}");

    let e = parse_str(&doc15(&[("a", &[], &["nope"], Some(1.0))]), "w.json").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::UnknownChild { .. }), "{e}");
    assert_eq!(e.task(), Some("a"));

    let e = parse_str(
        &doc15(&[
            ("a", &["c"], &[], Some(1.0)),
            ("b", &["a"], &[], Some(1.0)),
            ("c", &["b"], &[], Some(1.0)),
            ("d", &[], &[], Some(1.0)),
        ]),
        "cyc.json",
    )
    .unwrap_err();
    assert!(e.is_cycle(), "{e}");
    match e.kind() {
        ErrorKind::Cycle { path } => assert_eq!(path, &["a", "b", "c", "a"]),
        k => panic!("{k:?}"),
    }
    assert!(e.to_string().contains("a -> b -> c -> a"), "{e}");

    let e = parse_str(&doc15(&[("a", &["a"], &[], Some(1.0))]), "s.json").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::SelfDependency { .. }), "{e}");

    let e = parse_str(
        &doc15(&[("a", &[], &[], Some(1.0)), ("b", &[], &[], None)]),
        "m.json",
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::MissingRuntime { .. }), "{e}");
    assert_eq!(e.task(), Some("b"));
    assert!(e.to_string().contains("runtimeInSeconds"));

    let e = parse_str(&doc15(&[("a", &[], &[], Some(-1.0))]), "n.json").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidRuntime { .. }), "{e}");

    let e = parse_str(
        &doc15(&[("a", &[], &[], Some(1.0)), ("a", &[], &[], Some(1.0))]),
        "d.json",
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::DuplicateTask { .. }), "{e}");

    let e = parse_str(
        &doc15(&[("a", &[], &[], Some(1.0))]).replace("\"1.5\"", "\"1.3\""),
        "v.json",
    )
    .unwrap_err();
    assert!(e.is_unsupported_version(), "{e}");
    assert!(e.to_string().contains("1.3"));

    let e = parse_str(r#"{"name": "x", "workflow": {}}"#, "v.json").unwrap_err();
    assert!(e.is_unsupported_version(), "{e}");

    let e = parse_str(r#"{"schemaVersion": "1.5", "workflow": {}}"#, "e.json").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::MissingTasks), "{e}");

    let e = parse_str("{ not json", "j.json").unwrap_err();
    assert!(e.is_syntax(), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");

    let json = doc15(&[("a", &[], &[], Some(1.0))]).replace(
        r#""tasks":[{"id":"a","runtimeInSeconds":1.0}]"#,
        r#""tasks":[{"id":"a","runtimeInSeconds":1.0},{"id":"ghost","runtimeInSeconds":1.0}]"#,
    );
    let e = parse_str(&json, "g.json").unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::UnknownExecutionTask { .. }),
        "{e}"
    );

    let e = parse_file("/nonexistent/trace.json").unwrap_err();
    assert!(e.is_io());
    assert!(e.to_string().starts_with("/nonexistent/trace.json: "));
}

#[test]
fn workflow_new_validates() {
    let ok = Workflow::new(
        "w",
        vec![
            Task::new("a", Duration::from_millis(5)),
            Task::new("b", Duration::from_millis(7)).with_parent("a"),
        ],
    )
    .unwrap();
    assert_eq!(ok.lower_bound(1.0, 4), Duration::from_millis(12));
    let e = Workflow::new(
        "w",
        vec![Task::new("a", Duration::from_millis(5)).with_parent("x")],
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::UnknownParent { .. }));
}

#[test]
fn toml_export_round_trips() {
    let mut checked = 0;
    for path in traces() {
        let wf = parse_file(&path).unwrap();
        let text = wf.to_toml(&ExportOptions::scaled(0.01));
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["name"].as_str(), Some(wf.name()));
        assert!(v.get("resources").is_none());
        let tasks = v["tasks"].as_table().unwrap();
        assert_eq!(tasks.len(), wf.len());
        for t in wf.tasks() {
            let e = &tasks[&t.id];
            let run: Vec<&str> = e["run"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(run[0], "sleep");
            let secs: f64 = run[1].parse().unwrap();
            let want = t.scaled_runtime(0.01);
            assert!((secs - want.as_secs_f64()).abs() < 1e-9);
            let needs: BTreeSet<&str> = e
                .get("needs")
                .map(|n| {
                    n.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let parents: BTreeSet<&str> = t.parents.iter().map(String::as_str).collect();
            assert_eq!(needs, parents, "{}", t.id);
            assert_eq!(e["estimate"].as_str().unwrap(), format_estimate(want));
            assert_eq!(e.get("description").is_some(), t.name != t.id);
            checked += 1;
        }
    }
    // With a memory budget: the resource and each task's (clamped) use.
    let wf = Workflow::new(
        "mem",
        vec![
            Task {
                memory_bytes: Some(300),
                ..Task::new("a", Duration::from_millis(123))
            },
            Task {
                memory_bytes: Some(5000),
                ..Task::new("b.c", Duration::from_micros(1500)).with_parent("a")
            },
            Task::new("d", Duration::ZERO),
        ],
    )
    .unwrap();
    let text = wf.to_toml(&ExportOptions {
        memory_limit: Some(1000),
        ..ExportOptions::scaled(1.0)
    });
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["resources"]["memory"].as_integer(), Some(1000));
    let t = &v["tasks"];
    assert_eq!(t["a"]["uses"]["memory"].as_integer(), Some(300));
    assert_eq!(t["b.c"]["uses"]["memory"].as_integer(), Some(1000));
    assert!(t["d"].get("uses").is_none());
    assert_eq!(t["a"]["run"][1].as_str(), Some("0.123"));
    assert_eq!(t["a"]["estimate"].as_str(), Some("123ms"));
    assert_eq!(t["b.c"]["estimate"].as_str(), Some("1500us"));
    assert_eq!(t["b.c"]["needs"][0].as_str(), Some("a"));
    assert_eq!(t["d"]["run"][1].as_str(), Some("0"));
    let _ = checked;
}

#[test]
fn duration_formats() {
    assert_eq!(format_seconds(Duration::from_millis(123)), "0.123");
    assert_eq!(format_seconds(Duration::from_secs(2)), "2");
    assert_eq!(format_seconds(Duration::from_nanos(1)), "0.000000001");
    assert_eq!(format_seconds(Duration::ZERO), "0");
    assert_eq!(format_estimate(Duration::from_millis(123)), "123ms");
    assert_eq!(format_estimate(Duration::from_micros(15712)), "15712us");
    assert_eq!(format_estimate(Duration::from_nanos(7)), "7ns");
    assert_eq!(format_estimate(Duration::ZERO), "0ms");
}

/// 1 root, 8 middle tasks, 1 join, 1 s each.
fn fork_join() -> Workflow {
    let mut tasks = vec![Task::new("root", Duration::from_secs(1))];
    let mut join = Task::new("join", Duration::from_secs(1));
    for i in 0..8 {
        let id = format!("m{i}");
        tasks.push(Task::new(&id, Duration::from_secs(1)).with_parent("root"));
        join = join.with_parent(id);
    }
    tasks.push(join);
    Workflow::new("fj", tasks).unwrap()
}

#[test]
fn simulate_fork_join() {
    // On 4 workers the middle needs two rounds.
    let wf = fork_join();
    assert_eq!(wf.lower_bound(1.0, 4), Duration::from_secs(3));
    assert_eq!(simulate(&wf, 1.0, 4, Policy::Rank), Duration::from_secs(4));
    assert_eq!(simulate(&wf, 1.0, 8, Policy::Fcfs), Duration::from_secs(3));
    // The interval bound sees the two rounds: within 0.01 % of 4 s, never above.
    let ilb = interval_lower_bound(&wf, 1.0, 4);
    assert!(ilb <= Duration::from_secs(4), "{ilb:?}");
    assert!(ilb >= Duration::from_millis(3999), "{ilb:?}");
    assert_eq!(interval_lower_bound(&wf, 1.0, 8), Duration::from_secs(3));
    // So does counting: two of the 8 on one processor, after the root, before the join.
    assert_eq!(pigeonhole_lower_bound(&wf, 1.0, 4), Duration::from_secs(4));
    assert_eq!(pigeonhole_lower_bound(&wf, 1.0, 8), Duration::from_secs(3));
}

#[test]
fn a_searched_order_beats_longest_first_where_it_leaves_a_gap() {
    // Five independent tasks of 3, 3, 2, 2, 2 s on 2 processors: longest first (the critical
    // path order) gives 3+2+2 = 7 s; 3+3 and 2+2+2 give 6 s, which the search finds.
    let tasks: Vec<Task> = [3, 3, 2, 2, 2]
        .iter()
        .enumerate()
        .map(|(i, &s)| Task::new(format!("t{i}"), Duration::from_secs(s)))
        .collect();
    let wf = Workflow::new("lpt", tasks).unwrap();
    assert_eq!(simulate(&wf, 1.0, 2, Policy::Rank), Duration::from_secs(7));
    let s = search_order(&wf, 1.0, 2, 200);
    assert_eq!(s.rank_makespan, Duration::from_secs(7));
    assert_eq!(s.makespan, Duration::from_secs(6));
    // Optimal: three of the five on one processor take at least 2+2+2.
    assert_eq!(pigeonhole_lower_bound(&wf, 1.0, 2), Duration::from_secs(6));
    assert_eq!(wf.lower_bound(1.0, 2), Duration::from_secs(6));
    assert_eq!(s.keys.len(), 5);
    assert_eq!(s.tried, 200);
    // The keys are the order: a graph with them runs in 6 s of simulated time, and nerv
    // takes them as its order keys.
    let g = wf
        .to_graph(
            &GraphOptions::scaled(1.0)
                .order(Order::Searched { workers: 2 })
                .without_sleep(),
        )
        .unwrap();
    for (i, t) in wf.tasks().iter().enumerate() {
        assert_eq!(g.task(g.find(&t.id).unwrap()).order_key(), Some(s.keys[i]));
    }
}

#[test]
fn searched_orders_are_never_worse_than_critical_path_first() {
    for path in traces() {
        let wf = parse_file(&path).unwrap();
        let s = search_order(&wf, 1.0, 4, 100);
        assert_eq!(s.rank_makespan, simulate(&wf, 1.0, 4, Policy::Rank));
        assert!(s.makespan <= s.rank_makespan, "{}", path.display());
        assert!(s.makespan + Duration::from_micros(1) >= wf.lower_bound(1.0, 4));
        assert_eq!(s.keys.len(), wf.len());
        assert_eq!(s, search_order(&wf, 1.0, 4, 100), "deterministic");
        let one = search_order(&wf, 1.0, 4, 1);
        assert_eq!(one.makespan, one.rank_makespan);
        // A lower bound: never above a schedule found, never below work / P.
        let ph = pigeonhole_lower_bound(&wf, 1.0, 4);
        assert!(ph <= s.makespan, "{}", path.display());
        assert!(ph >= wf.lower_bound(1.0, 4));
    }
    // 21 near-equal long tasks on 4 processors: 6 rounds, which work / P does not see.
    if let Some(wf) = trace("montage-chameleon-2mass") {
        let ph = pigeonhole_lower_bound(&wf, 1.0, 4);
        assert!(ph > wf.lower_bound(1.0, 4).mul_f64(1.07), "{ph:?}");
    }
    // A real trace where critical-path-first leaves processors idle at the end.
    if let Some(wf) = trace("1000genome") {
        let s = search_order(&wf, 1.0, 4, 2000);
        assert!(s.makespan < s.rank_makespan.mul_f64(0.99), "{s:?}");
    }
}

#[test]
fn interval_bound_is_between_the_bound_and_the_ideal_schedule() {
    for path in traces() {
        let wf = parse_file(&path).unwrap();
        if wf.len() > 120 {
            continue;
        }
        let ilb = interval_lower_bound(&wf, 1.0, 4);
        assert!(ilb >= wf.lower_bound(1.0, 4), "{}", path.display());
        assert!(
            ilb <= simulate(&wf, 1.0, 4, Policy::Rank),
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_searched_replay_completes_every_task_and_says_so() {
    let Some(wf) = trace("srasearch") else { return };
    let scale = nerv_wfformat::scale_for(&wf, 4, Duration::from_millis(20));
    let r = replay(
        &wf,
        &ReplayOptions {
            workers: 4,
            scale,
            baseline: false,
            order: Order::Searched { workers: 4 },
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    assert!(r.nerv.ok);
    assert_eq!(r.nerv.completed, wf.len());
    assert_eq!(r.record().order, "searched");
    assert!(r.simulated <= simulate(&wf, scale, 4, Policy::Rank));
}

#[test]
fn a_record_says_when_no_schedule_can_meet_the_target() {
    // The fork-join at 50 ms a task: bound max(CP, work / 4) = 150 ms, target 1.05 × 150 +
    // 20 = 177.5 ms, but two of the 8 middle tasks share a processor: 200 ms at least,
    // whatever the order.
    let wf = fork_join();
    let opts = ReplayOptions {
        workers: 4,
        scale: 0.05,
        baseline: false,
        ..ReplayOptions::default()
    };
    let mut rec = replay(&wf, &opts).unwrap().record();
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(
        near(rec.lower_bound_s, 0.15) && near(rec.target_s, 0.1775),
        "{rec:?}"
    );
    assert!(near(rec.best_bound_s, 0.2), "{rec:?}");
    assert!(!rec.target_reachable && !rec.meets_target, "{rec:?}");
    // Nothing runs faster than a proven bound.
    assert!(rec.best_bound_ratio >= 1.0, "{rec:?}");
    // A larger bound from the caller raises the best one.
    rec.set_interval_bound(0.25);
    assert!(near(rec.best_bound_s, 0.25), "{rec:?}");
    assert!(near(rec.best_bound_ratio, rec.makespan_s / 0.25));
    let v = serde_json::to_value(&rec).unwrap();
    assert_eq!(v["target_reachable"], false);
}

#[test]
fn tiny_replay_completes_every_task() {
    // Every trace at a scale where its bound is 5 ms: both orders complete every task.
    for path in traces() {
        let wf = parse_file(&path).unwrap();
        let scale = nerv_wfformat::scale_for(&wf, 4, Duration::from_millis(5));
        let r = replay(
            &wf,
            &ReplayOptions {
                workers: 4,
                scale,
                ..ReplayOptions::default()
            },
        )
        .unwrap();
        assert!(r.nerv.ok, "{}", path.display());
        assert_eq!(r.nerv.completed, wf.len());
        let f = r.fcfs.unwrap();
        assert!(f.ok);
        assert_eq!(f.completed, wf.len());
        assert!(r.bounds.lower_bound >= r.bounds.critical_path);
        let rec = serde_json::to_value(r.record()).unwrap();
        for k in [
            "trace",
            "tasks",
            "workers",
            "scale",
            "makespan_s",
            "lower_bound_s",
            "ratio",
            "fcfs_makespan_s",
            "fcfs_ratio",
        ] {
            assert!(rec.get(k).is_some(), "{k}");
        }
    }
}

#[test]
fn replay_with_memory_limit() {
    // Two 1 ms tasks of 600 bytes each under a 1000-byte budget never overlap; a 5000-byte
    // task is clamped to the budget and still runs.
    let tasks = vec![
        Task {
            memory_bytes: Some(600),
            ..Task::new("a", Duration::from_millis(1))
        },
        Task {
            memory_bytes: Some(600),
            ..Task::new("b", Duration::from_millis(1))
        },
        Task {
            memory_bytes: Some(5000),
            ..Task::new("c", Duration::from_millis(1))
        },
    ];
    let wf = Workflow::new("mem", tasks).unwrap();
    let r = replay(
        &wf,
        &ReplayOptions {
            workers: 3,
            scale: 1.0,
            memory_limit: Some(1000),
            baseline: false,
            order: Order::Ranked,
        },
    )
    .unwrap();
    assert!(r.nerv.ok);
    assert_eq!(r.nerv.completed, 3);
    assert!(r.fcfs.is_none());
    assert!(r.nerv.makespan >= Duration::from_millis(3));
}
