//! Ready queues: a per-worker deque (LIFO for its owner, FIFO for thieves) and a shared injector.
//!
//! Outside loom these are crossbeam-deque's Chase-Lev deque and injector (well proven, and
//! faster than a hand-written one would be). Under loom they are mutex-protected `VecDeque`s
//! with the same interface, so that the rest of the pool's protocol (join counters, sleeping,
//! waking, run completion) is model-checked over the same code paths.

#[cfg(not(loom))]
mod imp {
    pub(crate) use crossbeam_deque::{Injector, Stealer, Worker as Local};

    /// A fresh LIFO local deque.
    pub(crate) fn local<T>() -> Local<T> {
        Local::new_lifo()
    }

    /// Steals one job, retrying while the deque reports contention.
    pub(crate) fn steal<T>(s: &Stealer<T>) -> Option<T> {
        loop {
            match s.steal() {
                crossbeam_deque::Steal::Success(t) => return Some(t),
                crossbeam_deque::Steal::Empty => return None,
                crossbeam_deque::Steal::Retry => {}
            }
        }
    }

    /// Takes a batch from the injector into `local` and returns one job.
    pub(crate) fn steal_injector<T>(i: &Injector<T>, local: &Local<T>) -> Option<T> {
        loop {
            match i.steal_batch_and_pop(local) {
                crossbeam_deque::Steal::Success(t) => return Some(t),
                crossbeam_deque::Steal::Empty => return None,
                crossbeam_deque::Steal::Retry => {}
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    use crate::sync::{lock, Arc, Mutex};
    use std::collections::VecDeque;

    /// Loom stand-in for a worker's deque.
    pub(crate) struct Local<T>(Arc<Mutex<VecDeque<T>>>);
    /// Loom stand-in for a thief's handle.
    pub(crate) struct Stealer<T>(Arc<Mutex<VecDeque<T>>>);
    /// Loom stand-in for the shared injector.
    pub(crate) struct Injector<T>(Mutex<VecDeque<T>>);

    pub(crate) fn local<T>() -> Local<T> {
        Local(Arc::new(Mutex::new(VecDeque::new())))
    }
    impl<T> Local<T> {
        pub(crate) fn push(&self, t: T) {
            lock(&self.0).push_back(t);
        }
        pub(crate) fn pop(&self) -> Option<T> {
            lock(&self.0).pop_back()
        }
        pub(crate) fn stealer(&self) -> Stealer<T> {
            Stealer(self.0.clone())
        }
        pub(crate) fn is_empty(&self) -> bool {
            lock(&self.0).is_empty()
        }
    }
    impl<T> Injector<T> {
        pub(crate) fn new() -> Self {
            Injector(Mutex::new(VecDeque::new()))
        }
        pub(crate) fn push(&self, t: T) {
            lock(&self.0).push_back(t);
        }
        pub(crate) fn is_empty(&self) -> bool {
            lock(&self.0).is_empty()
        }
    }
    pub(crate) fn steal<T>(s: &Stealer<T>) -> Option<T> {
        lock(&s.0).pop_front()
    }
    pub(crate) fn steal_injector<T>(i: &Injector<T>, _local: &Local<T>) -> Option<T> {
        lock(&i.0).pop_front()
    }
}

pub(crate) use imp::*;
