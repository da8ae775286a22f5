//! Helpers shared by the integration test suites (`tests.rs`, `prop.rs`).

#![allow(dead_code)] // each test binary uses its own subset

use nerv::{Executor, RunReport, TaskContext, TaskError, TaskResult, TaskStatus};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Panics whose message contains this marker are expected by a test and not printed.
pub const PANIC_MARKER: &str = "nerv-test-panic";

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An executor with `n` workers.
pub fn exec(n: usize) -> Executor {
    Executor::builder().workers(n).build()
}

/// Installs (once per test binary) a panic hook that silences the panics tests provoke on
/// purpose (those whose message contains [`PANIC_MARKER`], and non-string payloads) and
/// prints every other one.
pub fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            // Non-string payloads only come from tests provoking them (assertions panic
            // with strings).
            if msg.is_some_and(|m| !m.contains(PANIC_MARKER)) {
                previous(info);
            }
        }));
    });
}

/// The result of the task with id `id` (which must exist).
pub fn task(report: &RunReport, id: &str) -> TaskResult {
    report
        .task(id)
        .unwrap_or_else(|| panic!("no task `{id}` in the report:\n{report}"))
}

/// The status of the task with id `id`.
pub fn status(report: &RunReport, id: &str) -> TaskStatus {
    task(report, id).status
}

/// Asserts the status of each listed task.
#[track_caller]
pub fn assert_statuses(report: &RunReport, expected: &[(&str, TaskStatus)]) {
    for (id, st) in expected {
        assert_eq!(status(report, id), *st, "status of `{id}` in\n{report}");
    }
}

/// The error message of a task (which must have an error).
#[track_caller]
pub fn error_message(report: &RunReport, id: &str) -> String {
    task(report, id)
        .error
        .unwrap_or_else(|| panic!("task `{id}` has no error in\n{report}"))
        .message()
        .to_string()
}

/// Sync work for a task that should be stopped by a timeout or a cancellation: waits until
/// `cx.is_cancelled()`, giving up (with an error saying so) after `limit` so that a broken
/// engine makes the test fail instead of hang.
pub fn wait_until_cancelled(cx: &TaskContext<'_>, limit: Duration) -> Result<(), TaskError> {
    let t0 = Instant::now();
    while !cx.is_cancelled() {
        if t0.elapsed() > limit {
            return Err(TaskError::msg("never saw is_cancelled() turn true"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Spins (sleeping briefly) until `cond` holds or `limit` passed; returns whether it holds.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// A shared log of events, in the order they happened.
#[derive(Debug)]
pub struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Log(self.0.clone())
    }
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T: Clone> Log<T> {
    /// A new empty log.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends an event.
    pub fn push(&self, v: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(v);
    }
    /// Forgets every event.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    /// The events so far.
    pub fn get(&self) -> Vec<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
