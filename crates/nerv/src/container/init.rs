//! Once-per-cell construction: at most one thread runs a singleton's (or a scope's scoped)
//! constructor at a time, the others wait for its value, and a wait that would never end (a
//! dependency cycle split across threads) is refused with the cycle instead of deadlocking.
//!
//! Invariants:
//! - A *cell* is where one instance lives: a singleton source (`(source, 0)`) or a scoped
//!   source in one scope (`(source, scope id)`). `owners` maps each cell under construction to
//!   the thread running its constructor; a cell has at most one owner.
//! - `waits` maps each thread blocked in [`Coordinator::claim`] to the cell it waits for and
//!   the resolution chain it was in (to name the cycle if one is found).
//! - No lock of this module is held while a constructor runs: a claim is a map entry, not a
//!   held mutex, so constructors may resolve other providers (and claim other cells) freely.
//!
//! Protocol (for a cell that is not built yet):
//! 1. Lock `state`. If the cell is built (`ready()`), return: the caller reads the value.
//! 2. If nobody owns the cell, record this thread as its owner and return a [`Claim`]: the
//!    caller runs the constructor, stores the value, then drops the claim.
//! 3. Otherwise follow the wait-for chain: the owner, the cell that owner waits for, that
//!    cell's owner, ... If it reaches this thread, waiting would deadlock: return the cycle.
//! 4. Else record this thread in `waits`, wait on the condition variable (which releases
//!    `state`), remove the record when woken, and go back to 1.
//! 5. Dropping a [`Claim`] (after storing the value, or on error or panic, when nothing was
//!    stored) removes the owner and wakes every waiter; a waiter that finds the cell still
//!    empty (the constructor failed) claims it and tries itself, so errors are not cached.
//!
//! A thread closing a cycle always finds it at step 3: the other threads of the cycle are
//! already recorded in `waits` (each records itself under the same lock before sleeping).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

/// Where one instance lives: (address of its source, id of its scope or 0 for a singleton).
pub(crate) type CellId = (usize, u64);

/// One provider in a resolution chain: its slot's identity and its label.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) slot: usize,
    pub(crate) label: Arc<str>,
}

/// A thread waiting for a cell that another thread is building.
struct Waiting {
    cell: CellId,
    wanted: Link,
    chain: Vec<Link>,
}

#[derive(Default)]
struct Building {
    owners: HashMap<CellId, ThreadId>,
    waits: HashMap<ThreadId, Waiting>,
}

impl Building {
    /// Step 3: whether waiting for `cell` (owned by `owner`) would close a cycle back to `me`;
    /// if so, the providers around it, starting and ending with the same one.
    fn cycle(
        &self,
        me: ThreadId,
        mut owner: ThreadId,
        chain: &[Link],
        wanted: &Link,
    ) -> Option<Vec<Link>> {
        let mut path: Vec<Link> = chain.to_vec();
        path.push(wanted.clone());
        let mut building = wanted.slot;
        // Each hop visits a distinct waiting thread, so `waits.len() + 1` hops are enough.
        for _ in 0..=self.waits.len() {
            if owner == me {
                return Some(close(path));
            }
            let w = self.waits.get(&owner)?;
            // The owner's chain after the provider it is building, then what it waits for.
            let start = w
                .chain
                .iter()
                .rposition(|l| l.slot == building)
                .map_or(0, |i| i + 1);
            path.extend(w.chain[start..].iter().cloned());
            path.push(w.wanted.clone());
            building = w.wanted.slot;
            owner = *self.owners.get(&w.cell)?;
        }
        None
    }
}

/// Trims `path` so that it starts at the first occurrence of its last provider.
fn close(mut path: Vec<Link>) -> Vec<Link> {
    let Some(last) = path.last().map(|l| l.slot) else {
        return path;
    };
    match path[..path.len() - 1].iter().position(|l| l.slot == last) {
        Some(i) => {
            path.drain(..i);
        }
        None => {
            let first = path[path.len() - 1].clone();
            path.insert(0, first);
        }
    }
    path
}

/// Coordinates the construction of every cell resolved through one container.
#[derive(Default)]
pub(crate) struct Coordinator {
    state: Mutex<Building>,
    done: Condvar,
}

/// The right (and duty) to build a cell; dropping it releases the cell and wakes waiters.
pub(crate) struct Claim<'c> {
    coordinator: &'c Coordinator,
    cell: CellId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut state = self.coordinator.lock();
        state.owners.remove(&self.cell);
        drop(state);
        self.coordinator.done.notify_all();
    }
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, Building> {
        // Nothing panics while holding `state`, but a poisoned lock must not stop resolution.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Steps 1 to 4: returns `Ok(None)` once `ready()` is true, `Ok(Some(claim))` when the
    /// caller must build the cell, and `Err(cycle)` when waiting would never end.
    ///
    /// `chain` gives the caller's resolution chain; it is only called on contention.
    pub(crate) fn claim(
        &self,
        cell: CellId,
        wanted: &Link,
        chain: impl Fn() -> Vec<Link>,
        ready: impl Fn() -> bool,
    ) -> Result<Option<Claim<'_>>, Vec<Link>> {
        let me = thread::current().id();
        let mut state = self.lock();
        loop {
            if ready() {
                return Ok(None);
            }
            let Some(&owner) = state.owners.get(&cell) else {
                state.owners.insert(cell, me);
                return Ok(Some(Claim {
                    coordinator: self,
                    cell,
                }));
            };
            let chain = chain();
            if let Some(cycle) = state.cycle(me, owner, &chain, wanted) {
                return Err(cycle);
            }
            state.waits.insert(
                me,
                Waiting {
                    cell,
                    wanted: wanted.clone(),
                    chain,
                },
            );
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waits.remove(&me);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(slot: usize) -> Link {
        Link {
            slot,
            label: format!("p{slot}").into(),
        }
    }

    #[test]
    fn close_starts_the_cycle_at_the_repeated_provider() {
        let path = close(vec![link(1), link(2), link(3), link(2)]);
        let slots: Vec<usize> = path.iter().map(|l| l.slot).collect();
        assert_eq!(slots, [2, 3, 2]);
        let single = close(vec![link(5)]);
        let slots: Vec<usize> = single.iter().map(|l| l.slot).collect();
        assert_eq!(slots, [5, 5]);
    }

    #[test]
    fn claiming_a_cell_owned_by_this_thread_is_a_cycle() {
        let c = Coordinator::default();
        let claim = c.claim((1, 0), &link(1), Vec::new, || false);
        let claim = claim.expect("no cycle").expect("claimed");
        let again = c.claim((1, 0), &link(1), || vec![link(1)], || false);
        let cycle = again.err().expect("a cycle");
        assert_eq!(cycle.len(), 2);
        drop(claim);
        assert!(c.lock().owners.is_empty());
    }
}
