//! One task's state in a run ([`TaskState`]) and its transitions, which commute: the state
//! after a task's events does not depend on the order they are applied in.
//!
//! Invariants:
//! - The status only moves forward, PENDING → RUNNING → final; the first final event wins (the
//!   executor publishes one per task).
//! - `attempts` is the highest attempt any event reported; `started` the earliest start;
//!   `retries` the number of `TaskRetrying` events; the error the one of the latest attempt (a
//!   failure over a retry of the same attempt); the progress the latest by timestamp (then by
//!   units done); memo flags accumulate. Each is a max, a min, a count or a union: so the engine
//!   projector may apply the events of one task published from two threads in either order.
//! - A `TaskState` is 32 bytes (a run keeps one per task): times are nanoseconds since the Unix
//!   epoch in a `u64` (0: not yet), and what is rare sits behind one shared pointer.

use crate::event::{EventData, Progress};
use crate::task::{TaskError, TaskStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 for a time before it).
#[inline]
pub(crate) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

pub(crate) fn time(ns: u64) -> Option<SystemTime> {
    (ns != 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns))
}

/// The task events that carry nothing but an attempt number: the engine projector queues them
/// as plain values (no clone of the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Hot {
    Pending,
    Started,
    Completed,
    Cancelled,
    MemoHit,
    MemoMiss,
}

impl Hot {
    /// The plain form of `data` and its attempt, if it has one.
    #[inline]
    pub(crate) fn of(data: &EventData) -> Option<(Hot, u32)> {
        Some(match *data {
            EventData::TaskPending => (Hot::Pending, 0),
            EventData::TaskStarted { attempt } => (Hot::Started, attempt),
            EventData::TaskCompleted { attempt, .. } => (Hot::Completed, attempt),
            EventData::TaskCancelled { attempt } => (Hot::Cancelled, attempt),
            EventData::MemoHit => (Hot::MemoHit, 0),
            EventData::MemoMiss => (Hot::MemoMiss, 0),
            _ => return None,
        })
    }
}

pub(super) const MEMO_HIT: u8 = 1;
pub(super) const MEMO_MISS: u8 = 2;

/// One task of one run: status, attempts, times, and its last error, skip cause and progress.
///
/// Compact (32 bytes) because a run keeps one per task: what is rare (an error, a skip cause,
/// progress) is behind one shared pointer, allocated by the first such event.
#[derive(Debug, Clone)]
pub struct TaskState {
    started: u64,
    ended: u64,
    extra: Option<Arc<TaskExtra>>,
    attempts: u32,
    status: TaskStatus,
    memo: u8,
}

/// What few tasks have.
#[derive(Debug, Clone, Default)]
struct TaskExtra {
    error: Option<TaskError>,
    /// Which event `error` came from: `2 * attempt`, plus 1 for a `TaskFailed`.
    error_rank: u32,
    cause: Option<Arc<str>>,
    progress: Option<Progress>,
    progress_ts: u64,
    retries: u32,
}

impl Default for TaskState {
    fn default() -> Self {
        Self::PENDING
    }
}

impl TaskState {
    /// A task that has not started.
    pub(crate) const PENDING: TaskState = TaskState {
        started: 0,
        ended: 0,
        extra: None,
        attempts: 0,
        status: TaskStatus::Pending,
        memo: 0,
    };

    /// Its status.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Attempts made: the highest attempt number any of its events reported (0 if it never
    /// started).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How many attempts failed and were retried (`TaskRetrying` events).
    pub fn retries(&self) -> u32 {
        self.extra.as_ref().map_or(0, |x| x.retries)
    }

    /// When its first attempt started.
    pub fn started(&self) -> Option<SystemTime> {
        time(self.started)
    }

    /// When it reached its final status.
    pub fn ended(&self) -> Option<SystemTime> {
        time(self.ended)
    }

    /// From its first start to its end, if both are known.
    pub fn duration(&self) -> Option<Duration> {
        (self.started != 0 && self.ended >= self.started)
            .then(|| Duration::from_nanos(self.ended - self.started))
    }

    /// The error of its last failed attempt (kept if a later attempt succeeded).
    pub fn error(&self) -> Option<&TaskError> {
        self.extra.as_ref()?.error.as_ref()
    }

    /// For a skipped task, the failed upstream task that caused the skip.
    pub fn skip_cause(&self) -> Option<&str> {
        self.extra.as_ref()?.cause.as_deref()
    }

    /// The last progress it reported.
    pub fn progress(&self) -> Option<&Progress> {
        self.extra.as_ref()?.progress.as_ref()
    }

    /// For a memoized task: whether its output was found in the memo store.
    pub fn memo_hit(&self) -> Option<bool> {
        match self.memo {
            0 => None,
            m => Some(m & MEMO_HIT != 0),
        }
    }

    fn extra_mut(&mut self) -> &mut TaskExtra {
        Arc::make_mut(self.extra.get_or_insert_with(Default::default))
    }

    fn start(&mut self, attempt: u32, ts: u64) {
        if !self.status.is_final() {
            self.status = TaskStatus::Running;
        }
        self.attempts = self.attempts.max(attempt);
        if self.started == 0 || (ts != 0 && ts < self.started) {
            self.started = ts;
        }
    }

    /// Moves to the final `status`; false if it already had one.
    fn finish(&mut self, status: TaskStatus, attempt: u32, ts: u64) -> bool {
        self.attempts = self.attempts.max(attempt);
        if self.status.is_final() {
            return false;
        }
        self.status = status;
        self.ended = ts;
        true
    }

    /// Keeps `error` if it comes from a later attempt than the one kept.
    fn set_error(&mut self, error: &TaskError, rank: u32) {
        let x = self.extra_mut();
        if x.error.is_none() || rank > x.error_rank {
            x.error = Some(error.clone());
            x.error_rank = rank;
        }
    }

    #[inline]
    pub(crate) fn apply_hot(&mut self, hot: Hot, attempt: u32, ts: u64) {
        match hot {
            // Pending is where a task starts; the event only creates a subgraph's task.
            Hot::Pending => {}
            Hot::Started => self.start(attempt, ts),
            Hot::Completed => {
                self.finish(TaskStatus::Completed, attempt, ts);
            }
            Hot::Cancelled => {
                self.finish(TaskStatus::Cancelled, attempt, ts);
            }
            Hot::MemoHit => self.memo |= MEMO_HIT,
            Hot::MemoMiss => self.memo |= MEMO_MISS,
        }
    }

    /// Merges the plain events a live table holds for this task (`live.rs`): the state after
    /// them, as if each were applied with [`apply_hot`](Self::apply_hot); merging the same
    /// slot again changes nothing.
    #[inline]
    pub(crate) fn merge_plain(&mut self, p: super::live::Plain) {
        if p.started != 0 || p.status() == TaskStatus::Running {
            self.start(p.attempts, p.started);
        }
        let status = p.status();
        if status.is_final() {
            self.finish(status, p.attempts, p.ended);
        } else {
            self.attempts = self.attempts.max(p.attempts);
        }
        self.memo |= p.memo;
    }

    /// The transition of one task event (see the module doc: the result does not depend on
    /// the order of one task's events).
    pub(crate) fn apply(&mut self, data: &EventData, ts: u64) {
        if let Some((hot, attempt)) = Hot::of(data) {
            return self.apply_hot(hot, attempt, ts);
        }
        match data {
            EventData::TaskRetrying { attempt, error, .. } => {
                self.start(*attempt, 0);
                self.set_error(error, attempt.saturating_mul(2));
                self.extra_mut().retries += 1;
            }
            EventData::TaskFailed { attempt, error } => {
                self.finish(TaskStatus::Failed, *attempt, ts);
                self.set_error(error, attempt.saturating_mul(2) | 1);
            }
            EventData::TaskSkipped { cause } => {
                self.finish(TaskStatus::Skipped, 0, ts);
                if let Some(cause) = cause {
                    let x = self.extra_mut();
                    if x.cause.is_none() {
                        x.cause = Some(cause.clone());
                    }
                }
            }
            EventData::TaskProgress(p) => {
                let x = self.extra_mut();
                let newer =
                    (ts, p.done) >= (x.progress_ts, x.progress.as_ref().map_or(0, |q| q.done));
                if x.progress.is_none() || newer {
                    x.progress = Some(p.clone());
                    x.progress_ts = ts;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_is_compact() {
        assert!(std::mem::size_of::<TaskState>() <= 32);
    }

    fn all_orders(events: &[(EventData, u64)]) -> Vec<Vec<usize>> {
        // Every permutation of the indices (few events).
        fn go(rest: Vec<usize>, acc: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if rest.is_empty() {
                out.push(acc.clone());
            }
            for (k, &i) in rest.iter().enumerate() {
                let mut r = rest.clone();
                r.remove(k);
                acc.push(i);
                go(r, acc, out);
                acc.pop();
            }
        }
        let mut out = Vec::new();
        go((0..events.len()).collect(), &mut Vec::new(), &mut out);
        out
    }

    #[test]
    fn a_task_s_events_commute() {
        let err = |m: &str| TaskError::msg(m);
        let events = [
            (EventData::TaskStarted { attempt: 1 }, 10),
            (
                EventData::TaskRetrying {
                    attempt: 1,
                    error: err("one"),
                    delay: Duration::ZERO,
                },
                11,
            ),
            (EventData::TaskStarted { attempt: 2 }, 12),
            (
                EventData::TaskProgress(Progress {
                    done: 5,
                    total: None,
                    message: None,
                }),
                13,
            ),
            (
                EventData::TaskFailed {
                    attempt: 2,
                    error: err("two"),
                },
                14,
            ),
            (EventData::MemoMiss, 9),
        ];
        for order in all_orders(&events) {
            let mut t = TaskState::PENDING;
            for &i in &order {
                t.apply(&events[i].0, events[i].1);
            }
            let got = (
                t.status(),
                t.attempts(),
                t.retries(),
                t.started(),
                t.ended(),
                t.error().map(|e| e.message().to_string()),
                t.progress().map(|p| p.done),
                t.memo_hit(),
            );
            let want = (
                TaskStatus::Failed,
                2,
                1,
                time(10),
                time(14),
                Some("two".to_string()),
                Some(5),
                Some(false),
            );
            assert_eq!(got, want, "order {order:?}");
        }
    }
}
