//! Typed data flow: what a task reads from its dependencies.
//!
//! A task declares its inputs as a value of a type implementing [`Inputs`]: `()` (none), one
//! [`Handle<T>`] (its body gets `&T`), a tuple of inputs (a tuple of references), or a
//! `Vec<Handle<T>>` (a fan-in: its body gets a [`Gather`] to iterate). Every input is also a
//! dependency, so the value is complete before the body runs; no `Any`, no string keys.

use super::{Handle, TaskId};
use nerv_pool::OnceArena;

/// A set of typed inputs (see the module documentation).
pub trait Inputs: Send + Sync + 'static {
    /// What the task's body receives: references into the run's outputs.
    type Refs<'a>;

    /// Calls `f` with each task this input set reads from.
    fn each_source(&self, f: &mut dyn FnMut(TaskId));

    /// The references, or the first input whose value is missing (its producer did not
    /// complete: possible only for a task whose trigger rule lets it run after a failure).
    fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<Self::Refs<'a>, TaskId>;
}

impl Inputs for () {
    type Refs<'a> = ();
    fn each_source(&self, _: &mut dyn FnMut(TaskId)) {}
    #[inline]
    fn fetch<'a>(&'a self, _: &'a OnceArena) -> Result<(), TaskId> {
        Ok(())
    }
}

impl<T: Send + Sync + 'static> Inputs for Handle<T> {
    type Refs<'a> = &'a T;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        f(self.id())
    }
    #[inline]
    fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<&'a T, TaskId> {
        arena.get(self.slot).ok_or(self.id())
    }
}

/// An input that may be missing: the body gets `Option<&T>` (see [`Handle::optional`]).
pub struct Optional<T>(pub(crate) Handle<T>);

impl<T> Clone for Optional<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Optional<T> {}

impl<T: Send + Sync + 'static> Inputs for Optional<T> {
    type Refs<'a> = Option<&'a T>;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        f(self.0.id())
    }
    #[inline]
    fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<Option<&'a T>, TaskId> {
        Ok(arena.get(self.0.slot))
    }
}

/// A fan-in that tolerates missing values: the body gets one `Option<&T>` per handle, in
/// order (for tasks whose trigger rule lets them run after a failure).
impl<T: Send + Sync + 'static> Inputs for Vec<Optional<T>> {
    type Refs<'a> = Vec<Option<&'a T>>;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        for h in self {
            f(h.0.id())
        }
    }
    fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<Vec<Option<&'a T>>, TaskId> {
        Ok(self.iter().map(|h| arena.get(h.0.slot)).collect())
    }
}

/// Serialized as the sequence of its values (for memoization keys).
impl<T: Send + Sync + serde::Serialize + 'static> serde::Serialize for Gather<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.len()).map(|i| self.get(i)))
    }
}

/// The outputs of a list of same-typed tasks, in the order their handles were given.
pub struct Gather<'a, T> {
    handles: &'a [Handle<T>],
    arena: &'a OnceArena,
}

impl<'a, T: Send + Sync + 'static> Gather<'a, T> {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there is no input.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The `i`-th input's value.
    pub fn get(&self, i: usize) -> Option<&'a T> {
        self.handles.get(i).and_then(|h| self.arena.get(h.slot))
    }

    /// The values in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a T> + '_ {
        let arena = self.arena;
        self.handles.iter().map(move |h| {
            arena
                .get(h.slot)
                .expect("Gather holds only completed inputs")
        })
    }
}

impl<T: Send + Sync + 'static> Inputs for Vec<Handle<T>> {
    type Refs<'a> = Gather<'a, T>;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        for h in self {
            f(h.id())
        }
    }
    fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<Gather<'a, T>, TaskId> {
        if let Some(h) = self.iter().find(|h| arena.get(h.slot).is_none()) {
            return Err(h.id());
        }
        Ok(Gather {
            handles: self,
            arena,
        })
    }
}

macro_rules! tuple_inputs {
    ($($name:ident),+) => {
        impl<$($name: Inputs),+> Inputs for ($($name,)+) {
            type Refs<'a> = ($($name::Refs<'a>,)+);
            #[allow(non_snake_case)]
            fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
                let ($($name,)+) = self;
                $($name.each_source(f);)+
            }
            #[allow(non_snake_case)]
            #[inline]
            fn fetch<'a>(&'a self, arena: &'a OnceArena) -> Result<Self::Refs<'a>, TaskId> {
                let ($($name,)+) = self;
                Ok(($($name.fetch(arena)?,)+))
            }
        }
    };
}

tuple_inputs!(A);
tuple_inputs!(A, B);
tuple_inputs!(A, B, C);
tuple_inputs!(A, B, C, D);
tuple_inputs!(A, B, C, D, E);
tuple_inputs!(A, B, C, D, E, F);
tuple_inputs!(A, B, C, D, E, F, G);
tuple_inputs!(A, B, C, D, E, F, G, H);
