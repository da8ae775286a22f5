//! Persisted outputs: how a task's output is turned into bytes for a journal, and restored
//! from them when a run resumes.
//!
//! Invariants:
//! - Only tasks marked with [`GraphBuilder::persist`](crate::GraphBuilder::persist) have a
//!   codec; the others' outputs are never serialized (a journal records them as completed
//!   without a value, and a resumed run runs them again).
//! - Bytes are MessagePack (`rmp-serde`), as the memo store's: compact, and self-describing so
//!   that a value written by one build of a program reads back in the next as long as its
//!   serde shape is compatible. Bytes that do not decode make the task run again.

use nerv_pool::{OnceArena, SlotKey};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;

/// Saves and restores one task's output slot.
pub(crate) trait Codec: Send + Sync {
    /// The output's bytes, if the task has an output and it serializes. Called as the task
    /// completes (a unit output, never written to the arena, is `()` then).
    fn save(&self, arena: &OnceArena) -> Option<Vec<u8>>;
    /// Puts the value decoded from `bytes` in the output slot.
    fn load(&self, bytes: &[u8], arena: &OnceArena) -> Result<(), String>;
}

pub(crate) struct MsgPack<T> {
    pub(crate) slot: SlotKey<T>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Codec for MsgPack<T> {
    fn save(&self, arena: &OnceArena) -> Option<Vec<u8>> {
        if super::inputs::is_unit::<T>() {
            return rmp_serde::to_vec(&()).ok();
        }
        arena.get(self.slot).and_then(|v| rmp_serde::to_vec(v).ok())
    }

    fn load(&self, bytes: &[u8], arena: &OnceArena) -> Result<(), String> {
        let v: T = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        super::inputs::set_output(arena, self.slot, v)
            .map_err(|_| "the output was already set".to_string())
    }
}

/// The outputs of a run's completed tasks, by task id, to skip them when the run resumes
/// (see [`RunOptions::resume`](crate::RunOptions::resume)). A journal builds it from what it
/// recorded.
///
/// A task listed here does not run again if it is persisted
/// ([`GraphBuilder::persist`](crate::GraphBuilder::persist)) and its bytes decode into its
/// output type: it completes at once with that value (its `TaskCompleted` event has attempt
/// 0). Any other task runs as usual.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restore {
    pub(crate) outputs: HashMap<String, Vec<u8>>,
}

impl Restore {
    /// Nothing to restore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores task `id` with its serialized output.
    pub fn insert(&mut self, id: impl Into<String>, output: Vec<u8>) -> &mut Self {
        self.outputs.insert(id.into(), output);
        self
    }

    /// How many tasks it lists.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Whether it lists task `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.outputs.contains_key(id)
    }
}

impl<S: Into<String>> FromIterator<(S, Vec<u8>)> for Restore {
    fn from_iter<I: IntoIterator<Item = (S, Vec<u8>)>>(iter: I) -> Self {
        Restore {
            outputs: iter.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }
}
