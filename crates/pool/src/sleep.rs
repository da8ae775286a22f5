//! Idle workers sleep without spinning forever and without lost wake-ups.
//!
//! See `SLEEP.md` beside this file for the argument. The protocol, in steps:
//!
//! Worker going idle (after its search rounds found nothing):
//! 1. `e = prepare()`: read the epoch, then announce itself in `sleepers` (SeqCst RMW + fence).
//! 2. Search every queue once more. Work found: `cancel()` and run it.
//! 3. `sleep(e)`: under the lock, wait on the condvar while the epoch is still `e`.
//!
//! Producer after making work visible (push to a deque or the injector):
//! 1. `notify(k)`: SeqCst fence, then read `sleepers`; zero means nobody can miss the work.
//! 2. Otherwise bump the epoch (a sleeper between steps 1 and 3 will then not wait), and
//!    wake `k` sleepers under the lock (a sleeper inside step 3 is woken).

use crate::sync::{fence, lock, AtomicUsize, Condvar, Mutex};
use std::sync::atomic::Ordering::SeqCst;

/// The sleep/wake state shared by a pool's workers.
pub(crate) struct Sleep {
    /// Workers between `prepare` and the end of `sleep` (or `cancel`).
    sleepers: AtomicUsize,
    /// Bumped by every notification that found a sleeper; a sleeper waits only while it is
    /// unchanged since its `prepare`.
    epoch: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            sleepers: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Step 1 of going idle: returns the epoch to pass to [`Sleep::sleep`].
    #[must_use]
    pub(crate) fn prepare(&self) -> usize {
        let e = self.epoch.load(SeqCst);
        self.sleepers.fetch_add(1, SeqCst);
        fence(SeqCst);
        e
    }

    /// Work was found after `prepare`: the worker stays awake.
    pub(crate) fn cancel(&self) {
        self.sleepers.fetch_sub(1, SeqCst);
    }

    /// Step 3 of going idle: blocks until a notification newer than `epoch` (or `stop()`).
    pub(crate) fn sleep(&self, epoch: usize, stop: impl Fn() -> bool) {
        let mut g = lock(&self.lock);
        while self.epoch.load(SeqCst) == epoch && !stop() {
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        drop(g);
        self.sleepers.fetch_sub(1, SeqCst);
    }

    /// Wakes up to `k` sleepers after new work became visible; costs one fence and one load
    /// when nobody sleeps.
    pub(crate) fn notify(&self, k: usize) {
        fence(SeqCst);
        let sleepers = self.sleepers.load(SeqCst);
        if sleepers == 0 {
            return;
        }
        self.epoch.fetch_add(1, SeqCst);
        let _g = lock(&self.lock);
        if k >= sleepers {
            self.cv.notify_all();
        } else {
            for _ in 0..k {
                self.cv.notify_one();
            }
        }
    }

    /// Wakes every sleeper (shutdown).
    pub(crate) fn notify_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
        let _g = lock(&self.lock);
        self.cv.notify_all();
    }
}
