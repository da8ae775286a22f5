//! Write-once typed output slots for one run, in a single allocation.
//!
//! A task graph's outputs have different types. Boxing each output would cost an allocation
//! per task; instead an [`ArenaLayout`] assigns every slot an offset at graph-build time (a
//! zero-sized output takes no space), and each run allocates one [`OnceArena`] block.
//!
//! Protocol of a slot: `EMPTY` → (`set`: CAS to `WRITING`, write, store `FULL` with Release) →
//! `FULL`. `get` loads the state with Acquire and hands out `&T` only when `FULL`, so a reader
//! always sees a completely written value; a second `set` is refused. A slot of a zero-sized
//! type without drop glue (a unit output: nothing to write, nothing to drop) skips the CAS:
//! `set` checks for `EMPTY` and stores `FULL` with Release (no locked instruction per task);
//! a second `set` after it is refused, and two racing ones could both report success, which
//! loses nothing since there is no value. `take` needs `&mut`, so
//! no `&T` handed out earlier can be alive. Dropping the arena drops every `FULL` value.
//!
//! Soundness against wrong keys: a [`SlotKey<T>`] can only be made by [`ArenaLayout::push`],
//! carries the layout's unique id, and every access checks that id, so a key can never read a
//! slot of another layout or with another type.

use crate::sync::AtomicU8;
use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32 as StdAtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Zero: an arena's slot states start as zeroed memory (`OnceArena::new`).
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;

static NEXT_LAYOUT_ID: StdAtomicU32 = StdAtomicU32::new(1);

/// A typed key to one slot of an arena built from the layout that made it.
pub struct SlotKey<T> {
    layout: u32,
    index: u32,
    offset: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for SlotKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SlotKey<T> {}

impl<T> std::fmt::Debug for SlotKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotKey({}#{})", self.layout, self.index)
    }
}

impl<T> SlotKey<T> {
    /// The slot's index in its layout (slots are numbered in push order).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Drops the value at a pointer (type-erased `drop_in_place::<T>`).
type DropFn = unsafe fn(*mut u8);

/// # Safety
/// `p` must point to a valid, initialized `T` that is not used afterwards.
unsafe fn drop_erased<T>(p: *mut u8) {
    let p = if std::mem::size_of::<T>() == 0 {
        NonNull::<T>::dangling().as_ptr()
    } else {
        p.cast::<T>()
    };
    // SAFETY: the caller guarantees `p` is an initialized `T` that is dropped once (a
    // zero-sized `T` lives at any aligned non-null address).
    unsafe { std::ptr::drop_in_place(p) }
}

/// The layout of a run's output slots: offsets, total size, and which slots need dropping.
#[derive(Debug)]
pub struct ArenaLayout {
    id: u32,
    slots: u32,
    size: usize,
    align: usize,
    /// `(slot index, offset, drop fn)` for the slots whose type has drop glue.
    drops: Vec<(u32, u32, DropFn)>,
}

impl Default for ArenaLayout {
    fn default() -> Self {
        Self::new()
    }
}

impl ArenaLayout {
    /// An empty layout with a fresh unique id.
    pub fn new() -> Self {
        ArenaLayout {
            id: NEXT_LAYOUT_ID.fetch_add(1, Relaxed),
            slots: 0,
            size: 0,
            align: 1,
            drops: Vec::new(),
        }
    }

    /// Adds a slot for a `T` and returns its key. Values must be shareable between the
    /// threads of a run, hence `Send + Sync`.
    ///
    /// # Panics
    /// If the arena would exceed `u32::MAX` bytes or slots.
    pub fn push<T: Send + Sync + 'static>(&mut self) -> SlotKey<T> {
        let l = Layout::new::<T>();
        let offset = if l.size() == 0 {
            0
        } else {
            let off = self.size.next_multiple_of(l.align());
            self.size = off + l.size();
            self.align = self.align.max(l.align());
            off
        };
        let offset = u32::try_from(offset).expect("output arena larger than 4 GiB");
        assert!(
            u32::try_from(self.size).is_ok(),
            "output arena larger than 4 GiB"
        );
        let index = self.slots;
        self.slots = self.slots.checked_add(1).expect("too many slots");
        if std::mem::needs_drop::<T>() {
            self.drops.push((index, offset, drop_erased::<T> as DropFn));
        }
        SlotKey {
            layout: self.id,
            index,
            offset,
            _t: PhantomData,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots as usize
    }

    /// Whether there is no slot.
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Bytes of value storage an arena of this layout allocates.
    pub fn value_bytes(&self) -> usize {
        self.size
    }
}

/// One run's output values, laid out by an [`ArenaLayout`].
pub struct OnceArena {
    layout_id: u32,
    mem: NonNull<u8>,
    alloc: Option<Layout>,
    state: Box<[AtomicU8]>,
    drops: Vec<(u32, u32, DropFn)>,
}

// SAFETY: every value stored is `Send + Sync` (enforced by `ArenaLayout::push`), and the slot
// protocol (Release on FULL, Acquire on read) orders each write before every read.
unsafe impl Send for OnceArena {}
// SAFETY: as above; shared access only hands out `&T` of `Sync` values that are fully written.
unsafe impl Sync for OnceArena {}

impl OnceArena {
    /// Allocates an arena for `layout` with every slot empty (one allocation for the values,
    /// one byte of state per slot). `offsets` must not be needed: keys carry them.
    pub fn new(layout: &ArenaLayout) -> Self {
        let (mem, alloc) = if layout.size == 0 {
            (NonNull::<u64>::dangling().cast::<u8>(), None)
        } else {
            let l = Layout::from_size_align(layout.size, layout.align).expect("valid layout");
            // SAFETY: `l` has a non-zero size.
            let p = unsafe { alloc::alloc(l) };
            match NonNull::new(p) {
                Some(p) => (p, Some(l)),
                None => alloc::handle_alloc_error(l),
            }
        };
        // EMPTY is zero: zeroed memory, nothing written per slot.
        let state = crate::sync::zeroed_u8(layout.slots as usize);
        OnceArena {
            layout_id: layout.id,
            mem,
            alloc,
            state,
            drops: layout.drops.clone(),
        }
    }

    fn check<T>(&self, key: &SlotKey<T>) {
        assert_eq!(
            key.layout, self.layout_id,
            "slot key used with an arena of another layout"
        );
    }

    fn ptr<T>(&self, key: &SlotKey<T>) -> *mut T {
        if std::mem::size_of::<T>() == 0 {
            NonNull::<T>::dangling().as_ptr()
        } else {
            // SAFETY: `offset` was assigned inside the allocation by the layout that made
            // `key` (checked by `check`), so the result stays in bounds.
            unsafe { self.mem.as_ptr().add(key.offset as usize).cast::<T>() }
        }
    }

    /// Stores `value` in an empty slot; gives it back if the slot was already written.
    ///
    /// # Panics
    /// If `key` comes from another layout.
    pub fn set<T>(&self, key: SlotKey<T>, value: T) -> Result<(), T> {
        self.check(&key);
        let st = &self.state[key.index as usize];
        if std::mem::size_of::<T>() == 0 && !std::mem::needs_drop::<T>() {
            // Nothing is written and nothing will ever be dropped (a unit output): a plain
            // check and store, without a locked RMW on the hot path. A second `set` in
            // sequence is refused; two racing ones may both succeed, which loses nothing
            // (there is no value), and readers still see FULL only after a completed `set`.
            if st.load(Relaxed) != EMPTY {
                return Err(value);
            }
            st.store(FULL, Release);
            return Ok(());
        }
        if std::mem::size_of::<T>() == 0 {
            // Nothing is written, so one CAS straight to FULL suffices; the value now lives in
            // the slot (dropped with the arena, or moved out by `take`).
            if st.compare_exchange(EMPTY, FULL, Release, Relaxed).is_err() {
                return Err(value);
            }
            std::mem::forget(value);
            return Ok(());
        }
        if st
            .compare_exchange(EMPTY, WRITING, Acquire, Relaxed)
            .is_err()
        {
            return Err(value);
        }
        // SAFETY: the CAS made this thread the slot's only writer, no reader reads before
        // FULL, the pointer is in bounds and aligned for `T` (layout), and the slot is empty.
        unsafe { self.ptr(&key).write(value) };
        st.store(FULL, Release);
        Ok(())
    }

    /// The value in the slot, once it has been completely written.
    ///
    /// # Panics
    /// If `key` comes from another layout.
    #[inline]
    pub fn get<T>(&self, key: SlotKey<T>) -> Option<&T> {
        self.check(&key);
        if self.state[key.index as usize].load(Acquire) == FULL {
            // SAFETY: FULL (Acquire, pairing with the writer's Release) means the value is
            // initialized; it is only moved out through `&mut self`, which cannot coexist
            // with the returned borrow.
            Some(unsafe { &*self.ptr(&key) })
        } else {
            None
        }
    }

    /// Whether the slot at `index` holds a value.
    pub fn is_set(&self, index: u32) -> bool {
        self.state[index as usize].load(Acquire) == FULL
    }

    /// Moves the value out of the slot, leaving it empty.
    ///
    /// # Panics
    /// If `key` comes from another layout.
    pub fn take<T>(&mut self, key: SlotKey<T>) -> Option<T> {
        self.check(&key);
        let st = &self.state[key.index as usize];
        if st.compare_exchange(FULL, EMPTY, AcqRel, Relaxed).is_ok() {
            // SAFETY: the slot was FULL, and `&mut self` guarantees no outstanding borrow;
            // marking it EMPTY first means it will not be dropped again.
            Some(unsafe { self.ptr(&key).read() })
        } else {
            None
        }
    }
}

impl Drop for OnceArena {
    fn drop(&mut self) {
        for &(index, offset, drop_fn) in &self.drops {
            if self.state[index as usize].load(Acquire) == FULL {
                // SAFETY: the slot is FULL, so an initialized value of the type `drop_fn` was
                // made for lives at `offset` (assigned by the layout); it is dropped exactly
                // once, here.
                unsafe { drop_fn(self.mem.as_ptr().add(offset as usize)) };
            }
        }
        if let Some(l) = self.alloc {
            // SAFETY: `mem` was allocated with layout `l` in `new`.
            unsafe { alloc::dealloc(self.mem.as_ptr(), l) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn set_get_take_and_drop() {
        let mut l = ArenaLayout::new();
        let a = l.push::<u8>();
        let b = l.push::<String>();
        let c = l.push::<()>();
        let d = l.push::<Arc<u64>>();
        let mut arena = OnceArena::new(&l);
        assert_eq!(arena.get(a), None);
        arena.set(a, 7).unwrap();
        assert_eq!(arena.set(a, 8), Err(8));
        arena.set(b, "hi".to_string()).unwrap();
        arena.set(c, ()).unwrap();
        let shared = Arc::new(5u64);
        arena.set(d, shared.clone()).unwrap();
        assert_eq!(arena.get(a), Some(&7));
        assert_eq!(arena.get(b).map(String::as_str), Some("hi"));
        assert_eq!(arena.get(c), Some(&()));
        assert_eq!(arena.take(b).as_deref(), Some("hi"));
        assert_eq!(arena.get(b), None);
        assert_eq!(Arc::strong_count(&shared), 2);
        drop(arena);
        assert_eq!(Arc::strong_count(&shared), 1, "arena drops its values");
    }

    #[test]
    fn unit_slots_are_written_once() {
        // A zero-sized output without drop glue takes the plain check-and-store path.
        struct Marker;
        impl Drop for Marker {
            fn drop(&mut self) {}
        }
        let mut l = ArenaLayout::new();
        let unit = l.push::<()>();
        let marker = l.push::<Marker>();
        let arena = OnceArena::new(&l);
        assert_eq!(arena.get(unit), None);
        assert!(!arena.is_set(unit.index()));
        arena.set(unit, ()).unwrap();
        assert_eq!(arena.set(unit, ()), Err(()), "a second set is refused");
        assert_eq!(arena.get(unit), Some(&()));
        assert!(arena.is_set(unit.index()));
        // A zero-sized type with drop glue keeps the CAS: exactly one value to drop.
        arena.set(marker, Marker).map_err(|_| ()).unwrap();
        assert!(arena.set(marker, Marker).is_err());
        assert!(arena.get(marker).is_some());
    }

    #[test]
    fn unit_slot_set_is_seen_by_other_threads() {
        let mut l = ArenaLayout::new();
        let k = l.push::<()>();
        let arena = OnceArena::new(&l);
        std::thread::scope(|s| {
            s.spawn(|| arena.set(k, ()).unwrap());
            s.spawn(|| {
                while arena.get(k).is_none() {
                    std::hint::spin_loop();
                }
            });
        });
        assert_eq!(arena.set(k, ()), Err(()));
    }

    #[test]
    #[should_panic(expected = "another layout")]
    fn foreign_key_is_refused() {
        let mut l1 = ArenaLayout::new();
        let _ = l1.push::<u64>();
        let mut l2 = ArenaLayout::new();
        let k2 = l2.push::<u64>();
        let arena = OnceArena::new(&l1);
        let _ = arena.get(k2);
    }

    #[test]
    fn concurrent_readers_see_whole_values() {
        let mut l = ArenaLayout::new();
        let k = l.push::<[u64; 8]>();
        let arena = OnceArena::new(&l);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = arena.set(k, [42; 8]);
            });
            for _ in 0..2 {
                s.spawn(|| loop {
                    if let Some(v) = arena.get(k) {
                        assert!(v.iter().all(|&x| x == 42));
                        break;
                    }
                    std::hint::spin_loop();
                });
            }
        });
    }
}
