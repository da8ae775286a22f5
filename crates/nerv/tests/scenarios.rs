//! The seed's three scenarios, as tests: each example's `scenario()` runs here, and its
//! outcome is checked precisely (the examples' `main` checks the same facts, less closely).
//!
//! No test asserts a duration; every wait is bounded by [`LIMIT`], reached only on a bug.

#[path = "../examples/multi_agent.rs"]
mod multi_agent;

#[path = "../examples/knowledge_pipeline.rs"]
mod knowledge_pipeline;

#[path = "../examples/reactive_orchestration.rs"]
mod reactive_orchestration;

use std::time::Duration;

/// Bounds every wait of the tests themselves.
const LIMIT: Duration = Duration::from_secs(10);

mod multi_agent_coordination {
    use super::multi_agent::{scenario, AgentMessage};
    use nerv::RunStatus;

    fn msg(from: &str, to: &[&str], body: &str) -> AgentMessage {
        AgentMessage {
            from: from.to_string(),
            to: to.iter().map(|t| t.to_string()).collect(),
            body: body.to_string(),
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn agents_from_the_factory_run_in_dependency_order_talk_and_keep_history() {
        let o = scenario();
        o.verify().unwrap();
        assert_eq!(o.status, RunStatus::Completed);

        // Made by the factory once each; the researcher first (everyone depends on it), the
        // writer last (it depends on everyone).
        assert_eq!(o.created.len(), 4);
        assert_eq!(o.created[0], "researcher");
        assert_eq!(o.created[3], "writer");
        assert_eq!(
            sorted(o.created.clone()),
            ["analyst", "researcher", "reviewer", "writer"]
        );

        // Dependency order: researcher, then analyst and reviewer (in either order), then
        // writer — in the engine's started and completed events alike.
        for order in [&o.started, &o.completed] {
            assert_eq!(order.len(), 4, "{order:?}");
            assert_eq!(order[0], "researcher");
            assert_eq!(sorted(order[1..3].to_vec()), ["analyst", "reviewer"]);
            assert_eq!(order[3], "writer");
        }

        // Each agent found in its inbox exactly what its upstream agents sent it.
        let inbox = |a: &str| o.inboxes[a].clone();
        assert_eq!(o.inboxes.len(), 4);
        assert!(inbox("researcher").is_empty());
        assert_eq!(inbox("analyst"), ["researcher"]);
        assert_eq!(inbox("reviewer"), ["researcher"]);
        assert_eq!(sorted(inbox("writer")), ["analyst", "reviewer"]);

        // The transcript: one message per agent, the parallel pair in either order.
        let first = msg(
            "researcher",
            &["analyst", "reviewer"],
            "I collected 3 facts on solar power",
        );
        let analyst = msg(
            "analyst",
            &["writer"],
            "key finding: 2 of 3 facts say solar power keeps getting cheaper",
        );
        let reviewer = msg(
            "reviewer",
            &["writer"],
            "1 claim needs a source: solar is the cheapest electricity in history",
        );
        let last = msg(
            "writer",
            &["researcher", "analyst", "reviewer"],
            "the draft is ready",
        );
        assert_eq!(o.transcript.len(), 4);
        assert_eq!(o.transcript[0], first);
        let middle = &o.transcript[1..3];
        assert!(
            middle == [analyst.clone(), reviewer.clone()] || middle == [reviewer, analyst],
            "{middle:?}"
        );
        assert_eq!(o.transcript[3], last);

        // History: one version per message, the four past ones kept, version 1 readable.
        assert_eq!(o.version, 4);
        assert_eq!(o.kept_versions, [0, 1, 2, 3]);
        assert_eq!(o.sizes, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
        assert_eq!(o.at_version_1, [first]);

        assert_eq!(
            o.brief,
            "Brief on solar power: 2 of 3 facts say solar power keeps getting cheaper. \
             Caveat: 1 claim needs a source: solar is the cheapest electricity in history. \
             (2 notes from colleagues.)"
        );
    }
}

mod knowledge_pipeline_fan_out_fan_in {
    use super::knowledge_pipeline::{scenario, ProgressSeen};
    use nerv::RunStatus;

    #[test]
    fn documents_found_at_run_time_are_indexed_and_progress_is_reported() {
        let o = scenario();
        o.verify().unwrap();
        assert_eq!(o.status, RunStatus::Completed);
        assert_eq!(
            o.discovered,
            [
                "notes/rust.md",
                "notes/python.txt",
                "data/langs.csv",
                "notes/graphs.md"
            ]
        );
        assert_eq!(o.skipped, ["img/logo.png"]);
        // One task per document, and the merge.
        assert_eq!(
            o.subgraph_completed,
            [
                "index/data-langs-csv",
                "index/merge",
                "index/notes-graphs-md",
                "index/notes-python-txt",
                "index/notes-rust-md",
            ]
        );

        // The whole index: every term, and its documents.
        let rust = "notes/rust.md";
        let py = "notes/python.txt";
        let csv = "data/langs.csv";
        let graphs = "notes/graphs.md";
        let expected: Vec<(&str, Vec<&str>)> = vec![
            ("code", vec![rust]),
            ("data", vec![py, rust]),
            ("dependencies", vec![graphs]),
            ("gil", vec![py]),
            ("graph", vec![graphs]),
            ("graphs", vec![graphs]),
            ("limits", vec![py]),
            ("makes", vec![rust]),
            ("name", vec![csv]),
            ("order", vec![graphs]),
            ("ownership", vec![rust]),
            ("paradigm", vec![csv]),
            ("parallel", vec![graphs, py, rust]),
            ("popular", vec![py]),
            ("prevents", vec![rust]),
            ("python", vec![csv, py]),
            ("races", vec![rust]),
            ("runs", vec![graphs]),
            ("rust", vec![csv, rust]),
            ("safe", vec![rust]),
            ("scripting", vec![csv]),
            ("systems", vec![csv]),
            ("task", vec![graphs]),
            ("tasks", vec![graphs]),
            ("threads", vec![py]),
            ("work", vec![py]),
        ];
        let got: Vec<(&str, Vec<&str>)> = o
            .index
            .iter()
            .map(|(t, d)| (t.as_str(), d.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(got, expected);

        // Progress: one event per line of each document (1..=lines of lines), one per
        // document merged (1..=4 of 4), each task's in order.
        assert_eq!(o.lines, 11);
        assert_eq!(o.progress.len(), 15);
        for (task, lines) in [
            ("index/notes-rust-md", 3),
            ("index/notes-python-txt", 2),
            ("index/data-langs-csv", 3),
            ("index/notes-graphs-md", 3),
            ("index/merge", 4),
        ] {
            let seen: Vec<&ProgressSeen> = o.progress.iter().filter(|p| p.task == task).collect();
            let expected: Vec<ProgressSeen> = (1..=lines)
                .map(|done| ProgressSeen {
                    task: task.to_string(),
                    done,
                    total: Some(lines),
                })
                .collect();
            assert_eq!(seen, expected.iter().collect::<Vec<_>>(), "{task}");
        }
        // The merge reports after every document task completed.
        let first_merge = o.progress.iter().position(|p| p.task == "index/merge");
        assert_eq!(first_merge, Some(11));
        assert_eq!(o.documents_indexed, 4);
        assert_eq!(
            o.summary,
            "4 documents, 26 terms, most shared term: `parallel` in 3"
        );
    }
}

mod reactive {
    use super::reactive_orchestration::{scenario, Ended};
    use super::LIMIT;
    use nerv::{EventFilter, EventKind, TaskDef, TaskStatus, WorkflowManager, WorkflowStatus};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::sync::{mpsc, Mutex};

    fn statuses(e: &Ended) -> BTreeMap<&str, TaskStatus> {
        e.tasks.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    #[test]
    fn the_follow_up_runs_once_after_its_trigger_and_a_failure_raises_one_alert() {
        let o = scenario();
        o.verify().unwrap();

        // Exactly one execution of each workflow.
        let names: Vec<&str> = o.executions.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["alert", "billing-sync", "ingest-news", "refresh-search"]
        );
        for runs in o.executions.values() {
            assert_eq!(runs.len(), 1, "{runs:?}");
        }
        let run = |w: &str| o.runs(w)[0].clone();
        let (news, refresh, billing, alert) = (
            run("ingest-news"),
            run("refresh-search"),
            run("billing-sync"),
            run("alert"),
        );

        assert_eq!(news.status, WorkflowStatus::Completed);
        assert_eq!(news.output, Some(json!("3 articles stored")));
        assert_eq!(billing.status, WorkflowStatus::Failed);
        assert_eq!(
            statuses(&billing),
            BTreeMap::from([
                ("charge", TaskStatus::Failed),
                ("receipt", TaskStatus::Skipped)
            ])
        );
        assert_eq!(refresh.status, WorkflowStatus::Completed);
        assert_eq!(
            refresh.output,
            Some(json!("search index refreshed with 3 articles"))
        );
        assert_eq!(
            statuses(&refresh),
            BTreeMap::from([
                ("notify", TaskStatus::Completed),
                ("reindex", TaskStatus::Completed)
            ])
        );
        assert_eq!(alert.status, WorkflowStatus::Completed);
        assert_eq!(
            alert.output,
            Some(json!("ALERT billing-sync/charge: card declined"))
        );

        // Two reactions (in either order), each naming its cause and what it started; none
        // to the follow-up's or the alert's own events, none to the skipped `receipt`.
        let mut reactions = o.reactions.clone();
        reactions.sort_by(|a, b| a.workflow.cmp(&b.workflow));
        assert_eq!(reactions.len(), 2);
        assert_eq!(reactions[0].workflow, "alert");
        assert_eq!(reactions[0].cause, "billing-sync/charge failed");
        assert_eq!(reactions[0].because_of, billing.execution);
        assert_eq!(reactions[0].started, alert.execution);
        assert_eq!(reactions[1].workflow, "refresh-search");
        assert_eq!(reactions[1].cause, "ingest-news completed");
        assert_eq!(reactions[1].because_of, news.execution);
        assert_eq!(reactions[1].started, refresh.execution);

        // The timeline: each execution started and ended once; the follow-up started after
        // its trigger completed, and the alert after billing-sync started.
        assert_eq!(o.timeline.len(), 8, "{:?}", o.timeline);
        let at = |w: &str, k: EventKind| o.position(w, k).unwrap_or_else(|| panic!("{w} {k}"));
        assert!(
            at("ingest-news", EventKind::WorkflowCompleted)
                < at("refresh-search", EventKind::WorkflowStarted)
        );
        assert!(
            at("refresh-search", EventKind::WorkflowStarted)
                < at("refresh-search", EventKind::WorkflowCompleted)
        );
        assert!(
            at("billing-sync", EventKind::WorkflowStarted)
                < at("alert", EventKind::WorkflowStarted)
        );
        assert!(
            at("alert", EventKind::WorkflowStarted) < at("alert", EventKind::WorkflowCompleted)
        );
        assert!(o
            .position("billing-sync", EventKind::WorkflowFailed)
            .is_some());
        assert!(o.reactor_alive);
    }

    /// What the example's module doc says is safe: a handler of a task's event runs on a
    /// worker, which holds no manager lock, so it may start a workflow directly (a bug here
    /// fails the test after `LIMIT` rather than hanging it).
    #[test]
    fn a_task_event_handler_may_start_a_workflow_directly() {
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let m = WorkflowManager::builder().workers(1).build();
            let a = m.create_workflow("a", "");
            m.add_task(a, TaskDef::new("ingest", |_, _| Ok(json!(1))))
                .unwrap();
            m.add_task(
                a,
                TaskDef::new("after", |_, _| Ok(json!(2))).depends_on("ingest"),
            )
            .unwrap();
            let b = m.create_workflow("b", "");
            m.add_task(b, TaskDef::new("x", |_, _| Ok(json!(3))))
                .unwrap();
            let (tx, rx) = mpsc::channel();
            let tx = Mutex::new(tx);
            let handler_m = m.clone();
            let _s = m
                .events()
                .on(EventFilter::kind(EventKind::TaskCompleted))
                .task("ingest")
                .connect(move |_| {
                    let ex = handler_m.execute_workflow(b, Value::Null);
                    let _ = tx.lock().unwrap().send(ex);
                });
            let ex_a = m.execute_workflow(a, Value::Null).unwrap();
            m.wait(ex_a).unwrap();
            let ex_b = rx.recv_timeout(LIMIT).unwrap().unwrap();
            let report = m.wait(ex_b).unwrap();
            let _ = done_tx.send((report.status(), m.output(ex_b, "x").unwrap()));
        });
        let (status, out) = done_rx.recv_timeout(LIMIT).expect("no deadlock");
        assert_eq!(status, nerv::RunStatus::Completed);
        assert_eq!(out, Some(json!(3)));
    }
}
