//! Named resource limits shared by every run of an executor: "at most 2 tasks use `db` at
//! once", "tasks share a 4 GiB memory budget".
//!
//! Invariants:
//! - For every resource, the sum of the amounts held never exceeds its capacity (a capacity
//!   lowered below what is held only stops new grants until enough is released).
//! - A task needing several resources gets all of them at once or none (no partial holds, so
//!   two tasks cannot deadlock by each holding what the other needs).
//! - A task that cannot get its resources does not occupy a worker: it waits in the queue
//!   and is woken by the release that makes room, with its resources already granted.
//!
//! Protocol:
//! 1. `acquire` (one mutex, only for tasks that declare uses) grants at once, or queues a
//!    waiter holding a wake-up callback.
//! 2. `release` returns the amounts, then walks the waiters oldest first and grants every
//!    one that now fits (a later, smaller waiter may pass an earlier, larger one: resources
//!    are not left idle), calling its callback with `Granted`.
//! 3. `cancel_waiters(run)` wakes a cancelled run's waiters with `Cancelled`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

/// What a task declares it uses: resource names and amounts.
pub(crate) type Uses = Arc<[(Arc<str>, u64)]>;

/// How a waiting task is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Its resources were granted.
    Granted,
    /// Its run was cancelled; nothing was granted.
    Cancelled,
}

type WakeFn = Box<dyn FnOnce(Wake) + Send>;

struct Waiter {
    run: u64,
    uses: Uses,
    wake: WakeFn,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    capacity: u64,
    used: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<Arc<str>, Slot>,
    waiters: VecDeque<Waiter>,
}

impl State {
    fn fits(&self, uses: &Uses) -> bool {
        uses.iter().all(|(name, n)| {
            self.slots
                .get(name)
                .is_some_and(|s| s.used + n <= s.capacity)
        })
    }

    fn take(&mut self, uses: &Uses) {
        for (name, n) in uses.iter() {
            if let Some(s) = self.slots.get_mut(name) {
                s.used += n;
            }
        }
    }

    /// Grants every waiter that fits, oldest first; returns their callbacks.
    fn grant_waiters(&mut self) -> Vec<WakeFn> {
        let mut woken = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.fits(&self.waiters[i].uses) {
                let w = self.waiters.remove(i).expect("index in range");
                self.take(&w.uses);
                woken.push(w.wake);
            } else {
                i += 1;
            }
        }
        woken
    }
}

/// Why a task's resources can never be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The task uses a resource the executor does not define.
    #[error("uses unknown resource `{name}` (defined: {defined})")]
    Unknown {
        /// The resource's name.
        name: String,
        /// The defined resources, comma-separated.
        defined: String,
    },
    /// The task needs more than the resource's whole capacity.
    #[error("needs {need} of resource `{name}`, whose capacity is {capacity}")]
    TooLarge {
        /// The resource's name.
        name: String,
        /// The amount needed.
        need: u64,
        /// The capacity.
        capacity: u64,
    },
}

/// Named concurrency limits (and budgets, such as memory in bytes) shared by all runs of an
/// executor. Cheap to clone (clones share the limits).
///
/// A task declares what it uses with [`TaskBuilder::uses`](crate::TaskBuilder::uses); it
/// starts only once all of it is granted, and gives it back when its attempt ends.
#[derive(Clone, Default)]
pub struct Resources {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        let mut m = f.debug_map();
        for (k, v) in &st.slots {
            m.entry(k, &format_args!("{}/{}", v.used, v.capacity));
        }
        m.finish()
    }
}

impl Resources {
    /// No resources defined.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Defines resource `name` with `capacity`, or changes its capacity while runs go on (a
    /// larger capacity wakes waiting tasks at once; a smaller one takes effect as holders
    /// release).
    pub fn set(&self, name: &str, capacity: u64) {
        let woken = {
            let mut st = self.lock();
            st.slots.entry(Arc::from(name)).or_default().capacity = capacity;
            st.grant_waiters()
        };
        for w in woken {
            w(Wake::Granted);
        }
    }

    /// The capacity of `name`, if defined.
    pub fn capacity(&self, name: &str) -> Option<u64> {
        self.lock().slots.get(name).map(|s| s.capacity)
    }

    /// How much of `name` is held now.
    pub fn in_use(&self, name: &str) -> u64 {
        self.lock().slots.get(name).map_or(0, |s| s.used)
    }

    /// How many tasks wait for resources.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Grants `uses` now (`Ok(true)`), or queues `wake` to be called once they are granted
    /// or the run is cancelled (`Ok(false)`).
    pub(crate) fn acquire(
        &self,
        run: u64,
        uses: &Uses,
        wake: impl FnOnce(Wake) + Send + 'static,
    ) -> Result<bool, ResourceError> {
        let mut st = self.lock();
        for (name, need) in uses.iter() {
            match st.slots.get(name) {
                None => {
                    let mut defined: Vec<&str> = st.slots.keys().map(|k| &**k).collect();
                    defined.sort_unstable();
                    return Err(ResourceError::Unknown {
                        name: name.to_string(),
                        defined: if defined.is_empty() {
                            "none".to_string()
                        } else {
                            defined.join(", ")
                        },
                    });
                }
                Some(s) if *need > s.capacity => {
                    return Err(ResourceError::TooLarge {
                        name: name.to_string(),
                        need: *need,
                        capacity: s.capacity,
                    })
                }
                Some(_) => {}
            }
        }
        if st.fits(uses) {
            st.take(uses);
            return Ok(true);
        }
        st.waiters.push_back(Waiter {
            run,
            uses: uses.clone(),
            wake: Box::new(wake),
        });
        Ok(false)
    }

    /// Gives back `uses` and grants waiters that now fit.
    pub(crate) fn release(&self, uses: &Uses) {
        let woken = {
            let mut st = self.lock();
            for (name, n) in uses.iter() {
                if let Some(s) = st.slots.get_mut(name) {
                    s.used = s.used.saturating_sub(*n);
                }
            }
            st.grant_waiters()
        };
        for w in woken {
            w(Wake::Granted);
        }
    }

    /// Wakes the waiters of a cancelled run, granting nothing.
    pub(crate) fn cancel_waiters(&self, run: u64) {
        let woken: Vec<WakeFn> = {
            let mut st = self.lock();
            let (gone, kept): (VecDeque<Waiter>, VecDeque<Waiter>) =
                std::mem::take(&mut st.waiters)
                    .into_iter()
                    .partition(|w| w.run == run);
            st.waiters = kept;
            gone.into_iter().map(|w| w.wake).collect()
        };
        for w in woken {
            w(Wake::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    fn uses(v: &[(&str, u64)]) -> Uses {
        v.iter().map(|(n, a)| (Arc::from(*n), *a)).collect()
    }

    #[test]
    fn grants_all_or_nothing_and_wakes_in_order() {
        let r = Resources::new();
        r.set("db", 2);
        r.set("mem", 10);
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = |tag: &'static str| {
            let woken = woken.clone();
            move |k: Wake| woken.lock().unwrap().push((tag, k))
        };
        assert_eq!(
            r.acquire(1, &uses(&[("db", 1), ("mem", 6)]), w("a")),
            Ok(true)
        );
        // mem does not fit: nothing of db is taken.
        assert_eq!(
            r.acquire(1, &uses(&[("db", 1), ("mem", 6)]), w("b")),
            Ok(false)
        );
        assert_eq!(r.in_use("db"), 1);
        assert_eq!(r.acquire(1, &uses(&[("db", 1)]), w("c")), Ok(true));
        assert_eq!(r.in_use("db"), 2);
        r.release(&uses(&[("db", 1), ("mem", 6)]));
        assert_eq!(*woken.lock().unwrap(), vec![("b", Wake::Granted)]);
        assert_eq!(r.in_use("db"), 2);
        assert_eq!(r.in_use("mem"), 6);
    }

    #[test]
    fn unknown_and_too_large_are_errors() {
        let r = Resources::new();
        r.set("db", 2);
        let e = r.acquire(1, &uses(&[("gpu", 1)]), |_| {}).unwrap_err();
        assert_eq!(e.to_string(), "uses unknown resource `gpu` (defined: db)");
        let e = r.acquire(1, &uses(&[("db", 3)]), |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs 3 of resource `db`, whose capacity is 2"
        );
    }

    #[test]
    fn resize_and_cancel_wake_waiters() {
        let r = Resources::new();
        r.set("db", 1);
        let n = Arc::new(AtomicUsize::new(0));
        assert_eq!(r.acquire(1, &uses(&[("db", 1)]), |_| {}), Ok(true));
        let c = n.clone();
        assert_eq!(
            r.acquire(2, &uses(&[("db", 1)]), move |k| {
                assert_eq!(k, Wake::Granted);
                c.fetch_add(1, SeqCst);
            }),
            Ok(false)
        );
        let c = n.clone();
        assert_eq!(
            r.acquire(3, &uses(&[("db", 1)]), move |k| {
                assert_eq!(k, Wake::Cancelled);
                c.fetch_add(10, SeqCst);
            }),
            Ok(false)
        );
        r.set("db", 2);
        assert_eq!(n.load(SeqCst), 1);
        r.cancel_waiters(3);
        assert_eq!(n.load(SeqCst), 11);
        assert_eq!(r.waiting(), 0);
    }
}
