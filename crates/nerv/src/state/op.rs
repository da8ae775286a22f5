//! An event waiting in an engine projector's shard ([`Op`]), and how a round applies a batch
//! of them ([`apply_batch`]); see `combiner.rs` for the protocol.

use super::engine::EngineState;
use super::lock;
use super::task::{nanos, Hot};
use crate::event::{Event, EventData, TaskView};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
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

    /// Step 1 of `handle`, for a task event the executor publishes unbuilt and that is not
    /// plain (a plain one is pushed from its fields: `EngineProjector::take_task`): the same op
    /// as `Op::of(&v.to_event())`.
    #[cold]
    pub(super) fn of_task(v: &TaskView<'_>) -> Op {
        Op::Event {
            epoch: 0,
            event: Box::new(v.to_event()),
        }
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

/// A queue of ops (see `combiner.rs`): plain task ops in a fixed array of atomic words behind a
/// one-word spin lock, so that a push costs one read-modify-write (taking the lock; releasing
/// it is a store); other ops, and plain ones once the array is full, in a vector behind a
/// mutex. Each part keeps its ops in push order, so each part's epoch tags never decrease; the
/// two parts are drained separately (ops of one shard in different parts commute, or are
/// ordered by their phase: `combiner.rs`).
pub(super) struct Shard {
    /// The spin lock over `len` and `slots`.
    busy: AtomicBool,
    /// Ops in `slots`.
    len: AtomicUsize,
    /// `Op::Hot`s, 4 words each (see `push_hot`).
    slots: Box<[[AtomicU64; 4]]>,
    /// Every other op, in order.
    others: Mutex<Vec<Op>>,
}

/// Holds a shard's spin lock; releases it when dropped.
struct SpinGuard<'a>(&'a AtomicBool);

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Release);
    }
}

impl Shard {
    /// A shard whose array holds `capacity` plain ops.
    pub(super) fn new(capacity: usize) -> Shard {
        Shard {
            busy: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            slots: (0..capacity.max(1)).map(|_| Default::default()).collect(),
            others: Mutex::new(Vec::new()),
        }
    }

    /// Takes the spin lock. It is held for a few stores (a push) or loads (a drain), so a
    /// waiter spins a little, then yields its core (its holder may have been preempted).
    #[inline]
    fn lock(&self) -> SpinGuard<'_> {
        let mut spins = 0u32;
        while self.busy.swap(true, Acquire) {
            while self.busy.load(Relaxed) {
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        SpinGuard(&self.busy)
    }

    /// Step 2 of `handle`: tags `op` with the current `epoch` (read under the lock of the part
    /// it goes to), pushes it, and sets `dirty`; returns how many ops the part holds.
    pub(super) fn push(&self, op: Op, epoch: &AtomicU32, dirty: &AtomicBool) -> usize {
        match op {
            Op::Hot {
                run,
                ts,
                index,
                attempt,
                hot,
                ..
            } => self.push_hot(run, ts, index, attempt, hot, epoch, dirty),
            op => self.push_other(op, epoch, dirty),
        }
    }

    /// [`push`](Self::push) of an `Op::Hot`, from its fields.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn push_hot(
        &self,
        run: u64,
        ts: u64,
        index: u32,
        attempt: u32,
        hot: Hot,
        epoch: &AtomicU32,
        dirty: &AtomicBool,
    ) -> usize {
        let g = self.lock();
        let n = self.len.load(Relaxed);
        let Some(slot) = self.slots.get(n) else {
            drop(g);
            // Full: into the vector.
            let op = Op::Hot {
                run,
                ts,
                index,
                attempt,
                epoch: 0,
                hot,
            };
            return self.push_other(op, epoch, dirty);
        };
        let e = epoch.load(Relaxed);
        slot[0].store(run, Relaxed);
        slot[1].store(ts, Relaxed);
        slot[2].store(u64::from(index) | u64::from(attempt) << 32, Relaxed);
        slot[3].store(u64::from(e) | (hot as u64) << 32, Relaxed);
        self.len.store(n + 1, Relaxed);
        if !dirty.load(Relaxed) {
            dirty.store(true, Relaxed);
        }
        drop(g);
        n + 1
    }

    #[cold]
    fn push_other(&self, mut op: Op, epoch: &AtomicU32, dirty: &AtomicBool) -> usize {
        let mut q = lock(&self.others);
        op.set_epoch(epoch.load(Relaxed));
        q.push(op);
        if !dirty.load(Relaxed) {
            dirty.store(true, Relaxed);
        }
        q.len()
    }

    /// Step 6 of a round: moves this shard's ops tagged up to `e` to `ops` and the others to
    /// `held` (each part in order). `spare` is an empty vector to swap in for the vector part;
    /// the vector taken out is returned for the next round.
    pub(super) fn drain(
        &self,
        e: u32,
        ops: &mut Vec<Op>,
        held: &mut Vec<Op>,
        mut spare: Vec<Op>,
    ) -> Vec<Op> {
        let start = ops.len();
        {
            let _g = self.lock();
            let n = self.len.load(Relaxed);
            ops.extend(self.slots[..n].iter().map(|s| {
                let w2 = s[2].load(Relaxed);
                let w3 = s[3].load(Relaxed);
                Op::Hot {
                    run: s[0].load(Relaxed),
                    ts: s[1].load(Relaxed),
                    index: w2 as u32,
                    attempt: (w2 >> 32) as u32,
                    epoch: w3 as u32,
                    hot: Hot::ALL[((w3 >> 32) as usize).min(Hot::ALL.len() - 1)],
                }
            }));
            self.len.store(0, Relaxed);
        }
        let cut = start + ops[start..].partition_point(|op| not_after(op.epoch(), e));
        held.extend(ops.drain(cut..));
        std::mem::swap(&mut *lock(&self.others), &mut spare);
        let cut = spare.partition_point(|op| not_after(op.epoch(), e));
        held.extend(spare.drain(cut..));
        ops.append(&mut spare);
        spare
    }

    /// Drops every queued op.
    pub(super) fn clear(&self) {
        let g = self.lock();
        self.len.store(0, Relaxed);
        drop(g);
        lock(&self.others).clear();
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
    fn a_shard_keeps_plain_ops_past_its_array_and_holds_back_later_epochs() {
        let shard = Shard::new(2);
        let dirty = AtomicBool::new(false);
        let epoch = AtomicU32::new(4);
        assert_eq!(shard.push(hot(0), &epoch, &dirty), 1);
        assert!(dirty.load(Relaxed));
        assert_eq!(shard.push(hot(1), &epoch, &dirty), 2);
        assert_eq!(
            shard.push(hot(2), &epoch, &dirty),
            1,
            "the array is full: the vector"
        );
        epoch.store(5, Relaxed);
        shard.push(hot(3), &epoch, &dirty);
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
        assert_eq!(fields(&ops), [(0, 4), (1, 4), (2, 4)]);
        assert_eq!(fields(&held), [(3, 5)]);
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
