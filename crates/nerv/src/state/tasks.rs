//! A run's top-graph task states ([`Tasks`]): a persistent vector of blocks of [`BLOCK`]
//! tasks, each block shared through an `Arc` of its own.
//!
//! Invariants:
//! - `blocks` holds `len.div_ceil(BLOCK)` blocks; task `i` is entry `i % BLOCK` of block
//!   `i / BLOCK`. Entries past `len` in the last block are PENDING and never written.
//! - A new task is PENDING in a block shared with every block not yet written: the one
//!   process-wide PENDING block. Writing a task copies its block if anyone else holds it (a
//!   published snapshot, or the PENDING block's other users): the copy is of a block in cache
//!   for a new run's tasks, where a vector of PENDING tasks built for the run (or sliced from a
//!   large one kept for the purpose, as before) made the first write of each leaf copy it from
//!   memory, 32 MB for a run of 10^6 tasks.
//! - Cloning is O(1) and shares everything; a clone and the original diverge block by block.

use super::task::TaskState;
use imbl::Vector;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Tasks per block.
pub(crate) const BLOCK: usize = 64;

type Block = [TaskState; BLOCK];

/// The process-wide block of PENDING tasks (see the module doc).
fn pending_block() -> Arc<Block> {
    static PENDING: OnceLock<Arc<Block>> = OnceLock::new();
    PENDING
        .get_or_init(|| Arc::new([TaskState::PENDING; BLOCK]))
        .clone()
}

/// A run's top-graph task states, indexed like its graph (see the module doc).
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    blocks: Vector<Arc<Block>>,
    len: usize,
}

impl Tasks {
    /// Number of tasks.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows to `n` tasks, the new ones PENDING (nothing if there are `n` or more).
    pub(crate) fn grow(&mut self, n: usize) {
        if n <= self.len {
            return;
        }
        let need = n.div_ceil(BLOCK);
        if need > self.blocks.len() {
            let pending = pending_block();
            for _ in self.blocks.len()..need {
                self.blocks.push_back(pending.clone());
            }
        }
        self.len = n;
    }

    /// Task `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&TaskState> {
        if i >= self.len {
            return None;
        }
        self.blocks.get(i / BLOCK).map(|b| &b[i % BLOCK])
    }

    /// Task `i`, to write (its block copied first if shared).
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut TaskState> {
        if i >= self.len {
            return None;
        }
        self.blocks
            .get_mut(i / BLOCK)
            .map(|b| &mut Arc::make_mut(b)[i % BLOCK])
    }

    /// Every task, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TaskState> + '_ {
        self.blocks.iter().flat_map(|b| b.iter()).take(self.len)
    }

    /// A cursor for writing many tasks, best in index order (the vector's tree is walked
    /// again only to reach another block).
    pub(crate) fn cursor(&mut self) -> Cursor<'_> {
        Cursor {
            len: self.len,
            focus: self.blocks.focus_mut(),
        }
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Writes tasks of a [`Tasks`] ([`Tasks::cursor`]).
pub(crate) struct Cursor<'a> {
    len: usize,
    focus: imbl::vector::FocusMut<'a, Arc<Block>>,
}

impl Cursor<'_> {
    /// Task `i`, to write.
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut TaskState> {
        if i >= self.len {
            return None;
        }
        self.focus
            .get_mut(i / BLOCK)
            .map(|b| &mut Arc::make_mut(b)[i % BLOCK])
    }

    /// The tasks from `i` to the end of its block (at most to the last task), to write: the
    /// block is copied (if shared) once for all of them.
    pub(crate) fn rest_of_block(&mut self, i: usize) -> Option<&mut [TaskState]> {
        if i >= self.len {
            return None;
        }
        let end = (i / BLOCK * BLOCK + BLOCK).min(self.len);
        let block = Arc::make_mut(self.focus.get_mut(i / BLOCK)?);
        Some(&mut block[i % BLOCK..i % BLOCK + (end - i)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::task::Hot;

    fn pending(t: &TaskState) -> bool {
        t.status() == crate::TaskStatus::Pending && t.attempts() == 0 && t.started().is_none()
    }

    fn completed(t: &mut TaskState, ts: u64) {
        t.apply_hot(Hot::Started, 1, ts);
        t.apply_hot(Hot::Completed, 1, ts + 1);
    }

    #[test]
    fn tasks_grow_pending_and_written_blocks_are_their_own() {
        let mut a = Tasks::default();
        assert!(a.is_empty() && a.get(0).is_none());
        a.grow(130);
        a.grow(100); // never shrinks
        assert_eq!(a.len(), 130);
        assert!(a.iter().all(pending));
        assert_eq!(a.iter().count(), 130);
        assert!(a.get(130).is_none() && a.get_mut(130).is_none());
        // A snapshot, then writes: the snapshot keeps what it had.
        let snapshot = a.clone();
        completed(a.get_mut(70).unwrap(), 5);
        assert_eq!(a.get(70).unwrap().status(), crate::TaskStatus::Completed);
        assert!(pending(snapshot.get(70).unwrap()));
        // Other tasks, in this block and in blocks never written, are still pending.
        assert!(pending(a.get(71).unwrap()) && pending(a.get(0).unwrap()));
        assert!(
            pending_block().iter().all(pending),
            "the shared block is untouched"
        );
        // Through a cursor: a block's rest, clipped to the last task.
        let mut c = a.cursor();
        assert_eq!(
            c.rest_of_block(120).unwrap().len(),
            8,
            "to the end of the block"
        );
        let rest = c.rest_of_block(128).unwrap();
        assert_eq!(rest.len(), 2, "to the last task");
        completed(&mut rest[1], 9);
        completed(c.get_mut(3).unwrap(), 3);
        assert!(c.rest_of_block(130).is_none() && c.get_mut(130).is_none());
        let done: Vec<usize> = (0..a.len())
            .filter(|&i| !pending(a.get(i).unwrap()))
            .collect();
        assert_eq!(done, [3, 70, 129]);
        assert!(snapshot.iter().all(pending));
        // Growing again adds pending tasks after the written ones.
        a.grow(300);
        assert_eq!(a.iter().filter(|t| !pending(t)).count(), 3);
        assert!(pending(a.get(299).unwrap()));
    }
}
