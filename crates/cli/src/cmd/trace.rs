//! `nerv trace RUN`: a run's timeline as a Chrome trace-event file.
//!
//! Format: `{"traceEvents": [...], "displayTimeUnit": "ms"}` with one complete ("X") event per
//! task attempt (`ts`, `dur` in microseconds from the run's start, `pid` 1, `tid` the lane),
//! and metadata ("M") events naming the process (the workflow) and the lanes. Perfetto and
//! chrome://tracing open it.
//!
//! Lanes: the journal records when each attempt started and ended, not which worker ran it,
//! so lanes are assigned by interval partitioning: attempts in order of start, each takes the
//! lowest-numbered lane free at its start (a lane is free once its attempt ended, ends at
//! the same instant included). This uses the minimum number of lanes, which equals the peak
//! number of attempts running at once: never more than `-j`.

use crate::args::TraceArgs;
use crate::exit::{CliError, Exit};
use crate::history::{self, journal_error};
use crate::out::outln;
use nerv_journal::{JournalStore, TaskRecord, TaskStatus};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::time::SystemTime;

/// One attempt's interval.
#[derive(Debug, Clone)]
pub struct Span {
    /// The task.
    pub task: String,
    /// The attempt.
    pub attempt: u32,
    /// Its start.
    pub start: SystemTime,
    /// Its end.
    pub end: SystemTime,
    /// How it ended (`running` if it never did).
    pub status: TaskStatus,
    /// Its error.
    pub error: Option<String>,
}

/// Pairs each `running` transition with the next transition of the same task; an attempt
/// that never ended ends at `end_of_run`.
pub fn spans(history: &[TaskRecord], end_of_run: SystemTime) -> Vec<Span> {
    let mut open: HashMap<&str, (u32, SystemTime)> = HashMap::new();
    let mut out = Vec::new();
    for r in history {
        match r.status {
            TaskStatus::Running => {
                if let Some((attempt, start)) = open.remove(r.task.as_str()) {
                    out.push(Span {
                        task: r.task.clone(),
                        attempt,
                        start,
                        end: r.at,
                        status: TaskStatus::Running,
                        error: None,
                    });
                }
                open.insert(&r.task, (r.attempt, r.at));
            }
            TaskStatus::Pending => {}
            _ => {
                if let Some((attempt, start)) = open.remove(r.task.as_str()) {
                    out.push(Span {
                        task: r.task.clone(),
                        attempt,
                        start,
                        end: r.at.max(start),
                        status: r.status,
                        error: r.error.clone(),
                    });
                }
            }
        }
    }
    for (task, (attempt, start)) in open {
        out.push(Span {
            task: task.to_owned(),
            attempt,
            start,
            end: end_of_run.max(start),
            status: TaskStatus::Running,
            error: None,
        });
    }
    out.sort_by(|a, b| (a.start, &a.task).cmp(&(b.start, &b.task)));
    out
}

/// The lane of each span (in `spans`' order, which must be by start): interval partitioning.
pub fn lanes(spans: &[Span]) -> Vec<usize> {
    let mut busy: BinaryHeap<Reverse<(SystemTime, usize)>> = BinaryHeap::new();
    let mut free: BTreeSet<usize> = BTreeSet::new();
    let mut next = 0;
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        while let Some(Reverse((end, lane))) = busy.peek().copied() {
            if end <= s.start {
                busy.pop();
                free.insert(lane);
            } else {
                break;
            }
        }
        let lane = match free.pop_first() {
            Some(l) => l,
            None => {
                next += 1;
                next - 1
            }
        };
        busy.push(Reverse((s.end, lane)));
        out.push(lane);
    }
    out
}

/// Runs `nerv trace`.
pub fn run(args: TraceArgs) -> Result<Exit, CliError> {
    let store = history::open_reader(&args.journal.dir)?;
    let run = history::find_run(&store, &args.run)?;
    let records = store.history(run.id).map_err(journal_error)?;
    let last = records.iter().map(|r| r.at).max().unwrap_or(run.started);
    let end = run.finished.unwrap_or(last).max(last);
    let spans = spans(&records, end);
    let lanes = lanes(&spans);
    let us = |t: SystemTime| history::between(run.started, t).as_micros() as u64;
    let workflow = history::show_path(&run.workflow);
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": {"name": format!("nerv run {} ({}) of {workflow}", run.id, run.name)},
    })];
    let n_lanes = lanes.iter().map(|l| l + 1).max().unwrap_or(0);
    for l in 0..n_lanes {
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": 1, "tid": l,
            "args": {"name": format!("lane {l}")},
        }));
    }
    for (s, lane) in spans.iter().zip(&lanes) {
        events.push(json!({
            "name": s.task, "cat": "task", "ph": "X", "pid": 1, "tid": lane,
            "ts": us(s.start), "dur": us(s.end).saturating_sub(us(s.start)),
            "args": {"attempt": s.attempt, "status": s.status.as_str(), "error": s.error},
        }));
    }
    let doc = json!({"traceEvents": events, "displayTimeUnit": "ms"});
    let text = serde_json::to_string(&doc).expect("JSON values serialize");
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("nerv-trace-{}.json", run.id)));
    if out.as_os_str() == "-" {
        outln!("{text}");
    } else {
        std::fs::write(&out, text).map_err(|e| {
            CliError::Other(format!("cannot write the trace to {}: {e}", out.display()))
        })?;
        eprintln!(
            "wrote {} ({} task attempts on {n_lanes} lanes); open it in https://ui.perfetto.dev or chrome://tracing",
            out.display(),
            spans.len()
        );
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nerv_journal::RunId;
    use std::time::Duration;

    #[test]
    fn lanes_are_the_peak_concurrency() {
        let t0 = SystemTime::UNIX_EPOCH;
        let at = |ms| t0 + Duration::from_millis(ms);
        let rec = |task: &str, status, ms| TaskRecord::new(RunId(1), task, status, 1, at(ms));
        let h = vec![
            rec("a", TaskStatus::Running, 0),
            rec("b", TaskStatus::Running, 1),
            rec("a", TaskStatus::Completed, 10),
            rec("c", TaskStatus::Running, 10),
            rec("b", TaskStatus::Completed, 11),
            rec("d", TaskStatus::Running, 12),
            rec("c", TaskStatus::Failed, 20),
            rec("e", TaskStatus::Running, 25),
        ];
        let s = spans(&h, at(30));
        assert_eq!(s.len(), 5);
        let l = lanes(&s);
        assert_eq!(l, vec![0, 1, 0, 1, 0]);
        assert_eq!(s[4].end, at(30));
    }
}
