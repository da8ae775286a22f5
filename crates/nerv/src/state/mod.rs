//! State as a projection of events (the seed's Pyrsistent integration): persistent snapshots
//! made by pure transitions, a bounded history for time travel, and named projections.
//!
//! The module owns three things:
//! - [`StateProjector<S>`]: any state `S`, changed only by pure transitions (`update(|&S| -> S)`),
//!   published as immutable, versioned [`Snapshot`]s;
//! - [`EngineState`]: the executor's runs and tasks, with [`EngineState::apply`] as its
//!   transition over [`Event`](crate::Event)s (`engine.rs`; one task's state, whose events
//!   commute, in `task.rs`);
//! - [`EngineProjector`]: an [`EngineState`] fed from the event bus on the executor's worker
//!   threads by flat combining (`combiner.rs`, with the queued events in `op.rs`; why the
//!   protocol is what it is: `README.md` beside them).
//!
//! [`Freeze`] and [`Thaw`] convert between std collections and persistent ones (`freeze.rs`).
//!
//! Invariants of a [`StateProjector`]:
//! - A published snapshot never changes. Every snapshot has a version; the first is 0 and each
//!   transition (an [`update`](StateProjector::update), a [`reset`](StateProjector::reset), or
//!   one batch of an [`EngineProjector`]) publishes the next one.
//! - The current snapshot lives in an `ArcSwap`: [`get_state`](StateProjector::get_state) is
//!   one atomic load and a reference-count increment, in O(1), and never waits for a writer.
//! - Writers serialize on one mutex, held while the transition runs: version `v + 1` is always
//!   computed from version `v`, and readers never take that mutex.
//! - The history keeps the last `n` snapshots before the current one (`n` from
//!   [`with_history`](StateProjector::with_history), 16 by default); they share
//!   structure with the current one, so keeping them costs only the nodes that changed.
//!
//! A transition, step by step:
//! 1. lock the writer mutex;
//! 2. read the current snapshot (no one else can publish while the mutex is held) and compute
//!    the next state from it;
//! 3. append the current snapshot to the history, dropping the oldest beyond `n`, and publish
//!    the new history;
//! 4. store the new snapshot, version + 1, as the current one;
//! 5. unlock.
//!
//! If the transition panics, nothing is published and the mutex is recovered by the next writer.
//!
//! Why `imbl` and not `rpds`: imbl's `HashMap`, `OrdMap` and `Vector` are `Send + Sync` as they
//! are (their nodes are behind `Arc`), clone in O(1) by sharing their nodes, and mutate in place
//! any node that no snapshot shares (copy-on-write per node), which is what the engine projector's
//! private working copy relies on. rpds needs its pointer-kind parameter set to `ArcK`
//! (`HashTrieMapSync`, `VectorSync`) to be `Sync`, and its vector is a plain persistent vector,
//! not an RRB tree: no O(log n) split and concatenation, and no cursor that keeps the last leaf
//! it touched (imbl's `FocusMut`).

mod combiner;
mod engine;
mod freeze;
mod live;
mod op;
mod task;
mod tasks;

pub use combiner::{EngineProjector, EngineProjectorBuilder};
pub use engine::{EngineState, WorkflowState};
pub use freeze::{Freeze, Thaw};
pub use task::TaskState;

use arc_swap::ArcSwap;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many past snapshots a projector keeps unless told otherwise.
const DEFAULT_HISTORY: usize = 16;

/// One published state: immutable, versioned, and cheap to clone (one `Arc`).
///
/// It dereferences to the state. Holding it keeps that version alive (and only the nodes of it
/// that later versions changed cost memory of their own).
pub struct Snapshot<S> {
    inner: Arc<Versioned<S>>,
}

struct Versioned<S> {
    version: u64,
    state: Arc<S>,
}

impl<S> Snapshot<S> {
    fn new(version: u64, state: Arc<S>) -> Self {
        Snapshot {
            inner: Arc::new(Versioned { version, state }),
        }
    }

    /// The version: 0 for the initial state, then one more per transition.
    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// The state.
    pub fn state(&self) -> &S {
        &self.inner.state
    }

    /// The state as a shared pointer, to keep it without the version.
    pub fn shared_state(&self) -> Arc<S> {
        self.inner.state.clone()
    }

    /// Whether both are the same published snapshot.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }
}

impl<S> Clone for Snapshot<S> {
    fn clone(&self) -> Self {
        Snapshot {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Deref for Snapshot<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.inner.state
    }
}

impl<S: fmt::Debug> fmt::Debug for Snapshot<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version())
            .field("state", self.state())
            .finish()
    }
}

/// Why a named projection could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// No projection has this name.
    #[error("no projection named `{name}`")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The projection exists but returns another type.
    #[error("projection `{name}` returns `{actual}`, not `{expected}`")]
    WrongType {
        /// The projection's name.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The type it returns.
        actual: &'static str,
    },
}

impl ProjectionError {
    /// Whether no projection has the name.
    pub fn is_unknown(&self) -> bool {
        matches!(self, ProjectionError::Unknown { .. })
    }

    /// Whether the projection returns another type than the one asked for.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, ProjectionError::WrongType { .. })
    }
}

type ProjectFn<S> = dyn Fn(&S) -> Box<dyn Any + Send> + Send + Sync;

/// A named projection: the function and the type it returns.
struct Named<S> {
    f: Box<ProjectFn<S>>,
    type_id: TypeId,
    type_name: &'static str,
}

type Registry<S> = HashMap<Arc<str>, Arc<Named<S>>>;

/// What only writers touch.
struct Writer {
    /// Past snapshots kept.
    limit: usize,
}

struct Shared<S> {
    current: ArcSwap<Versioned<S>>,
    /// Past snapshots, oldest first; replaced as a whole (O(1) clone) by each transition.
    history: ArcSwap<imbl::Vector<Snapshot<S>>>,
    writer: Mutex<Writer>,
    initial: Arc<S>,
    projections: ArcSwap<Registry<S>>,
}

/// A state changed only by pure transitions and published as immutable, versioned snapshots
/// (see the module doc for the invariants).
///
/// Cheap to clone (one `Arc`): clones share the state. Reads never wait: the current snapshot
/// is in an `ArcSwap`. Writers serialize among themselves on one mutex.
///
/// ```
/// use nerv::StateProjector;
///
/// let p = StateProjector::new(imbl::OrdMap::<String, u32>::new());
/// let before = p.get_state();
/// let after = p.update(|s| s.update("a".to_string(), 1));
/// assert_eq!(after.version(), 1);
/// assert!(before.is_empty()); // the old snapshot is unchanged
/// assert_eq!(p.at_version(0).map(|s| s.len()), Some(0));
///
/// p.add_projection("total", |s: &imbl::OrdMap<String, u32>| s.values().sum::<u32>());
/// assert_eq!(p.project::<u32>("total"), Ok(1));
/// ```
pub struct StateProjector<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StateProjector<S> {
    fn clone(&self) -> Self {
        StateProjector {
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for StateProjector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self.shared.current.load();
        f.debug_struct("StateProjector")
            .field("version", &cur.version)
            .field("state", &cur.state)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Send + Sync + 'static> StateProjector<S> {
    /// How many past snapshots a projector keeps unless told otherwise.
    pub const DEFAULT_HISTORY: usize = DEFAULT_HISTORY;

    /// A projector whose version 0 is `initial`, keeping
    /// [`DEFAULT_HISTORY`](Self::DEFAULT_HISTORY) past snapshots.
    pub fn new(initial: S) -> Self {
        let initial = Arc::new(initial);
        StateProjector {
            shared: Arc::new(Shared {
                current: ArcSwap::new(Snapshot::new(0, initial.clone()).inner),
                history: ArcSwap::from_pointee(imbl::Vector::new()),
                writer: Mutex::new(Writer {
                    limit: DEFAULT_HISTORY,
                }),
                initial,
                projections: ArcSwap::from_pointee(HashMap::new()),
            }),
        }
    }

    /// Keeps the last `n` past snapshots (0: none; only the current one is readable). Past
    /// snapshots beyond a smaller `n` are dropped at once.
    pub fn with_history(self, n: usize) -> Self {
        let mut w = lock(&self.shared.writer);
        w.limit = n;
        let h = self.shared.history.load_full();
        if h.len() > n {
            self.shared.history.store(Arc::new(h.skip(h.len() - n)));
        }
        drop(w);
        self
    }

    /// The number of past snapshots kept.
    pub fn history_limit(&self) -> usize {
        lock(&self.shared.writer).limit
    }

    /// The current snapshot, in O(1), without waiting for writers.
    pub fn get_state(&self) -> Snapshot<S> {
        Snapshot {
            inner: self.shared.current.load_full(),
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.shared.current.load().version
    }

    /// Runs the pure transition `f` on the current state and publishes its result as the next
    /// version, which it returns. Snapshots taken before are unchanged. Concurrent updates run
    /// one at a time, each on the result of the one before.
    pub fn update(&self, f: impl FnOnce(&S) -> S) -> Snapshot<S> {
        let w = lock(&self.shared.writer);
        let cur = self.shared.current.load_full();
        let next = f(&cur.state);
        self.publish_locked(&w, cur, Arc::new(next))
    }

    /// Publishes the initial state again, as the next version (the history is kept: time
    /// travel still reaches the versions before the reset).
    pub fn reset(&self) -> Snapshot<S> {
        let w = lock(&self.shared.writer);
        let cur = self.shared.current.load_full();
        self.publish_locked(&w, cur, self.shared.initial.clone())
    }

    /// Publishes `next` as the next version (for a writer that computed it elsewhere, such as
    /// the engine projector's combiner).
    pub(crate) fn publish(&self, next: S) -> Snapshot<S> {
        let w = lock(&self.shared.writer);
        let cur = self.shared.current.load_full();
        self.publish_locked(&w, cur, Arc::new(next))
    }

    /// Steps 3 and 4 of a transition (the writer mutex is held: `w` proves it).
    fn publish_locked(&self, w: &Writer, cur: Arc<Versioned<S>>, next: Arc<S>) -> Snapshot<S> {
        let limit = w.limit;
        let version = cur.version + 1;
        if limit > 0 {
            let mut h = imbl::Vector::clone(&self.shared.history.load());
            h.push_back(Snapshot { inner: cur });
            while h.len() > limit {
                h.pop_front();
            }
            self.shared.history.store(Arc::new(h));
        }
        let snap = Snapshot::new(version, next);
        self.shared.current.store(snap.inner.clone());
        snap
    }

    /// The snapshot of version `v`, if it is the current one or one of the kept past ones.
    pub fn at_version(&self, v: u64) -> Option<Snapshot<S>> {
        let cur = self.get_state();
        if cur.version() == v {
            return Some(cur);
        }
        // A transition publishes the history before the new current snapshot, so a history
        // loaded after seeing version `c` holds every kept version below `c`.
        let h = self.shared.history.load();
        if let Some(first) = h.front().map(Snapshot::version) {
            if let Some(s) = v.checked_sub(first).and_then(|i| h.get(i as usize)) {
                debug_assert_eq!(s.version(), v);
                return Some(s.clone());
            }
        }
        // `v` may have become current since the first load.
        let cur = self.get_state();
        (cur.version() == v).then_some(cur)
    }

    /// The kept past snapshots, oldest first (the current one is not included).
    pub fn history(&self) -> Vec<Snapshot<S>> {
        self.shared.history.load().iter().cloned().collect()
    }

    /// Registers (or replaces) the projection `name`: a function of the state, evaluated on
    /// demand by [`project`](Self::project). Returns whether it replaced one.
    pub fn add_projection<R, F>(&self, name: &str, f: F) -> bool
    where
        R: Any + Send,
        F: Fn(&S) -> R + Send + Sync + 'static,
    {
        let named = Arc::new(Named {
            f: Box::new(move |s: &S| Box::new(f(s)) as Box<dyn Any + Send>),
            type_id: TypeId::of::<R>(),
            type_name: std::any::type_name::<R>(),
        });
        let name: Arc<str> = name.into();
        let mut replaced = false;
        self.shared.projections.rcu(|reg| {
            let mut reg = Registry::clone(reg);
            replaced = reg.insert(name.clone(), named.clone()).is_some();
            reg
        });
        replaced
    }

    /// Removes the projection `name`; returns whether there was one.
    pub fn remove_projection(&self, name: &str) -> bool {
        let mut removed = false;
        self.shared.projections.rcu(|reg| {
            let mut reg = Registry::clone(reg);
            removed = reg.remove(name).is_some();
            reg
        });
        removed
    }

    /// The names of the registered projections, sorted.
    pub fn projections(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .shared
            .projections
            .load()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort_unstable();
        v
    }

    /// Evaluates the projection `name` on the current snapshot.
    ///
    /// # Errors
    /// [`ProjectionError::Unknown`] if no projection has that name,
    /// [`ProjectionError::WrongType`] if it does not return an `R`.
    pub fn project<R: Any>(&self, name: &str) -> Result<R, ProjectionError> {
        self.project_at(name, &self.get_state())
    }

    /// Evaluates the projection `name` on `snapshot` (a past one, for time travel).
    ///
    /// # Errors
    /// As [`project`](Self::project).
    pub fn project_at<R: Any>(&self, name: &str, snapshot: &S) -> Result<R, ProjectionError> {
        let named = self
            .shared
            .projections
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| ProjectionError::Unknown {
                name: name.to_string(),
            })?;
        let wrong_type = || ProjectionError::WrongType {
            name: name.to_string(),
            expected: std::any::type_name::<R>(),
            actual: named.type_name,
        };
        if named.type_id != TypeId::of::<R>() {
            return Err(wrong_type());
        }
        let value: Box<dyn Any> = (named.f)(snapshot);
        value.downcast::<R>().map(|b| *b).map_err(|_| wrong_type())
    }
}

impl<S: Default + Send + Sync + 'static> Default for StateProjector<S> {
    fn default() -> Self {
        Self::new(S::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_history_and_reset() {
        let p = StateProjector::new(0u32).with_history(3);
        for i in 1..=5 {
            assert_eq!(p.update(|s| s + 1).version(), i);
        }
        assert_eq!(*p.get_state(), 5);
        let kept: Vec<u64> = p.history().iter().map(Snapshot::version).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert!(p.at_version(1).is_none());
        assert_eq!(p.at_version(2).map(|s| *s), Some(2));
        assert_eq!(p.at_version(5).map(|s| *s), Some(5));
        assert!(p.at_version(6).is_none());
        let r = p.reset();
        assert_eq!((r.version(), *r), (6, 0));
        assert_eq!(p.at_version(5).map(|s| *s), Some(5));
    }

    #[test]
    fn no_history() {
        let p = StateProjector::new(String::new()).with_history(0);
        p.update(|s| format!("{s}a"));
        assert!(p.history().is_empty());
        assert!(p.at_version(0).is_none());
        assert_eq!(p.at_version(1).as_deref().map(String::as_str), Some("a"));
    }

    #[test]
    fn shrinking_the_history_drops_the_oldest() {
        let p = StateProjector::new(0u8);
        for _ in 0..10 {
            p.update(|s| s + 1);
        }
        let p = p.with_history(2);
        let kept: Vec<u64> = p.history().iter().map(Snapshot::version).collect();
        assert_eq!(kept, [8, 9]);
        assert_eq!(p.history_limit(), 2);
    }

    #[test]
    fn a_panicking_transition_publishes_nothing() {
        let p = StateProjector::new(1u8);
        let q = p.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            q.update(|_| panic!("boom"))
        }));
        assert!(r.is_err());
        assert_eq!((p.version(), *p.get_state()), (0, 1));
        assert_eq!(*p.update(|s| s + 1), 2);
    }

    #[test]
    fn projections_are_typed() {
        let p = StateProjector::new(vec![1, 2, 3]);
        assert!(!p.add_projection("sum", |v: &Vec<i32>| v.iter().sum::<i32>()));
        assert_eq!(p.project::<i32>("sum"), Ok(6));
        let e = p.project::<u64>("sum").unwrap_err();
        assert!(e.is_wrong_type(), "{e}");
        assert!(p.project::<i32>("nope").unwrap_err().is_unknown());
        assert!(p.add_projection("sum", |v: &Vec<i32>| v.len()));
        assert_eq!(p.project::<usize>("sum"), Ok(3));
        assert_eq!(p.projections(), ["sum"]);
        assert!(p.remove_projection("sum"));
        assert!(p.project::<usize>("sum").unwrap_err().is_unknown());
    }
}
