//! Freeze and thaw (Pyrsistent's `freeze`/`thaw`): converting between ordinary std collections
//! and the persistent ones a state is made of.
//!
//! Rust needs them only at the edges: a state is built from persistent collections, and code
//! that wants a plain `Vec` or `HashMap` (serialization, an API that takes std types) thaws a
//! snapshot's collection into one. Both are shallow: the elements are moved (freeze) or cloned
//! (thaw) as they are; for nested collections, map the inner ones
//! (`outer.into_iter().map(|(k, v)| (k, v.freeze())).collect()`).
//!
//! | std                        | persistent (imbl)       |
//! |----------------------------|-------------------------|
//! | `Vec<T>`                   | `Vector<T>`             |
//! | `HashMap<K, V, H>`         | `HashMap<K, V, H>`      |
//! | `BTreeMap<K, V>`           | `OrdMap<K, V>`          |
//! | `HashSet<T, H>`            | `HashSet<T, H>`         |
//! | `BTreeSet<T>`              | `OrdSet<T>`             |

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hash};

/// Converts an ordinary std collection into its persistent counterpart (consuming it).
pub trait Freeze {
    /// The persistent collection.
    type Frozen;

    /// The persistent collection holding the same elements.
    fn freeze(self) -> Self::Frozen;
}

/// Converts a persistent collection into its ordinary std counterpart (cloning the elements:
/// the persistent one is usually shared with a snapshot).
pub trait Thaw {
    /// The std collection.
    type Thawed;

    /// The std collection holding the same elements.
    fn thaw(&self) -> Self::Thawed;
}

impl<T: Clone> Freeze for Vec<T> {
    type Frozen = imbl::Vector<T>;
    fn freeze(self) -> imbl::Vector<T> {
        self.into_iter().collect()
    }
}

impl<T: Clone> Thaw for imbl::Vector<T> {
    type Thawed = Vec<T>;
    fn thaw(&self) -> Vec<T> {
        self.iter().cloned().collect()
    }
}

impl<K, V, H> Freeze for std::collections::HashMap<K, V, H>
where
    K: Hash + Eq + Clone,
    V: Clone,
    H: BuildHasher + Default + Clone,
{
    type Frozen = imbl::HashMap<K, V, H>;
    fn freeze(self) -> imbl::HashMap<K, V, H> {
        self.into_iter().collect()
    }
}

impl<K, V, H> Thaw for imbl::HashMap<K, V, H>
where
    K: Hash + Eq + Clone,
    V: Clone,
    H: BuildHasher + Default + Clone,
{
    type Thawed = std::collections::HashMap<K, V, H>;
    fn thaw(&self) -> std::collections::HashMap<K, V, H> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl<K: Ord + Clone, V: Clone> Freeze for BTreeMap<K, V> {
    type Frozen = imbl::OrdMap<K, V>;
    fn freeze(self) -> imbl::OrdMap<K, V> {
        self.into_iter().collect()
    }
}

impl<K: Ord + Clone, V: Clone> Thaw for imbl::OrdMap<K, V> {
    type Thawed = BTreeMap<K, V>;
    fn thaw(&self) -> BTreeMap<K, V> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl<T, H> Freeze for std::collections::HashSet<T, H>
where
    T: Hash + Eq + Clone,
    H: BuildHasher + Default + Clone,
{
    type Frozen = imbl::HashSet<T, H>;
    fn freeze(self) -> imbl::HashSet<T, H> {
        self.into_iter().collect()
    }
}

impl<T, H> Thaw for imbl::HashSet<T, H>
where
    T: Hash + Eq + Clone,
    H: BuildHasher + Default + Clone,
{
    type Thawed = std::collections::HashSet<T, H>;
    fn thaw(&self) -> std::collections::HashSet<T, H> {
        self.iter().cloned().collect()
    }
}

impl<T: Ord + Clone> Freeze for BTreeSet<T> {
    type Frozen = imbl::OrdSet<T>;
    fn freeze(self) -> imbl::OrdSet<T> {
        self.into_iter().collect()
    }
}

impl<T: Ord + Clone> Thaw for imbl::OrdSet<T> {
    type Thawed = BTreeSet<T>;
    fn thaw(&self) -> BTreeSet<T> {
        self.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = vec![3, 1, 2];
        assert_eq!(v.clone().freeze().thaw(), v);
        let m: std::collections::HashMap<String, i32> =
            [("a".to_string(), 1), ("b".to_string(), 2)].into();
        assert_eq!(m.clone().freeze().thaw(), m);
        let b: BTreeMap<u32, &str> = [(2, "b"), (1, "a")].into();
        let frozen = b.clone().freeze();
        assert_eq!(frozen.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(frozen.thaw(), b);
        let s: std::collections::HashSet<u8> = [1, 2].into();
        assert_eq!(s.clone().freeze().thaw(), s);
        let o: BTreeSet<u8> = [2, 1].into();
        assert_eq!(o.clone().freeze().thaw(), o);
    }
}
