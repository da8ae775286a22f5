//! Control flow: trigger rules (when a task runs, given how its dependencies ended) and
//! branches (a task that chooses which of its dependents run).
//!
//! A task's trigger rule is evaluated once every one of its dependencies has finished (nerv
//! never starts a task while a dependency still runs, so its inputs are final; Airflow's
//! `one_success`/`one_failed` fire earlier, nerv waits for the other dependencies). A
//! dependency counts as:
//! - *succeeded*: COMPLETED (and, for a branch task, it chose this task);
//! - *failed*: FAILED, or SKIPPED because of a failure upstream of it (Airflow's
//!   `upstream_failed`);
//! - *skipped*: SKIPPED for any other reason (not chosen by a branch, or by its own rule);
//! - a CANCELLED dependency cancels the task, whatever its rule.

use super::body::{Body, Started};
use super::{Inputs, TaskId};
use crate::context::TaskContext;
use crate::task::{ErrorKind, TaskError};
use nerv_pool::SlotKey;
use std::fmt;
use std::str::FromStr;

/// When a task runs, given how its dependencies ended (Airflow's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TriggerRule {
    /// Every dependency succeeded (the default).
    #[default]
    AllSuccess,
    /// Every dependency finished, however it ended (cleanup tasks).
    AllDone,
    /// Every dependency failed.
    AllFailed,
    /// At least one dependency succeeded.
    OneSuccess,
    /// At least one dependency failed (alerting tasks).
    OneFailed,
    /// No dependency failed (skipped ones are fine: joins after a branch).
    NoneFailed,
}

impl TriggerRule {
    /// The rule's name (`all_success`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::NoneFailed => "none_failed",
        }
    }

    /// Whether a task with this rule runs, given its dependencies' outcomes.
    pub fn admits(self, succeeded: usize, failed: usize, skipped: usize) -> bool {
        let total = succeeded + failed + skipped;
        match self {
            TriggerRule::AllSuccess => succeeded == total,
            TriggerRule::AllDone => true,
            TriggerRule::AllFailed => failed == total,
            TriggerRule::OneSuccess => succeeded > 0,
            TriggerRule::OneFailed => failed > 0,
            TriggerRule::NoneFailed => failed == 0,
        }
    }
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown trigger rule name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown trigger rule `{0}` (expected all_success, all_done, all_failed, one_success, one_failed or none_failed)")]
pub struct UnknownTriggerRule(pub String);

impl FromStr for TriggerRule {
    type Err = UnknownTriggerRule;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "all_success" => TriggerRule::AllSuccess,
            "all_done" => TriggerRule::AllDone,
            "all_failed" => TriggerRule::AllFailed,
            "one_success" => TriggerRule::OneSuccess,
            "one_failed" => TriggerRule::OneFailed,
            "none_failed" => TriggerRule::NoneFailed,
            other => return Err(UnknownTriggerRule(other.to_string())),
        })
    }
}

/// A branch task's choice: the ids of the dependents that run. The others are SKIPPED, and
/// so are their descendants that cannot run without them (unless their trigger rule says
/// otherwise, e.g. a join with [`TriggerRule::NoneFailed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branch(Vec<String>);

impl Branch {
    /// Follows one dependent.
    pub fn to(id: impl Into<String>) -> Self {
        Branch(vec![id.into()])
    }

    /// Follows several dependents.
    pub fn to_all<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Self {
        Branch(ids.into_iter().map(Into::into).collect())
    }

    /// Follows none: every dependent is skipped.
    pub fn none() -> Self {
        Branch(Vec::new())
    }

    /// The chosen dependents' ids.
    pub fn chosen(&self) -> &[String] {
        &self.0
    }

    /// Whether `id` was chosen.
    pub fn follows(&self, id: &str) -> bool {
        self.0.iter().any(|c| c == id)
    }
}

/// A branch task's body: runs the choice, checks it names only dependents, stores it.
pub(crate) struct BranchBody<I, F> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<Branch>,
    pub(crate) f: F,
}

impl<I, F> Body for BranchBody<I, F>
where
    I: Inputs,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<Branch, TaskError>
        + Send
        + Sync
        + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        let arena = cx.arena();
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t: TaskId| super::body::missing(cx, t))?;
        let branch = (self.f)(cx, refs)?;
        let dependents = cx.dependents();
        if let Some(bad) = branch.0.iter().find(|c| !dependents.contains(&c.as_str())) {
            return Err(TaskError::with_kind(
                ErrorKind::InvalidGraph,
                format!(
                    "branch `{}` chose `{bad}`, which is not one of its dependents ({})",
                    cx.task_id(),
                    dependents.join(", ")
                ),
            ));
        }
        super::inputs::set_output(arena, self.out, branch)
            .map_err(|_| TaskError::msg("output already set"))?;
        Ok(Started::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_decide_from_outcomes() {
        use TriggerRule::*;
        // (succeeded, failed, skipped)
        let cases = [
            ((2, 0, 0), [true, true, false, true, false, true]),
            ((1, 1, 0), [false, true, false, true, true, false]),
            ((0, 2, 0), [false, true, true, false, true, false]),
            ((1, 0, 1), [false, true, false, true, false, true]),
            ((0, 0, 2), [false, true, false, false, false, true]),
        ];
        let rules = [
            AllSuccess, AllDone, AllFailed, OneSuccess, OneFailed, NoneFailed,
        ];
        for ((s, f, k), want) in cases {
            for (r, w) in rules.iter().zip(want) {
                assert_eq!(r.admits(s, f, k), w, "{r} with ({s}, {f}, {k})");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for r in [
            TriggerRule::AllSuccess,
            TriggerRule::AllDone,
            TriggerRule::AllFailed,
            TriggerRule::OneSuccess,
            TriggerRule::OneFailed,
            TriggerRule::NoneFailed,
        ] {
            assert_eq!(r.as_str().parse::<TriggerRule>(), Ok(r));
        }
        let e = "sometimes".parse::<TriggerRule>().unwrap_err();
        assert!(e.to_string().contains("`sometimes`"));
    }
}
