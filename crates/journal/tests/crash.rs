//! Crash and resume: a workflow runs in a child process that is killed with SIGKILL at many
//! different moments; a second child resumes the run from the journal. Checked after each:
//! - the resumed run's result equals an uninterrupted run's;
//! - no task whose completion was durable before the kill ran again;
//! - every task ran at least once in all, and the resumed run records every task completed
//!   exactly once;
//! - the journal opens after the kill (the lock of the dead process is taken over).
//!
//! The child is this test binary itself, run with `NERV_CRASH_CHILD=<dir>` and the filter
//! `child_process`: that test does nothing in a normal run.

use nerv::{EventBus, Executor, Graph, RunOptions, TaskError};
use nerv_journal::{resume_options, Journal, Recorder, RunStatus, TaskStatus};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WIDTH: u64 = 24;
const DEPTH: u64 = 6;

/// The workflow: `src` → WIDTH chains of DEPTH steps → `sum`. Every task is persisted and
/// appends its id to `executions.log` when it runs (one `write` with O_APPEND: a line is
/// whole or absent).
fn workflow(dir: &Path) -> (Graph, nerv::Handle<u64>) {
    let log = dir.join("executions.log");
    let mark = move |id: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        f.write_all(format!("{id}\n").as_bytes()).expect("log");
    };
    let mut g = Graph::builder();
    let m = mark.clone();
    let src = g.task("src").run((), move |_, ()| {
        m("src");
        Ok::<_, TaskError>(7u64)
    });
    g.persist(src);
    let mut ends = Vec::new();
    for c in 0..WIDTH {
        let mut prev = src;
        for d in 0..DEPTH {
            let id = format!("c{c}s{d}");
            let m = mark.clone();
            let me = id.clone();
            let h = g.task(&id).run(prev, move |_, x: &u64| {
                std::thread::sleep(Duration::from_millis(2));
                m(&me);
                Ok::<_, TaskError>(x.wrapping_mul(31).wrapping_add(c * 7 + d))
            });
            prev = g.persist(h);
        }
        ends.push(prev);
    }
    let m = mark.clone();
    let sum = g.task("sum").run(ends, move |_, xs| {
        m("sum");
        Ok::<_, TaskError>(xs.iter().fold(0u64, |a, x| a.wrapping_add(*x)))
    });
    g.persist(sum);
    (g.build().expect("valid"), sum)
}

/// What an uninterrupted run computes.
fn expected() -> u64 {
    let mut total = 0u64;
    for c in 0..WIDTH {
        let mut x = 7u64;
        for d in 0..DEPTH {
            x = x.wrapping_mul(31).wrapping_add(c * 7 + d);
        }
        total = total.wrapping_add(x);
    }
    total
}

/// The child: runs (or, with `NERV_CRASH_RESUME`, resumes the latest resumable run of) the
/// workflow with the journal in `dir`, and writes the result to `result`.
#[test]
fn child_process() {
    let Ok(dir) = std::env::var("NERV_CRASH_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let journal = Arc::new(Journal::open_in(&dir).expect("journal opens after a kill"));
    let bus = EventBus::new();
    let _rec = Recorder::new(journal.clone(), "crash").attach(&bus);
    let exec = Executor::builder().workers(2).events(bus).build();
    let (graph, sum) = workflow(&dir);
    let opts = RunOptions::default().name("crash");
    let opts = if std::env::var("NERV_CRASH_RESUME").is_ok() {
        let run = journal
            .store()
            .latest_resumable(Some("crash"))
            .expect("read")
            .expect("a run to resume");
        resume_options(&journal, run.id, opts).expect("restore")
    } else {
        opts
    };
    let report = exec.run_with(&graph, opts);
    let value = report.output(sum).copied().expect("completed");
    std::fs::write(dir.join("result"), value.to_string()).expect("result");
}

fn child(dir: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("NERV_CRASH_CHILD", dir)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    if resume {
        cmd.env("NERV_CRASH_RESUME", "1");
    }
    cmd
}

fn executions(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("executions.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn killed_at_many_points_resumes_without_losing_or_redoing_work() {
    if std::env::var("NERV_CRASH_CHILD").is_ok() {
        return;
    }
    let total_tasks = (WIDTH * DEPTH + 2) as usize;
    // How long an uninterrupted run takes here, to spread the kills over it.
    let probe = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    assert!(child(probe.path(), false).status().unwrap().success());
    let span = t0.elapsed();
    assert_eq!(
        std::fs::read_to_string(probe.path().join("result")).unwrap(),
        expected().to_string()
    );

    let seeds = 30usize;
    let mut interrupted = 0;
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        // Kill once the child has run `seed / seeds` of the tasks (so that kills spread over
        // the run however fast this machine is), plus 0-2 ms: some land between a task's end
        // and its record's commit, some during a commit.
        let target = seed * total_tasks / seeds;
        let mut c = child(dir.path(), false).spawn().unwrap();
        let t0 = Instant::now();
        while executions(dir.path()).len() < target && t0.elapsed() < span * 20 {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(seed as u64 % 3));
        let at = t0.elapsed();
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();

        // What the journal holds as durable after the kill.
        let before: HashSet<String> = executions(dir.path()).into_iter().collect();
        let (durable, first_run) = {
            let journal = Journal::open_in(dir.path()).expect("opens after a kill");
            let runs = journal.store().runs().unwrap();
            match runs.first() {
                Some(r) => {
                    let done: HashSet<String> = journal
                        .store()
                        .tasks(r.id)
                        .unwrap()
                        .into_iter()
                        .filter(|t| t.status == TaskStatus::Completed && t.has_output)
                        .map(|t| t.task)
                        .collect();
                    (done, Some(r.clone()))
                }
                None => (HashSet::new(), None),
            }
        };
        // Every durable completion really ran before the kill.
        for t in &durable {
            assert!(
                before.contains(t),
                "seed {seed}: {t} recorded but never ran"
            );
        }
        let finished = first_run.as_ref().map(|r| r.status) == Some(RunStatus::Completed);
        if first_run.is_none() || finished {
            // Killed before the run was recorded, or after it ended: nothing to resume.
            continue;
        }
        interrupted += 1;
        eprintln!(
            "seed {seed}: killed at {at:?}: {} tasks durable, {} ran before the kill",
            durable.len(),
            before.len()
        );
        let log_len = executions(dir.path()).len();
        let status = child(dir.path(), true).status().unwrap();
        assert!(status.success(), "seed {seed}: the resume failed");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("result")).unwrap(),
            expected().to_string(),
            "seed {seed}: the resumed result differs"
        );
        let after = &executions(dir.path())[log_len..];
        for t in after {
            assert!(
                !durable.contains(t),
                "seed {seed}: {t} completed durably before the kill and ran again"
            );
        }
        // At least once: every task ran before the kill or after it.
        let ran: HashSet<&String> = before.iter().chain(after.iter()).collect();
        assert_eq!(ran.len(), total_tasks, "seed {seed}: a task never ran");
        // The resumed run records every task completed, once (the store keeps one row per
        // task; a second completion would be refused, not duplicated).
        let journal = Journal::open_in(dir.path()).unwrap();
        let runs = journal.store().runs().unwrap();
        let resumed = &runs[0];
        assert_eq!(resumed.status, RunStatus::Completed, "seed {seed}");
        assert_eq!(resumed.resumed_from, first_run.map(|r| r.id), "seed {seed}");
        let tasks = journal.store().tasks(resumed.id).unwrap();
        let by_status: HashMap<TaskStatus, usize> =
            tasks.iter().fold(HashMap::new(), |mut m, t| {
                *m.entry(t.status).or_default() += 1;
                m
            });
        assert_eq!(
            by_status.get(&TaskStatus::Completed),
            Some(&total_tasks),
            "seed {seed}: {by_status:?}"
        );
        let outputs = journal.store().completed_outputs(resumed.id).unwrap();
        assert_eq!(outputs.len(), total_tasks, "seed {seed}");
        assert!(outputs.iter().all(|(_, o)| o.is_some()), "seed {seed}");
    }
    assert!(
        interrupted >= 20,
        "only {interrupted} of {seeds} kills interrupted the run"
    );
}

#[test]
fn an_interrupted_run_is_resumable_and_a_cancelled_one_is_not() {
    if std::env::var("NERV_CRASH_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open_in(dir.path()).unwrap());
    let bus = EventBus::new();
    let rec = Recorder::new(journal.clone(), "w");
    let _sub = rec.attach(&bus);
    let exec = Executor::builder().workers(1).events(bus).build();
    let mut g = Graph::builder();
    g.task("wait").run_async((), |ctx, ()| {
        let stop = ctx.cancellation();
        async move {
            stop.cancelled().await;
            Err::<(), _>(TaskError::cancelled())
        }
    });
    let graph = g.build().unwrap();
    let run = exec.start_with(&graph, RunOptions::default().name("w"));
    run.cancel();
    run.wait();
    let store = journal.store();
    assert_eq!(store.runs().unwrap()[0].status, RunStatus::Cancelled);
    assert!(store.latest_resumable(Some("w")).unwrap().is_none());

    rec.interrupt();
    let run = exec.start_with(&graph, RunOptions::default().name("w"));
    run.cancel();
    run.wait();
    let runs = store.runs().unwrap();
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(
        store.latest_resumable(Some("w")).unwrap().map(|r| r.id),
        Some(runs[0].id)
    );
}
