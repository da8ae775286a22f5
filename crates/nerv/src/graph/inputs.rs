//! Typed data flow: what a task reads from its dependencies.
//!
//! A task declares its inputs as a value of a type implementing [`Inputs`]: `()` (none), one
//! [`Handle<T>`] (its body gets `&T`), a tuple of inputs (a tuple of references), or a
//! `Vec<Handle<T>>` (a fan-in: its body gets a [`Gather`] to iterate). Every input is also a
//! dependency, so the value is complete before the body runs; no `Any`, no string keys.

use super::{Handle, TaskId};
use nerv_pool::{OnceArena, SlotKey};
use std::any::{Any, TypeId};

/// Whether `T` is `()`. A unit output is never written to the run's arena: its value is
/// there exactly when its task completed (the state every reader can ask the run), so a
/// task that returns `()` costs no store to a line of its own and no load of its output key
/// (measured: 25-30 % of an empty task's time on the binary tree shape). Folds to a constant.
#[inline(always)]
pub(crate) fn is_unit<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<()>()
}

/// Stores a task's output in the run's arena; a unit output is not written (see [`is_unit`]).
/// Gives the value back if the slot was written already.
#[inline(always)]
pub(crate) fn set_output<T: Send + Sync + 'static>(
    arena: &OnceArena,
    slot: SlotKey<T>,
    value: T,
) -> Result<(), T> {
    if is_unit::<T>() {
        return Ok(());
    }
    arena.set(slot, value)
}

/// Whether a task of the run completed: where a unit output's presence comes from.
pub(crate) trait Done {
    /// Whether the task at graph index `node` completed.
    fn done(&self, node: u32) -> bool;
}

/// The run's outputs as tasks read them: the values in the run's arena, and for unit outputs
/// (never written, see `set_output`) whether their task completed.
#[derive(Clone, Copy)]
pub struct Outputs<'a> {
    arena: &'a OnceArena,
    done: &'a dyn Done,
}

impl<'a> Outputs<'a> {
    pub(crate) fn new(arena: &'a OnceArena, done: &'a dyn Done) -> Self {
        Outputs { arena, done }
    }

    /// The output of `h`'s task, if it has one (the task completed).
    #[inline]
    pub fn get<T: Send + Sync + 'static>(&self, h: &Handle<T>) -> Option<&'a T> {
        if is_unit::<T>() {
            // A handle's slot index is its task's index in the graph.
            return if self.done.done(h.slot.index()) {
                (&() as &dyn Any).downcast_ref::<T>()
            } else {
                None
            };
        }
        self.arena.get(h.slot)
    }
}

/// A set of typed inputs (see the module documentation).
pub trait Inputs: Send + Sync + 'static {
    /// What the task's body receives: references into the run's outputs.
    type Refs<'a>;

    /// Calls `f` with each task this input set reads from.
    fn each_source(&self, f: &mut dyn FnMut(TaskId));

    /// The references, or the first input whose value is missing (its producer did not
    /// complete: possible only for a task whose trigger rule lets it run after a failure).
    fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<Self::Refs<'a>, TaskId>;
}

impl Inputs for () {
    type Refs<'a> = ();
    fn each_source(&self, _: &mut dyn FnMut(TaskId)) {}
    #[inline]
    fn fetch<'a>(&'a self, _: &Outputs<'a>) -> Result<(), TaskId> {
        Ok(())
    }
}

impl<T: Send + Sync + 'static> Inputs for Handle<T> {
    type Refs<'a> = &'a T;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        f(self.id())
    }
    #[inline]
    fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<&'a T, TaskId> {
        out.get(self).ok_or(self.id())
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
    fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<Option<&'a T>, TaskId> {
        Ok(out.get(&self.0))
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
    fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<Vec<Option<&'a T>>, TaskId> {
        Ok(self.iter().map(|h| out.get(&h.0)).collect())
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
    out: Outputs<'a>,
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
        self.handles.get(i).and_then(|h| self.out.get(h))
    }

    /// The values in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a T> + '_ {
        let out = self.out;
        self.handles
            .iter()
            .map(move |h| out.get(h).expect("Gather holds only completed inputs"))
    }
}

impl<T: Send + Sync + 'static> Inputs for Vec<Handle<T>> {
    type Refs<'a> = Gather<'a, T>;
    fn each_source(&self, f: &mut dyn FnMut(TaskId)) {
        for h in self {
            f(h.id())
        }
    }
    fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<Gather<'a, T>, TaskId> {
        if let Some(h) = self.iter().find(|h| out.get(h).is_none()) {
            return Err(h.id());
        }
        Ok(Gather {
            handles: self,
            out: *out,
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
            fn fetch<'a>(&'a self, out: &Outputs<'a>) -> Result<Self::Refs<'a>, TaskId> {
                let ($($name,)+) = self;
                Ok(($($name.fetch(out)?,)+))
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
