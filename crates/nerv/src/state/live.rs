//! A run's live task table ([`LiveRun`]): where the engine projector's task hook writes the
//! plain events of an executor's top-graph tasks, and where a round folds them from into the
//! working copy (`combiner.rs`; why: `README.md`, *The live table*).
//!
//! Invariants:
//! - One slot per top-graph task, indexed like the graph: four atomic words, the merge of every
//!   plain event (`Hot`) written to it so far: attempts and status packed in one word; the
//!   earliest start time; the time of the final event; memo flags. The merge is the one
//!   `TaskState::apply_hot` does (max, min, first final, union), so folding a slot into a
//!   `TaskState` any number of times, at any point, gives the state after those events, and
//!   the merge with the task's other events commutes as theirs do (`task.rs`).
//! - A slot has one writer at a time, in order: the executor publishes a task's events from the
//!   thread that owns the task (its claim in the pool), one after the other, each after the
//!   previous one happened (retries and async tasks hand the task over with a synchronizing
//!   operation), with attempts that never decrease and one final event. So the latest event's
//!   attempt and status are the merge's, the first attempt's start is the earliest, and a write
//!   is stores only (no load of a line another worker may hold, no read-modify-write); the times
//!   are stored before the packed word (Release), so a reader that sees a status sees its time.
//! - Each shard (a writing thread's number, as for the projector's queues) has a bitmap with a
//!   bit per 64 tasks. A write stores its bit after the slot (Release), unconditionally (a load
//!   and a store to a line that stays in the writer's cache). A fold swaps each bitmap word to
//!   zero (Acquire) and folds the chunks whose bits were set. A write whose bitmap store raced
//!   with the swap may set stale bits again: their chunks are folded once more, which changes
//!   nothing. So once a write has returned, either a fold that swapped after it sees the slot,
//!   or the chunk's bit is set for the next fold.
//! - `attached` is true from the run's start until its end is applied (or the run is forgotten
//!   or reset); a detached table takes no event, so later events take the queue path.
//! - Each shard also counts its writes; every `fold_every` of them a write asks for a fold
//!   ([`Took::FoldDue`]), so that folding keeps pace with the run on the threads that write,
//!   instead of waiting for its end.
//! - The slots may be recycled from an earlier table ([`LiveRun::recycle`] zeroes them): a
//!   run's table then costs no fresh memory (a page fault per 4 KiB is what a fresh 10^6-task
//!   table costs most).

use super::engine::WorkflowState;
use super::op::thread_slot;
use super::task::Hot;
use crate::event::TaskView;
use crate::task::TaskStatus;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Tasks per bitmap bit.
const CHUNK: usize = 64;

/// The merged plain events of one task, as read from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Plain {
    pub(crate) attempts: u32,
    /// `TaskStatus as u8`: Pending, Running, or the first final plain status.
    pub(crate) status: u8,
    /// Memo flags (`task.rs`).
    pub(crate) memo: u8,
    /// Earliest start (0: none).
    pub(crate) started: u64,
    /// Time of the first final event (0: none).
    pub(crate) ended: u64,
}

impl Plain {
    fn pack(attempts: u32, status: TaskStatus) -> u64 {
        u64::from(attempts) | (status as u64) << 32
    }

    /// The status, as a `TaskStatus`.
    pub(crate) fn status(self) -> TaskStatus {
        match self.status {
            0 => TaskStatus::Pending,
            1 => TaskStatus::Running,
            2 => TaskStatus::Completed,
            3 => TaskStatus::Failed,
            4 => TaskStatus::Skipped,
            _ => TaskStatus::Cancelled,
        }
    }
}

/// Per task: attempts and status, started, ended, memo flags (zero: no event). At least as
/// many as the table's tasks; recycled between tables.
pub(crate) type Slots = Box<[[AtomicU64; 4]]>;

/// Zeroed slots for `n` tasks (fresh memory: its pages are faulted in as tasks write them).
pub(crate) fn zeroed_slots(n: usize) -> Slots {
    (0..n).map(|_| Default::default()).collect()
}

/// One shard's marks: a bit per `CHUNK` tasks, and its writes since it last asked for a fold.
#[repr(align(128))]
struct Marks {
    writes: AtomicU64,
    bits: Box<[AtomicU64]>,
}

/// What [`LiveRun::take`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Took {
    /// Not taken (see `take`).
    No,
    /// Written.
    Yes,
    /// Written, and the writer's shard asks for a fold.
    FoldDue,
}

/// One run's live table (see the module doc).
pub(crate) struct LiveRun {
    run: u64,
    /// Top-graph tasks.
    n: usize,
    slots: Slots,
    marks: Box<[Marks]>,
    attached: AtomicBool,
    fold_every: u64,
}

impl LiveRun {
    /// The table of run `run`'s `tasks` top-graph tasks, for `shards` writing shards (a power
    /// of two), in `slots` (zeroed, at least `tasks` long; fresh ones if `None`), asking for a
    /// fold every `fold_every` writes of a shard.
    pub(crate) fn new(
        run: u64,
        tasks: usize,
        shards: usize,
        slots: Option<Slots>,
        fold_every: u64,
    ) -> LiveRun {
        let words = tasks.div_ceil(CHUNK).div_ceil(64);
        let slots = slots
            .filter(|s| s.len() >= tasks)
            .unwrap_or_else(|| zeroed_slots(tasks));
        LiveRun {
            run,
            n: tasks,
            slots,
            marks: (0..shards.max(1))
                .map(|_| Marks {
                    writes: AtomicU64::new(0),
                    bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
            attached: AtomicBool::new(true),
            fold_every: fold_every.max(1),
        }
    }

    /// Its number of tasks.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Takes its slots out, zeroed, for another table (this one has none left).
    pub(crate) fn recycle(&mut self) -> Slots {
        let mut slots = std::mem::take(&mut self.slots);
        for s in slots.iter_mut() {
            for w in s.iter_mut() {
                *w.get_mut() = 0;
            }
        }
        self.n = 0;
        slots
    }

    /// Stops taking events (see the module doc).
    pub(crate) fn detach(&self) {
        self.attached.store(false, Relaxed);
    }

    /// Whether it still takes events.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Relaxed)
    }

    /// Writes a plain event of task `index` into its slot (`Took::No`: out of range).
    #[inline]
    fn write(&self, index: u32, hot: Hot, attempt: u32, ts: u64) -> Took {
        if index as usize >= self.n {
            return Took::No;
        }
        let slot = &self.slots[index as usize];
        match hot {
            Hot::Pending => return Took::Yes,
            Hot::Started => {
                // The first attempt's start is the earliest (see the module doc).
                if attempt <= 1 || slot[1].load(Relaxed) == 0 {
                    slot[1].store(ts, Relaxed);
                }
                slot[0].store(Plain::pack(attempt, TaskStatus::Running), Release);
            }
            Hot::Completed | Hot::Cancelled => {
                let status = if hot == Hot::Completed {
                    TaskStatus::Completed
                } else {
                    TaskStatus::Cancelled
                };
                slot[2].store(ts, Relaxed);
                slot[0].store(Plain::pack(attempt, status), Release);
            }
            Hot::MemoHit | Hot::MemoMiss => {
                let bit = if hot == Hot::MemoHit {
                    super::task::MEMO_HIT
                } else {
                    super::task::MEMO_MISS
                };
                let m = slot[3].load(Relaxed);
                slot[3].store(m | u64::from(bit), Release);
            }
        }
        let marks = &self.marks[thread_slot() & (self.marks.len() - 1)];
        let chunk = index as usize / CHUNK;
        let word = &marks.bits[chunk / 64];
        word.store(word.load(Relaxed) | 1 << (chunk % 64), Release);
        // A shard shared by two threads may lose a count: the fold comes a little later.
        let writes = marks.writes.load(Relaxed) + 1;
        if writes >= self.fold_every {
            marks.writes.store(0, Relaxed);
            Took::FoldDue
        } else {
            marks.writes.store(writes, Relaxed);
            Took::Yes
        }
    }

    /// Folds every chunk marked since the last fold into `wf` (the run's state in the working
    /// copy; see the module doc); returns whether any was.
    pub(crate) fn fold(&self, wf: &mut WorkflowState) -> bool {
        let mut chunks: Vec<u32> = Vec::new();
        for marks in self.marks.iter() {
            for (k, word) in marks.bits.iter().enumerate() {
                if word.load(Relaxed) == 0 {
                    continue;
                }
                let mut set = word.swap(0, Acquire);
                while set != 0 {
                    chunks.push((k * 64) as u32 + set.trailing_zeros());
                    set &= set - 1;
                }
            }
        }
        if chunks.is_empty() {
            return false;
        }
        // In index order, each chunk once (two shards may have marked it), through one cursor.
        chunks.sort_unstable();
        chunks.dedup();
        let n = self.n;
        wf.merge_plain(
            chunks.into_iter().map(|c| {
                let lo = c as usize * CHUNK;
                lo..(lo + CHUNK).min(n)
            }),
            |i| self.read(i),
        );
        true
    }

    /// Task `i`'s slot, unless no plain event reached it.
    #[inline]
    fn read(&self, i: usize) -> Option<Plain> {
        let slot = &self.slots[i];
        let w = slot[0].load(Acquire);
        let memo = slot[3].load(Acquire);
        let p = Plain {
            attempts: w as u32,
            status: (w >> 32) as u8,
            memo: memo as u8,
            started: slot[1].load(Relaxed),
            ended: slot[2].load(Relaxed),
        };
        (w != 0 || memo != 0 || p.started != 0).then_some(p)
    }

    /// Takes an executor's task event if it is a plain one of a top-graph task of this run and
    /// the table is attached.
    #[inline]
    pub(crate) fn take(&self, v: &TaskView<'_>) -> Took {
        if v.subgraph || v.workflow != self.run || !self.is_attached() {
            return Took::No;
        }
        match Hot::of(v.data) {
            Some((hot, attempt)) => self.write(v.index, hot, attempt, v.ts),
            None => Took::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventData;
    use crate::state::task::TaskState;
    use std::sync::Arc;

    /// The names of a graph of `n` tasks (all `t`).
    fn table(n: usize) -> Arc<[Arc<str>]> {
        let id: Arc<str> = Arc::from("t");
        (0..n).map(|_| id.clone()).collect()
    }

    fn view<'a>(
        names: &'a Arc<[Arc<str>]>,
        index: u32,
        ts: u64,
        data: &'a EventData,
    ) -> TaskView<'a> {
        TaskView {
            workflow: 7,
            names,
            index,
            subgraph: false,
            ts,
            data,
        }
    }

    #[test]
    fn a_fold_gives_the_state_of_the_events_one_by_one() {
        // Each task's events as the executor publishes them: in order, one final event.
        let name = table(1000);
        let events = [
            (1, 10, EventData::TaskStarted { attempt: 1 }),
            (1, 11, EventData::MemoMiss),
            (1, 12, EventData::TaskStarted { attempt: 2 }),
            (
                1,
                13,
                EventData::TaskCompleted {
                    attempt: 2,
                    output: None,
                },
            ),
            (70, 20, EventData::TaskStarted { attempt: 1 }),
            (129, 30, EventData::TaskCancelled { attempt: 0 }),
            (129, 31, EventData::MemoHit),
            (3, 5, EventData::TaskPending),
        ];
        let live = LiveRun::new(7, 130, 4, None, 1 << 20);
        let mut wf = WorkflowState::with_pending(130);
        let mut want = vec![TaskState::PENDING; 130];
        for (k, (i, ts, data)) in events.iter().enumerate() {
            assert_eq!(live.take(&view(&name, *i, *ts, data)), Took::Yes);
            want[*i as usize].apply(data, *ts);
            if k % 3 == 0 {
                live.fold(&mut wf); // folds in between change nothing in the end
            }
        }
        live.fold(&mut wf);
        live.fold(&mut wf);
        for (i, w) in want.iter().enumerate() {
            let got = wf.task_at(i).unwrap();
            assert_eq!(
                (
                    got.status(),
                    got.attempts(),
                    got.started(),
                    got.ended(),
                    got.memo_hit()
                ),
                (
                    w.status(),
                    w.attempts(),
                    w.started(),
                    w.ended(),
                    w.memo_hit()
                ),
                "task {i}"
            );
        }
        assert_eq!(wf.count(TaskStatus::Completed), 1);
        assert_eq!(wf.count(TaskStatus::Running), 1);
        assert_eq!(wf.count(TaskStatus::Cancelled), 1);
        assert_eq!(wf.count(TaskStatus::Pending), 127);
    }

    #[test]
    fn a_table_takes_only_its_run_s_plain_top_graph_events_while_attached() {
        let name = table(1000);
        let live = LiveRun::new(7, 2, 1, None, 2);
        let started = EventData::TaskStarted { attempt: 1 };
        let progress = EventData::TaskProgress(crate::event::Progress {
            done: 1,
            total: None,
            message: None,
        });
        assert_eq!(live.take(&view(&name, 0, 1, &started)), Took::Yes);
        assert_eq!(
            live.take(&view(&name, 0, 1, &started)),
            Took::FoldDue,
            "2 writes"
        );
        assert_eq!(live.take(&view(&name, 0, 1, &started)), Took::Yes);
        assert_eq!(
            live.take(&view(&name, 2, 1, &started)),
            Took::No,
            "out of range"
        );
        assert_eq!(
            live.take(&view(&name, 0, 1, &progress)),
            Took::No,
            "not plain"
        );
        let mut other = view(&name, 0, 1, &started);
        other.workflow = 8;
        assert_eq!(live.take(&other), Took::No, "another run");
        let mut sub = view(&name, 0, 1, &started);
        sub.subgraph = true;
        assert_eq!(live.take(&sub), Took::No, "a subgraph's task");
        live.detach();
        assert_eq!(
            live.take(&view(&name, 1, 1, &started)),
            Took::No,
            "detached"
        );
    }

    #[test]
    fn writers_on_two_threads_lose_nothing_to_concurrent_folds() {
        let n = 20_000u32;
        let name = table(n as usize);
        let live = Arc::new(LiveRun::new(7, n as usize, 2, None, 100));
        let mut wf = WorkflowState::with_pending(n as usize);
        std::thread::scope(|s| {
            for half in 0..2u32 {
                let live = live.clone();
                let name = name.clone();
                s.spawn(move || {
                    for i in (half..n).step_by(2) {
                        let st = EventData::TaskStarted { attempt: 1 };
                        let done = EventData::TaskCompleted {
                            attempt: 1,
                            output: None,
                        };
                        assert_ne!(live.take(&view(&name, i, 1 + u64::from(i), &st)), Took::No);
                        assert_ne!(
                            live.take(&view(&name, i, 2 + u64::from(i), &done)),
                            Took::No
                        );
                    }
                });
            }
            // Folds while the writers write.
            for _ in 0..200 {
                live.fold(&mut wf);
            }
        });
        live.fold(&mut wf);
        assert_eq!(wf.count(TaskStatus::Completed), n as usize);
        for i in 0..n as usize {
            let t = wf.task_at(i).unwrap();
            assert_eq!(t.duration(), Some(std::time::Duration::from_nanos(1)));
        }
    }

    #[test]
    fn a_fold_counts_slots_past_the_state_s_tasks_as_ignored() {
        let name = table(1000);
        let done = EventData::TaskCompleted {
            attempt: 1,
            output: None,
        };
        let live = LiveRun::new(7, 200, 2, None, 1000);
        for i in [5, 63, 64, 99, 100, 150, 199] {
            assert_eq!(live.take(&view(&name, i, 9, &done)), Took::Yes);
        }
        let mut wf = WorkflowState::with_pending(100);
        assert!(live.fold(&mut wf));
        assert_eq!(wf.count(TaskStatus::Completed), 4);
        assert_eq!(wf.ignored(), 3, "tasks 100, 150 and 199");
        assert!(!live.fold(&mut wf), "nothing marked since");
    }

    #[test]
    fn recycled_slots_start_from_nothing() {
        let name = table(1000);
        let done = EventData::TaskCompleted {
            attempt: 3,
            output: None,
        };
        let mut old = LiveRun::new(7, 100, 1, None, 1000);
        for i in 0..100 {
            old.take(&view(&name, i, 9, &done));
        }
        let slots = old.recycle();
        assert_eq!(old.len(), 0);
        let live = LiveRun::new(7, 50, 1, Some(slots), 1000);
        assert_eq!(live.len(), 50);
        assert_eq!(
            live.take(&view(&name, 60, 9, &done)),
            Took::No,
            "past its tasks"
        );
        live.take(&view(&name, 1, 9, &done));
        let mut wf = WorkflowState::with_pending(50);
        live.fold(&mut wf);
        assert_eq!(wf.count(TaskStatus::Completed), 1);
        assert_eq!(wf.count(TaskStatus::Pending), 49);
        let small = LiveRun::new(7, 10, 1, None, 1000);
        let big = LiveRun::new(7, 20, 1, Some(zeroed_slots(10)), 1000);
        assert_eq!((small.len(), big.len()), (10, 20), "too short: fresh slots");
        assert_eq!(big.take(&view(&name, 19, 9, &done)), Took::Yes);
    }

    /// What a fold costs (`cargo test --release -p nerv --lib fold_rate -- --ignored
    /// --nocapture`): prints ns per task to fold a fully written 10^6-task table into a new
    /// run's state.
    #[test]
    #[ignore = "prints a figure; run it on its own, in release"]
    fn fold_rate() {
        let n = 1_000_000u32;
        let name = table(n as usize);
        let st = EventData::TaskStarted { attempt: 1 };
        let done = EventData::TaskCompleted {
            attempt: 1,
            output: None,
        };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let live = LiveRun::new(7, n as usize, 2, None, u64::MAX);
            for i in 0..n {
                live.take(&view(&name, i, 1 + u64::from(i), &st));
                live.take(&view(&name, i, 2 + u64::from(i), &done));
            }
            let mut wf = WorkflowState::with_pending(n as usize);
            let t = std::time::Instant::now();
            live.fold(&mut wf);
            best = best.min(t.elapsed().as_nanos() as f64 / f64::from(n));
            assert_eq!(wf.count(TaskStatus::Completed), n as usize);
        }
        println!("fold: {best:.1} ns/task (best of 5)");
    }
}
