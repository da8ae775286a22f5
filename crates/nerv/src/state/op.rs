//! An event waiting in an engine projector's shard ([`Op`]), and how a round applies a batch
//! of them ([`apply_batch`]); see `combiner.rs` for the protocol.

use super::engine::EngineState;
use super::lock;
use super::task::{nanos, Hot};
use crate::event::{Event, EventData, TaskView};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Mutex;

/// An event waiting to be applied, tagged with the epoch it was pushed in.
pub(super) enum Op {
    /// A top-graph task event that carries only an attempt number, as plain values.
    Hot {
        run: u64,
        ts: u64,
        index: u32,
        attempt: u32,
        epoch: u32,
        hot: Hot,
    },
    /// Any other event.
    Event { epoch: u32, event: Box<Event> },
}

/// Where an op goes in a round (step 7).
#[derive(PartialEq, Eq)]
pub(super) enum Phase {
    Start,
    Task,
    End,
}

impl Op {
    /// Step 1 of `handle` (the epoch is set under the shard lock).
    #[inline]
    pub(super) fn of(e: &Event) -> Option<Op> {
        let run = e.source.workflow?;
        if let Some(t) = &e.source.task {
            if !t.subgraph {
                if let Some((hot, attempt)) = Hot::of(&e.data) {
                    if hot == Hot::Pending {
                        // Changes nothing (see `WorkflowState::apply_hot`): not queued.
                        return None;
                    }
                    return Some(Op::Hot {
                        run,
                        ts: nanos(e.timestamp),
                        index: t.index,
                        attempt,
                        epoch: 0,
                        hot,
                    });
                }
            }
        }
        if matches!(e.data, EventData::Custom { .. }) {
            return None;
        }
        Some(Op::Event {
            epoch: 0,
            event: Box::new(e.clone()),
        })
    }

    /// Step 1 of `handle`, for a task event the executor publishes unbuilt that its run's live
    /// table did not take: the same op as `Op::of(&v.to_event())`, built from the view's
    /// fields (a plain top-graph one without an event).
    pub(super) fn of_task(v: &TaskView<'_>) -> Option<Op> {
        if !v.subgraph {
            if let Some((hot, attempt)) = Hot::of(v.data) {
                return (hot != Hot::Pending).then_some(Op::Hot {
                    run: v.workflow,
                    ts: v.ts,
                    index: v.index,
                    attempt,
                    epoch: 0,
                    hot,
                });
            }
        }
        Some(Op::Event {
            epoch: 0,
            event: Box::new(v.to_event()),
        })
    }

    #[inline]
    pub(super) fn epoch(&self) -> u32 {
        match *self {
            Op::Hot { epoch, .. } | Op::Event { epoch, .. } => epoch,
        }
    }

    #[inline]
    pub(super) fn set_epoch(&mut self, e: u32) {
        match self {
            Op::Hot { epoch, .. } | Op::Event { epoch, .. } => *epoch = e,
        }
    }

    /// The run it belongs to.
    pub(super) fn run(&self) -> Option<u64> {
        match self {
            Op::Hot { run, .. } => Some(*run),
            Op::Event { event, .. } => event.source.workflow,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        match self {
            Op::Hot { .. } => Phase::Task,
            Op::Event { event, .. } => match event.data {
                EventData::WorkflowCreated { .. } | EventData::WorkflowStarted { .. } => {
                    Phase::Start
                }
                EventData::WorkflowCompleted { .. }
                | EventData::WorkflowFailed { .. }
                | EventData::WorkflowCancelled { .. } => Phase::End,
                _ => Phase::Task,
            },
        }
    }
}

/// A queue of ops (see `combiner.rs`): a vector behind a mutex, in push order, so its epoch
/// tags never decrease. (The executor's plain top-graph events, nearly all of them, go to live
/// tables instead: `live.rs`.)
pub(super) struct Shard {
    ops: Mutex<Vec<Op>>,
}

impl Shard {
    /// An empty shard.
    pub(super) fn new() -> Shard {
        Shard {
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Step 2 of `handle`: tags `op` with the current `epoch` (read under the lock), pushes it,
    /// and sets `dirty`; returns how many ops the shard holds.
    pub(super) fn push(&self, mut op: Op, epoch: &AtomicU32, dirty: &AtomicBool) -> usize {
        let mut q = lock(&self.ops);
        op.set_epoch(epoch.load(Relaxed));
        q.push(op);
        if !dirty.load(Relaxed) {
            dirty.store(true, Relaxed);
        }
        q.len()
    }

    /// Step 6 of a round: moves this shard's ops tagged up to `e` to `ops` and the others to
    /// `held` (in order). `spare` is an empty vector to swap in; the vector taken out is
    /// returned for the next round.
    pub(super) fn drain(
        &self,
        e: u32,
        ops: &mut Vec<Op>,
        held: &mut Vec<Op>,
        mut spare: Vec<Op>,
    ) -> Vec<Op> {
        std::mem::swap(&mut *lock(&self.ops), &mut spare);
        let cut = spare.partition_point(|op| not_after(op.epoch(), e));
        held.extend(spare.drain(cut..));
        ops.append(&mut spare);
        spare
    }

    /// Drops every queued op.
    pub(super) fn clear(&self) {
        lock(&self.ops).clear();
    }
}

/// Whether `tag` is `e` or an earlier epoch (epochs wrap around).
#[inline]
pub(super) fn not_after(tag: u32, e: u32) -> bool {
    e.wrapping_sub(tag) < 1 << 31
}

/// Consecutive plain events of one run shorter than this are applied one by one; longer ones
/// through one cursor on the run's task vector (see `apply_batch`).
const FOCUS_MIN: usize = 16;

/// Step 7 of a round: applies `ops` (in shard order) in the order of `combiner.rs`'s invariants:
/// workflow created/started events, then task events, then workflow final events.
///
/// A segment of consecutive plain events of one run goes through one cursor (`FocusMut`) on
/// the run's task vector: events of tasks in the leaf it points at reach it without walking the
/// tree again (each step of a walk is an `Arc::make_mut`, two atomic operations). A shard holds
/// one thread's events, and a worker runs neighbouring tasks one after the other, so most
/// events hit the cursor's leaf. (With one queue for all threads, their events interleave:
/// sorting each segment by task index, which is allowed since a plain event changes only its own
/// task and the run's counters, cost more than the walks it saved.)
///
/// `mid` runs between the task events and the final ones (the combiner folds live tables
/// there). Returns whether there was a final event.
pub(super) fn apply_batch(
    state: &mut EngineState,
    ops: &[Op],
    mid: impl FnOnce(&mut EngineState),
) -> bool {
    let mut ends = false;
    for op in ops {
        if let Op::Event { event, .. } = op {
            match op.phase() {
                Phase::Start => state.apply(event),
                Phase::End => ends = true,
                Phase::Task => {}
            }
        }
    }
    let mut i = 0;
    while let Some(op) = ops.get(i) {
        let run = match op {
            Op::Event { event, .. } => {
                if op.phase() == Phase::Task {
                    state.apply(event);
                }
                i += 1;
                continue;
            }
            &Op::Hot { run, .. } => run,
        };
        let start = i;
        while matches!(ops.get(i), Some(&Op::Hot { run: r, .. }) if r == run) {
            i += 1;
        }
        let plain = ops[start..i].iter().filter_map(|op| match *op {
            Op::Hot {
                index,
                hot,
                attempt,
                ts,
                ..
            } => Some((index, hot, attempt, ts)),
            Op::Event { .. } => None,
        });
        let wf = state.workflow_mut(run);
        if i - start < FOCUS_MIN {
            for (index, hot, attempt, ts) in plain {
                wf.apply_hot(index, hot, attempt, ts);
            }
        } else {
            wf.apply_hot_many(plain);
        }
    }
    mid(state);
    if ends {
        for op in ops {
            if let Op::Event { event, .. } = op {
                if op.phase() == Phase::End {
                    state.apply(event);
                }
            }
        }
    }
    ends
}

/// The calling thread's number, for choosing its shard (threads are numbered as they first
/// publish to any projector).
pub(super) fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Relaxed);
    }
    // During thread-local destruction: shard 0 (any shard is correct).
    SLOT.try_with(|s| *s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_is_small() {
        assert!(std::mem::size_of::<Op>() <= 32);
    }

    fn hot(index: u32) -> Op {
        Op::Hot {
            run: 7,
            ts: 11,
            index,
            attempt: 2,
            epoch: 0,
            hot: Hot::Completed,
        }
    }

    #[test]
    fn a_shard_holds_back_later_epochs() {
        let shard = Shard::new();
        let dirty = AtomicBool::new(false);
        let epoch = AtomicU32::new(4);
        assert_eq!(shard.push(hot(0), &epoch, &dirty), 1);
        assert!(dirty.load(Relaxed));
        assert_eq!(shard.push(hot(1), &epoch, &dirty), 2);
        epoch.store(5, Relaxed);
        shard.push(hot(2), &epoch, &dirty);
        let (mut ops, mut held) = (Vec::new(), Vec::new());
        let spare = shard.drain(4, &mut ops, &mut held, Vec::new());
        assert!(spare.is_empty());
        let fields = |ops: &[Op]| -> Vec<(u32, u32)> {
            ops.iter()
                .map(|op| match *op {
                    Op::Hot {
                        index,
                        epoch,
                        run,
                        ts,
                        attempt,
                        hot,
                    } => {
                        assert_eq!((run, ts, attempt, hot), (7, 11, 2, Hot::Completed));
                        (index, epoch)
                    }
                    Op::Event { .. } => unreachable!(),
                })
                .collect()
        };
        assert_eq!(fields(&ops), [(0, 4), (1, 4)]);
        assert_eq!(fields(&held), [(2, 5)]);
        assert_eq!(shard.push(hot(4), &epoch, &dirty), 1, "drained");
        shard.clear();
        let (mut ops, mut held) = (Vec::new(), Vec::new());
        shard.drain(5, &mut ops, &mut held, Vec::new());
        assert!(ops.is_empty() && held.is_empty());
    }

    #[test]
    fn epochs_wrap_around() {
        assert!(not_after(3, 3) && not_after(2, 3) && !not_after(4, 3));
        assert!(not_after(u32::MAX, 0) && !not_after(0, u32::MAX));
    }
}
