//! The loom seam: every atomic, lock and thread the pool uses comes from here, so that
//! `RUSTFLAGS="--cfg loom" cargo test -p nerv-pool --release loom_` model-checks the real code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

/// `n` atomics that read zero, from zeroed memory (`calloc`): nothing is written per element,
/// and the pages of a large array are mapped only when first written.
#[cfg(not(loom))]
pub(crate) fn zeroed_u32(n: usize) -> Box<[AtomicU32]> {
    bytemuck::zeroed_slice_box(n)
}

/// [`zeroed_u32`] for bytes.
#[cfg(not(loom))]
pub(crate) fn zeroed_u8(n: usize) -> Box<[AtomicU8]> {
    bytemuck::zeroed_slice_box(n)
}

/// Loom's atomics are not plain memory: built one by one.
#[cfg(loom)]
pub(crate) fn zeroed_u32(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

/// Loom's atomics are not plain memory: built one by one.
#[cfg(loom)]
pub(crate) fn zeroed_u8(n: usize) -> Box<[AtomicU8]> {
    (0..n).map(|_| AtomicU8::new(0)).collect()
}

/// Locks a mutex, ignoring poisoning: the pool never panics while holding its locks (an
/// engine panic aborts), so a poisoned lock only means a user callback panicked elsewhere.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// How many rounds an idle worker searches before it goes to sleep (fewer under loom, where
/// every round multiplies the state space).
#[cfg(not(loom))]
pub(crate) const SPIN_ROUNDS: u32 = 64;
// A `static` rather than a `const`, so that clippy does not flag the worker's `0..SPIN_ROUNDS`
// loop as an empty range under loom.
#[cfg(loom)]
pub(crate) static SPIN_ROUNDS: u32 = 0;

/// Hints the CPU (or loom's scheduler) that this thread is spinning.
pub(crate) fn spin_hint(round: u32) {
    #[cfg(loom)]
    {
        let _ = round;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if round < SPIN_ROUNDS / 2 {
            for _ in 0..(1 << (round.min(6))) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}
